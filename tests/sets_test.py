"""Sets in and out: reading anyone's set (jaxdd npz, pixels npz, PyTorch layout, image folder),
exporting a run's set, the random real subset of the same size, and the two commands."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from jaxdd import artifacts, baselines, report, sets
from jaxdd.data import folder

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture
def pixels(digits):
    """A (20, 8, 8, 1) set of digits' train pixels in [0, 1], 2 per class, and its labels."""
    indices = baselines.random_subset(digits.train.labels, ipc=2, seed=0)
    return digits.denormalize(digits.train.images[indices]), digits.train.labels[indices]


def _normalised(digits, pixels):
    return (pixels - digits.mean) / digits.std


def test_a_runs_synthetic_npz_reads_back_exactly(tmp_path, digits, pixels):
    images, labels = _normalised(digits, pixels[0]), pixels[1]
    artifacts.save_synthetic(tmp_path / "synthetic.npz", images, labels, digits)
    for path in (tmp_path, tmp_path / "synthetic.npz"):  # The workdir or the file.
        got = sets.read(path, digits)
        np.testing.assert_allclose(got.images, images, atol=1e-5)
        np.testing.assert_array_equal(got.labels, labels)
        assert (got.source, got.label_type) == ("jaxdd run", "hard")


def test_learned_soft_labels_are_read_exported_and_counted_by_their_likeliest_class(
    tmp_path, digits, pixels
):
    images, hard = _normalised(digits, pixels[0]), pixels[1]
    soft = np.full((20, 10), 0.02, np.float32)
    soft[np.arange(20), hard] = 0.82
    artifacts.save_synthetic(tmp_path / "synthetic.npz", images, soft, digits)
    got = sets.read(tmp_path, digits)
    np.testing.assert_allclose(got.labels, soft)
    assert got.label_type == "soft" and np.all(got.per_class == 2)
    synthetic = artifacts.load_synthetic(tmp_path)
    sets.export(synthetic, tmp_path / "out")
    with np.load(tmp_path / "out" / "synthetic.npz") as saved:
        np.testing.assert_allclose(saved["labels"], soft)
        assert str(saved["label_type"]) == "soft"
    from_png = sets.read(tmp_path / "out" / "images", digits)  # Folders by likeliest class.
    np.testing.assert_array_equal(np.sort(from_png.labels), np.sort(hard))


def test_pixels_in_either_layout_and_dtype(tmp_path, digits, pixels):
    x, y = pixels
    want = _normalised(digits, np.round(x * 255) / 255)
    for name, images in {
        "nhwc_uint8": np.round(x * 255).astype(np.uint8),
        "nchw_float": (np.round(x * 255) / 255).transpose(0, 3, 1, 2).astype(np.float32),
        "nhw_float": (np.round(x * 255) / 255)[..., 0],
    }.items():
        np.savez(tmp_path / f"{name}.npz", images=images, labels=y)
        got = sets.read(tmp_path / f"{name}.npz", digits)
        np.testing.assert_allclose(got.images, want, atol=1e-5, err_msg=name)
        assert got.source == "npz (pixels)"


def test_normalised_npz_with_its_own_statistics_is_renormalised(tmp_path, digits, pixels):
    x, y = pixels
    mean, std = np.asarray([0.3], np.float32), np.asarray([0.2], np.float32)
    np.savez(tmp_path / "dc.npz", images=((x - mean) / std).transpose(0, 3, 1, 2), labels=y,
             mean=mean, std=std)  # fmt: skip
    got = sets.read(tmp_path / "dc.npz", digits)
    np.testing.assert_allclose(got.images, _normalised(digits, x), atol=1e-4)
    assert got.source == "npz (normalised)"


def test_export_round_trips_through_npz_and_folder(tmp_path, digits, pixels):
    x, y = pixels
    x = x.copy()
    x[0, 0, 0, 0] = 1.7  # Distillation can leave the valid range: export clips.
    synthetic = artifacts.Synthetic(
        images=_normalised(digits, x), labels=y, mean=digits.mean, std=digits.std,
        class_names=digits.class_names,
    )  # fmt: skip
    written = sets.export(synthetic, tmp_path / "out")
    assert written["clipped_fraction"] == pytest.approx(1 / x.size)
    saved = np.load(tmp_path / "out" / "synthetic.npz")
    assert saved["images"].shape == (20, 1, 8, 8) and saved["images"].max() <= 1.0
    assert str(saved["space"]) == "unit" and saved["labels"].dtype == np.int64
    clipped = _normalised(digits, np.clip(x, 0, 1))
    got = sets.read(tmp_path / "out", digits)  # The export folder: its synthetic.npz.
    np.testing.assert_allclose(got.images, clipped, atol=1e-5)
    from_png = sets.read(tmp_path / "out" / "images", digits)
    order = np.argsort(from_png.labels, kind="stable")
    np.testing.assert_array_equal(from_png.labels[order], np.sort(y))
    np.testing.assert_allclose(
        from_png.images[order], clipped[np.argsort(y, kind="stable")], atol=0.51 / 255 / 0.3
    )
    with pytest.raises(FileExistsError, match="never overwrites"):
        sets.export(synthetic, tmp_path / "out")


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"images": np.zeros((4, 9, 9, 1)), "labels": np.arange(4)}, "do not|images' have shape"),
        ({"images": np.zeros((4, 8, 8, 1)), "labels": np.arange(4) + 8}, "labels span 8..11"),
        ({"images": np.zeros((4, 8, 8, 1)), "labels": 3 * np.eye(10)[:4]}, "not logits"),
        ({"images": np.zeros((4, 8, 8, 1)), "labels": np.eye(4)}, "must be \\(N, 10\\) floats"),
        ({"images": np.full((4, 8, 8, 1), 3.0), "labels": np.arange(4)}, "look normalised"),
        ({"images": np.full((4, 8, 8, 1), np.nan), "labels": np.arange(4)}, "NaN"),
        ({"labels": np.arange(4)}, "no 'images' array"),
        ({"images": np.zeros((4, 8, 8, 1)), "labels": np.arange(4), "space": "lab"}, "unknown"),
    ],
)
def test_malformed_sets_are_named_errors(tmp_path, digits, arrays, message):
    np.savez(tmp_path / "set.npz", **arrays)
    with pytest.raises(ValueError, match=message):
        sets.read(tmp_path / "set.npz", digits)


def test_unreadable_missing_and_misnamed_sets(tmp_path, digits, pixels):
    (tmp_path / "cut.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ValueError, match="not a readable .npz"):
        sets.read(tmp_path / "cut.npz", digits)
    with pytest.raises(FileNotFoundError, match="no synthetic set at"):
        sets.read(tmp_path / "absent.npz", digits)
    x, y = pixels
    folder.write(tmp_path / "f", (x * 255).astype(np.uint8), y, [f"c{i}" for i in range(10)])
    with pytest.raises(ValueError, match=r"class folders \['c0'"):
        sets.read(tmp_path / "f", digits)


def test_random_real_subset_of_the_same_size(digits):
    uniform = np.repeat(np.arange(10), 3)
    np.testing.assert_array_equal(
        report.random_real_like(uniform, digits, seed=4),
        baselines.random_subset(digits.train.labels, ipc=3, seed=4),
    )
    uneven = np.asarray([0, 0, 0, 1, 5, 5])
    chosen = report.random_real_like(uneven, digits, seed=0)
    counts = np.bincount(digits.train.labels[chosen], minlength=10)
    assert counts.tolist() == [3, 1, 0, 0, 0, 2, 0, 0, 0, 0]
    assert len(set(chosen.tolist())) == len(chosen)
    with pytest.raises(ValueError, match="no random real subset of its size"):
        report.random_real_like(np.zeros(500, int), digits, seed=0)


def _run(module, *args, cwd):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    cmd = [sys.executable, "-m", module, *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_score_and_export_commands(tmp_path, digits, pixels):
    images, labels = _normalised(digits, pixels[0]), pixels[1]
    artifacts.save_synthetic(tmp_path / "synthetic.npz", images, labels, digits)
    exported = _run("jaxdd.export", f"--synthetic={tmp_path}", cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr[-2000:]
    assert (tmp_path / "export" / "images" / "9").is_dir()
    tiny = ["--config.eval.num_models=1", "--config.eval.epochs=2"]
    config = f"--config={REPO / 'configs' / 'smoke.py'}"
    args = [config, *tiny, f"--synthetic={tmp_path / 'export'}", f"--workdir={tmp_path / 's'}"]
    scored = _run("jaxdd.score", *args, cwd=tmp_path)
    assert scored.returncode == 0, scored.stderr[-2000:]
    assert "gain over random:" in scored.stdout
    result = json.loads((tmp_path / "s" / "eval.json").read_text())
    assert result["label_type"] == "hard" and result["images_per_class"] == [2] * 10
    assert result["gain"]["accuracy_mean"] == pytest.approx(
        result["set"]["accuracy_mean"] - result["random_real"]["accuracy_mean"]
    )
    again = _run("jaxdd.score", *args, cwd=tmp_path)  # Never overwrites a result.
    assert again.returncode == 2 and again.stderr.startswith("error: ")
    assert "eval.json exists" in again.stderr
    # FRePo's evaluation has a step count per set size; 20 images are not in its table.
    frepo = [*args[:-1], f"--workdir={tmp_path / 'f'}", "--protocol=frepo"]
    refused = _run("jaxdd.score", *frepo, cwd=tmp_path)
    assert refused.returncode == 2 and "no step count for 20 images" in refused.stderr
    assert not (tmp_path / "f").exists()
