"""Which groups does a finished set match badly? Per-group losses of saved synthetic sets.

robust − ERM is the effect of CVaR's weights on the groups in its tail; where robust does not
beat ERM, the question is whether ERM's finished set left the minority's groups matched worse
than the majority's at all (if not, CVaR has nothing to up-weight), and whether the robust set
matched them better (if it did and the minority's accuracy did not follow, the matching loss is
not what limits it). This benchmark measures that on sets already distilled: every set is
scored under one grouping and one objective (the config of `--dataset`, `--seed` and `--set`,
e.g. the K-means groups the robust run used), each group's loss averaged over `--networks`
freshly initialised networks, each with its own draw of m real samples per group and of the
augmentation (DM's view: a fresh network every iteration). Per set:

- `minority loss` / `majority loss`: the mean over the groups whose members are mostly the
  benchmark's minority, and over the others (NaN where K-means made no such group);
- `ratio`: minority over majority;
- `tail on minority`: the share of CVaR(alpha)'s tail (the ceil(alpha * C * K) largest mean
  losses) that is minority groups;
- `images near minority`: the share of the set's images whose nearest group centroid (the mean
  of the group's real images, in pixels, where the shipped K-means groups are made) is a
  minority group: whether the set holds images of the minority at all, or only moved its
  class's mean towards it;
- and, from the set's own `eval.json` where its workdir has one, its test minority and
  majority accuracy.

Run from the repository root:

  python -m benchmarks.set_losses --dataset=fashion_mnist+rare --seed=1 \
      --set=match.family=distribution --workdirs=runs/robust_gain/A,runs/robust_gain/B

writes benchmarks/results/set_losses.md and .json (every set's figures, the command, the
machine).
"""

from __future__ import annotations

import argparse
import json
import pathlib

import jax
import numpy as np

from benchmarks import harness
from benchmarks.tail_noise import group_losses_fn, minority_groups, tail_mask
from jaxdd import artifacts, models
from jaxdd import config as config_lib


def set_images(path: pathlib.Path, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """A saved set's images and labels as the state holds them, (C, ipc, H, W, Ch) and (C, ipc)
    (or (C, ipc, C) for learned labels), checked against the config's `shape`."""
    saved = artifacts.load_synthetic(path)
    classes = saved.labels if saved.labels.ndim == 1 else saved.labels.argmax(-1)
    order = np.argsort(classes, kind="stable")
    images = saved.images[order]
    per_class = np.bincount(classes, minlength=shape[0])
    if images.shape[1:] != shape[2:] or len(per_class) != shape[0] or (per_class != shape[1]).any():
        raise ValueError(
            f"{path}: {per_class.tolist()} images per class of {saved.images.shape[1:]} do not "
            f"form the (classes, ipc, H, W, Ch) = {shape} set of this config; pass the "
            "--dataset, --ipc and --set the set was distilled with (a factorized set's decoded "
            "images are not comparable)."
        )
    labels = saved.labels[order]
    return images.reshape(shape), labels.reshape(*shape[:2], *labels.shape[1:])


def group_centroids(train_images: np.ndarray, groups) -> np.ndarray:
    """(C, K, D): the mean pixels of every group's members."""
    members, sizes = np.asarray(groups.members), np.asarray(groups.sizes)
    flat = train_images.reshape(len(train_images), -1)
    return np.stack(
        [
            np.stack([flat[row[:size]].mean(axis=0) for row, size in zip(m, n, strict=True)])
            for m, n in zip(members, sizes, strict=True)
        ]
    )


def near_minority(images: np.ndarray, centroids: np.ndarray, minority: np.ndarray) -> np.ndarray:
    """(C, ipc) bool: whether each image's nearest centroid of its class's groups is one of the
    minority's (`minority` (C, K) bool)."""
    flat = images.reshape(*images.shape[:2], -1)
    distances = np.square(flat[:, :, None] - centroids[:, None]).sum(-1)  # (C, ipc, K)
    nearest = distances.argmin(-1)
    return np.take_along_axis(minority, nearest, axis=1)


def _masked_mean(values: np.ndarray, mask: np.ndarray) -> float:
    """The mean of `values` where `mask`; NaN where no group is in it (K-means made no group
    that is mostly minority, e.g. on `+rare-blur`)."""
    return float(values[mask].mean()) if mask.any() else float("nan")


def measure(config, workdirs: list[pathlib.Path], *, networks: int, num_real: int) -> list[dict]:
    """The module docstring's figures for each set in `workdirs`, under `config`."""
    run = harness.initial_run(config)
    if run.rare is None:
        raise ValueError(
            f"{config.data.name} has no minority: measure on a benchmark (`<config>+rare`, "
            "`+rare-<transform>` or `+color`)."
        )
    losses = group_losses_fn(config, run.model)
    minority = minority_groups(run.rare, run.groups)
    centroids = group_centroids(np.asarray(run.dataset.train.images), run.groups)
    alpha = float(config.robust.alpha)
    net_keys = [jax.random.fold_in(jax.random.key(config.seed + 2), i) for i in range(networks)]
    results = []
    for workdir in workdirs:
        images, labels = set_images(workdir, tuple(run.state.images.shape))
        per_network = [
            np.asarray(
                losses(
                    models.init_params(run.model, key, run.dataset.image_shape),
                    images, labels, run.real.images, run.groups,
                    jax.random.fold_in(key, 1), num_real=num_real,
                )
            ).reshape(-1)
            for key in net_keys
        ]  # fmt: skip
        mean = np.mean(per_network, axis=0)
        tail = tail_mask(mean, alpha)
        result = {
            "set": str(workdir),
            "minority_loss": _masked_mean(mean, minority),
            "majority_loss": _masked_mean(mean, ~minority),
            "tail_minority_share": float(tail[minority].sum() / tail.sum()),
            "minority_groups": int(minority.sum()),
            "groups": int(mean.size),
            "images_near_minority": float(
                near_minority(images, centroids, minority.reshape(centroids.shape[:2])).mean()
            ),
            "losses": mean.tolist(),
        }
        result["ratio"] = result["minority_loss"] / result["majority_loss"]
        evaluation = pathlib.Path(workdir) / "eval.json"
        if evaluation.is_file():
            scores = json.loads(evaluation.read_text())
            for field in ("minority_accuracy", "majority_accuracy", "accuracy_mean"):
                if field in scores:
                    result[field] = scores[field]  # Percent.
        result["run"] = _run_settings(pathlib.Path(workdir))
        results.append(result)
    return results


def _run_settings(workdir: pathlib.Path) -> dict:
    """What the set was distilled with (its workdir's config.json; {} without one): its risk,
    K, real samples per group, initialisation and iterations."""
    path = workdir / "config.json"
    if not path.is_file():
        return {}
    run = json.loads(path.read_text())
    return {
        "risk": run["robust"]["risk"],
        "K": run["cluster"]["num_clusters"],
        "m": run["match"]["num_real"],
        "init": run["syn"]["init"],
        "iterations": run["num_iterations"],
    }


def _label(result: dict) -> str:
    """A set's row label: its workdir's name and what it was distilled with."""
    settings = ", ".join(f"{k} {v}" for k, v in result.get("run", {}).items())
    return f"`{pathlib.Path(result['set']).name}`" + (f" ({settings})" if settings else "")


def summarise(records: list[dict]) -> str:
    lines = [
        "# Per-group matching losses of finished sets",
        "",
        "Commands (each row records the one that produced it):",
        *[f"- `{c}`" for c in sorted({r["command"] for r in records})],
        "",
        f"{harness.machines_line(records)}.  ",
        "Each set scored under the grouping and objective of its block's config, each group's "
        "loss the mean over fresh networks; see the module docstring of "
        "benchmarks/set_losses.py for each column. Accuracies (%) from the set's own eval.json.",
        "",
        *harness.findings_link(harness.RESULTS / "set_losses"),
    ]
    blocks = {}
    for r in records:
        blocks.setdefault((r["dataset"], r["seed"], json.dumps(r["settings"])), []).append(r)
    for (dataset, seed, settings), rows in sorted(blocks.items()):
        first = rows[0]["result"]
        lines += [
            f"## {dataset}, seed {seed}, {settings}: {first['groups']} groups "
            f"({first['minority_groups']} minority), m = {rows[0]['num_real']}, "
            f"{rows[0]['networks']} networks",
            "",
            "| set | minority loss | majority loss | ratio | tail on minority | "
            "images near minority | test minority | test majority |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            res = r["result"]
            accuracy = lambda f: f"{res[f]:.1f}" if f in res else ""  # noqa: B023
            lines.append(
                f"| {_label(res)} | {res['minority_loss']:.4g} | {res['majority_loss']:.4g} | "
                f"{res['ratio']:.2f} | {res['tail_minority_share']:.2f} | "
                f"{res.get('images_near_minority', float('nan')):.2f} | "
                f"{accuracy('minority_accuracy')} | {accuracy('majority_accuracy')} |"
            )
        lines.append("")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits+rare")
    parser.add_argument("--ipc", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0, help="the grouping's seed")
    parser.add_argument("--workdirs", default="", help="comma-separated run workdirs")
    parser.add_argument("--networks", type=int, default=16)
    parser.add_argument("--m", type=int, default=256, help="real samples per group")
    harness.add_results_arguments(parser, "set_losses")
    args = parser.parse_args()
    if not args.render and not args.workdirs:
        parser.error("pass --workdirs (run workdirs holding a synthetic.npz), or --render")
    out = pathlib.Path(args.out)
    key = lambda r: (
        r["dataset"], r["ipc"], r["seed"], json.dumps(r["settings"], sort_keys=True),
        r["result"]["set"],
    )  # fmt: skip
    records = harness.load_results(out.with_suffix(".json"), [])
    if not args.render:
        workdirs = [pathlib.Path(w) for w in args.workdirs.split(",") if w]
        config = harness.measurement_config(
            args.dataset, ipc=args.ipc, seed=args.seed, overrides=args.set
        )
        config_lib.validate(config)
        timer = harness.Timer()
        results = measure(config, workdirs, networks=args.networks, num_real=args.m)
        command, machine = harness.command("set_losses"), harness.machine()
        new = [
            {
                "dataset": args.dataset,
                "ipc": args.ipc,
                "seed": args.seed,
                "settings": harness.parse_overrides(args.set),
                "num_real": args.m,
                "networks": args.networks,
                "result": result,
                "seconds": timer(),
                "command": command,
                "machine": machine,
            }  # fmt: skip
            for result in results
        ]
        records = harness.merge_results(out.with_suffix(".json"), new, key=key)
        for r in results:
            print(
                f"{r['set']}: minority {r['minority_loss']:.4g}, majority "
                f"{r['majority_loss']:.4g}, tail on minority {r['tail_minority_share']:.2f}"
            )
    out.with_suffix(".md").write_text(summarise(records))


if __name__ == "__main__":
    main()
