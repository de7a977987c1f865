"""Subgroup and distribution-shift metrics of trained networks on the test split.

SPEC's robustness protocol, on top of `jaxdd.retrain`:

- Subgroups: fixed K-means partitions of the *test* set (`test_partitions`): 'global', K = 10
  clusters of the whole test set on pixels (as in the paper), and 'per_class', K clusters inside
  every class (group = label * K + cluster). They are computed once per test set and cached
  (`cached_partitions`), keyed by a hash of the test set so that a changed test set never reuses
  a stale partition.
- Shifts: the registered pixel-space transforms of `jaxdd.shifts` (`SHIFTS`), applied to the
  denormalised test images with config-given strengths.
- `robustness_report`: accuracy, per-group / mean-group / worst-group / worst-class accuracy and
  accuracy under each shift, as a JSON-ready dict.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import pathlib
import re
import tempfile
import zlib
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import numpy.typing as npt
from jax.typing import ArrayLike

from jaxdd import clustering, retrain, xla
from jaxdd import shifts as shifts_lib

__all__ = ["cached_partitions", "robustness_report", "test_partitions"]


# Bump when the partition algorithm changes, so that old cache files are not reused.
_PARTITION_VERSION = 1

_kmeans = xla.jit(clustering.kmeans, static_argnames=("num_clusters", "num_iters", "num_inits"))


# ---------------------------------------------------------------------------------------------
# Test-set partitions.


def test_partitions(
    images: ArrayLike,
    labels: ArrayLike,
    *,
    num_classes: int,
    key: jax.Array,
    global_k: int = 10,
    per_class_k: int = 4,
    num_iters: int = 50,
    num_inits: int = 4,
) -> dict[str, np.ndarray]:
    """K-means partitions of a test set into subgroups; deterministic given `key`.

    Both partitions cluster `clustering.features_pixels(images)` (flattened, L2-normalised
    pixels; normalised or raw pixels give the same features up to the per-channel affine map).

    Args:
      images: `(N, H, W, C)` test images.
      labels: `(N,)` int test labels in [0, num_classes).
      num_classes: C.
      key: PRNG key; 'global' uses `split(key)[0]`, 'per_class' `split(key)[1]`.
      global_k: clusters of the whole test set (clipped to N).
      per_class_k: K clusters per class. A class with fewer than K examples is clipped to one
        cluster per example (what K-means with K = its size gives), so its remaining group ids
        stay empty.
      num_iters: maximum Lloyd iterations.
      num_inits: k-means++ seedings per clustering; the lowest-inertia one is kept.

    Returns:
      `{'global': (N,) int32 in [0, global_k), 'per_class': (N,) int32 label * K + cluster in
      [0, C * K)}` as NumPy arrays.
    """
    images = jnp.asarray(images, jnp.float32)
    labels = np.asarray(labels)
    if images.ndim != 4 or labels.shape != images.shape[:1]:
        raise ValueError(
            f"test_partitions expects images (N, H, W, C) and labels (N,), got {images.shape} "
            f"and {labels.shape}."
        )
    if labels.size == 0:
        raise ValueError("test_partitions needs a non-empty test set.")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}).")
    if global_k < 1 or per_class_k < 1:
        raise ValueError(f"global_k and per_class_k must be >= 1, got {global_k}, {per_class_k}.")
    global_key, class_key = jax.random.split(key)
    features = clustering.features_pixels(images)
    global_groups = _kmeans(
        features,
        num_clusters=min(global_k, labels.size),
        key=global_key,
        num_iters=num_iters,
        num_inits=num_inits,
    ).assignments
    within = _within_class_clusters(
        features,
        labels,
        num_classes=num_classes,
        k=per_class_k,
        key=class_key,
        num_iters=num_iters,
        num_inits=num_inits,
    )
    return {
        "global": np.asarray(global_groups, np.int32),
        "per_class": (labels.astype(np.int32) * per_class_k + within).astype(np.int32),
    }


def _within_class_clusters(
    features: jax.Array,
    labels: np.ndarray,
    *,
    num_classes: int,
    k: int,
    key: jax.Array,
    num_iters: int,
    num_inits: int,
) -> np.ndarray:
    """(N,) cluster of each example inside its class, in [0, k)."""
    counts = np.bincount(labels, minlength=num_classes)
    within = np.zeros(labels.size, np.int32)
    # Classes smaller than k: each example is its own cluster (K-means with K = class size).
    for c in np.flatnonzero(counts < k):
        within[labels == c] = np.arange(counts[c])
    large = np.flatnonzero(counts >= k)
    if large.size:
        # The large classes, relabelled 0..len(large)-1, go through one vmapped K-means program.
        relabel = np.full(num_classes, -1)
        relabel[large] = np.arange(large.size)
        rows = np.flatnonzero(counts[labels] >= k)
        within[rows] = np.asarray(
            clustering.cluster_per_class(
                features[rows],
                relabel[labels[rows]],
                num_classes=large.size,
                num_clusters=k,
                key=key,
                num_iters=num_iters,
                num_inits=num_inits,
            )
        )
    return within


def _fingerprint(images: np.ndarray, labels: np.ndarray, key: jax.Array, *settings: Any) -> str:
    """sha256 of the test set's pixels and labels, the key and the partition settings."""
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    digest = hashlib.sha256()
    for array in (images, labels, np.asarray(key)):
        digest.update(repr((array.dtype.str, array.shape)).encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    digest.update(repr((_PARTITION_VERSION, *settings)).encode())
    return digest.hexdigest()


def cached_partitions(
    cache_dir: str | os.PathLike[str],
    dataset_name: str,
    images: ArrayLike,
    labels: ArrayLike,
    *,
    num_classes: int,
    key: jax.Array,
    global_k: int = 10,
    per_class_k: int = 4,
    num_iters: int = 50,
    num_inits: int = 4,
) -> dict[str, np.ndarray]:
    """`test_partitions`, stored in and reloaded from `cache_dir` as an `.npz` file.

    The file name holds the dataset name, N, the Ks and a sha256 of the test images, labels, key
    and settings, so any change to the test set (or the key) misses the cache and recomputes.
    Host-side: call it from the run loop, not inside jitted code.

    Returns:
      The same dict as `test_partitions`.
    """
    images = np.asarray(images, np.float32)
    labels = np.asarray(labels, np.int32)
    settings = (num_classes, global_k, per_class_k, num_iters, num_inits)
    digest = _fingerprint(images, labels, key, *settings)
    safe_name = re.sub(r"[^A-Za-z0-9_.-]+", "_", dataset_name).strip("_") or "dataset"
    path = pathlib.Path(cache_dir) / (
        f"partitions_{safe_name}_n{labels.size}_g{global_k}_k{per_class_k}_{digest[:16]}.npz"
    )
    if path.is_file():
        with np.load(path, allow_pickle=False) as archive:
            if str(archive["digest"]) == digest:
                return {name: archive[name] for name in ("global", "per_class")}
    partitions = test_partitions(
        images,
        labels,
        num_classes=num_classes,
        key=key,
        global_k=global_k,
        per_class_k=per_class_k,
        num_iters=num_iters,
        num_inits=num_inits,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write then rename: an interrupted run never leaves a truncated cache file behind.
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".npz", delete=False) as tmp:
        try:
            np.savez(tmp, digest=np.array(digest), **partitions)
        except BaseException:
            os.unlink(tmp.name)
            raise
    os.replace(tmp.name, path)
    return partitions


# ---------------------------------------------------------------------------------------------
# The report.


def _percent(values: npt.ArrayLike) -> list[float | None]:
    """List of percentages, NaN (an empty group) as None so the result is strict JSON."""
    return [None if math.isnan(v) else 100.0 * float(v) for v in np.asarray(values).tolist()]


def _group_metrics(per_group: np.ndarray) -> dict[str, Any]:
    """(M, G) accuracies -> per-group mean over models, mean-group and worst-group (in %).

    Mean- and worst-group accuracy are computed per model over the non-empty groups, then
    averaged over the models.
    """
    return {
        "group_accuracy": _percent(per_group.mean(axis=0)),
        "mean_group_accuracy": 100.0 * float(np.mean(np.nanmean(per_group, axis=1))),
        "worst_group_accuracy": 100.0 * float(np.mean(np.nanmin(per_group, axis=1))),
    }


def _partition_metrics(
    name: str, groups: ArrayLike, predictions: jax.Array, labels: jax.Array
) -> tuple[dict[str, Any], list[int]]:
    """`_group_metrics` of partition `name` (`(N,)` group ids) and its group sizes."""
    groups = np.asarray(groups)
    if groups.shape != labels.shape or not np.issubdtype(groups.dtype, np.integer):
        raise ValueError(
            f"partition {name!r} must be (N,) = {labels.shape} int group ids, got "
            f"{groups.dtype} {groups.shape}."
        )
    if groups.min() < 0:
        raise ValueError(f"partition {name!r} has negative group ids.")
    num_groups = int(groups.max()) + 1
    per_group = np.asarray(retrain.group_accuracy(predictions, labels, groups, num_groups))
    return _group_metrics(per_group), np.bincount(groups, minlength=num_groups).tolist()


def _shift_accuracy(
    predict: Callable[[jax.Array], jax.Array],
    images: jax.Array,
    labels: jax.Array,
    *,
    mean: ArrayLike,
    std: ArrayLike,
    shifts: Mapping[str, float | None],
    key: jax.Array,
) -> tuple[dict[str, float], dict[str, float]]:
    """`({shift: mean accuracy %}, {shift: std %})` over the models, shifting in pixel space."""
    mean = jnp.asarray(mean, jnp.float32)
    std = jnp.asarray(std, jnp.float32)
    pixels = images * std + mean
    shift_mean, shift_std = {}, {}
    for name, strength in shifts.items():
        shift_key = jax.random.fold_in(key, zlib.crc32(name.encode()) & 0x7FFFFFFF)
        shifted = shifts_lib.apply_shift(name, pixels, key=shift_key, strength=strength)
        shifted_accuracy = np.asarray(retrain.accuracy(predict((shifted - mean) / std), labels))
        shift_mean[name] = 100.0 * float(shifted_accuracy.mean())
        shift_std[name] = 100.0 * float(shifted_accuracy.std())
    return shift_mean, shift_std


def robustness_report(
    model: nn.Module,
    params_stacked: Any,
    images: ArrayLike,
    labels: ArrayLike,
    *,
    mean: ArrayLike,
    std: ArrayLike,
    partitions: Mapping[str, ArrayLike],
    shifts: Mapping[str, float | None],
    key: jax.Array,
    num_classes: int,
    batch_size: int = 1024,
) -> dict[str, Any]:
    """Accuracy, subgroup and shift metrics of `M` networks on a (test) set.

    Every accuracy is in percent. Per-model numbers are reduced over groups (or classes) first
    and then averaged over the models: `worst_group_accuracy` is the mean over models of each
    model's worst group (not the worst group of the model-averaged accuracies). Empty groups are
    skipped in the reductions and reported as None in the per-group lists.

    Args:
      model: the network of `params_stacked`.
      params_stacked: `params` of M networks on a leading axis (`retrain.train_models`).
      images: `(N, H, W, C)` images normalised with `mean` / `std` (e.g. `Dataset.test.images`).
      labels: `(N,)` int labels.
      mean, std: `(C,)` per-channel statistics of the normalisation (`Dataset.mean`, `.std`).
      partitions: name -> `(N,)` int group ids (e.g. `test_partitions`); a partition has
        `max(id) + 1` groups.
      shifts: shift name (a key of `jaxdd.shifts.SHIFTS`) -> strength (None for 'invert').
      key: PRNG key of the random shifts; shift `name` uses `fold_in(key, crc32(name))`, so
        adding a shift does not change the others.
      num_classes: C.
      batch_size: images per forward pass.

    Returns:
      A JSON-serialisable dict with
        `num_models`; `accuracy_mean`, `accuracy_std` (population std over models),
        `per_model_accuracy`; `per_class_accuracy` (mean over models) and `worst_class_accuracy`;
        for every partition p: `group_accuracy_<p>` (per group, mean over models),
        `mean_group_accuracy_<p>`, `worst_group_accuracy_<p>`, `group_size_<p>`; the canonical
        `group_accuracy`, `mean_group_accuracy`, `worst_group_accuracy` of the 'global'
        partition (when given); `shift_accuracy` and `shift_accuracy_std` ({shift: %}).
    """
    images = jnp.asarray(images, jnp.float32)
    labels = jnp.asarray(labels, jnp.int32)
    if labels.shape != images.shape[:1]:
        raise ValueError(f"labels must have shape ({images.shape[0]},), got {labels.shape}.")
    predict = functools.partial(retrain.predict, model, params_stacked, batch_size=batch_size)

    predictions = predict(images)
    accuracy = np.asarray(retrain.accuracy(predictions, labels))
    per_class = np.asarray(retrain.group_accuracy(predictions, labels, labels, num_classes))
    report: dict[str, Any] = {
        "num_models": int(accuracy.shape[0]),
        "accuracy_mean": 100.0 * float(accuracy.mean()),
        "accuracy_std": 100.0 * float(accuracy.std()),
        "per_model_accuracy": _percent(accuracy),
        "per_class_accuracy": _percent(per_class.mean(axis=0)),
        "worst_class_accuracy": 100.0 * float(np.mean(np.nanmin(per_class, axis=1))),
    }

    for name, groups in partitions.items():
        metrics, sizes = _partition_metrics(name, groups, predictions, labels)
        report.update({f"{metric}_{name}": value for metric, value in metrics.items()})
        report[f"group_size_{name}"] = sizes
        if name == "global":
            report.update(metrics)

    shift_mean, shift_std = _shift_accuracy(
        predict, images, labels, mean=mean, std=std, shifts=shifts, key=key
    )
    report["shift_accuracy"] = shift_mean
    report["shift_accuracy_std"] = shift_std
    return report
