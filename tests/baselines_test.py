"""Tests for jaxdd.baselines: layout, determinism, brute-force references and error messages."""

import itertools

import hypothesis
import numpy as np
import pytest
from hypothesis import strategies as st

from jaxdd import baselines

_COUNTS = (7, 12, 9, 15)  # Unequal classes; the smallest (class 0) bounds ipc.


def _problem(seed: int, counts=_COUNTS, dim: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian features around one centre per class, rows in shuffled order."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat(np.arange(len(counts)), counts)).astype(np.int32)
    centres = rng.normal(scale=3.0, size=(len(counts), dim))
    return (centres[labels] + rng.normal(size=(len(labels), dim))).astype(np.float32), labels


def _check_layout(indices: np.ndarray, labels: np.ndarray, ipc: int) -> None:
    num_classes = labels.max() + 1
    assert indices.shape == (num_classes * ipc,)
    assert indices.dtype == np.int64
    np.testing.assert_array_equal(
        labels[indices].reshape(num_classes, ipc),
        np.repeat(np.arange(num_classes)[:, None], ipc, 1),
    )
    assert len(np.unique(indices)) == len(indices)  # No example is chosen twice.


def herding_reference(x: np.ndarray, labels: np.ndarray, ipc: int) -> list[int]:
    """Brute force: each step tries every unselected candidate and keeps the best mean match."""
    x = x.astype(np.float64)
    chosen_all = []
    for label in range(labels.max() + 1):
        rows = np.flatnonzero(labels == label)
        class_mean = x[rows].mean(axis=0)
        chosen: list[int] = []
        for _ in range(ipc):
            candidates = [r for r in rows if r not in chosen]
            gaps = [np.linalg.norm(class_mean - x[chosen + [r]].mean(axis=0)) for r in candidates]
            chosen.append(int(candidates[int(np.argmin(gaps))]))
        chosen_all += chosen
    return chosen_all


def k_center_reference(x: np.ndarray, labels: np.ndarray, ipc: int) -> list[int]:
    """Farthest-first written out with Python loops, started at the example nearest the mean."""
    x = x.astype(np.float64)
    chosen_all = []
    for label in range(labels.max() + 1):
        rows = [int(r) for r in np.flatnonzero(labels == label)]
        class_mean = x[rows].mean(axis=0)
        centres = [min(rows, key=lambda r: np.linalg.norm(x[r] - class_mean))]
        while len(centres) < ipc:
            rest = [r for r in rows if r not in centres]
            centres.append(
                max(rest, key=lambda r: min(np.linalg.norm(x[r] - x[s]) for s in centres))
            )
        chosen_all += centres
    return chosen_all


def _covering_radius(x: np.ndarray, rows, centres) -> float:
    return max(min(np.linalg.norm(x[r] - x[s]) for s in centres) for r in rows)


@pytest.mark.parametrize("name", sorted(baselines.BASELINES))
@pytest.mark.parametrize("ipc", [1, 3, 7])
def test_layout_membership_and_determinism(name, ipc):
    features, labels = _problem(0)
    indices = baselines.select(name, features, labels, ipc=ipc, seed=0)
    _check_layout(indices, labels, ipc)
    np.testing.assert_array_equal(
        baselines.select(name, features, labels, ipc=ipc, seed=0), indices
    )


@hypothesis.settings(max_examples=30, deadline=None)
@hypothesis.given(
    counts=st.lists(st.integers(1, 12), min_size=1, max_size=5),
    ipc=st.integers(1, 12),
    seed=st.integers(0, 2**31 - 1),
    name=st.sampled_from(sorted(baselines.BASELINES)),
)
def test_layout_holds_for_any_class_sizes(counts, ipc, seed, name):
    features, labels = _problem(seed, counts=counts, dim=3)
    if ipc > min(counts):
        with pytest.raises(ValueError, match=f"ipc={ipc} exceeds the smallest class"):
            baselines.select(name, features, labels, ipc=ipc, seed=seed)
        return
    _check_layout(baselines.select(name, features, labels, ipc=ipc, seed=seed), labels, ipc)


def test_random_subset_is_seeded():
    features, labels = _problem(0)
    indices = baselines.random_subset(labels, ipc=5, seed=1)
    np.testing.assert_array_equal(baselines.random_subset(labels, ipc=5, seed=1), indices)
    np.testing.assert_array_equal(
        baselines.select("random", features, labels, ipc=5, seed=1), indices
    )
    assert not np.array_equal(baselines.random_subset(labels, ipc=5, seed=2), indices)


def test_random_subset_covers_every_example_across_seeds():
    _, labels = _problem(0)
    drawn = np.concatenate([baselines.random_subset(labels, ipc=3, seed=s) for s in range(60)])
    # Uniform draws of 3 of at most 15 per class: 60 seeds leave no example out (p < 1e-5).
    np.testing.assert_array_equal(np.unique(drawn), np.arange(len(labels)))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_herding_matches_brute_force_reference(seed):
    features, labels = _problem(seed, counts=(6, 9, 7))
    for ipc in (1, 4, 6):
        np.testing.assert_array_equal(
            baselines.herding(features, labels, ipc=ipc), herding_reference(features, labels, ipc)
        )


def test_herding_first_pick_is_nearest_the_mean_and_prefixes_agree():
    features, labels = _problem(3)
    long = baselines.herding(features, labels, ipc=6).reshape(4, 6)
    short = baselines.herding(features, labels, ipc=2).reshape(4, 2)
    np.testing.assert_array_equal(long[:, :2], short)
    for label in range(4):
        rows = np.flatnonzero(labels == label)
        nearest = rows[np.argmin(np.linalg.norm(features[rows] - features[rows].mean(0), axis=1))]
        assert long[label, 0] == nearest


def test_herding_selection_mean_tracks_the_class_mean():
    features, labels = _problem(4, counts=(200, 200), dim=8)
    herded = baselines.herding(features, labels, ipc=10).reshape(2, 10)
    random = baselines.random_subset(labels, ipc=10, seed=0).reshape(2, 10)
    for label in range(2):
        class_mean = features[labels == label].mean(0)
        herding_gap = np.linalg.norm(features[herded[label]].mean(0) - class_mean)
        random_gap = np.linalg.norm(features[random[label]].mean(0) - class_mean)
        assert herding_gap < 0.25 * random_gap  # Herding converges as O(1/k); random as O(1/√k).


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_k_center_matches_reference_and_ignores_seed(seed):
    features, labels = _problem(seed, counts=(6, 9, 7))
    for ipc in (1, 3, 6):
        indices = baselines.k_center(features, labels, ipc=ipc, seed=0)
        np.testing.assert_array_equal(indices, k_center_reference(features, labels, ipc))
        np.testing.assert_array_equal(
            baselines.select("k_center", features, labels, ipc=ipc, seed=seed + 10), indices
        )


@pytest.mark.parametrize("seed", range(4))
def test_k_center_covering_radius_is_within_twice_optimal(seed):
    features, labels = _problem(seed, counts=(9, 10), dim=2)
    ipc = 3
    indices = baselines.k_center(features, labels, ipc=ipc, seed=0).reshape(2, ipc)
    for label in range(2):
        rows = np.flatnonzero(labels == label)
        greedy = _covering_radius(features, rows, indices[label])
        optimal = min(
            _covering_radius(features, rows, centres)
            for centres in itertools.combinations(rows, ipc)
        )
        assert optimal - 1e-6 <= greedy <= 2 * optimal + 1e-6


@pytest.mark.parametrize("name", sorted(baselines.BASELINES))
def test_duplicate_features_never_give_duplicate_indices(name):
    labels = np.repeat(np.arange(3), 4)
    features = np.zeros((12, 2), np.float32)  # Every example of a class is identical.
    indices = baselines.select(name, features, labels, ipc=4, seed=0)
    _check_layout(indices, labels, 4)
    np.testing.assert_array_equal(np.sort(indices), np.arange(12))


@pytest.mark.parametrize("name", ["herding", "k_center"])
def test_image_shaped_features_are_flattened(name):
    features, labels = _problem(5, dim=12)
    images = features.reshape(-1, 2, 3, 2)
    np.testing.assert_array_equal(
        baselines.select(name, images, labels, ipc=4, seed=0),
        baselines.select(name, features, labels, ipc=4, seed=0),
    )


def test_select_unknown_name_lists_known_ones():
    features, labels = _problem(0)
    with pytest.raises(ValueError, match=r"'kmeans'.*'random', 'herding', 'k_center'"):
        baselines.select("kmeans", features, labels, ipc=1, seed=0)


@pytest.mark.parametrize("name", sorted(baselines.BASELINES))
def test_ipc_above_smallest_class_names_the_class_and_its_size(name):
    features, labels = _problem(0)
    with pytest.raises(ValueError, match=r"ipc=8 exceeds .*class 0 has only 7 examples"):
        baselines.select(name, features, labels, ipc=8, seed=0)
    gap = np.where(labels == 2, 3, labels)  # No example of class 2 left.
    with pytest.raises(ValueError, match=r"class 2 has only 0 examples"):
        baselines.select(name, features, gap, ipc=1, seed=0)


_BAD_INPUTS = {
    "ipc_zero": (dict(ipc=0), "ipc must be a positive integer"),
    "ipc_float": (dict(ipc=1.5), "ipc must be a positive integer"),
    "ipc_bool": (dict(ipc=True), "ipc must be a positive integer"),
    "labels_2d": (dict(labels=np.zeros((43, 1), np.int32)), "1-d integer array"),
    "labels_float": (dict(labels=np.zeros(43)), "1-d integer array"),
    "labels_negative": (dict(labels=np.full(43, -1)), "got a minimum of -1"),
    "features_1d": (dict(features=np.zeros(43)), r"features must be \(N, D\)"),
    "features_short": (dict(features=np.zeros((42, 5))), r"shape \(42, 5\) for 43 labels"),
    "features_nan": (dict(features=np.full((43, 5), np.nan)), "NaN or infinite"),
    "features_complex": (dict(features=np.zeros((43, 5), complex)), "real"),
}


@pytest.mark.parametrize("name", sorted(baselines.BASELINES))
@pytest.mark.parametrize(("change", "message"), _BAD_INPUTS.values(), ids=_BAD_INPUTS.keys())
def test_malformed_inputs_raise_helpful_errors(name, change, message):
    features, labels = _problem(0)
    arguments = dict(features=features, labels=labels, ipc=2) | change
    with pytest.raises(ValueError, match=message):
        baselines.select(name, **arguments, seed=0)
