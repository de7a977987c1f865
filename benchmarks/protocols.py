"""The same distilled sets scored under another paper's evaluation protocol: FRePo's.

Run from the repository root:

  python -m benchmarks.protocols --runs=runs/families/RUN1,runs/families/RUN2 --eval-models=3

Every jaxdd table scores sets by DC/DSA's protocol (ConvNet-128 with instance norm, SGD with
momentum, cross-entropy, DSA, 1000 epochs). FRePo publishes its numbers under its own
(`jaxdd.config.frepo_evaluation`: a widening ConvNet without normalisation, Adam 3e-4 with
warm-up and cosine decay, MSE to centred labels, 1000 / 2000 steps at 10 / 100 images), so a
jaxdd set can only be held against FRePo's 75.6 / 86.2 % (Fashion-MNIST IPC 1 / 10) when it
is scored as FRePo scores. For each kept run workdir (a `benchmarks.families` or
`benchmarks.robust_gain` run), its selected set (`synthetic.npz`, with its labels: hard or
learned soft ones) and the random real subset of the same size per class (seeded by the run's
seed, as `jaxdd evaluate` draws it) are scored under `--protocol` by `--eval-models` networks
(test accuracy and the test K-means groups; no shifted test sets);
the table shows them beside the run's own score by its config's protocol (the run's
`eval.json`). The random subset's score is computed once per (dataset, images per class, seed,
protocol, networks) and config, and shared by the runs it stands beside.

Records go to `<out>.json` keyed by (run, protocol, networks) with the config they were scored
under, and a rerun of the same command reuses those made under today's config (a changed
protocol default reruns them, `harness.current_record`); `<out>.md` is rendered from them
(`--render` rewrites it without running anything).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time
from collections.abc import Sequence
from typing import Any

import ml_collections

from benchmarks import harness
from jaxdd import build, report, sets
from jaxdd import config as config_lib

NAME = "protocols"
PROTOCOLS = ("frepo",)


def run_summary(run: pathlib.Path) -> dict[str, Any]:
    """What a kept run's workdir says of itself: dataset, IPC, seed, family, risk, label type
    and its own test score (by its config's protocol)."""
    config = json.loads((run / "config.json").read_text())
    evaluation = json.loads((run / "eval.json").read_text())
    if config["data"].get("rare") or config["data"].get("spurious"):
        raise ValueError(
            f"{run}: a run of the rare or spurious benchmark; this benchmark scores sets of a "
            "shipped config's plain dataset only (its random subset and test split)."
        )
    return {
        "run": run.name,
        "dataset": config["data"]["name"],
        "ipc": config["ipc"],
        "seed": config["seed"],
        "family": config["match"]["family"],
        "risk": config["robust"]["risk"],
        "labels": "soft" if config["syn"].get("learn_labels") else "hard",
        "own_accuracy": evaluation["accuracy_mean"],
        "own_accuracy_std": evaluation["accuracy_std"],
        "own_eval": f"{evaluation.get('num_models', '?')}x{config['eval']['epochs']} epochs",
    }


def run_config(summary: dict[str, Any], eval_models: int) -> ml_collections.ConfigDict:
    """The run's dataset config at its IPC and seed, with `eval_models` networks and no shifted
    test sets (the table reports none, and each would cost a pass of every network over the
    test split: FRePo's network is ~3x DC's per image)."""
    config = harness.load_config(
        summary["dataset"],
        f"ipc={summary['ipc']}",
        f"seed={summary['seed']}",
        f"eval.num_models={eval_models}",
    )
    config.eval.shifts = ml_collections.ConfigDict()
    return config


def score(
    run: pathlib.Path, protocol: str, eval_models: int, results: dict[str, Any]
) -> dict[str, Any] | None:
    """The record of `run`'s set under `protocol`, with the random real subset's score (from
    `results['random']`, keyed by (dataset, images per class, seed, protocol, eval_models),
    computed and stored there if missing or made under another config); None where
    `results['records']` holds a record of the run made under today's config
    (`harness.current_record`: a changed protocol default reruns it)."""
    summary = run_summary(run)
    config = run_config(summary, eval_models)
    dataset, rare = build.load_data(config)
    foreign = sets.read(run, dataset)
    if protocol == "frepo":
        config = config_lib.frepo_evaluation(config, len(foreign.labels))
    config_lib.validate(config)
    recorded = harness.record_config(config, harness.UNDISTILLED_SECTIONS)
    key = (run.name, protocol, eval_models)
    if harness.current_record(results["records"], _key, key, recorded) is not None:
        return None
    timer = time.perf_counter()
    ours = report.evaluate_set(config, dataset, rare, foreign.images, foreign.labels)
    seconds = time.perf_counter() - timer
    random_key = json.dumps(
        [summary["dataset"], foreign.per_class.tolist(), summary["seed"], protocol, eval_models]
    )
    random = results["random"].get(random_key)
    if random is None or random.get("config", recorded) != recorded:
        indices = report.random_real_like(foreign.labels, dataset, seed=config.seed)
        theirs = report.evaluate_set(
            config, dataset, rare, dataset.train.images[indices], dataset.train.labels[indices]
        )
        random = {
            "accuracy_mean": theirs["accuracy_mean"],
            "accuracy_std": theirs["accuracy_std"],
            "worst_group_accuracy": theirs.get("worst_group_accuracy"),
            "config": recorded,
        }
        results["random"][random_key] = random
    return {
        **summary,
        "protocol": protocol,
        "eval_models": eval_models,
        "eval": f"{eval_models}x{config.eval.epochs} epochs, batch {config.eval.batch_size}",
        "accuracy_mean": ours["accuracy_mean"],
        "accuracy_std": ours["accuracy_std"],
        "per_model_accuracy": ours["per_model_accuracy"],
        "worst_group_accuracy": ours.get("worst_group_accuracy"),
        "random": {k: v for k, v in random.items() if k != "config"},
        "seconds": seconds,
        "config": recorded,
        "machine": harness.machine(),
        "command": harness.command(NAME),
    }


def _key(record: dict[str, Any]) -> tuple[str, str, int]:
    return record["run"], record["protocol"], record["eval_models"]


def render(results: dict[str, Any], out: str) -> str:
    """The markdown table of `results` ({'records': [...], 'random': {...}})."""
    records = results["records"]
    lines = [
        "# The same sets under FRePo's evaluation protocol",
        "",
        "Commands (each row records the one that produced it):",
        *sorted({f"- `{r['command']}`" for r in records}),
        "",
        f"{harness.machines_line(records)}.  ",
        "Each run's selected set and the random real subset of the same size per class (the "
        "run's seed) scored by networks trained from scratch under the protocol "
        "(`jaxdd.config.frepo_evaluation`: FRePo's widening ConvNet without normalisation, "
        "Adam 3e-4, 500 warm-up steps then cosine to 0.01x, MSE to centred labels, batches of "
        "min(N, 500), 1000 / 2000 steps at 10 / 100 images, DSA's families one per batch). "
        "`own` is the run's score by its config's protocol (DC/DSA: ConvNet-128 with instance "
        "norm, SGD, cross-entropy, DSA), from its eval.json. Test accuracy %, mean +- std over "
        "the networks; one distillation seed per row.",
        "",
        *harness.findings_link(out),
        "| dataset | IPC | family | objective | labels | run | own protocol (run's eval) "
        "| protocol | evaluation | set | random real subset | set - random | worst group "
        "(test K-means) | seconds to score the set |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    ordered = sorted(records, key=lambda r: (r["dataset"], r["ipc"], r["family"], r["run"]))
    for r in ordered:
        random = r["random"]
        objective = "erm" if r["risk"] == "mean" else r["risk"]
        worst = r.get("worst_group_accuracy")
        lines.append(
            f"| {r['dataset']} | {r['ipc']} | {r['family']} | {objective} | {r['labels']} "
            f"| `{r['run']}` | {r['own_accuracy']:.1f} ± {r['own_accuracy_std']:.1f} "
            f"({r['own_eval']}) | {r['protocol']} | {r['eval']} "
            f"| {r['accuracy_mean']:.1f} ± {r['accuracy_std']:.1f} "
            f"| {random['accuracy_mean']:.1f} ± {random['accuracy_std']:.1f} "
            f"| {r['accuracy_mean'] - random['accuracy_mean']:+.1f} "
            f"| {'' if worst is None else f'{worst:.1f}'} | {r['seconds']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="", help="comma-separated kept run workdirs")
    parser.add_argument("--protocol", default="frepo", choices=PROTOCOLS)
    parser.add_argument("--eval-models", type=int, default=3)
    parser.add_argument("--out", default=str(harness.RESULTS / NAME), help="no suffix")
    parser.add_argument("--render", action="store_true", help="rewrite the .md only")
    args = parser.parse_args(argv)
    json_path, md_path = pathlib.Path(args.out + ".json"), pathlib.Path(args.out + ".md")
    results = harness.load_results(json_path, {"records": [], "random": {}})
    if not args.render:
        runs = [pathlib.Path(r) for r in args.runs.split(",") if r]
        if not runs:
            parser.error("pass --runs=DIR[,DIR...]: kept run workdirs with synthetic.npz")
        for run in runs:
            for name in ("config.json", "eval.json", "synthetic.npz"):
                if not (run / name).exists():
                    parser.error(f"{run} has no {name}: pass the workdir of a finished run")
        for run in runs:
            record = score(run, args.protocol, args.eval_models, results)
            if record is None:
                print(f"{run.name}: recorded under today's config, skipped", flush=True)
                continue
            results["records"] = [r for r in results["records"] if _key(r) != _key(record)] + [
                record
            ]
            harness.merge_results(
                json_path, {"records": results["records"], "random": results["random"]}
            )
            print(
                f"{run.name}: {args.protocol} {record['accuracy_mean']:.2f} +- "
                f"{record['accuracy_std']:.2f} % (random {record['random']['accuracy_mean']:.2f}"
                f"; own protocol {record['own_accuracy']:.2f}), {record['seconds']:.0f} s",
                flush=True,
            )
    if not results["records"]:
        raise SystemExit(f"{json_path} has no records to render.")
    md_path.write_text(render(results, args.out))
    print(f"wrote {md_path}", flush=True)


if __name__ == "__main__":
    main()
