"""Judging a set: validation accuracy for selection, and the test report of eval.json.

SPEC's protocol under a config: networks trained from scratch on a set (`train_networks`,
`jaxdd.retrain`), validation accuracy to select the reported set (never the test split), and
on the test split accuracy, subgroup, shift and cross-architecture metrics (`test_report`).
`evaluate_set` is the one "evaluate a set under a config" used by a run's end, `evaluate` and
the benchmarks; `evaluate` is the public entry point (`jaxdd.evaluate`).
"""

from __future__ import annotations

import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.typing import ArrayLike

from jaxdd import artifacts, baselines, build, data, retrain, robustness
from jaxdd import config as config_lib

_CROSS_ARCHITECTURE_KEYS = (
    "accuracy_mean",
    "accuracy_std",
    "worst_group_accuracy",
    "worst_class_accuracy",
)
_SELECT_SEED_OFFSET = 500  # Selection networks' seeds differ from the test report's.


def eval_seeds(config: ml_collections.ConfigDict, num_models: int, *, offset: int = 0) -> list[int]:
    """Integer seeds of evaluation networks, derived from the run seed (reported in eval.json)."""
    return [config.seed * 1000 + offset + i for i in range(num_models)]


def select_seeds(config: ml_collections.ConfigDict) -> list[int]:
    """Seeds of the networks that score a set on validation for selection."""
    return eval_seeds(config, config.eval.select_num_models, offset=_SELECT_SEED_OFFSET)


def train_networks(
    config: ml_collections.ConfigDict,
    images: ArrayLike,
    labels: ArrayLike,
    *,
    num_classes: int,
    seeds: list[int],
    architecture: str | None = None,
):
    """Networks trained from scratch on (images, labels) with the eval protocol; (model, params)."""
    model = build.create_eval_model(config, num_classes, np.shape(images)[1:], architecture)
    epochs = config.eval.epochs
    if config.eval.same_compute and config.syn.param == "factorized":
        epochs = max(1, epochs // config.syn.factor**2)  # IDC's same_compute.
    params = retrain.train_models(
        model,
        images,
        labels,
        keys=jax.vmap(jax.random.key)(jnp.asarray(seeds)),
        epochs=epochs,
        batch_size=config.eval.batch_size,
        learning_rate=config.eval.lr,
        momentum=config.eval.momentum,
        weight_decay=config.eval.weight_decay,
        augment=config.eval.augment,
        augment_mode=config.eval.augment_mode,
        lr_schedule=config.eval.lr_schedule,
        cutmix_probability=config.eval.cutmix,
        cutmix_beta=config.eval.cutmix_beta,
        optimizer=config.eval.optimizer,
        loss=config.eval.loss,
    )
    return model, params


def validation_accuracy(
    config: ml_collections.ConfigDict, dataset: data.Dataset, images, labels, *, seeds: list[int]
) -> float:
    """Mean validation accuracy (%) of networks trained on the set: the selection criterion."""
    model, params = train_networks(
        config, images, labels, num_classes=dataset.num_classes, seeds=seeds
    )
    predictions = retrain.predict(model, params, dataset.validation.images)
    return float(np.mean(retrain.accuracy(predictions, dataset.validation.labels)) * 100)


def test_groups(
    config: ml_collections.ConfigDict, dataset: data.Dataset, rare: data.RareDataset | None
) -> dict[str, np.ndarray]:
    """The test-set partitions the report measures: fixed, cached K-means groups (independent of
    the run seed), plus the (class, minority) groups of the rare benchmark."""
    cache_dir = config.eval.cache_dir or pathlib.Path.home() / ".cache" / "jaxdd" / "partitions"
    partitions = robustness.cached_partitions(
        cache_dir,
        dataset.name,
        dataset.test.images,
        dataset.test.labels,
        num_classes=dataset.num_classes,
        key=jax.random.key(0),
        global_k=config.eval.global_k,
        per_class_k=config.eval.per_class_k,
    )
    if rare is not None:
        partitions["rare"] = rare.group_of("test")
    return dict(partitions)


def test_report(
    config: ml_collections.ConfigDict,
    dataset: data.Dataset,
    images,
    labels,
    *,
    partitions: dict[str, np.ndarray],
    seeds: list[int],
    validation_groups: np.ndarray | None = None,
) -> dict[str, Any]:
    """SPEC's protocol on the test split: accuracy, subgroup, shift and cross-architecture;
    plus `validation`, the same networks' accuracy on the validation split (and, given the
    rare benchmark's `validation_groups`, its `rare_means` there): what defaults and settings
    are chosen on, never the test figures."""
    shifts = {
        name: (None if name == "invert" else float(strength))
        for name, strength in config.eval.shifts.items()
    }

    last_networks = []

    def report_for(architecture: str | None) -> dict[str, Any]:
        model, params = train_networks(
            config,
            images,
            labels,
            num_classes=dataset.num_classes,
            seeds=seeds,
            architecture=architecture,
        )
        last_networks[:] = [model, params]
        return robustness.robustness_report(
            model,
            params,
            dataset.test.images,
            dataset.test.labels,
            mean=dataset.mean,
            std=dataset.std,
            partitions=partitions,
            shifts=shifts,
            key=jax.random.key(config.seed),
            num_classes=dataset.num_classes,
        )

    report = report_for(None)
    report.update(seeds=seeds, architecture=config.model.name)
    model, params = last_networks
    report["validation"] = validation_report(
        retrain.predict(model, params, dataset.validation.images),
        dataset.validation.labels,
        validation_groups,
        num_classes=dataset.num_classes,
    )
    cross = {}
    for name in filter(None, (n.strip() for n in config.eval.architectures.split(","))):
        other = report_for(name)
        cross[name] = {k: other[k] for k in _CROSS_ARCHITECTURE_KEYS if k in other}
    if cross:
        report["cross_architecture"] = cross
    return report


def validation_report(
    predictions: ArrayLike, labels: np.ndarray, groups: np.ndarray | None, *, num_classes: int
) -> dict[str, float]:
    """Validation `accuracy_mean` (%) of the networks' `(M, N)` predictions, and with the rare
    benchmark's `(N,)` groups (`2 * class + minority`) its `rare_means`."""
    correct = np.asarray(predictions) == np.asarray(labels)[None]
    report = {"accuracy_mean": float(correct.mean() * 100)}
    if groups is not None:
        per_group = [
            float(correct[:, groups == g].mean() * 100) if np.any(groups == g) else None
            for g in range(2 * num_classes)
        ]
        report.update(rare_means(per_group))
    return report


def evaluate_set(
    config: ml_collections.ConfigDict,
    dataset: data.Dataset,
    rare: data.RareDataset | None,
    images: ArrayLike,
    labels: ArrayLike,
) -> dict[str, Any]:
    """`test_report` of a set with the config's test groups and evaluation seeds; on the
    rare-subpopulation benchmark also `rare_means` of it."""
    report = test_report(
        config,
        dataset,
        images,
        np.asarray(labels),
        partitions=test_groups(config, dataset, rare),
        seeds=eval_seeds(config, config.eval.num_models),
        validation_groups=None if rare is None else rare.group_of("validation"),
    )
    if rare is not None:
        report.update(rare_means(report["group_accuracy_rare"]))
    return report


def rare_means(group_accuracy_rare: list[float | None]) -> dict[str, float]:
    """`majority_accuracy` / `minority_accuracy`: the rare benchmark's majority and minority
    groups' test accuracy (%), each a mean over classes (group 2c + 1 is class c's minority;
    an empty group is skipped). The worst minority group, a min over classes, stays at 0
    while these move, so it hides the effect of the objective."""
    groups = np.asarray([np.nan if a is None else a for a in group_accuracy_rare], float)
    return {
        "majority_accuracy": float(np.nanmean(groups[0::2])),
        "minority_accuracy": float(np.nanmean(groups[1::2])),
    }


def evaluate(
    config: ml_collections.ConfigDict,
    images: ArrayLike | None = None,
    labels: ArrayLike | None = None,
    *,
    path: str | pathlib.Path | None = None,
) -> dict[str, Any]:
    """SPEC's test protocol (eval.json's report) for a synthetic set under `config`'s data/eval.

    Pass `images`/`labels` (normalised, as in synthetic.npz) or `path` to a saved set (a
    synthetic.npz or a run's workdir).
    """
    config_lib.validate(config)
    if path is not None:
        synthetic = artifacts.load_synthetic(path)
        images, labels = synthetic.images, synthetic.labels
    if images is None or labels is None:
        raise ValueError("pass images and labels, or path= to a synthetic.npz.")
    dataset, rare = build.load_data(config)
    images = np.asarray(images, np.float32)
    if images.shape[1:] != dataset.image_shape:
        raise ValueError(
            f"images of shape {images.shape[1:]} do not match {dataset.name}'s "
            f"{dataset.image_shape}; evaluate with the config the set was distilled with."
        )
    return evaluate_set(config, dataset, rare, images, labels)


# What `compare_with_random` reports the gain on.
_GAIN_KEYS = (
    "accuracy_mean",
    "worst_group_accuracy",
    "worst_class_accuracy",
    "majority_accuracy",
    "minority_accuracy",
)


def random_real_like(labels: ArrayLike, dataset: data.Dataset, *, seed: int) -> np.ndarray:
    """Train indices of a random real subset with `labels`' count per class (class-ordered;
    soft labels count by their most likely class): `baselines.random_subset` when every class
    has the same count, as for a distilled set."""
    labels = np.asarray(labels)
    hard = labels.argmax(axis=1) if labels.ndim == 2 else labels  # Soft: the likeliest class.
    counts = np.bincount(hard, minlength=dataset.num_classes)
    if np.all(counts == counts[0]) and counts[0] > 0:
        return baselines.random_subset(dataset.train.labels, ipc=int(counts[0]), seed=seed)
    rng = np.random.default_rng(seed)
    chosen = []
    for c, count in enumerate(counts.tolist()):
        members = np.flatnonzero(dataset.train.labels == c)
        if count > len(members):
            raise ValueError(
                f"the set has {count} images of class {dataset.class_names[c]!r} but the train "
                f"split only {len(members)}, so no random real subset of its size exists."
            )
        chosen.append(rng.choice(members, size=count, replace=False))
    return np.concatenate(chosen)


def compare_with_random(
    config: ml_collections.ConfigDict,
    dataset: data.Dataset,
    rare: data.RareDataset | None,
    images: ArrayLike,
    labels: ArrayLike,
) -> dict[str, Any]:
    """The set's test report beside that of a random real subset of the same size per class
    (seeded by `config.seed`, scored by the same protocol and networks' seeds), and the gain."""
    indices = random_real_like(labels, dataset, seed=config.seed)
    ours = evaluate_set(config, dataset, rare, images, labels)
    random_real = evaluate_set(
        config, dataset, rare, dataset.train.images[indices], dataset.train.labels[indices]
    )
    random_real["train_indices"] = indices.tolist()
    gain = {k: ours[k] - random_real[k] for k in _GAIN_KEYS if k in ours and k in random_real}
    return {"set": ours, "random_real": random_real, "gain": gain}
