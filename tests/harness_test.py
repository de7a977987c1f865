"""Tests for benchmarks/harness.py: the host allocator every result records, and the kept
workdirs from which an interrupted benchmark run resumes."""

import argparse
import json

import pytest

import jaxdd
from benchmarks import families, harness, robust_gain


@pytest.mark.parametrize(
    "env, expected",
    [
        ({}, "glibc malloc"),
        ({"GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX512F"}, "glibc malloc"),
        (
            {"GLIBC_TUNABLES": "glibc.malloc.mmap_max=0:glibc.cpu.x=1:glibc.malloc.top_pad=9"},
            "glibc malloc (GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.top_pad=9)",
        ),
        (
            {"LD_PRELOAD": "/usr/lib/libjemalloc.so.2", "MALLOC_CONF": "dirty_decay_ms:-1"},
            "libjemalloc.so.2 (MALLOC_CONF=dirty_decay_ms:-1)",
        ),
    ],
)
def test_host_allocator_names_what_the_environment_sets(monkeypatch, env, expected):
    for name in ("LD_PRELOAD", "MALLOC_CONF", "GLIBC_TUNABLES"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert harness.host_allocator() == expected


def test_kept_workdirs_are_named_by_run_and_settings(tmp_path):
    """Same run and settings: the same workdir (so it resumes); other settings: another one;
    the families benchmark's existing workdirs keep their names."""
    parts = ("digits+rare", "ipc10", "seed0", "erm")
    first = harness.kept_workdir(tmp_path, parts, {"a": 1})
    assert first == harness.kept_workdir(tmp_path, parts, {"a": 1})
    assert first != harness.kept_workdir(tmp_path, parts, {"a": 2})
    assert first.parent == tmp_path
    assert harness.kept_workdir(tmp_path, ("a/b",), {}).parent == tmp_path
    assert families.workdir("runs", "fashion_mnist", 10, 0, "krr", "mean", []).name == (
        "fashion_mnist_ipc10_seed0_krr_mean_4f53cda1"
    )


def test_an_interrupted_robust_gain_run_resumes_from_its_workdir(tmp_path, monkeypatch, capsys):
    """The benchmark's distillation stops after 2 of its 4 iterations (a crash after the
    checkpoint); running the same command again resumes at iteration 2, not from scratch, and
    reports what an uninterrupted run reports, its time the whole run's, not the last
    invocation's."""
    args = argparse.Namespace(
        datasets="smoke", ipcs="2", seeds="0", methods="erm", iterations=4, eval_models=1,
        eval_epochs=2, full_epochs=0, set=[], workdir=str(tmp_path / "runs"),
    )  # fmt: skip
    distill = jaxdd.distill

    def crash_at_half(config, workdir):
        config = config.copy_and_resolve_references()
        config.num_iterations = 2
        distill(config, workdir)
        raise RuntimeError("crashed after iteration 2")

    monkeypatch.setattr(jaxdd, "distill", crash_at_half)
    with pytest.raises(RuntimeError, match="crashed"):
        robust_gain.run_missing(args, [], tmp_path / "robustness.json")
    assert not (tmp_path / "robustness.json").exists()
    # As if the first invocation had distilled for 1000 s more than this machine took.
    (kept,) = (tmp_path / "runs").iterdir()
    log = [json.loads(line) for line in (kept / "metrics.jsonl").read_text().splitlines()]
    shifted = [{**r, "elapsed_s": r["elapsed_s"] + 1000} if "elapsed_s" in r else r for r in log]
    (kept / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in shifted))
    assert harness.logged_seconds(kept) > 1000
    monkeypatch.setattr(jaxdd, "distill", distill)
    capsys.readouterr()
    (resumed,) = robust_gain.run_missing(args, [], tmp_path / "robustness.json")
    assert "resuming at iteration 2, 4 iterations" in capsys.readouterr().out
    args.workdir = str(tmp_path / "uninterrupted")
    (whole,) = robust_gain.run_missing(args, [], tmp_path / "uninterrupted.json")
    assert resumed["report"]["accuracy_mean"] == whole["report"]["accuracy_mean"]
    assert resumed["report"]["group_accuracy"] == whole["report"]["group_accuracy"]
    assert resumed["seconds"] > 1000 and resumed["report"]["distill_seconds"] > 1000
    assert whole["seconds"] < 1000 and whole["report"]["distill_seconds"] < 1000
