"""Tests for jaxdd.synthetic: the initial synthetic set (real images, noise, coresets)."""

import pathlib

import jax
import numpy as np
import pytest

from jaxdd import baselines, build, data, step, synthetic
from jaxdd import config as config_lib
from jaxdd import groups as groups_lib

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(scope="module")
def real():
    """3 classes x 12 images of 8x8 (class c offset by c), 2 clusters each."""
    num_classes, per_class = 3, 12
    images = jax.random.normal(jax.random.key(0), (num_classes * per_class, 8, 8, 1))
    labels = np.repeat(np.arange(num_classes), per_class)
    assignments = np.tile(np.arange(per_class) % 2, num_classes)
    groups = groups_lib.make_groups(labels, assignments, num_classes=num_classes, num_clusters=2)
    return step.RealData(images=images + labels[:, None, None, None], groups=groups), labels


def test_init_synthetic_from_real_class_members_and_noise(real):
    real, labels_all = real
    image_shape = real.images.shape[1:]
    images, labels = synthetic.init_synthetic(real, ipc=3, key=jax.random.key(0))
    assert images.shape == (3, 3, *image_shape)
    train_images = np.asarray(real.images)
    for c in range(3):
        assert np.all(labels[c] == c)
        for img in np.asarray(images[c]):
            match = np.flatnonzero(np.all(train_images == img, axis=(1, 2, 3)))
            assert match.size and np.all(labels_all[match] == c)
        assert len({np.asarray(i).tobytes() for i in images[c]}) == 3  # without replacement
    noise, _ = synthetic.init_synthetic(real, ipc=2, key=jax.random.key(0), method="noise")
    assert abs(float(noise.std()) - 1.0) < 0.3
    with pytest.raises(ValueError, match="unknown synthetic init"):
        synthetic.init_synthetic(real, ipc=2, key=jax.random.key(0), method="zeros")


@pytest.mark.parametrize("method", sorted(baselines.BASELINES))
def test_coreset_is_the_baseline_on_flattened_pixels(method):
    dataset = data.load("digits", validation_fraction=0.1, test_fraction=0.2, seed=0)
    images, labels = synthetic.coreset(
        method, dataset.train.images, dataset.train.labels, ipc=2, seed=3
    )
    pixels = dataset.train.images.reshape(len(dataset.train), -1)
    index = baselines.select(method, pixels, dataset.train.labels, ipc=2, seed=3)
    np.testing.assert_array_equal(images.reshape(-1, 8, 8, 1), dataset.train.images[index])
    np.testing.assert_array_equal(labels, dataset.train.labels[index].reshape(10, 2))
    assert images.shape == (10, 2, 8, 8, 1) and labels.dtype == np.int32


def test_state_starts_from_the_configured_coreset():
    config = config_lib.load(CONFIGS / "smoke.py", "syn.init=k_center", "ipc=2")
    dataset, _ = build.load_data(config)
    groups = build.create_groups(config, dataset, key=jax.random.key(0))
    real = step.RealData(images=jax.numpy.asarray(dataset.train.images), groups=groups)
    state = build.create_state(
        config, real, key=jax.random.key(1), train_labels=dataset.train.labels
    )
    images, labels = synthetic.coreset(
        "k_center", dataset.train.images, dataset.train.labels, ipc=2, seed=0
    )
    np.testing.assert_array_equal(state.images, images)
    np.testing.assert_array_equal(state.labels, labels)
    with pytest.raises(ValueError, match="train labels"):
        build.create_state(config, real, key=jax.random.key(1))
