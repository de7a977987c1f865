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
`ConvNet` and `VGG11` convolve with `jaxdd.conv.SameConv` (the 3x3 SAME convolution in the
formulation that suits the platform); `ResNet18`, whose convolutions are strided, with `nn.Conv`.
`MODELS` registers the architectures by name and `instantiate` builds one from its name.

Initialisation (`init_params`) follows the model's `init_scheme`, an `INIT_SCHEMES` entry:
'torch' (the default) is PyTorch's default for `Conv2d` / `Linear`, under which DC, DSA, DM
and the robust-DD code published their numbers: every kernel ~ U(-1/sqrt(fan_in),
1/sqrt(fan_in)) (kaiming-uniform with a = sqrt(5)) and every bias ~ U over the same range
(fan_in = kh * kw * C_in for convolutions, inputs for dense layers); norm scales 1, biases 0.
'lecun' keeps flax's default (LeCun-normal kernels, zero biases), whose weights are sqrt(3)x
larger in standard deviation: under instance norm that lowers the effective learning rate.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxdd import conv as conv_lib

__all__ = [
    "INIT_SCHEMES",
    "MODELS",
    "ConvNet",
    "MLP",
    "ResNet18",
    "VGG11",
    "cross_entropy",
    "init_params",
    "instantiate",
]

# DC's ConvNet 'groupnorm' uses 4 groups; capped by gcd so any width works.
_GROUP_NORM_GROUPS = 4

_T = TypeVar("_T")
_Layer = Callable[[jax.Array], jax.Array]


def _instance_norm(features: int, name: str) -> _Layer:
    # Per-sample, per-channel over H, W with a learned affine: DC's GroupNorm(C, C).
    del features
    return nn.GroupNorm(num_groups=None, group_size=1, epsilon=1e-5, name=name)


def _group_norm(features: int, name: str) -> _Layer:
    groups = math.gcd(_GROUP_NORM_GROUPS, features)
    return nn.GroupNorm(num_groups=groups, epsilon=1e-5, name=name)


def _no_norm(features: int, name: str) -> _Layer:
    del features, name
    return lambda x: x


def _no_pool(x: jax.Array, window: Sequence[int], strides: Sequence[int]) -> jax.Array:
    del window, strides
    return x


# Per-sample normalisation layers, `(features, name) -> layer`; none couples examples in a
# batch (no batch statistics).
_NORM_LAYERS: dict[str, Callable[[int, str], _Layer]] = {
    "instance": _instance_norm,
    "group": _group_norm,
    "none": _no_norm,
}
# Pooling functions, `(x, window, strides=...) -> pooled`.
_POOLS: dict[str, Callable[..., jax.Array]] = {
    "avg": nn.avg_pool,
    "max": nn.max_pool,
    "none": _no_pool,
}
NORMS = tuple(_NORM_LAYERS)
POOLINGS = tuple(_POOLS)


def _lookup(table: Mapping[str, _T], what: str, name: str) -> _T:
    """`table[name]`, or a ValueError naming `what`, the unknown `name` and the known ones."""
    if name not in table:
        raise ValueError(f"Unknown {what} {name!r}; expected one of {sorted(table)}.")
    return table[name]


def _pool(pool: Callable[..., jax.Array], x: jax.Array, *, min_size: int) -> jax.Array:
    """2x2 stride-2 `pool` (a `_POOLS` entry), skipped along an axis whose result would be
    below `min_size`.

    Feature maps that are still to be normalised use `min_size=2`: instance norm of a 1x1 map
    is identically its bias, which would cut every input off from the logits.
    """
    window = tuple(2 if d // 2 >= min_size else 1 for d in x.shape[1:3])
    if window == (1, 1):
        return x
    return pool(x, window, strides=window)


def _flatten(x: jax.Array) -> jax.Array:
    return x.reshape(x.shape[0], -1)


class ConvNet(nn.Module):
    """DC/DSA ConvNet: `depth` x [conv3x3 -> norm -> ReLU -> pool 2x2], flatten, `fc`.

    An inner pool is skipped where it would leave a map below 2x2 for the next layer (see
    `_pool`); the last pool may reach 1x1. Depth 3 on 32x32 is exactly DC's network (embedding
    4 * 4 * width); on 8x8 digits the maps are 8, 4, 2 and the embedding is `width`.

    `conv` is any module factory called as
    `conv(features, kernel_size=(3, 3), padding='SAME', name=...)` that owns a `kernel` of shape
    `(3, 3, C_in, C_out)` and a `bias` of shape `(C_out,)`, exactly like `nn.Conv`; swapping in a
    faster implementation therefore leaves the parameter tree unchanged.

    `stem_pad` zero-pads the input by that many pixels per side before the first convolution,
    so the first conv's padding is `1 + stem_pad`: DC's ConvNet pads its first conv by 3 on
    1-channel inputs (`networks.py` `_make_layers`), i.e. `stem_pad=2`, which takes 28x28
    images to maps of 32, 16, 8, 4 and a 4 * 4 * width embedding, as in DC's numbers.

    `growth` multiplies the channels block by block: block `i` has `width * growth**i`
    (1, DC's, keeps every block at `width`; FRePo's ConvNet doubles them, 128/256/512:
    `yongchao97/FRePo` `lib/models/networks.py` 224).

    Parameters are named `conv{i}`, `norm{i}` (absent for norm='none') and `fc`.
    """

    num_classes: int
    depth: int = 3
    width: int = 128
    growth: int = 1
    norm: str = "instance"
    pooling: str = "avg"
    stem_pad: int = 0
    init_scheme: str = "torch"
    conv: Callable[..., nn.Module] = conv_lib.SameConv

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        norm = _lookup(_NORM_LAYERS, "norm", self.norm)
        pool = _lookup(_POOLS, "pooling", self.pooling)
        if self.stem_pad:
            pad = self.stem_pad
            x = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
        if self.growth < 1:
            raise ValueError(f"ConvNet growth must be >= 1, got {self.growth}.")
        for i in range(self.depth):
            features = self.width * self.growth**i
            x = self.conv(features, kernel_size=(3, 3), padding="SAME", name=f"conv{i}")(x)
            x = norm(features, name=f"norm{i}")(x)
            x = nn.relu(x)
            x = _pool(pool, x, min_size=1 if i == self.depth - 1 else 2)
        embedding = _flatten(x)
        logits = nn.Dense(self.num_classes, name="fc")(embedding)
        return logits, embedding


class MLP(nn.Module):
    """Flatten -> (depth - 1) x [Dense(width) -> ReLU] -> `fc`, as DC's MLP (depth 3)."""

    num_classes: int
    width: int = 128
    depth: int = 3
    init_scheme: str = "torch"

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
    norm: Callable[[int, str], _Layer]  # A `_NORM_LAYERS` entry.

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        conv = functools.partial(nn.Conv, use_bias=False, padding="SAME")
        # Downsample only along axes that stay >= 2 (instance norm of a 1x1 map is constant).
        s = tuple(self.strides if d >= 3 else 1 for d in x.shape[1:3])
        y = conv(self.features, (3, 3), strides=s, name="conv0")(x)
        y = nn.relu(self.norm(self.features, name="norm0")(y))
        y = conv(self.features, (3, 3), name="conv1")(y)
        y = self.norm(self.features, name="norm1")(y)
        if self.strides != 1 or x.shape[-1] != self.features:
            x = conv(self.features, (1, 1), strides=s, name="proj_conv")(x)
            x = self.norm(self.features, name="proj_norm")(x)
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
    init_scheme: str = "torch"

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        if self.norm not in ("instance", "group"):
            raise ValueError(f"ResNet18 norm must be 'instance' or 'group', got {self.norm!r}.")
        norm = _NORM_LAYERS[self.norm]
        x = nn.Conv(self.width, (3, 3), padding="SAME", use_bias=False, name="stem_conv")(x)
        x = nn.relu(norm(self.width, name="stem_norm")(x))
        for stage, multiplier in enumerate((1, 2, 4, 8)):
            for block in range(2):
                strides = 2 if stage > 0 and block == 0 else 1
                x = _BasicBlock(
                    self.width * multiplier, strides, norm, name=f"stage{stage}_block{block}"
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
    init_scheme: str = "torch"
    conv: Callable[..., nn.Module] = conv_lib.SameConv

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        norm = _lookup(_NORM_LAYERS, "norm", self.norm)
        i = 0
        for position, item in enumerate(_VGG11_CFG):
            if item == "M":
                last = position == len(_VGG11_CFG) - 1
                x = _pool(nn.max_pool, x, min_size=1 if last else 2)
                continue
            features = max(1, item * self.width // 64)
            x = self.conv(features, kernel_size=(3, 3), padding="SAME", name=f"conv{i}")(x)
            x = nn.relu(norm(features, name=f"norm{i}")(x))
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


def instantiate(name: str, *, num_classes: int, **kwargs: Any) -> nn.Module:
    """The registered model `name` (see `MODELS`) with the given hyperparameters."""
    return _lookup(MODELS, "model", name)(num_classes=num_classes, **kwargs)


def _torch_scheme(params: Any, key: jax.Array) -> Any:
    """PyTorch's default init of every layer holding a `kernel`: kernel and bias ~ U(+-b),
    b = 1 / sqrt(fan_in), fan_in = the product of the kernel's axes but the last (out)."""

    def redraw(layer: Any, layer_key: jax.Array) -> Any:
        if not isinstance(layer, Mapping):
            return layer
        if "kernel" not in layer:
            return {
                name: redraw(sub, jax.random.fold_in(layer_key, i))
                for i, (name, sub) in enumerate(layer.items())
            }
        kernel = layer["kernel"]
        bound = 1.0 / math.sqrt(math.prod(kernel.shape[:-1]))
        kernel_key, bias_key = jax.random.split(layer_key)
        out = dict(layer)
        out["kernel"] = jax.random.uniform(
            kernel_key, kernel.shape, kernel.dtype, minval=-bound, maxval=bound
        )
        if "bias" in layer:
            out["bias"] = jax.random.uniform(
                bias_key, layer["bias"].shape, layer["bias"].dtype, minval=-bound, maxval=bound
            )
        return out

    return redraw(params, key)


def _lecun_scheme(params: Any, key: jax.Array) -> Any:
    del key
    return params


# `init_scheme` name -> (flax-initialised params, key) -> params.
INIT_SCHEMES: dict[str, Callable[[Any, jax.Array], Any]] = {
    "torch": _torch_scheme,
    "lecun": _lecun_scheme,
}


@functools.partial(jax.jit, static_argnames=("model", "image_shape"))
def _init(model: nn.Module, image_shape: tuple[int, ...], key: jax.Array) -> Any:
    # Jitted: eager initialisation dispatches every op separately and is many times slower;
    # module level, so repeated calls with one model and shape reuse the compiled program.
    scheme = INIT_SCHEMES[getattr(model, "init_scheme", "torch")]
    flax_key, scheme_key = jax.random.split(key)
    dummy = jnp.zeros((1, *image_shape), jnp.float32)
    return scheme(model.init(flax_key, dummy)["params"], scheme_key)


def init_params(model: nn.Module, key: jax.Array, image_shape: Sequence[int]) -> Any:
    """Initial `params` collection of `model` for images of shape `(H, W, C)`, drawn by the
    model's `init_scheme` (see the module docstring; 'torch' when the model has none)."""
    if len(image_shape) != 3:
        raise ValueError(f"image_shape must be (H, W, C), got {tuple(image_shape)}.")
    _lookup(INIT_SCHEMES, "init_scheme", getattr(model, "init_scheme", "torch"))
    return _init(model, tuple(int(d) for d in image_shape), key)


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
