"""Why does robust distillation (not) beat ERM? Distillation variants under one protocol.

Each variant is `name:field=value;field=value` of config overrides applied on top of the
robustness protocol's config (`harness.protocol_config`: the same iterations, selection on the
validation split and evaluation as `benchmarks.robust_gain`). Run from the repository root:

  python -m benchmarks.ablation --dataset=digits+rare --ipc=10 --seed=0 \\
      --variant='erm:robust.risk=mean' --variant='cvar0.1:robust.alpha=0.1'

merges every finished variant into benchmarks/results/ablation.json (so the same command
resumes; a variant stopped mid-run resumes from its workdir under `--workdir`, default
`runs/ablation`) and rewrites ablation.md with one table of all runs recorded there
(`--render`: only that, running nothing).
"""

from __future__ import annotations

import argparse
import json
import pathlib

import numpy as np

import jaxdd
from benchmarks import harness

COLUMNS = {
    "accuracy_mean": "accuracy",
    "worst_group_accuracy": "worst group (test K-means)",
    "worst_class_accuracy": "worst class",
    "worst_group_accuracy_rare": "minority worst group",
    "mean_group_accuracy_rare": "majority/minority mean group",
    "minority_mean": "minority, mean over classes",
    "validation_accuracy_mean": "validation accuracy",
    "validation_minority_accuracy": "validation minority",
}


def parse_variant(text: str) -> tuple[str, list[str]]:
    """'name:field=value;field=value' -> (name, ['field=value', ...])."""
    name, _, body = text.partition(":")
    return name, [item for item in body.split(";") if item]


def record_key(record: dict) -> tuple:
    """What a record stands for: a variant name given other overrides is another record."""
    fields = ("dataset", "ipc", "seed", "iterations", "variant")
    return (*(record[k] for k in fields), json.dumps(record["overrides"], sort_keys=True))


def table(records: list[dict]) -> str:
    lines = [
        "| dataset | IPC | seed | iterations | eval networks x epochs | variant | overrides | "
        + " | ".join(COLUMNS.values())
        + " | selected step | minutes |",
        "|---" * (len(COLUMNS) + 9) + "|",
    ]
    for r in records:
        report = harness.with_rare_means(r["report"])
        cells = [f"{report[c]:.1f}" if c in report else "" for c in COLUMNS]
        overrides = "; ".join(f"{k}={v}" for k, v in r["overrides"].items()) or "(config)"
        lines.append(
            f"| {r['dataset']} | {r['ipc']} | {r['seed']} | {r['iterations']} | {r['eval']} | "
            f"{r['variant']} | {overrides} | " + " | ".join(cells) + " | "
            f"{r['report'].get('selected_step', '')} | {r['seconds'] / 60:.1f} |"
        )
    return "\n".join(lines) + "\n"


def by_variant(records: list[dict]) -> str:
    """Each (dataset, IPC, iterations, variant)'s mean over its seeds of every column: the
    table settings are chosen from, on its validation columns."""

    def key_of(r: dict) -> tuple:
        return r["dataset"], r["ipc"], r["iterations"], r["variant"]

    keys = sorted({key_of(r) for r in records})
    lines = [
        "| dataset | IPC | iterations | variant | seeds | " + " | ".join(COLUMNS.values()) + " |",
        "|---" * (len(COLUMNS) + 5) + "|",
    ]
    for key in keys:
        rows = [r for r in records if key_of(r) == key]
        reports = [harness.with_rare_means(r["report"]) for r in rows]
        cells = []
        for c in COLUMNS:
            values = [rep[c] for rep in reports if c in rep]
            cells.append(f"{np.mean(values):.1f}" if values else "")
        seeds = ",".join(str(r["seed"]) for r in sorted(rows, key=lambda r: r["seed"]))
        lines.append(f"| {' | '.join(map(str, key))} | {seeds} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def summarise(records: list[dict], out: pathlib.Path, findings: str = "") -> str:
    """The Markdown of `records`; it links `<findings>_findings.md` when `findings` is given,
    else the findings that cite `out` by name (`harness.findings_link`)."""
    commands = sorted({r["command"] for r in records})
    return "\n".join(
        [
            "# Ablation: distillation variants under the robustness benchmark's protocol",
            "",
            "Commands (each row records the one that produced it):",
            *[f"- `{command}`" for command in commands],
            "",
            f"{harness.machines_line(records)}.  ",
            "The set is selected on the validation split. Accuracies in % on the test split, "
            "except the validation columns: settings are chosen on those alone.",
            "",
            *harness.findings_link(out.with_name(findings) if findings else out),
            "## Every run",
            "",
            table(records),
            "## Means over seeds, per variant",
            "",
            by_variant(records),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits+rare")
    parser.add_argument("--ipc", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--eval-models", type=int, default=3)
    parser.add_argument("--eval-epochs", type=int, default=150)
    parser.add_argument("--variant", action="append", default=[])
    parser.add_argument("--out", default=str(harness.RESULTS / "ablation"))
    harness.add_workdir_argument(parser, "ablation")
    parser.add_argument(
        "--findings",
        default="",
        help="the <name>_findings.md in the results folder that the table links; default: the "
        "findings files that cite <out>.md or <out>.json by name",
    )
    parser.add_argument(
        "--render", action="store_true", help="run nothing: rewrite the .md from the .json"
    )
    args = parser.parse_args()
    if not args.variant and not args.render:
        parser.error("pass at least one --variant (or --render)")
    out = pathlib.Path(args.out)
    records = harness.load_results(out.with_suffix(".json"), [])
    command, machine = harness.command("ablation"), harness.machine()
    for text in [] if args.render else args.variant:
        name, overrides = parse_variant(text)
        key = (args.dataset, args.ipc, args.seed, args.iterations, name,
               json.dumps(harness.parse_overrides(overrides), sort_keys=True))  # fmt: skip
        config = harness.protocol_config(
            args.dataset,
            ipc=args.ipc,
            seed=args.seed,
            iterations=args.iterations,
            eval_models=args.eval_models,
            eval_epochs=args.eval_epochs,
            overrides=overrides,
        )
        resolved = harness.record_config(config)
        if harness.current_record(records, record_key, key, resolved):
            continue
        timer = harness.Timer()
        # The name digests the resolved config too: a run under other defaults is another run.
        settings = {"eval": [args.eval_models, args.eval_epochs], "overrides": overrides,
                    "config": resolved}  # fmt: skip
        parts = (args.dataset, f"ipc{args.ipc}", f"seed{args.seed}", args.iterations, name)
        workdir = harness.kept_workdir(args.workdir, parts, settings)
        timer.add(harness.logged_seconds(workdir))  # A resumed run's earlier share.
        report = jaxdd.distill(config, workdir).report
        record = {
            "dataset": args.dataset,
            "ipc": args.ipc,
            "seed": args.seed,
            "iterations": args.iterations,
            "eval": f"{config.eval.num_models}x{config.eval.epochs}",
            "variant": name,
            "overrides": harness.parse_overrides(overrides),
            "report": report,
            "config": resolved,
            "seconds": timer(),
            "command": command,
            "machine": machine,
        }
        records = harness.merge_results(out.with_suffix(".json"), [record], key=record_key)
        print(
            f"{name}: "
            + ", ".join(
                f"{c} {harness.with_rare_means(report).get(c, float('nan')):.1f}" for c in COLUMNS
            ),
            flush=True,
        )
    out.with_suffix(".md").write_text(summarise(records, out, args.findings))


if __name__ == "__main__":
    main()
