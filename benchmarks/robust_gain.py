"""Does robust distillation gain? Baselines x datasets (and rare versions) x IPC x seeds.

Every method is evaluated with the same protocol and the same evaluation seeds
(`jaxdd.report.evaluate_set`): random real subset, herding and k-center coresets
(`jaxdd.synthetic.coreset`, flattened normalised pixels), ERM distillation (robust.risk=mean),
robust distillation (robust.risk=cvar) and the full real training set. `erm+k_center` and
`robust+k_center` distill from a k-center coreset (`syn.init=k_center`) instead of random real
images, `erm+groups` and `robust+groups` from random real images spread over the subgroups
(`syn.init=groups`), `erm+mix` and `robust+mix` from IDC's tiled initialisation of factorized
sets (`syn.init=mix`, with `--set=syn.param=factorized --set=syn.factor=2`); `start`,
`start+groups`, `start+mix`, ... score the exact set the matching erm/robust runs start from
(same seed, subgroups and draw; `jaxdd.run.initial_set`), undistilled, so that each
distilled row has its own starting point beside it; `reference` is
the robust-DD reference algorithm's mode, fixed
(configs/rdd_reference.py: Voronoi cells, the matched network trained on real data with the
cells' CVaR, ERM matching), from random real images as erm and robust. Synthetic sets are
selected on the validation split only. The full-data baseline depends on neither IPC nor the
distillation seed: it runs once per dataset and is shown in each of its IPC tables. Run from
the repository root:

  python -m benchmarks.robust_gain --datasets=digits,digits+rare --ipcs=1,10 --seeds=0

writes benchmarks/results/robustness.md (means +- std over seeds, linking the hand-written
robustness_findings.md), robustness.json (every run, with its command and machine) and
robustness.png. Each finished run is merged into the JSON at once, so an interrupted benchmark
resumes with the same command, and each distillation keeps its workdir under `--workdir`
(default `runs/robust_gain`), so the run it was in resumes from its last checkpoint (saved on
SIGTERM/SIGINT, and every tenth of the iterations; a finished one is only scored again). A
record stores the resolved config it was made under (`harness.record_config`): after a
default changes, the records it affects are run again, not reused. To distil a run afresh
after a code change, remove its record and its workdir (the run's first line names it);
`--render` rewrites the .md from the .json, running nothing.
"""

from __future__ import annotations

import argparse
import json
import pathlib

import ml_collections
import numpy as np

import jaxdd
from benchmarks import harness
from jaxdd import build, report, run, synthetic

METHODS = (
    "random",
    "start",
    "start+groups",
    "start+mix",
    "herding",
    "k_center",
    "erm",
    "robust",
    "erm+groups",
    "robust+groups",
    "erm+mix",
    "robust+mix",
    "erm+k_center",
    "robust+k_center",
    "reference",
    "full",
)
# `reference`: the robust-DD reference algorithm's mode (configs/rdd_reference.py) on the
# dataset's protocol: these fields of `rdd_reference.py:<config>` replace the protocol's.
REFERENCE_FIELDS = (
    "cluster.assign", "cluster.pool", "match.net_train", "robust.risk", "robust.alpha", "syn.init"
)  # fmt: skip
# Reported columns: eval.json key -> table header.
COLUMNS = {
    "accuracy_mean": "accuracy",
    "worst_group_accuracy": "worst group (test K-means)",
    "worst_class_accuracy": "worst class",
    "worst_group_accuracy_rare": "minority worst class",
    "majority_mean": "majority, mean over classes",
    "minority_mean": "minority, mean over classes",
    "validation_accuracy_mean": "validation accuracy",
    "validation_minority_accuracy": "validation minority",
}
# Paired robust - ERM differences: (eval.json key after `harness.with_rare_means`, label).
PAIRED = (
    ("minority_mean", "minority"),
    ("majority_mean", "majority"),
    ("accuracy_mean", "accuracy"),
    ("worst_group_accuracy", "worst test K-means group"),
    ("validation_minority_accuracy", "validation minority (what settings are chosen on)"),
)


def record_key(record: dict) -> tuple:
    """(dataset, IPC, seed, method, settings): runs with other `--set`, iterations or
    evaluation are other records, never one replacing the other; the full-data baseline's
    settings are its evaluation's only (it distils nothing)."""
    settings = record.get("settings", {})
    if record["method"] == "full":
        settings = {"eval": settings.get("eval")}
    fields = (record[k] for k in ("dataset", "ipc", "seed", "method"))
    return (*fields, json.dumps(settings, sort_keys=True))


def method_config(
    method: str, config: ml_collections.ConfigDict, overridden: frozenset[str] = frozenset()
) -> ml_collections.ConfigDict:
    """`config` as `method` runs it (`overridden`: the fields `--set` gave, which the reference
    mode's own values do not replace): the reference mode's fields, the initialisation after
    '+', ERM's or the robust risk."""
    risk, _, init = method.partition("+")
    if method == "reference":
        reference = jaxdd.load_config(
            harness.REPO / "configs" / f"rdd_reference.py:{config.data.name}"
        )
        for field in set(REFERENCE_FIELDS) - overridden:
            section, key = field.split(".")
            config[section][key] = reference[section][key]
        return config
    if init:
        config.syn.init = init
    if risk in ("erm", "robust"):
        config.robust.risk = "mean" if risk == "erm" else "cvar"
    return config


def depends_on(method: str) -> tuple[str, ...] | None:
    """The config sections `method`'s score depends on (`harness.record_config`; None: every
    section a distillation does)."""
    if method == "full":  # Neither the IPC nor the distillation seed.
        return tuple(s for s in harness.UNDISTILLED_SECTIONS if s not in ("ipc", "seed"))
    if method in ("random", "herding", "k_center"):
        return harness.UNDISTILLED_SECTIONS
    return None


def run_method(method: str, config: ml_collections.ConfigDict, workdir: pathlib.Path) -> dict:
    """The test report (eval.json's) of `method`'s set under `config` (`method_config`'s)."""
    risk = method.partition("+")[0]
    if method == "reference" or risk in ("erm", "robust"):
        return jaxdd.distill(config, workdir).report
    dataset, rare = build.load_data(config)
    if risk == "start":
        images, labels = run.initial_set(config, dataset)
        return report.evaluate_set(config, dataset, rare, images, labels)
    train = dataset.train
    if method == "full":
        images, labels = train.images, train.labels
    else:
        images, labels = synthetic.coreset(
            method, train.images, train.labels, ipc=config.ipc, seed=config.seed
        )
        images, labels = images.reshape(-1, *images.shape[2:]), labels.reshape(-1)
    return report.evaluate_set(config, dataset, rare, images, labels)


def summarise(records: list[dict], out: pathlib.Path) -> str:
    commands = sorted({r.get("command", "") for r in records} - {""})
    lines = [
        "# Robustness benchmark",
        "",
        "Commands (each row records the one that produced it):",
        *[f"- `{command}`" for command in commands],
        "",
        f"{harness.machines_line(records)}; summed run time of the rows "
        f"{sum(r['seconds'] for r in records) / 60:.1f} min.  ",
        "Protocol: the dataset's shipped config (ConvNet; depth 2 on 8x8 digits), distilled "
        "from random real images (`syn.init=real`) unless the method names another start "
        "(`+groups`: the shipped default), the "
        "synthetic set selected on the validation split; networks trained from scratch per "
        "method with SGD momentum 0.9, lr 0.01 decayed x0.1 at half, DSA. Each table lists "
        "its distillation iterations, evaluation networks x epochs and config overrides. "
        "Accuracies in % on the test split, mean +- std over distillation seeds (each value "
        "itself a mean over the networks).",
        "",
        *harness.findings_link(out),
    ]
    for dataset, ipc in _tables(records):
        rows = _table_rows(records, dataset, ipc)
        reports = [harness.with_rare_means(r["report"]) for r in rows]
        columns = [c for c in COLUMNS if any(c in rep for rep in reports)]
        lines += [f"## {dataset}, " + (f"IPC {ipc}" if ipc else "full data only"), ""]
        lines.append(
            "| method | seeds | labels | " + " | ".join(COLUMNS[c] for c in columns) + " |"
        )
        lines.append("|---" * (len(columns) + 3) + "|")
        groups = _row_groups(rows)
        for label, runs in groups:
            cells = []
            method_reports = [harness.with_rare_means(r["report"]) for r in runs]
            for c in columns:
                values = np.array([rep[c] for rep in method_reports if c in rep], float)
                cells.append(f"{values.mean():.1f} ± {values.std():.1f}" if len(values) else "")
            # Hard and soft labels are never mixed in a comparison: every row says which.
            label_types = "/".join(sorted({r["report"].get("label_type", "hard") for r in runs}))
            lines.append(f"| {label} | {len(runs)} | {label_types} | " + " | ".join(cells) + " |")
        lines.append("")
        lines += paired_lines(groups)
        settings = sorted({json.dumps(r.get("settings", {}), sort_keys=True) for r in rows})
        labels = {id(r): label for label, runs in groups for r in runs}
        for text in settings:
            used = [
                labels[id(r)]
                for r in rows
                if json.dumps(r.get("settings", {}), sort_keys=True) == text
            ]
            lines.append(f"Settings of {', '.join(sorted(set(used)))}: `{text}`  ")
        lines.append("")
    return "\n".join(lines) + "\n"


def set_overrides(record: dict) -> dict:
    """A record's `--set` overrides ({} for none)."""
    return record.get("settings", {}).get("set", {})


def _row_groups(rows: list[dict]) -> list[tuple[str, list[dict]]]:
    """A table's rows as (label, runs), in `METHODS` order: one per method and `--set`, so that
    runs with other overrides are never averaged together; the label is the method, followed
    by the overrides its runs do not share with every row of the table, where there are any."""

    def items(record: dict) -> set[tuple[str, str]]:
        return {(k, json.dumps(v)) for k, v in set_overrides(record).items()}

    shared = set.intersection(*map(items, rows)) if rows else set()
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        extra = sorted(items(r) - shared)
        label = r["method"] + (f" ({'; '.join(f'{k}={v}' for k, v in extra)})" if extra else "")
        groups.setdefault((r["method"], label), []).append(r)
    order = {method: i for i, method in enumerate(METHODS)}
    return [(label, runs) for (_, label), runs in
            sorted(groups.items(), key=lambda item: (order[item[0][0]], item[0][1]))]  # fmt: skip


# (method, baseline) pairs compared seed by seed, each at the same initialisation.
PAIRS = (
    ("robust", "erm"),
    ("robust+groups", "erm+groups"),
    ("robust+mix", "erm+mix"),
    ("robust+k_center", "erm+k_center"),
    ("reference", "erm"),
    ("robust", "reference"),
    ("erm+groups", "erm"),
    ("robust+groups", "robust"),
    ("erm", "start"),
    ("robust", "start"),
    ("erm+groups", "start+groups"),
    ("robust+groups", "start+groups"),
    ("erm+mix", "start+mix"),
    ("robust+mix", "start+mix"),
)


def paired_lines(groups: list[tuple[str, list[dict]]]) -> list[str]:
    """`PAIRS` differences per seed (same seed, so the same initial set for the same
    initialisation) between a table's rows (`_row_groups`) of the same `--set`, or against the
    baseline's only row: the mean difference with its 95 % Student-t interval, and the
    per-seed differences."""
    lines = []
    for method, baseline in PAIRS:
        baselines = [(label, runs) for label, runs in groups if runs[0]["method"] == baseline]
        for label, runs in groups:
            if runs[0]["method"] != method:
                continue
            # The baseline run with the same overrides; else the baseline's only one, if it
            # has one (its label then says how the two differ).
            overrides = set_overrides(runs[0])
            same = [b for b in baselines if set_overrides(b[1][0]) == overrides]
            match = same or (baselines if len(baselines) == 1 else [])
            if not match:
                continue
            base_label, base_runs = match[0]
            by_seed = {r["seed"]: harness.with_rare_means(r["report"]) for r in base_runs}
            pairs = [
                (by_seed[r["seed"]], harness.with_rare_means(r["report"]))
                for r in sorted(runs, key=lambda r: r["seed"])
                if r["seed"] in by_seed
            ]
            if not pairs:
                continue
            lines += _paired(f"{label} − {base_label}", pairs)
    return lines


def _paired(title: str, pairs: list[tuple[dict, dict]]) -> list[str]:
    """The `PAIRED` differences (second − first of each pair, one pair per seed) under
    `title`: the mean with its 95 % Student-t interval, and the per-seed differences."""
    interval = "mean ± 95 % t-interval half-width" if len(pairs) > 1 else "no interval yet"
    count = f"{len(pairs)} seed{'s' * (len(pairs) > 1)}"
    lines = [f"Paired {title} ({count}, {interval}; per seed):  "]
    for key, label in PAIRED:
        differences = [after[key] - before[key] for before, after in pairs
                       if key in before and key in after]  # fmt: skip
        if not differences:
            continue
        per_seed = ", ".join(f"{d:+.1f}" for d in differences)
        lines.append(f"- {label}: **{harness.interval_cell(differences)}** ({per_seed})  ")
    return [*lines, ""]


def _tables(records: list[dict]) -> list[tuple[str, int | None]]:
    """(dataset, IPC) of every table; full-data rows (IPC None) belong to all of a dataset's,
    or make its only table (IPC None) when nothing else ran on it."""
    keys = {(r["dataset"], r["ipc"]) for r in records if r["ipc"] is not None}
    with_ipc = {dataset for dataset, _ in keys}
    keys |= {(r["dataset"], None) for r in records if r["dataset"] not in with_ipc}
    return sorted(keys, key=lambda k: (k[0], k[1] or 0))


def _table_rows(records: list[dict], dataset: str, ipc: int | None) -> list[dict]:
    """The records of the (dataset, IPC) table: its own and the dataset's full-data rows."""
    return [r for r in records if r["dataset"] == dataset and r["ipc"] in (ipc, None)]


def plot(records: list[dict], path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = _tables(records)
    fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.5), squeeze=False)
    for ax, (dataset, ipc) in zip(axes[0], keys, strict=True):
        rows = _table_rows(records, dataset, ipc)
        methods = [m for m in METHODS if any(r["method"] == m for r in rows)]
        for offset, (key, label) in enumerate(
            [("accuracy_mean", "accuracy"), ("worst_group_accuracy", "worst group")]
        ):
            values = [
                np.mean([r["report"][key] for r in rows if r["method"] == m]) for m in methods
            ]
            ax.bar(np.arange(len(methods)) + 0.4 * offset, values, width=0.4, label=label)
        ax.set_xticks(np.arange(len(methods)) + 0.2, methods, rotation=30)
        ax.set_title(f"{dataset}, " + (f"IPC {ipc}" if ipc else "full data"))
        ax.set_ylim(0, 100)
    axes[0][0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def run_missing(args: argparse.Namespace, records: list[dict], path: pathlib.Path) -> list[dict]:
    """Runs every requested (dataset, IPC, seed, method) not yet in `records`, merging each
    into the results JSON at `path` as it finishes; the records after the last merge."""
    command, machine = harness.command("robust_gain"), harness.machine()
    overrides = harness.parse_overrides(args.set)
    for dataset in args.datasets.split(","):
        for ipc in map(int, args.ipcs.split(",")):
            for seed in map(int, args.seeds.split(",")):
                for method in args.methods.split(","):
                    # The full-data baseline depends on neither IPC nor the distillation seed.
                    point = (dataset, None, 0) if method == "full" else (dataset, ipc, seed)
                    config = harness.protocol_config(
                        dataset,
                        ipc=ipc,
                        seed=point[2],
                        iterations=args.iterations,
                        eval_models=args.eval_models,
                        eval_epochs=args.eval_epochs,
                        overrides=args.set,
                    )
                    if method == "full" and args.full_epochs:
                        config.eval.epochs = args.full_epochs
                    config = method_config(method, config, frozenset(overrides))
                    resolved = harness.record_config(config, depends_on(method))
                    settings = {
                        # A start row is the set before any iteration.
                        "iterations": 0 if method.startswith("start") else args.iterations,
                        "eval": f"{config.eval.num_models}x{config.eval.epochs} epochs",
                        "set": overrides,
                    }
                    fields = dict(zip(("dataset", "ipc", "seed"), point, strict=True))
                    key = record_key({**fields, "method": method, "settings": settings})
                    if harness.current_record(records, record_key, key, resolved):
                        continue
                    timer = harness.Timer()
                    # Only the distilling methods write there; an interrupted one resumes. Its
                    # name digests the resolved config too: a run under other defaults is
                    # another run.
                    workdir = harness.kept_workdir(
                        args.workdir,
                        (dataset, f"ipc{point[1]}", f"seed{point[2]}", method),
                        {**settings, "config": resolved},
                    )
                    timer.add(harness.logged_seconds(workdir))  # A resumed run's earlier share.
                    result = run_method(method, config, workdir)
                    record = {
                        **fields, "method": method, "seconds": timer(), "report": result,
                        "settings": settings, "config": resolved, "command": command,
                        "machine": machine,
                    }  # fmt: skip
                    records = harness.merge_results(path, [record], key=record_key)
                    print(
                        f"{dataset} ipc={ipc} seed={seed} {method}: acc "
                        f"{result['accuracy_mean']:.1f}, worst group "
                        f"{result.get('worst_group_accuracy', float('nan')):.1f}, minority "
                        f"{result.get('minority_accuracy', float('nan')):.1f} (mean over "
                        f"classes; worst class "
                        f"{result.get('worst_group_accuracy_rare', float('nan')):.1f}) "
                        f"({timer():.0f} s)",
                        flush=True,
                    )
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="digits,digits+rare")
    parser.add_argument("--ipcs", default="1,10")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--eval-models", type=int, default=3)
    parser.add_argument("--eval-epochs", type=int, default=150)
    parser.add_argument("--full-epochs", type=int, default=0, help="full data; 0 = eval-epochs")
    harness.add_results_arguments(parser, "robustness")
    harness.add_workdir_argument(parser, "robust_gain")
    args = parser.parse_args()
    unknown = set(args.methods.split(",")) - set(METHODS)
    if unknown:
        parser.error(f"unknown methods {sorted(unknown)}; choose from {METHODS}")
    out = pathlib.Path(args.out)
    records = harness.load_results(out.with_suffix(".json"), [])
    if not args.render:
        records = run_missing(args, records, out.with_suffix(".json"))
        if records:
            plot(records, out.with_suffix(".png"))
    out.with_suffix(".md").write_text(summarise(records, out))


if __name__ == "__main__":
    main()
