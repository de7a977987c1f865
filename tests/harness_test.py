"""Tests for benchmarks/harness.py: the host allocator every result records, the kept
workdirs from which an interrupted benchmark run resumes, and the resolved config a record
stands for."""

import argparse
import json

import pytest

import jaxdd
from benchmarks import ablation, families, harness, robust_gain


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
    """Same run and settings: the same workdir (so it resumes); other settings: another one."""
    parts = ("digits+rare", "ipc10", "seed0", "erm")
    first = harness.kept_workdir(tmp_path, parts, {"a": 1})
    assert first == harness.kept_workdir(tmp_path, parts, {"a": 1})
    assert first != harness.kept_workdir(tmp_path, parts, {"a": 2})
    assert first.parent == tmp_path
    assert harness.kept_workdir(tmp_path, ("a/b",), {}).parent == tmp_path


def test_a_family_run_under_another_default_is_another_workdir():
    """The families benchmark names a workdir by the resolved config it distils: a risk-family
    field changes the risk family's workdir (its checkpoint is another run) and no other
    family's (`config.comparable` leaves the field out of theirs)."""

    def name(family, *overrides):
        args = argparse.Namespace(eval_models=1, eval_epochs=2, set=list(overrides))
        config = families.family_config(args, "smoke", 2, 0, family)
        return families.workdir("runs", "smoke", 2, 0, family, "mean", [], config).name

    assert name("risk") == name("risk")
    assert name("risk") != name("risk", "match.unroll_lr=0.3")
    assert name("distribution") == name("distribution", "match.unroll_lr=0.3")


def test_a_record_stands_for_the_resolved_config_it_was_made_under(capsys):
    """`current_record` reuses a record of the same key and resolved config; one made under
    another config (a default changed since) is rerun, the fields that differ named; one from
    before records stored their config is reused, and said so."""
    config = jaxdd.load_config(harness.REPO / "configs" / "smoke.py")
    resolved = harness.record_config(config)
    record = {"key": "a", "config": resolved}
    assert harness.current_record([record], lambda r: r["key"], "a", resolved) is record
    assert harness.current_record([record], lambda r: r["key"], "b", resolved) is None
    config.syn.lr = config.syn.lr * 2
    assert (
        harness.current_record([record], lambda r: r["key"], "a", harness.record_config(config))
        is None
    )
    assert "syn.lr: recorded" in capsys.readouterr().out
    legacy = {"key": "a"}
    assert harness.current_record([legacy], lambda r: r["key"], "a", resolved) is legacy
    assert "before records stored their config" in capsys.readouterr().out
    # Not distilled: the matching sections do not count.
    config.match.family = "distribution"
    plain = harness.record_config(config, harness.UNDISTILLED_SECTIONS)
    assert plain == {k: resolved[k] for k in harness.UNDISTILLED_SECTIONS}


def test_robust_gain_reruns_a_record_made_under_other_defaults(tmp_path, monkeypatch, capsys):
    """A record of the same (dataset, IPC, seed, method, settings) whose stored resolved config
    differs from today's is not reused: the benchmark runs it again, the new record replaces it
    and the old one is kept in robustness.superseded.json; an unchanged one is reused without
    running anything; a run with other `--set` is another record beside it."""
    args = argparse.Namespace(
        datasets="smoke", ipcs="2", seeds="0", methods="random", iterations=1, eval_models=1,
        eval_epochs=1, full_epochs=0, set=[], workdir=str(tmp_path / "runs"),
    )  # fmt: skip
    path = tmp_path / "robustness.json"
    (first,) = robust_gain.run_missing(args, [], path)
    assert first["config"]["eval"]["epochs"] == 1

    def fail(*_):
        raise AssertionError("a current record was run again")

    monkeypatch.setattr(robust_gain, "run_method", fail)
    assert robust_gain.run_missing(args, [first], path) == [first]
    stale = json.loads(json.dumps(first))
    stale["config"]["model"]["width"] = -1  # As if the default width had changed since.
    stale["report"]["accuracy_mean"] = -1.0
    path.write_text(json.dumps([stale]))
    monkeypatch.undo()
    capsys.readouterr()
    (rerun,) = robust_gain.run_missing(args, [stale], path)
    assert "model.width: recorded -1" in capsys.readouterr().out
    assert rerun["report"]["accuracy_mean"] == first["report"]["accuracy_mean"]
    assert json.loads(path.read_text()) == [rerun]
    assert json.loads((tmp_path / "robustness.superseded.json").read_text()) == [stale]
    args.set = ["eval.lr=0.02"]
    (_, other) = robust_gain.run_missing(args, [rerun], path)
    assert other["settings"]["set"] == {"eval.lr": 0.02}
    assert json.loads(path.read_text()) == [rerun, other]


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


def test_robust_gain_tables_keep_runs_with_other_overrides_apart(tmp_path):
    """Two settings of the same methods in one results file: each method gets a row per
    `--set` (labelled by the overrides not every row shares), and robust − ERM pairs runs of
    the same overrides only."""

    def record(method, seed, accuracy, overrides):
        settings = {"eval": "1x1 epochs", "iterations": 1, "set": overrides}
        return {
            "dataset": "smoke", "ipc": 2, "seed": seed, "method": method, "seconds": 1.0,
            "settings": settings, "machine": harness.machine(),
            "report": {"accuracy_mean": accuracy, "label_type": "hard"},
        }  # fmt: skip

    plain, batch = {"cluster.num_clusters": 1}, {"cluster.num_clusters": 1, "match.num_real": 256}
    records = [
        record("erm", 0, 50.0, plain), record("robust", 0, 60.0, plain),
        record("erm", 0, 70.0, batch), record("robust", 0, 71.0, batch),
    ]  # fmt: skip
    text = robust_gain.summarise(records, tmp_path / "robustness")
    assert "| erm | 1 | hard | 50.0 ± 0.0 |" in text
    assert "| erm (match.num_real=256) | 1 | hard | 70.0 ± 0.0 |" in text
    assert (
        "Paired robust − erm (1 seed, no interval yet; per seed):  \n- accuracy: **+10.0**" in text
    )
    assert (
        "Paired robust (match.num_real=256) − erm (match.num_real=256) (1 seed, no interval "
        "yet; per seed):  \n- accuracy: **+1.0**"
    ) in text


def test_a_table_links_its_own_findings_else_those_that_cite_it(tmp_path):
    findings = "See robustness_k2.md and pre_robustness_k8.md."
    (tmp_path / "robustness_findings.md").write_text(findings)
    (tmp_path / "families_findings.md").write_text("robustness_k2.json, then robustness_k20.md")
    # No findings of its own: every findings file that names its .md or .json.
    assert harness.findings_link(tmp_path / "robustness_k2") == [
        "Findings (written by hand, not generated): "
        "[families_findings.md](families_findings.md), "
        "[robustness_findings.md](robustness_findings.md)",
        "",
    ]
    # A name inside a longer one is not a citation; nothing cites it: no lines.
    assert harness.findings_link(tmp_path / "robustness_k8") == []
    # Its own findings file wins over citations.
    (tmp_path / "robustness_k2_findings.md").write_text("own")
    assert harness.findings_link(tmp_path / "robustness_k2") == [
        "Findings (written by hand, not generated): "
        "[robustness_k2_findings.md](robustness_k2_findings.md)",
        "",
    ]


def test_an_ablation_table_links_the_findings_that_cite_it_unless_one_is_named(tmp_path):
    (tmp_path / "robustness_findings.md").write_text("Runs in defaults.md.")
    (tmp_path / "labels_findings.md").write_text("See defaults.json.")
    (tmp_path / "families_findings.md").write_text("Nothing cited.")
    text = ablation.summarise([], tmp_path / "defaults")
    assert (
        "Findings (written by hand, not generated): [labels_findings.md](labels_findings.md), "
        "[robustness_findings.md](robustness_findings.md)"
    ) in text
    named = ablation.summarise([], tmp_path / "defaults", findings="families")
    assert "[families_findings.md](families_findings.md)\n" in named
    assert "labels_findings" not in named
