"""Tests for jaxdd.synthetic: the initial synthetic set (real images, noise, coresets)."""

import pathlib

import jax
import jax.numpy as jnp
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


@pytest.mark.parametrize(
    "sizes, ipc, expected",
    [
        ([[50, 30, 15, 5]], 10, [[5, 3, 1, 1]]),  # One each, the rest by size (D'Hondt).
        ([[50, 30, 15, 5]], 4, [[1, 1, 1, 1]]),
        ([[50, 30, 15, 5]], 2, [[1, 1, 0, 0]]),  # ipc < K: the largest groups.
        ([[5, 5, 5, 5]], 6, [[2, 2, 1, 1]]),  # Ties to the lower index.
        ([[1, 1, 100, 1]], 8, [[1, 1, 5, 1]]),  # Never above a group's size.
        ([[2, 1], [1, 2]], 3, [[2, 1], [1, 2]]),  # Every member, per class.
    ],
)
def test_group_quota_covers_subgroups_then_follows_size(sizes, ipc, expected):
    quota = synthetic.group_quota(np.array(sizes), ipc)
    np.testing.assert_array_equal(quota, expected)
    assert np.all(quota.sum(axis=1) == ipc) and np.all(quota <= np.array(sizes))


def test_group_quota_refuses_a_class_smaller_than_ipc():
    with pytest.raises(ValueError, match="class 1 has 3 examples, fewer than ipc=4"):
        synthetic.group_quota(np.array([[2, 2], [1, 2]]), 4)


def test_init_groups_draws_quota_members_of_each_group():
    """Unequal groups (class c: sizes 9, 2, 1 -> quota 3, 1, 1 at ipc 5): the right number of
    distinct real members of each group, class rows ordered by group, deterministic in the key."""
    num_classes, per_class = 2, 12
    images = jax.random.normal(jax.random.key(3), (num_classes * per_class, 4, 4, 1))
    labels = np.repeat(np.arange(num_classes), per_class)
    assignments = np.tile(np.array([0] * 9 + [1, 1, 2]), num_classes)
    groups = groups_lib.make_groups(labels, assignments, num_classes=num_classes, num_clusters=3)
    real = step.RealData(images=images, groups=groups)
    out, out_labels = synthetic.initial_set("groups", real, ipc=5, key=jax.random.key(0), seed=0)
    assert out.shape == (2, 5, 4, 4, 1)
    np.testing.assert_array_equal(out_labels, np.repeat(np.arange(2)[:, None], 5, axis=1))
    flat = np.asarray(images).reshape(len(images), -1)
    for c in range(num_classes):
        rows = [int(np.flatnonzero(np.all(flat == img.reshape(-1), axis=1))[0]) for img in out[c]]
        assert len(set(rows)) == 5 and np.all(labels[rows] == c)
        np.testing.assert_array_equal(assignments[rows], [0, 0, 0, 1, 2])
    again, _ = synthetic.initial_set("groups", real, ipc=5, key=jax.random.key(0), seed=0)
    np.testing.assert_array_equal(out, again)
    other, _ = synthetic.initial_set("groups", real, ipc=5, key=jax.random.key(1), seed=0)
    assert not np.array_equal(out, other)


def _upsample_bilinear(image: np.ndarray, size: int) -> np.ndarray:
    """torch's `interpolate(mode='bilinear', align_corners=False)` of a (h, w) image, in numpy:
    half-pixel centres, source coordinates clamped at the edges."""

    def axis(n_in):
        src = np.clip((np.arange(size) + 0.5) * n_in / size - 0.5, 0, n_in - 1)
        low = np.floor(src).astype(int)
        return low, np.minimum(low + 1, n_in - 1), src - low

    (r0, r1, rw), (c0, c1, cw) = axis(image.shape[0]), axis(image.shape[1])
    rows = image[r0] * (1 - rw)[:, None] + image[r1] * rw[:, None]
    return rows[:, c0] * (1 - cw) + rows[:, c1] * cw


def test_factorized_decode_is_idcs_decode_zoom():
    """Crop (i, j) of every stored image, upsampled bilinearly as IDC's `nn.Upsample`, crops in
    row-major order, labels repeated (IDC `condense.py` 102-122)."""
    stored = np.asarray(jax.random.normal(jax.random.key(0), (2, 3, 8, 8, 1)))
    labels = np.repeat(np.arange(2)[:, None], 3, axis=1).astype(np.int32)
    decoded, decoded_labels = synthetic.decode(stored, labels, param="factorized", factor=2)
    assert decoded.shape == (2, 12, 8, 8, 1)
    np.testing.assert_array_equal(decoded_labels, np.repeat(np.arange(2)[:, None], 12, axis=1))
    for c in range(2):
        for i in range(2):
            for j in range(2):
                for n in range(3):
                    crop = stored[c, n, 4 * i : 4 * i + 4, 4 * j : 4 * j + 4, 0]
                    np.testing.assert_allclose(
                        decoded[c, (2 * i + j) * 3 + n, :, :, 0],
                        _upsample_bilinear(crop, 8),
                        atol=1e-5,
                    )


def test_pixels_decode_is_the_identity_and_factors_must_divide():
    stored = jax.random.normal(jax.random.key(0), (2, 3, 6, 6, 1))
    labels = np.zeros((2, 3), np.int32)
    images, same = synthetic.decode(stored, labels)
    assert images is stored and same is labels
    with pytest.raises(ValueError, match="syn.factor=4 must divide the image size 6x6"):
        synthetic.decode(stored, labels, param="factorized", factor=4)
    with pytest.raises(ValueError, match="unknown syn.param"):
        synthetic.decode(stored, labels, param="latent")


def test_mix_init_tiles_real_images_that_decode_back(real):
    """Each crop of a mix-initialised image is a downsampled real image of its class:
    decoding gives back the real images blurred by the down- and upsampling."""
    real, labels_all = real
    stored, labels = synthetic.initial_set(
        "mix", real, ipc=2, key=jax.random.key(4), seed=0, factor=2
    )
    assert stored.shape == (3, 2, 8, 8, 1)
    np.testing.assert_array_equal(labels, np.repeat(np.arange(3)[:, None], 2, axis=1))
    decoded, _ = synthetic.decode(stored, labels, param="factorized", factor=2)
    originals, _ = synthetic.init_synthetic(real, ipc=8, key=jax.random.key(4))
    # Each class's images are offset by its label (the fixture): a decoded image is closer to
    # its own real image than to any other class's images.
    np.testing.assert_allclose(
        decoded.mean(axis=(2, 3, 4)), originals.mean(axis=(2, 3, 4)), atol=0.35
    )
    for c in range(3):
        assert np.all(np.abs(np.asarray(decoded[c]).mean(axis=(1, 2, 3)) - c) < 1.0)


def test_idc_cap_matches_a_fresh_subset_of_each_class():
    """`step.subsample_decoded` (IDC's batch_syn_max): per class, max_size distinct decoded
    images with their own labels, a different draw per class and per key; no cap below n."""
    num_classes, n = 3, 6
    images = jnp.arange(num_classes * n, dtype=jnp.float32).reshape(num_classes, n, 1, 1, 1)
    labels = jax.nn.one_hot(jnp.repeat(jnp.arange(num_classes)[:, None], n, 1), num_classes)
    labels = labels * (1 + jnp.arange(n))[None, :, None]  # Each image's own (soft) label row.
    kept, kept_labels = step.subsample_decoded(images, labels, 4, jax.random.key(0))
    assert kept.shape == (num_classes, 4, 1, 1, 1) and kept_labels.shape == (num_classes, 4, 3)
    for c in range(num_classes):
        picked = np.asarray(kept[c]).reshape(-1).astype(int)
        assert len(set(picked)) == 4 and all(c * n <= p < (c + 1) * n for p in picked)
        # The label travelled with its image.
        np.testing.assert_array_equal(kept_labels[c, :, c], picked - c * n + 1)
    draws = {tuple(np.asarray(kept[c]).reshape(-1) % n) for c in range(num_classes)}
    again = step.subsample_decoded(images, labels, 4, jax.random.key(1))[0]
    assert len(draws) > 1, "each class draws its own subset"
    assert not np.array_equal(again, kept), "each key draws afresh"
    same, _ = step.subsample_decoded(images, labels, n, jax.random.key(0))
    np.testing.assert_array_equal(same, images)
    np.testing.assert_array_equal(step.subsample_decoded(images, labels, 0, None)[0], images)
