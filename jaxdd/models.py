"""The networks that distillation matches through and evaluation trains.

No model keeps running statistics (there is no BatchNorm anywhere): each is a pure function of
`(params, images)`, and the output for one image never depends on the other images in the batch.
That lets gradient matching, distribution matching and unrolled training batch and `vmap` freely.

Every model's `__call__(x)` takes NHWC float32 images of any spatial size >= 8x8 and returns
`(logits, embedding)`: logits `(N, num_classes)` and the penultimate feature `(N, D)`, which is
the input to the final `Dense` (named `fc` in every model). Downsampling never leaves a
feature map that is still to be normalised at 1x1 (instance norm of a single pixel is a
constant, which would disconnect the input), so small inputs such as 8x8 digits keep a working
network; at 32x32 every model is exactly its DC counterpart.

The architectures follow the DC/DSA codebase (Zhao et al.): `ConvNet` is DC's ConvNet,
`ResNet18` the CIFAR-style ResNet-18 and `VGG11` the VGG-11 used for cross-architecture
evaluation, with instance (or group) normalisation in place of batch normalisation.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

__all__ = [
    "MODELS",
    "ConvNet",
    "MLP",
    "ResNet18",
    "VGG11",
    "create_model",
    "cross_entropy",
    "init_params",
]

NORMS = ("instance", "group", "none")
POOLINGS = ("avg", "max", "none")
# DC's ConvNet 'groupnorm' uses 4 groups; capped by gcd so any width works.
_GROUP_NORM_GROUPS = 4


def _check_choice(what: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"Unknown {what} {value!r}; expected one of {sorted(allowed)}.")


def _norm(kind: str, features: int, name: str) -> Callable[[jax.Array], jax.Array]:
    """Per-sample normalisation layer (or identity); never couples examples in a batch."""
    if kind == "instance":
        # Per-sample, per-channel over H, W with a learned affine: DC's GroupNorm(C, C).
        return nn.GroupNorm(num_groups=None, group_size=1, epsilon=1e-5, name=name)
    if kind == "group":
        groups = math.gcd(_GROUP_NORM_GROUPS, features)
        return nn.GroupNorm(num_groups=groups, epsilon=1e-5, name=name)
    if kind == "none":
        return lambda x: x
    raise ValueError(f"Unknown norm {kind!r}; expected one of {sorted(NORMS)}.")


def _pool(kind: str, x: jax.Array, *, min_size: int) -> jax.Array:
    """2x2 stride-2 pooling, skipped along an axis whose result would be below `min_size`.

    Feature maps that are still to be normalised use `min_size=2`: instance norm of a 1x1 map
    is identically its bias, which would cut every input off from the logits.
    """
    window = tuple(2 if d // 2 >= min_size else 1 for d in x.shape[1:3])
    if kind == "none" or window == (1, 1):
        return x
    if kind == "avg":
        return nn.avg_pool(x, window, strides=window)
    if kind == "max":
        return nn.max_pool(x, window, strides=window)
    raise ValueError(f"Unknown pooling {kind!r}; expected one of {sorted(POOLINGS)}.")


def _flatten(x: jax.Array) -> jax.Array:
    return x.reshape(x.shape[0], -1)


_CONV_DIMS = ("NHWC", "HWIO", "NHWC")


# Forward formulations of `same_conv`, chosen per call from static shapes (measured on the
# 2-core CPU, ConvNet-128 depth 3, per-group gradients of 40 groups x 64 images at 8x8:
# 1.21 s with XLA's convolution everywhere, 0.69 s with the choices below; 28x28: 11.8 s ->
# 9.9 s):
#   - maps of at most `_DENSE_MAX_PIXELS` pixels (2x2): one GEMM with the conv's dense
#     (H*W*C_in, H*W*C_out) matrix, which there has no more nonzeros than the conv has MACs;
#     XLA:CPU ran this 3x3-on-2x2 case as a slow generic convolution (16 GFLOP/s);
#   - at most `_SHIFTED_MAX_CHANNELS` input channels (the image layer): kh*kw GEMMs over
#     shifted views, 2x faster than XLA's convolution with C_in = 1;
#   - otherwise XLA's convolution.
# Before these, `same_conv` sends a 3x3 kernel on a map of at most 4x4 pixels (but more than
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
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=_CONV_DIMS)


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
    """`same_conv` of a 3x3 kernel on a map of at most 4x4 pixels, by F(4x4, 3x3).

    The whole map is one tile, so the transforms are small matrices applied along the pixel
    axis and the work is 36 batched (N, C_in) x (C_in, C_out) GEMMs, a quarter of the direct
    convolution's multiply-adds. Plain autodiff differentiates it into GEMMs again (the kernel
    gradient in the transformed domain, a batched GEMM under `vmap` over groups), so it needs
    no custom VJP and is loop-friendly. Measured on the 2-core CPU, forward plus both
    gradients over 2560 maps of 4x4x128: 0.39 s as XLA's convolution with `same_conv`'s VJP,
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


def same_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """Stride-1 'SAME' convolution (odd kernel), fast on XLA:CPU and inside XLA loops.

    XLA:CPU runs the convolutions that autodiff emits for a kernel gradient (batch as the
    contraction axis) through a slow generic path whenever they sit in a loop body -- `scan`,
    `fori_loop`, `lax.map` (jax-ml/jax#12868): measured 15x slower per iteration for
    ConvNet-3 at 8x8. Distillation lives in such loops (inner training, unrolls, group maps),
    so the VJP here is written with loop-friendly ops only: the input gradient is this same
    forward convolution with the flipped, transposed kernel, the kernel gradient is one GEMM
    of the im2col patches with the output gradient (kh*kw GEMMs of shifted views for large
    maps). Both are again differentiable (second order for gradient matching), and under
    `vmap` over groups the kernel gradient becomes a batched GEMM instead of a grouped
    convolution. The forward picks a formulation from the
    static shapes (see `_conv_forward`); all compute the same convolution.

    A 3x3 kernel on a map within 4x4 pixels but of more than 4 pixels goes to Winograd's
    F(4x4, 3x3) instead (`_winograd_conv`, plain autodiff), a quarter of the multiply-adds.

    Args:
      x: (N, H, W, C_in). kernel: (kh, kw, C_in, C_out), kh and kw odd.

    Returns:
      (N, H, W, C_out).
    """
    if _winograd_fits(x.shape, kernel.shape):
        return _winograd_conv(x, kernel)
    return _direct_conv(x, kernel)


@jax.custom_vjp
def _direct_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    return _conv_forward(x, kernel)


def _same_conv_fwd(x: jax.Array, kernel: jax.Array):
    return _direct_conv(x, kernel), (x, kernel)


def _same_conv_bwd(residuals, g: jax.Array):
    x, kernel = residuals
    kh, kw, c_in, c_out = kernel.shape
    dx = same_conv(g, jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2))
    views = _shifted_views(x, kh, kw)
    g_rows = g.reshape(-1, c_out)
    if x.shape[1] * x.shape[2] * kh * kw * c_in <= _IM2COL_MAX_PATCH:
        patches = jnp.concatenate(views, axis=-1).reshape(-1, kh * kw * c_in)
        return dx, (patches.T @ g_rows).reshape(kernel.shape)
    dkernel = jnp.stack([v.reshape(-1, c_in).T @ g_rows for v in views])
    return dx, dkernel.reshape(kernel.shape)


_direct_conv.defvjp(_same_conv_fwd, _same_conv_bwd)


class SameConv(nn.Module):
    """Drop-in for `nn.Conv(features, kernel_size, padding='SAME')` (stride 1, odd kernel)
    built on `same_conv`; same parameter names, shapes and initialisers as `nn.Conv`."""

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


class ConvNet(nn.Module):
    """DC/DSA ConvNet: `depth` x [conv3x3 -> norm -> ReLU -> pool 2x2], flatten, `fc`.

    An inner pool is skipped where it would leave a map below 2x2 for the next layer (see
    `_pool`); the last pool may reach 1x1. Depth 3 on 32x32 is exactly DC's network (embedding
    4 * 4 * width); on 8x8 digits the maps are 8, 4, 2 and the embedding is `width`.

    `conv` is any module factory called as
    `conv(features, kernel_size=(3, 3), padding='SAME', name=...)` that owns a `kernel` of shape
    `(3, 3, C_in, C_out)` and a `bias` of shape `(C_out,)`, exactly like `nn.Conv`; swapping in a
    faster implementation therefore leaves the parameter tree unchanged.

    Parameters are named `conv{i}`, `norm{i}` (absent for norm='none') and `fc`.
    """

    num_classes: int
    depth: int = 3
    width: int = 128
    norm: str = "instance"
    pooling: str = "avg"
    conv: Callable[..., nn.Module] = SameConv

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        _check_choice("norm", self.norm, NORMS)
        _check_choice("pooling", self.pooling, POOLINGS)
        for i in range(self.depth):
            x = self.conv(self.width, kernel_size=(3, 3), padding="SAME", name=f"conv{i}")(x)
            x = _norm(self.norm, self.width, name=f"norm{i}")(x)
            x = nn.relu(x)
            x = _pool(self.pooling, x, min_size=1 if i == self.depth - 1 else 2)
        embedding = _flatten(x)
        logits = nn.Dense(self.num_classes, name="fc")(embedding)
        return logits, embedding


class MLP(nn.Module):
    """Flatten -> (depth - 1) x [Dense(width) -> ReLU] -> `fc`, as DC's MLP (depth 3)."""

    num_classes: int
    width: int = 128
    depth: int = 3

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        if self.depth < 1:
            raise ValueError(f"MLP depth must be >= 1, got {self.depth}.")
        x = _flatten(x)
        for i in range(self.depth - 1):
            x = nn.relu(nn.Dense(self.width, name=f"dense{i}")(x))
        logits = nn.Dense(self.num_classes, name="fc")(x)
        return logits, x


class _BasicBlock(nn.Module):
    """ResNet BasicBlock: two 3x3 convs (no bias) with norm, identity or 1x1 projection skip."""

    features: int
    strides: int
    norm: str

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        conv = functools.partial(nn.Conv, use_bias=False, padding="SAME")
        # Downsample only along axes that stay >= 2 (instance norm of a 1x1 map is constant).
        s = tuple(self.strides if d >= 3 else 1 for d in x.shape[1:3])
        y = conv(self.features, (3, 3), strides=s, name="conv0")(x)
        y = nn.relu(_norm(self.norm, self.features, name="norm0")(y))
        y = conv(self.features, (3, 3), name="conv1")(y)
        y = _norm(self.norm, self.features, name="norm1")(y)
        if self.strides != 1 or x.shape[-1] != self.features:
            x = conv(self.features, (1, 1), strides=s, name="proj_conv")(x)
            x = _norm(self.norm, self.features, name="proj_norm")(x)
        return nn.relu(x + y)


class ResNet18(nn.Module):
    """CIFAR-style ResNet-18 (DC codebase): 3x3 stride-1 stem, no max-pool, stages of 2
    BasicBlocks with widths (w, 2w, 4w, 8w), strides (1, 2, 2, 2), global average pool, `fc`.

    A stride-2 step is reduced to 1 along an axis already below 3 pixels, so small inputs never
    reach 1x1 maps (32x32 inputs are unaffected: 32, 16, 8, 4).
    """

    num_classes: int
    norm: str = "instance"
    width: int = 64

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        if self.norm not in ("instance", "group"):
            raise ValueError(f"ResNet18 norm must be 'instance' or 'group', got {self.norm!r}.")
        x = nn.Conv(self.width, (3, 3), padding="SAME", use_bias=False, name="stem_conv")(x)
        x = nn.relu(_norm(self.norm, self.width, name="stem_norm")(x))
        for stage, multiplier in enumerate((1, 2, 4, 8)):
            for block in range(2):
                strides = 2 if stage > 0 and block == 0 else 1
                x = _BasicBlock(
                    self.width * multiplier, strides, self.norm, name=f"stage{stage}_block{block}"
                )(x)
        embedding = jnp.mean(x, axis=(1, 2))
        logits = nn.Dense(self.num_classes, name="fc")(embedding)
        return logits, embedding


_VGG11_CFG = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


class VGG11(nn.Module):
    """VGG-11 (DC codebase): conv3x3 -> norm -> ReLU blocks, 2x2 max-pools, flatten, `fc`.

    Channel counts are the standard configuration scaled by `width / 64`. An inner pool is
    skipped where it would leave a map below 2x2 (see `_pool`), so any input >= 8x8 works;
    32x32 inputs give exactly DC's network, ending at 1x1. `conv` follows `ConvNet`'s contract.
    """

    num_classes: int
    norm: str = "instance"
    width: int = 64
    conv: Callable[..., nn.Module] = SameConv

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        _check_choice("norm", self.norm, NORMS)
        i = 0
        for position, item in enumerate(_VGG11_CFG):
            if item == "M":
                last = position == len(_VGG11_CFG) - 1
                x = _pool("max", x, min_size=1 if last else 2)
                continue
            features = max(1, item * self.width // 64)
            x = self.conv(features, kernel_size=(3, 3), padding="SAME", name=f"conv{i}")(x)
            x = nn.relu(_norm(self.norm, features, name=f"norm{i}")(x))
            i += 1
        embedding = _flatten(x)
        logits = nn.Dense(self.num_classes, name="fc")(embedding)
        return logits, embedding


MODELS: dict[str, Callable[..., nn.Module]] = {
    "convnet": ConvNet,
    "mlp": MLP,
    "resnet18": ResNet18,
    "vgg11": VGG11,
}


def create_model(name: str, *, num_classes: int, **kwargs: Any) -> nn.Module:
    """Builds the registered model `name` (see `MODELS`) with the given hyperparameters."""
    try:
        factory = MODELS[name]
    except KeyError:
        raise ValueError(f"Unknown model {name!r}; known models: {sorted(MODELS)}.") from None
    return factory(num_classes=num_classes, **kwargs)


def init_params(model: nn.Module, key: jax.Array, image_shape: Sequence[int]) -> Any:
    """Initial `params` collection of `model` for images of shape `(H, W, C)`."""
    if len(image_shape) != 3:
        raise ValueError(f"image_shape must be (H, W, C), got {tuple(image_shape)}.")
    dummy = jnp.zeros((1, *image_shape), jnp.float32)
    # Jitted: eager initialisation dispatches every op separately and is many times slower.
    return jax.jit(model.init)(key, dummy)["params"]


def cross_entropy(logits: jax.typing.ArrayLike, labels: jax.typing.ArrayLike) -> jax.Array:
    """Per-example softmax cross-entropy, differentiable in logits (and soft labels).

    Args:
      logits: `(N, num_classes)` unnormalised scores.
      labels: integer class indices `(N,)`, or probabilities `(N, num_classes)` (soft labels).

    Returns:
      `(N,)` unreduced losses.
    """
    logits = jnp.asarray(logits)
    labels = jnp.asarray(labels)
    if labels.shape == logits.shape:
        if not jnp.issubdtype(labels.dtype, jnp.floating):
            raise ValueError(f"Soft labels must be floating point, got dtype {labels.dtype}.")
        return optax.softmax_cross_entropy(logits, labels)
    if labels.shape == logits.shape[:-1]:
        if not jnp.issubdtype(labels.dtype, jnp.integer):
            raise ValueError(f"Hard labels must be integers, got dtype {labels.dtype}.")
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    raise ValueError(
        f"labels of shape {labels.shape} match neither logits {logits.shape} (soft labels) "
        f"nor {logits.shape[:-1]} (integer labels)."
    )
