"""Tests for benchmarks/families.py's records: one record per run, whatever else the file holds."""

from benchmarks import families, harness


def _record(family: str, overrides: dict, accuracy: float, budget: float = 1800.0) -> dict:
    return {
        "dataset": "fashion_mnist", "ipc": 10, "seed": 0, "family": family,
        "risk": "-" if family == "random" else "mean", "budget_s": budget,
        "set": overrides, "report": {"accuracy_mean": accuracy},
    }  # fmt: skip


def test_runs_with_other_settings_are_other_records(tmp_path):
    """A pixel and a factorized run of one family, data, IPC, seed and budget are two records
    (the key once left the overrides out, and the second run replaced the first's record)."""
    path = tmp_path / "sets.json"
    factorized = {"syn.param": "factorized", "syn.factor": 2}
    harness.merge_results(
        path, [_record("distribution", factorized, 80.0)], key=families.record_key
    )
    merged = harness.merge_results(
        path, [_record("distribution", {}, 78.0)], key=families.record_key
    )
    assert sorted(r["report"]["accuracy_mean"] for r in merged) == [78.0, 80.0]
    # The same run again replaces its own record.
    merged = harness.merge_results(
        path, [_record("distribution", {}, 78.5)], key=families.record_key
    )
    assert sorted(r["report"]["accuracy_mean"] for r in merged) == [78.5, 80.0]


def test_the_random_subset_ignores_distillation_only_overrides():
    """The random row is shared by every run of its point that scores it the same way: the
    set's parameterisation does not change it; an evaluation override does."""
    plain = families.record_key(_record("random", {}, 70.0))
    factorized = {"syn.param": "factorized", "syn.factor": 2, "match.family": "distribution"}
    assert families.record_key(_record("random", factorized, 70.0)) == plain
    assert families.record_key(_record("random", {"eval.epochs": 300}, 70.0)) != plain
    # Distillation runs keep every override in their key.
    assert families.record_key(_record("gradient", factorized, 70.0)) != families.record_key(
        _record("gradient", {}, 70.0)
    )


def test_runs_of_one_seed_with_other_settings_are_other_rows(tmp_path):
    """Two runs of seed 0 that differ in an override are two rows naming it, never one row of
    '2 seeds'; the set's parameterisation and labels stay in their own columns."""
    adam = {"match.net_optimizer": "adam", "match.net_lr": 0.0003}
    factorized = {"syn.param": "factorized", "syn.factor": 2, "syn.init": "mix"}
    machine = {"cpu": "x", "cores": 2}
    records = [
        {**_record(family, overrides, accuracy), "command": "families", "machine": machine}
        for family, overrides, accuracy in [
            ("random", {}, 50.0), ("krr", {}, 61.9), ("krr", adam, 61.7), ("krr", factorized, 70.0)
        ]
    ]  # fmt: skip
    rows = [line for line in families.summarise(records, tmp_path / "t").splitlines()
            if line.startswith("| krr")]  # fmt: skip
    assert [row.split(" | ")[2:6] for row in rows] == [
        ["factorized f=2", "hard", "syn.init=mix", "1"],
        ["pixels", "hard", "-", "1"],
        ["pixels", "hard", "match.net_lr=0.0003, match.net_optimizer=adam", "1"],
    ]
    assert families.other_settings(_record("random", factorized, 50.0)) == "-"


def test_idm_is_its_presets_settings_and_its_row_shows_its_factorized_set():
    settings = dict(item.split("=", 1) for item in families.FAMILY_SETTINGS["idm"])
    assert settings["match.family"] == "distribution" and settings["match.syn_ce"] == "0.5"
    assert (settings["syn.param"], settings["syn.factor"]) == ("factorized", "2")
    assert not any(key.startswith(("eval.", "num_iterations")) for key in settings)
    record = {**_record("idm", {}, 80.0), "config": {"syn": {"param": "factorized", "factor": 2}}}
    assert families.row_kind(record) == ("factorized f=2", "hard")


def test_rows_say_which_machine_they_ran_on(tmp_path):
    """Budgets are CPU seconds, so rows from machines of different speed ran different
    iteration counts: each row names its machine, and the header says which is which."""
    fast, slow = {"cpu": "fast", "cores": 2}, {"cpu": "slow", "cores": 2}
    records = [
        {**_record(family, overrides, 70.0), "command": "families", "machine": machine}
        for family, overrides, machine in [
            ("random", {}, fast), ("krr", {}, fast), ("krr", {"match.num_real": 26}, slow)
        ]
    ]  # fmt: skip
    lines = [line.rstrip() for line in families.summarise(records, tmp_path / "t").splitlines()]
    assert "Machines: M1 = fast, 2 cores (2 rows); M2 = slow, 2 cores (1 rows)." in lines
    rows = {line.split(" | ")[4]: line for line in lines if line.startswith("| krr")}
    assert rows["-"].endswith("| M1 |") and rows["match.num_real=26"].endswith("| M2 |")
    # One machine: the line names it once, every row says M1.
    single = [
        line.rstrip() for line in families.summarise(records[:2], tmp_path / "t").splitlines()
    ]
    assert "Machine: M1 = fast, 2 cores." in single
    # A record made before records kept their machine shows '?'.
    assert harness.machine_label({}, harness.machine_labels(records)) == "?"


class _FakeClock:
    """`median_step_seconds`'s clock: each timer reads the next step's scripted duration."""

    def __init__(self, durations):
        self.durations = iter(durations)

    def __call__(self):
        duration = next(self.durations)
        return lambda: duration


def test_a_fast_step_is_timed_until_the_minimum_seconds_and_outliers_are_outvoted():
    calls = []
    durations = [4.2, 4.1, 2.6, 2.6, 2.5, 2.6, 2.6, 2.7, 2.6, 2.6, 2.6, 2.6, 2.6, 2.6]
    seconds = families.median_step_seconds(
        lambda: calls.append(1), min_seconds=30.0, clock=_FakeClock(durations)
    )
    assert len(calls) == 11  # 4.2 + 4.1 + 9 x ~2.6 first reaches 30 s.
    assert seconds == 2.6


def test_a_slow_step_is_timed_min_steps_times_and_a_fast_one_at_most_max_steps():
    slow = []
    clock = _FakeClock([200.0, 180.0, 190.0, 185.0])
    assert families.median_step_seconds(lambda: slow.append(1), clock=clock) == 190.0
    assert len(slow) == 3
    fast = []
    clock = _FakeClock([0.01] * 30)
    families.median_step_seconds(lambda: fast.append(1), max_steps=25, clock=clock)
    assert len(fast) == 25
