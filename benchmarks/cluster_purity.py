"""Does per-class K-means isolate the rare subpopulation? Purity and recall of its cluster.

Run from the repository root:

  python -m benchmarks.cluster_purity --dataset=digits --rare=invert --ks=4,8,16
  python -m benchmarks.cluster_purity --dataset=fashion_mnist+color --ks=4 --features=pixels

`--dataset` is a shipped config's name with `--rare` the transform of its minority, or a
benchmark name as `robust_gain` takes it ('digits+rare', 'digits+rare-blur', 'digits+color':
`harness.BENCHMARK_SUFFIXES`); on the spurious-colour benchmark the minority is the
bias-conflicting images (a class's images wearing another class's colour).

For every class, the cluster holding most of the class's minority (transformed) train images:
purity = minority share of that cluster, recall = share of the class's minority inside it.
Prints the mean and the minimum over classes for each K and feature space (`cluster.features`),
clustering exactly as a run does (`jaxdd.build.create_groups`).

`--trained-epochs=E1,E2` adds what a network trained on the real training split (the
evaluation protocol's SGD, no augmentation, one network per E) sees of the minority:
per-class K-means of its L2-normalised penultimate embedding (GEORGE: Sohoni et al., NeurIPS
2020, cluster within class in an ERM model's feature space) and the share of minority images
among its highest-loss training images, as many as the minority holds, and among those it
misclassifies (JTT: Liu et al., ICML 2021, the error set of an ERM model). Both ways of finding
a subgroup without its labels work only if the trained network treats the subgroup differently.
"""

from __future__ import annotations

import argparse

import jax
import ml_collections
import numpy as np

from benchmarks import harness
from jaxdd import build, clustering, groups, retrain


def minority_cluster(
    assignments: np.ndarray, labels: np.ndarray, minority: np.ndarray, num_clusters: int
) -> tuple[np.ndarray, np.ndarray]:
    """(C,) purity and recall of each class's cluster holding most of its minority."""
    purity, recall = [], []
    for c in np.unique(labels):
        in_class = labels == c
        cells = [in_class & (assignments == k) for k in range(num_clusters)]
        counts = [(int(minority[cell].sum()), int(cell.sum())) for cell in cells]
        hits, size = max(counts)
        purity.append(hits / max(size, 1))
        recall.append(hits / minority[in_class].sum())
    return np.array(purity), np.array(recall)


def purity_recall(config: ml_collections.ConfigDict) -> tuple[np.ndarray, np.ndarray]:
    """(C,) purity and recall of each class's minority cluster under `config`'s clustering."""
    dataset, rare = build.load_data(config)
    table = build.create_groups(config, dataset, key=jax.random.key(config.seed))
    members, sizes = np.asarray(table.members), np.asarray(table.sizes)
    assignments = np.full(len(dataset.train.labels), -1)
    for c, k in np.ndindex(sizes.shape):
        assignments[members[c, k, : sizes[c, k]]] = k
    return minority_cluster(
        assignments, dataset.train.labels, rare.train_minority, config.cluster.num_clusters
    )


def trained_view(
    config: ml_collections.ConfigDict, dataset, rare, epochs: int, ks: list[int]
) -> list[str]:
    """Lines describing how a network trained `epochs` on the real train split sees the minority."""
    images, labels, minority = dataset.train.images, dataset.train.labels, rare.train_minority
    model = build.create_model(config, dataset.num_classes, dataset.image_shape)
    stacked = retrain.train_models(
        model, images, labels, keys=jax.random.split(jax.random.key(config.seed), 1), epochs=epochs
    )
    logits, embedding = groups.network_outputs(model, jax.tree.map(lambda a: a[0], stacked), images)
    logits, embedding = np.asarray(logits), np.asarray(embedding)
    loss = -np.asarray(jax.nn.log_softmax(logits))[np.arange(len(labels)), labels]
    top = np.argsort(-loss, kind="stable")[: int(minority.sum())]
    wrong = logits.argmax(axis=1) != labels
    lines = [
        f"trained {epochs} epochs: train accuracy {1 - wrong.mean():.3f}, mean loss minority "
        f"{loss[minority].mean():.3f} / majority {loss[~minority].mean():.3f}; minority share "
        f"{minority.mean():.3f} overall, {minority[top].mean():.2f} of the highest-loss "
        f"{len(top)}, {minority[wrong].mean() if wrong.any() else float('nan'):.2f} of the "
        f"{int(wrong.sum())} misclassified"
    ]
    features = embedding / np.maximum(np.linalg.norm(embedding, axis=1, keepdims=True), 1e-12)
    for k in ks:
        assignments = clustering.cluster_per_class(
            features, labels, num_classes=dataset.num_classes, num_clusters=k,
            key=jax.random.key(config.seed), num_iters=config.cluster.num_iters,
        )  # fmt: skip
        purity, recall = minority_cluster(np.asarray(assignments), labels, minority, k)
        lines.append(f"K={k:2d} {'trained_' + str(epochs):10s} " + _summary(purity, recall))
    return lines


def _summary(purity: np.ndarray, recall: np.ndarray) -> str:
    return (
        f"minority cluster: purity {purity.mean():.2f} (min {purity.min():.2f}), recall "
        f"{recall.mean():.2f} (min {recall.min():.2f})"
    )


def data_override(dataset: str, rare: str | None) -> tuple[str, str]:
    """(config name, the override that makes its minority) of `--dataset` and `--rare`."""
    name, _, suffix = dataset.partition("+")
    if not suffix:
        return name, f"data.rare={rare or 'invert'}"
    if rare is not None:
        raise ValueError(
            f"--dataset={dataset} names its benchmark, so --rare={rare} has nothing to set: "
            f"drop --rare, or pass --dataset={name} --rare={rare}."
        )
    return name, harness.benchmark_override(suffix)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits")
    parser.add_argument(
        "--rare", default=None, help="a plain --dataset's minority transform (default invert)"
    )
    parser.add_argument("--ks", default="4,8,16")
    parser.add_argument("--features", default="pixels,random_net")
    parser.add_argument("--trained-epochs", default="", help="e.g. 5,30; empty: none")
    args = parser.parse_args()
    ks = [int(k) for k in args.ks.split(",")]
    try:
        name, minority = data_override(args.dataset, args.rare)
    except ValueError as error:
        parser.error(str(error))
    for k in ks:
        for features in args.features.split(","):
            config = harness.load_config(
                name,
                minority,
                f"cluster.num_clusters={k}",
                f"cluster.features={features}",
            )
            print(f"K={k:2d} {features:10s} " + _summary(*purity_recall(config)), flush=True)
    trained_epochs = [int(e) for e in args.trained_epochs.split(",") if e]
    if trained_epochs:
        config = harness.load_config(name, minority)
        dataset, rare = build.load_data(config)  # Once for every trained network.
        for epochs in trained_epochs:
            for line in trained_view(config, dataset, rare, epochs, ks):
                print(line, flush=True)


if __name__ == "__main__":
    main()
