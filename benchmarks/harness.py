"""What every benchmark shares: configs, the machine header, timing, memory and results files.

Benchmarks run from the repository root as `python -m benchmarks.<name>` (so `jaxdd` and
`benchmarks` import without any `sys.path` edits) and call only jaxdd's public API and its
`build` / `report` factories. This module holds the pieces they have in common:

- `load_config` / `protocol_config`: a shipped config by name, and the robustness protocol's
  config (the one `robust_gain` and `ablation` share);
- `machine` / `machine_header`: the CPU, cores, jax version and backend, and the host allocator
  (`LD_PRELOAD` / `MALLOC_CONF`, or glibc's `GLIBC_TUNABLES`), recorded with every result;
- `Timer`, `timed`, `host_cost`, `compiled_memory_bytes`: wall time, host-side cost and the
  compiled memory of a jitted program;
- `command`, `load_results`, `merge_results`, `findings_link`: the recorded command line, the
  results JSON merged by key (so a partial or resumed run keeps what it did not redo) and the
  link from a generated table to its hand-written findings (`<out>_findings.md`, or the
  findings that cite it by name: prose lives in .md files only, never in the generated JSON);
- `kept_workdir` / `add_workdir_argument`: where a benchmark's distillation runs keep their
  checkpoints, so that an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import pathlib
import platform
import re
import resource
import shlex
import sys
import time
import types
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

import jaxdd
from jaxdd import artifacts, build, checkpoint, data
from jaxdd import config as config_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"

# --- configs --------------------------------------------------------------------------------


def load_config(name: str, *overrides: str) -> ml_collections.ConfigDict:
    """The shipped config `configs/<name>.py` with 'field=value' overrides (`jaxdd.load_config`)."""
    return jaxdd.load_config(REPO / "configs" / f"{name}.py", *overrides)


def protocol_config(
    dataset: str,
    *,
    ipc: int,
    seed: int,
    iterations: int,
    eval_models: int,
    eval_epochs: int,
    overrides: Sequence[str] = (),
) -> ml_collections.ConfigDict:
    """The robustness protocol's config of `dataset`: a shipped config's name, optionally with a
    benchmark suffix (`BENCHMARK_SUFFIXES`): '+rare' (inverted minority), '+rare-<transform>'
    (e.g. '+rare-blur', a minority close to its majority) or '+color' (the spurious-correlation
    benchmark): `iterations` DC iterations (DC's schedule for the ipc) with
    selection on the validation split twice per run (2 networks), `eval_models` x
    `eval_epochs` test networks; the set starts from random real images (`syn.init=real`, as
    every recorded row did before the shipped default became `groups`: methods and variants that
    start elsewhere say so, e.g. robust_gain's `+groups`); then `overrides` ('field=value'),
    which win over all of these."""
    name, _, suffix = dataset.partition("+")
    protocol = [
        f"ipc={ipc}",
        f"seed={seed}",
        f"num_iterations={iterations}",
        f"eval.num_models={eval_models}",
        f"eval.epochs={eval_epochs}",
        f"eval.select_every={max(1, iterations // 2)}",
        "eval.select_num_models=2",
        f"checkpoint.every={max(1, iterations // 10)}",  # A killed run resumes from these.
        "syn.init=real",
    ]
    if suffix:
        protocol.append(benchmark_override(suffix))
    return load_config(name, *protocol, *overrides)


def measurement_config(
    dataset: str, *, ipc: int, seed: int, overrides: Sequence[str] = ()
) -> ml_collections.ConfigDict:
    """`protocol_config` for a benchmark that measures the objective instead of distilling and
    evaluating (`tail_noise`, `set_losses`): the same data, groups, family and initial set;
    iterations and evaluation at their minimum, unused."""
    return protocol_config(
        dataset, ipc=ipc, seed=seed, iterations=1, eval_models=1, eval_epochs=1,
        overrides=overrides,
    )  # fmt: skip


# The benchmark suffixes of a dataset name ('digits+color') -> the config field they set.
BENCHMARK_SUFFIXES = {"rare": "data.rare=invert", "color": "data.spurious=color"}


def benchmark_override(suffix: str) -> str:
    """The override of a dataset name's benchmark suffix: `BENCHMARK_SUFFIXES`, or
    'rare-<transform>' -> data.rare=<transform>."""
    if suffix in BENCHMARK_SUFFIXES:
        return BENCHMARK_SUFFIXES[suffix]
    kind, _, transform = suffix.partition("-")
    if kind == "rare" and transform in data.RARE_TRANSFORMS:
        return f"data.rare={transform}"
    raise ValueError(
        f"unknown benchmark suffix {suffix!r}: use one of {sorted(BENCHMARK_SUFFIXES)} or "
        f"rare-<transform> with a transform in {sorted(data.RARE_TRANSFORMS)}."
    )


def parse_overrides(items: Sequence[str]) -> dict[str, object]:
    """'field=value' strings -> {field: value}, values parsed as `jaxdd.load_config` parses
    them (Python literals, else strings): how a record stores the overrides it ran with."""
    overrides = {}
    for item in items:
        field, _, value = item.partition("=")
        try:
            overrides[field.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            overrides[field.strip()] = value.strip()
    return overrides


def initial_run(config: ml_collections.ConfigDict) -> types.SimpleNamespace:
    """What `jaxdd.run` sets up before its first iteration, under the same key split: the
    dataset and its rare version, groups, model, real data, initial state and jitted step (and
    the third key, which the run uses for its iteration keys)."""
    dataset, rare = build.load_data(config)
    cluster_key, init_key, third_key = jax.random.split(jax.random.key(config.seed), 3)
    groups = build.create_groups(config, dataset, key=cluster_key)
    model = build.create_model(config, dataset.num_classes, dataset.image_shape)
    real = build.create_real(dataset, groups)
    state = build.create_state(
        config, real, key=init_key, train_labels=dataset.train.labels, model=model
    )
    return types.SimpleNamespace(
        dataset=dataset, rare=rare, groups=groups, model=model, real=real, state=state,
        step_fn=build.create_step(
            config, model, dataset.image_shape, pixel_range=build.pixel_range(dataset)
        ),
        init_key=init_key,
        third_key=third_key,
    )  # fmt: skip


# --- machine --------------------------------------------------------------------------------


def cpu_name() -> str:
    """The CPU model (from /proc/cpuinfo where there is one)."""
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def host_allocator() -> str:
    """The process's malloc: a preloaded one (LD_PRELOAD, MALLOC_CONF) or glibc's, with its
    malloc tunables (GLIBC_TUNABLES)."""
    preload = os.environ.get("LD_PRELOAD", "")
    name = ", ".join(pathlib.Path(p).name for p in preload.split(":") if p)
    if name:
        conf = os.environ.get("MALLOC_CONF")
        return f"{name} (MALLOC_CONF={conf})" if conf else name
    tunables = ":".join(
        t for t in os.environ.get("GLIBC_TUNABLES", "").split(":") if t.startswith("glibc.malloc.")
    )
    return f"glibc malloc (GLIBC_TUNABLES={tunables})" if tunables else "glibc malloc"


def machine() -> dict[str, Any]:
    """This machine as results record it: cpu, cores, jax, backend, devices, allocator."""
    devices = jax.devices()
    return {
        "cpu": cpu_name(),
        "cores": os.cpu_count() or 0,
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "devices": f"{len(devices)} x {devices[0].device_kind}",
        "allocator": host_allocator(),
    }


def machine_header(record: dict[str, Any]) -> str:
    """One line of a `machine()` record; fields an older record lacks are left out."""
    parts = [f"{record['cpu']}, {record['cores']} cores"]
    if "jax" in record:
        parts.append(f"jax {record['jax']}")
    if "backend" in record:
        devices = f" ({record['devices']})" if "devices" in record else ""
        parts.append(f"JAX backend {record['backend']}{devices}")
    if "torch_device" in record:
        parts.append(f"torch on {record['torch_device']}")
    if "allocator" in record:
        parts.append(f"host allocator: {record['allocator']}")
    return "; ".join(parts)


def machine_labels(records: Sequence[dict[str, Any]]) -> dict[str, str]:
    """`machine_header` -> 'M1', 'M2', ... for the distinct machines of `records`, in order of
    first appearance: what a table's machine column shows where its rows ran on several."""
    headers = [machine_header(r["machine"]) for r in records if "machine" in r]
    return {h: f"M{i + 1}" for i, h in enumerate(dict.fromkeys(headers))}


def machine_label(record: dict[str, Any], labels: dict[str, str]) -> str:
    """A record's `machine_labels` label ('?' for a record made before records kept one)."""
    return labels.get(machine_header(record["machine"]), "?") if "machine" in record else "?"


def machines_line(records: Sequence[dict[str, Any]], labelled: bool = False) -> str:
    """'Machine: ...' of a table's rows (each with a `machine` record), by distinct machine;
    `labelled`: each prefixed with its `machine_labels` label, for a table with that column."""
    headers = [machine_header(r["machine"]) for r in records if "machine" in r]
    counts = {h: headers.count(h) for h in dict.fromkeys(headers)}
    labels = machine_labels(records) if labelled else {}
    named = {h: f"{labels[h]} = {h}" if labelled else h for h in counts}
    if len(counts) == 1:
        return f"Machine: {named[headers[0]]}"
    return "Machines: " + "; ".join(f"{named[h]} ({n} rows)" for h, n in counts.items())


# --- timing and memory ----------------------------------------------------------------------


class Timer:
    """Wall-clock seconds since it was started: `timer = Timer(); ...; seconds = timer()`."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def __call__(self) -> float:
        return time.perf_counter() - self.start

    def add(self, seconds: float) -> None:
        """Counts `seconds` spent before it started (earlier invocations of a resumed run)."""
        self.start -= seconds


def wall(fn: Callable, *args: Any) -> float:
    """Seconds of one call of `fn(*args)`, waiting for its arrays."""
    timer = Timer()
    jax.block_until_ready(fn(*args))
    return timer()


def timed(fn: Callable, *args: Any, repeats: int) -> tuple[float, list[float]]:
    """Median wall time of `fn(*args)` after one warm-up call, and every timed call's."""
    jax.block_until_ready(fn(*args))
    times = [wall(fn, *args) for _ in range(repeats)]
    return float(np.median(times)), times


def host_cost(fn: Callable, *args: Any, repeats: int = 2) -> tuple[float, float]:
    """Kernel (system) CPU seconds and minor page faults per call of `fn(*args)`, this process,
    after one warm-up call: the host's cost of handing XLA fresh memory for each call."""
    jax.block_until_ready(fn(*args))
    before = resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(repeats):
        jax.block_until_ready(fn(*args))
    after = resource.getrusage(resource.RUSAGE_SELF)
    return (
        (after.ru_stime - before.ru_stime) / repeats,
        (after.ru_minflt - before.ru_minflt) / repeats,
    )


def compiled_memory_bytes(compiled: jax.stages.Compiled) -> int:
    """Peak memory of a compiled program: arguments + outputs + XLA temporaries - aliased."""
    stats = compiled.memory_analysis()
    return int(
        stats.argument_size_in_bytes
        + stats.output_size_in_bytes
        + stats.temp_size_in_bytes
        - stats.alias_size_in_bytes
    )


def with_rare_means(report: dict[str, Any]) -> dict[str, Any]:
    """`report` (an eval.json) plus `majority_mean` / `minority_mean`, the rare benchmark's
    majority and minority accuracy as means over classes (group 2c + 1 is class c's
    minority): the min over classes alone stays at 0 while the mean moves; and eval.json's
    `validation` figures as `validation_<key>`."""
    validation = {
        f"validation_{key}": value for key, value in report.get("validation", {}).items()
    }  # The same networks on the validation split (eval.json's `validation`).
    groups = report.get("group_accuracy_rare")
    if groups is None:
        return {**report, **validation}
    groups = np.asarray([np.nan if g is None else g for g in groups], float)
    return {
        **report,
        **validation,
        "majority_mean": np.nanmean(groups[0::2]),
        "minority_mean": np.nanmean(groups[1::2]),
    }


def paired_interval(differences: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """Mean of paired differences and the half-width of its two-sided Student-t interval
    (`level`, n - 1 degrees of freedom); the half-width is nan for fewer than 2 pairs."""
    import scipy.stats  # scikit-learn's dependency; only the summaries need it.

    values = np.asarray(differences, float)
    if len(values) < 2:
        return float(values.mean()) if len(values) else float("nan"), float("nan")
    sem = values.std(ddof=1) / np.sqrt(len(values))
    return float(values.mean()), float(scipy.stats.t.ppf(0.5 + level / 2, len(values) - 1) * sem)


def interval_cell(differences: Sequence[float], minus: str = "-") -> str:
    """'+m ± h' (mean and 95 % t half-width, `paired_interval`) for two or more differences,
    '+m' for one, '—' for none; one decimal, the minus sign written as `minus` (README's
    tables typeset it as '−')."""
    if not len(differences):
        return "—"
    mean, half = paired_interval(differences)
    cell = f"{mean:+.1f} ± {half:.1f}" if len(differences) > 1 else f"{mean:+.1f}"
    return cell.replace("-", minus)


# --- results files --------------------------------------------------------------------------


def command(name: str) -> str:
    """The command line of this invocation of benchmark `name`, as results record it."""
    return " ".join(["python -m", f"benchmarks.{name}", shlex.join(sys.argv[1:])]).rstrip()


def load_results(path: str | pathlib.Path, default: Any) -> Any:
    """The results JSON at `path`, or `default` where there is none yet."""
    path = pathlib.Path(path)
    return json.loads(path.read_text()) if path.exists() else default


def merge_results(
    path: str | pathlib.Path,
    new: list[dict[str, Any]] | dict[str, Any],
    *,
    key: Callable[[dict[str, Any]], Hashable] | None = None,
) -> Any:
    """Merges `new` into the results JSON at `path` (created if missing); returns the merge.

    A list of records (with `key`): a record replaces the stored one of the same `key(record)`
    in place (a rerun under other defaults, `current_record`), the one replaced appended to
    `<name>.superseded.json` beside `path`, so that no measurement is lost; records of new keys
    are appended. A dict of sections (`key` None): `new`'s entries replace the stored ones
    (dict entries merged one level deep), so the sections this invocation did not run are
    kept. Written whole and then renamed: an interrupted write never leaves a truncated file.
    """
    path = pathlib.Path(path)
    if isinstance(new, list):
        if key is None:
            raise ValueError("merging a list of records needs key=")
        merged = list(load_results(path, []))
        index = {key(r): i for i, r in enumerate(merged)}
        for record in new:
            if key(record) in index:
                superseded = path.with_name(f"{path.stem}.superseded.json")
                replaced = merged[index[key(record)]]
                if replaced != record:
                    _write_json(superseded, [*load_results(superseded, []), replaced])
                merged[index[key(record)]] = record
            else:
                index[key(record)] = len(merged)
                merged.append(record)
    else:
        merged = dict(load_results(path, {}))
        for name, value in new.items():
            old = merged.get(name)
            both_dicts = isinstance(old, dict) and isinstance(value, dict)
            merged[name] = {**old, **value} if both_dicts else value
    _write_json(path, merged)
    return merged


def _write_json(path: pathlib.Path, value: Any) -> None:
    """Writes `value` to `path` whole and then renames: an interrupted write never leaves a
    truncated file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(value, indent=1) + "\n")
    partial.replace(path)


def findings_link(out: str | pathlib.Path) -> list[str]:
    """Markdown lines linking the hand-written findings of the generated `<out>.md`: its own
    `<out>_findings.md` where there is one, else every `*_findings.md` beside it that cites
    `<out>.md` or `<out>.json` by name (a variant's run written up with its family's, e.g.
    `robustness_k2` in `robustness_findings.md`); none: no lines."""
    out = pathlib.Path(out)
    own = out.with_name(out.name + "_findings.md")
    if own.exists():
        found = [own]
    else:
        cited = re.compile(rf"(?<![\w.-]){re.escape(out.name)}\.(md|json)\b")
        found = [
            path for path in sorted(out.parent.glob("*_findings.md"))
            if cited.search(path.read_text())
        ]  # fmt: skip
    if not found:
        return []
    links = ", ".join(f"[{path.name}]({path.name})" for path in found)
    return [f"Findings (written by hand, not generated): {links}", ""]


# --- records and the configs they stand for -------------------------------------------------

# The config sections a score of a set that is not distilled (random real images, the full
# training set) depends on.
UNDISTILLED_SECTIONS = ("seed", "ipc", "data", "model", "eval")


def record_config(
    config: ml_collections.ConfigDict, sections: Sequence[str] | None = None
) -> dict[str, Any]:
    """What a benchmark record's score depends on, resolved from `config` with every default
    filled in (`config.resolved`): the sections a checkpoint is fingerprinted on and the
    evaluation's, or the `sections` given (`UNDISTILLED_SECTIONS` for a set that is not
    distilled). Records store it, so that a later invocation tells a record of its own config
    from one made under other settings or other defaults (`current_record`)."""
    if sections is None:
        sections = (*config_lib.FINGERPRINT_SECTIONS, "eval")
    return config_lib.resolved(config, tuple(sections))


def current_record(
    records: Sequence[dict[str, Any]],
    key_of: Callable[[dict[str, Any]], Hashable],
    key: Hashable,
    config: dict[str, Any],
) -> dict[str, Any] | None:
    """The record of `key` (`key_of(record) == key`) that stands for `config` (a
    `record_config`), or None where the benchmark has to run it. A record of `key` made under
    another config (a default changed since, say) is not reused: the fields that differ are
    printed, and the new run's record replaces it. A record from before records stored their
    config is reused, and said so."""
    for record in records:
        if key_of(record) != key:
            continue
        saved = record.get("config")
        if saved is None:
            print(
                f"{key}: reusing its record, made before records stored their config; delete it "
                "from the results JSON to rerun it under today's config",
                flush=True,
            )
            return record
        changed = checkpoint.differences(config_lib.comparable(saved), config)
        if not changed:
            return record
        details = ", ".join(f"{k}: recorded {a!r}, now {b!r}" for k, (a, b) in changed.items())
        print(f"{key}: rerunning, its record was made under another config ({details})", flush=True)
        return None
    return None


# --- kept workdirs --------------------------------------------------------------------------


def settings_digest(settings: Any) -> str:
    """8 hex digits standing for `settings` (JSON-able): runs with other settings get other
    workdirs, so none resumes another's checkpoint."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]


def kept_workdir(root: str | pathlib.Path, parts: Sequence[Any], settings: Any) -> pathlib.Path:
    """The workdir under `root` of the run named by `parts` (dataset, IPC, seed, method, ...)
    with `settings` (everything else its distillation depends on): kept between invocations,
    so that a run stopped by SIGTERM/SIGINT (checkpointed on the signal) or killed (its last
    periodic checkpoint) resumes bit-identically when the benchmark's command is run again."""
    name = "_".join(str(part).replace(os.sep, "-") for part in (*parts, settings_digest(settings)))
    return pathlib.Path(root) / name


def logged_seconds(workdir: str | pathlib.Path) -> float:
    """Distillation seconds that earlier invocations logged in a kept workdir (0.0 for a new
    one; the steps a killed one lost after its last checkpoint included: they were spent). A
    resumed run's record adds them, so its time is the run's, not its last invocation's."""
    return artifacts.elapsed_seconds(artifacts.read_metrics(workdir))


def add_workdir_argument(
    parser: argparse.ArgumentParser,
    name: str,
    help: str = "root of the runs' workdirs, kept so that an interrupted run resumes there",
) -> None:
    """`--workdir`, the root of a benchmark's kept workdirs (default `runs/<name>`, git-ignored)."""
    parser.add_argument("--workdir", default=str(REPO / "runs" / name), help=help)


def add_results_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    """`--set field=value` (repeatable config overrides), `--out` (the results' path without
    suffix, default `benchmarks/results/<name>`) and `--render` (run nothing: rewrite the .md
    from the .json), shared by the benchmarks that run configs with overrides."""
    parser.add_argument("--set", action="append", default=[], help="config field=value")
    parser.add_argument("--out", default=str(RESULTS / name), help="results path, no suffix")
    parser.add_argument(
        "--render", action="store_true", help="run nothing: rewrite the .md from the .json"
    )
