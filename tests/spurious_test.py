"""Tests for jaxdd.data.spurious: the Colored-MNIST-style spurious-correlation benchmark."""

import pathlib

import numpy as np
import pytest

from jaxdd import build, data
from jaxdd import config as config_lib
from jaxdd.data import rare, spurious

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(scope="module")
def colored(digits) -> data.RareDataset:
    return data.make_spurious(digits, conflict_fraction=0.1, seed=3)


def _colour_index(dataset: data.Dataset, split: str) -> np.ndarray:
    """The palette index each image of `split` wears, read back from its brightest pixel."""
    pixels = dataset.denormalize(dataset.split(split).images)
    flat = pixels.reshape(len(pixels), -1, 3)
    brightest = flat[np.arange(len(flat)), flat.sum(axis=2).argmax(axis=1)]
    direction = brightest / brightest.max(axis=1, keepdims=True)
    distance = np.linalg.norm(direction[:, None] - spurious.palette(dataset.num_classes), axis=2)
    assert np.all(distance.min(axis=1) < 1e-3), "an image is not one palette colour"
    return distance.argmin(axis=1)


def test_palette_is_distinct_saturated_hues():
    colors = spurious.palette(10)
    assert colors.shape == (10, 3) and colors.dtype == np.float32
    np.testing.assert_allclose(colors.max(axis=1), 1.0)
    np.testing.assert_allclose(colors[0], [1, 0, 0])
    pairwise = np.linalg.norm(colors[:, None] - colors[None], axis=2)
    assert pairwise[~np.eye(10, dtype=bool)].min() > 0.4  # 36 degrees of hue apart.


def test_train_and_validation_wear_their_class_colour_but_a_conflicting_few(colored, digits):
    assert colored.dataset.name == "digits+color" and colored.transform == "color"
    assert colored.dataset.image_shape == (8, 8, 3) and colored.num_groups == 20
    for split in ("train", "validation"):
        labels = colored.dataset.split(split).labels
        np.testing.assert_array_equal(labels, digits.split(split).labels)
        colour = _colour_index(colored.dataset, split)
        conflict = colored.minority(split)
        np.testing.assert_array_equal(colour != labels, conflict)
        for c in range(10):
            n = int(np.sum(labels == c))
            assert conflict[labels == c].sum() == rare.rare_count(n, 0.1)
    # Conflicting colours are spread over the other classes' colours.
    train_colour = _colour_index(colored.dataset, "train")
    conflicting = colored.minority("train")
    assert len(set(train_colour[conflicting].tolist())) >= 8


def test_test_colours_are_uniform_and_conflicting_where_not_the_class_colour(colored):
    labels = colored.dataset.test.labels
    colour = _colour_index(colored.dataset, "test")
    np.testing.assert_array_equal(colored.minority("test"), colour != labels)
    assert 0.8 < colored.minority("test").mean() < 0.97  # (C - 1) / C = 0.9 in expectation.
    counts = np.bincount(colour, minlength=10)
    assert counts.min() > 0.5 * len(labels) / 10
    np.testing.assert_array_equal(colored.group_of("test"), 2 * labels + (colour != labels))


def test_intensity_is_kept_and_train_renormalised(colored, digits):
    gray = digits.denormalize(digits.train.images)[..., 0]
    pixels = colored.dataset.denormalize(colored.dataset.train.images)
    np.testing.assert_allclose(pixels.max(axis=-1), gray, atol=1e-5)
    images = colored.dataset.train.images
    np.testing.assert_allclose(images.mean(axis=(0, 1, 2)), 0.0, atol=1e-4)
    np.testing.assert_allclose(images.std(axis=(0, 1, 2)), 1.0, atol=1e-3)


def test_rgb_input_is_made_grayscale_by_luma():
    pixels = np.array([[[[1.0, 0.0, 0.0]]], [[[0.0, 0.0, 1.0]]]], np.float32)  # (2, 1, 1, 3)
    white = np.ones((2, 3), np.float32)
    np.testing.assert_allclose(spurious.colorize(pixels, white)[:, 0, 0, 0], [0.299, 0.114])


def test_deterministic_per_seed(colored, digits):
    again = data.make_spurious(digits, conflict_fraction=0.1, seed=3)
    np.testing.assert_array_equal(again.dataset.train.images, colored.dataset.train.images)
    other = data.make_spurious(digits, conflict_fraction=0.1, seed=4)
    assert not np.array_equal(other.train_minority, colored.train_minority)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"attribute": "texture"}, "Unknown spurious attribute 'texture'"),
        ({"conflict_fraction": 0.5}, "strictly between 0 and 0.5"),
        ({"conflict_fraction": 0.0}, "strictly between 0 and 0.5"),
    ],
)
def test_bad_arguments_say_what_to_do(digits, kwargs, message):
    with pytest.raises(ValueError, match=message):
        data.make_spurious(digits, **kwargs)


def test_config_builds_the_benchmark_and_reports_its_groups():
    config = config_lib.load(CONFIGS / "smoke.py", "data.spurious=color")
    config_lib.validate(config)
    dataset, groups = build.load_data(config)
    assert dataset.name == "digits+color" and dataset.image_shape[-1] == 3
    assert isinstance(groups, data.RareDataset) and groups.fraction == 0.05
    # Not part of a fingerprint at its default: runs checkpointed before it still resume.
    plain = config_lib.load(CONFIGS / "smoke.py")
    assert "spurious" not in config_lib.fingerprint(plain, dataset)["data"]
    assert config_lib.fingerprint(config, dataset)["data"]["spurious"] == "color"
