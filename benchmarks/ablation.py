"""Why does robust distillation (not) beat ERM? Distillation variants under one protocol.

Each variant is `name:field=value;field=value` of config overrides applied to the benchmark's
config (`robustness.make_config`: same steps, selection on validation, evaluation protocol):

  python benchmarks/ablation.py --dataset=digits+rare --ipc=10 --seed=0 \\
      --variant='erm:robust.risk=mean' --variant='cvar0.1:robust.alpha=0.1'

appends every finished variant to benchmarks/results/ablation.json (so the same command
resumes) and rewrites ablation.md with one table of all runs recorded there.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import robustness  # noqa: E402

from jaxdd import train  # noqa: E402

COLUMNS = {
    "accuracy_mean": "accuracy",
    "worst_group_accuracy": "worst group (test K-means)",
    "worst_class_accuracy": "worst class",
    "worst_group_accuracy_rare": "minority worst group",
    "mean_group_accuracy_rare": "majority/minority mean group",
}


def parse_variant(text: str) -> tuple[str, dict[str, object]]:
    name, _, body = text.partition(":")
    return name, robustness.parse_overrides([item for item in body.split(";") if item])


def table(records: list[dict]) -> str:
    lines = [
        "| dataset | IPC | seed | steps | variant | overrides | "
        + " | ".join(COLUMNS.values())
        + " | selected step | minutes |",
        "|---" * (len(COLUMNS) + 8) + "|",
    ]
    for r in records:
        cells = [f"{r['report'][c]:.1f}" if c in r["report"] else "" for c in COLUMNS]
        overrides = "; ".join(f"{k}={v}" for k, v in r["overrides"].items()) or "(config)"
        lines.append(
            f"| {r['dataset']} | {r['ipc']} | {r['seed']} | {r['steps']} | {r['variant']} | "
            f"{overrides} | " + " | ".join(cells) + f" | {r['report'].get('selected_step', '')} "
            f"| {r['seconds'] / 60:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits+rare")
    parser.add_argument("--ipc", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--eval-models", type=int, default=3)
    parser.add_argument("--eval-epochs", type=int, default=150)
    parser.add_argument("--variant", action="append", required=True)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "ablation"))
    args = parser.parse_args()
    out = pathlib.Path(args.out)
    records = (
        json.loads(out.with_suffix(".json").read_text())
        if out.with_suffix(".json").exists()
        else []
    )
    for text in args.variant:
        name, overrides = parse_variant(text)
        key = (args.dataset, args.ipc, args.seed, args.steps, name)
        if any(
            (r["dataset"], r["ipc"], r["seed"], r["steps"], r["variant"]) == key for r in records
        ):
            continue
        config = robustness.make_config(args.dataset, args.ipc, args.seed, args)
        robustness.apply_overrides(config, overrides)
        start = time.time()
        with tempfile.TemporaryDirectory() as workdir:
            report = train.distill_run(config, workdir).report
        records.append(
            {
                "dataset": args.dataset,
                "ipc": args.ipc,
                "seed": args.seed,
                "steps": args.steps,
                "variant": name,
                "overrides": overrides,
                "report": report,
                "seconds": time.time() - start,
            }
        )
        out.with_suffix(".json").write_text(json.dumps(records, indent=1) + "\n")
        print(
            f"{name}: " + ", ".join(f"{c} {report.get(c, float('nan')):.1f}" for c in COLUMNS),
            flush=True,
        )
    header = (
        "# Ablation: distillation variants under the robustness benchmark's protocol\n\n"
        f"Command (last invocation): `python benchmarks/ablation.py {' '.join(sys.argv[1:])}`  \n"
        f"Machine: {robustness.cpu_name()} CPU, {robustness._cores()} cores, no accelerator. "
        f"{args.eval_models} evaluation networks x {args.eval_epochs} epochs per run; the set "
        "is selected on the validation split. Accuracies in % on the test split.\n\n"
    )
    out.with_suffix(".md").write_text(header + table(records))


if __name__ == "__main__":
    main()
