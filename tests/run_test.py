"""End-to-end tests of jaxdd.run (the loop) and the CLI on tiny configs (TFDS data mocked)."""

import json
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

import jaxdd
from configs import smoke
from jaxdd import build, data, run
from jaxdd import config as config_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
FASHION_MNIST = pathlib.Path(data.FASHION_MNIST_DIR)  # apt-get's dataset-fashion-mnist


def _tiny(config):
    """Shrinks any config to a seconds-long run without changing its data or family."""
    config.ipc = 1
    config.num_iterations = 2
    config.model.width = 8
    config.cluster.num_clusters = 2
    config.cluster.num_iters = 3
    config.match.num_real = 4
    config.match.outer_loop = 2
    config.match.inner_loop = 1
    config.match.unroll_steps = 2
    config.eval.num_models = 1
    config.eval.epochs = 1
    config.eval.global_k = 2
    config.eval.per_class_k = 1
    config.eval.select_every = 0
    config.eval.select_num_models = 1  # Selection and test share one compiled training program.
    # One shifted test split (each shift is its own compiled program; the smoke run below
    # checks all four are reported).
    config.eval.shifts = {"invert": 0.0}
    config.log.every = 1
    return config


def test_rare_subpopulation_run_reports_minority_groups(tmp_path):
    config = _tiny(smoke.get_config())
    config.data.rare = "invert"
    result = jaxdd.distill(config, tmp_path)
    assert result.report["dataset"] == "digits+rare-invert"
    groups = np.asarray(result.report["group_accuracy_rare"], float)
    assert len(groups) == 20  # (class, majority/minority)
    # Means over classes of each kind of group (eval.json, beside the worst minority group).
    assert result.report["majority_accuracy"] == pytest.approx(np.nanmean(groups[0::2]))
    assert result.report["minority_accuracy"] == pytest.approx(np.nanmean(groups[1::2]))
    # The same networks on the validation split, where settings are chosen.
    validation = result.report["validation"]
    assert set(validation) == {"accuracy_mean", "majority_accuracy", "minority_accuracy"}
    assert all(0.0 <= v <= 100.0 for v in validation.values())


def test_initial_set_is_what_a_run_starts_from(tmp_path, monkeypatch):
    """`run.initial_set` (the benchmarks' `start` rows) equals the state a run starts from:
    with the loop skipped, the run's last set is its initial one."""
    config = _tiny(smoke.get_config())
    config.ipc = 2
    config.data.rare = "invert"
    config.syn.init = "groups"
    dataset, _ = build.load_data(config)
    images, labels = run.initial_set(config, dataset)
    monkeypatch.setattr(run, "_loop", lambda *args, **kwargs: {})
    jaxdd.distill(config, tmp_path)
    started = jaxdd.load_synthetic(tmp_path / "synthetic_last.npz")
    np.testing.assert_array_equal(images, started.images)
    np.testing.assert_array_equal(labels, started.labels)
    # Real training images of their own class (`groups`: one member of each subgroup).
    train = dataset.train.images.reshape(len(dataset.train.images), -1)
    for image, label in zip(images.reshape(len(images), -1), labels, strict=True):
        matches = np.flatnonzero((train == image).all(axis=1))
        assert matches.size and (dataset.train.labels[matches] == label).all()


def test_smoke_run_writes_every_file(tmp_path):
    result = jaxdd.distill(smoke.get_config(), tmp_path)
    for name in (
        "synthetic.npz",
        "synthetic_last.npz",
        "synthetic.png",
        "metrics.jsonl",
        "config.json",
        "eval.json",
    ):
        assert (tmp_path / name).is_file(), name
    saved = np.load(tmp_path / "synthetic.npz")
    assert saved["images"].shape == (20, 8, 8, 1)
    np.testing.assert_array_equal(saved["labels"], np.repeat(np.arange(10), 2))
    np.testing.assert_array_equal(saved["images"], result.images)
    report = json.loads((tmp_path / "eval.json").read_text())
    for key in (
        "accuracy_mean",
        "accuracy_std",
        "group_accuracy",
        "mean_group_accuracy",
        "worst_group_accuracy",
        "worst_class_accuracy",
        "shift_accuracy",
        "num_models",
        "seeds",
    ):
        assert key in report, key
    assert report["num_models"] == len(report["seeds"]) == 2
    assert set(report["shift_accuracy"]) == {
        "gaussian_noise",
        "gaussian_blur",
        "invert",
        "contrast",
    }
    assert 0 <= report["worst_group_accuracy"] <= report["mean_group_accuracy"] <= 100
    assert report["selected_step"] in (2, 4)  # chosen on validation among the checkpoints
    assert saved["mean"].shape == (1,) and saved["std"].shape == (1,)
    assert list(saved["class_names"]) == [str(i) for i in range(10)]
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [line for line in lines if "loss" in line]
    assert [line["step"] for line in steps] == [2, 4]
    assert all(line["group_loss_max"] >= line["group_loss_mean"] for line in steps)
    selections = [line for line in lines if "validation_accuracy" in line]
    assert [line["step"] for line in selections] == [2, 4]
    assert json.loads((tmp_path / "config.json").read_text())["ipc"] == 2


@pytest.mark.parametrize("family", ["distribution", "risk"])
def test_other_families_run_end_to_end(tmp_path, family):
    config = _tiny(smoke.get_config())
    config.match.family = family
    config.match.outer_loop, config.match.inner_loop = -1, -1  # 1 / 0: fresh networks.
    result = jaxdd.distill(config, tmp_path)
    assert np.isfinite(result.metrics["loss"])


def test_idc_method_runs_end_to_end_with_real_network_training(tmp_path):
    config = _tiny(config_lib.load(REPO / "configs" / "digits.py:idc"))
    config.match.net_data, config.eval.batch_size = 16, 16
    result = jaxdd.distill(config, tmp_path)
    assert result.metrics["step"] == 2 and np.isfinite(result.metrics["loss"])
    stored = np.load(tmp_path / "synthetic.npz")
    assert stored["images"].shape[0] == 4 * stored["stored"].shape[0]  # f = 2: 4 per stored.


# Configs of one image shape run in one test, one after the other: the second reuses the first's
# compiled step and training programs from the compilation cache (MNIST and SVHN/CIFAR-10 load
# through the real TFDS code, offline, 200 random examples per split; Fashion-MNIST from its
# Debian package's IDX files).
@pytest.mark.parametrize(
    "names", [("digits",), ("fashion_mnist", "mnist"), ("svhn", "cifar10")], ids="+".join
)
def test_every_shipped_config_runs(tmp_path, names):
    unavailable = {"fashion_mnist"} if not FASHION_MNIST.is_dir() else set()
    for name in names:
        if name in unavailable:
            continue  # The others of its shape still run; the skip is reported below.
        config = _tiny(config_lib.load(REPO / "configs" / f"{name}.py"))
        if name in ("mnist", "svhn", "cifar10"):
            with tfds.testing.mock_data(num_examples=200):
                result = jaxdd.distill(config, tmp_path / name)
        else:
            result = jaxdd.distill(config, tmp_path / name)
        assert result.metrics["step"] == 2 and np.isfinite(result.metrics["loss"]), name
        assert (tmp_path / name / "synthetic.png").is_file(), name
    if unavailable.intersection(names):
        pytest.skip("fashion_mnist not run: apt-get install -y dataset-fashion-mnist")


def test_cli_with_overrides(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    cmd = [
        sys.executable,
        "-m",
        "jaxdd.main",
        f"--config={REPO / 'configs' / 'smoke.py'}",
        "--config.num_iterations=1",
        "--config.robust.risk=max",
        f"--workdir={tmp_path}",
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # A quiet run: the three-line header and the two result lines (no progress bar off a
    # terminal), no third-party INFO records; room for a warning that matters.
    lines = (proc.stdout + proc.stderr).splitlines()
    info = [line for line in lines if re.match(r"I\d{4} ", line) or "orbax" in line]
    assert len(lines) <= 8 and not info, "\n".join(lines[:40])
    assert proc.stdout.splitlines()[0].startswith("digits: 10 classes, 8x8x1 images")
    assert proc.stdout.splitlines()[-1].startswith(f"wrote {tmp_path}")
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["num_iterations"] == 1 and config["robust"]["risk"] == "max"
    assert (tmp_path / "synthetic.npz").is_file()


def test_cli_rejects_bad_value_before_any_work(tmp_path):
    cmd = [sys.executable, "-m", "jaxdd.main", "--config.robust.alpha=1.5", f"--workdir={tmp_path}"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "config.robust.alpha=1.5 is invalid" in proc.stderr
    assert not (tmp_path / "metrics.jsonl").exists()


def test_too_many_clusters_for_the_data(tmp_path):
    config = smoke.get_config()
    config.cluster.num_clusters = 500
    with pytest.raises(ValueError, match="exceeds the smallest class"):
        jaxdd.distill(config, tmp_path)
