"""What the group-robust objective buys: one table across the robustness results files.

The robustness runs live in three results files of `benchmarks.robust_gain`, each its own
protocol: `robustness` (the shipped default, gradient matching), `robustness_dm` (distribution
matching over K = 4 K-means groups per class, DM's lr_img 1.0) and `robustness_dm_k1` (the
field's DM: one group per class, DM's real batch). This script reads them (it runs nothing)
and writes, per benchmark at IPC 10:

- the minority and majority accuracy (means over classes) of the random real subset, the
  field's DM, jaxdd's grouped ERM and CVaR;
- paired differences by seed with 95 % Student-t intervals: CVaR − ERM (the same start),
  grouped ERM − the field's DM (what matching every subgroup buys), and DM's CVaR set − the
  shipped default's (gradient matching) CVaR set.

Which records make a column is fixed here, not guessed: DM's rows are those whose `--set` is
exactly `DM_SET` (rows with more overrides, e.g. another `robust.alpha`, are other
experiments, shown in `robustness_dm.md`); the field's DM rows add `FIELD_SET` and, per
benchmark, the largest `match.num_real` recorded (DM's 256 where a class holds that many;
digits' classes do not, so 128); the gradient rows have no `--set`.

Run from the repository root:

  python -m benchmarks.robust_summary            # writes benchmarks/results/robust_summary.md, .png
  python -m benchmarks.robust_summary --readme   # and rewrites README.md's table

README.md's table sits between the markers `<!-- robust_summary:begin -->` and
`<!-- robust_summary:end -->`.
"""

from __future__ import annotations

import argparse
import json
import pathlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from benchmarks import harness
from benchmarks.robust_gain import set_overrides

DATASETS = (
    "digits+rare", "digits+color", "fashion_mnist+rare", "fashion_mnist+color", "digits+rare-blur"
)  # fmt: skip
DM_SET = {"match.family": "distribution", "syn.lr": 1.0}
FIELD_SET = {**DM_SET, "cluster.num_clusters": 1}
BEGIN, END = "<!-- robust_summary:begin -->", "<!-- robust_summary:end -->"
HEADER = (
    "| benchmark | seeds | random subset (seeds) | field's DM: minority / majority (seeds) "
    "| jaxdd ERM over groups: minority / majority | jaxdd CVaR(0.5): minority / majority "
    "| robust − ERM, minority | robust − ERM, majority |"
)
SEPARATOR = "|" + "---|" * (HEADER.count(" | ") + 1)

Runs = dict[int, dict[str, Any]]  # seed -> eval.json with harness.with_rare_means' keys


def is_dm(overrides: dict[str, Any]) -> bool:
    """A `robustness_dm` run of the table's experiment: `--set` exactly `DM_SET`."""
    return overrides == DM_SET


def is_default(overrides: dict[str, Any]) -> bool:
    """A `robustness` run of the shipped default: no `--set`."""
    return not overrides


def runs(
    records: Sequence[dict[str, Any]],
    dataset: str,
    method: str,
    accept: Callable[[dict[str, Any]], bool],
    *,
    ipc: int = 10,
) -> Runs:
    """The reports of `method`'s runs on `dataset` at `ipc` whose `--set` `accept`s, by seed.
    Two accepted runs of one seed are an error: the selection must name one experiment."""
    out: Runs = {}
    for r in records:
        if r["dataset"] != dataset or r["method"] != method or r["ipc"] != ipc:
            continue
        if not accept(set_overrides(r)):
            continue
        if r["seed"] in out:
            raise ValueError(
                f"two {method} runs of {dataset} seed {r['seed']} match one column; make the "
                "selection in benchmarks/robust_summary.py name one experiment"
            )
        out[r["seed"]] = harness.with_rare_means(r["report"])
    return out


def field_runs(records: Sequence[dict[str, Any]], dataset: str) -> Runs:
    """The field's DM on `dataset`: `FIELD_SET` with the largest `match.num_real` recorded."""
    field = [
        r for r in records
        if r["dataset"] == dataset and r["method"] == "erm"
        and {k: v for k, v in set_overrides(r).items() if k != "match.num_real"} == FIELD_SET
    ]  # fmt: skip
    if not field:
        return {}
    largest = max(set_overrides(r).get("match.num_real", 0) for r in field)
    return runs(field, dataset, "erm", lambda s: s.get("match.num_real", 0) == largest)


def paired(after: Runs, before: Runs, key: str) -> list[float]:
    """after − before of `key`, seed by seed over the seeds both hold (sorted)."""
    return [
        after[s][key] - before[s][key]
        for s in sorted(set(after) & set(before))
        if key in after[s] and key in before[s]
    ]


def signed(value: float) -> str:
    """`value` to one decimal with its sign, the minus typeset as in README's tables."""
    return f"{value:+.1f}".replace("-", "−")


def interval(differences: Sequence[float]) -> str:
    """'+m ± h' (95 % t) for two or more, '+m' for one, '—' for none; the minus typeset."""
    return harness.interval_cell(differences, minus="−")


def mean(reports: Runs, key: str) -> str:
    values = [r[key] for r in reports.values() if key in r]
    return f"{np.mean(values):.1f}" if values else "—"


def pair_cell(reports: Runs) -> str:
    return f"{mean(reports, 'minority_mean')} / {mean(reports, 'majority_mean')}"


def columns(
    gradient: Sequence[dict], dm: Sequence[dict], field: Sequence[dict], dataset: str
) -> dict[str, Runs]:
    """Every column's runs of `dataset`, by seed: `erm` and `robust` from random real images
    (the same start per seed); `dm_shipped` and `gradient` the CVaR sets of DM and of the
    shipped default from the shipped start where run (`shipped_start`)."""
    return {
        # The random subset depends on no distillation setting: either file's rows.
        "random": {
            **runs(dm, dataset, "random", is_dm),
            **runs(gradient, dataset, "random", is_default),
        },
        "field": field_runs(field, dataset),
        "erm": runs(dm, dataset, "erm", is_dm),
        "robust": runs(dm, dataset, "robust", is_dm),
        "dm_shipped": runs(dm, dataset, shipped_start(dm, dataset, is_dm), is_dm),
        "gradient": runs(
            gradient, dataset, shipped_start(gradient, dataset, is_default), is_default
        ),
    }


def shipped_start(
    records: Sequence[dict],
    dataset: str,
    accept: Callable[[dict[str, Any]], bool],
    *,
    ipc: int = 10,
) -> str:
    """robust_gain's method for a CVaR set of `dataset` at `ipc` from the shipped configs'
    start (`syn.init=groups`): `robust+groups` where run, else `robust` (random real images)."""
    methods = {
        r["method"] for r in records
        if r["dataset"] == dataset and r["ipc"] == ipc and accept(set_overrides(r))
    }  # fmt: skip
    return "robust+groups" if "robust+groups" in methods else "robust"


def table_rows(gradient: Sequence[dict], dm: Sequence[dict], field: Sequence[dict]) -> list[str]:
    """README's table: one row per benchmark (`DATASETS`)."""
    lines = []
    for dataset in DATASETS:
        c = columns(gradient, dm, field, dataset)
        seeds = sorted(set(c["erm"]) & set(c["robust"]))
        field_cell = f"{pair_cell(c['field'])} ({len(c['field'])})" if c["field"] else "not run"
        cells = [
            dataset, str(len(seeds)), f"{mean(c['random'], 'minority_mean')} ({len(c['random'])})",
            field_cell, pair_cell(c["erm"]), pair_cell(c["robust"]),
            interval(paired(c["robust"], c["erm"], "minority_mean")),
            interval(paired(c["robust"], c["erm"], "majority_mean")),
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def comparison_lines(
    gradient: Sequence[dict], dm: Sequence[dict], field: Sequence[dict]
) -> list[str]:
    """The cross-file paired differences, per benchmark, with the per-seed values."""
    comparisons = (
        ("robust", "erm", "jaxdd CVaR − jaxdd ERM (DM, same start)"),
        ("erm", "field", "jaxdd grouped ERM − the field's DM"),
        ("dm_shipped", "gradient", "DM's CVaR set − the shipped default's (gradient) CVaR set"),
    )
    keys = (
        ("minority_mean", "minority"),
        ("majority_mean", "majority"),
        ("accuracy_mean", "accuracy"),
        ("validation_minority_accuracy", "validation minority"),
    )
    lines = []
    for dataset in DATASETS:
        c = columns(gradient, dm, field, dataset)
        lines += [f"### {dataset}", ""]
        for after, before, title in comparisons:
            seeds = sorted(set(c[after]) & set(c[before]))
            if not seeds:
                lines.append(f"- {title}: not run")
                continue
            note = ""
            if before == "gradient":  # Which start each family's CVaR set came from.
                starts = (
                    shipped_start(dm, dataset, is_dm),
                    shipped_start(gradient, dataset, is_default),
                )
                note = f"; DM `{starts[0]}`, gradient `{starts[1]}`"
            lines.append(f"- {title} (seeds {', '.join(map(str, seeds))}{note}):")
            for key, label in keys:
                d = paired(c[after], c[before], key)
                if d:
                    per_seed = ", ".join(map(signed, d))
                    lines.append(f"  - {label}: **{interval(d)}** ({per_seed})")
        lines.append("")
    return lines


def summarise(gradient: Sequence[dict], dm: Sequence[dict], field: Sequence[dict]) -> str:
    lines = [
        "# What the group-robust objective buys, across the robustness results",
        "",
        "Generated by `python -m benchmarks.robust_summary` from `robustness.json` (gradient "
        "matching, the shipped default), `robustness_dm.json` (DM over K = 4 groups per "
        "class, `--set` exactly "
        + ", ".join(f"`{k}={v}`" for k, v in DM_SET.items())
        + ") and `robustness_dm_k1.json` (the field's DM: one group per class, the largest "
        "real batch recorded). IPC 10; minority and majority accuracies are means over "
        "classes, %; differences are paired by seed, mean ± 95 % t-interval half-width.",
        "",
        HEADER,
        SEPARATOR,
        *table_rows(gradient, dm, field),
        "",
        "## Paired differences",
        "",
        *comparison_lines(gradient, dm, field),
    ]
    return "\n".join(lines).rstrip() + "\n"


# The plot's bars: column -> legend label.
PLOTTED = {
    "random": "random real subset",
    "field": "field's DM (one group per class)",
    "erm": "jaxdd ERM over groups",
    "robust": "jaxdd CVaR(0.5) over groups",
}


def plot(
    gradient: Sequence[dict], dm: Sequence[dict], field: Sequence[dict], path: pathlib.Path
) -> None:
    """Minority accuracy per benchmark, one bar per `PLOTTED` column (mean over seeds, the
    bar's line spanning the seeds' min to max); a column not run has no bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 3.8))
    width = 0.8 / len(PLOTTED)
    by_dataset = [columns(gradient, dm, field, dataset) for dataset in DATASETS]
    for offset, (column, label) in enumerate(PLOTTED.items()):
        for x, dataset_columns in enumerate(by_dataset):
            reports = dataset_columns[column].values()
            values = [r["minority_mean"] for r in reports if "minority_mean" in r]
            if not values:
                continue
            ax.bar(x + offset * width, np.mean(values), width, color=f"C{offset}", label=label)
            label = None  # One legend entry per column.
            ax.vlines(x + offset * width, min(values), max(values), color="black", lw=1)
    ax.set_xticks(np.arange(len(DATASETS)) + 0.4 - width / 2, DATASETS)
    ax.set_ylabel("minority accuracy, mean over classes (%)")
    ax.set_ylim(0, 112)  # Room above 100 % for the legend.
    ax.set_yticks(range(0, 101, 20))
    ax.set_title("IPC 10, distribution matching, 1000 updates; bars: mean, lines: seeds' range")
    ax.legend(loc="upper center", ncol=len(PLOTTED), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def rewrite_readme(readme: pathlib.Path, table: Sequence[str]) -> None:
    """Replaces what lies between README's `BEGIN` and `END` markers with `table`."""
    text = readme.read_text()
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise ValueError(
            f"{readme} needs one {BEGIN} line and one {END} line after it around the table"
        )
    head, rest = text.split(BEGIN)
    _, tail = rest.split(END)
    readme.write_text(head + BEGIN + "\n" + "\n".join(table) + "\n" + END + tail)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    results = harness.RESULTS
    parser.add_argument("--gradient", default=str(results / "robustness"))
    parser.add_argument("--dm", default=str(results / "robustness_dm"))
    parser.add_argument("--field", default=str(results / "robustness_dm_k1"))
    parser.add_argument("--out", default=str(results / "robust_summary"))
    parser.add_argument("--readme", nargs="?", const=str(harness.REPO / "README.md"))
    args = parser.parse_args()
    files = []
    for path in (args.gradient, args.dm, args.field):
        path = pathlib.Path(path).with_suffix(".json")
        if not path.exists():
            parser.error(f"{path} does not exist; run benchmarks.robust_gain with --out first")
        files.append(json.loads(path.read_text()))
    text = summarise(*files)
    pathlib.Path(args.out).with_suffix(".md").write_text(text)
    plot(*files, pathlib.Path(args.out).with_suffix(".png"))
    print(text)
    if args.readme:
        table = [HEADER, SEPARATOR, *table_rows(*files)]
        rewrite_readme(pathlib.Path(args.readme), table)


if __name__ == "__main__":
    main()
