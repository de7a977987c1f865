"""Parity with the reference: jaxdd against a PyTorch port of DC / DSA / DM / IDM's loops.

For one (dataset, ipc, method, iterations, seed) the benchmark distils twice from the SAME
initial images (the same train indices) with the same settings: once with jaxdd
(`jaxdd.distill`, K = 1 subgroup per class and risk 'mean', which is the published ERM method)
and once with `benchmarks.torch_reference` (`dc_distill` / `dm_distill`, a statement-by-statement
port of `VICO-UoE/DatasetCondensation`'s `main.py` / `main_DM.py`; `idm_distill`, of
`uitrbn/IDM`'s `IDM_cifar10.py`). Each set, and the random real subset both start from, is
then scored by BOTH evaluators: jaxdd's test protocol
(`jaxdd.evaluate`) and the port of DC's `evaluate_synset`, so the evaluators are cross-checked
too. Settings shared by the two sides come from one jaxdd config (`configs/<dataset>.py:<method>`
with the overrides below): image and network learning rates, real batch per class
(`match.num_real`, K = 1), DC's outer / inner loops, the DSA strategy, the ConvNet (width, depth,
`stem_pad`), PyTorch's default initialisation, and the evaluation epochs and augmentation.

IDM (`--method=idm`, `configs/<dataset>.py:idm`) starts both sides from jaxdd's `mix` set (four
downscaled random real images per stored image; the 'random' side scores it decoded) and
compares jaxdd's recipe as shipped with IDM's own loop at the same image and network rates,
real batches, regulariser weight and network training: jaxdd's pool of 10 networks, re-
initialised after 60 trainings, the one drawn matched and then trained, against IDM's queue
(`torch_reference.idm_distill`: a fresh network every 30 iterations, every 5 at IPC 1 as its
`command.txt`, up to 100; one random network matched, two others trained), and jaxdd's
regulariser weight (the group's own accuracy on its matching batch) against IDM's (the
network's running accuracy on its training batches; `--set=match.syn_ce_accuracy=running`
gives jaxdd's pool that weighting): the deviations `configs/default.py` states, measured.

`--set field=value` (repeatable) changes the shared config for both sides, e.g.
`--set=match.syn_ce=0` turns IDM's regulariser off in jaxdd and in IDM's loop alike; such runs
are records of their own (the overrides are part of the key, and of their workdirs' names)
and get their own table, so an ablation never replaces the run it is compared with.

Every (key, side) is a record merged into `benchmarks/results/parity.json` as soon as it
finishes, so a long run can be interrupted and resumed (a finished record is not redone). The
distilling sides also resume within a record: jaxdd distils in a kept workdir
(`--workdir-root`/<key>) and the torch side saves `--workdir-root`/<key>_torch.pt
(`torch_reference.Checkpoint`), each every twentieth of the run, so a killed run restarts from
its last checkpoint, bit-identically; its distillation time is then the sum of the segments'
clocks (each compile included; the steps lost since the last checkpoint not). A run longer
than one machine's session can be carried to the next by pointing `--workdir-root` at a
tracked folder and committing it (at Fashion-MNIST IPC 1: ~156 KB a jaxdd checkpoint, a few
kept, and ~60 KB for torch). And
`parity.md` is rewritten from the JSON (`--render` rewrites it without running anything).
`--torch-device=cuda` runs the torch side (distillation and evaluator) on a GPU; a run with
either side on an accelerator writes `parity_gpu.json` / `.md` unless `--out` says otherwise,
and the torch checkpoint's signature names its device type, so a CPU run is never resumed on
a GPU.
Hand-written findings go to `parity_findings.md`.

  python -m benchmarks.parity --dataset=digits --ipc=1 --method=dsa --iterations=1000
  python -m benchmarks.parity --dataset=fashion_mnist --ipc=10 --method=dc --iterations=10 \\
      --seeds=0,1,2 --sides=random,jaxdd,torch --eval-models=2

(the second, Fashion-MNIST IPC 10's reduced protocol: 100 image updates and 4,500 network
epochs a side, 2 networks x 300 epochs per evaluator; on a 2-core CPU ~30 min of jaxdd
distillation, ~38 of torch and ~12 of scoring per set, so ~1.7 h a seed.)
"""

from __future__ import annotations

import argparse
import hashlib
import os
import pathlib
import shutil
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

import jaxdd
from benchmarks import harness
from jaxdd import build, report
from jaxdd import run as run_lib

SIDES = ("random", "jaxdd", "torch")
METHODS = ("dc", "dsa", "dm", "idm")
# Real images per class and update: DC's batch_real, except on digits, whose classes hold
# about 115 train images (DC's get_images(c, 256) would return the whole class every time).
BATCH_REAL = {"digits": 64}


def parity_config(
    dataset: str,
    *,
    ipc: int,
    method: str,
    iterations: int,
    seed: int,
    models: int,
    overrides: Sequence[str] = (),
):
    """The one config both sides are run and evaluated with (see the module docstring), with
    `--set` `overrides` ('field=value') last: both sides read them (e.g. `match.syn_ce=0`,
    IDM's regulariser off in jaxdd and in IDM's loop)."""
    config = jaxdd.load_config(
        harness.REPO / "configs" / f"{dataset}.py:{method}",
        f"ipc={ipc}",
        f"seed={seed}",
        f"num_iterations={iterations}",
        "cluster.num_clusters=1",
        "robust.risk=mean",
        # DC's and DM's random real images; IDM's partitioned set keeps its `mix` start.
        *(() if method == "idm" else ("syn.init=real",)),
        f"match.num_real={BATCH_REAL.get(dataset, 256)}",
        "match.group_batch=0",
        f"eval.num_models={models}",
        "eval.select_every=0",  # DC and DM report the last set.
        f"checkpoint.every={max(1, iterations // 20)}",
        f"log.every={max(1, iterations // 10)}",
        *overrides,
    )
    # Parity compares accuracy: the shifted test sets (four more passes over the test split
    # per network) are left out.
    config.eval.shifts = {}
    return config


def initial_start(config, dataset) -> dict[str, np.ndarray]:
    """What both sides start from, as the torch side's argument: {'init_indices': ...} for a
    pixel set (`initial_indices`), {'init_images': the stored (C * ipc, H, W, Ch) images} for
    a factorized one (IDM's), whose `mix` start is not a set of train images."""
    if config.syn.param == "pixels":
        return {"init_indices": initial_indices(config, dataset)}
    return {"init_images": run_lib.initial_set(config, dataset, decoded=False)[0]}


def start_record(start: dict[str, np.ndarray]) -> dict[str, Any]:
    """The start in a record: the indices, or the stored images' SHA-256."""
    if "init_indices" in start:
        return {"init_indices": start["init_indices"].tolist()}
    stored = np.ascontiguousarray(start["init_images"], dtype=np.float32)
    return {"init_images_sha256": hashlib.sha256(stored).hexdigest()}


def initial_indices(config, dataset) -> np.ndarray:
    """(C * ipc,) train indices of the set a jaxdd run starts from (class-major), recovered
    from the run's own initial state (`build.create_state` under `jaxdd.run`'s key split) and
    checked: every initial image is exactly one train image of its class."""
    cluster_key, init_key, _ = jax.random.split(jax.random.key(config.seed), 3)
    groups = build.create_groups(config, dataset, key=cluster_key)
    real = build.create_real(dataset, groups)
    state = build.create_state(config, real, key=init_key, train_labels=dataset.train.labels)
    images = np.asarray(state.images).reshape(-1, *dataset.image_shape)
    flat = dataset.train.images.reshape(len(dataset.train), -1)
    indices = []
    for image, label in zip(images, np.asarray(state.labels).reshape(-1), strict=True):
        (match,) = np.nonzero(np.all(flat == image.reshape(1, -1), axis=1))
        if len(match) < 1 or dataset.train.labels[match[0]] != label:
            raise RuntimeError("an initial image is not a train image of its class")
        indices.append(int(match[0]))
    return np.asarray(indices)


def torch_settings(config, dataset) -> dict[str, Any]:
    """The torch side's arguments that mirror `config` (network, loops, rates, DSA)."""
    augment = None if config.match.augment == "none" else config.match.augment
    return {
        "width": config.model.width,
        "depth": config.model.depth,
        "stem_pad": build.stem_pad(config, dataset.image_shape),
        "dsa_strategy": augment,
    }


def idm_settings(config) -> dict[str, Any]:
    """`idm_distill`'s arguments that differ from the DM port's, from a `:idm` config: the
    regulariser's weight, the networks' rate and steps per training (jaxdd's inner epochs of
    one batch), and IDM's queue schedule (`command.txt`: a network every 5 iterations at
    IPC 1, else every 30). Refuses what the port fixes at IDM's values."""
    match = config.match
    fixed = {
        "syn.param": (config.syn.param, "factorized"),
        "syn.factor": (config.syn.factor, 2),
        "syn.learn_labels": (config.syn.learn_labels, False),
        "match.net_train": (match.net_train, "real"),
        "match.net_augment": (match.net_augment, "none"),
        "match.net_momentum": (match.net_momentum, 0.9),
        "match.net_weight_decay": (match.net_weight_decay, 5e-4),
        "match.outer_loop": (match.outer_loop, 1),
        "match.net_data": (match.net_data, match.inner_batch),
    }
    changed = [f"{k}={v!r} (IDM: {want!r})" for k, (v, want) in fixed.items() if v != want]
    if changed:
        raise ValueError(f"the IDM port runs IDM's settings; this config has {', '.join(changed)}.")
    return {
        "ce_weight": match.syn_ce,
        "lr_net": match.net_lr,
        "model_train_steps": match.inner_loop,
        "trained_bs": match.inner_batch,
        "net_generate_interval": 5 if config.ipc == 1 else 30,
    }


def torch_distill(
    config, dataset, start: dict[str, np.ndarray], checkpoint: pathlib.Path, device: str
) -> tuple[np.ndarray, np.ndarray]:
    """The torch side's set, as the evaluators take it: (images, labels)."""
    from benchmarks import torch_reference

    common = {
        "device": device,
        "checkpoint": checkpoint,
        "checkpoint_every": config.checkpoint.every,
        **start,
        "num_classes": dataset.num_classes,
        "iterations": config.num_iterations,
        "lr_img": config.syn.lr,
        "batch_real": config.match.num_real,
        "seed": config.seed,
        **torch_settings(config, dataset),
    }
    common["dsa_strategy"] = common["dsa_strategy"] or "none"
    train = (dataset.train.images, dataset.train.labels)
    if config.match.family == "distribution" and config.match.net_pool:  # IDM's networks
        return torch_reference.idm_distill(*train, **common, **idm_settings(config))
    labels = dataset.train.labels[start["init_indices"]]
    if config.match.family == "distribution":
        return torch_reference.dm_distill(*train, **common), labels
    outer, inner = build.loops(config)
    images = torch_reference.dc_distill(
        dataset.train.images,
        dataset.train.labels,
        method="DSA" if config.match.augment != "none" else "DC",
        outer_loop=outer,
        inner_loop=inner,
        lr_net=config.match.net_lr,
        batch_train=config.match.inner_batch,
        **common,
    )
    return images, labels


def torch_evaluate(
    config, dataset, images: np.ndarray, labels: np.ndarray, device: str
) -> list[float]:
    """Test accuracies (%) of DC's `evaluate_synset` port, one per evaluation network."""
    from benchmarks import torch_reference

    settings = torch_settings(config, dataset)
    accuracies = torch_reference.evaluate_synset(
        images,
        labels,
        dataset.test.images,
        dataset.test.labels,
        num_classes=dataset.num_classes,
        epochs=config.eval.epochs,
        lr=config.eval.lr,
        batch_train=config.eval.batch_size,
        dsa_strategy=None if config.eval.augment == "none" else config.eval.augment,
        width=settings["width"],
        depth=settings["depth"],
        stem_pad=settings["stem_pad"],
        seeds=report.eval_seeds(config, config.eval.num_models),
        device=device,
    )
    return [100.0 * float(a) for a in accuracies]


def run_side(
    side: str,
    config,
    dataset,
    start: dict[str, np.ndarray],
    workdir: pathlib.Path,
    torch_device: str = "cpu",
) -> dict[str, Any]:
    """Distils with `side` ('random': none, the start decoded) and scores the set with both
    evaluators. The jaxdd side distils in `workdir`, the torch side checkpoints to
    `<workdir>_torch.pt` (both kept, so an interrupted run resumes; removed when done); torch
    runs on `torch_device`."""
    jaxdd_eval, distill_s, extra = None, 0.0, {}
    if side == "random":
        if "init_indices" in start:
            images = dataset.train.images[start["init_indices"]]
            labels = dataset.train.labels[start["init_indices"]]
        else:
            images, labels = run_lib.initial_set(config, dataset)
    elif side == "jaxdd":
        result = jaxdd.distill(config, workdir)
        images, labels = result.images, result.labels
        # The loop's own clock (compile included, summed over resumed segments), before the
        # run's final evaluation.
        distill_s = result.report["distill_seconds"]
        jaxdd_eval = result.report  # The run's report is jaxdd's evaluator on this set.
    else:
        from benchmarks import torch_reference

        # Resumable as the jaxdd side: a checkpoint beside its workdir, every twentieth.
        checkpoint = workdir.with_name(f"{workdir.name}_torch.pt")
        images, labels = torch_distill(config, dataset, start, checkpoint, torch_device)
        distill_s, extra["segments"] = torch_reference.checkpoint_seconds(checkpoint)
    if jaxdd_eval is None:
        jaxdd_eval = jaxdd.evaluate(config, images, labels)
    record = {
        "distill_s": distill_s,
        "jaxdd_eval": {
            "accuracy_mean": jaxdd_eval["accuracy_mean"],
            "accuracy_std": jaxdd_eval["accuracy_std"],
            "worst_group_accuracy": jaxdd_eval.get("worst_group_accuracy"),
        },
        "torch_eval": torch_evaluate(config, dataset, images, labels, torch_device),
        **extra,
    }
    # After scoring: a run killed while scoring does not distil again.
    if side == "jaxdd":
        shutil.rmtree(workdir)
    elif side == "torch":
        checkpoint.unlink()
    return record


def settings(record: dict[str, Any]) -> str:
    """A record's `--set` overrides, canonical ('' for none): runs with different overrides are
    different records and tables, never one replacing the other."""
    overrides = record.get("set", {})
    return ", ".join(f"{field}={overrides[field]}" for field in sorted(overrides))


def record_key(record: dict[str, Any]) -> tuple:
    fields = ("dataset", "ipc", "method", "iterations", "seed", "side")
    return (*(record[k] for k in fields), settings(record))


def _setting(record: dict[str, Any]) -> tuple:
    """The table a record belongs to: (dataset, ipc, method, iterations, overrides)."""
    key = record_key(record)
    return (*key[:4], key[-1])


def _cell(per_seed: Sequence[float], network_std: float) -> str:
    """mean ± std over seeds; with one seed, ± the std over its evaluation networks."""
    if len(per_seed) > 1:
        return f"{np.mean(per_seed):.2f} ± {np.std(per_seed):.2f}"
    return f"{np.mean(per_seed):.2f} ± {network_std:.2f} (networks)"


def _seeds(seeds: list[int]) -> str:
    return ("seed " if len(seeds) == 1 else "seeds ") + ",".join(map(str, seeds))


def _accuracies(record: dict[str, Any]) -> tuple[float, float]:
    """A record's test accuracy by jaxdd's evaluator and by torch's (mean over networks)."""
    return record["jaxdd_eval"]["accuracy_mean"], float(np.mean(record["torch_eval"]))


def _paired(a: dict[int, dict], b: dict[int, dict]) -> tuple[np.ndarray | None, list[int]]:
    """Mean over the seeds both sides have of a − b, per evaluator, and those seeds.

    `a` and `b` map seed -> record of two sides; a side whose other seeds are still running
    is compared on the shared ones only, never a mean over some seeds against a mean over
    others. No shared seed: (None, [])."""
    seeds = sorted(a.keys() & b.keys())
    if not seeds:
        return None, seeds
    diffs = [np.subtract(_accuracies(a[s]), _accuracies(b[s])) for s in seeds]
    return np.mean(diffs, axis=0), seeds


def _partial(seeds: list[int], side_rows: list[dict[str, Any]]) -> str:
    """' (seeds ...)' when a paired figure covers fewer seeds than the row shows."""
    return "" if len(seeds) == len(side_rows) else f" ({_seeds(seeds)})"


def table(records: list[dict[str, Any]]) -> list[str]:
    """One table per (dataset, ipc, method, iterations, `--set` overrides): the sides, both
    evaluators."""
    lines = []
    for setting in sorted({_setting(r) for r in records}, key=str):
        dataset, ipc, method, iterations, overrides = setting
        rows = [r for r in records if _setting(r) == setting]
        lines += [
            f"## {dataset}, IPC {ipc}, {method.upper()}, {iterations} iterations"
            + (f", with {overrides}" if overrides else ""),
            "",
            "| side | seeds | jaxdd evaluator | torch evaluator | gain over random (jaxdd / "
            "torch evaluator) | distillation wall time |",
            "|---|---|---|---|---|---|",
        ]
        per_side = {}
        for side in SIDES:
            side_rows = sorted((r for r in rows if r["side"] == side), key=lambda r: r["seed"])
            if not side_rows:
                continue
            jaxdd_acc, torch_acc = zip(*map(_accuracies, side_rows), strict=True)
            per_side[side] = {r["seed"]: r for r in side_rows}
            gain = "–"
            if side != "random" and "random" in per_side:
                diff, seeds = _paired(per_side[side], per_side["random"])
                if seeds:
                    gain = f"{diff[0]:+.2f} / {diff[1]:+.2f}" + _partial(seeds, side_rows)
            seconds = np.mean([r["distill_s"] for r in side_rows])
            lines.append(
                f"| {side} | {','.join(str(r['seed']) for r in side_rows)} | "
                f"{_cell(jaxdd_acc, side_rows[0]['jaxdd_eval']['accuracy_std'])} | "
                f"{_cell(torch_acc, float(np.std(side_rows[0]['torch_eval'])))} | {gain} | "
                + ("–" if side == "random" else f"{seconds / 60:.1f} min")
                + " |"
            )
        if "jaxdd" in per_side and "torch" in per_side:
            diff, seeds = _paired(per_side["jaxdd"], per_side["torch"])
            if seeds:
                jaxdd_s, torch_s = (
                    np.mean([per_side[side][s]["distill_s"] for s in seeds])
                    for side in ("jaxdd", "torch")
                )
                shared = len(per_side["jaxdd"]) == len(per_side["torch"]) == len(seeds)
                over = "mean over seeds" if shared else f"both sides' seeds: {_seeds(seeds)}"
                lines += [
                    "",
                    f"jaxdd − torch ({over}): "
                    f"{diff[0]:+.2f} points by jaxdd's evaluator, {diff[1]:+.2f} by torch's; "
                    f"wall time jaxdd / torch = {jaxdd_s / torch_s:.2f}.",
                ]
        lines.append("")
    return lines


def summarise(records: list[dict[str, Any]], out: pathlib.Path) -> str:
    commands = sorted({r["command"] for r in records})
    return "\n".join(
        [
            "# Parity: jaxdd against the PyTorch port of DC / DSA / DM / IDM",
            "",
            f"Generated by `benchmarks/parity.py` from `{out.with_suffix('.json').name}`; how "
            "the two sides are made equal is in that module's docstring. Accuracies: test %, "
            "mean ± std over "
            "distillation seeds of each set's mean over its evaluation networks. 'random' is "
            "the set both sides start from: the random real subset (IDM: its partitioned "
            "`mix` start, decoded).",
            "",
            "Commands:",
            *[f"- `{c}`" for c in commands],
            "",
            f"{harness.machines_line(records)}.",
            "",
            *harness.findings_link(out),
            *table(records),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--ipc", type=int, default=1)
    parser.add_argument("--method", default="dsa", choices=METHODS)
    parser.add_argument("--iterations", type=int, default=1000)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--sides", default=",".join(SIDES))
    parser.add_argument("--eval-models", type=int, default=5)
    parser.add_argument("--eval-epochs", type=int, default=0, help="0: the method's own")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--torch-device", default="cpu", help="the torch side's device (cuda)")
    parser.add_argument(
        "--out",
        default=None,
        help="results path without suffix (default: benchmarks/results/parity, or parity_gpu "
        "when either side runs on an accelerator, so the tables never mix machines' rows)",
    )
    parser.add_argument("--render", action="store_true", help="rewrite the .md from the .json")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        help="config field=value for both sides (repeatable); its runs get their own table",
    )
    parser.add_argument(
        "--workdir-root",
        default=str(harness.RESULTS / ".parity_work"),
        help="where the jaxdd side distils (kept until its record is written, to resume)",
    )
    args = parser.parse_args()
    unknown = set(args.sides.split(",")) - set(SIDES)
    if unknown:
        parser.error(f"unknown sides {sorted(unknown)}; choose from {SIDES}")
    accelerated = jax.default_backend() != "cpu" or args.torch_device != "cpu"
    out = pathlib.Path(args.out or harness.RESULTS / ("parity_gpu" if accelerated else "parity"))
    records = harness.load_results(out.with_suffix(".json"), [])
    if not args.render:
        import torch

        torch.set_num_threads(args.threads)
        command, machine = harness.command("parity"), harness.machine()
        machine["torch_threads"] = args.threads
        if args.torch_device != "cpu":
            machine["torch_device"] = torch.cuda.get_device_name(args.torch_device)
        for seed in map(int, args.seeds.split(",")):
            config = parity_config(
                args.dataset,
                ipc=args.ipc,
                method=args.method,
                iterations=args.iterations,
                seed=seed,
                models=args.eval_models,
                overrides=args.set,
            )
            if args.eval_epochs:
                config.eval.epochs = args.eval_epochs
            dataset, _ = build.load_data(config)
            start = initial_start(config, dataset)
            overrides = harness.parse_overrides(args.set)
            for side in args.sides.split(","):
                key = (args.dataset, args.ipc, args.method, args.iterations, seed, side)
                key_with_set = (*key, settings({"set": overrides}))
                sections = harness.UNDISTILLED_SECTIONS if side == "random" else None
                resolved = harness.record_config(config, sections)
                if harness.current_record(records, record_key, key_with_set, resolved):
                    continue
                name = "_".join(map(str, key[:-1]))
                if overrides:  # Its own workdir: a run without them may be resumable beside it.
                    digest = hashlib.sha256(key_with_set[-1].encode()).hexdigest()[:8]
                    name += f"_set{digest}"
                result = run_side(
                    side,
                    config,
                    dataset,
                    start,
                    pathlib.Path(args.workdir_root) / name,
                    args.torch_device,
                )
                names = ("dataset", "ipc", "method", "iterations", "seed", "side")
                record = dict(zip(names, key, strict=True))
                if overrides:
                    record["set"] = overrides
                record.update(
                    result,
                    eval_epochs=config.eval.epochs,
                    **start_record(start),
                    config=resolved,
                    command=command,
                    machine=machine,
                    pid=os.getpid(),
                )
                records = harness.merge_results(out.with_suffix(".json"), [record], key=record_key)
                print(
                    f"{key}: jaxdd eval {result['jaxdd_eval']['accuracy_mean']:.2f}, torch eval "
                    f"{np.mean(result['torch_eval']):.2f}, distill {result['distill_s']:.0f} s",
                    flush=True,
                )
    out.with_suffix(".md").write_text(summarise(records, out))


if __name__ == "__main__":
    main()
