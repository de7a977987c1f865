"""Matching families side by side at equal CPU time: gradient, distribution, risk and krr.

For every dataset (a shipped config's name, optionally with a robustness suffix such as
'+rare'), IPC, seed and family, the family's settings (`FAMILY_SETTINGS`) go on the dataset's
shipped config; its seconds per iteration are measured here (the jitted step on the real data,
the median over at least 3 iterations and 30 seconds after a compiling one,
`median_step_seconds`); the run then gets
`budget / seconds-per-iteration` iterations, distils with `jaxdd.distill` (the set selected on
the validation split at half and at the end) and is scored by the shared protocol
(`eval-models` networks x `eval-epochs`, `jaxdd.report`). The random real subset of the same
size is scored beside it by the same evaluator. `--risks=mean,cvar` runs ERM and robust for
each family. Run from the repository root:

  python -m benchmarks.families --datasets=digits --ipcs=1,10 --seeds=0 --budget-s=180

A list of budgets (`--budget-s=1800,7200`) is one run per family scored at each: the run
distils to the first budget's iterations, is scored, then resumes in the same workdir (under
`--workdir`, kept between invocations) to the next, so the longer budget's trajectory is the
uninterrupted one (resume is bit-identical) and its table also shows where the curve stood
earlier. The seconds per iteration are measured once, at the first budget, and reused.

writes benchmarks/results/families.md (linking the hand-written families_findings.md) and
families.json (every run, with its command and machine); each finished run is merged at once,
so an interrupted benchmark resumes with the same command; `--render` rewrites the .md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import pathlib

import jax
import numpy as np

import jaxdd
from benchmarks import harness
from configs import default as default_config
from jaxdd import build, checkpoint, report, synthetic
from jaxdd import config as config_lib


def preset_settings(method: str) -> tuple[str, ...]:
    """The distillation settings (`syn.*`, `match.*`) that the `configs/default.py` preset
    `method` changes on the default one, as `--set` overrides."""
    base, preset = default_config.get_config(), default_config.get_config(method)
    return tuple(
        f"{section}.{key}={value}"
        for section in ("syn", "match")
        for key, value in preset[section].items()
        if value != base[section][key]
    )


# Each family's settings on a dataset's shipped config (the config's own: DSA's gradient
# matching with DC's loops). distribution: DM's lr_img; krr: FRePo's pool of 10 networks and
# the image lr chosen on digits' validation split (README, "Matching families"); risk: a
# 10-step unroll of a fresh network at the shipped image lr; idm: the `:idm` preset's
# distillation settings (factorized f = 2, distribution matching through a pool of networks
# trained on real data, IDM's cross-entropy term).
FAMILY_SETTINGS = {
    "gradient": (),
    "distribution": ("match.family=distribution", "syn.lr=1.0"),
    "risk": ("match.family=risk",),
    # syn.lr 1.0, chosen on validation at the budgets the tables run (1000-2000 iterations:
    # families_findings.md, "krr's image lr"); at 100 iterations 0.1 scored higher (krr_lr.md).
    "krr": ("match.family=krr", "match.net_pool=10", "syn.lr=1.0"),
    "idm": preset_settings("idm"),
}
RISKS = {"mean": "erm", "cvar": "robust"}


# Overrides that act only on distillation: the random subset's record ignores them, so it is
# shared by every run of its data, IPC and seed (a pixel and a factorized run, say).
DISTILLATION_ONLY = ("syn.", "match.", "robust.", "cluster.")


def settings_key(record: dict) -> str:
    """A record's `--set` overrides, canonical: runs of one family with different settings (a
    pixel and a factorized set, say) are different records, never one replacing the other."""
    overrides = record.get("set", {})
    if record["family"] == "random":
        overrides = {k: v for k, v in overrides.items() if not k.startswith(DISTILLATION_ONLY)}
    return json.dumps(overrides, sort_keys=True)


def record_key(record: dict) -> tuple:
    """(dataset, ipc, seed, family, risk, settings, budget_s): what one record stands for."""
    fields = ("dataset", "ipc", "seed", "family", "risk")
    return (*(record[field] for field in fields), settings_key(record), record["budget_s"])


def median_step_seconds(
    step, *, min_steps: int = 3, min_seconds: float = 30.0, max_steps: int = 25, clock=None
) -> float:
    """Median wall time of `step()` (one blocking call) over at least `min_steps` calls and
    `min_seconds` of them, at most `max_steps`: a fast step is timed many times, so that a slow
    spell outvoted by the rest does not set the budget (a median of 3 once measured 4.2 s where
    the run's steps then logged 2.6 s), and a slow one (DSA at IPC 10, minutes a step) only
    `min_steps` times."""
    clock = clock or harness.Timer
    times: list[float] = []
    while len(times) < min_steps or (sum(times) < min_seconds and len(times) < max_steps):
        timer = clock()
        step()
        times.append(timer())
    return float(np.median(times))


def seconds_per_iteration(config) -> float:
    """`median_step_seconds` of the config's jitted step on its real data, after a warm-up."""
    run = harness.initial_run(config)
    state, real, step_fn = run.state, run.real, run.step_fn
    state, _ = jax.block_until_ready(step_fn(state, jax.random.key(0), real))
    keys = itertools.count(1)

    def step() -> None:
        nonlocal state
        state, _ = jax.block_until_ready(step_fn(state, jax.random.key(next(keys)), real))

    return median_step_seconds(step)


def family_config(args, dataset: str, ipc: int, seed: int, family: str):
    return harness.protocol_config(
        dataset, ipc=ipc, seed=seed, iterations=1, eval_models=args.eval_models,
        eval_epochs=args.eval_epochs, overrides=[*FAMILY_SETTINGS.get(family, ()), *args.set],
    )  # fmt: skip


def run_random(args, dataset: str, ipc: int, seed: int) -> dict:
    """The random real subset of the runs' size, scored by the same evaluator."""
    config = family_config(args, dataset, ipc, seed, "random")
    data, rare = build.load_data(config)
    images, labels = synthetic.coreset(
        "random", data.train.images, data.train.labels, ipc=ipc, seed=seed
    )
    shape = images.shape[2:]
    result = report.evaluate_set(config, data, rare, images.reshape(-1, *shape), labels.reshape(-1))
    return {"report": result}


def workdir(root, dataset: str, ipc: int, seed: int, family: str, risk: str, overrides, config):
    """One run's workdir under `--workdir`: its key and a digest of its overrides and of the
    resolved config it distils (`config.resolved`), so that a run under other defaults is
    another run, never refused by the checkpoint of this one."""
    parts = (dataset, f"ipc{ipc}", f"seed{seed}", family, risk)
    settings = {"set": overrides, "config": config_lib.resolved(config)}
    return harness.kept_workdir(root, parts, settings)


def stage_config(config) -> dict:
    """What a stage's record stands for (`harness.record_config`), the selection interval left
    out: it follows the budget, which the record's key holds."""
    resolved = harness.record_config(config)
    resolved["eval"].pop("select_every", None)
    return resolved


def run_stages(config, budgets, done: dict, workdir):
    """Yields (budget, result) for each budget in `budgets` (ascending) not already in `done`
    (budget -> record): one run of `config` in `workdir`, resumed from stage to stage."""
    measured = [r["seconds_per_iteration"] for r in done.values()]
    per_iteration = measured[0] if measured else seconds_per_iteration(config)
    for budget in budgets:
        if budget in done:
            continue
        iterations = max(2, int(budget // per_iteration))
        latest = checkpoint.create_manager(workdir / "checkpoints").latest_step()
        if latest is not None and latest > iterations:
            raise SystemExit(
                f"{workdir} holds a checkpoint at iteration {latest}, past budget {budget:g} s "
                f"({iterations} iterations), which has no record: remove the workdir to rerun."
            )
        config.num_iterations = iterations
        config.eval.select_every = max(1, iterations // 2)
        config.checkpoint.every = max(1, iterations // 10)  # An interrupted stage resumes.
        timer = harness.Timer()
        result = jaxdd.distill(config, workdir).report
        yield (
            budget,
            {
                "report": result,
                "seconds_per_iteration": per_iteration,
                "iterations": iterations,
                "distill_and_eval_seconds": timer(),
            },
        )


def row_kind(record: dict) -> tuple[str, str]:
    """(how the set is parameterised, its label type) of a record: what a table never mixes.
    Read from the record's resolved config (a family's own settings, idm's factorized set,
    are not `--set` overrides), else, in records made before it was stored, its overrides."""
    settings = {**record.get("set", {})}
    for key, value in record.get("config", {}).get("syn", {}).items():
        settings[f"syn.{key}"] = value
    param = "pixels" if record["family"] == "random" else settings.get("syn.param", "pixels")
    if param == "factorized":
        param = f"factorized f={settings.get('syn.factor', 1)}"
    return param, record["report"].get("label_type", "hard")


# Overrides that `row_kind`'s columns already show.
SHOWN_BY_KIND = ("syn.param", "syn.factor", "syn.learn_labels")


def other_settings(record: dict) -> str:
    """A record's `--set` overrides beyond its row kind's ('-': none): runs that differ in them
    are other rows, never pooled as if they were seeds of one setting. The random subset's
    distillation-only overrides do not apply to it (`settings_key`)."""
    overrides = json.loads(settings_key(record))
    shown = [f"{k}={v}" for k, v in sorted(overrides.items()) if k not in SHOWN_BY_KIND]
    return ", ".join(shown) or "-"


def summarise(records: list[dict], out: pathlib.Path) -> str:
    commands = sorted({r["command"] for r in records})
    lines = [
        "# Matching families at equal CPU time",
        "",
        "Commands (each row records the one that produced it):",
        *[f"- `{command}`" for command in commands],
        "",
        f"{harness.machines_line(records, labelled=True)}.  ",
        "Each family runs budget / (its seconds per iteration on this machine) iterations of "
        "its settings (`benchmarks/families.py` `FAMILY_SETTINGS`) on the dataset's shipped "
        "config, the set selected on the validation split; accuracies are test %, mean +- "
        "std over seeds of the networks' mean. `random` is the random real subset the runs "
        "start from, by the same evaluator. Equal time is equal on one machine only: the "
        "machine column says where each row ran (its seeds', in order), and rows of different "
        "machines ran different iteration counts for the same budget.",
        "",
        *harness.findings_link(out),
    ]
    labels = harness.machine_labels(records)
    tables = sorted({(r["dataset"], r["ipc"], r["budget_s"]) for r in records
                     if r["family"] != "random"})  # fmt: skip
    for dataset, ipc, budget in tables:
        rows = [
            r for r in records
            if record_key(r)[:2] == (dataset, ipc) and r["budget_s"] == budget
            and r["family"] != "random"
        ]  # fmt: skip
        # The random subset does not depend on the budget: in every table of its data and IPC.
        rows += list({r["seed"]: r for r in records if record_key(r)[:2] == (dataset, ipc)
                      and r["family"] == "random"}.values())  # fmt: skip
        continued = sorted({r["continued_from"] for r in rows if "continued_from" in r})
        lines += [
            f"## {dataset}, IPC {ipc}, budget {budget:.0f} s of distillation per run",
            "",
            *(
                [
                    f"The runs of the {', '.join(f'{b:.0f}' for b in continued)} s table, "
                    "distilled on to this budget (resumed from their workdirs, or rerun from the "
                    "start where a workdir was not kept: the same trajectory).",
                    "",
                ]
                if continued
                else []
            ),  # fmt: skip
            "| family | objective | set | labels | other settings | seeds | iterations "
            "| s / iteration | accuracy | worst group (test K-means) "
            "| minority, mean over classes | validation accuracy | machine |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        order = {name: i for i, name in enumerate(["random", *FAMILY_SETTINGS, "-", *RISKS])}
        grouped: dict[tuple, list[dict]] = {}
        for r in rows:
            key = (r["family"], r["risk"], row_kind(r), other_settings(r))
            grouped.setdefault(key, []).append(r)
        for (family, risk, kind, settings), runs in sorted(
            grouped.items(), key=lambda item: (order[item[0][0]], order[item[0][1]], *item[0][2:])
        ):
            reports = [harness.with_rare_means(r["report"]) for r in runs]

            def cell(key, reports=reports):
                values = np.array([rep[key] for rep in reports if key in rep], float)
                return f"{values.mean():.1f} ± {values.std():.1f}" if len(values) else ""

            iterations = "/".join(str(r.get("iterations", "")) for r in runs)
            per_iteration = "/".join(f"{r['seconds_per_iteration']:.2f}" for r in runs
                                     if "seconds_per_iteration" in r)  # fmt: skip
            lines.append(
                f"| {family} | {RISKS.get(risk, '-')} | {kind[0]} | {kind[1]} | {settings} "
                f"| {len(runs)} "
                f"| {iterations} | {per_iteration} | {cell('accuracy_mean')} "
                f"| {cell('worst_group_accuracy')} | {cell('minority_mean')} "
                f"| {cell('validation_accuracy_mean')} "
                f"| {'/'.join(harness.machine_label(r, labels) for r in runs)} |"
            )
        lines.append("")
    return "\n".join(lines) + "\n"


def run_point(args, path, records, budgets, dataset: str, ipc: int, seed: int) -> list[dict]:
    """The random subset and every family x risk of one (dataset, ipc, seed) at each budget not
    yet in `records`, each merged into `path` as it finishes; the records after."""
    command, machine = harness.command("families"), harness.machine()
    point = {"dataset": dataset, "ipc": ipc, "seed": seed}
    overrides = harness.parse_overrides(args.set)

    def store(key_fields: dict, result: dict, config: dict) -> list[dict]:
        record = {**point, **key_fields, "command": command, "machine": machine,
                  "set": overrides, "config": config, **result}  # fmt: skip
        print(
            f"{dataset} ipc={ipc} seed={seed} {record['family']} {record['risk']} "
            f"{record['budget_s']:g} s: acc {record['report']['accuracy_mean']:.1f} "
            f"({record.get('iterations', '-')} iterations)",
            flush=True,
        )
        return harness.merge_results(path, [record], key=record_key)

    def settings(family: str) -> str:
        return settings_key({"family": family, "set": overrides})

    random_point = (dataset, ipc, seed, "random", "-", settings("random"))
    random_config = harness.record_config(
        family_config(args, dataset, ipc, seed, "random"), harness.UNDISTILLED_SECTIONS
    )

    def point_of(record: dict) -> tuple:  # The random subset's key: it has no budget.
        return record_key(record)[:6]

    if not harness.current_record(records, point_of, random_point, random_config):
        random_key = {"family": "random", "risk": "-", "budget_s": budgets[0]}
        records = store(random_key, run_random(args, dataset, ipc, seed), random_config)
    for family in args.families.split(","):
        for risk in args.risks.split(","):
            key = (dataset, ipc, seed, family, risk)
            config = family_config(args, dataset, ipc, seed, family)
            config.robust.risk = risk
            resolved = stage_config(config)
            done = {}
            for budget in budgets:
                record = harness.current_record(
                    records, record_key, (*key, settings(family), budget), resolved
                )
                if record is not None:
                    done[budget] = record
            run_dir = workdir(args.workdir, *key, args.set, config)
            for budget, result in run_stages(config, budgets, done, run_dir):
                earlier = [b for b in budgets if b < budget]
                if earlier:
                    result["continued_from"] = earlier[-1]
                records = store(
                    {"family": family, "risk": risk, "budget_s": budget}, result, resolved
                )
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="digits")
    parser.add_argument("--ipcs", default="1,10")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--families", default=",".join(FAMILY_SETTINGS))
    parser.add_argument("--risks", default="mean", help="mean (ERM), cvar (robust) or both")
    parser.add_argument(
        "--budget-s", default="180", help="seconds of distillation; a list scores one run at each"
    )
    harness.add_workdir_argument(
        parser, "families", help="the runs' workdirs (kept, so a longer budget resumes them)"
    )
    parser.add_argument("--eval-models", type=int, default=3)
    parser.add_argument("--eval-epochs", type=int, default=300)
    harness.add_results_arguments(parser, "families")
    args = parser.parse_args()
    unknown = set(args.families.split(",")) - set(FAMILY_SETTINGS)
    if unknown or set(args.risks.split(",")) - set(RISKS):
        parser.error(f"families in {sorted(FAMILY_SETTINGS)}, risks in {sorted(RISKS)}")
    out = pathlib.Path(args.out)
    path = out.with_suffix(".json")
    records = harness.load_results(path, [])
    if not args.render:
        budgets = sorted(map(float, args.budget_s.split(",")))
        for dataset in args.datasets.split(","):
            for ipc in map(int, args.ipcs.split(",")):
                for seed in map(int, args.seeds.split(",")):
                    records = run_point(args, path, records, budgets, dataset, ipc, seed)
    out.with_suffix(".md").write_text(summarise(records, out))
    print(summarise(records, out))


if __name__ == "__main__":
    main()
