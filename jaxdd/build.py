"""Config -> objects: the `create_*` factories a run (and a benchmark) is composed of.

Only these factories and the run loop read the config; everything they return takes arrays and
keyword hyperparameters (bound here with `functools.partial`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxdd import augment, data, matching, models, step, synthetic, xla
from jaxdd import groups as groups_lib


def load_data(config: ml_collections.ConfigDict) -> tuple[data.Dataset, data.RareDataset | None]:
    """The configured dataset, with its rare-subpopulation version when `data.rare` is set (or
    its spurious-correlation version when `data.spurious` is: a `RareDataset` as well)."""
    dataset = data.load(
        config.data.name,
        data_dir=config.data.dir or None,
        validation_fraction=config.data.validation_fraction,
        test_fraction=config.data.test_fraction,
        seed=config.seed,
        image_size=config.data.image_size,
    )
    if config.data.spurious:
        spurious = data.make_spurious(
            dataset,
            attribute=config.data.spurious,
            conflict_fraction=config.data.conflict_fraction,
            seed=config.seed,
        )
        return spurious.dataset, spurious
    if not config.data.rare:
        return dataset, None
    rare = data.make_rare(
        dataset, transform=config.data.rare, fraction=config.data.rare_fraction, seed=config.seed
    )
    return rare.dataset, rare


def stem_pad(config: ml_collections.ConfigDict, image_shape) -> int:
    """`model.stem_pad`, with -1 resolved by DC's rule: 2 (a padding-3 first conv) on
    1-channel images (DC `networks.py` `_make_layers`), else 0."""
    if config.model.stem_pad >= 0:
        return config.model.stem_pad
    return 2 if image_shape[-1] == 1 else 0


def create_model(
    config: ml_collections.ConfigDict, num_classes: int, image_shape, name: str | None = None
):
    """The configured network for `(H, W, C)` images (or the architecture `name` with the
    configured norm and initialisation)."""
    name = name or config.model.name
    kwargs: dict[str, Any] = {"init_scheme": config.model.init}
    if name in ("convnet", "mlp"):
        kwargs.update(width=config.model.width, depth=config.model.depth)
    if name == "convnet":
        kwargs["stem_pad"] = stem_pad(config, image_shape)
    if name != "mlp":
        kwargs["norm"] = config.model.norm
    return models.instantiate(name, num_classes=num_classes, **kwargs)


def _frepo_eval_network(config: ml_collections.ConfigDict, num_classes: int, image_shape):
    # FRePo's evaluation network (`yongchao97/FRePo` `script/eval.py` 126-128 defaults,
    # `lib/models/networks.py` 185-227): conv blocks of 128 * 2^i channels without
    # normalisation, average pooling, flax's default (LeCun-normal) initialisation, a padding-3
    # first conv on 1-channel images; jaxdd's ConvNet depth (FRePo's 3 at 28x28 and 32x32).
    return models.ConvNet(
        num_classes=num_classes,
        depth=config.model.depth,
        width=128,
        growth=2,
        norm="none",
        pooling="avg",
        stem_pad=stem_pad(config, image_shape),
        init_scheme="lecun",
    )


# `eval.network` -> (config, num_classes, image_shape) -> the network the evaluation trains;
# '' is the distillation network (`create_model`), as DC/DSA/DM/IDC evaluate.
EVAL_NETWORKS: dict[str, Callable[..., Any]] = {
    "": lambda config, num_classes, image_shape: create_model(config, num_classes, image_shape),
    "frepo": _frepo_eval_network,
}


def create_eval_model(
    config: ml_collections.ConfigDict, num_classes: int, image_shape, name: str | None = None
):
    """The network the evaluation trains: `eval.network` (`EVAL_NETWORKS`), or for a
    cross-architecture evaluation the architecture `name` (`create_model`)."""
    if name is not None:
        return create_model(config, num_classes, image_shape, name)
    return EVAL_NETWORKS[config.eval.network](config, num_classes, image_shape)


def running_ce_accuracy(config: ml_collections.ConfigDict) -> bool:
    """Whether IDM's regulariser is weighted by the pooled network's running accuracy (the
    pool then keeps accuracy meters, `step.NetPool.meter`) rather than per group."""
    return bool(config.match.syn_ce) and config.match.syn_ce_accuracy == "running"


def loops(config: ml_collections.ConfigDict) -> tuple[int, int]:
    """(outer_loop, inner_loop) of an iteration: the configured values, where -1 takes DC's
    `get_loops(ipc)` for the gradient family, (1, 1) for krr and for a pooled distribution or
    risk family (FRePo's online step; IDM's networks train between updates) and (1, 0), a fresh
    network for every update, for the others (see `jaxdd.step`)."""
    outer, inner = config.match.outer_loop, config.match.inner_loop
    if -1 not in (outer, inner):
        return outer, inner
    if config.match.family == "gradient":
        default = step.dc_loops(config.ipc)
    elif config.match.family == "krr" or config.match.net_pool:
        default = (1, 1)  # One update, then one online epoch of the pool's network (FRePo).
    else:
        default = (1, 0)
    return (default[0] if outer == -1 else outer, default[1] if inner == -1 else inner)


def create_groups(
    config: ml_collections.ConfigDict, dataset: data.Dataset, *, key: jax.Array
) -> groups_lib.Groups:
    """Per-class K-means of the train split in the configured feature space; for
    `cluster.assign=voronoi`, whole classes (each update draws its pools from them)."""
    if config.cluster.assign == "voronoi":
        return groups_lib.class_groups(dataset.train.labels, num_classes=dataset.num_classes)
    return groups_lib.cluster_groups(
        dataset.train.images,
        dataset.train.labels,
        features=config.cluster.features,
        model=create_model(config, dataset.num_classes, dataset.image_shape),
        num_classes=dataset.num_classes,
        num_clusters=config.cluster.num_clusters,
        num_iters=config.cluster.num_iters,
        key=key,
    )


def create_real(
    dataset: data.Dataset, groups: groups_lib.Groups, decoder: Any = None
) -> step.RealData:
    """The step's real data: the train split's images and classes, its `groups`, and the set's
    `decoder` parameters (`create_decoder`)."""
    return step.RealData(
        images=jnp.asarray(dataset.train.images),
        groups=groups,
        decoder=decoder,
        labels=jnp.asarray(dataset.train.labels, jnp.int32),
    )


def create_decoder(
    config: ml_collections.ConfigDict, image_shape=None
) -> tuple[step.DecodeFn, Any]:
    """The set's decoder (`syn.param`) and its parameters (`RealData.decoder`): identity for
    pixels, IDC's multi-formation for factorized (no parameters), and for a generator the
    user's module and checkpoint (`synthetic.load_generator`), checked to produce images of
    `image_shape` when given."""
    if config.syn.param == "pixels":
        return step.identity_decode, None
    if config.syn.param == "factorized":
        decode = functools.partial(
            synthetic.decode, param=config.syn.param, factor=config.syn.factor
        )
        return decode, None
    module, params = synthetic.load_generator(
        config.syn.generator, config.syn.generator_checkpoint, config.syn.latent_dim
    )
    decode = synthetic.generator_decoder(module)
    if image_shape is not None:
        latent = jnp.zeros((1, 1, config.syn.latent_dim))
        shape = tuple(jax.eval_shape(decode, latent, jnp.zeros((1, 1)), params)[0].shape[2:])
        if shape != tuple(image_shape):
            raise ValueError(
                f"syn.generator={config.syn.generator!r} makes {shape} images "
                f"from latents of size {config.syn.latent_dim}, but the data's are "
                f"{tuple(image_shape)}; use a generator for this dataset's image size."
            )
    return decode, params


# `syn.optimizer` -> the set's optimiser at a learning rate: DC's SGD with momentum
# (`syn.momentum`), Adam (optax defaults) as RaT-BPTT's outer loop, or LAMB (optax defaults)
# as FRePo's (`yongchao97/FRePo` `lib/datadistillation/frepo.py` 85-86, lr 3e-4 there).
SYN_OPTIMIZERS = {
    "sgd": lambda lr, config: optax.sgd(lr, momentum=config.syn.momentum),
    "adam": lambda lr, config: optax.adam(lr),
    "lamb": lambda lr, config: optax.lamb(lr),
}


def create_syn_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """`syn.optimizer` (DC's SGD with momentum, or Adam) on the images; with learned labels,
    on {'images', 'labels'}, the labels at `syn.label_lr`; a learned generator's parameters
    (in the stored set, {'latents', 'generator'}) at `syn.generator_lr`; a learned log unroll
    lr ('log_unroll_lr') at `syn.unroll_lr_lr` (`step._trained`'s pytree)."""
    sgd = lambda lr: SYN_OPTIMIZERS[config.syn.optimizer](lr, config)
    if not (config.syn.learn_labels or config.syn.learn_generator or config.syn.learn_unroll_lr):
        return sgd(config.syn.lr)

    def stored_labels(stored):
        if isinstance(stored, dict):  # {'latents', 'generator'}: a learned G.
            generator = jax.tree.map(lambda _: "generator", stored["generator"])
            return {"latents": "images", "generator": generator}
        return "images"

    def labels(trained):
        if not (config.syn.learn_labels or config.syn.learn_unroll_lr):  # The stored set alone.
            return stored_labels(trained)
        return {
            name: stored_labels(value) if name == "images" else name
            for name, value in trained.items()
        }  # 'labels' and 'log_unroll_lr' are their own groups.

    rates = {
        "images": config.syn.lr,
        "labels": config.syn.label_lr,
        "generator": config.syn.generator_lr,
        "log_unroll_lr": config.syn.unroll_lr_lr,
    }
    return optax.multi_transform({name: sgd(lr) for name, lr in rates.items()}, labels)


def net_strategy(config: ml_collections.ConfigDict) -> str:
    """The augmentation of the matched network's training batches: `match.net_augment` where
    set, else the matching strategy, without cutout when they train on real data with CutMix
    (IDC, `condense.py` 365-366)."""
    if config.match.net_augment:
        return config.match.net_augment
    if config.match.net_train == "real" and config.match.net_cutmix > 0:
        return augment.without(config.match.augment, "cutout")
    return config.match.augment


# `match.net_optimizer` -> the matched (or pooled) network's optimiser at `match.net_lr`:
# PyTorch's SGD with `match.net_momentum` (DC's optimizer_net), or Adam (optax defaults), as
# FRePo trains its pool (`yongchao97/FRePo` `script/distill.py` 49-50: Adam at lr 3e-4).
NET_OPTIMIZERS = {
    "sgd": lambda config: optax.sgd(
        config.match.net_lr, momentum=config.match.net_momentum or None
    ),
    "adam": lambda config: optax.adam(config.match.net_lr),
}


def create_net_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """The matched network's optimiser, `match.net_optimizer` (`NET_OPTIMIZERS`) at
    `match.net_lr`, after PyTorch-style weight decay `match.net_weight_decay` (DC's
    optimizer_net: plain SGD, momentum 0 and decay 0; IDC's: 0.9 and 5e-4)."""
    optimizer = NET_OPTIMIZERS[config.match.net_optimizer](config)
    if not config.match.net_weight_decay:
        return optimizer
    return optax.chain(optax.add_decayed_weights(config.match.net_weight_decay), optimizer)


def create_losses_fn(config: ml_collections.ConfigDict, apply_fn: matching.ApplyFn):
    """The configured matching family with its hyperparameters bound."""
    kwargs: dict[str, Any] = {
        "apply_fn": apply_fn,
        "augment_fn": matching.siamese_augment(config.match.augment, config.match.augment_mode),
        "group_batch": config.match.group_batch,
    }
    if config.match.family == "gradient":
        kwargs["distance"] = matching.gradient_distance(
            config.match.distance, config.match.distance_layers
        )
    if config.match.family == "risk":
        kwargs.update(
            num_steps=config.match.unroll_steps,
            learning_rate=config.match.unroll_lr,
            remat=config.match.unroll_remat,
            window=config.match.unroll_window,
            optimizer=config.match.unroll_optimizer,
        )
    if config.match.family == "krr":
        kwargs["ridge"] = config.match.krr_ridge
    if config.match.family == "distribution":
        kwargs["ce_weight"] = float(config.match.syn_ce)
    return functools.partial(matching.FAMILIES[config.match.family], **kwargs)


def create_step(
    config: ml_collections.ConfigDict,
    model,
    image_shape,
    mesh: jax.sharding.Mesh | None = None,
    decode_fn: step.DecodeFn | None = None,
    pixel_range: tuple[np.ndarray, np.ndarray] | None = None,
):
    """The jitted `(state, key, real) -> (state, metrics)` step with hyperparameters bound.

    With `mesh`, the groups are split over its devices (`sharding.compute_group_losses`) and
    every output is replicated on it; pass the state and real data replicated on it too
    (`sharding.replicate`). `decode_fn`: the set's decoder (None: `create_decoder`'s; a
    generator's parameters travel in `RealData.decoder`). `pixel_range`: the dataset's
    (`pixel_range(dataset)`), needed with `syn.clip_pixels`.
    """
    if decode_fn is None:
        decode_fn = create_decoder(config)[0]
    if config.syn.clip_pixels and pixel_range is None:
        raise ValueError(
            "config.syn.clip_pixels=True clips the set to valid pixels: pass "
            "pixel_range=build.pixel_range(dataset) to create_step."
        )
    apply_fn = lambda params, x: model.apply({"params": params}, x)
    outer_loop, inner_loop = loops(config)
    train_step = functools.partial(
        step.train_step,
        losses_fn=create_losses_fn(config, apply_fn),
        init_net=lambda key: models.init_params(model, key, image_shape),
        apply_fn=apply_fn,
        syn_optimizer=create_syn_optimizer(config),
        net_optimizer=create_net_optimizer(config),
        net_augment_fn=matching.per_image_augment(net_strategy(config), config.match.augment_mode),
        risk_name=config.robust.risk,
        alpha=float(config.robust.alpha),
        num_real=config.match.num_real,
        outer_loop=outer_loop,
        inner_loop=inner_loop,
        inner_batch=config.match.inner_batch,
        mesh=mesh,
        assign=config.cluster.assign,
        pool_size=config.cluster.pool,
        net_train=config.match.net_train,
        decode_fn=decode_fn,
        pool_max_updates=config.match.net_max_updates,
        max_decoded=config.syn.max_decoded,
        net_data=config.match.net_data,
        net_cutmix=float(config.match.net_cutmix),
        pixel_range=pixel_range if config.syn.clip_pixels else None,
        meter_reset=config.match.syn_ce_reset,
    )
    # `fast_compile`: the step's time goes to library GEMMs and convolutions (see jaxdd.xla).
    if mesh is None:
        return xla.jit(train_step, fast_compile=True)
    return jax.jit(
        train_step,
        out_shardings=jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()),
        compiler_options=xla.compiler_options(mesh.devices.flat[0].platform, fast_compile=True),
    )


def pixel_range(dataset: data.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """(low, high): the [0, 1] pixel range in `dataset`'s normalised space, per channel."""
    return -dataset.mean / dataset.std, (1.0 - dataset.mean) / dataset.std


def create_state(
    config: ml_collections.ConfigDict,
    real: step.RealData,
    *,
    key: jax.Array,
    train_labels: np.ndarray | None = None,
    model=None,
) -> step.State:
    """The initial state; `syn.init` is one of `synthetic.INITS` (a coreset needs
    `train_labels`). With `match.net_pool` > 0, a `step.PooledState` whose pool holds fresh
    networks of `model` (required then); with `syn.learn_unroll_lr`, a `step.LearnedLrState`
    starting at `match.unroll_lr`."""
    syn_key, pool_key = jax.random.split(key)  # As before the network left the state: same sets.
    images, labels = synthetic.initial_set(
        config.syn.init,
        real,
        ipc=config.ipc,
        key=syn_key,
        seed=config.seed,
        train_labels=train_labels,
        factor=config.syn.factor,
    )
    if config.syn.param == "generator":  # The stored set is latents, drawn N(0, 1).
        images = jax.random.normal(syn_key, (*labels.shape[:2], config.syn.latent_dim))
        if config.syn.learn_generator:  # G's parameters are learned with them (GLaD's learn_g).
            images = {"latents": images, "generator": real.decoder}
    if config.syn.learn_labels:
        labels = step.soft_label_logits(labels, num_classes=labels.shape[0])
    pool = None
    if config.match.net_pool:
        if model is None:
            raise ValueError(
                f"config.match.net_pool={config.match.net_pool} keeps networks in the state: "
                "pass the model to build.create_state(..., model=...)."
            )
        image_shape = real.images.shape[1:]
        pool = step.init_pool(
            lambda k: models.init_params(model, k, image_shape),
            create_net_optimizer(config),
            key=pool_key,
            size=config.match.net_pool,
            max_updates=config.match.net_max_updates,
            meter=running_ce_accuracy(config),
        )
    return step.init_state(
        images=images,
        labels=labels,
        syn_optimizer=create_syn_optimizer(config),
        pool=pool,
        unroll_lr=config.match.unroll_lr if config.syn.learn_unroll_lr else None,
    )
