"""Tests for benchmarks/cluster_purity.py: the minority cluster's purity and recall, and which
minority a `--dataset` / `--rare` pair selects."""

import numpy as np
import pytest

from benchmarks import cluster_purity


def test_minority_cluster_counts_the_cluster_holding_most_of_each_class_minority():
    # Class 0: its 3 minority images, 2 in cluster 1 (with 2 majority images) and 1 in cluster 0.
    # Class 1: its 2 minority images alone in cluster 0.
    labels = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 1])
    assignments = np.array([0, 1, 1, 1, 1, 0, 0, 0, 1, 1])
    minority = np.array([1, 1, 1, 0, 0, 0, 1, 1, 0, 0], dtype=bool)
    purity, recall = cluster_purity.minority_cluster(assignments, labels, minority, 2)
    np.testing.assert_allclose(purity, [2 / 4, 1.0])
    np.testing.assert_allclose(recall, [2 / 3, 1.0])


def test_data_override_takes_a_benchmark_name_or_a_config_name_and_a_transform():
    assert cluster_purity.data_override("digits", None) == ("digits", "data.rare=invert")
    assert cluster_purity.data_override("digits", "blur") == ("digits", "data.rare=blur")
    assert cluster_purity.data_override("fashion_mnist+color", None) == (
        "fashion_mnist",
        "data.spurious=color",
    )
    assert cluster_purity.data_override("digits+rare-blur", None) == ("digits", "data.rare=blur")


def test_data_override_refuses_a_transform_beside_a_benchmark_name():
    with pytest.raises(ValueError, match="drop --rare"):
        cluster_purity.data_override("digits+color", "blur")
    with pytest.raises(ValueError, match="unknown benchmark suffix"):
        cluster_purity.data_override("digits+colour", None)
