"""PyTorch references: the DC-style robust matching step (speed baseline), DC/DSA/DM/IDM ports.

Three things live here, all in eager PyTorch and all computing what jaxdd computes.

1. The speed baseline. The field's reference scripts (DC/DSA by Zhao et al., and the robust-DD
code built on them) compute a distillation step in eager PyTorch with Python loops: for every
class c the gradient of the cross-entropy on the synthetic images S_c is taken with
`torch.autograd.grad(..., create_graph=True)`, for every cluster k the gradient on that group's
real batch R_ck is taken and detached, and the layer-wise (1 - cosine) distance between the two
is one group loss. The C*K group losses are reduced by a risk measure and `.backward()` gives
the gradient with respect to the synthetic images. That is C + C*K separate forward/backward
launches per step. `robust_matching_step` reproduces exactly that step with the quantities
jaxdd computes, so that timing it against jaxdd's compiled step compares implementations of one
and the same function:

- `ConvNet` is `jaxdd.models.ConvNet` (instance norm, average pooling): `depth` x [conv 3x3
  SAME with bias -> GroupNorm(width, width, eps=1e-5) -> ReLU -> 2x2 average pool], flatten,
  `fc`, with jaxdd's rule for skipping a pool that would shrink a map too far, and jaxdd's
  `stem_pad` (extra zero padding before the first conv).
- `params_from_flax` copies a jaxdd parameter tree into it (HWIO -> OIHW kernels, NHWC -> NCHW
  flatten order of the `fc` inputs).
- `layerwise_cosine_distance` is DC's `match_loss` 'ours' (`jaxdd.matching`), and `cvar` the
  sort-based CVaR of `jaxdd.risk.cvar` for uniform weights (fractional boundary element).
- `robust_matching_step` is the DC-style loop; no DSA augmentation (the benchmark compares
  without it). tests/torch_reference_test.py checks its group losses and image gradient against
  `jaxdd.matching.gradient` and `jaxdd.step.robust_objective`.

`benchmarks.step_time` times it (its torch section). On its own, from the repository root:

  python -m benchmarks.torch_reference --shape 8,8,1 --repeats 5

prints the median seconds per step for the default configuration (C=10, K=4, m=64, ipc 10,
ConvNet-128 depth 3, alpha 0.5).

2. A port of the main loops of VICO-UoE/DatasetCondensation (DC, DSA and DM; "the reference"
below, cited as file:line of its HEAD, 53f63a6) for the parity benchmark against jaxdd:
`get_loops`, `ParamDiffAug` / `diff_augment` / `diff_augment_pair` (DSA), `dc_distill` (DC and
DSA, `main.py` 99-221), `dm_distill` (DM, `main_DM.py` 137-200) and `evaluate_synset`
(`utils.py` 297-362). They follow the reference statement by statement except for these
deliberate deviations:

- Seeds. The reference seeds from the clock: every network (`utils.py` 125, `get_network`),
  every siamese DSA draw (`main.py` 186, `main_DM.py` 156), and it samples real batches with the
  global NumPy RNG (`main.py` 80, `main_DM.py` 82) and shuffles with the global torch RNG
  (`main.py` 213, `utils.py` 348). Here every draw comes from the `seed` argument through
  `RandomStreams`: independent streams for network seeds, real batches, DSA parameters and
  loader shuffles, so a run is a function of its arguments and the caller's global RNGs are
  left untouched (`init_network` seeds under `torch.random.fork_rng`).
- Siamese DSA. The reference makes the real and the synthetic batch of a class share a
  transform by calling `DiffAugment` twice with one seed, which re-seeds the global RNG before
  each draw (`utils.py` 487-520) and then copies the first image's parameters to the whole batch
  (e.g. `randf[:] = randf[0]`, 560-561). Here the parameters are drawn once, for one image
  (`draw_diff_augment(n=1)`), and applied to both batches (`diff_augment_pair`): the same
  transform and the same distribution, without relying on a re-seeded RNG giving the same first
  value for batches of different sizes. Consecutive re-seeding (`latestseed += 1`, 492) is
  replaced by consecutive draws from one generator.
- Iterations. `main.py` 105 and `main_DM.py` 106 loop `Iteration + 1` times, evaluating at the
  top of a pass (`main.py` 108) and saving after it (223-225). `dc_distill(iterations=n)` and
  `dm_distill(iterations=n)` run exactly n passes: the set the reference evaluates at
  `it == Iteration` (the saved set has had one more update).
- Initialisation. The synthetic set starts at `train_images[init_indices]`, the images jaxdd
  starts from, instead of `get_images(c, ipc)` (`main.py` 91-94) or noise (DC's default
  `--init noise`, `main.py` 28, 88).
- Network. `ConvNet` here is jaxdd's (see above): DC's ConvNet 'instancenorm' / 'avgpooling' /
  'relu' (`networks.py` 36-110) except that a pool which would leave an inner map below 2x2 is
  skipped (DC always pools, 105-108); at 32x32 and depth 3 the two coincide. DC turns 28x28
  inputs into 32x32 maps by padding its first conv by 3 for one channel (95-99): that is
  `stem_pad=2` here, which callers pass explicitly (DC applies it to every 1-channel input).
  DC's `classifier` is named `fc`. Parameters are created in DC's order (conv, norm per layer,
  then the linear layer) with torch's default initialisation.
- The image update of `dc_distill` back-propagates into the images only
  (`backward(inputs=[images])`). The reference's bare `loss.backward()` (`main.py` 202) also
  accumulates the matching loss's gradient into the network's `.grad`, which `epoch` clears
  before every network step (`utils.py` 326) and nothing else reads: the results are the same.
- Not ported: evaluation and saving inside the loop (`main.py` 107-143, 223-225), the
  BatchNorm branches (`main.py` 158-174, `main_DM.py` 165-187; `ConvNet` has instance norm),
  distance metrics other than 'ours' (`utils.py` 248-269), DC's non-differentiable `augment`
  used when evaluating DC sets (`utils.py` 365-445; `get_daparam` picks 'crop_scale_rotate' for
  MNIST): `evaluate_synset` trains with per-image DSA or without augmentation. Data-parallel
  wrapping (`utils.py` 200-207) is dropped.
- Interfaces. Data comes as NumPy arrays in jaxdd's layout, images (N, H, W, Ch) float32
  already normalised and labels (N,) int, and synthetic sets go back as (N, H, W, Ch) NumPy;
  inside, images are NCHW tensors as in the reference (`diff_augment` takes NCHW tensors).
  `get_loops` raises ValueError where the reference calls `exit` (`utils.py` 290-292). Losses
  are logged every `log_every` iterations instead of every 10 (`main.py` 220,
  `main_DM.py` 199). The test pass of `evaluate_synset` runs under `torch.no_grad()` (the
  reference builds and drops a graph, `utils.py` 317): same numbers.

Kept on purpose, though they look like slips: `evaluate_synset` trains `epochs + 1` epochs and
decays the learning rate once, x0.1 after epoch `epochs // 2 + 1`, with a fresh SGD (momentum
buffer reset) (`utils.py` 343-355); DSA's affine families sample with `align_corners=True`,
the behaviour of the reference's pinned torch 1.2 (`requirements.txt` 3), which predates the
argument; DSA in single mode ('S', `utils.py` 511-516) applies ONE family per call, drawn once
per batch even when its parameters are drawn per image (training in `epoch`, `utils.py` 311).

3. A port of IDM's loop (Zhao et al., CVPR 2023; `uitrbn/IDM` `IDM_cifar10.py` at fe23bbc, built
on DC's code): `number_sign_augment` (its decoder of a partitioned set) and `idm_distill`, with
the seeding, interfaces, DSA and checkpoints of the DC / DM ports above (its checkpoint also
holds the network queue: weights, optimiser momenta, accuracy meters); its own deviations are
in `idm_distill`'s docstring. Kept on purpose: each class takes its own image step with the
shared momentum buffer (329-331), so one class's gradient keeps moving its images during the
other classes' steps.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import hashlib
import math
import os
import pathlib
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "DEFAULT_DSA_STRATEGY",
    "Checkpoint",
    "ConvNet",
    "DSADraw",
    "ParamDiffAug",
    "RandomStreams",
    "apply_diff_augment",
    "checkpoint_seconds",
    "cvar",
    "dc_distill",
    "diff_augment",
    "diff_augment_pair",
    "dm_distill",
    "draw_diff_augment",
    "evaluate_synset",
    "get_loops",
    "idm_distill",
    "init_network",
    "layerwise_cosine_distance",
    "number_sign_augment",
    "params_from_flax",
    "robust_matching_step",
    "time_step",
]

_NORM_EPS = 1e-5  # flax GroupNorm's and torch GroupNorm's default; jaxdd sets it explicitly.
_COSINE_EPS = 1e-6  # DC's epsilon added to the product of the norms.
DEFAULT_DSA_STRATEGY = "color_crop_cutout_flip_scale_rotate"


def _pool_window(size: Sequence[int], *, min_size: int) -> tuple[int, int]:
    """jaxdd ConvNet's pooling rule: 2 along an axis only if the result stays >= `min_size`."""
    return tuple(2 if d // 2 >= min_size else 1 for d in size)


class ConvNet(nn.Module):
    """jaxdd's `ConvNet` (norm='instance', pooling='avg') on NCHW images.

    Modules are named after jaxdd's parameters: `features.conv{i}`, `features.norm{i}` and `fc`.
    `feature_hw` is the spatial size of the last feature map, needed to reorder `fc`'s inputs.

    Args:
      image_shape: (H, W, Ch) of the inputs, jaxdd's convention.
      num_classes: outputs of `fc`. width, depth: as in jaxdd.
      stem_pad: extra zero padding per side of the input before the first conv, whose padding
        is therefore 1 + stem_pad (jaxdd's `stem_pad`). DC pads its first conv by 3 on
        1-channel inputs (`networks.py` 99), i.e. stem_pad=2: 28x28 maps go 32, 16, 8, 4. The
        pooling rule sees the padded size. Parameter shapes do not depend on it.
    """

    def __init__(
        self,
        image_shape: Sequence[int],
        num_classes: int,
        *,
        width: int = 128,
        depth: int = 3,
        stem_pad: int = 0,
    ):
        super().__init__()
        if stem_pad < 0:
            raise ValueError(f"stem_pad must be >= 0, got {stem_pad}.")
        height, width_px, channels = image_shape
        size = (height + 2 * stem_pad, width_px + 2 * stem_pad)
        layers: collections.OrderedDict[str, nn.Module] = collections.OrderedDict()
        in_channels = channels
        for i in range(depth):
            # Padding the first conv by 1 + stem_pad adds exactly the zeros jaxdd's jnp.pad does.
            padding = 1 + stem_pad if i == 0 else 1
            layers[f"conv{i}"] = nn.Conv2d(in_channels, width, kernel_size=3, padding=padding)
            # GroupNorm with one channel per group: per-sample, per-channel over H, W (DC's
            # 'instancenorm'), never coupling the examples of a batch.
            layers[f"norm{i}"] = nn.GroupNorm(width, width, eps=_NORM_EPS, affine=True)
            layers[f"relu{i}"] = nn.ReLU()
            window = _pool_window(size, min_size=1 if i == depth - 1 else 2)
            if window != (1, 1):
                layers[f"pool{i}"] = nn.AvgPool2d(window, stride=window)
                size = (size[0] // window[0], size[1] // window[1])
            in_channels = width
        self.features = nn.Sequential(layers)
        self.feature_hw = size
        self.fc = nn.Linear(width * size[0] * size[1], num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(N, Ch, H, W) images -> (N, width * h * w) flattened last feature map.

        DC's `ConvNet.embed` (`networks.py` 50-53), the feature DM matches; flattened in
        (c, h, w) order (jaxdd flattens (h, w, c): the same values, permuted).
        """
        return self.features(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, Ch, H, W) images -> (N, num_classes) logits."""
        return self.fc(self.embed(x))


def init_network(
    image_shape: Sequence[int],
    num_classes: int,
    *,
    width: int = 128,
    depth: int = 3,
    stem_pad: int = 0,
    seed: int,
    device: str | torch.device = "cpu",
) -> ConvNet:
    """A `ConvNet` with torch's default initialisation drawn from `seed`.

    Kaiming-uniform (a = sqrt(5)) kernels and uniform biases, as every `nn.Conv2d` / `nn.Linear`
    initialises itself, which is how DC's `get_network` builds its networks (`utils.py` 124-131)
    except that the seed is given rather than read from the clock (125). The global CPU RNG is
    seeded inside `fork_rng`, so the caller's RNG state is unchanged.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = ConvNet(image_shape, num_classes, width=width, depth=depth, stem_pad=stem_pad)
    return net.to(device)


def params_from_flax(
    flax_params: Mapping[str, Any], *, feature_hw: Sequence[int]
) -> dict[str, torch.Tensor]:
    """A `ConvNet` state dict holding the parameters of a jaxdd ConvNet (instance norm).

    Conv kernels go from flax's HWIO to torch's OIHW. jaxdd flattens the last NHWC feature map
    in (h, w, c) order, torch flattens NCHW in (c, h, w) order, so the rows of flax's `fc`
    kernel (in, out) are permuted into (c, h, w) order before it is transposed to (out, in).

    Args:
      flax_params: the `params` collection of `jaxdd.models.ConvNet` (arrays of any kind).
      feature_hw: `ConvNet.feature_hw`, the spatial size of the last feature map.

    Returns:
      The state dict, for `net.load_state_dict`.
    """

    def tensor(x: Any) -> torch.Tensor:
        return torch.from_numpy(np.array(x, dtype=np.float32))

    state: dict[str, torch.Tensor] = {}
    depth = sum(1 for name in flax_params if name.startswith("conv"))
    for i in range(depth):
        conv, norm = flax_params[f"conv{i}"], flax_params[f"norm{i}"]
        state[f"features.conv{i}.weight"] = tensor(conv["kernel"]).permute(3, 2, 0, 1).contiguous()
        state[f"features.conv{i}.bias"] = tensor(conv["bias"])
        state[f"features.norm{i}.weight"] = tensor(norm["scale"])
        state[f"features.norm{i}.bias"] = tensor(norm["bias"])
    kernel = tensor(flax_params["fc"]["kernel"])  # (h * w * c, out), rows in (h, w, c) order
    height, width = feature_hw
    kernel = kernel.reshape(height, width, -1, kernel.shape[-1]).permute(3, 2, 0, 1)
    state["fc.weight"] = kernel.reshape(kernel.shape[0], -1).contiguous()
    state["fc.bias"] = tensor(flax_params["fc"]["bias"])
    return state


def layerwise_cosine_distance(
    grads_syn: Sequence[torch.Tensor], grads_real: Sequence[torch.Tensor]
) -> torch.Tensor:
    """DC's `match_loss` 'ours': sum over layers and output units of (1 - cosine).

    DC's `distance_wb` / `match_loss` (`utils.py` 218-246), also the distance of `dc_distill`.

    Each parameter gradient with two or more axes is viewed as (out, rest), torch's layouts
    putting the output unit first; one-axis parameters (biases, norm affines) are skipped.
    """
    total = grads_syn[0].new_zeros(())
    for gs, gr in zip(grads_syn, grads_real, strict=True):
        if gs.ndim < 2:
            continue
        gs, gr = gs.reshape(gs.shape[0], -1), gr.reshape(gr.shape[0], -1)
        dot = torch.sum(gs * gr, dim=-1)
        norms = torch.linalg.vector_norm(gs, dim=-1) * torch.linalg.vector_norm(gr, dim=-1)
        total = total + torch.sum(1.0 - dot / (norms + _COSINE_EPS))
    return total


def cvar(losses: torch.Tensor, alpha: float) -> torch.Tensor:
    """CVaR of the (n,) `losses` under uniform weights, exactly as `jaxdd.risk.cvar`.

    The i-th largest loss gets the weight min(1/n, max(0, alpha - (i - 1)/n)) / alpha, so the
    boundary element of the worst alpha-fraction counts fractionally; alpha = 1 is the mean.
    """
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"alpha must be in (0, 1], got {alpha}.")
    if alpha == 1.0:
        return losses.mean()
    sorted_losses, _ = torch.sort(losses, descending=True, stable=True)
    weights = torch.full_like(sorted_losses, 1.0 / losses.numel())
    mass_before = torch.cumsum(weights, 0) - weights
    tail = torch.minimum(weights, torch.clamp(alpha - mass_before, min=0.0))
    return torch.sum(tail * sorted_losses) / alpha


def robust_matching_step(
    net: nn.Module,
    syn_images: torch.Tensor,
    syn_labels: torch.Tensor,
    real: torch.Tensor,
    alpha: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One DC-style robust gradient-matching step: CVaR of the C*K group losses, backward.

    Args:
      net: the network theta (its parameters are differentiated, not updated).
      syn_images: (C, ipc, Ch, H, W) leaf tensor with `requires_grad`.
      syn_labels: (C, ipc) integer labels.
      real: (C, K, m, Ch, H, W) real batches of every group.
      alpha: CVaR tail mass in (0, 1].

    Returns:
      The risk (), the (C, K) group losses (detached) and the (C, ipc, Ch, H, W) gradient of
      the risk w.r.t. `syn_images` (also left in `syn_images.grad`).
    """
    num_classes, num_clusters, m = real.shape[:3]
    params = [p for p in net.parameters() if p.requires_grad]
    losses = []
    for c in range(num_classes):
        loss_syn = F.cross_entropy(net(syn_images[c]), syn_labels[c])
        grads_syn = torch.autograd.grad(loss_syn, params, create_graph=True)
        real_labels = torch.full((m,), c, dtype=torch.long)
        for k in range(num_clusters):
            loss_real = F.cross_entropy(net(real[c, k]), real_labels)
            grads_real = [g.detach() for g in torch.autograd.grad(loss_real, params)]
            losses.append(layerwise_cosine_distance(grads_syn, grads_real))
    group_losses = torch.stack(losses)
    objective = cvar(group_losses, alpha)
    syn_images.grad = None
    # DC calls a bare `loss.backward()`, which also accumulates the second-order gradient into
    # the network's parameters; `inputs=` restricts it to the images, the only gradient jaxdd
    # computes, so both sides do the same work.
    objective.backward(inputs=[syn_images])
    return (
        objective.detach(),
        group_losses.detach().reshape(num_classes, num_clusters),
        syn_images.grad,
    )


def time_step(
    image_shape: Sequence[int] = (8, 8, 1),
    num_classes: int = 10,
    num_clusters: int = 4,
    num_real: int = 64,
    ipc: int = 10,
    width: int = 128,
    depth: int = 3,
    alpha: float = 0.5,
    repeats: int = 5,
    seed: int = 0,
    threads: int | None = None,
    stem_pad: int = 0,
) -> dict[str, Any]:
    """Seconds per `robust_matching_step` on random data: one warm-up step, then `repeats`.

    Args:
      image_shape: (H, W, Ch). threads: `torch.set_num_threads` (None: torch's default).
      stem_pad: `ConvNet`'s (jaxdd's resolved `model.stem_pad`: the same network both sides).
      The rest: the problem size, named as in jaxdd's config (num_real is m).

    Returns:
      {"median_s", "steps_s" (each timed step), "threads", "torch" (version)}.
    """
    if threads is not None:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    height, width_px, channels = image_shape
    net = ConvNet(image_shape, num_classes, width=width, depth=depth, stem_pad=stem_pad)
    syn_images = torch.randn(num_classes, ipc, channels, height, width_px, requires_grad=True)
    syn_labels = torch.arange(num_classes).repeat_interleave(ipc).reshape(num_classes, ipc)
    real = torch.randn(num_classes, num_clusters, num_real, channels, height, width_px)

    robust_matching_step(net, syn_images, syn_labels, real, alpha)  # warm-up
    steps = []
    for _ in range(repeats):
        start = time.perf_counter()
        robust_matching_step(net, syn_images, syn_labels, real, alpha)
        steps.append(time.perf_counter() - start)
    return {
        "median_s": statistics.median(steps),
        "steps_s": steps,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


# --------------------------------------------------------------------------------------------
# Port of VICO-UoE/DatasetCondensation (DC, DSA, DM) for the parity benchmark.
# --------------------------------------------------------------------------------------------

# DC's `get_loops` (`utils.py` 275-294): ipc -> (outer_loop, inner_loop).
_DC_LOOPS: dict[int, tuple[int, int]] = {
    1: (1, 1), 10: (10, 50), 20: (20, 25), 30: (30, 20), 40: (40, 15), 50: (50, 10)
}  # fmt: skip


def get_loops(ipc: int) -> tuple[int, int]:
    """DC's (outer_loop, inner_loop) for `ipc` (`utils.py` 275-294).

    Raises:
      ValueError: for an ipc outside DC's table (where the reference calls `exit`, 290-292).
    """
    if ipc not in _DC_LOOPS:
        raise ValueError(
            f"DC's get_loops defines (outer_loop, inner_loop) for ipc in {sorted(_DC_LOOPS)}, "
            f"not {ipc}; pass outer_loop and inner_loop explicitly."
        )
    return _DC_LOOPS[ipc]


@dataclasses.dataclass(frozen=True)
class ParamDiffAug:
    """DSA's hyperparameters, `ParamDiffAug` (`utils.py` 474-485), without its mutable state.

    The reference also stores `Siamese` and `latestseed` on this object per call (500-504);
    here siamese is an argument and the randomness a `torch.Generator`.
    aug_mode 'S' applies one family drawn per call, 'M' every family in the strategy's order.
    """

    aug_mode: str = "S"
    prob_flip: float = 0.5
    ratio_scale: float = 1.2
    ratio_rotate: float = 15.0
    ratio_crop_pad: float = 0.125
    ratio_cutout: float = 0.5  # the cutout square is 0.5 x 0.5 of the image
    brightness: float = 1.0
    saturation: float = 2.0
    contrast: float = 0.5


_DEFAULT_DSA_PARAM = ParamDiffAug()

# DSA's AUGMENT_FNS (`utils.py` 643-650): the ops of each family, applied in this order.
_FAMILIES: dict[str, tuple[str, ...]] = {
    "color": ("brightness", "saturation", "contrast"),
    "crop": ("crop",),
    "cutout": ("cutout",),
    "flip": ("flip",),
    "scale": ("scale",),
    "rotate": ("rotate",),
}


@dataclasses.dataclass(frozen=True)
class DSADraw:
    """One draw of DiffAugment's random parameters: the ops to apply, in order, with values.

    Each value has a leading axis of n: 1 for a siamese draw (broadcast to any batch) or the
    batch size for per-image parameters. Shapes per op:
      brightness, saturation, contrast, flip: (n,) uniforms in [0, 1);
      crop: (n, 2) integer shifts (rows, cols); cutout: (n, 2) integer centres (rows, cols);
      scale: (n, 2) factors (x, y); rotate: (n,) angles in radians.
    """

    ops: tuple[tuple[str, torch.Tensor], ...]


def _is_no_strategy(strategy: str | None) -> bool:
    # `DiffAugment` returns its input for these (`utils.py` 496-497); main_DM.py 38 likewise.
    return strategy is None or strategy in ("", "none", "None")


def _families(strategy: str) -> list[str]:
    families = strategy.split("_")
    unknown = [f for f in families if f not in _FAMILIES]
    if unknown:
        raise ValueError(f"Unknown DSA families {unknown} in {strategy!r}; known: {_FAMILIES}.")
    return families


def _crop_shift(size: int, param: ParamDiffAug) -> int:
    return int(size * param.ratio_crop_pad + 0.5)  # `utils.py` 600


def _cutout_size(size: int, param: ParamDiffAug) -> int:
    return int(size * param.ratio_cutout + 0.5)  # `utils.py` 622


def _draw_op(
    op: str, n: int, image_hw: Sequence[int], generator: torch.Generator, param: ParamDiffAug
) -> torch.Tensor:
    """The random values of one op for n parameter sets (see `DSADraw` for the shapes).

    Ranges as in the reference's `rand_*` (`utils.py` 524-640): uniforms for the color ops and
    flip, translations in [-shift, shift], cutout centres in [0, size + 1 - cut % 2), scales in
    [1/ratio, ratio), angles in [-ratio, ratio) degrees.
    """
    h, w = image_hw
    if op in ("brightness", "saturation", "contrast", "flip"):
        return torch.rand(n, generator=generator)
    if op == "crop":
        shift_h, shift_w = _crop_shift(h, param), _crop_shift(w, param)
        rows = torch.randint(-shift_h, shift_h + 1, (n,), generator=generator)
        cols = torch.randint(-shift_w, shift_w + 1, (n,), generator=generator)
        return torch.stack([rows, cols], dim=1)
    if op == "cutout":
        cut_h, cut_w = _cutout_size(h, param), _cutout_size(w, param)
        rows = torch.randint(0, h + (1 - cut_h % 2), (n,), generator=generator)
        cols = torch.randint(0, w + (1 - cut_w % 2), (n,), generator=generator)
        return torch.stack([rows, cols], dim=1)
    if op == "scale":
        ratio = param.ratio_scale
        u = torch.rand(n, 2, generator=generator)
        return u * (ratio - 1.0 / ratio) + 1.0 / ratio
    if op == "rotate":
        u = torch.rand(n, generator=generator)
        return (u - 0.5) * 2 * param.ratio_rotate / 180 * float(np.pi)
    raise ValueError(f"Unknown DSA op {op!r}.")


def draw_diff_augment(
    strategy: str,
    n: int,
    image_hw: Sequence[int],
    *,
    generator: torch.Generator,
    param: ParamDiffAug = _DEFAULT_DSA_PARAM,
) -> DSADraw:
    """DiffAugment's random choices (`utils.py` 495-520) for n parameter sets.

    Mode 'S' first draws one family uniformly from the strategy (514), then its ops' values;
    mode 'M' draws every family's values in order (507-510).

    Args:
      strategy: families joined by '_', e.g. 'color_crop_cutout_flip_scale_rotate'.
      n: 1 for one transform shared by any batch (siamese), else the batch size.
      image_hw: (H, W) of the images the draw will be applied to (crop and cutout ranges).
      generator: the source of every random value. param: DSA's hyperparameters.
    """
    families = _families(strategy)
    if param.aug_mode == "S":
        families = [families[int(torch.randint(0, len(families), (1,), generator=generator))]]
    elif param.aug_mode != "M":
        raise ValueError(f"Unknown DSA aug_mode {param.aug_mode!r}; expected 'S' or 'M'.")
    ops = tuple(
        (op, _draw_op(op, n, image_hw, generator, param))
        for family in families
        for op in _FAMILIES[family]
    )
    return DSADraw(ops=ops)


def _per_image(values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(n,) values as (n, 1, 1, 1) on x's device and dtype, to broadcast over (N, Ch, H, W)."""
    return values.to(device=x.device, dtype=x.dtype).view(-1, 1, 1, 1)


def _brightness(x: torch.Tensor, u: torch.Tensor, param: ParamDiffAug) -> torch.Tensor:
    """x + (u - 0.5) * brightness (`utils.py` 565-572)."""
    return x + (_per_image(u, x) - 0.5) * param.brightness


def _saturation(x: torch.Tensor, u: torch.Tensor, param: ParamDiffAug) -> torch.Tensor:
    """(x - channel mean) * (u * saturation) + channel mean (`utils.py` 575-583)."""
    x_mean = x.mean(dim=1, keepdim=True)
    return (x - x_mean) * (_per_image(u, x) * param.saturation) + x_mean


def _contrast(x: torch.Tensor, u: torch.Tensor, param: ParamDiffAug) -> torch.Tensor:
    """(x - image mean) * (u + contrast) + image mean (`utils.py` 586-594)."""
    x_mean = x.mean(dim=[1, 2, 3], keepdim=True)
    return (x - x_mean) * (_per_image(u, x) + param.contrast) + x_mean


def _flip(x: torch.Tensor, u: torch.Tensor, param: ParamDiffAug) -> torch.Tensor:
    """Mirror along W where u < prob_flip (`utils.py` 556-562)."""
    return torch.where(_per_image(u, x) < param.prob_flip, x.flip(3), x)


def _crop(x: torch.Tensor, shifts: torch.Tensor, param: ParamDiffAug) -> torch.Tensor:
    """out[i, j] = x[i + shift_rows, j + shift_cols], zero outside (`utils.py` 597-617).

    Gathers from a 1-pixel zero-padded copy with clamped indices, as the reference does.
    """
    del param
    n, _, h, w = x.shape
    shifts = shifts.to(x.device)
    rows, cols = shifts[:, 0].view(-1, 1, 1), shifts[:, 1].view(-1, 1, 1)
    grid_batch, grid_x, grid_y = torch.meshgrid(
        torch.arange(n, device=x.device),
        torch.arange(h, device=x.device),
        torch.arange(w, device=x.device),
        indexing="ij",
    )
    grid_x = torch.clamp(grid_x + rows + 1, 0, h + 1)
    grid_y = torch.clamp(grid_y + cols + 1, 0, w + 1)
    x_pad = F.pad(x, [1, 1, 1, 1, 0, 0, 0, 0])
    return x_pad.permute(0, 2, 3, 1).contiguous()[grid_batch, grid_x, grid_y].permute(0, 3, 1, 2)


def _cutout(x: torch.Tensor, centres: torch.Tensor, param: ParamDiffAug) -> torch.Tensor:
    """Zero a cut x cut square whose rows / cols start at centre - cut // 2, clipped to the
    image (`utils.py` 620-640)."""
    n, _, h, w = x.shape
    cut_h, cut_w = _cutout_size(h, param), _cutout_size(w, param)
    centres = centres.to(x.device)
    rows, cols = centres[:, 0].view(-1, 1, 1), centres[:, 1].view(-1, 1, 1)
    grid_batch, grid_x, grid_y = torch.meshgrid(
        torch.arange(n, device=x.device),
        torch.arange(cut_h, device=x.device),
        torch.arange(cut_w, device=x.device),
        indexing="ij",
    )
    grid_x = torch.clamp(grid_x + rows - cut_h // 2, min=0, max=h - 1)
    grid_y = torch.clamp(grid_y + cols - cut_w // 2, min=0, max=w - 1)
    mask = torch.ones(n, h, w, dtype=x.dtype, device=x.device)
    mask[grid_batch, grid_x, grid_y] = 0
    return x * mask.unsqueeze(1)


def _affine(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Bilinear resampling of x at `affine_grid(theta)`, zeros outside (`utils.py` 537-538).

    align_corners=True: the reference's torch 1.2 (`requirements.txt` 3) had no such argument
    and behaved so; later versions default to False.
    """
    theta = theta.to(device=x.device, dtype=x.dtype).expand(x.shape[0], 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=True)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def _scale(x: torch.Tensor, factors: torch.Tensor, param: ParamDiffAug) -> torch.Tensor:
    """theta = [[sx, 0, 0], [0, sy, 0]]: sampling coordinates scaled (`utils.py` 524-539)."""
    del param
    zeros = torch.zeros_like(factors[:, 0])
    theta = torch.stack(
        [
            torch.stack([factors[:, 0], zeros, zeros], dim=1),
            torch.stack([zeros, factors[:, 1], zeros], dim=1),
        ],
        dim=1,
    )
    return _affine(x, theta)


def _rotate(x: torch.Tensor, angles: torch.Tensor, param: ParamDiffAug) -> torch.Tensor:
    """theta = [[cos, -sin, 0], [sin, cos, 0]] (`utils.py` 542-553); pi/2 is torch.rot90."""
    del param
    cos, sin, zeros = torch.cos(angles), torch.sin(angles), torch.zeros_like(angles)
    theta = torch.stack(
        [torch.stack([cos, -sin, zeros], dim=1), torch.stack([sin, cos, zeros], dim=1)], dim=1
    )
    return _affine(x, theta)


_APPLY = {
    "brightness": _brightness,
    "saturation": _saturation,
    "contrast": _contrast,
    "crop": _crop,
    "cutout": _cutout,
    "flip": _flip,
    "scale": _scale,
    "rotate": _rotate,
}


def apply_diff_augment(
    x: torch.Tensor, draw: DSADraw, param: ParamDiffAug = _DEFAULT_DSA_PARAM
) -> torch.Tensor:
    """(N, Ch, H, W) images transformed by `draw`'s ops in order; differentiable in x.

    A draw of n=1 applies the same transform to every image; otherwise n must be N.
    """
    for op, values in draw.ops:
        if values.shape[0] not in (1, x.shape[0]):
            raise ValueError(f"A draw for {values.shape[0]} images cannot augment {x.shape[0]}.")
        x = _APPLY[op](x, values, param)
    return x.contiguous()


def diff_augment(
    x: torch.Tensor,
    strategy: str | None,
    *,
    generator: torch.Generator,
    siamese: bool,
    param: ParamDiffAug = _DEFAULT_DSA_PARAM,
) -> torch.Tensor:
    """DSA's `DiffAugment` (`utils.py` 495-520) on (N, Ch, H, W) images.

    siamese=True: one parameter draw broadcast to the batch (the reference's `seed != -1`);
    siamese=False: parameters per image (`seed == -1`, as in `epoch`), the family still drawn
    once per call in mode 'S'. A strategy of None, '', 'none' or 'None' returns x.
    """
    if _is_no_strategy(strategy):
        return x
    n = 1 if siamese else x.shape[0]
    draw = draw_diff_augment(strategy, n, x.shape[-2:], generator=generator, param=param)
    return apply_diff_augment(x, draw, param)


def diff_augment_pair(
    real: torch.Tensor,
    syn: torch.Tensor,
    strategy: str | None,
    *,
    generator: torch.Generator,
    param: ParamDiffAug = _DEFAULT_DSA_PARAM,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The same siamese transform applied to a real (N, Ch, H, W) and a synthetic (M, Ch, H, W)
    batch of one class: the reference's two `DiffAugment` calls with one seed (`main.py`
    185-188, `main_DM.py` 155-158), as one draw applied to both."""
    if _is_no_strategy(strategy):
        return real, syn
    if real.shape[1:] != syn.shape[1:]:
        raise ValueError(f"Image shapes differ: {tuple(real.shape)} vs {tuple(syn.shape)}.")
    draw = draw_diff_augment(strategy, 1, real.shape[-2:], generator=generator, param=param)
    return apply_diff_augment(real, draw, param), apply_diff_augment(syn, draw, param)


def _torch_generator(seed_sequence: np.random.SeedSequence) -> torch.Generator:
    # 63 bits: any value manual_seed accepts.
    return torch.Generator().manual_seed(int(seed_sequence.generate_state(1, np.uint64)[0]) >> 1)


class RandomStreams:
    """The independent random streams of one run, all derived from one integer `seed`.

    networks: NumPy generator of the seeds of successive networks (`network_seed`).
    real: NumPy generator of real-batch permutations (the reference's `np.random`).
    augment: torch generator of DSA parameters. shuffle: torch generator of loader orders.
    """

    def __init__(self, seed: int):
        networks, real, augment, shuffle = np.random.SeedSequence(seed).spawn(4)
        self.networks = np.random.default_rng(networks)
        self.real = np.random.default_rng(real)
        self.augment = _torch_generator(augment)
        self.shuffle = _torch_generator(shuffle)

    def network_seed(self) -> int:
        """The seed of the next network (`init_network`)."""
        return int(self.networks.integers(2**63 - 1))

    def state(self) -> dict[str, Any]:
        """Every stream's position (`set_state` continues from it exactly)."""
        return {
            "networks": self.networks.bit_generator.state,
            "real": self.real.bit_generator.state,
            "augment": self.augment.get_state(),
            "shuffle": self.shuffle.get_state(),
        }

    def set_state(self, state: Mapping[str, Any]) -> None:
        self.networks.bit_generator.state = state["networks"]
        self.real.bit_generator.state = state["real"]
        self.augment.set_state(state["augment"])
        self.shuffle.set_state(state["shuffle"])


class Checkpoint:
    """Resumes an interrupted `dc_distill` / `dm_distill` exactly where it stopped.

    Every `every` iterations (and after the last) the run's whole state is written to `path`
    (atomically: a temporary file, then a rename): the iteration, the images, the image
    optimizer's momentum, every random stream (`RandomStreams.state`), the distillation seconds
    so far, and the run's `signature` (its arguments). A run given an existing `path` restores
    it and continues; the images it returns are bit-identical to an uninterrupted run's. A file
    written by a run with other arguments is refused (delete it to start over). `seconds` sums
    the segments' clocks, each up to its last save (iterations redone after a resume are not
    counted twice); `segments` counts the processes that ran it. A loop with more state (IDM's
    network queue) passes `extra` to `after`, a function returning it, and finds what was saved
    in `self.extra` after `restore` (None for a fresh run).
    """

    def __init__(self, path: str | os.PathLike | None, every: int, signature: Mapping[str, Any]):
        if path is not None and every < 1:
            raise ValueError(f"checkpoint_every must be >= 1 with a checkpoint, got {every}.")
        self.path = None if path is None else pathlib.Path(path)
        self.every, self.signature = every, dict(signature)
        self.seconds, self.segments, self._start = 0.0, 1, time.perf_counter()
        self.extra: Any = None

    def restore(self, images: torch.Tensor, optimizer, streams: RandomStreams) -> int:
        """Loads `path` into the run's state if it exists; returns the iteration to start at."""
        if self.path is None or not self.path.exists():
            return 0
        saved = torch.load(self.path, weights_only=False)
        # Checkpoints written before the signature named the device all ran on the CPU.
        signature = {"device": "cpu", **saved["signature"]}
        if signature != self.signature:
            changed = sorted(
                k
                for k in {**signature, **self.signature}
                if signature.get(k) != self.signature.get(k)
            )
            raise ValueError(
                f"{self.path} was written by a run with other arguments ({', '.join(changed)}); "
                "delete it to start this run over, or pass the arguments it was written with."
            )
        with torch.no_grad():
            images.copy_(saved["images"])
        optimizer.load_state_dict(saved["optimizer"])
        streams.set_state(saved["streams"])
        self.extra = saved.get("extra")
        self.seconds, self.segments = saved["seconds"], saved["segments"] + 1
        self._start = time.perf_counter()
        return saved["iteration"]

    def after(
        self,
        iteration: int,
        images: torch.Tensor,
        optimizer,
        streams,
        last: bool,
        extra: Callable[[], Any] | None = None,
    ) -> None:
        """Called after each iteration (0-based `iteration`): saves when one is due."""
        if self.path is None or not (last or (iteration + 1) % self.every == 0):
            return
        now = time.perf_counter()
        self.seconds, self._start = self.seconds + now - self._start, now
        state = {
            "iteration": iteration + 1,
            "images": images.detach().cpu().clone(),
            "optimizer": optimizer.state_dict(),
            "streams": streams.state(),
            "seconds": self.seconds,
            "segments": self.segments,
            "signature": self.signature,
            "extra": None if extra is None else extra(),
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(self.path.name + ".tmp")
        torch.save(state, temporary)
        os.replace(temporary, self.path)


def _run_signature(train_images: np.ndarray, train_labels: np.ndarray, **arguments) -> dict:
    """What makes two runs the same run (`Checkpoint`): the data's fingerprint and every
    argument that changes the result (the iteration count may grow between segments)."""
    fingerprint = hashlib.sha256(np.ascontiguousarray(train_images, dtype=np.float32))
    fingerprint.update(np.ascontiguousarray(train_labels, dtype=np.int64))
    if arguments.get("init_indices") is not None:
        arguments["init_indices"] = [int(i) for i in arguments["init_indices"]]
    if arguments.get("init_images") is not None:
        stored = np.ascontiguousarray(arguments["init_images"], dtype=np.float32)
        arguments["init_images"] = hashlib.sha256(stored).hexdigest()
    arguments["param"] = dataclasses.asdict(arguments["param"])
    return {"data": fingerprint.hexdigest(), **arguments}


def checkpoint_seconds(path: str | os.PathLike) -> tuple[float, int]:
    """(distillation seconds, segments) recorded in a run's checkpoint (see `Checkpoint`)."""
    saved = torch.load(path, weights_only=False)
    return float(saved["seconds"]), int(saved["segments"])


def _nchw(images: np.ndarray, device: str | torch.device) -> torch.Tensor:
    """(N, H, W, Ch) NumPy -> (N, Ch, H, W) float32 tensor."""
    # A copy: jaxdd's dataset arrays are read-only, which torch does not support.
    array = np.array(np.moveaxis(np.asarray(images, dtype=np.float32), -1, 1), order="C")
    return torch.from_numpy(array).to(device)


def _nhwc(images: torch.Tensor) -> np.ndarray:
    """(N, Ch, H, W) tensor -> (N, H, W, Ch) float32 NumPy."""
    return np.ascontiguousarray(np.moveaxis(images.detach().cpu().numpy(), 1, -1))


class _RealData:
    """The real training set, NCHW on `device`, with DC's per-class sampler `get_images`."""

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        num_classes: int,
        device: str | torch.device,
    ):
        labels = np.asarray(labels)
        if images.ndim != 4 or labels.shape != (images.shape[0],):
            raise ValueError(
                f"Expected (N, H, W, Ch) images and (N,) labels, got {images.shape} and "
                f"{labels.shape}."
            )
        self.images = _nchw(images, device)
        self.labels = torch.from_numpy(labels.astype(np.int64)).to(device)
        # `indices_class` (`main.py` 67-72): each class's indices in dataset order.
        self.indices_class = [np.flatnonzero(labels == c) for c in range(num_classes)]
        empty = [c for c, idx in enumerate(self.indices_class) if not idx.size]
        if empty:
            raise ValueError(f"Classes {empty} have no real images.")

    def get_images(self, c: int, n: int, rng: np.random.Generator) -> torch.Tensor:
        """n random images of class c, without replacement (all if fewer) (`main.py` 79-81)."""
        idx_shuffle = rng.permutation(self.indices_class[c])[:n]
        return self.images[torch.from_numpy(idx_shuffle)]

    def get_any(self, n: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """n random images of any class and their labels: IDM's `get_images(c=None, n)`
        (`IDM_cifar10.py` 122-126), a permutation of the class-major flat indices."""
        idx_shuffle = torch.from_numpy(rng.permutation(np.concatenate(self.indices_class))[:n])
        return self.images[idx_shuffle], self.labels[idx_shuffle]


def _initial_synset(
    real: _RealData,
    labels: np.ndarray,
    init_indices: Sequence[int],
    num_classes: int,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The synthetic set `train_images[init_indices]` as a (C * ipc, Ch, H, W) leaf with grad,
    its (C * ipc,) labels [0]*ipc + [1]*ipc + ... (`main.py` 88-89) and ipc.

    Raises ValueError unless init_indices is class-major with ipc images of each class.
    """
    init_indices = np.asarray(init_indices, dtype=np.int64)
    if init_indices.ndim != 1 or init_indices.size % num_classes:
        raise ValueError(
            f"init_indices must be (C * ipc,), got shape {init_indices.shape} for C={num_classes}."
        )
    ipc = init_indices.size // num_classes
    label_syn = np.repeat(np.arange(num_classes), ipc)
    if not np.array_equal(np.asarray(labels)[init_indices], label_syn):
        raise ValueError("init_indices must be class-major: ipc images of class 0, then 1, ...")
    image_syn = real.images[torch.from_numpy(init_indices)].detach().clone().requires_grad_(True)
    label_tensor = torch.from_numpy(label_syn).to(device=image_syn.device, dtype=torch.long)
    return image_syn, label_tensor, ipc


def _stored_synset(
    init_images: np.ndarray, num_classes: int, device: str | torch.device
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """`_initial_synset` for a set given as its (C * ipc, H, W, Ch) stored images, class-major
    (IDM's partitioned images start from jaxdd's `mix` initialisation, not train images)."""
    init_images = np.asarray(init_images, dtype=np.float32)
    if init_images.ndim != 4 or init_images.shape[0] % num_classes:
        raise ValueError(
            f"init_images must be (C * ipc, H, W, Ch), got shape {init_images.shape} for "
            f"C={num_classes}."
        )
    ipc = init_images.shape[0] // num_classes
    image_syn = _nchw(init_images, device).requires_grad_(True)
    labels = torch.from_numpy(np.repeat(np.arange(num_classes), ipc)).to(device)
    return image_syn, labels, ipc


def _train_epoch(
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    batch_size: int,
    dsa_strategy: str | None,
    streams: RandomStreams,
    param: ParamDiffAug,
) -> tuple[float, float]:
    """DC's `epoch('train', ...)` (`utils.py` 297-333) over (N, Ch, H, W) `images`.

    The DataLoader (`shuffle=True`, `batch_size`, last batch partial) is a permutation from
    `streams.shuffle`; each batch gets per-image DSA (`utils.py` 309-311) if `dsa_strategy`.

    Returns:
      The mean training loss and accuracy over the epoch.
    """
    net.train()
    order = torch.randperm(images.shape[0], generator=streams.shuffle).to(images.device)
    loss_sum, correct = 0.0, 0
    for start in range(0, images.shape[0], batch_size):
        index = order[start : start + batch_size]
        img, lab = images[index], labels[index]
        img = diff_augment(img, dsa_strategy, generator=streams.augment, siamese=False, param=param)
        output = net(img)
        loss = F.cross_entropy(output, lab)
        loss_sum += loss.item() * lab.shape[0]
        correct += int((output.argmax(dim=-1) == lab).sum())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return loss_sum / images.shape[0], correct / images.shape[0]


class _Run:
    """A distillation's starting state, shared by `dc_distill`, `dm_distill` and
    `idm_distill`: its random streams, the real data, the synthetic images from `init_indices`
    (or the stored `init_images`) with their labels, the image optimizer SGD(lr_img, momentum
    0.5) (`main.py` 100), and where it starts: iteration 0, or where its checkpoint left it
    (`Checkpoint`, whose signature is `signature`)."""

    def __init__(
        self,
        train_images: np.ndarray,
        train_labels: np.ndarray,
        *,
        init_indices: Sequence[int] | None = None,
        init_images: np.ndarray | None = None,
        num_classes: int,
        lr_img: float,
        seed: int,
        device: str | torch.device,
        checkpoint: str | os.PathLike | None,
        checkpoint_every: int,
        iterations: int,
        **signature,
    ):
        self.streams = RandomStreams(seed)
        self.real = _RealData(train_images, train_labels, num_classes, device)
        if init_images is None:
            self.images, self.labels, self.ipc = _initial_synset(
                self.real, train_labels, init_indices, num_classes
            )
            signature.update(init_indices=init_indices)
        else:
            self.images, self.labels, self.ipc = _stored_synset(init_images, num_classes, device)
            signature.update(init_images=init_images)
        self.optimizer = torch.optim.SGD([self.images], lr=lr_img, momentum=0.5)
        self.optimizer.zero_grad()
        # The device's type too: a CPU run resumed on a GPU would change its trajectory and sum
        # the two machines' seconds.
        signature.update(lr_img=lr_img, seed=seed, device=torch.device(device).type)
        self.checkpoint = Checkpoint(
            checkpoint, checkpoint_every, _run_signature(train_images, train_labels, **signature)
        )
        self.start = self.checkpoint.restore(self.images, self.optimizer, self.streams)
        if self.start > iterations:
            raise ValueError(
                f"{checkpoint} holds {self.start} iterations, more than the {iterations} asked "
                "for; ask for at least as many, or delete it to start over."
            )

    def after(self, iteration: int, *, last: bool, extra: Callable[[], Any] | None = None) -> None:
        """After each iteration: a checkpoint when one is due (`Checkpoint.after`)."""
        self.checkpoint.after(
            iteration, self.images, self.optimizer, self.streams, last=last, extra=extra
        )


def dc_distill(
    train_images: np.ndarray,
    train_labels: np.ndarray,
    *,
    init_indices: Sequence[int],
    num_classes: int,
    method: str,
    iterations: int,
    outer_loop: int,
    inner_loop: int,
    lr_img: float = 0.1,
    lr_net: float = 0.01,
    batch_real: int = 256,
    batch_train: int = 256,
    dsa_strategy: str = DEFAULT_DSA_STRATEGY,
    width: int = 128,
    depth: int = 3,
    stem_pad: int = 0,
    seed: int = 0,
    log_every: int = 0,
    param: ParamDiffAug = _DEFAULT_DSA_PARAM,
    device: str | torch.device = "cpu",
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 50,
) -> np.ndarray:
    """DC / DSA gradient matching: the training loop of `main.py` 99-221.

    Per iteration (exactly `iterations` of them, see the module docstring): a fresh network and
    its SGD(lr_net) (147-151), then `outer_loop` image updates (156-207). An update sums over
    classes c the layer-wise cosine distance ('ours', `utils.py` 218-246) between the gradient
    of the cross-entropy on `batch_real` real images of c (detached) and on the ipc synthetic
    images of c (`create_graph=True`), the two batches augmented by one siamese DSA draw per
    class when method == 'DSA' (185-188), and takes an SGD(lr_img, momentum 0.5) step on the
    images (100, 201-203). After every update but the last, `inner_loop` epochs train the
    network on a snapshot of the synthetic set, minibatches of `batch_train`, per-image DSA for
    'DSA' (206-215).

    Args:
      train_images: (N, H, W, Ch) float32 normalised real images. train_labels: (N,) ints.
      init_indices: (C * ipc,) indices into train_images, class-major: the initial set.
      method: 'DC' (no augmentation) or 'DSA' (augmentation `dsa_strategy`).
      width, depth, stem_pad: the `ConvNet`. seed: every random draw (`RandomStreams`).
      log_every: print the iteration's mean loss (`main.py` 218-221) every so many; 0: never.
      param: DSA hyperparameters. device: where the tensors live.
      checkpoint: a file to resume from and save to every `checkpoint_every` iterations
        (`Checkpoint`); None: no checkpoints.

    Returns:
      (C * ipc, H, W, Ch) float32 synthetic images, class-major.
    """
    if method not in ("DC", "DSA"):
        raise ValueError(f"method must be 'DC' or 'DSA', got {method!r}.")
    strategy = dsa_strategy if method == "DSA" else None  # args.dsa (`main.py` 38)
    run = _Run(
        train_images,
        train_labels,
        init_indices=init_indices,
        num_classes=num_classes,
        lr_img=lr_img,
        seed=seed,
        device=device,
        checkpoint=checkpoint,
        checkpoint_every=checkpoint_every,
        iterations=iterations,
        kind="dc",
        method=method,
        outer_loop=outer_loop,
        inner_loop=inner_loop,
        lr_net=lr_net,
        batch_real=batch_real,
        batch_train=batch_train,
        dsa_strategy=strategy,
        width=width,
        depth=depth,
        stem_pad=stem_pad,
        param=param,
    )
    # The reference's names for the loop below.
    streams, real, ipc, optimizer_img = run.streams, run.real, run.ipc, run.optimizer
    image_syn, label_syn, image_shape = run.images, run.labels, train_images.shape[1:]
    for it in range(run.start, iterations):
        net = init_network(
            image_shape,
            num_classes,
            width=width,
            depth=depth,
            stem_pad=stem_pad,
            seed=streams.network_seed(),
            device=device,
        )
        net.train()
        net_parameters = list(net.parameters())
        optimizer_net = torch.optim.SGD(net.parameters(), lr=lr_net)
        optimizer_net.zero_grad()
        loss_avg = 0.0
        for ol in range(outer_loop):
            loss = torch.tensor(0.0, device=image_syn.device)
            for c in range(num_classes):
                img_real = real.get_images(c, batch_real, streams.real)
                lab_real = torch.full((img_real.shape[0],), c, dtype=torch.long, device=device)
                img_syn = image_syn[c * ipc : (c + 1) * ipc]
                lab_syn = label_syn[c * ipc : (c + 1) * ipc]
                if strategy is not None:
                    img_real, img_syn = diff_augment_pair(
                        img_real, img_syn, strategy, generator=streams.augment, param=param
                    )
                loss_real = F.cross_entropy(net(img_real), lab_real)
                gw_real = torch.autograd.grad(loss_real, net_parameters)
                gw_real = [g.detach().clone() for g in gw_real]
                loss_syn = F.cross_entropy(net(img_syn), lab_syn)
                gw_syn = torch.autograd.grad(loss_syn, net_parameters, create_graph=True)
                loss = loss + layerwise_cosine_distance(gw_syn, gw_real)
            optimizer_img.zero_grad()
            # Only the images' gradient: see the module docstring (`main.py` 202).
            loss.backward(inputs=[image_syn])
            optimizer_img.step()
            loss_avg += loss.item()
            if ol == outer_loop - 1:
                break
            image_syn_train = image_syn.detach().clone()  # `main.py` 211
            for _ in range(inner_loop):
                _train_epoch(
                    net,
                    optimizer_net,
                    image_syn_train,
                    label_syn,
                    batch_size=batch_train,
                    dsa_strategy=strategy,
                    streams=streams,
                    param=param,
                )
        loss_avg /= num_classes * outer_loop
        if log_every > 0 and it % log_every == 0:
            print(f"{method} iter = {it:04d}, loss = {loss_avg:.4f}")
        run.after(it, last=it == iterations - 1)
    return _nhwc(image_syn)


def dm_distill(
    train_images: np.ndarray,
    train_labels: np.ndarray,
    *,
    init_indices: Sequence[int],
    num_classes: int,
    iterations: int,
    lr_img: float = 1.0,
    batch_real: int = 256,
    dsa_strategy: str | None = DEFAULT_DSA_STRATEGY,
    width: int = 128,
    depth: int = 3,
    stem_pad: int = 0,
    seed: int = 0,
    log_every: int = 0,
    param: ParamDiffAug = _DEFAULT_DSA_PARAM,
    device: str | torch.device = "cpu",
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 500,
) -> np.ndarray:
    """DM distribution matching: the ConvNet branch of `main_DM.py` 101-200.

    Per iteration (exactly `iterations`): a fresh random network, never trained, with
    `requires_grad=False` (139-144); the loss sums over classes c the squared distance between
    the mean embedding (`ConvNet.embed`) of `batch_real` real images of c (detached) and of the
    ipc synthetic images of c, the two augmented by one siamese DSA draw per class unless
    `dsa_strategy` is None / 'none' (149-163); one SGD(lr_img, momentum 0.5) step on the images
    (102, 191-193).

    Args: as `dc_distill`.

    Returns:
      (C * ipc, H, W, Ch) float32 synthetic images, class-major.
    """
    strategy = None if _is_no_strategy(dsa_strategy) else dsa_strategy  # `main_DM.py` 38
    run = _Run(
        train_images,
        train_labels,
        init_indices=init_indices,
        num_classes=num_classes,
        lr_img=lr_img,
        seed=seed,
        device=device,
        checkpoint=checkpoint,
        checkpoint_every=checkpoint_every,
        iterations=iterations,
        kind="dm",
        batch_real=batch_real,
        dsa_strategy=strategy,
        width=width,
        depth=depth,
        stem_pad=stem_pad,
        param=param,
    )
    # The reference's names for the loop below.
    streams, real, ipc, optimizer_img = run.streams, run.real, run.ipc, run.optimizer
    image_syn, image_shape = run.images, train_images.shape[1:]
    for it in range(run.start, iterations):
        net = init_network(
            image_shape,
            num_classes,
            width=width,
            depth=depth,
            stem_pad=stem_pad,
            seed=streams.network_seed(),
            device=device,
        )
        net.train()
        for p in net.parameters():
            p.requires_grad = False
        loss = torch.tensor(0.0, device=image_syn.device)
        for c in range(num_classes):
            img_real = real.get_images(c, batch_real, streams.real)
            img_syn = image_syn[c * ipc : (c + 1) * ipc]
            if strategy is not None:
                img_real, img_syn = diff_augment_pair(
                    img_real, img_syn, strategy, generator=streams.augment, param=param
                )
            output_real = net.embed(img_real).detach()
            output_syn = net.embed(img_syn)
            loss = loss + torch.sum((output_real.mean(dim=0) - output_syn.mean(dim=0)) ** 2)
        optimizer_img.zero_grad()
        loss.backward()
        optimizer_img.step()
        loss_avg = loss.item() / num_classes  # `main_DM.py` 194-197
        if log_every > 0 and it % log_every == 0:
            print(f"DM iter = {it:05d}, loss = {loss_avg:.4f}")
        run.after(it, last=it == iterations - 1)
    return _nhwc(image_syn)


def number_sign_augment(
    images: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """IDM's decoder of a partitioned set, `number_sign_augment` (`dc_utils.py` 1128-1137):
    each (N, Ch, H, W) stored image cut into its four (H/2, W/2) quarters (top-left,
    bottom-left, top-right, bottom-right), each upsampled x2 bilinearly (`F.upsample`, i.e.
    align_corners=False); the 4N images quarter-major, labels repeated 4 times. jaxdd's
    `synthetic.decode(param='factorized', factor=2)` makes the same images, crops row-major."""
    half_h, half_w = images.shape[2] // 2, images.shape[3] // 2
    quarters = (
        images[:, :, :half_h, :half_w],
        images[:, :, half_h:, :half_w],
        images[:, :, :half_h, half_w:],
        images[:, :, half_h:, half_w:],
    )
    upsampled = [F.interpolate(q, scale_factor=2, mode="bilinear") for q in quarters]
    return torch.cat(upsampled), labels.repeat(4)


@dataclasses.dataclass
class _QueuedNet:
    """One network of IDM's queue: the network, its SGD and its `ClassErrorMeter` (top-1 on
    the real batches it was trained on since the last reset), as counts."""

    net: ConvNet
    optimizer: torch.optim.Optimizer
    correct: int = 0
    seen: int = 0

    def accuracy(self) -> float:
        """`net_acc.value()[0] if net_acc.n != 0 else 0` (`IDM_cifar10.py` 323): percent."""
        return 100.0 * self.correct / self.seen if self.seen else 0.0


def idm_distill(
    train_images: np.ndarray,
    train_labels: np.ndarray,
    *,
    init_images: np.ndarray,
    num_classes: int,
    iterations: int,
    lr_img: float = 0.2,
    batch_real: int = 256,
    dsa_strategy: str | None = DEFAULT_DSA_STRATEGY,
    ce_weight: float = 0.5,
    lr_net: float = 0.01,
    net_num: int = 100,
    net_generate_interval: int = 30,
    fetch_net_num: int = 2,
    train_net_num: int = 1,
    model_train_steps: int = 10,
    trained_bs: int = 256,
    eval_interval: int = 100,
    width: int = 128,
    depth: int = 3,
    stem_pad: int = 0,
    seed: int = 0,
    log_every: int = 0,
    param: ParamDiffAug = _DEFAULT_DSA_PARAM,
    device: str | torch.device = "cpu",
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 500,
) -> tuple[np.ndarray, np.ndarray]:
    """IDM (Zhao et al., CVPR 2023): the ConvNet loop of `uitrbn/IDM` `IDM_cifar10.py` 147-357
    with `--aug` (the partitioned set), `--net_train_real`, `--net_decay`, `--syn_ce`,
    `--outer_loop 1` and `--mismatch_lambda 0`, as in every line of its `command.txt`.

    Before the loop, 3 networks in the queue (168-180). Per iteration (exactly `iterations`):
    - at iterations 100, 200, ... (`eval_interval`) every network's accuracy meter is reset
      (the reference resets them after each in-loop evaluation, 200-226, not ported);
    - every `net_generate_interval` iterations (0 included) a fresh network with its
      SGD(lr_net, momentum 0.9, weight decay 5e-4) joins the queue, the oldest leaving once
      it holds `net_num` (235-250);
    - `train_net_num` networks drawn at random from the queue (252-260) each match every class
      c in turn: the class's stored images decoded (`number_sign_augment`) and `batch_real`
      real images of c, one siamese DSA draw for the two; loss_c = the squared distance
      between their mean embeddings (DM's, the features before the classifier: IDM's
      `embed_channel_avg` with `--embed_last 1000`) + ce_weight x the network's meter accuracy
      (%) x the cross-entropy of its logits on the augmented decoded images (318-327); and
      each class takes its own SGD(lr_img, momentum 0.5) step on the images (329-331);
    - `fetch_net_num` networks drawn at random each train `model_train_steps` steps, each on
      a fresh batch of `trained_bs` random real images of any class, without augmentation,
      adding their top-1 counts to the network's meter (346-357).

    Deviations, besides the module's (seeds, no in-loop evaluation, exactly `iterations`): the
    initial set is `init_images` (jaxdd's `mix` start, stored images); the queue's and the real
    batches' draws come from `RandomStreams.real` (the reference: Python's `random` and NumPy's
    global RNG); the images' backward reaches only the images (the reference's also fills the
    matching network's `.grad`, which its training clears before every step); the logits of
    the regulariser are the classifier on the embedding just computed (the reference runs the
    network again on the same images: the same values). The `--ipc 1` branch without `--aug`
    (top-k real images, CE only when misclassified, 295-300, 322-324) is not ported: `--aug`
    is in every command.

    Args:
      init_images: (C * ipc, H, W, Ch) float32 stored images, class-major; H and W even.
      ce_weight: `--ce_weight` (0: DM's loss through the queue's networks).
      net_num, net_generate_interval, fetch_net_num, train_net_num, model_train_steps,
        trained_bs, eval_interval: the reference's arguments of those names (its defaults;
        `command.txt` passes `--net_generate_interval 5` at IPC 1).
      The rest: as `dm_distill`.

    Returns:
      The decoded set: (4 * C * ipc, H, W, Ch) float32 images and their (4 * C * ipc,) labels.
    """
    if min(net_num, net_generate_interval, fetch_net_num, train_net_num, eval_interval) < 1:
        raise ValueError(
            "net_num, net_generate_interval, fetch_net_num, train_net_num and eval_interval "
            "must be >= 1."
        )
    if np.shape(init_images)[1] % 2 or np.shape(init_images)[2] % 2:
        raise ValueError(
            f"IDM halves the stored images: their size {np.shape(init_images)[1:3]} must be even."
        )
    strategy = None if _is_no_strategy(dsa_strategy) else dsa_strategy
    run = _Run(
        train_images,
        train_labels,
        init_images=init_images,
        num_classes=num_classes,
        lr_img=lr_img,
        seed=seed,
        device=device,
        checkpoint=checkpoint,
        checkpoint_every=checkpoint_every,
        iterations=iterations,
        kind="idm",
        batch_real=batch_real,
        dsa_strategy=strategy,
        ce_weight=ce_weight,
        lr_net=lr_net,
        net_num=net_num,
        net_generate_interval=net_generate_interval,
        fetch_net_num=fetch_net_num,
        train_net_num=train_net_num,
        model_train_steps=model_train_steps,
        trained_bs=trained_bs,
        eval_interval=eval_interval,
        width=width,
        depth=depth,
        stem_pad=stem_pad,
        param=param,
    )
    streams, real, ipc, optimizer_img = run.streams, run.real, run.ipc, run.optimizer
    image_syn, label_syn, image_shape = run.images, run.labels, train_images.shape[1:]

    def queued(seed: int | None = None) -> _QueuedNet:
        net = init_network(
            image_shape,
            num_classes,
            width=width,
            depth=depth,
            stem_pad=stem_pad,
            seed=streams.network_seed() if seed is None else seed,
            device=device,
        )
        net.train()
        sgd = torch.optim.SGD(net.parameters(), lr=lr_net, momentum=0.9, weight_decay=0.0005)
        return _QueuedNet(net, sgd)

    if run.checkpoint.extra is None:
        queue = [queued() for _ in range(3)]
    else:  # The queue as the checkpoint left it (no stream is drawn to rebuild it).
        queue = []
        for saved in run.checkpoint.extra["queue"]:
            entry = queued(seed=0)
            entry.net.load_state_dict(saved["net"])
            entry.optimizer.load_state_dict(saved["optimizer"])
            entry.correct, entry.seen = saved["correct"], saved["seen"]
            queue.append(entry)

    def queue_state() -> dict[str, Any]:
        return {
            "queue": [
                {
                    "net": {k: v.detach().cpu().clone() for k, v in e.net.state_dict().items()},
                    "optimizer": e.optimizer.state_dict(),
                    "correct": e.correct,
                    "seen": e.seen,
                }
                for e in queue
            ]
        }

    for it in range(run.start, iterations):
        if it > 0 and it % eval_interval == 0:
            for entry in queue:
                entry.correct = entry.seen = 0
        if it % net_generate_interval == 0:
            if len(queue) == net_num:
                queue.pop(0)
            queue.append(queued())
        loss_avg = 0.0
        for index in streams.real.permutation(len(queue))[:train_net_num]:
            entry = queue[index]
            entry.net.eval()
            for c in range(num_classes):
                img_real = real.get_images(c, batch_real, streams.real)
                img_syn, lab_syn = number_sign_augment(
                    image_syn[c * ipc : (c + 1) * ipc], label_syn[c * ipc : (c + 1) * ipc]
                )
                if strategy is not None:
                    img_real, img_syn = diff_augment_pair(
                        img_real, img_syn, strategy, generator=streams.augment, param=param
                    )
                output_real = entry.net.embed(img_real).detach()
                output_syn = entry.net.embed(img_syn)
                loss_c = torch.sum((output_real.mean(dim=0) - output_syn.mean(dim=0)) ** 2)
                if ce_weight:
                    ce = F.cross_entropy(entry.net.fc(output_syn), lab_syn)
                    loss_c = loss_c + ce_weight * entry.accuracy() * ce
                optimizer_img.zero_grad()
                loss_c.backward(inputs=[image_syn])
                optimizer_img.step()
                loss_avg += loss_c.item()
        for index in streams.real.permutation(len(queue))[:fetch_net_num]:
            entry = queue[index]
            entry.net.train()
            for _ in range(model_train_steps):
                img_real, lab_real = real.get_any(trained_bs, streams.real)
                logits = entry.net(img_real)
                loss = F.cross_entropy(logits, lab_real)
                entry.optimizer.zero_grad()
                loss.backward()
                entry.optimizer.step()
                entry.correct += int((logits.argmax(dim=-1) == lab_real).sum())
                entry.seen += lab_real.shape[0]
        if log_every > 0 and it % log_every == 0:
            print(f"IDM iter = {it:04d}, loss = {loss_avg / num_classes:.4f}, nets {len(queue)}")
        run.after(it, last=it == iterations - 1, extra=queue_state)
    images, labels = number_sign_augment(image_syn.detach(), label_syn)
    return _nhwc(images), labels.cpu().numpy()


def _test_accuracy(
    net: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 256
) -> float:
    """DC's `epoch('test', ...)` accuracy (`utils.py` 297-333): batches of 256 in order, no
    augmentation (the test loader, `utils.py` 100; `aug=False`, 358)."""
    net.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, images.shape[0], batch_size):
            output = net(images[start : start + batch_size])
            correct += int((output.argmax(dim=-1) == labels[start : start + batch_size]).sum())
    return correct / images.shape[0]


def evaluate_synset(
    images: np.ndarray,
    labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    *,
    num_classes: int,
    epochs: int,
    lr: float = 0.01,
    batch_train: int = 256,
    dsa_strategy: str | None = None,
    width: int = 128,
    depth: int = 3,
    stem_pad: int = 0,
    seeds: Sequence[int] = (0,),
    param: ParamDiffAug = _DEFAULT_DSA_PARAM,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Test accuracy of fresh ConvNets trained on a synthetic set: DC's `evaluate_synset`.

    For each seed (`utils.py` 337-362): a fresh network (seeded as `RandomStreams(seed)`),
    SGD(lr, momentum 0.9, weight decay 5e-4), `epochs + 1` shuffled epochs of `batch_train`
    with per-image DSA when `dsa_strategy` is given (351-352), the learning rate x0.1 with a
    fresh optimiser after epoch `epochs // 2 + 1` (343, 353-355), then accuracy on the test
    set in batches of 256 without augmentation (358).

    Args:
      images, labels: (N, H, W, Ch) float32 normalised synthetic images and (N,) int labels.
      test_images, test_labels: the test set, same layout.
      epochs: the reference's `epoch_eval_train` (it runs one more epoch than this).
      seeds: one evaluation per seed. The rest: as `dc_distill`.

    Returns:
      (len(seeds),) test accuracies in [0, 1].
    """
    train_x = _nchw(images, device)
    train_y = torch.from_numpy(np.asarray(labels, dtype=np.int64)).to(device)
    test_x = _nchw(test_images, device)
    test_y = torch.from_numpy(np.asarray(test_labels, dtype=np.int64)).to(device)
    strategy = None if _is_no_strategy(dsa_strategy) else dsa_strategy
    lr_schedule = [epochs // 2 + 1]
    accuracies = []
    for seed in seeds:
        streams = RandomStreams(seed)
        net = init_network(
            images.shape[1:],
            num_classes,
            width=width,
            depth=depth,
            stem_pad=stem_pad,
            seed=streams.network_seed(),
            device=device,
        )
        lr_now = float(lr)
        optimizer = torch.optim.SGD(net.parameters(), lr=lr_now, momentum=0.9, weight_decay=5e-4)
        for ep in range(epochs + 1):
            _train_epoch(
                net,
                optimizer,
                train_x,
                train_y,
                batch_size=batch_train,
                dsa_strategy=strategy,
                streams=streams,
                param=param,
            )
            if ep in lr_schedule:
                lr_now *= 0.1
                optimizer = torch.optim.SGD(
                    net.parameters(), lr=lr_now, momentum=0.9, weight_decay=5e-4
                )
        accuracies.append(_test_accuracy(net, test_x, test_y))
    return np.asarray(accuracies, dtype=np.float64)


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(","))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=_ints, default=(8, 8, 1), help="H,W,Ch")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--clusters", type=int, default=4)
    parser.add_argument("--num-real", type=int, default=64)
    parser.add_argument("--ipc", type=int, default=10)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if len(args.shape) != 3 or not math.prod(args.shape):
        parser.error(f"--shape must be H,W,Ch, got {args.shape}.")
    result = time_step(
        image_shape=args.shape,
        num_classes=args.classes,
        num_clusters=args.clusters,
        num_real=args.num_real,
        ipc=args.ipc,
        width=args.width,
        depth=args.depth,
        alpha=args.alpha,
        repeats=args.repeats,
        seed=args.seed,
        threads=args.threads,
    )
    steps = ", ".join(f"{s:.4f}" for s in result["steps_s"])
    print(
        f"torch {result['torch']} eager, {result['threads']} threads, shape {args.shape}: "
        f"median {result['median_s']:.4f} s per step ({steps})"
    )


if __name__ == "__main__":
    main()
