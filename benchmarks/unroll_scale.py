"""Does the risk family's unroll train on this data, and how large is its image gradient?

The risk family trains a fresh network for `match.unroll_steps` SGD steps on the synthetic set
inside the graph and differentiates its cross-entropy on each real group with respect to the
images. Its unroll lr (`match.unroll_lr`) was chosen on digits' validation split; whether it
transfers is a property of the data and the network, measured here before any distillation:
at the run's initial set (random real images, the dataset's config under the benchmarks'
protocol, the seed's own groups), per `--unroll-lrs` value, over `--draws` first steps (each a
fresh network, real sample and augmentation: the first step's key varies):

- `cross-entropy`: the unrolled network's mean over the C*K groups (what the run's first
  `group_loss_mean` logs), and the largest group's; above ln C, a uniform guess's, the unroll
  diverges on this data and the run warns (`jaxdd.run`);
- `gradient RMS`: the objective's image gradient, root mean square per stored pixel;
- `SGD step`: that times `syn.lr`, the pixel change of the first update (before momentum) in
  the standardised units of the images (their std is 1).

Run from the repository root:

  python -m benchmarks.unroll_scale --datasets=digits,fashion_mnist --ipcs=1,10 \\
      --unroll-lrs=0.01,0.03,0.1

writes benchmarks/results/unroll_scale.md and .json (every row with its command and machine;
a rerun of a row replaces it).
"""

from __future__ import annotations

import argparse
import pathlib

import jax
import numpy as np

from benchmarks import harness


def measure(config, draws: int) -> dict:
    """The module docstring's figures for `config` over `draws` first steps."""
    run = harness.initial_run(config)
    pixels = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(run.state.images))
    rows = []
    for draw in range(draws):
        _, metrics = run.step_fn(run.state, jax.random.fold_in(run.third_key, draw), run.real)
        metrics = jax.device_get(metrics)
        rows.append(
            [
                float(metrics["group_loss_mean"]),
                float(metrics["group_loss_max"]),
                float(metrics["grad_norm"]) / np.sqrt(pixels),
            ]
        )
    rows = np.asarray(rows)
    return {
        "draws": rows.tolist(),
        "cross_entropy": float(rows[:, 0].mean()),
        "cross_entropy_max": float(rows[:, 1].mean()),
        "gradient_rms": float(rows[:, 2].mean()),
        "gradient_rms_range": [float(rows[:, 2].min()), float(rows[:, 2].max())],
        "sgd_step": float(rows[:, 2].mean() * float(config.syn.lr)),
        "chance": float(np.log(run.dataset.num_classes)),
    }


def record_key(record: dict) -> tuple:
    return record["dataset"], record["ipc"], record["seed"], record["unroll_lr"], *record["set"]


def row(r: dict) -> str:
    """A record's table row."""
    res = r["result"]
    low, high = res["gradient_rms_range"]
    return (
        f"| {r['dataset']} | {r['ipc']} | {r['seed']} | {r['unroll_lr']} | "
        f"{', '.join(r['set']) or '-'} | {len(res['draws'])} | "
        f"{res['cross_entropy']:.2f} ({res['chance']:.2f}) | {res['cross_entropy_max']:.2f} | "
        f"{'no: diverges' if res['cross_entropy'] > res['chance'] else 'yes'} | "
        f"{res['gradient_rms']:.2g} ({low:.2g}-{high:.2g}) | {r['syn_lr']} | "
        f"{res['sgd_step']:.2g} |"
    )


def render(records: list[dict], out) -> str:
    lines = [
        "# The risk family's unroll: does it train, and how large is its image gradient?",
        "",
        "Commands (each row records the one that produced it):",
        *[f"- `{c}`" for c in sorted({r["command"] for r in records})],
        "",
        f"{harness.machines_line(records)}.  ",
        "At the run's initial set (random real images) and its first step: a fresh network "
        "unrolled on the set, then its cross-entropy on the real groups; means over the draws "
        "(each a fresh network, sample and augmentation). Cross-entropy above ln C (a uniform "
        "guess's) means the unroll diverges on the data (the run warns). See the module "
        "docstring of benchmarks/unroll_scale.py for each column.",
        "",
        *harness.findings_link(out),
        "| dataset | IPC | seed | unroll lr | other settings | draws | cross-entropy, mean "
        "over groups (ln C) | largest group | trains? | gradient RMS per pixel (range) | "
        "syn.lr | SGD step per pixel |",
        "|---" * 12 + "|",
    ]
    lines += [row(r) for r in sorted(records, key=record_key)]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="digits,fashion_mnist")
    parser.add_argument("--ipcs", default="10")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--unroll-lrs", default="0.01,0.03,0.1")
    parser.add_argument("--draws", type=int, default=3)
    harness.add_results_arguments(parser, "unroll_scale")
    args = parser.parse_args()
    fixed = [item for item in args.set if item.startswith(("match.family=", "match.unroll_lr="))]
    if fixed:
        parser.error(
            f"--set {fixed[0]}: the benchmark measures the risk family at each --unroll-lrs "
            "value; give the unroll lrs there."
        )
    out = pathlib.Path(args.out)
    if not args.render:
        for dataset in args.datasets.split(","):
            for ipc in (int(i) for i in args.ipcs.split(",")):
                for unroll_lr in (float(x) for x in args.unroll_lrs.split(",")):
                    overrides = ["match.family=risk", f"match.unroll_lr={unroll_lr}", *args.set]
                    config = harness.measurement_config(
                        dataset, ipc=ipc, seed=args.seed, overrides=overrides
                    )
                    record = {
                        "dataset": dataset, "ipc": ipc, "seed": args.seed,
                        "unroll_lr": unroll_lr, "set": list(args.set),
                        "syn_lr": float(config.syn.lr),
                        "result": measure(config, args.draws),
                        "command": harness.command("unroll_scale"), "machine": harness.machine(),
                    }  # fmt: skip
                    harness.merge_results(out.with_suffix(".json"), [record], key=record_key)
                    print(row(record), flush=True)
    records = harness.load_results(out.with_suffix(".json"), [])
    out.with_suffix(".md").write_text(render(records, out))


if __name__ == "__main__":
    main()
