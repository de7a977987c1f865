"""Tests for jaxdd.augment: siamese semantics, gradients, DSA ranges, NumPy references."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxdd import augment as aug

FULL = aug.DEFAULT_STRATEGY
NO_FLIP = "color_crop_cutout_scale_rotate"


def _images(shape, seed=0):
    return jax.random.uniform(jax.random.key(seed), shape)


def _keys(n, seed=0):
    return jax.random.split(jax.random.key(seed), n)


@functools.cache
def _batched(strategy: str, mode: str, batch_shared: bool = True):
    """jit(vmap over keys) of augment: one compilation covers many keys."""
    fn = functools.partial(aug.augment, strategy=strategy, mode=mode, batch_shared=batch_shared)
    return jax.jit(jax.vmap(fn, in_axes=(None, 0)))


@pytest.mark.parametrize("mode", aug.MODES)
def test_siamese_same_key_same_transform_across_batch_sizes(mode):
    shared = _images((1, 8, 8, 3), seed=1)
    real = jnp.concatenate([_images((3, 8, 8, 3), seed=2), shared, _images((1, 8, 8, 3), 3)])
    syn = jnp.concatenate([shared, _images((1, 8, 8, 3), seed=4)])
    keys = _keys(12)
    out_real = _batched(FULL, mode)(real, keys)  # (keys, 5, H, W, C)
    out_syn = _batched(FULL, mode)(syn, keys)  # (keys, 2, H, W, C)
    np.testing.assert_allclose(out_real[:, 3], out_syn[:, 0], rtol=1e-6, atol=1e-6)
    # The transforms actually did something for at least some keys.
    assert not np.allclose(out_syn[:, 0], jnp.broadcast_to(shared[0], out_syn[:, 0].shape))


def test_different_keys_give_different_transforms():
    x = _images((2, 8, 8, 3))  # same shapes and key count as above: reuses the compilation
    a, b = _batched(FULL, "all")(x, _keys(12))[:2]
    assert not np.allclose(a, b)
    # In single mode, the family choice and its parameters vary over keys too.
    outs = _batched(FULL, "single")(x, _keys(12))
    assert len({np.asarray(o).tobytes() for o in outs}) > 1


@pytest.mark.parametrize("name", sorted(aug.TRANSFORMS))
def test_every_transform_has_finite_nonzero_image_gradients(name):
    x = _images((2, 8, 8, 2), seed=5)
    key = jax.random.key(11)
    fn = jax.jit(functools.partial(aug.TRANSFORMS[name], key=key))
    # Each transform is affine in the pixels, so finite differences are exact up to rounding.
    check_grads(fn, (x,), order=1, modes=["rev"], atol=1e-2, rtol=1e-2)
    w = _images(x.shape, seed=6)
    grad = jax.grad(lambda im: jnp.sum(fn(im) * w))(x)
    assert np.all(np.isfinite(grad)) and np.any(grad != 0)


def test_augment_gradient_flows_to_images():
    x = _images((3, 8, 8, 3), seed=7)
    # Every family in sequence, per-image parameters (the per-family tests use shared ones).
    fn = functools.partial(aug.augment, mode="all", batch_shared=False)
    grad_fn = jax.jit(jax.grad(lambda im, key: jnp.sum(fn(im, key) ** 2)))
    for key in _keys(2, seed=1):
        grad = grad_fn(x, key)
        assert np.all(np.isfinite(grad)) and np.any(grad != 0)


@pytest.mark.parametrize("strategy", ["none", "None", ""])
def test_none_strategy_is_identity(strategy):
    x = _images((2, 8, 8, 1))
    np.testing.assert_array_equal(aug.augment(x, jax.random.key(0), strategy=strategy), x)
    assert aug.parse_strategy(strategy) == ()


def _rightward_fraction(images):
    """Per image, the fraction of horizontal neighbour pairs that increase to the right.

    Pairs touching an exact zero (zero fill, cutout) are ignored. For a left-to-right ramp this is
    1 for the original, 0 for its mirror, and stays above one half under colour (a positive
    contrast factor), shifts, cutout, scaling and rotations of at most 15 degrees.
    """
    left, right = images[..., :, :-1, :], images[..., :, 1:, :]
    valid = (left != 0) & (right != 0)
    up = jnp.sum(valid & (right > left), axis=(-3, -2, -1))
    return up / jnp.sum(valid, axis=(-3, -2, -1))


@pytest.mark.parametrize("mode", aug.MODES)
def test_omitting_flip_means_no_flip(mode):
    ramp = jnp.broadcast_to(jnp.arange(1.0, 17.0)[None, :, None], (16, 16, 1))
    x = jnp.stack([ramp, ramp + 0.5])
    outs = _batched(NO_FLIP, mode)(x, _keys(64, seed=3))
    assert np.all(_rightward_fraction(outs) > 0.5)
    # Sanity check of the detector: with flip listed, some keys mirror, and it sees them.
    flipped = _batched("flip", mode)(x, _keys(8))
    for out in flipped:
        assert np.array_equal(out, x) or np.array_equal(out, x[:, :, ::-1])
    assert np.any(_rightward_fraction(flipped) == 0) and np.any(_rightward_fraction(flipped) == 1)


def test_affine_identity_reproduces_input():
    x = _images((3, 8, 10, 2))
    zero_angle = jnp.array([[1.0, -0.0, 0.0], [0.0, 1.0, 0.0]])  # rotate by 0
    unit_scale = jnp.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # scale (1, 1)
    for theta in (zero_angle, unit_scale):
        out = aug.affine_sample(x, jnp.broadcast_to(theta, (3, 2, 3)))
        np.testing.assert_allclose(out, x, atol=1e-5)


def test_affine_quarter_turn_is_rot90():
    x = _images((2, 8, 8, 3))
    theta = jnp.broadcast_to(jnp.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0]]), (2, 2, 3))
    out = aug.affine_sample(x, theta)
    np.testing.assert_allclose(out, np.rot90(np.asarray(x), k=1, axes=(1, 2)), atol=1e-5)


def _np_grid_sample(image, theta):
    """Independent bilinear grid_sample(align_corners=True, zeros padding) on one HWC image."""
    h, w, c = image.shape
    out = np.zeros_like(image, dtype=np.float64)
    for i, j in itertools.product(range(h), range(w)):
        xn, yn = 2 * j / (w - 1) - 1, 2 * i / (h - 1) - 1
        sx, sy = theta @ np.array([xn, yn, 1.0])
        col, row = (sx + 1) / 2 * (w - 1), (sy + 1) / 2 * (h - 1)
        r0, c0 = int(np.floor(row)), int(np.floor(col))
        for r, cc in itertools.product((r0, r0 + 1), (c0, c0 + 1)):
            weight = (1 - abs(row - r)) * (1 - abs(col - cc))
            if 0 <= r < h and 0 <= cc < w:
                out[i, j] += weight * image[r, cc]
    return out


def test_affine_sample_matches_numpy_bilinear():
    x = np.asarray(_images((2, 8, 9, 2), seed=3))
    rng = np.random.default_rng(0)
    theta = np.eye(2, 3)[None] + 0.3 * rng.normal(size=(2, 2, 3))
    out = aug.affine_sample(jnp.asarray(x), jnp.asarray(theta, jnp.float32))
    expected = np.stack([_np_grid_sample(x[n], theta[n]) for n in range(2)])
    np.testing.assert_allclose(out, expected, atol=1e-4)


def _np_translate(image, dy, dx):
    h, w, _ = image.shape
    out = np.zeros_like(image)
    for i, j in itertools.product(range(h), range(w)):
        if 0 <= i + dy < h and 0 <= j + dx < w:
            out[i, j] = image[i + dy, j + dx]
    return out


def test_translate_matches_numpy():
    x = np.asarray(_images((3, 8, 8, 2)))
    shifts = np.array([[1, -1], [0, 0], [-1, 1]])
    out = aug.translate(jnp.asarray(x), jnp.asarray(shifts), max_shift=(1, 1))
    expected = np.stack([_np_translate(x[n], *shifts[n]) for n in range(3)])
    np.testing.assert_array_equal(out, expected)


def test_rand_crop_keeps_shape_and_is_a_bounded_shift():
    x = _images((2, 16, 16, 3))
    outs = jax.jit(jax.vmap(lambda k: aug.rand_crop(x, k)))(_keys(8))
    assert outs.shape == (8, *x.shape)
    candidates = {  # 0.125 * 16 = 2 pixels of shift at most
        (dy, dx): _np_translate(np.asarray(x[0]), dy, dx)
        for dy, dx in itertools.product(range(-2, 3), repeat=2)
    }
    for out in outs:
        assert any(np.array_equal(out[0], c) for c in candidates.values())


def test_rand_cutout_zeros_one_square_of_half_size():
    x = _images((2, 8, 8, 1)) + 0.5  # strictly positive, so zeros come only from the cutout
    for out in np.asarray(jax.jit(jax.vmap(lambda k: aug.rand_cutout(x, k)))(_keys(8))):
        zero = out[0, ..., 0] == 0
        np.testing.assert_array_equal(out[~zero[None].repeat(2, 0)], x[~zero[None].repeat(2, 0)])
        rows, cols = np.nonzero(zero)
        # A 4x4 square, possibly clipped by the border (at least 2x2 of it stays inside).
        assert 4 <= zero.sum() <= 16
        assert zero.sum() == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        # Siamese: the same square in every image of the batch.
        np.testing.assert_array_equal(out[1, ..., 0] == 0, zero)


def test_rand_color_within_dsa_ranges():
    # Single channel: saturation is the identity, so out = c * (x - mean x) + mean x + b with
    # brightness b in [-0.5, 0.5] and contrast c in [0.5, 1.5].
    x = _images((4, 8, 8, 1))
    outs = jax.jit(jax.vmap(lambda k: aug.rand_color(x, k, batch_shared=False)))(_keys(8))
    for out in outs:
        mean_in, mean_out = x.mean(axis=(1, 2, 3)), out.mean(axis=(1, 2, 3))
        b = mean_out - mean_in
        c = (out - mean_out[:, None, None, None]).std(axis=(1, 2, 3)) / x.std(axis=(1, 2, 3))
        assert np.all(np.abs(b) <= 0.5 + 1e-5)
        assert np.all((c >= 0.5 - 1e-4) & (c <= 1.5 + 1e-4))


def test_jit_matches_eager():
    x = _images((1, 8, 8, 3))
    key = jax.random.key(9)
    jitted = jax.jit(functools.partial(aug.augment, strategy=FULL))
    np.testing.assert_allclose(jitted(x, key), aug.augment(x, key), rtol=1e-5, atol=1e-5)


def test_batch_shared_false_draws_per_image():
    x = jnp.broadcast_to(_images((1, 8, 8, 3)), (2, 8, 8, 3))
    per_image = _batched(FULL, "all", batch_shared=False)(x, _keys(12))
    assert not np.allclose(per_image[:, 0], per_image[:, 1])
    shared = _batched(FULL, "all")(x, _keys(12))
    np.testing.assert_array_equal(shared[:, 0], shared[:, 1])


@pytest.mark.parametrize("strategy", ["color_crop_blur", "Flip", "color__crop", "noise"])
def test_unknown_strategy_raises_listing_valid_names(strategy):
    with pytest.raises(ValueError, match="color.*crop.*cutout.*flip.*rotate.*scale"):
        aug.augment(jnp.zeros((1, 8, 8, 1)), jax.random.key(0), strategy=strategy)


def test_invalid_mode_and_input_raise():
    with pytest.raises(ValueError, match="mode"):
        aug.augment(jnp.zeros((1, 8, 8, 1)), jax.random.key(0), mode="multiple")
    with pytest.raises(ValueError, match="NHWC"):
        aug.augment(jnp.zeros((8, 8, 1)), jax.random.key(0))


def _chosen_family(key, families):
    """The family `augment`'s single mode draws for `key`, and the key it applies it with."""
    choice_key, key = jax.random.split(key)
    return families[int(jax.random.randint(choice_key, (), 0, len(families)))], key


@pytest.mark.parametrize(
    "shape, batch_shared",
    [((3, 8, 8, 2), True), ((3, 8, 8, 2), False), ((2, 40, 36, 1), True)],
    ids=["dense-sampling", "per-image", "gather-sampling"],
)
def test_single_mode_equals_the_chosen_family_alone(shape, batch_shared):
    # Single mode applies every family's identity except the drawn one (no lax.switch); the
    # result and its image gradient must equal the drawn family applied on its own.
    assert (shape[1] * shape[2] <= aug.DENSE_SAMPLING_MAX_PIXELS) == (shape[1] == 8)
    x = _images(shape, seed=7)
    families = aug.parse_strategy(FULL)
    probe = _images(shape, seed=8)

    def value_and_grad(fn):
        return jax.jit(jax.value_and_grad(lambda x, key: jnp.sum(probe * jnp.sin(fn(x, key)))))

    single = value_and_grad(
        functools.partial(aug.augment, strategy=FULL, batch_shared=batch_shared)
    )
    seen = set()
    for key in _keys(24, seed=3):
        name, family_key = _chosen_family(key, families)
        seen.add(name)
        alone = functools.partial(aug.TRANSFORMS[name], batch_shared=batch_shared)
        np.testing.assert_allclose(
            aug.augment(x, key, strategy=FULL, batch_shared=batch_shared),
            alone(x, family_key),
            atol=1e-6,
            err_msg=name,
        )
        (v1, g1), (v2, g2) = single(x, key), value_and_grad(alone)(x, family_key)
        np.testing.assert_allclose(v1, v2, rtol=1e-5, err_msg=name)
        np.testing.assert_allclose(g1, g2, atol=1e-5, err_msg=name)
    assert seen == set(families)  # The keys covered every family.


@pytest.mark.parametrize("batch_shared", [True, False])
def test_idc_mode_applies_flip_color_and_cutout_always(batch_shared):
    # IDC's DiffAug: flip, color, one drawn family of the rest, cutout, in that order.
    x = _images((3, 8, 8, 2), seed=10)
    for key in _keys(6, seed=4):
        flip_key, color_key, drawn_key, cutout_key = jax.random.split(key, 4)
        expected = aug.rand_flip(x, flip_key, batch_shared=batch_shared)
        expected = aug.rand_color(expected, color_key, batch_shared=batch_shared)
        expected = aug.augment(
            expected, drawn_key, strategy="crop_scale_rotate", batch_shared=batch_shared
        )
        expected = aug.rand_cutout(expected, cutout_key, batch_shared=batch_shared)
        out = aug.augment(x, key, strategy=FULL, mode="idc", batch_shared=batch_shared)
        np.testing.assert_allclose(out, expected, atol=1e-6)
    # Cutout on every call (zeroed pixels in every image), where single mode draws it 1 in 2.
    positive = jnp.abs(_images((2, 8, 8, 1), seed=11)) + 0.1
    idc = _batched("color_cutout", "idc", batch_shared)(positive, _keys(16))
    single = _batched("color_cutout", "single", batch_shared)(positive, _keys(16))
    has_zeros = lambda out: np.any(np.asarray(out) == 0, axis=(2, 3, 4))  # (keys, images)
    assert has_zeros(idc).all() and not has_zeros(single).all()


def test_sampling_matrix_equals_sample():
    x = _images((3, 6, 7, 2), seed=9)
    rng = np.random.default_rng(1)
    # Fractional coordinates, some outside the image (zero fill).
    rows = jnp.asarray(rng.uniform(-1.5, 6.5, (6, 7)), jnp.float32)
    cols = jnp.asarray(rng.uniform(-1.5, 7.5, (6, 7)), jnp.float32)
    matrix = aug.sampling_matrix(rows, cols)
    via_matrix = jnp.einsum("pq,nqc->npc", matrix, x.reshape(3, 42, 2)).reshape(x.shape)
    np.testing.assert_allclose(via_matrix, aug.sample(x, rows[None], cols[None]), atol=1e-6)
    # Integer coordinates (a shift with zero fill): 0/1 rows, an exact copy.
    grid_rows, grid_cols = np.meshgrid(np.arange(6.0), np.arange(7.0), indexing="ij")
    matrix = aug.sampling_matrix(jnp.asarray(grid_rows + 1), jnp.asarray(grid_cols - 1))
    assert set(np.unique(np.asarray(matrix))) <= {0.0, 1.0}
    shifted = jnp.einsum("pq,nqc->npc", matrix, x.reshape(3, 42, 2)).reshape(x.shape)
    expected = aug.translate(x, jnp.array([[1, -1]] * 3), max_shift=(1, 1))
    np.testing.assert_array_equal(shifted, expected)
