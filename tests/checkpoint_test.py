"""Checkpoint and failure handling of the run loop: exact resume after SIGKILL, SIGTERM saves,
a corrupted latest checkpoint falls back, a mismatched config is refused, NaN stops the run."""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import jaxdd
from configs import smoke
from jaxdd import checkpoint
from jaxdd import config as config_lib
from jaxdd import run as run_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
# Enough iterations, each slow enough, that a kill lands mid-run; tiny evaluation.
OVERRIDES = {
    "num_iterations": 12,
    "model.width": 32,
    "checkpoint.every": 2,
    "eval.num_models": 1,
    "eval.epochs": 1,
    "eval.select_every": 0,
    "eval.select_num_models": 1,  # Selection and test then share one compiled training program.
}


def _config(**extra):
    config = smoke.get_config()
    for field, value in {**OVERRIDES, **extra}.items():
        section, _, key = field.rpartition(".")
        (config[section] if section else config)[key] = value
    return config


def _command(workdir, **extra):
    flags = [f"--config.{k}={v}" for k, v in {**OVERRIDES, **extra}.items()]
    return [
        sys.executable, "-m", "jaxdd.main", f"--config={REPO / 'configs' / 'smoke.py'}",
        *flags, f"--workdir={workdir}",
    ]  # fmt: skip


def _start(workdir):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.Popen(
        _command(workdir), cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip


def _wait_for_checkpoint(proc, workdir, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        # Finalised checkpoints only (orbax renames "<step>.orbax-checkpoint-tmp" when done).
        steps = [p.name for p in (workdir / "checkpoints").glob("[0-9]*") if p.name.isdigit()]
        if steps:
            return steps
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        time.sleep(0.02)
    raise TimeoutError("no checkpoint appeared")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    jaxdd.distill(_config(), workdir)
    return workdir


def _assert_same_run(workdir, reference):
    for name in ("synthetic_last.npz", "synthetic.npz"):
        got, want = np.load(workdir / name), np.load(reference / name)
        np.testing.assert_array_equal(got["images"], want["images"])  # bit-identical
    strip = lambda path: [
        {k: v for k, v in json.loads(line).items() if k != "elapsed_s"}
        for line in path.read_text().splitlines()
    ]
    assert strip(workdir / "metrics.jsonl") == strip(reference / "metrics.jsonl")
    elapsed = [
        record["elapsed_s"]
        for record in map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines())
        if "elapsed_s" in record
    ]
    assert elapsed == sorted(elapsed)  # The clock goes on across the resume...
    report = json.loads((workdir / "eval.json").read_text())
    assert report["distill_seconds"] == elapsed[-1]  # ...to the run's distillation time.


def test_sigkill_then_resume_is_bit_identical(tmp_path, uninterrupted):
    proc = _start(tmp_path)
    _wait_for_checkpoint(proc, tmp_path)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "synthetic_last.npz").exists(), "the kill must land mid-run"
    jaxdd.distill(_config(), tmp_path)  # the same command again: resumes
    _assert_same_run(tmp_path, uninterrupted)


def test_sigterm_saves_a_checkpoint_and_exits(tmp_path, uninterrupted):
    proc = _start(tmp_path)
    _wait_for_checkpoint(proc, tmp_path)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode != 0
    assert "SIGTERM received: saved a checkpoint at step" in stderr
    step = int(stderr.split("saved a checkpoint at step ")[1].split()[0])
    assert (tmp_path / "checkpoints" / str(step)).is_dir()
    jaxdd.distill(_config(), tmp_path)
    _assert_same_run(tmp_path, uninterrupted)


def test_corrupted_latest_checkpoint_falls_back_to_the_previous(tmp_path, uninterrupted, caplog):
    jaxdd.distill(_config(num_iterations=6), tmp_path)
    latest = tmp_path / "checkpoints" / "6"
    for path in latest.rglob("*"):
        if path.is_file() and path.stat().st_size > 0:
            path.write_bytes(b"\0" * 7)  # truncated garbage
    result = jaxdd.distill(_config(), tmp_path)  # 12 iterations: resumes from iteration 4
    assert any("checkpoint 6 is unreadable" in r.getMessage() for r in caplog.records)
    assert (tmp_path / "checkpoints" / "6.unreadable").is_dir()  # set aside, not deleted
    assert result.metrics["step"] == 12
    _assert_same_run(tmp_path, uninterrupted)


def test_checkpoint_of_another_config_is_refused(tmp_path):
    jaxdd.distill(_config(num_iterations=2), tmp_path)
    with pytest.raises(
        checkpoint.IncompatibleCheckpointError, match="ipc: checkpoint 2 vs config 3"
    ):
        jaxdd.distill(_config(num_iterations=2, ipc=3), tmp_path)
    # num_iterations and evaluation may change: continuing a finished run for more works.
    assert jaxdd.distill(_config(num_iterations=4), tmp_path).metrics["step"] == 4


def test_fields_of_families_a_run_does_not_use_do_not_refuse_its_checkpoint(tmp_path, monkeypatch):
    """Another family's settings (a changed default, say) leave a run's checkpoints resumable,
    also those saved before such fields were left out of fingerprints; its own family's are
    still a different run."""
    other_families = {"match.unroll_lr": 0.5, "match.krr_ridge": 1e-3}
    for saved_before in (True, False):  # A fingerprint with every field / as saved today.
        with monkeypatch.context() as patch:
            if saved_before:
                patch.setattr(config_lib, "comparable", lambda fingerprint: fingerprint)
            jaxdd.distill(_config(num_iterations=2, **other_families), tmp_path / str(saved_before))
        resumed = jaxdd.distill(_config(num_iterations=4), tmp_path / str(saved_before))
        assert resumed.metrics["step"] == 4
    risk = {"match.family": "risk", "match.unroll_steps": 2}
    risk.update({"match.outer_loop": -1, "match.inner_loop": -1})  # The risk family's 1 / 0.
    jaxdd.distill(_config(num_iterations=1, **risk), tmp_path / "risk")
    refused = "match.unroll_lr: checkpoint 0.1 vs config 0.5"  # Only the field that differs.
    with pytest.raises(checkpoint.IncompatibleCheckpointError, match=f"{refused}\\)"):
        jaxdd.distill(_config(num_iterations=2, **risk, **other_families), tmp_path / "risk")


@pytest.mark.parametrize(
    "loss, grad_norm, advice",
    [
        (float("nan"), float("nan"), "Lower syn.lr"),  # The step overshot: a smaller one.
        (14.3, float("inf"), "lowering syn.lr will not help"),  # The backward pass broke.
    ],
)
def test_non_finite_step_says_what_broke(tmp_path, loss, grad_norm, advice):
    metrics = {"finite": np.bool_(False), "loss": np.float32(loss), "grad_norm": grad_norm}
    with pytest.raises(FloatingPointError, match=advice):
        run_lib._check_finite(metrics, 24, tmp_path)


@pytest.mark.parametrize(
    "family, loss, warned",
    [
        ("risk", 4.0, True),  # Fashion-MNIST at unroll lr 0.1: worse than a uniform guess.
        ("risk", 1.1, False),  # At 0.03: the unrolled network learned something.
        ("gradient", 40.0, False),  # Other families' losses are not cross-entropies.
    ],
)
def test_a_diverging_unroll_is_named_at_the_first_step(monkeypatch, family, loss, warned):
    messages = []
    monkeypatch.setattr(run_lib.logging, "warning", lambda *args: messages.append(args))
    config = _config(**{"match.family": family})
    metrics = {"group_loss_mean": np.float32(loss)}
    assert run_lib._warn_diverging_unroll(config, metrics, num_classes=10) is warned
    assert len(messages) == int(warned)
    if warned:
        text = messages[0][0] % messages[0][1:]
        assert "above ln(10) = 2.30" in text and "Lower match.unroll_lr" in text


def test_non_finite_synthetic_set_stops_with_the_step_and_keeps_checkpoints(tmp_path):
    with pytest.raises(FloatingPointError, match="non-finite loss or synthetic images at step"):
        jaxdd.distill(_config(**{"syn.lr": 1e38, "checkpoint.every": 1}), tmp_path)
    steps = sorted(
        int(p.name) for p in (tmp_path / "checkpoints").glob("[0-9]*") if p.name.isdigit()
    )
    manager = checkpoint.create_manager(tmp_path / "checkpoints")
    assert manager.all_steps() == steps  # every saved checkpoint is a complete, finite one
    shutil.rmtree(tmp_path)
