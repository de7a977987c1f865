"""Tests for jaxdd.artifacts: the synthetic.npz format, the image grid, the resumable log."""

import json

import numpy as np
import pytest

from jaxdd import artifacts, data


@pytest.fixture(scope="module")
def dataset():
    return data.load("digits", validation_fraction=0.1, test_fraction=0.2, seed=0)


def test_synthetic_round_trips_with_its_normalisation(tmp_path, dataset):
    images = dataset.train.images[:20]
    labels = np.repeat(np.arange(10), 2)
    artifacts.save_synthetic(tmp_path / "synthetic.npz", images, labels, dataset)
    loaded = artifacts.load_synthetic(tmp_path)  # A workdir finds its synthetic.npz.
    np.testing.assert_array_equal(loaded.images, images)
    np.testing.assert_array_equal(loaded.labels, labels)
    np.testing.assert_allclose(loaded.pixels, dataset.denormalize(images), atol=1e-6)
    assert loaded.class_names == dataset.class_names


def test_load_synthetic_says_what_is_wrong(tmp_path):
    with pytest.raises(FileNotFoundError, match="pass a run's workdir or its synthetic.npz"):
        artifacts.load_synthetic(tmp_path)
    np.savez(tmp_path / "other.npz", images=np.zeros((1, 8, 8, 1)))
    with pytest.raises(ValueError, match=r"not a jaxdd synthetic set: missing \['class_names'"):
        artifacts.load_synthetic(tmp_path / "other.npz")


def test_image_grid_has_one_row_per_class():
    pixels = np.random.default_rng(0).uniform(size=(6, 8, 8, 1)).astype(np.float32)
    grid = artifacts.image_grid(pixels, num_classes=3)
    scale = 256 // 10 // 4  # Bordered 10x10 cells, upscaled for legibility.
    assert grid.shape == (3 * 10 * scale, 2 * 10 * scale, 1) and grid.dtype == np.uint8
    cell = grid[scale : 9 * scale : scale, 11 * scale : 19 * scale : scale, 0]  # Row 0, image 1.
    np.testing.assert_array_equal(cell, (pixels[1, ..., 0] * 255).round().astype(np.uint8))


def test_metrics_log_drops_lines_past_the_resumed_step(tmp_path):
    with artifacts.MetricsLog(tmp_path, start_step=0) as log:
        for step in (2, 4, 6):
            log.log({"step": step, "loss": float(step)})
    with artifacts.MetricsLog(tmp_path, start_step=4) as log:
        log.log({"step": 6, "loss": 60.0})
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(line["step"], line["loss"]) for line in lines] == [(2, 2.0), (4, 4.0), (6, 60.0)]


def test_metrics_log_goes_on_with_the_distillation_clock_of_the_kept_lines(tmp_path):
    """A resumed run's clock starts where the kept lines left it; the lost steps' time (past
    the resumed step) is not counted, and a log whose clock restarted at a resume (written
    before the clock went on) sums its segments."""

    def elapsed(start_step):
        with artifacts.MetricsLog(tmp_path, start_step=start_step) as log:
            return log.elapsed_s

    assert elapsed(0) == 0.0
    with artifacts.MetricsLog(tmp_path, start_step=0) as log:
        for step, seconds in ((2, 10.0), (4, 20.0), (6, 30.0)):
            log.log({"step": step, "loss": 1.0, "elapsed_s": seconds})
        log.log({"step": 6, "validation_accuracy": 50.0})  # Other records carry no clock.
    assert elapsed(4) == 20.0
    with artifacts.MetricsLog(tmp_path, start_step=4) as log:
        log.log({"step": 6, "loss": 1.0, "elapsed_s": 3.0})  # An old log's restarted clock.
        log.log({"step": 8, "loss": 1.0, "elapsed_s": 7.0})
    assert elapsed(8) == 27.0


def test_factorized_set_keeps_its_stored_images(tmp_path, dataset):
    """A factorized set's npz holds the decoded training images (what `jaxdd evaluate` scores)
    and the stored images they decode from."""
    decoded = dataset.train.images[:40]
    stored = dataset.train.images[:10].reshape(10, 1, 8, 8, 1)
    labels = np.repeat(np.arange(10), 4)
    path = tmp_path / "synthetic.npz"
    artifacts.save_synthetic(
        path, decoded, labels, dataset, stored=stored, param="factorized", factor=2
    )
    with np.load(path) as f:
        np.testing.assert_array_equal(f["stored"], stored)
        assert str(f["param"]) == "factorized" and int(f["factor"]) == 2
    np.testing.assert_array_equal(artifacts.load_synthetic(path).images, decoded)
    artifacts.save_synthetic(path, decoded, labels, dataset)  # Pixels: no extra arrays.
    with np.load(path) as f:
        assert "stored" not in f.files and "param" not in f.files
