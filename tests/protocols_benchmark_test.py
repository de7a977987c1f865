"""Tests for benchmarks/protocols.py: a kept run's set and its random subset scored under
FRePo's evaluation protocol, end to end on a tiny digits run, and its refusals."""

import json

import pytest

from benchmarks import harness, protocols
from jaxdd import artifacts, baselines, build
from jaxdd import config as config_lib


@pytest.fixture(scope="module")
def digits():
    return build.load_data(harness.load_config("digits"))[0]


def _fake_run(path, digits, *, rare=""):
    """A finished run's workdir: 1 image per class (FRePo's 10-image protocol), its config
    and eval.json."""
    config = harness.load_config("digits", "ipc=1", "seed=3", f"data.rare={rare}")
    indices = baselines.random_subset(digits.train.labels, ipc=1, seed=0)
    path.mkdir()
    artifacts.save_synthetic(
        path / "synthetic.npz", digits.train.images[indices], digits.train.labels[indices], digits
    )
    (path / "config.json").write_text(config.to_json_best_effort())
    (path / "eval.json").write_text(
        json.dumps({"num_models": 2, "accuracy_mean": 70.0, "accuracy_std": 1.0})
    )
    return path


def test_scores_a_run_under_frepos_protocol_and_renders(tmp_path, digits, monkeypatch):
    run = _fake_run(tmp_path / "run", digits)
    seen, frepo_evaluation, steps = [], config_lib.frepo_evaluation, [3]

    def short_frepo(config, num_images):
        # FRePo's protocol as it is (checked below), cut to a few steps for the test's time.
        config = frepo_evaluation(config, num_images)
        seen.append((num_images, config.eval.epochs, config.eval.network, config.seed))
        config.eval.epochs = steps[0]
        return config

    monkeypatch.setattr(protocols.config_lib, "frepo_evaluation", short_frepo)
    out = str(tmp_path / "protocols")
    protocols.main([f"--runs={run}", "--eval-models=1", f"--out={out}"])
    assert seen == [(10, 1000, "frepo", 3)]  # 10 images: FRePo's 1000 steps, the run's seed.
    results = json.loads((tmp_path / "protocols.json").read_text())
    (record,) = results["records"]
    assert (record["run"], record["protocol"], record["ipc"], record["labels"]) == (
        "run", "frepo", 1, "hard"
    )  # fmt: skip
    assert record["config"]["eval"]["network"] == "frepo"
    assert record["config"]["eval"]["optimizer"] == "adam"
    assert 0 <= record["accuracy_mean"] <= 100 and len(record["per_model_accuracy"]) == 1
    (random,) = results["random"].values()
    assert record["random"] == {k: v for k, v in random.items() if k != "config"}
    assert random["config"] == record["config"]  # The subset is scored under the same protocol.
    table = (tmp_path / "protocols.md").read_text()
    assert "| digits | 1 | gradient | cvar | hard | `run` | 70.0 ± 1.0 (2x" in table
    # A rerun of the same command under the same config reuses the record: nothing is trained.
    evaluate_set = protocols.report.evaluate_set
    monkeypatch.setattr(protocols.report, "evaluate_set", _never)
    protocols.main([f"--runs={run}", "--eval-models=1", f"--out={out}"])
    assert json.loads((tmp_path / "protocols.json").read_text()) == results
    # Under a changed protocol (another step count) the set and the random subset are rescored.
    monkeypatch.setattr(protocols.report, "evaluate_set", evaluate_set)
    steps[0] = 4
    protocols.main([f"--runs={run}", "--eval-models=1", f"--out={out}"])
    rerun = json.loads((tmp_path / "protocols.json").read_text())
    (record,) = rerun["records"]
    assert record["eval"].startswith("1x4 epochs") and record["config"]["eval"]["epochs"] == 4
    (random,) = rerun["random"].values()
    assert random["config"]["eval"]["epochs"] == 4


def _never(*args, **kwargs):
    raise AssertionError("a record made under today's config was scored again")


def test_refuses_unfinished_and_benchmark_runs(tmp_path, digits):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit):
        protocols.main([f"--runs={tmp_path / 'empty'}", f"--out={tmp_path / 'p'}"])
    rare = _fake_run(tmp_path / "rare", digits, rare="invert")
    with pytest.raises(ValueError, match="rare or spurious benchmark"):
        protocols.run_summary(rare)
