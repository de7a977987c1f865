"""Multi-host runs: two `jax.distributed` processes on this machine equal one process.

Two CLI processes (one CPU device each, joined by `jax.distributed` through a coordinator on
localhost, cross-process collectives over gloo, JAX's CPU default) distil the smoke config on a
2-device mesh that spans both processes. Their synthetic sets must equal, bit for bit, those
of one process that runs the same config on 2 forced CPU devices: every device computes the
same groups with the same program, and the one cross-device reduction (the sum of the two
devices' shares of the synthetic-set gradient) adds two numbers, which no reduction order
changes. A run without a working multi-process mesh would be a 1-device run, which differs
from the 2-device one by float reassociation (about 2e-6 here), so the comparison is exact.
(1 device against N is `sharding_test`'s subject.)
"""

import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
_TIMEOUT_S = 900  # The three runs together, cold compilation cache, busy machine.

# run_test's `_tiny` as flags: seconds-long, same data and family as the smoke config.
_TINY = (
    "ipc=1",
    "num_iterations=2",
    "model.width=8",
    "cluster.num_clusters=2",
    "cluster.num_iters=3",
    "match.num_real=4",
    "match.outer_loop=2",
    "match.inner_loop=1",
    "eval.num_models=1",
    "eval.epochs=1",
    "eval.global_k=2",
    "eval.per_class_k=1",
    "eval.select_every=0",
    "eval.select_num_models=1",
    "log.every=1",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _env(num_devices: int) -> dict[str, str]:
    """CPU with `num_devices` devices (the suite's compilation cache comes with `os.environ`,
    where conftest puts it)."""
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count="
    return {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": f"{flags}{num_devices}".strip()}


def _command(workdir: pathlib.Path, *distributed: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "jaxdd.main",
        f"--config={REPO / 'configs' / 'smoke.py'}",
        *(f"--config.{flag}" for flag in _TINY + distributed),
        f"--workdir={workdir}",
    ]


def _run_all(runs: dict[str, tuple[list[str], dict]], logs: pathlib.Path) -> None:
    """Runs the commands at once; fails (killing the others) as soon as one fails or time
    runs out, with every run's output in the message."""
    logs.mkdir()
    procs = {}
    try:
        for name, (cmd, env) in runs.items():
            with (logs / f"{name}.log").open("w") as log:
                procs[name] = subprocess.Popen(
                    cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
                )
        deadline = time.monotonic() + _TIMEOUT_S
        while time.monotonic() < deadline:
            exits = [p.poll() for p in procs.values()]  # Every one: poll() sets returncode.
            if all(code == 0 for code in exits) or any(code for code in exits):
                break  # All done, or one failed: the others would wait for it until time-out.
            time.sleep(0.5)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
    codes = {name: p.returncode for name, p in procs.items()}
    if any(codes.values()):
        outputs = "\n".join(
            f"--- {name} (exit {codes[name]}):\n{(logs / f'{name}.log').read_text()[-4000:]}"
            for name in runs
        )
        raise AssertionError(
            f"a run failed (exit -9: killed here, after another failed or {_TIMEOUT_S} s "
            f"passed):\n{outputs}"
        )


def test_two_processes_equal_one_process_on_as_many_devices(tmp_path):
    shared, single = tmp_path / "multihost", tmp_path / "single"
    address = f"distributed.coordinator_address=localhost:{_free_port()}"
    runs = {
        f"process_{i}": (
            _command(shared, address, "distributed.num_processes=2", f"distributed.process_id={i}"),
            _env(1),
        )
        for i in range(2)
    }
    runs["single"] = (_command(single), _env(2))
    _run_all(runs, tmp_path / "logs")

    for name in ("synthetic_last.npz", "synthetic.npz"):
        expected = np.load(single / name)
        for out in (shared, shared / "process_1"):  # Both processes hold the replicated set.
            saved = np.load(out / name)
            np.testing.assert_array_equal(saved["images"], expected["images"], f"{out}/{name}")
            np.testing.assert_array_equal(saved["labels"], expected["labels"])
    # Process 0 writes the run's files; process 1 only its own copy under process_1/.
    evals = {p.relative_to(shared) for p in shared.rglob("eval.json")}
    assert evals == {pathlib.Path("eval.json"), pathlib.Path("process_1", "eval.json")}
    report, expected = (json.loads((out / "eval.json").read_text()) for out in (shared, single))
    assert report.pop("distill_seconds") > 0 and expected.pop("distill_seconds") > 0  # Clocks.
    assert report == expected  # Same set, same programs.
    # Checkpoints: one shared directory, written by both processes (orbax's multi-host save).
    assert (shared / "checkpoints" / "2").is_dir()
    assert not (shared / "process_1" / "checkpoints").exists()
