"""Tests for benchmarks/robust_summary.py: which records make each column, the paired
intervals, and the README rewrite."""

import numpy as np
import pytest
import scipy.stats

from benchmarks import harness
from benchmarks import robust_summary as rs

DM = rs.DM_SET


def _record(dataset, method, seed, overrides, minority, majority=90.0):
    """A robust_gain record of a 2-class rare benchmark: groups 2c + 1 are the minorities."""
    report = {
        "accuracy_mean": (minority + majority) / 2,
        "group_accuracy_rare": [majority, minority, majority, minority],
        "validation": {"minority_accuracy": minority - 1.0},
    }
    settings = {"set": overrides, "iterations": 10, "eval": "3x300 epochs"}
    return {"dataset": dataset, "ipc": 10, "seed": seed, "method": method,
            "settings": settings, "report": report}  # fmt: skip


def _files():
    """(gradient, dm, field) records on digits+rare, 3 seeds."""
    erm, robust = [60.0, 62.0, 65.0], [70.0, 71.0, 79.0]
    dm = [_record("digits+rare", "erm", s, DM, erm[s]) for s in range(3)]
    dm += [_record("digits+rare", "robust", s, DM, robust[s], 88.0) for s in range(3)]
    # Another experiment in the same file: never averaged into the plain rows.
    dm += [_record("digits+rare", "robust", s, {**DM, "robust.alpha": 0.75}, 5.0) for s in range(3)]
    dm += [_record("digits+rare", "random", 0, DM, 20.0)]
    field = [
        _record("digits+rare", "erm", s, {**rs.FIELD_SET, "match.num_real": n}, m)
        for s in range(2)
        for n, m in ((128, 10.0 + s), (256, 30.0 + s))
    ]
    gradient = [_record("digits+rare", "random", s, {}, 24.0) for s in (0, 1)]
    gradient += [_record("digits+rare", "robust", s, {}, 40.0) for s in range(3)]
    gradient += [_record("digits+rare", "robust+groups", s, {}, 50.0 + s) for s in range(3)]
    return gradient, dm, field


def test_columns_select_one_experiment_each():
    gradient, dm, field = _files()
    c = rs.columns(gradient, dm, field, "digits+rare")
    assert {s: r["minority_mean"] for s, r in c["robust"].items()} == {0: 70.0, 1: 71.0, 2: 79.0}
    # The field's DM: the largest real batch recorded (DM's 256), not the 128 rows.
    assert {s: r["minority_mean"] for s, r in c["field"].items()} == {0: 30.0, 1: 31.0}
    # The random subset from either file, one per seed.
    assert sorted(c["random"]) == [0, 1]
    # The shipped default's start (syn.init=groups) where it was run.
    assert rs.shipped_start(gradient, "digits+rare", lambda s: not s) == "robust+groups"
    assert rs.shipped_start(dm, "digits+rare", lambda s: s == DM) == "robust"
    assert [r["minority_mean"] for r in c["gradient"].values()] == [50.0, 51.0, 52.0]


def test_paired_interval_against_scipy():
    gradient, dm, field = _files()
    row = rs.table_rows(gradient, dm, field)[0].strip("| ").split(" | ")
    differences = np.array([70.0, 71.0, 79.0]) - np.array([60.0, 62.0, 65.0])
    low, high = scipy.stats.t.interval(
        0.95, 2, loc=differences.mean(), scale=scipy.stats.sem(differences)
    )
    assert row[6] == f"+{differences.mean():.1f} ± {(high - low) / 2:.1f}"
    assert row[7] == "−2.0 ± 0.0"  # Majority 88 against 90 on every seed.
    assert row[3] == "30.5 / 90.0 (2)"  # The field's DM.
    text = rs.summarise(gradient, dm, field)
    # Grouped ERM − the field's DM, seeds 0 and 1: +30.0 and +31.0.
    assert "(+30.0, +31.0)" in text
    assert "DM `robust`, gradient `robust+groups`" in text


def test_interval_cell_one_form_for_both_summaries():
    # robust_gain's files keep the ASCII minus, README's tables the typeset one.
    assert harness.interval_cell([-1.0, -3.0]) == "-2.0 ± 12.7"
    assert rs.interval([-1.0, -3.0]) == "−2.0 ± 12.7"
    assert harness.interval_cell([0.5]) == "+0.5"
    assert rs.interval([]) == "—"


def test_two_runs_of_one_seed_in_a_column_are_an_error():
    gradient, dm, field = _files()
    dm.append(_record("digits+rare", "erm", 0, DM, 1.0))
    with pytest.raises(ValueError, match="name one experiment"):
        rs.columns(gradient, dm, field, "digits+rare")


def test_readme_rewrite_replaces_only_the_marked_table(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n\n{rs.BEGIN}\n| old |\n{rs.END}\n\nafter\n")
    rs.rewrite_readme(readme, ["| new |", "| row |"])
    expected = f"intro\n\n{rs.BEGIN}\n| new |\n| row |\n{rs.END}\n\nafter\n"
    assert readme.read_text() == expected
    rs.rewrite_readme(readme, ["| new |", "| row |"])
    assert readme.read_text() == expected
    readme.write_text("no markers\n")
    with pytest.raises(ValueError, match="robust_summary:begin"):
        rs.rewrite_readme(readme, ["| new |"])
    assert readme.read_text() == "no markers\n"  # Nothing lost.


def test_plot_writes_a_png(tmp_path):
    gradient, dm, field = _files()
    rs.plot(gradient, dm, field, tmp_path / "summary.png")
    assert (tmp_path / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
