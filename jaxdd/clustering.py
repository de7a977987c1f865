"""K-means: the clustering that defines the subgroups (`jaxdd.groups` builds them from it).

Step 1 of the method partitions each class c of the real training set into K subgroups
G_{c,1..K} by K-means in a feature space (default: `features_pixels`).

- `kmeans`: greedy k-means++ seeding plus Lloyd iterations, masked (padding rows are ignored),
  jittable with `num_clusters` / `num_iters` / `num_inits` static, deterministic given `key`.
- `cluster_per_class`: `kmeans` vmapped over classes (padded to a common size) -> the cluster of
  every sample within its class.
- `features_pixels`: the default feature space (flattened pixels, L2-normalised).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jaxdd import xla

__all__ = ["KMeansResult", "cluster_per_class", "features_pixels", "kmeans"]

# Full-precision matmuls: the default on GPU/TPU (TF32 / bf16 passes) moves squared distances
# enough to flip nearest-centroid assignments.
_PRECISION = jax.lax.Precision.HIGHEST


class KMeansResult(NamedTuple):
    """Output of `kmeans`.

    Attributes:
      centroids: (K, D) float, the mean of each cluster's valid points.
      assignments: (N,) int32 cluster of each row in [0, K); -1 for padding rows.
      inertia: () float, sum of squared distances of the valid points to their centroid.
    """

    centroids: jax.Array
    assignments: jax.Array
    inertia: jax.Array


def _sq_distances(x: jax.Array, centroids: jax.Array) -> jax.Array:
    """(N, D), (K, D) -> (N, K) squared Euclidean distances, clamped at 0."""
    x_sq = jnp.sum(x * x, axis=-1, keepdims=True)
    c_sq = jnp.sum(centroids * centroids, axis=-1)
    cross = jnp.matmul(x, centroids.T, precision=_PRECISION)
    return jnp.maximum(x_sq - 2.0 * cross + c_sq, 0.0)


def _sample_weighted(weights: jax.Array, u: jax.Array) -> jax.Array:
    """Indices drawn with probability proportional to `weights` (N,) >= 0, one per u in [0, 1).

    Inverse-CDF sampling with scalar uniforms: zero-weight (padding) rows can never be drawn and
    do not change which valid row is drawn, so a padded input reproduces the unpadded result.
    """
    cdf = jnp.cumsum(weights)
    # Counting entries <= target is searchsorted(side="right"); (N, L) is small for L draws.
    idx = jnp.sum(cdf[:, None] <= (u * cdf[-1])[None, :], axis=0)
    # u * total can round up to total; never step past the last row with weight.
    last = weights.shape[0] - 1 - jnp.argmax(weights[::-1] > 0)
    return jnp.minimum(idx, last)


def _kmeans_plusplus(x: jax.Array, mask: jax.Array, num_clusters: int, key: jax.Array) -> jax.Array:
    """Greedy k-means++ seeding (Arthur & Vassilvitskii 2007; as in scikit-learn).

    Each new centre is the best, by resulting potential, of 2 + floor(log K) candidates drawn
    with probability proportional to the squared distance to the nearest chosen centre (D^2
    sampling). Padding rows have weight 0. If every valid point already coincides with a centre
    (duplicates), candidates are drawn uniformly over the valid points instead.

    Args:
      x: (N, D) float features (padding rows zeroed).
      mask: (N,) bool, True for valid rows.
      num_clusters: K.
      key: PRNG key.

    Returns:
      (K, D) initial centroids.
    """
    num_trials = 2 + int(math.log(num_clusters))
    valid = mask.astype(x.dtype)
    first_key, rest_key = jax.random.split(key)
    first = _sample_weighted(valid, jax.random.uniform(first_key, (1,)))[0]
    centroids = jnp.zeros((num_clusters, x.shape[1]), x.dtype).at[0].set(x[first])
    closest = _sq_distances(x, x[first][None])[:, 0] * valid

    def body(i, carry):
        centroids, closest = carry
        total = jnp.sum(closest)
        weights = jnp.where(total > 0, closest, valid)
        u = jax.random.uniform(jax.random.fold_in(rest_key, i), (num_trials,))
        candidates = _sample_weighted(weights, u)
        # (N, L) potential of every candidate; keep the one that lowers the potential most.
        cand_closest = jnp.minimum(closest[:, None], _sq_distances(x, x[candidates]))
        cand_closest = cand_closest * valid[:, None]
        best = jnp.argmin(jnp.sum(cand_closest, axis=0))
        centroids = centroids.at[i].set(x[candidates[best]])
        return centroids, cand_closest[:, best]

    centroids, _ = jax.lax.fori_loop(1, num_clusters, body, (centroids, closest))
    return centroids


def _assign(x: jax.Array, centroids: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Nearest centroid (N,) int32 and its squared distance (N,)."""
    d = _sq_distances(x, centroids)
    assignments = jnp.argmin(d, axis=-1).astype(jnp.int32)
    return assignments, jnp.take_along_axis(d, assignments[:, None], axis=-1)[:, 0]


def _cluster_sums(
    x: jax.Array, assignments: jax.Array, mask: jax.Array, num_clusters: int
) -> tuple[jax.Array, jax.Array]:
    """Per-cluster feature sums (K, D) and counts (K,) int32 over the valid rows."""
    one_hot = jax.nn.one_hot(assignments, num_clusters, dtype=x.dtype) * mask[:, None]
    sums = jnp.matmul(one_hot.T, x, precision=_PRECISION)
    counts = jnp.sum(mask[:, None] & (assignments[:, None] == jnp.arange(num_clusters)), axis=0)
    return sums, counts.astype(jnp.int32)


def _lloyd_step(
    x: jax.Array, centroids: jax.Array, mask: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One assignment + update step with empty-cluster re-seeding.

    An empty cluster is moved onto a valid point far from its current centroid: the j-th empty
    cluster takes the j-th farthest valid point (as scikit-learn does), so several empty clusters
    never land on the same point.

    Returns:
      new centroids (K, D), assignments (N,) int32, whether any cluster was empty () bool.
    """
    num_clusters = centroids.shape[0]
    assignments, dist = _assign(x, centroids)
    sums, counts = _cluster_sums(x, assignments, mask, num_clusters)
    means = sums / jnp.maximum(counts, 1)[:, None].astype(x.dtype)
    empty = counts == 0
    k_far = min(num_clusters, x.shape[0])
    _, farthest = jax.lax.top_k(jnp.where(mask, dist, -jnp.inf), k_far)
    rank = jnp.clip(jnp.cumsum(empty) - 1, 0, k_far - 1)
    new = jnp.where(empty[:, None], x[farthest[rank]], means)
    return new, assignments, jnp.any(empty)


def _lloyd(
    features: ArrayLike, centroids: ArrayLike, mask: ArrayLike, num_iters: int | jax.Array
) -> tuple[jax.Array, jax.Array]:
    """At most `num_iters` Lloyd iterations from `centroids`, stopping at a fixed point.

    Stops once the assignments repeat and no cluster is empty: from there every further iteration
    reproduces the same centroids exactly, so the result equals running all `num_iters`.

    Args:
      features: (N, D) float.
      centroids: (K, D) initial centroids.
      mask: (N,) bool, True for valid rows.
      num_iters: maximum number of iterations; may be traced (it only bounds a while_loop).

    Returns:
      centroids (K, D) after the iterations and the number of iterations run () int32.
    """
    mask = jnp.asarray(mask, bool)
    x = jnp.where(mask[:, None], jnp.asarray(features), 0.0)
    centroids = jnp.asarray(centroids, x.dtype)
    prev = jnp.full(x.shape[0], -1, jnp.int32)

    def cond(carry):
        _, _, it, converged = carry
        return (it < num_iters) & ~converged

    def body(carry):
        centroids, prev, it, _ = carry
        new, assignments, any_empty = _lloyd_step(x, centroids, mask)
        unchanged = jnp.all((assignments == prev) | ~mask)
        return new, assignments, it + 1, unchanged & ~any_empty

    centroids, _, it, _ = jax.lax.while_loop(
        cond, body, (centroids, prev, jnp.int32(0), jnp.bool_(False))
    )
    return centroids, it


def _fill_empty(
    assignments: jax.Array, dist: jax.Array, mask: jax.Array, num_clusters: int
) -> jax.Array:
    """Final fix-up: every cluster gets at least one valid point when there are >= K of them.

    Each empty cluster, in turn, takes the valid point farthest from its centroid among clusters
    that have two or more points (one exists by pigeonhole while a cluster is empty).
    """

    def body(k, carry):
        assignments, dist = carry
        counts = jnp.sum(mask[:, None] & (assignments[:, None] == jnp.arange(num_clusters)), 0)
        donor_ok = mask & (counts[jnp.clip(assignments, 0)] >= 2)
        score = jnp.where(donor_ok, dist, -jnp.inf)
        i = jnp.argmax(score)
        steal = (counts[k] == 0) & donor_ok[i]
        assignments = jnp.where(steal, assignments.at[i].set(k), assignments)
        # The moved point is now alone in cluster k, so it must never be taken again.
        dist = jnp.where(steal, dist.at[i].set(-jnp.inf), dist)
        return assignments, dist

    assignments, _ = jax.lax.fori_loop(0, num_clusters, body, (assignments, dist))
    return assignments


def _kmeans_single(
    x: jax.Array, mask: jax.Array, key: jax.Array, num_clusters: int, num_iters: int
) -> KMeansResult:
    """One k-means++ + Lloyd run on zero-padded features; see `kmeans`."""
    init = _kmeans_plusplus(x, mask, num_clusters, key)
    centroids, _ = _lloyd(x, init, mask, num_iters)
    assignments, dist = _assign(x, centroids)
    assignments = _fill_empty(assignments, dist, mask, num_clusters)
    sums, counts = _cluster_sums(x, assignments, mask, num_clusters)
    centroids = jnp.where(
        (counts > 0)[:, None], sums / jnp.maximum(counts, 1)[:, None].astype(x.dtype), centroids
    )
    residual = x - centroids[assignments]
    inertia = jnp.sum(jnp.where(mask, jnp.sum(residual * residual, axis=-1), 0.0))
    return KMeansResult(centroids, jnp.where(mask, assignments, -1), inertia)


def kmeans(
    features: ArrayLike,
    num_clusters: int,
    *,
    key: jax.Array,
    mask: ArrayLike | None = None,
    num_iters: int = 50,
    num_inits: int = 4,
) -> KMeansResult:
    """K-means: greedy k-means++ seeding, then Lloyd iterations; best of `num_inits` runs.

    Padding rows (mask False) take no part: they are never drawn as seeds, never counted in a
    centroid or in the inertia, and get assignment -1; the result equals running on the valid rows
    alone. A cluster that empties during Lloyd is re-seeded onto a far-away valid point, and a
    final fix-up guarantees that every cluster has at least one valid point whenever there are at
    least K valid points. Jittable with `num_clusters`, `num_iters` and `num_inits` static.

    Args:
      features: (N, D) float features.
      num_clusters: K >= 1.
      key: PRNG key; the result is a deterministic function of it.
      mask: optional (N,) bool, False marks padding rows. Default: all valid.
      num_iters: maximum Lloyd iterations (stops earlier at a fixed point).
      num_inits: independent seedings run (vmapped); the lowest-inertia run is returned. One
        greedy k-means++ run lands ~2% above scikit-learn's best-of-10 on the digits classes;
        the default 4 is within ~1%.

    Returns:
      `KMeansResult` with centroids (K, D), assignments (N,) int32, inertia () float.
    """
    features = jnp.asarray(features)
    if features.ndim != 2:
        raise ValueError(f"kmeans expects features of shape (N, D), got {features.shape}.")
    if not jnp.issubdtype(features.dtype, jnp.floating):
        features = features.astype(jnp.float32)
    if num_clusters < 1:
        raise ValueError(f"kmeans needs num_clusters >= 1, got {num_clusters}.")
    if num_inits < 1:
        raise ValueError(f"kmeans needs num_inits >= 1, got {num_inits}.")
    n = features.shape[0]
    mask = jnp.ones(n, bool) if mask is None else jnp.asarray(mask, bool)
    if mask.shape != (n,):
        raise ValueError(f"kmeans mask must have shape ({n},), got {mask.shape}.")
    x = jnp.where(mask[:, None], features, 0.0)
    run = functools.partial(_kmeans_single, num_clusters=num_clusters, num_iters=num_iters)
    if num_inits == 1:
        return run(x, mask, key)
    runs = jax.vmap(run, in_axes=(None, None, 0))(x, mask, jax.random.split(key, num_inits))
    best = jnp.argmin(runs.inertia)
    return jax.tree.map(lambda leaf: leaf[best], runs)


@functools.partial(xla.jit, static_argnames=("num_clusters", "num_iters", "num_inits"))
def _kmeans_per_class(
    features: jax.Array,
    mask: jax.Array,
    keys: jax.Array,
    *,
    num_clusters: int,
    num_iters: int,
    num_inits: int,
) -> jax.Array:
    """(C, Nmax, D), (C, Nmax), (C,) keys -> (C, Nmax) int32 within-class assignments."""
    run = functools.partial(
        kmeans, num_clusters=num_clusters, num_iters=num_iters, num_inits=num_inits
    )
    return jax.vmap(lambda x, m, k: run(x, key=k, mask=m).assignments)(features, mask, keys)


def cluster_per_class(
    features: ArrayLike,
    labels: ArrayLike,
    *,
    num_classes: int,
    num_clusters: int,
    key: jax.Array,
    num_iters: int = 50,
    num_inits: int = 4,
) -> jax.Array:
    """Partitions every class into `num_clusters` subgroups by K-means (one key per class).

    The classes are gathered host-side into a padded (C, Nmax, D) array with a mask (labels must
    be concrete), and `kmeans` runs vmapped over classes in one compiled program.

    Args:
      features: (N, D) float features, e.g. `features_pixels(images)`.
      labels: (N,) int class labels in [0, num_classes).
      num_classes: C.
      num_clusters: K, at most the size of the smallest class.
      key: PRNG key; class c uses `jax.random.split(key, C)[c]`.
      num_iters: maximum Lloyd iterations.
      num_inits: k-means++ seedings per class; the lowest-inertia one is kept.

    Returns:
      (N,) int32 cluster of each sample within its class, in [0, K); every (class, cluster)
      pair has at least one sample.

    Raises:
      ValueError: if K < 1, K exceeds the smallest class, or labels are out of range.
    """
    if num_clusters < 1:
        raise ValueError(f"cluster.num_clusters must be >= 1, got {num_clusters}.")
    labels = np.asarray(labels)
    features = jnp.asarray(features)
    if labels.ndim != 1 or features.ndim != 2 or features.shape[0] != labels.shape[0]:
        raise ValueError(
            f"cluster_per_class expects features (N, D) and labels (N,), got {features.shape} "
            f"and {labels.shape}."
        )
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"labels must lie in [0, {num_classes}); got [{labels.min()}, {labels.max()}]."
        )
    counts = np.bincount(labels, minlength=num_classes)
    smallest = int(np.argmin(counts))
    if num_clusters > counts[smallest]:
        raise ValueError(
            f"cluster.num_clusters={num_clusters} exceeds the smallest class (class {smallest} has "
            f"{counts[smallest]} examples); lower it"
        )
    n_max = int(counts.max())
    # Stable sort groups each class contiguously; pos is each sample's slot within its class.
    order = np.argsort(labels, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    pos = np.empty_like(order)
    pos[order] = np.arange(labels.size) - starts[labels[order]]
    index = np.zeros((num_classes, n_max), np.int64)
    index[labels, pos] = np.arange(labels.size)
    mask = np.zeros((num_classes, n_max), bool)
    mask[labels, pos] = True
    padded = jnp.where(mask[..., None], features[index], 0.0)
    within = _kmeans_per_class(
        padded,
        jnp.asarray(mask),
        jax.random.split(key, num_classes),
        num_clusters=num_clusters,
        num_iters=num_iters,
        num_inits=num_inits,
    )
    return within[labels, pos].astype(jnp.int32)


def features_pixels(images: ArrayLike) -> jax.Array:
    """Default clustering features: flattened pixels, L2-normalised per sample.

    Args:
      images: (N, H, W, C) images.

    Returns:
      (N, H*W*C) float32 rows of unit norm (an all-zero image stays zero).
    """
    images = jnp.asarray(images, jnp.float32)
    flat = images.reshape(images.shape[0], -1)
    norm = jnp.linalg.norm(flat, axis=-1, keepdims=True)
    return flat / jnp.maximum(norm, 1e-12)
