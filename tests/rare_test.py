"""Tests for jaxdd.data.rare: the rare-subpopulation benchmark on top of a loaded dataset."""

import dataclasses

import hypothesis
import numpy as np
import pytest
import references
from hypothesis import strategies as st

from jaxdd import data, shifts
from jaxdd.data.rare import rare_count

# --- the transforms and their references ------------------------------------------------------


_RARE_REFERENCES = {
    "invert": references.invert,
    "rotate90": references.rotate90,
    "blur": references.binomial_blur,
}


@pytest.fixture(scope="module")
def rare_digits(digits) -> data.RareDataset:
    return data.make_rare(digits)


def _tiny_dataset(
    shape: tuple[int, int, int], counts: tuple[int, int, int], *, num_classes: int = 3
) -> data.Dataset:
    """A random normalised dataset with `counts` examples per class in train/validation/test."""
    rng = np.random.default_rng(0)
    pixels = [rng.uniform(size=(n * num_classes, *shape)).astype(np.float32) for n in counts]
    mean, std = pixels[0].mean(axis=(0, 1, 2)), pixels[0].std(axis=(0, 1, 2))
    splits = [
        data.Split(images=(p - mean) / std, labels=np.repeat(np.arange(num_classes), n))
        for p, n in zip(pixels, counts, strict=True)
    ]
    names = tuple(str(c) for c in range(num_classes))
    return data.Dataset(
        "tiny", *splits, mean=mean, std=std, class_names=names, num_classes=num_classes
    )


def test_transform_registry_matches_the_references():
    assert set(data.RARE_TRANSFORMS) == set(_RARE_REFERENCES)
    pixels = np.random.default_rng(0).uniform(size=(3, 5, 5, 2)).astype(np.float32)
    for name, reference in _RARE_REFERENCES.items():
        out = data.RARE_TRANSFORMS[name](pixels)
        assert out.shape == pixels.shape
        np.testing.assert_allclose(out, reference(pixels), atol=1e-6, err_msg=name)
        assert out.min() >= 0.0 and out.max() <= 1.0


def test_transforms_are_the_shifts_functions():
    # One implementation per transform: the benchmark's minority is made by jaxdd.shifts.
    assert data.RARE_TRANSFORMS["invert"] is shifts.invert
    assert data.RARE_TRANSFORMS["rotate90"] is shifts.rotate90
    assert data.RARE_TRANSFORMS["blur"] is shifts.binomial_blur
    with pytest.raises(TypeError):
        data.RARE_TRANSFORMS["sepia"] = shifts.invert  # type: ignore[index]


@pytest.mark.parametrize("fraction", [0.05, 0.2])
def test_rare_minority_is_about_fraction_of_each_class(digits, fraction):
    rare = data.make_rare(digits, fraction=fraction)
    for name in ("train", "validation"):
        labels, minority = digits.split(name).labels, rare.minority(name)
        counts = np.bincount(labels[minority], minlength=10)
        target = fraction * np.bincount(labels, minlength=10)
        np.testing.assert_array_less(np.abs(counts - target), 1.0 + 1e-9, err_msg=name)
        assert counts.min() >= 1, name  # Every class keeps a minority (digits classes are big).


def test_rare_test_split_is_balanced_per_class(rare_digits, digits):
    labels, minority = digits.test.labels, rare_digits.test_minority
    minority_counts = np.bincount(labels[minority], minlength=10)
    majority_counts = np.bincount(labels[~minority], minlength=10)
    assert np.all(np.abs(minority_counts - majority_counts) <= 1)
    assert minority_counts.min() >= 1


@pytest.mark.parametrize("transform", sorted(_RARE_REFERENCES))
def test_rare_rows_are_the_transformed_originals(digits, transform):
    rare = data.make_rare(digits, transform=transform, seed=3)
    reference = _RARE_REFERENCES[transform]
    for name in data.SPLIT_NAMES:
        before = digits.denormalize(digits.split(name).images)
        after = rare.dataset.denormalize(rare.dataset.split(name).images)
        minority = rare.minority(name)
        np.testing.assert_array_equal(rare.dataset.split(name).labels, digits.split(name).labels)
        np.testing.assert_allclose(after[minority], reference(before[minority]), atol=1e-5)
        np.testing.assert_allclose(after[~minority], before[~minority], atol=1e-5)
        # The transform really changed every minority image (none of these is a fixed point).
        assert np.abs(after[minority] - before[minority]).max(axis=(1, 2, 3)).min() > 1e-3


def test_rare_renormalises_with_the_new_train_statistics(rare_digits, digits):
    dataset = rare_digits.dataset
    np.testing.assert_allclose(dataset.train.images.mean(axis=(0, 1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(dataset.train.images.std(axis=(0, 1, 2)), 1.0, atol=1e-5)
    # Independent reference: the raw 0..16 train digits with the minority inverted (16 - v).
    raw = references.raw_digit_rows(digits, digits.train).astype(np.float64)
    raw[rare_digits.train_minority] = 16 - raw[rare_digits.train_minority]
    np.testing.assert_allclose(dataset.mean, [raw.mean() / 16], rtol=1e-6)
    np.testing.assert_allclose(dataset.std, [raw.std() / 16], rtol=1e-6)
    assert abs(dataset.mean[0] - digits.mean[0]) > 1e-3  # The statistics were recomputed.


def test_rare_per_channel_statistics_on_rgb():
    tiny = _tiny_dataset((4, 4, 3), (20, 4, 6))
    rare = data.make_rare(tiny, transform="invert", fraction=0.25)
    pixels = rare.dataset.denormalize(rare.dataset.train.images)
    np.testing.assert_allclose(rare.dataset.mean, pixels.mean(axis=(0, 1, 2)), atol=1e-6)
    np.testing.assert_allclose(rare.dataset.std, pixels.std(axis=(0, 1, 2)), rtol=1e-5)
    # 0.25 * 20 = 5 of each train class, 1 of each 4-example validation class, 3 of each test 6.
    np.testing.assert_array_equal(np.bincount(tiny.train.labels[rare.train_minority]), [5] * 3)
    np.testing.assert_array_equal(
        np.bincount(tiny.validation.labels[rare.validation_minority]), [1] * 3
    )
    np.testing.assert_array_equal(np.bincount(tiny.test.labels[rare.test_minority]), [3] * 3)


def test_rare_is_deterministic_per_seed(rare_digits, digits):
    again = data.make_rare(digits)
    other = data.make_rare(digits, seed=1)
    for name in data.SPLIT_NAMES:
        np.testing.assert_array_equal(again.minority(name), rare_digits.minority(name))
        np.testing.assert_array_equal(
            again.dataset.split(name).images, rare_digits.dataset.split(name).images
        )
    assert not np.array_equal(other.train_minority, rare_digits.train_minority)
    assert not np.array_equal(other.test_minority, rare_digits.test_minority)


def test_rare_groups_are_class_and_minority(rare_digits, digits):
    assert rare_digits.num_groups == 20
    for name in data.SPLIT_NAMES:
        groups = rare_digits.group_of(name)
        assert groups.dtype == np.int32
        expected = 2 * digits.split(name).labels + rare_digits.minority(name).astype(np.int32)
        np.testing.assert_array_equal(groups, expected)
    assert set(rare_digits.group_of("test").tolist()) == set(range(20))
    with pytest.raises(ValueError, match="'val'"):
        rare_digits.group_of("val")


def test_rare_metadata_and_immutability(rare_digits, digits):
    assert rare_digits.dataset.name == "digits+rare-invert"
    assert (rare_digits.transform, rare_digits.fraction) == ("invert", 0.05)
    assert rare_digits.dataset.class_names == digits.class_names
    for name in data.SPLIT_NAMES:
        for array in (rare_digits.minority(name), rare_digits.group_of(name)):
            assert not array.flags.writeable
        assert rare_digits.minority(name).dtype == np.bool_
        assert not rare_digits.dataset.split(name).images.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        rare_digits.train_minority[0] = True
    with pytest.raises(dataclasses.FrozenInstanceError):
        rare_digits.dataset = digits  # type: ignore[misc]
    # The source dataset is untouched.
    np.testing.assert_array_equal(digits.train.images, data.load("digits").train.images)


def test_rare_unknown_transform_lists_known_ones(digits):
    with pytest.raises(ValueError, match=r"'sepia'.*'invert', 'rotate90', 'blur'"):
        data.make_rare(digits, transform="sepia")


@pytest.mark.parametrize("fraction", [0.0, 0.5, -0.1, 0.7])
def test_rare_fraction_must_lie_in_open_zero_half(digits, fraction):
    with pytest.raises(ValueError, match=r"fraction must be strictly between 0 and 0.5"):
        data.make_rare(digits, fraction=fraction)


def test_rare_rotate90_needs_square_images():
    tiny = _tiny_dataset((4, 6, 1), (4, 2, 2))
    with pytest.raises(ValueError, match="square images.*4 x 6"):
        data.make_rare(tiny, transform="rotate90")
    data.make_rare(tiny, transform="blur")  # The other transforms take any shape.


@pytest.mark.parametrize("transform", sorted(_RARE_REFERENCES))
def test_rare_split_without_a_minority_is_left_as_is(transform):
    tiny = _tiny_dataset((3, 3, 2), (4, 2, 1))  # One test image per class: n // 2 = 0 of them.
    rare = data.make_rare(tiny, transform=transform, fraction=0.25)
    assert not rare.test_minority.any()
    np.testing.assert_allclose(
        rare.dataset.denormalize(rare.dataset.test.images),
        tiny.denormalize(tiny.test.images),
        atol=1e-6,
    )


def test_rare_needs_two_train_examples_per_class():
    tiny = _tiny_dataset((2, 2, 1), (1, 1, 2))
    with pytest.raises(ValueError, match=r"class\(es\) \[0, 1, 2\] have fewer than 2 train"):
        data.make_rare(tiny)


@hypothesis.settings(max_examples=200, deadline=None)
@hypothesis.given(num=st.integers(2, 10_000), fraction=st.floats(1e-4, 0.4999))
def test_rare_count_is_near_target_and_leaves_a_majority(num, fraction):
    count = rare_count(num, fraction)
    assert 1 <= count <= num // 2
    assert abs(count - fraction * num) < 1.0


def test_rare_dataset_checks_its_masks(rare_digits):
    masks = {f"{name}_minority": rare_digits.minority(name) for name in data.SPLIT_NAMES}
    with pytest.raises(ValueError, match=r"train_minority must be a bool array of shape \(1293,\)"):
        data.RareDataset(
            rare_digits.dataset,
            "invert",
            0.05,
            **(masks | {"train_minority": masks["test_minority"]}),
        )
    with pytest.raises(ValueError, match="test_minority must be a bool array"):
        data.RareDataset(
            rare_digits.dataset,
            "invert",
            0.05,
            **(masks | {"test_minority": masks["test_minority"].astype(int)}),
        )
