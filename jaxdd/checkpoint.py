"""Checkpoints of a distillation run (orbax): save, find the latest good one, refuse a mismatch.

A checkpoint holds the full `step.State` (synthetic set, its optimiser state, the carried
network and its optimiser state, step), the run's root PRNG key, the validation-selection
record (best step, accuracy and images), and a JSON fingerprint of everything that fixes the
shapes and meaning of that state (dataset, ipc, model, image shape, ...). Orbax writes each
step to a temporary directory and renames it when complete, so a run killed mid-save leaves
the previous checkpoint intact; a step directory that is present but unreadable (corrupted,
truncated) is skipped with a warning in favour of the one before it.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.sharding import Mesh

from jaxdd import sharding

_KEEP = 3  # Checkpoints kept: enough to fall back past a corrupted latest one.


class IncompatibleCheckpointError(ValueError):
    """The workdir holds a checkpoint of a different run configuration."""


def create_manager(directory: str | pathlib.Path) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=_KEEP,
        create=True,
        # Synchronous saves: a checkpoint is on disk before the next step or a signal exit.
        enable_async_checkpointing=False,
    )
    return ocp.CheckpointManager(
        pathlib.Path(directory).absolute(), options=options, item_names=("payload", "meta")
    )


def save(manager: ocp.CheckpointManager, step: int, payload: Any, meta: dict[str, Any]) -> None:
    """Saves `payload` (a pytree of arrays) and `meta` (JSON) as checkpoint `step`."""
    manager.save(
        step,
        args=ocp.args.Composite(
            payload=ocp.args.StandardSave(_global_arrays(payload)), meta=ocp.args.JsonSave(meta)
        ),
        force=True,
    )
    manager.wait_until_finished()


def _global_arrays(tree: Any) -> Any:
    """`tree` with its host-local arrays replicated over every device of a multi-process run.

    Orbax saves only global arrays when there are several processes (it refuses host-local
    ones), while values that every process computes alike outside the mesh, such as the
    validation-selection record's step and accuracy, are host-local. One process: `tree`.
    """
    if jax.process_count() == 1:
        return tree
    mesh = Mesh(np.asarray(jax.devices()), (sharding.AXIS,))

    def to_global(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return x  # Already global (the state, replicated on the run's mesh).
        return sharding.replicate(x, mesh)

    return jax.tree.map(to_global, tree)


def differences(saved: dict[str, Any], current: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """The fields in which a saved resolved config (a fingerprint) differs from `current`'s:
    'section.field' (or a top-level key of `current`) -> (saved value, current value); a field
    one side lacks reads None there."""
    out = {}
    for k in current:
        a, b = saved.get(k), current.get(k)
        if isinstance(a, dict) and isinstance(b, dict):  # A config section: name its fields.
            out.update(
                {f"{k}.{f}": (a.get(f), b.get(f)) for f in {**a, **b} if a.get(f) != b.get(f)}
            )
        elif a != b:
            out[k] = (a, b)
    return out


def check_compatible(saved: dict[str, Any], current: dict[str, Any], directory: pathlib.Path):
    changed = differences(saved, current)
    if changed:
        details = ", ".join(
            f"{k}: checkpoint {a!r} vs config {b!r}" for k, (a, b) in changed.items()
        )
        raise IncompatibleCheckpointError(
            f"{directory} holds a checkpoint of a different run ({details}). To resume it, "
            "set those fields to the checkpoint's values (a default may have changed since); "
            "otherwise use another --workdir, or delete that directory to start this config "
            "from scratch."
        )


def restore_latest(
    manager: ocp.CheckpointManager,
    abstract_payload: Any,
    fingerprint: dict[str, Any],
    comparable: Callable[[dict[str, Any]], dict[str, Any]] = lambda saved: saved,
) -> tuple[int, Any] | None:
    """The newest readable checkpoint as (step, payload), or None when there is none.

    Unreadable newer checkpoints are renamed `<step>.unreadable` (see `_set_aside`). A saved
    fingerprint is compared with `fingerprint` as `comparable` makes it (`config.comparable`:
    without the fields its run does not use).

    Raises:
      IncompatibleCheckpointError: the newest readable checkpoint's fingerprint differs from
        `fingerprint` (another dataset, ipc, model, ...).
    """
    unreadable: list[int] = []
    for step in sorted(manager.all_steps(), reverse=True):
        try:
            meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))[
                "meta"
            ]
        except Exception as e:  # noqa: BLE001 -- any unreadable checkpoint: fall back, loudly.
            logging.warning("checkpoint %d is unreadable (%s); trying the previous one", step, e)
            unreadable.append(step)
            continue
        check_compatible(comparable(meta.get("fingerprint", {})), fingerprint, manager.directory)
        try:
            restored = manager.restore(
                step,
                args=ocp.args.Composite(payload=ocp.args.StandardRestore(abstract_payload)),
            )
        except Exception as e:  # noqa: BLE001
            logging.warning("checkpoint %d is unreadable (%s); trying the previous one", step, e)
            unreadable.append(step)
            continue
        _set_aside(manager, unreadable)
        return step, restored["payload"]
    _set_aside(manager, unreadable)
    return None


def _set_aside(manager: ocp.CheckpointManager, steps: list[int]) -> None:
    """Renames unreadable checkpoints to `<step>.unreadable` (kept for inspection, never
    deleted) so that the resumed run can write those steps again."""
    for step in steps:
        path = pathlib.Path(manager.directory) / str(step)
        target = path.with_name(f"{step}.unreadable")
        suffix = 0
        while target.exists():
            suffix += 1
            target = path.with_name(f"{step}.unreadable.{suffix}")
        path.rename(target)
        logging.warning("moved unreadable checkpoint %s to %s", path, target)
    if steps:
        manager.reload()


def abstract(tree: Any) -> Any:
    """Shape/dtype skeleton of `tree`, the restore target."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
