"""Subgroups of the real data: the (class, cluster) groups and fixed-shape batches from them.

The unit of robustness is the (class, cluster) pair: C*K groups. This module turns a feature
space and K-means (`jaxdd.clustering`) into those groups, and draws a fixed number m of real
samples from every group per distillation step, so that all C*K per-group losses have the same
shape and rare groups weigh as much as common ones.

- `FEATURES`: the feature spaces groups can be clustered in (`cluster.features`): normalised
  pixels, or the embedding of a randomly initialised network.
- `voronoi_groups`: the second assignment mode (`cluster.assign=voronoi`, the reference
  code's): the groups of class c are the Voronoi cells of its ipc synthetic images among a pool
  of its real images, in the current network's embedding, recomputed every update.
- `cluster_groups`: features -> per-class K-means -> `Groups`, deterministic given the key.
- `Groups` / `make_groups`: host-side index table (C, K, Gmax) of the groups, a pytree that can
  be passed into jitted steps.
- `sample_groups`: (C, K, m) dataset indices, without replacement where a group has >= m
  members, uniformly with replacement where it is smaller.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jaxdd import clustering, models, xla

__all__ = [
    "ASSIGNMENTS",
    "FEATURES",
    "Groups",
    "class_groups",
    "cluster_groups",
    "make_groups",
    "network_outputs",
    "sample_groups",
    "voronoi_groups",
]

# `cluster.assign`: K-means once before distilling, or the synthetic images' Voronoi cells.
ASSIGNMENTS = ("kmeans", "voronoi")

_EMBED_CHUNK = 1024  # Images per forward pass of the random-network features.


def pixel_features(images: np.ndarray, *, key: jax.Array, model: nn.Module) -> jax.Array:
    """(N, H, W, C) -> (N, H*W*C) flattened pixels, L2-normalised (`key`, `model` unused)."""
    del key, model
    return clustering.features_pixels(images)


def network_outputs(model: nn.Module, params: Any, images: np.ndarray) -> tuple[jax.Array, ...]:
    """(N, H, W, C) -> `model`'s (logits (N, classes), embedding (N, D)) at `params`, computed
    `_EMBED_CHUNK` images at a time."""
    apply = xla.jit(lambda p, x: model.apply({"params": p}, x))
    starts = range(0, len(images), _EMBED_CHUNK)
    chunks = [apply(params, images[i : i + _EMBED_CHUNK]) for i in starts]
    return tuple(jnp.concatenate(parts) for parts in zip(*chunks, strict=True))


def random_net_features(images: np.ndarray, *, key: jax.Array, model: nn.Module) -> jax.Array:
    """(N, H, W, C) -> (N, D) penultimate embedding of `model` at a random init (from `key`),
    L2-normalised per sample."""
    params = models.init_params(model, key, images.shape[1:])
    features = network_outputs(model, params, images)[1]
    return features / jnp.maximum(jnp.linalg.norm(features, axis=1, keepdims=True), 1e-12)


# `cluster.features` -> (images, *, key, model) -> (N, D) K-means features.
FEATURES: dict[str, Callable[..., jax.Array]] = {
    "pixels": pixel_features,
    "random_net": random_net_features,
}


@flax.struct.dataclass
class Groups:
    """Index table of the (class, cluster) groups; a pytree, so it can enter jitted functions.

    Attributes:
      members: (C, K, Gmax) int32 dataset indices of each group's members; entries past the
        group's size repeat its first member.
      sizes: (C, K) int32 true group sizes, all >= 1.
    """

    members: jax.Array
    sizes: jax.Array


def make_groups(
    labels: ArrayLike, assignments: ArrayLike, *, num_classes: int, num_clusters: int
) -> Groups:
    """Builds the group table host-side from labels and within-class cluster assignments.

    Args:
      labels: (N,) int class labels in [0, C).
      assignments: (N,) int within-class clusters in [0, K), e.g. from `cluster_per_class`.
      num_classes: C.
      num_clusters: K.

    Returns:
      `Groups` with members (C, K, Gmax) and sizes (C, K); members are in increasing index order.

    Raises:
      ValueError: if a label or assignment is out of range or any group is empty.
    """
    labels = np.asarray(labels)
    assignments = np.asarray(assignments)
    if labels.shape != assignments.shape or labels.ndim != 1:
        raise ValueError(
            f"make_groups expects labels and assignments of the same shape (N,), got "
            f"{labels.shape} and {assignments.shape}."
        )
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}).")
    if assignments.size and (assignments.min() < 0 or assignments.max() >= num_clusters):
        raise ValueError(f"assignments must lie in [0, {num_clusters}).")
    group = labels.astype(np.int64) * num_clusters + assignments
    sizes = np.bincount(group, minlength=num_classes * num_clusters)
    if np.any(sizes == 0):
        c, k = np.argwhere(sizes.reshape(num_classes, num_clusters) == 0)[0]
        raise ValueError(
            f"group (class {c}, cluster {k}) is empty; every (class, cluster) group needs at "
            "least one example: recluster or lower cluster.num_clusters"
        )
    order = np.argsort(group, kind="stable")
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    slot = np.arange(labels.size) - starts[group[order]]
    members = np.repeat(order[starts][:, None], sizes.max(), axis=1)
    members[group[order], slot] = order
    return Groups(
        members=jnp.asarray(members.reshape(num_classes, num_clusters, -1), jnp.int32),
        sizes=jnp.asarray(sizes.reshape(num_classes, num_clusters), jnp.int32),
    )


def sample_groups(groups: Groups, num_samples: int, *, key: jax.Array) -> jax.Array:
    """Draws `num_samples` dataset indices from every group.

    Groups with at least m members are sampled without replacement (top-m of uniform scores,
    padding slots scored -inf); smaller groups uniformly with replacement. Jittable with
    `num_samples` static; deterministic given `key`.

    Args:
      groups: `Groups` with members (C, K, Gmax) and sizes (C, K).
      num_samples: m >= 1.
      key: PRNG key.

    Returns:
      (C, K, m) int32 dataset indices; entry [c, k, :] are members of group (c, k).
    """
    if num_samples < 1:
        raise ValueError(f"sample_groups needs num_samples >= 1, got {num_samples}.")
    members, sizes = groups.members, groups.sizes
    g_max = members.shape[-1]
    width = max(g_max, num_samples)
    key_perm, key_rep = jax.random.split(key)
    scores = jax.random.uniform(key_perm, (*sizes.shape, width))
    scores = jnp.where(jnp.arange(width) < sizes[..., None], scores, -jnp.inf)
    _, without = jax.lax.top_k(scores, num_samples)
    u = jax.random.uniform(key_rep, (*sizes.shape, num_samples))
    with_rep = jnp.minimum(jnp.floor(u * sizes[..., None]).astype(jnp.int32), sizes[..., None] - 1)
    slots = jnp.where(sizes[..., None] >= num_samples, without, with_rep)
    return jnp.take_along_axis(members, jnp.minimum(slots, g_max - 1), axis=-1).astype(jnp.int32)


def cluster_groups(
    images: np.ndarray,
    labels: np.ndarray,
    *,
    features: str,
    model: nn.Module,
    num_classes: int,
    num_clusters: int,
    num_iters: int,
    key: jax.Array,
) -> Groups:
    """Per-class K-means of `images` in the feature space `FEATURES[features]`.

    Args:
      images: (N, H, W, C) normalised images. labels: (N,) int classes in [0, num_classes).
      features: a `FEATURES` name. model: the network `random_net` embeds with.
      num_classes: C. num_clusters: K. num_iters: Lloyd iterations.
      key: split into the feature key and the K-means key.

    Returns:
      The (C, K) `Groups`.
    """
    if features not in FEATURES:
        raise ValueError(
            f"unknown cluster features {features!r}; expected one of {sorted(FEATURES)}."
        )
    feature_key, kmeans_key = jax.random.split(key)
    assignments = clustering.cluster_per_class(
        FEATURES[features](images, key=feature_key, model=model),
        labels,
        num_classes=num_classes,
        num_clusters=num_clusters,
        key=kmeans_key,
        num_iters=num_iters,
    )
    return make_groups(
        labels, np.asarray(assignments), num_classes=num_classes, num_clusters=num_clusters
    )


def class_groups(labels: ArrayLike, *, num_classes: int) -> Groups:
    """The (C, 1) table of whole classes: what `voronoi_groups` draws its real pools from."""
    labels = np.asarray(labels)
    return make_groups(labels, np.zeros_like(labels), num_classes=num_classes, num_clusters=1)


def voronoi_groups(
    embed: Callable[[jax.Array], jax.Array],
    syn_images: jax.Array,
    real_images: jax.Array,
    pool: jax.Array,
) -> tuple[Groups, jax.Array]:
    """The Voronoi cells of each class's synthetic images among a pool of its real images.

    The reference code's subgroups (`Mming11/RobustDatasetDistillation` `new_strategy.py`
    `Cluster_Strategy`), with two of its defects fixed: a real image belongs to the nearest
    synthetic image *of its own class* (the reference takes the nearest of all classes'), and
    no cell is dropped: a cell that no pool image falls into holds its synthetic image's nearest
    pool image. Jittable; nothing is differentiated through the assignment.

    Args:
      embed: (n, H, W, Ch) images -> (n, D) features (the current network's embedding).
      syn_images: (C, ipc, H, W, Ch). real_images: (N, H, W, Ch).
      pool: (C, B) dataset indices of class c's real pool (e.g. `sample_groups` of
        `class_groups`).

    Returns:
      `Groups` with members (C, ipc, B) (dataset indices, the cell's first, in pool order) and
      sizes (C, ipc) >= 1, which `sample_groups` draws from; and the (C, ipc, B) bool cells
      over pool positions (cell k of class c holds pool image b).
    """
    num_classes, ipc = syn_images.shape[:2]
    size = pool.shape[1]
    syn = embed(syn_images.reshape(num_classes * ipc, *syn_images.shape[2:]))
    real = embed(real_images[pool.reshape(-1)])
    syn = jax.lax.stop_gradient(syn).reshape(num_classes, ipc, -1)
    real = jax.lax.stop_gradient(real).reshape(num_classes, size, -1)
    distances = (
        jnp.sum(syn**2, axis=-1)[:, :, None]
        + jnp.sum(real**2, axis=-1)[:, None, :]
        - 2 * jnp.einsum("ckd,cbd->ckb", syn, real)
    )  # (C, ipc, B) squared Euclidean.
    nearest = jnp.argmin(distances, axis=1)  # (C, B): each pool image's synthetic image.
    cells = nearest[:, None, :] == jnp.arange(ipc)[None, :, None]
    empty = ~jnp.any(cells, axis=-1, keepdims=True)
    closest = jnp.argmin(distances, axis=-1)[..., None]  # (C, ipc, 1): each cell's nearest.
    cells = cells | (empty & (jnp.arange(size) == closest))
    sizes = jnp.sum(cells, axis=-1, dtype=jnp.int32)
    order = jnp.argsort(~cells, axis=-1, stable=True)  # Cell members first, in pool order.
    members = jnp.take_along_axis(jnp.broadcast_to(pool[:, None, :], cells.shape), order, -1)
    # As `make_groups`: entries past a group's size repeat its first member.
    members = jnp.where(jnp.arange(size) < sizes[..., None], members, members[..., :1])
    return Groups(members=members.astype(jnp.int32), sizes=sizes), cells
