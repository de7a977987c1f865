"""The synthetic set's starting point: random real images, noise, or a real coreset.

`initial_set` is what a run calls (`syn.init`): 'real' (`ipc` random real images per class,
drawn from the whole class), 'groups' (random real images spread over the class's K subgroups,
`group_quota`), 'noise' (standard normal in the normalised space) or a coreset of
`jaxdd.baselines` chosen on the flattened normalised train pixels (`coreset`, which the
robustness benchmark also scores as a baseline). Every set is `(C, ipc, H, W, Ch)` images with
`(C, ipc)` int32 labels, class c in row c.

How the stored set becomes training images (`syn.param`, `decode`): 'pixels' (each stored
image is one), or 'factorized' (IDC's multi-formation, `snu-mllab/Efficient-Dataset-
Condensation` `condense.py` 102-122: each stored image is cut into f x f crops, each upsampled
bilinearly to full size, so ipc stored images decode to f^2 * ipc; IPC counts stored images,
as IDC does). `syn.init=mix` is IDC's initialisation for it (`condense.py` 54-73): f^2 real
images per stored image, each downsampled to a crop and tiled. 'generator' (GLaD's interface):
the stored set is latents `(C, ipc, Z)` and the images are G(latents) for a user-supplied Flax
module and its parameters (`load_generator`); G is fixed, the latents learned.
"""

from __future__ import annotations

import importlib
import pathlib

import flax.linen as nn
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np

from jaxdd import baselines, step

# `syn.init` choices.
INITS = ("real", "groups", "mix", "noise", *baselines.BASELINES)
# `syn.param` choices: how stored images decode to training images.
PARAMS = ("pixels", "factorized", "generator")


def decode(
    images: jax.Array,
    labels: jax.Array,
    params: object = None,
    *,
    param: str = "pixels",
    factor: int = 1,
) -> tuple[jax.Array, jax.Array]:
    """The training images of a stored set: `(C, n, H, W, Ch)`, `(C, n)` -> `(C, n', H, W, Ch)`,
    `(C, n')`, with n' = n for 'pixels' and f^2 n for 'factorized' (crop (i, j) of every stored
    image, for i, j in row-major order, as IDC's `decode_zoom`). Differentiable and jittable;
    H and W must be multiples of `factor`. `params` (a `step.DecodeFn`'s decoder parameters) is
    unused."""
    del params
    if param == "pixels":
        return images, labels
    if param == "generator":
        raise ValueError("syn.param='generator' decodes with its module: use generator_decoder.")
    if param != "factorized":
        raise ValueError(f"unknown syn.param {param!r}; expected one of {PARAMS}.")
    num_classes, n, height, width, channels = images.shape
    if height % factor or width % factor:
        raise ValueError(
            f"syn.factor={factor} must divide the image size {height}x{width}: pick a divisor."
        )
    h, w = height // factor, width // factor
    crops = images.reshape(num_classes, n, factor, h, factor, w, channels)
    crops = crops.transpose(0, 2, 4, 1, 3, 5, 6).reshape(num_classes, factor**2 * n, h, w, -1)
    decoded = jax.image.resize(crops, (*crops.shape[:2], height, width, channels), "bilinear")
    # Along the image axis, for (C, n) hard and (C, n, C) soft labels alike.
    return decoded, jnp.concatenate([labels] * factor**2, axis=1)


def load_generator(spec: str, checkpoint: str, latent_dim: int) -> tuple[nn.Module, object]:
    """The user's generator: `spec` = 'package.module:Name' names a flax.linen Module class (or
    a function returning a Module) built without arguments, mapping `(n, latent_dim)` latents
    to `(n, H, W, Ch)` images in the dataset's normalised space; `checkpoint` is its parameters
    as written by `flax.serialization.to_bytes(params)` (the structure is read from
    `module.init` on one latent).

    Raises:
      ValueError: a malformed spec, a module that cannot be imported or built, or a checkpoint
        that does not hold this module's parameters; FileNotFoundError: no checkpoint file.
    """
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ValueError(
            f"syn.generator={spec!r}: expected 'package.module:Name', a flax Module class "
            "importable from the Python path."
        )
    try:
        module = getattr(importlib.import_module(module_name), attribute)()
    except (ImportError, AttributeError, TypeError) as e:
        raise ValueError(f"syn.generator={spec!r} could not be built: {e}") from e
    if not isinstance(module, nn.Module):
        raise ValueError(f"syn.generator={spec!r} built a {type(module).__name__}, not a Module.")
    path = pathlib.Path(checkpoint).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"syn.generator_checkpoint={checkpoint!r} does not exist; write the generator's "
            "parameters with flax.serialization.to_bytes(params)."
        )
    template = module.init(jax.random.key(0), jnp.zeros((1, latent_dim)))["params"]
    try:
        params = flax.serialization.from_bytes(template, path.read_bytes())
        restored = dict(jax.tree_util.tree_leaves_with_path(params))
        mismatched = [
            jax.tree_util.keystr(where)
            for where, want in jax.tree_util.tree_leaves_with_path(template)
            if where not in restored or np.shape(restored[where]) != want.shape
        ]  # from_bytes restores whatever shapes the file holds.
    except (ValueError, KeyError, TypeError) as e:
        mismatched = [str(e)]
    if mismatched:
        raise ValueError(
            f"{path} does not hold {spec}'s parameters for latent_dim={latent_dim} "
            f"(mismatched: {', '.join(mismatched[:3])})."
        )
    return module, params


def generator_decoder(module: nn.Module):
    """The `step.DecodeFn` of 'generator': `(C, n, Z)` latents, labels and G's parameters ->
    `(C, n, H, W, Ch)` = G(latents), labels unchanged. The parameters are an argument (the
    step's `RealData.decoder`), never closed over, so XLA does not fold them into the program.
    A learned G (`syn.learn_generator`) travels in the stored set instead,
    `{'latents': (C, n, Z), 'generator': params}`, and wins over `params`."""

    def decode_latents(latents, labels: jax.Array, params: object) -> tuple[jax.Array, jax.Array]:
        if isinstance(latents, dict):
            latents, params = latents["latents"], latents["generator"]
        num_classes, n = latents.shape[:2]
        images = module.apply({"params": params}, latents.reshape(num_classes * n, -1))
        return images.reshape(num_classes, n, *images.shape[1:]), labels

    return decode_latents


def mix_init(
    real: step.RealData, *, ipc: int, factor: int, key: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """IDC's `mix` initialisation: per class f^2 * ipc random real images, image k * ipc + j
    downsampled to an (H/f, W/f) crop and tiled at crop k of stored image j (so `decode` gives
    back upsampled versions of the f^2 * ipc real images). IDC downsamples with nearest
    neighbours; here with antialiased linear interpolation (jax.image.resize), which keeps
    thin strokes that nearest sampling can drop."""
    real_images, labels = init_synthetic(real, ipc=factor**2 * ipc, key=key)
    num_classes, _, height, width, channels = real_images.shape
    h, w = height // factor, width // factor
    small = jax.image.resize(
        real_images, (num_classes, factor**2 * ipc, h, w, channels), "linear", antialias=True
    )
    tiles = small.reshape(num_classes, factor, factor, ipc, h, w, channels)
    stored = tiles.transpose(0, 3, 1, 4, 2, 5, 6).reshape(num_classes, ipc, height, width, -1)
    return stored, labels[:, :ipc]


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


def group_quota(sizes: np.ndarray, ipc: int) -> np.ndarray:
    """How many of a class's `ipc` initial images each of its subgroups gets (`syn.init=groups`).

    Every subgroup gets one when `ipc >= K`; the images left over, or all of them when
    `ipc < K`, go one at a time to the subgroup with the largest `size / (quota + 1)` among those
    with members to spare (D'Hondt's highest-averages rule: shares proportional to size, no
    group above its size, ties to the lower index). So for `ipc < K` the `ipc` largest
    subgroups get one each: with fewer images than subgroups the set cannot cover them all, and
    starting where most of the class's data is costs the mean least while the objective (CVaR
    especially) moves images towards the groups it finds hard; the rare groups are covered as
    soon as `ipc >= K`.

    Args:
      sizes: (C, K) int group sizes, each >= 1, each row summing to >= ipc.
      ipc: images per class.

    Returns:
      (C, K) int quotas; each row sums to `ipc` and no quota exceeds its group's size.
    """
    sizes = np.asarray(sizes, np.int64)
    if np.any(sizes.sum(axis=1) < ipc):
        c = int(np.argmin(sizes.sum(axis=1)))
        raise ValueError(
            f"class {c} has {int(sizes[c].sum())} examples, fewer than ipc={ipc}; lower ipc."
        )
    num_clusters = sizes.shape[1]
    quota = np.full(sizes.shape, 1 if ipc >= num_clusters else 0, np.int64)
    for c in range(len(sizes)):
        for _ in range(ipc - int(quota[c].sum())):
            averages = np.where(quota[c] < sizes[c], sizes[c] / (quota[c] + 1), -1.0)
            quota[c, np.argmax(averages)] += 1
    return quota


def init_groups(real: step.RealData, *, ipc: int, key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Initial set spread over the subgroups: `group_quota` real members of each group, drawn
    uniformly without replacement, class c's images ordered by group.

    Returns:
      images (C, ipc, H, W, Ch) and labels (C, ipc) int32.
    """
    sizes = np.asarray(real.groups.sizes)
    members = np.asarray(real.groups.members)
    quota = group_quota(sizes, ipc)
    # A random order of each group's members (padding slots last): the first quota are drawn.
    scores = jax.random.uniform(key, members.shape)
    scores = jnp.where(jnp.arange(members.shape[-1]) < real.groups.sizes[..., None], scores, -1.0)
    order = np.asarray(jnp.argsort(-scores, axis=-1))
    index = np.stack(
        [
            np.concatenate(
                [members[c, k, order[c, k, : quota[c, k]]] for k in range(sizes.shape[1])]
            )
            for c in range(sizes.shape[0])
        ]
    )
    labels = jnp.repeat(jnp.arange(len(sizes), dtype=jnp.int32)[:, None], ipc, axis=1)
    return real.images[jnp.asarray(index)], labels


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
    factor: int = 1,
) -> tuple[jax.Array, jax.Array]:
    """The initial synthetic set of `syn.init=method` (one of `INITS`).

    Args:
      method: 'real', 'noise' or a coreset name. real: the real training data.
      ipc: images per class. key: the draw of 'real' and 'noise'. seed: the coreset's seed.
      train_labels: (N,) labels of `real.images`; needed by the coresets.
      factor: 'mix''s f (`syn.factor`).

    Returns:
      images (C, ipc, H, W, Ch) and labels (C, ipc) int32.
    """
    if method == "groups":
        return init_groups(real, ipc=ipc, key=key)
    if method == "mix":
        return mix_init(real, ipc=ipc, factor=factor, key=key)
    if method not in baselines.BASELINES:
        return init_synthetic(real, ipc=ipc, key=key, method=method)
    if train_labels is None:
        raise ValueError(f"syn.init={method!r} needs the train labels.")
    images, labels = coreset(method, np.asarray(real.images), train_labels, ipc=ipc, seed=seed)
    return jnp.asarray(images), jnp.asarray(labels)
