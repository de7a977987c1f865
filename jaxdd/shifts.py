"""Pixel-space image transforms: `(N, H, W, C)` images in [0, 1] in, the same shape out.

Every transform of a [0, 1] image lives here once, for both of its users:

- the distribution shifts of SPEC's robustness protocol (`jaxdd.robustness`): Gaussian noise,
  Gaussian blur and colour inversion (the paper's three) plus contrast reduction, registered in
  `SHIFTS` with a config-given strength and applied, jitted and clipped to [0, 1], by
  `apply_shift`;
- the fixed, seed-free transforms that make the minorities of the rare-subpopulation benchmark
  (`jaxdd.data.rare`): `invert`, `rotate90` and `binomial_blur`.

Both blurs are the one separable convolution `blur`, with the edge handling each needs.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import numpy.typing as npt
from jax.typing import ArrayLike

from jaxdd import xla

__all__ = [
    "SHIFTS",
    "apply_shift",
    "binomial_blur",
    "blur",
    "contrast",
    "gaussian_blur",
    "gaussian_noise",
    "invert",
    "rotate90",
]

# `[1, 2, 1] / 4`: the 3-tap binomial kernel, exact in float32.
_BINOMIAL_KERNEL = np.array([0.25, 0.5, 0.25], np.float32)


def _clip(images: jax.Array) -> jax.Array:
    return jnp.clip(images, 0.0, 1.0)


def _check_images(images: jax.Array) -> None:
    if images.ndim != 4:
        raise ValueError(f"images must be NHWC (4-D), got shape {images.shape}.")


def blur(
    images: ArrayLike, kernel: npt.ArrayLike, *, mode: str, axes: Sequence[int] = (1, 2)
) -> jax.Array:
    """Convolves `images` with the 1-d `kernel` along each of `axes` in turn (a separable blur).

    Args:
      images: `(N, H, W, C)` images.
      kernel: `(2r + 1,)` weights, the centre one at index r. A kernel that sums to 1 keeps a
        constant image constant.
      mode: how the r pixels beyond each edge are filled, as in `jnp.pad`: 'edge' repeats the
        border pixel; 'reflect' mirrors the image without repeating it (needs r < the size of
        every blurred axis).
      axes: the axes to blur, in order.

    Returns:
      `(N, H, W, C)` float32 blurred images, not clipped.
    """
    images = jnp.asarray(images, jnp.float32)
    kernel = np.asarray(kernel, np.float32)
    if kernel.ndim != 1 or len(kernel) % 2 != 1:
        raise ValueError(f"blur needs a 1-d kernel of odd length, got shape {kernel.shape}.")
    radius = len(kernel) // 2
    for axis in axes:
        size = images.shape[axis]
        if mode == "reflect" and radius >= size:
            raise ValueError(
                f"A reflect-padded blur of radius {radius} needs more than {radius} pixels "
                f"along axis {axis}; the images have {size}."
            )
        pad = [(0, 0)] * images.ndim
        pad[axis] = (radius, radius)
        padded = jnp.pad(images, pad, mode=mode)
        # Python-float weights keep each product float32; the terms are summed left to right.
        images = sum(
            float(weight) * jax.lax.slice_in_dim(padded, i, i + size, axis=axis)
            for i, weight in enumerate(kernel)
        )
    return images


def binomial_blur(images: ArrayLike) -> jax.Array:
    """A 3x3 binomial blur (`[1, 2, 1] / 4` along H and W) per channel, replicating the edges.

    Edge replication keeps a constant image constant, and the kernel is non-negative and sums
    to 1, so [0, 1] pixels stay in [0, 1] without clipping. Small enough to blur an 8x8 digit
    without erasing it.
    """
    images = jnp.asarray(images, jnp.float32)
    _check_images(images)
    return blur(images, _BINOMIAL_KERNEL, mode="edge")


def _gaussian_kernel(sigma: float, radius: int) -> np.ndarray:
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (x / sigma) ** 2)
    return (kernel / kernel.sum()).astype(np.float32)


def gaussian_blur(images: ArrayLike, *, sigma: float) -> jax.Array:
    """Separable Gaussian blur of standard deviation `sigma` pixels, reflect padding, clipped.

    The kernel is truncated at `ceil(3 sigma)` pixels (and below the image size) and
    renormalised, so a constant image is unchanged. `sigma` must be a Python float > 0.
    """
    if not sigma > 0:
        raise ValueError(f"gaussian_blur needs sigma > 0, got {sigma}.")
    images = jnp.asarray(images, jnp.float32)
    _check_images(images)
    for axis in (1, 2):
        # Truncated at 3 sigma, and below the image size so that reflect padding is one
        # reflection; an axis of a single pixel has no neighbours to blur with.
        radius = min(max(1, math.ceil(3.0 * sigma)), images.shape[axis] - 1)
        if radius > 0:
            images = blur(images, _gaussian_kernel(sigma, radius), mode="reflect", axes=(axis,))
    return _clip(images)


def gaussian_noise(images: ArrayLike, key: jax.Array, *, sigma: float) -> jax.Array:
    """Adds i.i.d. N(0, sigma^2) noise to every pixel (sigma on the [0, 1] scale), then clips."""
    images = jnp.asarray(images, jnp.float32)
    return _clip(images + sigma * jax.random.normal(key, images.shape, images.dtype))


def invert(images: ArrayLike) -> jax.Array:
    """Colour inversion `1 - x`, float32.

    It maps [0, 1] onto itself exactly, so it needs no clip; `apply_shift('invert', ...)` clips
    anyway, like every registered shift, for inputs a round-off outside [0, 1].
    """
    return 1.0 - jnp.asarray(images, jnp.float32)


def rotate90(images: ArrayLike) -> jax.Array:
    """A quarter turn counter-clockwise in the (H, W) plane (`np.rot90`), square images only.

    A quarter turn of a non-square image would change its shape, so those are rejected.
    """
    images = jnp.asarray(images, jnp.float32)
    _check_images(images)
    height, width = images.shape[1:3]
    if height != width:
        raise ValueError(
            f"rotate90 needs square images (a quarter turn would change the image shape); got "
            f"H x W = {height} x {width}."
        )
    return jnp.rot90(images, k=1, axes=(1, 2))


def contrast(images: ArrayLike, *, factor: float) -> jax.Array:
    """Scales every image around its own mean pixel value (over H, W, C), then clips.

    `factor` < 1 lowers the contrast (0 gives a flat grey image), 1 is the identity.
    """
    images = jnp.asarray(images, jnp.float32)
    mean = jnp.mean(images, axis=(1, 2, 3), keepdims=True)
    return _clip(mean + factor * (images - mean))


# --- The shift registry ------------------------------------------------------------------------


def _noise_shift(images: jax.Array, *, key: jax.Array, strength: float) -> jax.Array:
    return gaussian_noise(images, key, sigma=strength)


def _blur_shift(images: jax.Array, *, key: jax.Array, strength: float) -> jax.Array:
    del key  # Deterministic.
    return gaussian_blur(images, sigma=strength)


def _invert_shift(images: jax.Array, *, key: jax.Array, strength: float | None) -> jax.Array:
    del key, strength  # Inversion has no degree.
    return _clip(invert(images))


def _contrast_shift(images: jax.Array, *, key: jax.Array, strength: float) -> jax.Array:
    del key  # Deterministic.
    return contrast(images, factor=strength)


# name -> fn(images, *, key, strength) with outputs in [0, 1]: strength is noise sigma, blur
# sigma (pixels) or contrast factor; ignored by 'invert'.
SHIFTS: dict[str, Callable[..., jax.Array]] = {
    "gaussian_noise": _noise_shift,
    "gaussian_blur": _blur_shift,
    "invert": _invert_shift,
    "contrast": _contrast_shift,
}
# Shifts whose strength must be given.
_NEEDS_STRENGTH = ("gaussian_noise", "gaussian_blur", "contrast")


@functools.partial(xla.jit, static_argnames=("name", "strength"))
def _apply_shift(name: str, images: jax.Array, key: jax.Array, strength: float | None):
    return SHIFTS[name](images, key=key, strength=strength)


def apply_shift(
    name: str, images: ArrayLike, *, key: jax.Array, strength: float | None = None
) -> jax.Array:
    """Applies the registered shift `name` (see `SHIFTS`) to [0, 1] NHWC images, jitted.

    Args:
      name: a key of `SHIFTS`.
      images: `(N, H, W, C)` pixel-space images in [0, 1].
      key: PRNG key (used by 'gaussian_noise' only).
      strength: noise sigma, blur sigma or contrast factor; None for 'invert'.

    Returns:
      `(N, H, W, C)` shifted images in [0, 1].
    """
    if name not in SHIFTS:
        raise ValueError(f"Unknown shift {name!r}; known shifts: {sorted(SHIFTS)}.")
    if name in _NEEDS_STRENGTH and strength is None:
        raise ValueError(f"Shift {name!r} needs a strength (e.g. gaussian_noise=0.1).")
    strength = None if strength is None else float(strength)
    return _apply_shift(name, jnp.asarray(images, jnp.float32), key, strength)
