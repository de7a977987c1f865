"""Robustness benchmark: baselines x datasets (and rare-subpopulation versions) x IPC x seeds.

Every method is evaluated with the same protocol and the same evaluation seeds
(`train.test_report`): random real subset, herding and k-center coresets (flattened normalised
pixels), ERM distillation (robust.risk=mean), robust distillation (robust.risk=cvar) and the
full real training set. `erm+k_center` and `robust+k_center` distill from a k-center coreset
(`syn.init=k_center`) instead of random real images. Synthetic sets are selected on the
validation split only. The full-data baseline depends on neither IPC nor the distillation
seed: it runs once per dataset and is shown in each of its IPC tables.

  python benchmarks/robustness.py --datasets=digits,digits+rare --ipcs=1,10 --seeds=0

writes benchmarks/results/robustness.md (means +- std over seeds), robustness.json (every run)
and robustness.png. Results are appended per run to the JSON, so an interrupted benchmark can
be resumed with the same command.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import json
import pathlib
import platform
import shlex
import sys
import tempfile
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from jaxdd import baselines, train  # noqa: E402

METHODS = (
    "random",
    "herding",
    "k_center",
    "erm",
    "robust",
    "erm+k_center",
    "robust+k_center",
    "full",
)
# Reported columns: eval.json key -> table header.
COLUMNS = {
    "accuracy_mean": "accuracy",
    "worst_group_accuracy": "worst group (test K-means)",
    "worst_class_accuracy": "worst class",
    "worst_group_accuracy_rare": "minority (rare) worst group",
}


def parse_overrides(items: list[str]) -> dict[str, object]:
    """`field=value` strings (values as Python literals, else strings) -> {field: value}."""
    overrides = {}
    for item in items:
        field, _, value = item.partition("=")
        try:
            overrides[field.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            overrides[field.strip()] = value.strip()
    return overrides


def apply_overrides(config, overrides: dict[str, object]) -> None:
    for field, value in overrides.items():
        *parents, leaf = field.split(".")
        node = config
        for part in parents:
            node = node[part]
        if leaf not in node:
            raise ValueError(f"unknown config field {field!r}")
        node[leaf] = value


def make_config(dataset: str, ipc: int, seed: int, args) -> object:
    name, _, rare = dataset.partition("+")
    config = importlib.import_module(f"configs.{name}").get_config()
    config.ipc, config.seed = ipc, seed
    config.num_steps = args.steps
    config.eval.num_models = args.eval_models
    config.eval.epochs = args.eval_epochs
    config.eval.select_every = max(1, args.steps // 2)
    config.eval.select_num_models = 2
    config.checkpoint.every_steps = args.steps
    if ipc == 1:
        config.match.net_train_steps = 1  # DC's inner loop for IPC 1.
    if rare:
        config.data.rare = "invert"
    apply_overrides(config, parse_overrides(getattr(args, "set", None) or []))
    return config


def run_method(method: str, config, workdir: pathlib.Path) -> dict:
    risk, _, init = method.partition("+")
    if risk in ("erm", "robust"):
        config.robust.risk = "mean" if risk == "erm" else "cvar"
        if init:
            config.syn.init = init
        return train.distill_run(config, workdir).report
    dataset, rare = train.load_data(config)
    train_set = dataset.train
    if method == "full":
        images, labels = train_set.images, train_set.labels
    else:
        features = train_set.images.reshape(len(train_set), -1)
        index = baselines.select(
            method, features, train_set.labels, ipc=config.ipc, seed=config.seed
        )
        images, labels = train_set.images[index], train_set.labels[index]
    return train.test_report(
        config,
        dataset,
        images,
        labels,
        partitions=train.test_partitions(config, dataset, rare),
        seeds=train.eval_seeds(config, config.eval.num_models),
    )


def summarise(records: list[dict]) -> str:
    commands = sorted({r.get("command", "") for r in records} - {""})
    lines = [
        "# Robustness benchmark",
        "",
        "Commands (each row records the one that produced it):",
        *[f"- `{command}`" for command in commands],
        "",
        f"Machine: {cpu_name()} CPU, {_cores()} cores, no accelerator; summed run time of the "
        f"rows {sum(r['seconds'] for r in records) / 60:.1f} min.  ",
        "Protocol: the dataset's shipped config (ConvNet; depth 2 on 8x8 digits), the "
        "synthetic set selected on the validation split; networks trained from scratch per "
        "method with SGD momentum 0.9, lr 0.01 decayed x0.1 at half, DSA. Each table lists its "
        "distillation steps, evaluation networks x epochs and config overrides. Accuracies in % "
        "on the test split, mean +- std over distillation seeds (each value itself a mean over "
        "the networks).",
        "",
    ]
    for dataset, ipc in _tables(records):
        rows = _table_rows(records, dataset, ipc)
        columns = [c for c in COLUMNS if any(c in r["report"] for r in rows)]
        lines += [f"## {dataset}, " + (f"IPC {ipc}" if ipc else "full data only"), ""]
        lines.append("| method | seeds | " + " | ".join(COLUMNS[c] for c in columns) + " |")
        lines.append("|---" * (len(columns) + 2) + "|")
        for method in METHODS:
            runs = [r for r in rows if r["method"] == method]
            if not runs:
                continue
            cells = []
            for c in columns:
                values = np.array([r["report"][c] for r in runs if c in r["report"]], float)
                cells.append(f"{values.mean():.1f} ± {values.std():.1f}" if len(values) else "")
            lines.append(f"| {method} | {len(runs)} | " + " | ".join(cells) + " |")
        lines.append("")
        settings = sorted({json.dumps(r.get("settings", {}), sort_keys=True) for r in rows})
        for text in settings:
            used = [
                r["method"]
                for r in rows
                if json.dumps(r.get("settings", {}), sort_keys=True) == text
            ]
            lines.append(f"Settings of {', '.join(sorted(set(used)))}: `{text}`  ")
        lines.append("")
    return "\n".join(lines) + "\n"


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


def cpu_name() -> str:
    """The CPU model (from /proc/cpuinfo where there is one)."""
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cores() -> int:
    import os

    return os.cpu_count() or 0


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="digits,digits+rare")
    parser.add_argument("--ipcs", default="1,10")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--eval-models", type=int, default=3)
    parser.add_argument("--eval-epochs", type=int, default=150)
    parser.add_argument("--full-epochs", type=int, default=0, help="full data; 0 = eval-epochs")
    parser.add_argument("--set", action="append", default=[], help="config field=value")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "robustness"))
    args = parser.parse_args()
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    results_path = out.with_suffix(".json")
    records = json.loads(results_path.read_text()) if results_path.exists() else []
    command = "python benchmarks/robustness.py " + shlex.join(sys.argv[1:])
    for dataset in args.datasets.split(","):
        for ipc in map(int, args.ipcs.split(",")):
            for seed in map(int, args.seeds.split(",")):
                for method in args.methods.split(","):
                    if method not in METHODS:
                        raise SystemExit(f"unknown method {method!r}; choose from {METHODS}")
                    # The full-data baseline depends on neither IPC nor the distillation seed.
                    key = (dataset, None, 0, method) if method == "full" else (
                        dataset, ipc, seed, method
                    )  # fmt: skip
                    done = any(
                        (r["dataset"], r["ipc"], r["seed"], r["method"]) == key for r in records
                    )
                    if done:
                        continue
                    t = time.time()
                    config = make_config(dataset, ipc, key[2], args)
                    if method == "full" and args.full_epochs:
                        config.eval.epochs = args.full_epochs
                    settings = {
                        "steps": args.steps,
                        "eval": f"{config.eval.num_models}x{config.eval.epochs} epochs",
                        "set": parse_overrides(args.set),
                    }
                    with tempfile.TemporaryDirectory() as workdir:
                        report = run_method(method, config, pathlib.Path(workdir))
                    records.append(
                        {"dataset": dataset, "ipc": key[1], "seed": key[2], "method": method,
                         "seconds": time.time() - t, "report": report, "settings": settings,
                         "command": command}
                    )  # fmt: skip
                    results_path.write_text(json.dumps(records, indent=1) + "\n")
                    print(
                        f"{dataset} ipc={ipc} seed={seed} {method}: acc "
                        f"{report['accuracy_mean']:.1f}, worst group "
                        f"{report.get('worst_group_accuracy', float('nan')):.1f}, minority "
                        f"{report.get('worst_group_accuracy_rare', float('nan')):.1f} "
                        f"({time.time() - t:.0f} s)",
                        flush=True,
                    )
    summary = summarise(records)
    findings = out.with_name(out.name + "_findings.md")  # Written by hand after the runs.
    if findings.exists():
        summary += "\n" + findings.read_text()
    out.with_suffix(".md").write_text(summary)
    plot(records, out.with_suffix(".png"))


if __name__ == "__main__":
    main()
