"""Tests for jaxdd.shifts: the pixel-space transforms against NumPy/SciPy references."""

import hypothesis
import hypothesis.extra.numpy as hnp
import jax
import numpy as np
import pytest
import references
from hypothesis import strategies as st
from scipy import ndimage

from jaxdd import shifts


@pytest.fixture(scope="module")
def pixels():
    rng = np.random.default_rng(1)
    images = rng.uniform(size=(6, 8, 8, 3)).astype(np.float32)
    images[0] = 0.0  # Extremes must stay in range too.
    images[1] = 1.0
    return images


def test_invert_twice_is_identity(pixels):
    once = shifts.invert(pixels)
    np.testing.assert_allclose(once, 1.0 - pixels, atol=1e-7)
    np.testing.assert_allclose(shifts.invert(once), pixels, atol=1e-6)


def _high_frequency_energy(images):
    spectrum = np.abs(np.fft.fft2(np.asarray(images), axes=(1, 2))) ** 2
    freq = np.abs(np.fft.fftfreq(images.shape[1]))
    high = (freq[:, None] >= 0.25) | (freq[None, :] >= 0.25)
    return spectrum[:, high].sum()


def test_gaussian_blur(pixels):
    np.testing.assert_allclose(shifts.gaussian_blur(pixels, sigma=0.05), pixels, atol=1e-6)
    blurred = np.asarray(shifts.gaussian_blur(pixels, sigma=1.0))
    assert _high_frequency_energy(blurred) < 0.2 * _high_frequency_energy(pixels)
    # scipy's 'mirror' mode is NumPy's 'reflect'; truncate=3 gives the same 3-pixel radius.
    expected = ndimage.gaussian_filter(pixels, sigma=(0, 1, 1, 0), mode="mirror", truncate=3.0)
    np.testing.assert_allclose(blurred, expected, atol=1e-5)
    constant = np.full((1, 8, 8, 1), 0.3, np.float32)
    np.testing.assert_allclose(shifts.gaussian_blur(constant, sigma=2.0), constant, atol=1e-6)


def test_gaussian_noise(pixels):
    grey = np.full(pixels.shape, 0.5, np.float32)
    key = jax.random.key(0)
    noisy = shifts.gaussian_noise(grey, key, sigma=0.1)
    np.testing.assert_array_equal(noisy, shifts.gaussian_noise(grey, key, sigma=0.1))
    other = shifts.gaussian_noise(grey, jax.random.key(1), sigma=0.1)
    assert not np.allclose(noisy, other)
    np.testing.assert_allclose(np.std(np.asarray(noisy) - grey), 0.1, rtol=0.1)
    assert not np.allclose(shifts.gaussian_noise(pixels, key, sigma=0.1), pixels)


def test_contrast(pixels):
    np.testing.assert_allclose(shifts.contrast(pixels, factor=1.0), pixels, atol=1e-6)
    mid = 0.25 + 0.5 * pixels[2:]  # In [0.25, 0.75]: halving the contrast never clips.
    lowered = np.asarray(shifts.contrast(mid, factor=0.5))
    np.testing.assert_allclose(lowered.mean(axis=(1, 2, 3)), mid.mean(axis=(1, 2, 3)), atol=1e-6)
    np.testing.assert_allclose(lowered.std(axis=(1, 2, 3)), 0.5 * mid.std(axis=(1, 2, 3)), 1e-5)


@pytest.mark.parametrize(
    "name, strength",
    [("gaussian_noise", 0.3), ("gaussian_blur", 1.0), ("invert", None), ("contrast", 2.0)],
)
def test_registered_shifts_stay_in_unit_range(pixels, name, strength):
    shifted = np.asarray(shifts.apply_shift(name, pixels, key=jax.random.key(2), strength=strength))
    assert shifted.shape == pixels.shape
    assert shifted.min() >= 0.0 and shifted.max() <= 1.0
    assert not np.allclose(shifted, pixels)


def test_apply_shift_rejects_bad_requests(pixels):
    with pytest.raises(ValueError, match="Unknown shift"):
        shifts.apply_shift("fog", pixels, key=jax.random.key(0), strength=1.0)
    with pytest.raises(ValueError, match="needs a strength"):
        shifts.apply_shift("gaussian_blur", pixels, key=jax.random.key(0))


# --- blur, the shared separable convolution --------------------------------------------------


@pytest.mark.parametrize(("mode", "scipy_mode"), [("edge", "nearest"), ("reflect", "mirror")])
def test_blur_matches_scipy_correlate(pixels, mode, scipy_mode):
    kernel = np.array([0.1, 0.2, 0.4, 0.2, 0.1], np.float32)
    expected = pixels.astype(np.float64)
    for axis in (1, 2):
        expected = ndimage.correlate1d(expected, kernel.astype(np.float64), axis, mode=scipy_mode)
    blurred = shifts.blur(pixels, kernel, mode=mode)
    np.testing.assert_allclose(blurred, expected, atol=1e-6)
    # Under jit too: `kernel` and `mode` are host constants.
    jitted = jax.jit(lambda x: shifts.blur(x, kernel, mode=mode))(pixels)
    np.testing.assert_allclose(jitted, blurred, atol=1e-6)


def test_blur_only_touches_the_given_axes(pixels):
    kernel = np.array([0.25, 0.5, 0.25], np.float32)
    along_h = np.asarray(shifts.blur(pixels, kernel, mode="edge", axes=(1,)))
    expected = ndimage.correlate1d(pixels.astype(np.float64), kernel, 1, mode="nearest")
    np.testing.assert_allclose(along_h, expected, atol=1e-6)
    np.testing.assert_array_equal(shifts.blur(pixels, [1.0], mode="edge"), pixels)


def test_blur_rejects_bad_kernels_and_short_reflect_axes(pixels):
    with pytest.raises(ValueError, match="odd length"):
        shifts.blur(pixels, [0.5, 0.5], mode="edge")
    with pytest.raises(ValueError, match="odd length"):
        shifts.blur(pixels, np.ones((3, 3)), mode="edge")
    with pytest.raises(ValueError, match="radius 8 needs more than 8 pixels along axis 1"):
        shifts.blur(pixels, np.full(17, 1 / 17), mode="reflect")
    # Edge replication has no such limit.
    np.testing.assert_allclose(
        shifts.blur(np.full((1, 2, 2, 1), 0.3), np.full(17, 1 / 17), mode="edge"), 0.3, atol=1e-6
    )


def test_binomial_blur_matches_the_reference(pixels):
    for images in (pixels, pixels[:, :5, :3], pixels[:, :1, :1]):  # Non-square and 1x1 too.
        blurred = np.asarray(shifts.binomial_blur(images))
        assert blurred.shape == images.shape and blurred.dtype == np.float32
        np.testing.assert_allclose(blurred, references.binomial_blur(images), atol=1e-6)


@hypothesis.settings(max_examples=30, deadline=None)
@hypothesis.given(
    images=hnp.arrays(
        np.float32,
        st.tuples(st.integers(1, 3), st.integers(1, 6), st.integers(1, 6), st.integers(1, 3)),
        elements=st.floats(0.0, 1.0, width=32),
    ),
    level=st.floats(0.0, 1.0, width=32),
)
def test_binomial_blur_keeps_the_unit_range_and_constant_images(images, level):
    blurred = np.asarray(shifts.binomial_blur(images))
    assert blurred.min() >= 0.0 and blurred.max() <= 1.0
    # A blur (convex weights) never leaves the range of its input.
    assert blurred.min() >= images.min() - 1e-6 and blurred.max() <= images.max() + 1e-6
    constant = np.full(images.shape, level, np.float32)
    np.testing.assert_allclose(shifts.binomial_blur(constant), constant, atol=1e-6)


def test_gaussian_blur_of_tiny_images(pixels):
    # A 1-pixel axis is left alone; a 2-pixel one blurs with the radius clipped to 1.
    np.testing.assert_array_equal(
        shifts.gaussian_blur(pixels[:, :1, :1], sigma=1.0), pixels[:, :1, :1]
    )
    tiny = pixels[:, :2, :3]
    blurred = np.asarray(shifts.gaussian_blur(tiny, sigma=1.0))
    assert blurred.shape == tiny.shape
    constant = np.full((2, 2, 3, 1), 0.6, np.float32)
    np.testing.assert_allclose(shifts.gaussian_blur(constant, sigma=1.0), constant, atol=1e-6)
    with pytest.raises(ValueError, match="sigma > 0"):
        shifts.gaussian_blur(pixels, sigma=0.0)
    with pytest.raises(ValueError, match="NHWC"):
        shifts.gaussian_blur(pixels[0], sigma=1.0)


# --- invert and rotate90 ---------------------------------------------------------------------


def test_invert_is_exactly_one_minus_x_and_the_shift_clips():
    images = np.array([-0.25, 0.0, 0.3, 1.0, 1.5], np.float32).reshape(1, 1, 5, 1)
    np.testing.assert_array_equal(shifts.invert(images), 1.0 - images)  # Bit-exact, no clip.
    shifted = shifts.apply_shift("invert", images, key=jax.random.key(0))
    np.testing.assert_array_equal(shifted, np.clip(1.0 - images, 0.0, 1.0))


def test_rotate90_matches_the_reference_and_four_turns_are_identity(pixels):
    turned = shifts.rotate90(pixels)
    np.testing.assert_array_equal(turned, references.rotate90(pixels))
    again = turned
    for _ in range(3):
        again = shifts.rotate90(again)
    np.testing.assert_array_equal(again, pixels)
    np.testing.assert_array_equal(jax.jit(shifts.rotate90)(pixels), turned)


def test_rotate90_rejects_non_square_images(pixels):
    with pytest.raises(ValueError, match="square images.*5 x 8"):
        shifts.rotate90(pixels[:, :5])
