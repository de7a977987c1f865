"""Coreset baselines: subsets of real training images the size of a synthetic set.

These are the non-distilled baselines of SPEC's evaluation protocol ("random real subset of equal
size, a k-center or herding coreset"). Each picks `ipc` real examples per class and returns their
indices into the training split; a network is then trained on those examples exactly as on a
distilled set of the same size, with the same seeds.

Every baseline returns `(C * ipc,)` int64 indices grouped by class in class order, `ipc` each, so
`labels[indices].reshape(C, ipc)` is class c in row c; within a class the indices are in the
order they were picked, so the first k of a herding or k-center row are the choice for ipc = k.
Classes are the labels `0..max(labels)`; every one of them needs at least `ipc` examples.

- `random_subset`: a seeded uniform draw without replacement per class.
- `herding`: Welling's herding per class (iCaRL's exemplar selection, without its feature
  normalisation): greedily add the example that brings the mean of the selection closest to the
  class mean. Deterministic.
- `k_center`: greedy farthest-first k-center per class, starting from the example nearest the
  class mean. Deterministic.
- `BASELINES` / `select`: the three under one call signature
  `fn(features, labels, *, ipc, seed) -> indices`.

Features are whatever the caller chooses (flattened normalised pixels, a network embedding, ...):
a float array `(N, D)`, or `(N, ...)`, which is flattened to `(N, D)`. Distances are Euclidean
in that space, so scale the features as the comparison should see them. These run once per
experiment on the host, in float64 NumPy; ties go to the lowest index.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Mapping
from typing import Protocol

import numpy as np
import numpy.typing as npt

__all__ = ["BASELINES", "Baseline", "herding", "k_center", "random_subset", "select"]


class Baseline(Protocol):
    """The call signature shared by every entry of `BASELINES`."""

    def __call__(
        self, features: npt.ArrayLike, labels: npt.ArrayLike, *, ipc: int, seed: int
    ) -> np.ndarray: ...


def random_subset(labels: npt.ArrayLike, *, ipc: int, seed: int) -> np.ndarray:
    """`ipc` examples per class drawn uniformly without replacement.

    Args:
      labels: `(N,)` integer class labels `0..C-1`.
      ipc: examples per class.
      seed: seeds the draw; the same seed gives the same indices.

    Returns:
      `(C * ipc,)` int64 indices into `labels`, grouped by class in class order.
    """
    members = _class_members(labels, ipc=ipc)
    rng = np.random.default_rng(seed)
    return _concatenate([rng.choice(rows, size=ipc, replace=False) for rows in members])


def herding(features: npt.ArrayLike, labels: npt.ArrayLike, *, ipc: int) -> np.ndarray:
    """Welling's herding per class: greedy matching of the class mean in feature space.

    Within class c with mean mu, step k adds the unselected example x that minimises
    `||mu - (x + sum of the k-1 selected) / k||`. The first pick is therefore the example
    nearest the class mean.

    Args:
      features: `(N, D)` (or `(N, ...)`, flattened) features of the training examples.
      labels: `(N,)` integer class labels `0..C-1`.
      ipc: examples per class.

    Returns:
      `(C * ipc,)` int64 indices, grouped by class in class order, each class in pick order.
    """
    return _per_class(_herd, features, labels, ipc=ipc)


def k_center(features: npt.ArrayLike, labels: npt.ArrayLike, *, ipc: int, seed: int) -> np.ndarray:
    """Greedy k-center (farthest-first traversal) per class.

    Within each class the first center is the example nearest the class mean; each further pick
    is the example farthest from its nearest chosen center. Farthest-first is a 2-approximation
    of the optimal covering radius whatever the start; starting at the mean makes ipc = 1 pick
    the most central example rather than an outlier or a random one.

    Args:
      features: `(N, D)` (or `(N, ...)`, flattened) features of the training examples.
      labels: `(N,)` integer class labels `0..C-1`.
      ipc: examples per class.
      seed: unused, since the selection is deterministic; accepted so that every entry of
        `BASELINES` shares one call signature.

    Returns:
      `(C * ipc,)` int64 indices, grouped by class in class order, each class in pick order.
    """
    del seed  # Deterministic by construction (see above).
    return _per_class(_farthest_first, features, labels, ipc=ipc)


def _random_baseline(
    features: npt.ArrayLike, labels: npt.ArrayLike, *, ipc: int, seed: int
) -> np.ndarray:
    """`random_subset` under the `Baseline` signature; checks `features` like the others do."""
    indices = random_subset(labels, ipc=ipc, seed=seed)  # Checks labels and ipc first.
    _features(features, num_rows=len(np.asarray(labels)))
    return indices


def _herding_baseline(
    features: npt.ArrayLike, labels: npt.ArrayLike, *, ipc: int, seed: int
) -> np.ndarray:
    """`herding` under the `Baseline` signature; herding is deterministic, so `seed` is unused."""
    del seed
    return herding(features, labels, ipc=ipc)


# Read-only: a baseline's name must mean the same selection in every run that reports it.
BASELINES: Mapping[str, Baseline] = types.MappingProxyType(
    {"random": _random_baseline, "herding": _herding_baseline, "k_center": k_center}
)


def select(
    name: str, features: npt.ArrayLike, labels: npt.ArrayLike, *, ipc: int, seed: int
) -> np.ndarray:
    """Runs baseline `name` (a key of `BASELINES`); returns `(C * ipc,)` class-ordered indices.

    Raises:
      ValueError: unknown `name`; `ipc` < 1 or larger than the smallest class (the message names
        the class and its size); malformed `features` or `labels`.
    """
    if name not in BASELINES:
        raise ValueError(f"Unknown baseline {name!r}; expected one of {tuple(BASELINES)}.")
    return BASELINES[name](features, labels, ipc=ipc, seed=seed)


def _per_class(
    choose: Callable[[np.ndarray, int], np.ndarray],
    features: npt.ArrayLike,
    labels: npt.ArrayLike,
    *,
    ipc: int,
) -> np.ndarray:
    """Applies `choose(class_features (n, D) float64, ipc) -> positions` to every class."""
    members = _class_members(labels, ipc=ipc)
    x = _features(features, num_rows=len(np.asarray(labels)))
    # One class at a time in float64: a large float32 feature matrix is never copied whole.
    return _concatenate([rows[choose(x[rows].astype(np.float64), ipc)] for rows in members])


def _herd(x: np.ndarray, ipc: int) -> np.ndarray:
    """Positions in `x` `(n, D)` of the `ipc` herding picks, in pick order."""
    target_mean = x.mean(axis=0)
    # ||mu - (s + x) / k||^2 = ||(k mu - s) - x||^2 / k^2, and ||t - x||^2 = |x|^2 - 2 x.t + |t|^2:
    # the argmin over x needs only |x|^2 - 2 x.t, one matrix-vector product per step.
    sq_norms = np.einsum("nd,nd->n", x, x)
    selected_sum = np.zeros_like(target_mean)
    taken = np.zeros(len(x), dtype=bool)
    picks = np.empty(ipc, dtype=np.int64)
    for k in range(1, ipc + 1):
        scores = sq_norms - 2.0 * (x @ (k * target_mean - selected_sum))
        scores[taken] = np.inf  # Without replacement: a pick can never be picked again.
        pick = int(np.argmin(scores))
        picks[k - 1], taken[pick] = pick, True
        selected_sum += x[pick]
    return picks


def _farthest_first(x: np.ndarray, ipc: int) -> np.ndarray:
    """Positions in `x` `(n, D)` of the `ipc` farthest-first centers, in pick order."""
    picks = np.empty(ipc, dtype=np.int64)
    picks[0] = np.argmin(_squared_norms(x - x.mean(axis=0)))
    nearest = np.full(len(x), np.inf)  # Squared distance of each example to its nearest center.
    for k in range(1, ipc):
        np.minimum(nearest, _squared_norms(x - x[picks[k - 1]]), out=nearest)
        # Chosen centers (and their exact duplicates) sit at 0; -1 keeps a chosen one from being
        # picked again when every remaining example duplicates a center.
        scores = nearest.copy()
        scores[picks[:k]] = -1.0
        picks[k] = np.argmax(scores)
    return picks


def _squared_norms(diff: np.ndarray) -> np.ndarray:
    """`(n,)` squared norms of the rows of `diff` (differences to one point: exactly 0 for an
    equal row, which the pairwise expansion in `jaxdd.clustering` is not)."""
    return np.einsum("nd,nd->n", diff, diff)


def _class_members(labels: npt.ArrayLike, *, ipc: int) -> list[np.ndarray]:
    """The ascending indices of each class `0..max(labels)`, after checking `labels` and `ipc`."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"labels must be a non-empty 1-d integer array; got {labels.dtype} {labels.shape}."
        )
    if labels.min() < 0:
        raise ValueError(f"labels must be class indices 0..C-1; got a minimum of {labels.min()}.")
    if isinstance(ipc, bool) or not isinstance(ipc, int | np.integer) or ipc < 1:
        raise ValueError(f"ipc must be a positive integer (examples per class); got {ipc!r}.")
    counts = np.bincount(labels)
    smallest = int(np.argmin(counts))
    if ipc > counts[smallest]:
        raise ValueError(
            f"ipc={ipc} exceeds the smallest class: class {smallest} has only "
            f"{counts[smallest]} examples (classes are the labels 0..{len(counts) - 1}); "
            f"choose ipc <= {counts[smallest]}."
        )
    order = np.argsort(labels, kind="stable")
    return np.split(order, np.cumsum(counts)[:-1])


def _features(features: npt.ArrayLike, *, num_rows: int) -> np.ndarray:
    """`features` as a finite real `(num_rows, D)` array, in the caller's dtype."""
    x = np.asarray(features)
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise ValueError(f"features must be a real (float or integer) array; got {x.dtype}.")
    if x.ndim < 2 or len(x) != num_rows:
        raise ValueError(
            f"features must be (N, D) (or (N, ...)) with one row per label; got shape {x.shape} "
            f"for {num_rows} labels."
        )
    if not np.isfinite(x).all():
        raise ValueError("features contain NaN or infinite values; every feature must be finite.")
    return x.reshape(len(x), -1)


def _concatenate(per_class: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(per_class).astype(np.int64)
