"""PyTorch-eager baseline for the speed benchmark: one robust gradient-matching step, DC style.

The field's reference scripts (DC/DSA by Zhao et al., and the robust-DD code built on them)
compute a distillation step in eager PyTorch with Python loops: for every class c the gradient of
the cross-entropy on the synthetic images S_c is taken with `torch.autograd.grad(...,
create_graph=True)`, for every cluster k the gradient on that group's real batch R_ck is taken
and detached, and the layer-wise (1 - cosine) distance between the two is one group loss. The
C*K group losses are reduced by a risk measure and `.backward()` gives the gradient with respect
to the synthetic images. That is C + C*K separate forward/backward launches per step.

This module reproduces exactly that step with the quantities jaxdd computes, so that timing it
against jaxdd's compiled step compares implementations of one and the same function:

- `ConvNet` is `jaxdd.models.ConvNet` (instance norm, average pooling): `depth` x [conv 3x3
  SAME with bias -> GroupNorm(width, width, eps=1e-5) -> ReLU -> 2x2 average pool], flatten,
  `fc`, with jaxdd's rule for skipping a pool that would shrink a map too far.
- `params_from_flax` copies a jaxdd parameter tree into it (HWIO -> OIHW kernels, NHWC -> NCHW
  flatten order of the `fc` inputs).
- `layerwise_cosine_distance` is DC's `match_loss` 'ours' (`jaxdd.matching`), and `cvar` the
  sort-based CVaR of `jaxdd.risk.cvar` for uniform weights (fractional boundary element).
- `robust_matching_step` is the DC-style loop; no DSA augmentation (the benchmark compares
  without it). tests/torch_reference_test.py checks its group losses and image gradient against
  `jaxdd.matching.gradient` and `jaxdd.step.robust_objective`.

It is a reference implementation, not a benchmark: `benchmarks.step_time` times it (its torch
section). On its own, from the repository root:

  python -m benchmarks.torch_reference --shape 8,8,1 --repeats 5

prints the median seconds per step for the default configuration (C=10, K=4, m=64, ipc 10,
ConvNet-128 depth 3, alpha 0.5).
"""

from __future__ import annotations

import argparse
import collections
import math
import statistics
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ConvNet",
    "cvar",
    "layerwise_cosine_distance",
    "params_from_flax",
    "robust_matching_step",
    "time_step",
]

_NORM_EPS = 1e-5  # flax GroupNorm's and torch GroupNorm's default; jaxdd sets it explicitly.
_COSINE_EPS = 1e-6  # DC's epsilon added to the product of the norms.


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
    """

    def __init__(
        self, image_shape: Sequence[int], num_classes: int, *, width: int = 128, depth: int = 3
    ):
        super().__init__()
        height, width_px, channels = image_shape
        size = (height, width_px)
        layers: collections.OrderedDict[str, nn.Module] = collections.OrderedDict()
        in_channels = channels
        for i in range(depth):
            layers[f"conv{i}"] = nn.Conv2d(in_channels, width, kernel_size=3, padding=1)
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, Ch, H, W) images -> (N, num_classes) logits."""
        return self.fc(self.features(x).flatten(1))


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
) -> dict[str, Any]:
    """Seconds per `robust_matching_step` on random data: one warm-up step, then `repeats`.

    Args:
      image_shape: (H, W, Ch). threads: `torch.set_num_threads` (None: torch's default).
      The rest: the problem size, named as in jaxdd's config (num_real is m).

    Returns:
      {"median_s", "steps_s" (each timed step), "threads", "torch" (version)}.
    """
    if threads is not None:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    height, width_px, channels = image_shape
    net = ConvNet(image_shape, num_classes, width=width, depth=depth)
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
