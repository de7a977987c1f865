"""The synthetic set's starting point: random real images, noise, or a real coreset.

`initial_set` is what a run calls (`syn.init`): 'real' (`ipc` random real images per class,
drawn from the whole class), 'noise' (standard normal in the normalised space) or a coreset of
`jaxdd.baselines` chosen on the flattened normalised train pixels (`coreset`, which the
robustness benchmark also scores as a baseline). Every set is `(C, ipc, H, W, Ch)` images with
`(C, ipc)` int32 labels, class c in row c. Further parameterisations of the set (factorised
images, generator latents) belong in this module.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxdd import baselines, step

# `syn.init` choices.
INITS = ("real", "noise", *baselines.BASELINES)


def init_synthetic(
    real: step.RealData, *, ipc: int, key: jax.Array, method: str = "real"
) -> tuple[jax.Array, jax.Array]:
    """Initial synthetic set: `ipc` random real images per class, or standard-normal noise.

    Returns:
      images (C, ipc, H, W, Ch) and labels (C, ipc) int32.
    """
    num_classes = real.groups.sizes.shape[0]
    labels = jnp.repeat(jnp.arange(num_classes, dtype=jnp.int32)[:, None], ipc, axis=1)
    if method == "noise":
        shape = (num_classes, ipc, *real.images.shape[1:])
        return jax.random.normal(key, shape, real.images.dtype), labels
    if method != "real":
        raise ValueError(f"unknown synthetic init {method!r}; use 'real' or 'noise'.")
    # Draw uniformly from the whole class: flatten its groups' members, sizes as weights.
    members = real.groups.members.reshape(num_classes, -1)
    slots = real.groups.members.shape[-1]
    valid = jnp.arange(slots)[None, None, :] < real.groups.sizes[:, :, None]
    valid = valid.reshape(num_classes, -1)

    def draw(class_members, class_valid, class_key):
        # Without replacement when the class is large enough (top-k of random scores).
        scores = jnp.where(class_valid, jax.random.uniform(class_key, class_valid.shape), -1.0)
        return class_members[jax.lax.top_k(scores, ipc)[1]]

    index = jax.vmap(draw)(members, valid, jax.random.split(key, num_classes))
    return real.images[index], labels


def coreset(
    method: str, images: np.ndarray, labels: np.ndarray, *, ipc: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """The `baselines.BASELINES[method]` coreset of `(images, labels)` on flattened pixels.

    Args:
      method: 'random', 'herding' or 'k_center'.
      images: (N, H, W, Ch) normalised train images. labels: (N,) int classes 0..C-1.
      ipc: images per class. seed: the coreset's seed (random subset only).

    Returns:
      images (C, ipc, H, W, Ch) and labels (C, ipc) int32, class c in row c.
    """
    images, labels = np.asarray(images), np.asarray(labels)
    index = baselines.select(method, images, labels, ipc=ipc, seed=seed)
    num_classes = len(index) // ipc
    return (
        images[index].reshape(num_classes, ipc, *images.shape[1:]),
        labels[index].astype(np.int32).reshape(num_classes, ipc),
    )


def initial_set(
    method: str,
    real: step.RealData,
    *,
    ipc: int,
    key: jax.Array,
    seed: int,
    train_labels: np.ndarray | None = None,
) -> tuple[jax.Array, jax.Array]:
    """The initial synthetic set of `syn.init=method` (one of `INITS`).

    Args:
      method: 'real', 'noise' or a coreset name. real: the real training data.
      ipc: images per class. key: the draw of 'real' and 'noise'. seed: the coreset's seed.
      train_labels: (N,) labels of `real.images`; needed by the coresets.

    Returns:
      images (C, ipc, H, W, Ch) and labels (C, ipc) int32.
    """
    if method not in baselines.BASELINES:
        return init_synthetic(real, ipc=ipc, key=key, method=method)
    if train_labels is None:
        raise ValueError(f"syn.init={method!r} needs the train labels.")
    images, labels = coreset(method, np.asarray(real.images), train_labels, ipc=ipc, seed=seed)
    return jnp.asarray(images), jnp.asarray(labels)
