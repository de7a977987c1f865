"""Subgroup and distribution-shift metrics of trained networks on the test split.

SPEC's robustness protocol, on top of `jaxdd.evaluate`:

- Subgroups: fixed K-means partitions of the *test* set (`test_partitions`): 'global', K = 10
  clusters of the whole test set on pixels (as in the paper), and 'per_class', K clusters inside
  every class (group = label * K + cluster). They are computed once per test set and cached
  (`cached_partitions`), keyed by a hash of the test set so that a changed test set never reuses
  a stale partition.
- Shifts: pure functions on [0, 1] pixel-space NHWC images (before normalisation): Gaussian
  noise, Gaussian blur and colour inversion (the paper's three) plus contrast reduction, each
  clipped back to [0, 1]; `SHIFTS` is the registry used with config-given strengths.
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

from jaxdd import clustering, evaluate, xla

__all__ = [
    "SHIFTS",
    "apply_shift",
    "cached_partitions",
    "contrast",
    "gaussian_blur",
    "gaussian_noise",
    "invert",
    "robustness_report",
    "test_partitions",
]

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
# Distribution shifts (pixel space, [0, 1]).


def _clip(images: jax.Array) -> jax.Array:
    return jnp.clip(images, 0.0, 1.0)


def gaussian_noise(images: ArrayLike, key: jax.Array, *, sigma: float) -> jax.Array:
    """Adds i.i.d. N(0, sigma^2) noise to every pixel (sigma on the [0, 1] scale), then clips."""
    images = jnp.asarray(images, jnp.float32)
    return _clip(images + sigma * jax.random.normal(key, images.shape, images.dtype))


def _gaussian_kernel(sigma: float, radius: int) -> np.ndarray:
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (x / sigma) ** 2)
    return (kernel / kernel.sum()).astype(np.float32)


def _blur_axis(images: jax.Array, *, sigma: float, axis: int) -> jax.Array:
    size = images.shape[axis]
    # Truncated at 3 sigma, and below the image size so that reflect padding is one reflection.
    radius = min(max(1, math.ceil(3.0 * sigma)), size - 1)
    if radius == 0:
        return images
    kernel = _gaussian_kernel(sigma, radius)
    pad = [(0, 0)] * images.ndim
    pad[axis] = (radius, radius)
    padded = jnp.pad(images, pad, mode="reflect")
    return sum(
        float(weight) * jax.lax.slice_in_dim(padded, i, i + size, axis=axis)
        for i, weight in enumerate(kernel)
    )


def gaussian_blur(images: ArrayLike, *, sigma: float) -> jax.Array:
    """Separable Gaussian blur of standard deviation `sigma` pixels, reflect padding, clipped.

    The kernel is truncated at `ceil(3 sigma)` pixels (and below the image size) and
    renormalised, so a constant image is unchanged. `sigma` must be a Python float > 0.
    """
    if not sigma > 0:
        raise ValueError(f"gaussian_blur needs sigma > 0, got {sigma}.")
    images = jnp.asarray(images, jnp.float32)
    if images.ndim != 4:
        raise ValueError(f"images must be NHWC (4-D), got shape {images.shape}.")
    blurred = _blur_axis(_blur_axis(images, sigma=sigma, axis=1), sigma=sigma, axis=2)
    return _clip(blurred)


def invert(images: ArrayLike) -> jax.Array:
    """Colour inversion `1 - x`."""
    return _clip(1.0 - jnp.asarray(images, jnp.float32))


def contrast(images: ArrayLike, *, factor: float) -> jax.Array:
    """Scales every image around its own mean pixel value (over H, W, C), then clips.

    `factor` < 1 lowers the contrast (0 gives a flat grey image), 1 is the identity.
    """
    images = jnp.asarray(images, jnp.float32)
    mean = jnp.mean(images, axis=(1, 2, 3), keepdims=True)
    return _clip(mean + factor * (images - mean))


def _noise_shift(images: jax.Array, *, key: jax.Array, strength: float) -> jax.Array:
    return gaussian_noise(images, key, sigma=strength)


def _blur_shift(images: jax.Array, *, key: jax.Array, strength: float) -> jax.Array:
    del key  # Deterministic.
    return gaussian_blur(images, sigma=strength)


def _invert_shift(images: jax.Array, *, key: jax.Array, strength: float | None) -> jax.Array:
    del key, strength  # Inversion has no degree.
    return invert(images)


def _contrast_shift(images: jax.Array, *, key: jax.Array, strength: float) -> jax.Array:
    del key  # Deterministic.
    return contrast(images, factor=strength)


# name -> fn(images, *, key, strength): strength is noise sigma, blur sigma (pixels) or contrast
# factor; ignored by 'invert'.
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
      params_stacked: `params` of M networks on a leading axis (`evaluate.train_models`).
      images: `(N, H, W, C)` images normalised with `mean` / `std` (e.g. `Dataset.test.images`).
      labels: `(N,)` int labels.
      mean, std: `(C,)` per-channel statistics of the normalisation (`Dataset.mean`, `.std`).
      partitions: name -> `(N,)` int group ids (e.g. `test_partitions`); a partition has
        `max(id) + 1` groups.
      shifts: shift name (a key of `SHIFTS`) -> strength (None for 'invert').
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
    predict = functools.partial(evaluate.predict, model, params_stacked, batch_size=batch_size)

    predictions = predict(images)
    accuracy = np.asarray(evaluate.accuracy(predictions, labels))
    per_class = np.asarray(evaluate.group_accuracy(predictions, labels, labels, num_classes))
    report: dict[str, Any] = {
        "num_models": int(accuracy.shape[0]),
        "accuracy_mean": 100.0 * float(accuracy.mean()),
        "accuracy_std": 100.0 * float(accuracy.std()),
        "per_model_accuracy": _percent(accuracy),
        "per_class_accuracy": _percent(per_class.mean(axis=0)),
        "worst_class_accuracy": 100.0 * float(np.mean(np.nanmin(per_class, axis=1))),
    }

    for name, groups in partitions.items():
        groups = np.asarray(groups)
        if groups.shape != labels.shape or not np.issubdtype(groups.dtype, np.integer):
            raise ValueError(
                f"partition {name!r} must be (N,) = {labels.shape} int group ids, got "
                f"{groups.dtype} {groups.shape}."
            )
        if groups.min() < 0:
            raise ValueError(f"partition {name!r} has negative group ids.")
        num_groups = int(groups.max()) + 1
        per_group = np.asarray(evaluate.group_accuracy(predictions, labels, groups, num_groups))
        metrics = _group_metrics(per_group)
        report.update({f"{metric}_{name}": value for metric, value in metrics.items()})
        report[f"group_size_{name}"] = np.bincount(groups, minlength=num_groups).tolist()
        if name == "global":
            report.update(metrics)

    mean = jnp.asarray(mean, jnp.float32)
    std = jnp.asarray(std, jnp.float32)
    pixels = images * std + mean
    shift_mean, shift_std = {}, {}
    for name, strength in shifts.items():
        shift_key = jax.random.fold_in(key, zlib.crc32(name.encode()) & 0x7FFFFFFF)
        shifted = apply_shift(name, pixels, key=shift_key, strength=strength)
        shifted_accuracy = np.asarray(evaluate.accuracy(predict((shifted - mean) / std), labels))
        shift_mean[name] = 100.0 * float(shifted_accuracy.mean())
        shift_std[name] = 100.0 * float(shifted_accuracy.std())
    report["shift_accuracy"] = shift_mean
    report["shift_accuracy_std"] = shift_std
    return report
