"""The run loop: config -> data -> subgroups -> jitted distillation steps -> files in a workdir.

Only this module and its `create_*` factories read the config; everything they call takes
arrays and keyword hyperparameters. Host-side concerns (files, logging) live here too.

A run writes to its workdir:
  config.json      the resolved config;
  metrics.jsonl    one JSON object per logged step;
  synthetic.npz    `images` (N, H, W, Ch) in the dataset's normalised space, `labels` (N,),
                   `mean`, `std`, `class_names`;
  synthetic.png    the synthetic set as an image grid (one row per class).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from jaxdd import augment, clustering, data, distill, matching, models, risk

_DATA_FORMS = ("digits", "fashion_mnist", "mnist", "tfds:<name>", "npz:<path>")


@dataclasses.dataclass(frozen=True)
class Result:
    """What a finished run returns (its files are in `workdir`)."""

    workdir: pathlib.Path
    images: np.ndarray  # (C*ipc, H, W, Ch) normalised synthetic images.
    labels: np.ndarray  # (C*ipc,)
    metrics: dict[str, float]  # Last logged step metrics.


def _fail(field: str, value: Any, expected: str) -> None:
    raise ValueError(f"config.{field}={value!r} is invalid: expected {expected}.")


def _get(config: ml_collections.ConfigDict, field: str) -> Any:
    for part in field.split("."):
        config = config[part]
    return config


def _check_ints(config: ml_collections.ConfigDict, fields: tuple[str, ...], minimum: int) -> None:
    for field in fields:
        value = _get(config, field)
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            _fail(field, value, f"an integer >= {minimum}")


def _check_choice(config: ml_collections.ConfigDict, field: str, choices) -> None:
    if _get(config, field) not in choices:
        _fail(field, _get(config, field), f"one of {sorted(choices)}")


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Checks every value that can be checked without data; raises ValueError naming the field."""
    _check_ints(config, ("seed",), 0)
    _check_ints(
        config,
        (
            "ipc",
            "num_steps",
            "log.every_steps",
            "model.width",
            "model.depth",
            "cluster.num_clusters",
            "cluster.num_iters",
            "match.num_real",
            "match.group_batch",
            "match.net_reset_every",
            "match.unroll_steps",
            "eval.num_models",
            "eval.epochs",
            "eval.batch_size",
        ),
        1,
    )
    _check_ints(config, ("match.net_train_steps",), 0)
    name = config.data.name
    if not isinstance(name, str) or not (
        name in data.KNOWN_NAMES or name.startswith(("tfds:", "npz:"))
    ):
        _fail("data.name", name, f"one of {_DATA_FORMS}")
    for field in ("data.validation_fraction", "data.test_fraction"):
        if not 0.0 < _get(config, field) < 1.0:
            _fail(field, _get(config, field), "a fraction in (0, 1)")
    _check_choice(config, "model.name", models.MODELS)
    _check_choice(config, "model.norm", models.NORMS)
    _check_choice(config, "cluster.features", CLUSTER_FEATURES)
    _check_choice(config, "match.family", matching.FAMILIES)
    _check_choice(config, "robust.risk", risk.RISKS)
    _check_choice(config, "syn.init", ("real", "noise"))
    for field in ("match.augment", "eval.augment"):
        try:
            augment.parse_strategy(_get(config, field))
        except ValueError as e:
            _fail(field, _get(config, field), str(e))
    alpha = config.robust.alpha
    if isinstance(alpha, bool) or not isinstance(alpha, float | int) or not 0.0 < alpha <= 1.0:
        _fail("robust.alpha", alpha, "a tail mass in (0, 1]")
    for field in ("syn.lr", "match.net_lr", "match.unroll_lr", "eval.lr"):
        if not _get(config, field) > 0:
            _fail(field, _get(config, field), "a positive learning rate")


def validate_against_data(config: ml_collections.ConfigDict, dataset: data.Dataset) -> None:
    """Checks the fields that depend on the data, before any clustering or distillation."""
    counts = np.bincount(dataset.train.labels, minlength=dataset.num_classes)
    smallest = int(np.argmin(counts))
    if config.cluster.num_clusters > counts[smallest]:
        raise ValueError(
            f"config.cluster.num_clusters={config.cluster.num_clusters} exceeds the smallest "
            f"class of the train split (class {smallest} has {counts[smallest]} examples); "
            "lower it."
        )
    if config.syn.init == "real" and config.ipc > counts[smallest]:
        raise ValueError(
            f"config.ipc={config.ipc} exceeds the smallest class of the train split "
            f"({counts[smallest]} examples) with syn.init='real'; lower ipc or use syn.init=noise."
        )


def load_data(config: ml_collections.ConfigDict) -> data.Dataset:
    return data.load(
        config.data.name,
        data_dir=config.data.dir or None,
        validation_fraction=config.data.validation_fraction,
        test_fraction=config.data.test_fraction,
        seed=config.seed,
    )


def create_model(config: ml_collections.ConfigDict, num_classes: int):
    kwargs: dict[str, Any] = {"width": config.model.width}
    if config.model.name in ("convnet", "mlp"):
        kwargs["depth"] = config.model.depth
    if config.model.name != "mlp":
        kwargs["norm"] = config.model.norm
    return models.create_model(config.model.name, num_classes=num_classes, **kwargs)


def _pixel_features(images: np.ndarray, *, key: jax.Array, model_factory) -> jax.Array:
    del key, model_factory
    return clustering.features_pixels(images)


def _random_net_features(images: np.ndarray, *, key: jax.Array, model_factory) -> jax.Array:
    """Penultimate embedding of a randomly initialised network, L2-normalised per sample."""
    model = model_factory()
    params = models.init_params(model, key, images.shape[1:])
    embed = jax.jit(lambda p, x: model.apply({"params": p}, x)[1])
    chunks = [embed(params, images[i : i + 1024]) for i in range(0, len(images), 1024)]
    features = jnp.concatenate(chunks)
    return features / jnp.maximum(jnp.linalg.norm(features, axis=1, keepdims=True), 1e-12)


# `cluster.features` -> (train images, key, model factory) -> (N, D) K-means features.
CLUSTER_FEATURES = {"pixels": _pixel_features, "random_net": _random_net_features}


def create_groups(
    config: ml_collections.ConfigDict, dataset: data.Dataset, *, key: jax.Array
) -> clustering.Groups:
    """Per-class K-means of the train split in the configured feature space."""
    feature_key, kmeans_key = jax.random.split(key)
    features = CLUSTER_FEATURES[config.cluster.features](
        dataset.train.images,
        key=feature_key,
        model_factory=lambda: create_model(config, dataset.num_classes),
    )
    assignments = clustering.cluster_per_class(
        features,
        dataset.train.labels,
        num_classes=dataset.num_classes,
        num_clusters=config.cluster.num_clusters,
        key=kmeans_key,
        num_iters=config.cluster.num_iters,
    )
    return clustering.make_groups(
        dataset.train.labels,
        np.asarray(assignments),
        num_classes=dataset.num_classes,
        num_clusters=config.cluster.num_clusters,
    )


def create_syn_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    return optax.sgd(config.syn.lr, momentum=config.syn.momentum)


def create_net_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    return optax.sgd(config.match.net_lr)


def create_losses_fn(config: ml_collections.ConfigDict, apply_fn: matching.ApplyFn):
    """The configured matching family with its hyperparameters bound."""
    kwargs: dict[str, Any] = {
        "apply_fn": apply_fn,
        "augment_fn": matching.siamese_augment(config.match.augment),
        "group_batch": config.match.group_batch,
    }
    if config.match.family == "risk":
        kwargs.update(num_steps=config.match.unroll_steps, learning_rate=config.match.unroll_lr)
    return functools.partial(matching.FAMILIES[config.match.family], **kwargs)


def create_step(config: ml_collections.ConfigDict, model, image_shape):
    """The jitted `(state, key, real) -> (state, metrics)` step with hyperparameters bound."""
    apply_fn = lambda params, x: model.apply({"params": params}, x)
    step = functools.partial(
        distill.train_step,
        losses_fn=create_losses_fn(config, apply_fn),
        init_net=lambda key: models.init_params(model, key, image_shape),
        apply_fn=apply_fn,
        syn_optimizer=create_syn_optimizer(config),
        net_optimizer=create_net_optimizer(config),
        augment_fn=matching.siamese_augment(config.match.augment),
        risk_name=config.robust.risk,
        alpha=float(config.robust.alpha),
        num_real=config.match.num_real,
        net_reset_every=config.match.net_reset_every,
        net_train_steps=config.match.net_train_steps,
    )
    return jax.jit(step)


def create_state(
    config: ml_collections.ConfigDict, model, real: distill.RealData, *, key: jax.Array
) -> distill.State:
    syn_key, net_key = jax.random.split(key)
    images, labels = distill.init_synthetic(
        real, ipc=config.ipc, key=syn_key, method=config.syn.init
    )
    return distill.create_state(
        images=images,
        labels=labels,
        net_params=models.init_params(model, net_key, real.images.shape[1:]),
        syn_optimizer=create_syn_optimizer(config),
        net_optimizer=create_net_optimizer(config),
    )


def summarize(dataset: data.Dataset, groups: clustering.Groups) -> str:
    """Sizes per split and per-class cluster sizes, for the log and the terminal."""
    sizes = np.asarray(groups.sizes)
    lines = [
        f"dataset {dataset.name}: {dataset.num_classes} classes, images {dataset.image_shape}",
        f"  train {len(dataset.train)}, validation {len(dataset.validation)}, "
        f"test {len(dataset.test)}",
        f"  subgroups: {sizes.shape[0]} classes x {sizes.shape[1]} clusters; sizes per class:",
    ]
    for c, row in enumerate(sizes):
        lines.append(f"    {dataset.class_names[c]:>12}: {' '.join(f'{s:5d}' for s in row)}")
    return "\n".join(lines)


def save_image_grid(path: pathlib.Path, images: np.ndarray, num_classes: int) -> None:
    """Synthetic images in [0, 1] pixel space as a PNG grid, one row per class."""
    from PIL import Image  # Only the run loop writes images.

    images = np.clip(images, 0.0, 1.0)
    n, h, w, ch = images.shape
    per_row = n // num_classes
    grid = images.reshape(num_classes, per_row, h, w, ch).transpose(0, 2, 1, 3, 4)
    grid = grid.reshape(num_classes * h, per_row * w, ch)
    grid = (grid * 255).round().astype(np.uint8)
    scale = max(1, 256 // max(h, w) // 4)  # Upscale tiny (8x8) images so the PNG is legible.
    grid = np.kron(grid, np.ones((scale, scale, 1), np.uint8))
    Image.fromarray(grid[..., 0] if ch == 1 else grid).save(path)


def save_synthetic(path: pathlib.Path, images, labels, dataset: data.Dataset) -> None:
    np.savez(
        path,
        images=np.asarray(images, np.float32),
        labels=np.asarray(labels, np.int32),
        mean=dataset.mean,
        std=dataset.std,
        class_names=np.asarray(dataset.class_names),
    )


def _scalars(metrics: dict[str, jax.Array]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if np.ndim(v) == 0}


def distill_run(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> Result:
    """Runs distillation as configured and writes its files to `workdir`."""
    validate_config(config)
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2) + "\n")

    dataset = load_data(config)
    validate_against_data(config, dataset)
    root = jax.random.key(config.seed)
    cluster_key, init_key, step_root = jax.random.split(root, 3)
    groups = create_groups(config, dataset, key=cluster_key)
    logging.info("%s", summarize(dataset, groups))

    model = create_model(config, dataset.num_classes)
    real = distill.RealData(images=jnp.asarray(dataset.train.images), groups=groups)
    state = create_state(config, model, real, key=init_key)
    step_fn = create_step(config, model, dataset.image_shape)

    last: dict[str, float] = {}
    start = time.time()
    with open(workdir / "metrics.jsonl", "a") as log_file:
        for step in range(int(state.step), config.num_steps):
            state, metrics = step_fn(state, jax.random.fold_in(step_root, step), real)
            if (step + 1) % config.log.every_steps == 0 or step + 1 == config.num_steps:
                last = {"step": step + 1, **_scalars(metrics), "elapsed_s": time.time() - start}
                if not np.isfinite(last["loss"]):
                    raise FloatingPointError(
                        f"non-finite distillation loss at step {step + 1}; lower syn.lr."
                    )
                log_file.write(json.dumps(last) + "\n")
                log_file.flush()
                logging.info("step %d: %s", step + 1, last)

    images, labels = distill.synthetic_arrays(state)
    save_synthetic(workdir / "synthetic.npz", images, labels, dataset)
    save_image_grid(workdir / "synthetic.png", dataset.denormalize(images), dataset.num_classes)
    return Result(workdir=workdir, images=images, labels=labels, metrics=last)
