"""Does per-class K-means isolate the rare subpopulation? Purity and recall of its cluster.

Run from the repository root:

  python -m benchmarks.cluster_purity --dataset=digits --rare=invert --ks=4,8,16

For every class, the cluster holding most of the class's minority (transformed) train images:
purity = minority share of that cluster, recall = share of the class's minority inside it.
Prints the mean and the minimum over classes for each K and feature space (`cluster.features`),
clustering exactly as a run does (`jaxdd.build.create_groups`).
"""

from __future__ import annotations

import argparse

import jax
import ml_collections
import numpy as np

from benchmarks import harness
from jaxdd import build


def purity_recall(config: ml_collections.ConfigDict) -> tuple[np.ndarray, np.ndarray]:
    """(C,) purity and recall of each class's minority cluster under `config`'s clustering."""
    dataset, rare = build.load_data(config)
    groups = build.create_groups(config, dataset, key=jax.random.key(config.seed))
    members, sizes = np.asarray(groups.members), np.asarray(groups.sizes)
    minority = rare.train_minority
    purity, recall = [], []
    for c in range(dataset.num_classes):
        counts = [
            (int(minority[members[c, k, : sizes[c, k]]].sum()), int(sizes[c, k]))
            for k in range(members.shape[1])
        ]
        hits, size = max(counts)
        purity.append(hits / size)
        recall.append(hits / minority[dataset.train.labels == c].sum())
    return np.array(purity), np.array(recall)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--rare", default="invert")
    parser.add_argument("--ks", default="4,8,16")
    parser.add_argument("--features", default="pixels,random_net")
    args = parser.parse_args()
    for k in map(int, args.ks.split(",")):
        for features in args.features.split(","):
            config = harness.load_config(
                args.dataset,
                f"data.rare={args.rare}",
                f"cluster.num_clusters={k}",
                f"cluster.features={features}",
            )
            purity, recall = purity_recall(config)
            print(
                f"K={k:2d} {features:10s} minority cluster: purity {purity.mean():.2f} "
                f"(min {purity.min():.2f}), recall {recall.mean():.2f} (min {recall.min():.2f})",
                flush=True,
            )


if __name__ == "__main__":
    main()
