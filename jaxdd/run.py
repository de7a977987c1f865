"""The run loop: config -> data -> subgroups -> jitted distillation steps -> files in a workdir.

`distill(config, workdir)` is a short composition: set up (data, groups, model, state, step),
restore the latest checkpoint, loop over steps calling one named action each for the NaN
check, logging, validation selection, checkpoints and signals, then finish (write the sets,
the grid and eval.json). It writes to its workdir:

  config.json         the resolved config;
  metrics.jsonl       one JSON object per logged step (and TensorBoard events in tensorboard/);
  synthetic.npz       the set selected on the validation split (which eval.json reports on);
  synthetic_last.npz  the set after the last step;
  synthetic.png       the selected set as an image grid (one row per class);
  eval.json           test accuracy, subgroup, shift and cross-architecture metrics;
  checkpoints/        orbax checkpoints of the full state (resume is bit-identical).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import pathlib
import signal
import threading
import time
from typing import Any

import flax.serialization
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm
from absl import logging

from jaxdd import artifacts, build, data, errors, report, sharding, step
from jaxdd import checkpoint as checkpoint_lib
from jaxdd import config as config_lib
from jaxdd import groups as groups_lib
from jaxdd import workdir as workdir_lib


@dataclasses.dataclass(frozen=True)
class Result:
    """What a finished run returns (its files are in `workdir`)."""

    workdir: pathlib.Path
    images: np.ndarray  # (C*ipc, H, W, Ch) normalised synthetic images.
    labels: np.ndarray  # (C*ipc,)
    metrics: dict[str, float]  # Last logged step metrics.
    report: dict[str, Any]  # eval.json: test metrics of the selected synthetic set.


class Interrupted(Exception):
    """SIGINT/SIGTERM stopped the run after checkpointing `step`; re-run to resume."""

    def __init__(self, signum: int, step: int, workdir: pathlib.Path):
        self.signum, self.step = signum, step
        super().__init__(
            f"{signal.Signals(signum).name} received: saved a checkpoint at step {step} in "
            f"{workdir}; run the same command again to resume."
        )


def summarize(dataset: data.Dataset, groups: groups_lib.Groups) -> str:
    """Sizes per split and per-class cluster sizes, for the log and the terminal."""
    sizes = np.asarray(groups.sizes)
    lines = [
        f"dataset {dataset.name}: {dataset.num_classes} classes, images {dataset.image_shape}",
        f"  train {len(dataset.train)}, validation {len(dataset.validation)}, "
        f"test {len(dataset.test)}",
        f"  subgroups: {sizes.shape[0]} classes x {sizes.shape[1]} clusters; sizes per class:",
    ]
    for c, row in enumerate(sizes):
        lines.append(f"    {dataset.class_names[c]:>12}: {' '.join(f'{s:5d}' for s in row)}")
    return "\n".join(lines)


def header(run: _Run, mesh, workdir: pathlib.Path, start_step: int) -> str:
    """The three lines a run prints before its progress bar (the full per-class cluster sizes
    are logged at INFO, `--verbosity=0`)."""
    dataset, config = run.dataset, run.config
    sizes = run.group_sizes
    shape = "x".join(map(str, dataset.image_shape))
    resume = f"resuming at iteration {start_step}" if start_step else "starting"
    if config.cluster.assign == "voronoi":
        groups = f"{sizes.shape[0]}x{config.ipc} Voronoi cells of the synthetic images"
    else:
        groups = f"{sizes.shape[0]}x{sizes.shape[1]} groups (sizes {sizes.min()}-{sizes.max()})"
    return "\n".join(
        [
            f"{dataset.name}: {dataset.num_classes} classes, {shape} images; train "
            f"{len(dataset.train)}, validation {len(dataset.validation)}, test {len(dataset.test)}",
            f"{groups}, {config.match.family} matching, risk {config.robust.risk}, "
            f"ipc {config.ipc}; {mesh.size} {mesh.devices.flat[0].platform} device(s)",
            f"{workdir}: {resume}, {config.num_iterations} iterations",
        ]
    )


@dataclasses.dataclass
class _Run:
    """What the loop needs, built once from the config (`_set_up`)."""

    config: ml_collections.ConfigDict
    dataset: data.Dataset
    rare: data.RareDataset | None
    real: step.RealData  # Replicated on the mesh.
    step_fn: Any
    payload: dict[str, Any]  # The checkpointed pytree: state, root key, selection record.
    fingerprint: dict[str, Any]
    group_sizes: np.ndarray  # (C, K), on the host.
    decode_fn: step.DecodeFn  # Stored set -> training set (`syn.param`).
    decoder: Any  # The decoder's parameters (a generator's), or None.


def _start(config, dataset, decoder_params):
    """(groups, model, real data, initial state, step root key): all of a run that its seed
    decides before the first step."""
    cluster_key, init_key, step_root = jax.random.split(jax.random.key(config.seed), 3)
    groups = build.create_groups(config, dataset, key=cluster_key)
    model = build.create_model(config, dataset.num_classes, dataset.image_shape)
    real = build.create_real(dataset, groups, decoder_params)
    state = build.create_state(
        config, real, key=init_key, train_labels=dataset.train.labels, model=model
    )
    return groups, model, real, state, step_root


def initial_set(
    config: ml_collections.ConfigDict, dataset: data.Dataset, *, decoded: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """The training set `distill(config, ...)` starts from, before its first update: the same
    subgroups, key and `syn.init` draw, decoded as the run decodes it (flat images
    (N, H, W, Ch) and labels, as `jaxdd.step.synthetic_arrays`). Score it with
    `jaxdd.report.evaluate_set` to see what distillation adds to its own start.
    `decoded=False`: the stored images instead, (C * ipc, H, W, Ch), with their labels (pixels
    and factorized sets; a generator's start is latents, refused)."""
    decode_fn, decoder_params = build.create_decoder(config, dataset.image_shape)
    state = _start(config, dataset, decoder_params)[3]
    if decoded:
        return step.synthetic_arrays(state, decode_fn, decoder_params)
    if config.syn.param == "generator":
        raise ValueError("a generator's stored set is latents, not images: use decoded=True.")
    return step.synthetic_arrays(state)


def _set_up(config, dataset, rare, mesh, decoder) -> _Run:
    """Groups, model, initial state and the jitted step; the initial checkpoint payload.
    `decoder`: `build.create_decoder`'s (decode function, parameters)."""
    decode_fn, decoder_params = decoder
    groups, model, real, state, step_root = _start(config, dataset, decoder_params)
    logging.info("%s", summarize(dataset, groups))
    payload = {
        "state": state,
        "root_key": jax.random.key_data(step_root),
        "best": {
            "step": jnp.asarray(-1, jnp.int32),
            "accuracy": jnp.asarray(-np.inf, jnp.float32),
            "images": state.images,
        },
    }
    return _Run(
        config=config,
        dataset=dataset,
        rare=rare,
        real=sharding.replicate(real, mesh),  # The state is replicated with the payload.
        step_fn=build.create_step(
            config, model, dataset.image_shape, mesh, decode_fn, build.pixel_range(dataset)
        ),
        payload=sharding.replicate(payload, mesh),
        fingerprint=config_lib.fingerprint(config, dataset),
        group_sizes=np.asarray(groups.sizes),
        decode_fn=decode_fn,
        decoder=decoder_params,
    )


class _Checkpoints:
    """Saves the run's payload to `workdir/checkpoints` (once per step) and restores it."""

    def __init__(self, workdir: pathlib.Path, fingerprint: dict[str, Any]):
        self.manager = checkpoint_lib.create_manager(workdir / "checkpoints")
        self.fingerprint = fingerprint

    def restore(self, payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """(step, payload) of the latest compatible checkpoint, or (0, `payload`)."""
        restored = checkpoint_lib.restore_latest(
            self.manager, checkpoint_lib.abstract(payload), self.fingerprint, config_lib.comparable
        )
        if restored is None:
            return 0, payload
        logging.info("resuming from the checkpoint at step %d", restored[0])
        return restored

    def save(self, payload: dict[str, Any]) -> None:
        step_number = int(payload["state"].step)
        if step_number in self.manager.all_steps():
            return  # Already saved (a signal right after a periodic checkpoint).
        checkpoint_lib.save(self.manager, step_number, payload, {"fingerprint": self.fingerprint})


@contextlib.contextmanager
def _signals_to_flag():
    """SIGINT/SIGTERM set a flag (checked between steps) instead of killing mid-write."""
    received: list[int] = []
    handler = lambda signum, frame: received.append(signum)
    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _check_finite(metrics: dict[str, jax.Array], done: int, workdir: pathlib.Path) -> None:
    """Stops the run on a non-finite loss or synthetic set, keeping the last good checkpoint."""
    if not bool(metrics["finite"]):
        loss, grad_norm = float(metrics["loss"]), float(metrics["grad_norm"])
        if np.isfinite(loss) and not np.isfinite(grad_norm):
            # A finite loss with a NaN/inf gradient is a fault of the backward pass, not a step
            # too large (e.g. meta-gradients through Adam's sqrt at a zero second moment).
            advice = (
                "The loss was finite but its gradient was not: a numerical fault in the "
                "backward pass (report it with the config); lowering syn.lr will not help."
            )
        else:
            advice = "Lower syn.lr and run again."
        raise FloatingPointError(
            f"non-finite loss or synthetic images at step {done} (loss {loss}, gradient norm "
            f"{grad_norm}); the last good checkpoint is kept in {workdir / 'checkpoints'}. "
            + advice
        )


def _warn_diverging_unroll(config, metrics: dict[str, jax.Array], num_classes: int) -> bool:
    """The risk family's first step: warns (and returns True) when the network trained inside
    the graph scores the real groups worse than a uniform guess (mean cross-entropy above
    ln C), i.e. `match.unroll_lr` is past where its training is stable on this data. Its image
    gradient is then thousands of times larger and the image step scrambles the set: on
    Fashion-MNIST IPC 10 the unroll lr 0.1 chosen on digits gives cross-entropy 5.2 and a
    gradient of 3.3 per pixel, 0.03 gives 1.1 and 0.0014 (benchmarks/results/unroll_scale.md)."""
    if config.match.family != "risk":
        return False
    loss, chance = float(metrics["group_loss_mean"]), float(np.log(num_classes))
    if not loss > chance:
        return False
    logging.warning(
        "risk family: the network trained by the unroll (match.unroll_lr=%s, %d steps) has "
        "mean cross-entropy %.2f on the real groups, above ln(%d) = %.2f, a uniform guess's: "
        "its training diverges on this data and the image step will scramble the set. Lower "
        "match.unroll_lr (on Fashion-MNIST 0.03 trains where 0.1 diverges) and run again.",
        config.match.unroll_lr, config.match.unroll_steps, loss, num_classes, chance,
    )  # fmt: skip
    return True


def _log_step(log: artifacts.MetricsLog, metrics, done: int, elapsed: float) -> dict[str, Any]:
    """metrics.jsonl / TensorBoard record of step `done`; returns it."""
    record = {"step": done, **artifacts.scalars(metrics), "elapsed_s": elapsed}
    log.log(record)
    log.writer.add_histogram("distill/group_losses", np.asarray(metrics["group_losses"]), done)
    return record


def _select(run: _Run, state: step.State, best: dict, done: int, log) -> dict[str, Any]:
    """Scores the current set on validation; the new selection record (best so far)."""
    images, labels = step.synthetic_arrays(state, run.decode_fn, run.decoder)
    accuracy = report.validation_accuracy(
        run.config, run.dataset, images, labels, seeds=report.select_seeds(run.config)
    )
    log.log({"step": done, "validation_accuracy": accuracy})
    if not accuracy > float(best["accuracy"]):  # Also keeps the record on a NaN accuracy.
        return best
    return {
        "step": jnp.asarray(done, jnp.int32),
        "accuracy": jnp.asarray(accuracy, jnp.float32),
        "images": state.images,
    }


def _log_grid(run: _Run, log: artifacts.MetricsLog, state: step.State, done: int) -> None:
    pixels = run.dataset.denormalize(step.synthetic_arrays(state, run.decode_fn, run.decoder)[0])
    grid = artifacts.image_grid(pixels, run.dataset.num_classes)
    log.writer.add_image("synthetic", grid, done, dataformats="HWC")


def _loop(run: _Run, checkpoints: _Checkpoints, log, workdir, start_step: int) -> dict:
    """Iterations `start_step..num_iterations` (one jitted step each) with their periodic
    actions; the last logged metrics."""
    config, payload, last = run.config, run.payload, {}
    step_root = jax.random.wrap_key_data(payload["root_key"])  # Replicated: so are step keys.
    start = time.time() - log.elapsed_s  # A resumed run's clock goes on from its last log.
    progress = tqdm.tqdm(
        total=config.num_iterations, initial=start_step, desc="distill", unit="it", disable=None
    )
    with _signals_to_flag() as signals, progress:
        for i in range(start_step, config.num_iterations):
            new_state, metrics = run.step_fn(
                payload["state"], jax.random.fold_in(step_root, i), run.real
            )
            done = i + 1
            _check_finite(metrics, done, workdir)
            if i == start_step:
                _warn_diverging_unroll(config, metrics, run.dataset.num_classes)
            payload["state"] = new_state
            progress.update(1)
            final = done == config.num_iterations
            if done % config.log.every == 0 or final:
                last = _log_step(log, metrics, done, time.time() - start)
                progress.set_postfix(loss=f"{last['loss']:.4g}")
            if (config.eval.select_every and done % config.eval.select_every == 0) or final:
                payload["best"] = _select(run, new_state, payload["best"], done, log)
            if done % config.checkpoint.every == 0 or final:
                checkpoints.save(payload)
                _log_grid(run, log, new_state, done)
            if signals:
                checkpoints.save(payload)
                raise Interrupted(signals[0], done, workdir)
    return last


def _finish(run: _Run, out: pathlib.Path, log: artifacts.MetricsLog, distill_s: float):
    """Writes the last and the selected set, the grid and eval.json (with `distill_s`, the
    distillation's wall time); (images, labels, report)."""
    config, dataset, best = run.config, run.dataset, run.payload["best"]
    state = run.payload["state"]
    best_state = state.replace(images=best["images"])
    images, labels = step.synthetic_arrays(state, run.decode_fn, run.decoder)
    best_images, _ = step.synthetic_arrays(best_state, run.decode_fn, run.decoder)
    stored = {"param": config.syn.param, "factor": config.syn.factor}
    artifacts.save_synthetic(
        out / "synthetic_last.npz", images, labels, dataset, stored=_latents(state), **stored
    )
    artifacts.save_synthetic(
        out / "synthetic.npz", best_images, labels, dataset, stored=_latents(best_state), **stored
    )
    if config.syn.learn_generator:  # In syn.generator_checkpoint's format: a run can load it.
        (out / "generator.msgpack").write_bytes(
            flax.serialization.to_bytes(jax.device_get(best_state.images["generator"]))
        )
    artifacts.save_image_grid(
        out / "synthetic.png", dataset.denormalize(best_images), dataset.num_classes
    )
    result = report.evaluate_set(config, dataset, run.rare, best_images, labels)
    result.update(
        selected_step=int(best["step"]),
        validation_accuracy=float(best["accuracy"]),
        dataset=dataset.name,
        ipc=config.ipc,
        label_type="soft" if config.syn.learn_labels else "hard",
        distill_seconds=distill_s,
    )
    if isinstance(state, step.LearnedLrState):  # The risk family's learned unroll lr, last.
        result["learned_unroll_lr"] = float(jnp.exp(state.log_unroll_lr))
    (out / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
    for name in ("accuracy_mean", "worst_group_accuracy", "worst_class_accuracy"):
        if name in result:
            log.writer.add_scalar(f"eval/{name}", result[name], config.num_iterations)
    return best_images, labels, result


def _latents(state: step.State) -> Any:
    """The stored set without a learned generator's parameters (those go to generator.msgpack)."""
    return state.images["latents"] if isinstance(state.images, dict) else state.images


def distill(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> Result:
    """Distils as configured, selects the reported set on validation, evaluates it on test.

    Resumes from the latest checkpoint in `workdir/checkpoints` when there is one (bit-identical
    to an uninterrupted run). Writes config.json, metrics.jsonl, tensorboard/, synthetic.npz
    (the selected set), synthetic_last.npz, synthetic.png and eval.json to `workdir`.

    Raises:
      ValueError: an invalid config value (before any work).
      checkpoint.IncompatibleCheckpointError: `workdir` holds another configuration's run.
      FloatingPointError: the loss or the synthetic set became non-finite (the last good
        checkpoint is kept).
      Interrupted: SIGINT/SIGTERM (after saving a checkpoint).
    """
    # The user's input is read and checked before anything is written (errors.user_input).
    with errors.user_input():
        config_lib.validate(config)
        dataset, rare = build.load_data(config)
        config_lib.validate_against_data(config, dataset)
        decoder = build.create_decoder(config, dataset.image_shape)
    sharding.initialize_distributed(config)
    mesh = sharding.create_mesh(config)
    workdir = pathlib.Path(workdir)
    # Checkpoints go to the shared workdir from every process; other files from process 0.
    out = workdir if jax.process_index() == 0 else workdir / f"process_{jax.process_index()}"
    with workdir_lib.lock(out):
        run = _set_up(config, dataset, rare, mesh, decoder)
        checkpoints = _Checkpoints(workdir, run.fingerprint)
        start_step, run.payload = checkpoints.restore(run.payload)
        if jax.process_index() == 0:
            print(header(run, mesh, workdir, start_step), flush=True)
        with artifacts.MetricsLog(out, start_step=start_step) as log:
            (out / "config.json").write_text(config.to_json_best_effort(indent=2) + "\n")
            last = _loop(run, checkpoints, log, workdir, start_step)
            # Summed over resumed segments; a finished run only rescored logged it already.
            distill_s = last.get("elapsed_s", log.elapsed_s)
            images, labels, result = _finish(run, out, log, distill_s)
    logging.info(
        "test accuracy %.2f +- %.2f, worst group %.2f (selected step %d)",
        result["accuracy_mean"],
        result["accuracy_std"],
        result.get("worst_group_accuracy", float("nan")),
        result["selected_step"],
    )
    return Result(workdir=workdir, images=images, labels=labels, metrics=last, report=result)
