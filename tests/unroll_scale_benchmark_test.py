"""Tests for benchmarks/unroll_scale.py: the first step's figures of the risk family at the
initial set, and the table that says whether the unroll trains."""

import math

import pytest

from benchmarks import harness, unroll_scale

SMALL = ["match.unroll_steps=2", "match.num_real=8", "cluster.num_clusters=1"]


@pytest.mark.parametrize("unroll_lr, trains", [(0.1, True), (30.0, False)])
def test_measure_tells_an_unroll_that_trains_from_one_that_diverges(unroll_lr, trains):
    config = harness.measurement_config(
        "digits", ipc=1, seed=0,
        overrides=["match.family=risk", f"match.unroll_lr={unroll_lr}", *SMALL],
    )  # fmt: skip
    result = unroll_scale.measure(config, draws=2)
    assert len(result["draws"]) == 2 and result["chance"] == pytest.approx(math.log(10))
    assert (result["cross_entropy"] < result["chance"]) is trains
    assert result["cross_entropy_max"] >= result["cross_entropy"]
    assert result["gradient_rms"] > 0
    assert result["sgd_step"] == pytest.approx(result["gradient_rms"] * float(config.syn.lr))
    record = {
        "dataset": "digits", "ipc": 1, "seed": 0, "unroll_lr": unroll_lr, "set": SMALL,
        "syn_lr": float(config.syn.lr), "result": result, "command": "python -m x",
        "machine": harness.machine(),
    }  # fmt: skip
    row = unroll_scale.render([record], "unroll_scale").splitlines()[-1]
    assert f"| digits | 1 | 0 | {unroll_lr} |" in row
    assert ("| yes |" in row) is trains and ("| no: diverges |" in row) is not trains


def test_main_refuses_a_set_that_would_override_what_it_measures(monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["unroll_scale", "--set=match.unroll_lr=0.5"])
    with pytest.raises(SystemExit):
        unroll_scale.main()
    assert "give the unroll lrs there" in capsys.readouterr().err
