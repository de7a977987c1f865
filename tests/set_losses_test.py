"""Tests for benchmarks/set_losses.py: per-group matching losses of saved sets."""

import numpy as np
import pytest

from benchmarks import harness, set_losses
from jaxdd import artifacts, build


@pytest.fixture(scope="module")
def config():
    return harness.measurement_config(
        "smoke+rare", ipc=2, seed=0, overrides=["match.family=distribution"]
    )


def _save_set(path, dataset, rare, *, minority: bool):
    """Two real train images per class, all from the minority (or all from the majority)."""
    train = dataset.split("train")
    mask = rare.minority("train") == minority
    index = np.concatenate([np.flatnonzero(mask & (train.labels == c))[:2] for c in range(10)])
    path.mkdir()
    artifacts.save_synthetic(
        path / "synthetic.npz", train.images[index], train.labels[index], dataset
    )
    return path


def test_a_set_of_minority_images_matches_the_minority_groups_better(config, tmp_path):
    dataset, rare = build.load_data(config)
    sets = [
        _save_set(tmp_path / "minority", dataset, rare, minority=True),
        _save_set(tmp_path / "majority", dataset, rare, minority=False),
    ]
    on_minority, on_majority = set_losses.measure(config, sets, networks=2, num_real=8)
    assert on_minority["minority_groups"] > 0
    assert on_minority["minority_loss"] < on_majority["minority_loss"]
    assert on_minority["majority_loss"] > on_majority["majority_loss"]
    assert on_majority["ratio"] > 1 > on_minority["ratio"]
    # Images of the minority lie nearest its groups' centroids, the majority's nearest others.
    assert on_minority["images_near_minority"] > 0.5 > on_majority["images_near_minority"]
    # The set of majority images leaves the minority's groups worst matched: all in the tail.
    tail = int(np.ceil(config.robust.alpha * on_majority["groups"]))
    assert on_majority["tail_minority_share"] == min(1.0, on_majority["minority_groups"] / tail)
    record = dict(dataset="smoke+rare", ipc=2, seed=0, settings={}, num_real=8, networks=2)
    record.update(seconds=1.0, command="c", machine=harness.machine())
    table = set_losses.summarise([{**record, "result": r} for r in (on_minority, on_majority)])
    assert table.count("| `minority` |") == table.count("| `majority` |") == 1


def test_a_set_of_another_shape_is_refused_with_what_to_pass(config, tmp_path):
    dataset, rare = build.load_data(config)
    path = _save_set(tmp_path / "set", dataset, rare, minority=False)
    with pytest.raises(ValueError, match="pass the --dataset, --ipc"):
        set_losses.set_images(path, (10, 3, 8, 8, 1))
    # As many images as the config's set, but not ipc of every class: refused, not mixed.
    saved = artifacts.load_synthetic(path)
    labels = saved.labels.copy()
    labels[0] = 1
    artifacts.save_synthetic(path / "synthetic.npz", saved.images, labels, dataset)
    with pytest.raises(ValueError, match=r"\[1, 3, 2"):
        set_losses.set_images(path, (10, 2, 8, 8, 1))
