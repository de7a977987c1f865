"""Tests for jaxdd.report: seeds, the test groups, and `evaluate`'s checks before any training."""

import pathlib

import numpy as np
import pytest

import jaxdd
from jaxdd import build, report

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(scope="module")
def config():
    return jaxdd.load_config(CONFIGS / "smoke.py")


def test_selection_and_test_seeds_are_disjoint_and_follow_the_run_seed(config):
    config.seed = 3
    test = report.eval_seeds(config, config.eval.num_models)
    select = report.select_seeds(config)
    assert test == [3000, 3001] and select == [3500, 3501]
    config.seed = 0


def test_test_groups_add_the_rare_groups(config, tmp_path):
    config.eval.cache_dir = str(tmp_path)
    config.data.rare = "invert"
    dataset, rare = build.load_data(config)
    groups = report.test_groups(config, dataset, rare)
    np.testing.assert_array_equal(groups["rare"], rare.group_of("test"))
    assert {"global", "per_class"} <= set(groups)
    for name, assignment in groups.items():
        assert assignment.shape == dataset.test.labels.shape, name
    config.data.rare = ""


def test_evaluate_rejects_a_set_of_another_shape(config):
    with pytest.raises(ValueError, match=r"do not match digits's \(8, 8, 1\)"):
        jaxdd.evaluate(config, np.zeros((10, 28, 28, 1)), np.arange(10))
    with pytest.raises(ValueError, match="pass images and labels, or path="):
        jaxdd.evaluate(config)


def test_rare_means_are_means_over_classes_skipping_empty_groups():
    means = report.rare_means([90.0, 10.0, 80.0, None, 100.0, 40.0])
    assert means == {"majority_accuracy": 90.0, "minority_accuracy": 25.0}


def test_validation_report_scores_every_network_and_the_rare_groups():
    # 2 networks x 4 images of 2 classes; groups 2c + minority: image 1 and 3 are minorities.
    predictions = np.array([[0, 0, 1, 1], [0, 1, 1, 0]])
    labels = np.array([0, 0, 1, 1])
    groups = np.array([0, 1, 2, 3])
    result = report.validation_report(predictions, labels, groups, num_classes=2)
    assert result == {
        "accuracy_mean": 75.0,  # 4 + 2 of 8 correct.
        "majority_accuracy": 100.0,
        "minority_accuracy": 50.0,
    }
    assert report.validation_report(predictions, labels, None, num_classes=2) == {
        "accuracy_mean": 75.0
    }


@pytest.mark.parametrize(
    "param, factor, same_compute, epochs",
    [("pixels", 1, True, 12), ("factorized", 2, False, 12), ("factorized", 2, True, 3)],
)
def test_same_compute_divides_the_epochs_of_a_factorized_set(
    monkeypatch, param, factor, same_compute, epochs
):
    config = jaxdd.load_config(CONFIGS / "smoke.py")
    config.eval.epochs, config.eval.same_compute = 12, same_compute
    config.syn.param, config.syn.factor = param, factor
    seen = {}
    monkeypatch.setattr(report.retrain, "train_models", lambda *args, **kwargs: seen.update(kwargs))
    report.train_networks(config, np.zeros((4, 8, 8, 1)), np.arange(4), num_classes=4, seeds=[0])
    assert seen["epochs"] == epochs
