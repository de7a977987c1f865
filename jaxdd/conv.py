"""The SAME convolution of jaxdd's architectures, formulated per platform.

This module's one job is `same_conv(x, kernel)`: the stride-1 'SAME' convolution (a
cross-correlation, as `lax.conv` computes; NHWC images, HWIO kernel with odd kh and kw) that
`SameConv`, the default `conv` of `models.ConvNet` and `models.VGG11`, applies, differentiable
to second order (gradient matching differentiates a parameter gradient w.r.t. images).

The formulation is chosen in one place, `default_impl`, from the platform at trace time:
  - 'cpu_kernels' on CPU: formulations picked from the static shapes by measurements on a
    2-core CPU (the comments at `_conv_forward`, `_winograd_conv` and `_cpu_conv` give them):
    Winograd's F(4x4, 3x3) on maps within one 4x4 tile, one dense GEMM on maps of at most 4
    pixels, GEMMs over shifted views for the image layer and XLA's convolution otherwise,
    under a hand-written VJP of loop-friendly ops, since XLA:CPU runs autodiff's
    kernel-gradient convolutions slowly inside loop bodies (jax-ml/jax#12868);
  - 'xla' on every other platform (GPU, TPU): `jax.lax.conv_general_dilated` under plain
    autodiff, i.e. cuDNN's or the TPU's convolution. The CPU kernels were chosen by CPU
    measurements only.
Both compute the same convolution and agree to float32 rounding (about 1e-5 of the output's
scale; `tests/conv_test.py` compares them).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["SameConv", "default_impl", "same_conv"]

_CONV_DIMS = ("NHWC", "HWIO", "NHWC")


# Forward formulations of `_cpu_conv`, chosen per call from static shapes (measured on the
# 2-core CPU, ConvNet-128 depth 3, per-group gradients of 40 groups x 64 images at 8x8:
# 1.21 s with XLA's convolution everywhere, 0.69 s with the choices below; 28x28: 11.8 s ->
# 9.9 s):
#   - maps of at most `_DENSE_MAX_PIXELS` pixels (2x2): one GEMM with the conv's dense
#     (H*W*C_in, H*W*C_out) matrix, which there has no more nonzeros than the conv has MACs;
#     XLA:CPU ran this 3x3-on-2x2 case as a slow generic convolution (16 GFLOP/s);
#   - at most `_SHIFTED_MAX_CHANNELS` input channels (the image layer): kh*kw GEMMs over
#     shifted views, 2x faster than XLA's convolution with C_in = 1;
#   - otherwise XLA's convolution.
# Before these, `_cpu_conv` sends a 3x3 kernel on a map of at most 4x4 pixels (but more than
# `_DENSE_MAX_PIXELS`) to Winograd's F(4x4, 3x3) (see `_winograd_conv`), differentiated by
# plain autodiff; 8x8 digits reach such a map in their second layer.
_DENSE_MAX_PIXELS = 4
_SHIFTED_MAX_CHANNELS = 4
# The kernel gradient is one im2col GEMM while an image's patches (H*W*kh*kw*C_in values) are
# at most this many (8x8 digits: 4x4x9x128 = 18k), else kh*kw GEMMs over the shifted views:
# im2col holds kh*kw copies of the input at once (2.3 GB for 2560 images at 14x14x128).
_IM2COL_MAX_PATCH = 32768


def _pad_same(x: jax.Array, kh: int, kw: int) -> jax.Array:
    return jnp.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))


def _shifted_views(x: jax.Array, kh: int, kw: int) -> list[jax.Array]:
    """The kh*kw views x[:, i:i+H, j:j+W] of the SAME-padded input, row-major in (i, j)."""
    h, w = x.shape[1:3]
    padded = _pad_same(x, kh, kw)
    return [padded[:, i : i + h, j : j + w] for i in range(kh) for j in range(kw)]


@functools.cache
def _dense_index(h: int, w: int, kh: int, kw: int):
    """For input pixel p and output pixel q of an h x w map: the kernel tap joining them,
    or kh*kw (a zero block) where none does."""
    index = np.full((h * w, h * w), kh * kw)
    for a in range(h):
        for b in range(w):
            for c in range(h):
                for d in range(w):
                    i, j = a - c + kh // 2, b - d + kw // 2
                    if 0 <= i < kh and 0 <= j < kw:
                        index[a * w + b, c * w + d] = i * kw + j
    return index


def _conv_forward(x: jax.Array, kernel: jax.Array) -> jax.Array:
    n, h, w, c_in = x.shape
    kh, kw, _, c_out = kernel.shape
    if h * w <= _DENSE_MAX_PIXELS:
        taps = jnp.concatenate(
            [kernel.reshape(kh * kw, c_in, c_out), jnp.zeros((1, c_in, c_out), kernel.dtype)]
        )
        dense = taps[_dense_index(h, w, kh, kw)]  # (HW_in, HW_out, C_in, C_out)
        dense = dense.transpose(0, 2, 1, 3).reshape(h * w * c_in, h * w * c_out)
        return (x.reshape(n, h * w * c_in) @ dense).reshape(n, h, w, c_out)
    if c_in <= _SHIFTED_MAX_CHANNELS:
        views = _shifted_views(x, kh, kw)
        taps = kernel.reshape(kh * kw, c_in, c_out)
        return sum(jnp.einsum("nhwi,io->nhwo", v, t) for v, t in zip(views, taps, strict=True))
    return _xla_conv(x, kernel)


# Winograd's minimal filtering F(4x4, 3x3) with the interpolation points 0, +-1, +-2 and
# infinity (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016): an output
# tile of 4x4 pixels from a 6x6 input tile costs 36 products per (C_in, C_out) pair instead of
# 144. Y = A^T [(G g G^T) * (B^T d B)] A is a cross-correlation, as `lax.conv` computes.
_WINOGRAD_BT = np.array(
    [
        [4, 0, -5, 0, 1, 0],
        [0, -4, -4, 1, 1, 0],
        [0, 4, -4, -1, 1, 0],
        [0, -2, -1, 2, 1, 0],
        [0, 2, -1, -2, 1, 0],
        [0, 4, 0, -5, 0, 1],
    ],
    np.float64,
)
_WINOGRAD_G = np.array(
    [
        [1 / 4, 0, 0],
        [-1 / 6, -1 / 6, -1 / 6],
        [-1 / 6, 1 / 6, -1 / 6],
        [1 / 24, 1 / 12, 1 / 6],
        [1 / 24, -1 / 12, 1 / 6],
        [0, 0, 1],
    ]
)
_WINOGRAD_AT = np.array(
    [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]],
    np.float64,
)
_WINOGRAD_TILE = 4


def _winograd_fits(x_shape: Sequence[int], kernel_shape: Sequence[int]) -> bool:
    h, w = x_shape[1:3]
    return (
        tuple(kernel_shape[:2]) == (3, 3)
        and h <= _WINOGRAD_TILE
        and w <= _WINOGRAD_TILE
        and h * w > _DENSE_MAX_PIXELS
    )


@functools.cache
def _winograd_matrices(h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """F(4x4, 3x3) for an h x w map (h, w <= 4) that fills one tile, as matrices over pixels:
    input (36, h*w) (B^T d B of the SAME-padded map, zero padding folded in), kernel (36, 9)
    (G g G^T) and output (h*w, 36) (A^T M A, cropped to the map)."""
    padded = _WINOGRAD_TILE + 2  # The input tile: the output tile and the 3x3 halo.
    inputs = [(i + 1) * padded + (j + 1) for i in range(h) for j in range(w)]
    outputs = [i * _WINOGRAD_TILE + j for i in range(h) for j in range(w)]
    return (
        np.kron(_WINOGRAD_BT, _WINOGRAD_BT)[:, inputs],
        np.kron(_WINOGRAD_G, _WINOGRAD_G),
        np.kron(_WINOGRAD_AT, _WINOGRAD_AT)[outputs],
    )


def _winograd_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """`_cpu_conv` of a 3x3 kernel on a map of at most 4x4 pixels, by F(4x4, 3x3).

    The whole map is one tile, so the transforms are small matrices applied along the pixel
    axis and the work is 36 batched (N, C_in) x (C_in, C_out) GEMMs, a quarter of the direct
    convolution's multiply-adds. Plain autodiff differentiates it into GEMMs again (the kernel
    gradient in the transformed domain, a batched GEMM under `vmap` over groups), so it needs
    no custom VJP and is loop-friendly. Measured on the 2-core CPU, forward plus both
    gradients over 2560 maps of 4x4x128: 0.39 s as XLA's convolution with `_cpu_conv`'s VJP,
    0.19 s here; per-group kernel gradients of 40 groups x 64: 0.32 -> 0.23 s. In float32 it
    agrees with the direct convolution to about 1e-5 of the output's scale.
    """
    n, h, w, c_in = x.shape
    c_out = kernel.shape[-1]
    to_tile, kernel_map, from_tile = (jnp.asarray(m, x.dtype) for m in _winograd_matrices(h, w))
    v = jnp.einsum("tp,npc->tnc", to_tile, x.reshape(n, h * w, c_in))
    u = jnp.einsum("tk,kco->tco", kernel_map, kernel.reshape(9, c_in, c_out))
    m = jnp.einsum("tnc,tco->tno", v, u)
    return jnp.einsum("qt,tno->nqo", from_tile, m).reshape(n, h, w, c_out)


def _cpu_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """`same_conv` formulated for XLA:CPU and for XLA loops on it ('cpu_kernels').

    XLA:CPU runs the convolutions that autodiff emits for a kernel gradient (batch as the
    contraction axis) through a slow generic path whenever they sit in a loop body -- `scan`,
    `fori_loop`, `lax.map` (jax-ml/jax#12868): measured 15x slower per iteration for
    ConvNet-3 at 8x8. Distillation lives in such loops (inner training, unrolls, group maps),
    so the VJP here is written with loop-friendly ops only: the input gradient is this same
    forward convolution with the flipped, transposed kernel, the kernel gradient is one GEMM
    of the im2col patches with the output gradient (kh*kw GEMMs of shifted views for large
    maps). Both are again differentiable (second order for gradient matching), and under
    `vmap` over groups the kernel gradient becomes a batched GEMM instead of a grouped
    convolution. The forward picks a formulation from the static shapes (see
    `_conv_forward`); all compute the same convolution.

    A 3x3 kernel on a map within 4x4 pixels but of more than 4 pixels goes to Winograd's
    F(4x4, 3x3) instead (`_winograd_conv`, plain autodiff), a quarter of the multiply-adds.
    """
    if _winograd_fits(x.shape, kernel.shape):
        return _winograd_conv(x, kernel)
    return _direct_conv(x, kernel)


@jax.custom_vjp
def _direct_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    return _conv_forward(x, kernel)


def _direct_conv_fwd(x: jax.Array, kernel: jax.Array):
    return _direct_conv(x, kernel), (x, kernel)


def _direct_conv_bwd(residuals, g: jax.Array):
    x, kernel = residuals
    kh, kw, c_in, c_out = kernel.shape
    dx = _cpu_conv(g, jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2))
    views = _shifted_views(x, kh, kw)
    g_rows = g.reshape(-1, c_out)
    if x.shape[1] * x.shape[2] * kh * kw * c_in <= _IM2COL_MAX_PATCH:
        patches = jnp.concatenate(views, axis=-1).reshape(-1, kh * kw * c_in)
        return dx, (patches.T @ g_rows).reshape(kernel.shape)
    dkernel = jnp.stack([v.reshape(-1, c_in).T @ g_rows for v in views])
    return dx, dkernel.reshape(kernel.shape)


_direct_conv.defvjp(_direct_conv_fwd, _direct_conv_bwd)


def _xla_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """`same_conv` as XLA's convolution under plain autodiff ('xla')."""
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=_CONV_DIMS)


_IMPLS: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    "cpu_kernels": _cpu_conv,
    "xla": _xla_conv,
}
# Platforms not listed get 'xla' (GPU, TPU and any other).
_PLATFORM_IMPLS: dict[str, str] = {"cpu": "cpu_kernels"}


def default_impl(platform: str) -> str:
    """The `same_conv` formulation used on `platform` ('cpu', 'gpu', 'tpu', ...): 'cpu_kernels'
    on CPU, 'xla' elsewhere."""
    return _PLATFORM_IMPLS.get(platform, "xla")


def same_conv(x: jax.Array, kernel: jax.Array, *, impl: str | None = None) -> jax.Array:
    """Stride-1 'SAME' convolution with an odd kernel, in the formulation suited to the platform.

    Args:
      x: (N, H, W, C_in).
      kernel: (kh, kw, C_in, C_out), kh and kw odd.
      impl: 'cpu_kernels' or 'xla' (see the module docstring); None (the default) takes
        `default_impl` of `jax.default_backend()`, read when the call is traced. A program
        jitted onto a device of another platform than the default backend's should pass
        `impl` explicitly.

    Returns:
      (N, H, W, C_out).
    """
    if impl is None:
        impl = default_impl(jax.default_backend())
    if impl not in _IMPLS:
        raise ValueError(f"Unknown same_conv impl {impl!r}; expected one of {sorted(_IMPLS)}.")
    if x.ndim != 4 or kernel.ndim != 4 or x.shape[-1] != kernel.shape[2]:
        raise ValueError(
            f"same_conv takes x (N, H, W, C_in) and kernel (kh, kw, C_in, C_out), got "
            f"{x.shape} and {kernel.shape}."
        )
    if any(k % 2 == 0 for k in kernel.shape[:2]):
        raise ValueError(f"same_conv needs an odd kernel, got {kernel.shape[:2]}.")
    return _IMPLS[impl](x, kernel)


class SameConv(nn.Module):
    """Drop-in for `nn.Conv(features, kernel_size, padding='SAME')` (stride 1, odd kernel)
    built on `same_conv` (per-platform formulation); same parameter names, shapes and
    initialisers as `nn.Conv`."""

    features: int
    kernel_size: tuple[int, int] = (3, 3)
    padding: str = "SAME"
    use_bias: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.padding != "SAME" or any(k % 2 == 0 for k in self.kernel_size):
            raise ValueError(
                f"SameConv supports padding='SAME' with odd kernels, got {self.padding!r} "
                f"and {self.kernel_size}; use nn.Conv."
            )
        kernel = self.param(
            "kernel",
            nn.initializers.lecun_normal(),
            (*self.kernel_size, x.shape[-1], self.features),
        )
        y = same_conv(x, kernel)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,))
        return y
