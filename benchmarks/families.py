"""Matching families side by side at equal CPU time: gradient, distribution, risk and krr.

For every dataset (a shipped config's name, optionally with a robustness suffix such as
'+rare'), IPC, seed and family, the family's settings (`FAMILY_SETTINGS`) go on the dataset's
shipped config; its seconds per iteration are measured here (the jitted step on the real data,
the median of 3 iterations after a compiling one); the run then gets
`budget / seconds-per-iteration` iterations, distils with `jaxdd.distill` (the set selected on
the validation split at half and at the end) and is scored by the shared protocol
(`eval-models` networks x `eval-epochs`, `jaxdd.report`). The random real subset of the same
size is scored beside it by the same evaluator. `--risks=mean,cvar` runs ERM and robust for
each family. Run from the repository root:

  python -m benchmarks.families --datasets=digits --ipcs=1,10 --seeds=0 --budget-s=180

writes benchmarks/results/families.md (linking the hand-written families_findings.md) and
families.json (every run, with its command and machine); each finished run is merged at once,
so an interrupted benchmark resumes with the same command; `--render` rewrites the .md.
"""

from __future__ import annotations

import argparse
import pathlib
import tempfile

import jax
import numpy as np

import jaxdd
from benchmarks import harness
from jaxdd import build, report, synthetic

# Each family's settings on a dataset's shipped config (the config's own: DSA's gradient
# matching with DC's loops). distribution: DM's lr_img; krr: FRePo's pool of 10 networks and
# the image lr chosen on digits' validation split (README, "Matching families"); risk: a
# 10-step unroll of a fresh network at the shipped image lr.
FAMILY_SETTINGS = {
    "gradient": (),
    "distribution": ("match.family=distribution", "syn.lr=1.0"),
    "risk": ("match.family=risk",),
    "krr": ("match.family=krr", "match.net_pool=10", "syn.lr=1.0"),
}
RISKS = {"mean": "erm", "cvar": "robust"}


def record_key(record: dict) -> tuple:
    fields = ("dataset", "ipc", "seed", "family", "risk", "budget_s")
    return tuple(record[field] for field in fields)


def seconds_per_iteration(config) -> float:
    """Median wall time of the config's jitted step on its real data (3 after a warm-up)."""
    run = harness.initial_run(config)
    state, real, step_fn = run.state, run.real, run.step_fn
    state, _ = jax.block_until_ready(step_fn(state, jax.random.key(0), real))
    times = []
    for i in range(3):
        timer = harness.Timer()
        state, _ = jax.block_until_ready(step_fn(state, jax.random.key(i + 1), real))
        times.append(timer())
    return float(np.median(times))


def run_one(args, dataset: str, ipc: int, seed: int, family: str, risk: str) -> dict:
    """One family's run under the budget, or (family 'random') the random real subset."""
    config = harness.protocol_config(
        dataset, ipc=ipc, seed=seed, iterations=1, eval_models=args.eval_models,
        eval_epochs=args.eval_epochs, overrides=[*FAMILY_SETTINGS.get(family, ()), *args.set],
    )  # fmt: skip
    if family == "random":
        data, rare = build.load_data(config)
        images, labels = synthetic.coreset(
            "random", data.train.images, data.train.labels, ipc=ipc, seed=seed
        )
        shape = images.shape[2:]
        result = report.evaluate_set(
            config, data, rare, images.reshape(-1, *shape), labels.reshape(-1)
        )
        return {"report": result}
    config.robust.risk = risk
    per_iteration = seconds_per_iteration(config)
    iterations = max(2, int(args.budget_s // per_iteration))
    config.num_iterations = iterations
    config.eval.select_every = max(1, iterations // 2)
    config.checkpoint.every = iterations
    timer = harness.Timer()
    with tempfile.TemporaryDirectory() as workdir:
        result = jaxdd.distill(config, pathlib.Path(workdir)).report
    return {
        "report": result,
        "seconds_per_iteration": per_iteration,
        "iterations": iterations,
        "distill_and_eval_seconds": timer(),
    }


def summarise(records: list[dict], out: pathlib.Path) -> str:
    commands = sorted({r["command"] for r in records})
    lines = [
        "# Matching families at equal CPU time",
        "",
        "Commands (each row records the one that produced it):",
        *[f"- `{command}`" for command in commands],
        "",
        f"{harness.machines_line(records)}.  ",
        "Each family runs budget / (its seconds per iteration on this machine) iterations of "
        "its settings (`benchmarks/families.py` `FAMILY_SETTINGS`) on the dataset's shipped "
        "config, the set selected on the validation split; accuracies are test %, mean +- "
        "std over seeds of the networks' mean. `random` is the random real subset the runs "
        "start from, by the same evaluator.",
        "",
        *harness.findings_link(out),
    ]
    tables = sorted({(r["dataset"], r["ipc"], r["budget_s"]) for r in records})
    for dataset, ipc, budget in tables:
        rows = [
            r for r in records if record_key(r)[:2] == (dataset, ipc) and r["budget_s"] == budget
        ]
        lines += [
            f"## {dataset}, IPC {ipc}, budget {budget:.0f} s of distillation per run",
            "",
            "| family | objective | seeds | iterations | s / iteration | accuracy | worst group "
            "(test K-means) | minority, mean over classes | validation accuracy |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for family in ["random", *FAMILY_SETTINGS]:
            for risk in ["-", *RISKS]:
                runs = [r for r in rows if r["family"] == family and r["risk"] == risk]
                if not runs:
                    continue
                reports = [harness.with_rare_means(r["report"]) for r in runs]

                def cell(key, reports=reports):
                    values = np.array([rep[key] for rep in reports if key in rep], float)
                    return f"{values.mean():.1f} ± {values.std():.1f}" if len(values) else ""

                iterations = "/".join(str(r.get("iterations", "")) for r in runs)
                per_iteration = "/".join(f"{r['seconds_per_iteration']:.2f}" for r in runs
                                         if "seconds_per_iteration" in r)  # fmt: skip
                lines.append(
                    f"| {family} | {RISKS.get(risk, '-')} | {len(runs)} | {iterations} | "
                    f"{per_iteration} | {cell('accuracy_mean')} | {cell('worst_group_accuracy')} "
                    f"| {cell('minority_mean')} | {cell('validation_accuracy_mean')} |"
                )
        lines.append("")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="digits")
    parser.add_argument("--ipcs", default="1,10")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--families", default=",".join(FAMILY_SETTINGS))
    parser.add_argument("--risks", default="mean", help="mean (ERM), cvar (robust) or both")
    parser.add_argument("--budget-s", type=float, default=180.0)
    parser.add_argument("--eval-models", type=int, default=3)
    parser.add_argument("--eval-epochs", type=int, default=300)
    parser.add_argument("--set", action="append", default=[], help="config field=value")
    parser.add_argument("--out", default=str(harness.RESULTS / "families"))
    parser.add_argument("--render", action="store_true", help="rewrite the .md from the .json")
    args = parser.parse_args()
    unknown = set(args.families.split(",")) - set(FAMILY_SETTINGS)
    if unknown or set(args.risks.split(",")) - set(RISKS):
        parser.error(f"families in {sorted(FAMILY_SETTINGS)}, risks in {sorted(RISKS)}")
    out = pathlib.Path(args.out)
    path = out.with_suffix(".json")
    records = harness.load_results(path, [])
    if not args.render:
        command, machine = harness.command("families"), harness.machine()
        for dataset in args.datasets.split(","):
            for ipc in map(int, args.ipcs.split(",")):
                for seed in map(int, args.seeds.split(",")):
                    runs = [("random", "-")] + [
                        (family, risk)
                        for family in args.families.split(",")
                        for risk in args.risks.split(",")
                    ]
                    for family, risk in runs:
                        key = (dataset, ipc, seed, family, risk, args.budget_s)
                        if any(record_key(r) == key for r in records):
                            continue
                        record = {
                            "dataset": dataset, "ipc": ipc, "seed": seed, "family": family,
                            "risk": risk, "budget_s": args.budget_s, "command": command,
                            "machine": machine, "set": harness.parse_overrides(args.set),
                            **run_one(args, dataset, ipc, seed, family, risk),
                        }  # fmt: skip
                        records = harness.merge_results(path, [record], key=record_key)
                        print(
                            f"{dataset} ipc={ipc} seed={seed} {family} {risk}: acc "
                            f"{record['report']['accuracy_mean']:.1f} "
                            f"({record.get('iterations', '-')} iterations)",
                            flush=True,
                        )
    out.with_suffix(".md").write_text(summarise(records, out))
    print(summarise(records, out))


if __name__ == "__main__":
    main()
