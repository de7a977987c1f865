"""Tests for jaxdd.robustness: test-set partitions and their cache, the report."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdd import models, robustness

jax.config.update("jax_enable_x64", False)

NUM_CLASSES = 3
MODES = 3  # Planted sub-populations per class.
K = 3  # per_class_k of the tests.
SMALL_CLASS = 2  # Has 2 < K examples: its K is clipped.
# One seeding per K-means: compiling best-of-4 costs seconds on a CPU and is tested elsewhere.
PARTITION_KW = dict(num_classes=NUM_CLASSES, global_k=4, per_class_k=K, num_inits=1)


def planted_test_set(per_mode: int = 4, seed: int = 0):
    """8x8 images: class c, mode m lights up a distinct 2-pixel band; small noise on top.

    Classes 0 and 1 have `MODES * per_mode` images, `SMALL_CLASS` only 2 (from modes 0 and 1).
    Returns images (N, 8, 8, 1) in [0, 1], labels (N,) and the planted mode of each image.
    """
    rng = np.random.default_rng(seed)
    images, labels, modes = [], [], []
    for c in range(NUM_CLASSES):
        for m in range(MODES):
            band = np.zeros((8, 8, 1), np.float32)
            if m < 2:
                band[4 * m : 4 * m + 2, :] = 1.0  # Horizontal bands.
            else:
                band[:, 2 * c : 2 * c + 2] = 1.0  # A vertical band per class.
            band[:, :, 0] += 0.3 * c / NUM_CLASSES  # Classes differ a little in brightness.
            count = (1 if m < 2 else 0) if c == SMALL_CLASS else per_mode
            for _ in range(count):
                images.append(np.clip(band + rng.normal(scale=0.05, size=band.shape), 0, 1))
                labels.append(c)
                modes.append(c * MODES + m)
    return np.stack(images).astype(np.float32), np.array(labels, np.int32), np.array(modes)


@pytest.fixture(scope="module")
def test_set():
    return planted_test_set()


@pytest.fixture(scope="module")
def partitions(test_set):
    images, labels, _ = test_set
    return robustness.test_partitions(images, labels, key=jax.random.key(0), **PARTITION_KW)


# --- partitions ----------------------------------------------------------------------------------


def test_partitions_are_deterministic_and_in_range(test_set, partitions):
    images, labels, _ = test_set
    again = robustness.test_partitions(images, labels, key=jax.random.key(0), **PARTITION_KW)
    for name in ("global", "per_class"):
        np.testing.assert_array_equal(partitions[name], again[name])
        assert partitions[name].shape == labels.shape
        assert partitions[name].dtype == np.int32
    assert sorted(np.unique(partitions["global"])) == list(range(4))
    np.testing.assert_array_equal(partitions["per_class"] // K, labels)
    # Classes with >= K examples: all K groups non-empty.
    large = partitions["per_class"][labels != SMALL_CLASS]
    assert sorted(np.unique(large)) == list(range(K * SMALL_CLASS))


def test_small_class_is_clipped_to_one_cluster_per_example(test_set, partitions):
    _, labels, _ = test_set
    small = partitions["per_class"][labels == SMALL_CLASS]
    np.testing.assert_array_equal(np.sort(small), [K * SMALL_CLASS, K * SMALL_CLASS + 1])


def test_per_class_partition_recovers_planted_modes(test_set, partitions):
    _, labels, modes = test_set
    large = labels != SMALL_CLASS
    # Every planted mode of a large class is one group, and different modes different groups.
    pairs = set(zip(modes[large].tolist(), partitions["per_class"][large].tolist(), strict=True))
    assert len(pairs) == len(set(modes[large].tolist())) == MODES * SMALL_CLASS


def test_cache_hits_and_misses(tmp_path, monkeypatch, test_set, partitions):
    images, labels, _ = test_set
    kwargs = dict(key=jax.random.key(0), **PARTITION_KW)
    first = robustness.cached_partitions(tmp_path, "npz:/a b/c.npz", images, labels, **kwargs)
    files = list(tmp_path.iterdir())
    assert len(files) == 1 and files[0].suffix == ".npz"
    for name in ("global", "per_class"):
        np.testing.assert_array_equal(first[name], partitions[name])

    def recompute(*args, **kw):
        raise AssertionError("the cache should have been hit")

    with monkeypatch.context() as patch:
        patch.setattr(robustness, "test_partitions", recompute)
        hit = robustness.cached_partitions(tmp_path, "npz:/a b/c.npz", images, labels, **kwargs)
    for name in ("global", "per_class"):
        np.testing.assert_array_equal(hit[name], first[name])

    calls = []

    def counted(*args, **kw):
        calls.append(1)
        return {"global": np.zeros(labels.size, np.int32), "per_class": labels * K}

    monkeypatch.setattr(robustness, "test_partitions", counted)
    changed_pixel = images.copy()
    changed_pixel[0, 0, 0, 0] += 0.01
    robustness.cached_partitions(tmp_path, "npz:/a b/c.npz", changed_pixel, labels, **kwargs)
    changed_label = labels.copy()
    changed_label[0] = 1 - changed_label[0]
    robustness.cached_partitions(tmp_path, "npz:/a b/c.npz", images, changed_label, **kwargs)
    other_key = {**kwargs, "key": jax.random.key(5)}
    robustness.cached_partitions(tmp_path, "npz:/a b/c.npz", images, labels, **other_key)
    assert len(calls) == 3
    assert len(list(tmp_path.iterdir())) == 4


# --- report --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def networks():
    """Two randomly initialised tiny MLPs: the report is about bookkeeping, not learning."""
    model = models.instantiate("mlp", num_classes=NUM_CLASSES, width=8, depth=2)
    keys = jax.random.split(jax.random.key(0), 2)
    return model, jax.vmap(lambda k: models.init_params(model, k, (8, 8, 1)))(keys)


def test_robustness_report(test_set, partitions, networks):
    images, labels, _ = test_set
    mean, std = np.array([0.3], np.float32), np.array([0.4], np.float32)
    normalised = (images - mean) / std
    model, params = networks
    shifts = {"gaussian_noise": 0.1, "gaussian_blur": 1.0, "invert": None, "contrast": 1.0}
    report = robustness.robustness_report(
        model,
        params,
        normalised,
        labels,
        mean=mean,
        std=std,
        partitions=partitions,
        shifts=shifts,
        key=jax.random.key(1),
        num_classes=NUM_CLASSES,
        batch_size=16,
    )
    json.dumps(report, allow_nan=False)  # Strict JSON: plain floats, no NaN.

    logits = jax.vmap(lambda p: model.apply({"params": p}, normalised)[0])(params)
    correct = np.argmax(logits, axis=-1) == labels
    np.testing.assert_allclose(report["per_model_accuracy"], 100 * correct.mean(1), rtol=1e-5)
    np.testing.assert_allclose(report["accuracy_mean"], 100 * correct.mean(), rtol=1e-5)
    np.testing.assert_allclose(report["accuracy_std"], 100 * correct.mean(1).std(), atol=1e-4)
    assert report["num_models"] == 2
    per_class = [[correct[i, labels == c].mean() for c in range(3)] for i in range(2)]
    np.testing.assert_allclose(report["worst_class_accuracy"], 100 * np.min(per_class, 1).mean())

    # A partition has max id + 1 groups: the small class's unused last id (8) is not listed.
    assert len(report["group_accuracy_per_class"]) == 8
    for p, num_groups in (("global", 4), ("per_class", 8)):
        groups = partitions[p]
        per_group = np.array(
            [[correct[i, groups == g].mean() for g in range(num_groups)] for i in range(2)]
        )
        np.testing.assert_allclose(
            report[f"group_accuracy_{p}"], 100 * per_group.mean(0), rtol=1e-6
        )
        np.testing.assert_allclose(
            report[f"worst_group_accuracy_{p}"], 100 * per_group.min(1).mean(), rtol=1e-6
        )
        np.testing.assert_allclose(
            report[f"mean_group_accuracy_{p}"], 100 * per_group.mean(1).mean(), rtol=1e-6
        )
        assert report[f"group_size_{p}"] == np.bincount(groups, minlength=num_groups).tolist()
        assert report[f"worst_group_accuracy_{p}"] <= report[f"mean_group_accuracy_{p}"]
    for canonical in ("group_accuracy", "mean_group_accuracy", "worst_group_accuracy"):
        assert report[canonical] == report[f"{canonical}_global"]

    assert set(report["shift_accuracy"]) == set(shifts)
    for value in report["shift_accuracy"].values():
        assert 0.0 <= value <= 100.0
    # Contrast factor 1 is the identity: same accuracy up to round-off flips of one image.
    assert abs(report["shift_accuracy"]["contrast"] - report["accuracy_mean"]) <= 100 / labels.size


def test_report_marks_empty_groups_none(test_set, networks):
    images, labels, _ = test_set
    model, params = networks
    groups = np.where(labels == 0, 0, 2)  # Group 1 is empty.
    report = robustness.robustness_report(
        model,
        params,
        jnp.asarray(images),
        labels,
        mean=np.zeros(1),
        std=np.ones(1),
        partitions={"mine": groups},
        shifts={},
        key=jax.random.key(0),
        num_classes=NUM_CLASSES,
        batch_size=16,
    )
    assert report["group_accuracy_mine"][1] is None
    json.dumps(report, allow_nan=False)
    assert "worst_group_accuracy" not in report  # No 'global' partition given.
    assert report["shift_accuracy"] == {}
