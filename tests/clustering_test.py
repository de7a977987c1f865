"""Tests for jaxdd.clustering against scikit-learn and an independent NumPy Lloyd reference."""

import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.datasets import load_digits

from jaxdd import clustering

jax.config.update("jax_enable_x64", False)

_kmeans = jax.jit(clustering.kmeans, static_argnames=("num_clusters", "num_iters", "num_inits"))
# num_iters only bounds a while_loop, so it is traced here: one compile serves every test.
_lloyd = jax.jit(clustering._lloyd)


@pytest.fixture(scope="module")
def digits():
    data = load_digits()
    return (data.data / 16.0).astype(np.float32), data.target.astype(np.int32)


def _inertia(x: np.ndarray, assignments: np.ndarray) -> float:
    """Sum of squared distances to the cluster means, in float64."""
    x = np.asarray(x, np.float64)
    return sum(
        float(np.sum((x[assignments == k] - x[assignments == k].mean(0)) ** 2))
        for k in np.unique(assignments)
    )


def _blobs(seed: int, n: int, num_centres: int, dim: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=5.0, size=(num_centres, dim))
    return (centres[rng.integers(num_centres, size=n)] + rng.normal(size=(n, dim))).astype(
        np.float32
    )


def lloyd_reference(
    x: np.ndarray, centroids: np.ndarray, mask: np.ndarray, num_iters: int
) -> np.ndarray:
    """Plain float64 Lloyd on the valid rows; the j-th empty cluster moves to the j-th farthest."""
    x = np.asarray(x, np.float64)[mask]
    centroids = np.array(centroids, np.float64)
    k = centroids.shape[0]
    for _ in range(num_iters):
        dist = ((x[:, None, :] - centroids[None]) ** 2).sum(-1)
        assign = dist.argmin(1)
        own = dist[np.arange(len(x)), assign]
        farthest = np.argsort(-own, kind="stable")
        new, j = np.empty_like(centroids), 0
        for c in range(k):
            if np.any(assign == c):
                new[c] = x[assign == c].mean(0)
            else:
                new[c], j = x[farthest[j]], j + 1
        centroids = new
    return centroids


def test_weighted_draw_never_picks_zero_weight_rows():
    weights = jnp.array([0.0, 1.0, 0.0, 2.0, 0.0, 0.0])
    u = jnp.array([0.0, 0.3, 0.34, 1.0 - 2**-24, 1.0])  # 1.0 stands in for u * total rounding up
    np.testing.assert_array_equal(clustering._sample_weighted(weights, u), [1, 1, 3, 3, 3])


# --- kmeans -------------------------------------------------------------------------------------


def test_kmeans_inertia_matches_sklearn_on_digits(digits):
    x, _ = digits
    ours = _kmeans(x, 10, key=jax.random.key(0))
    theirs = KMeans(n_clusters=10, n_init=10, random_state=0).fit(x).inertia_
    ratio = float(ours.inertia) / theirs
    assert ratio <= 1.02, ratio
    # The reported inertia is the one of the returned partition.
    np.testing.assert_allclose(float(ours.inertia), _inertia(x, np.asarray(ours.assignments)), 1e-4)


def test_cluster_per_class_inertia_matches_sklearn_on_digits(digits):
    x, y = digits
    assign = np.asarray(
        clustering.cluster_per_class(x, y, num_classes=10, num_clusters=4, key=jax.random.key(0))
    )
    ours = sum(_inertia(x[y == c], assign[y == c]) for c in range(10))
    theirs = sum(
        KMeans(n_clusters=4, n_init=10, random_state=0).fit(x[y == c]).inertia_ for c in range(10)
    )
    assert ours / theirs <= 1.02, ours / theirs


@pytest.mark.parametrize("masked", [False, True])
def test_lloyd_matches_numpy_reference(masked):
    x = _blobs(0, 300, 5, 4)
    mask = np.ones(300, bool)
    if masked:
        mask[::7] = False
    valid = np.flatnonzero(mask)
    # Two seeds in one blob plus one far-away centroid, so re-seeding is exercised.
    init = np.concatenate([x[valid[:5]], np.full((1, 4), 100.0, np.float32)])
    for num_iters in (1, 3, 30):
        ours, _ = _lloyd(x, init, mask, num_iters=num_iters)
        np.testing.assert_allclose(
            ours, lloyd_reference(x, init, mask, num_iters), rtol=1e-5, atol=1e-5
        )


def test_lloyd_stops_early_at_fixed_point():
    x = _blobs(1, 300, 5, 4)
    _, iters = _lloyd(x, x[:6], np.ones(300, bool), num_iters=500)
    assert 1 < int(iters) < 500


def _padded(x: np.ndarray, n: int = 120, seed: int | None = None):
    """x (n_valid, D) padded with garbage rows to (n, D), plus the mask of the valid rows.

    Tests pad to one shape, so that jit compiles kmeans once for all of them. With a seed the
    padding is spread through the array; valid rows keep their order.
    """
    n_valid, dim = x.shape
    if seed is None:
        mask = np.arange(n) < n_valid
    else:
        mask = np.ones(n, bool)
        mask[np.random.default_rng(seed).choice(n, n - n_valid, replace=False)] = False
    padded = np.full((n, dim), 1e3, np.float32)
    padded[mask] = x
    return padded, mask


@pytest.mark.parametrize("seed", [None, 0])
def test_mask_padding_has_no_effect(seed):
    x = _blobs(2, 83, 4, 3)
    padded, mask = _padded(x, seed=seed)
    key = jax.random.key(3)
    plain = _kmeans(x, 4, key=key)
    masked = _kmeans(padded, 4, key=key, mask=mask)
    np.testing.assert_allclose(masked.centroids, plain.centroids, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(masked.inertia, plain.inertia, rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(masked.assignments)[mask], plain.assignments)
    np.testing.assert_array_equal(np.asarray(masked.assignments)[~mask], -1)


@pytest.mark.parametrize(
    "distinct, copies",
    [(3, 10), (1, 8)],  # three distinct points for K = 4; all points identical
)
def test_duplicated_points_give_nonempty_clusters(distinct, copies):
    points = np.arange(distinct * 3, dtype=np.float32).reshape(distinct, 3)
    padded, mask = _padded(np.repeat(points, copies, axis=0))
    result = _kmeans(padded, 4, key=jax.random.key(0), mask=mask)
    assign = np.asarray(result.assignments)[mask]
    np.testing.assert_array_equal(np.bincount(assign, minlength=4) > 0, True)
    assert float(result.inertia) == pytest.approx(0.0, abs=1e-6)
    np.testing.assert_allclose(result.centroids[assign], np.repeat(points, copies, axis=0))


def test_empty_cluster_is_reseeded_onto_far_outlier():
    x = np.concatenate([_blobs(3, 299, 5, 4), np.full((1, 4), 80.0, np.float32)])
    # Centroid 5 starts where no point is: it is empty after the first assignment.
    init = np.concatenate([x[:5], np.full((1, 4), -1e3, np.float32)])
    centroids, _ = _lloyd(x, init, np.ones(300, bool), num_iters=20)
    assign = np.argmin(((x[:, None] - np.asarray(centroids)[None]) ** 2).sum(-1), 1)
    np.testing.assert_array_equal(np.bincount(assign, minlength=6) > 0, True)
    assert np.sum(assign == assign[-1]) == 1  # the outlier ends up alone


def test_kmeans_same_key_is_deterministic_and_jit_traces_once():
    x, mask = _padded(_blobs(4, 120, 4, 3))

    @jax.jit
    @chex.assert_max_traces(n=1)
    def run(features, key):
        return clustering.kmeans(features, 4, key=key, mask=mask)

    a, b = run(x, jax.random.key(7)), run(x, jax.random.key(7))
    chex.assert_trees_all_equal(a, b)
    run(x + 1.0, jax.random.key(8))  # new data and key, same shapes: no retrace
    chex.assert_trees_all_equal(_kmeans(x, 4, key=jax.random.key(7), mask=mask), a)


def test_kmeans_rejects_bad_arguments():
    with pytest.raises(ValueError, match="num_clusters"):
        clustering.kmeans(np.zeros((4, 2)), 0, key=jax.random.key(0))
    with pytest.raises(ValueError, match="mask"):
        clustering.kmeans(np.zeros((4, 2)), 2, key=jax.random.key(0), mask=np.ones(3, bool))


# --- cluster_per_class --------------------------------------------------------------------------


def test_cluster_per_class_assignments_cover_every_group(digits):
    x, y = digits
    key = jax.random.key(0)
    assign = clustering.cluster_per_class(x, y, num_classes=10, num_clusters=4, key=key)
    assert assign.shape == y.shape and assign.dtype == jnp.int32
    assign = np.asarray(assign)
    assert assign.min() >= 0 and assign.max() < 4
    counts = np.zeros((10, 4), int)
    np.add.at(counts, (y, assign), 1)
    assert np.all(counts > 0)
    again = clustering.cluster_per_class(x, y, num_classes=10, num_clusters=4, key=key)
    np.testing.assert_array_equal(again, assign)


def test_cluster_per_class_matches_kmeans_per_class(digits):
    x, y = digits
    key = jax.random.key(0)
    assign = np.asarray(clustering.cluster_per_class(x, y, num_classes=10, num_clusters=4, key=key))
    n_max = np.bincount(y).max()
    for c, class_key in enumerate(jax.random.split(key, 10)):
        padded, mask = _padded(x[y == c], n_max)
        alone = _kmeans(padded, 4, key=class_key, mask=mask)
        np.testing.assert_array_equal(assign[y == c], np.asarray(alone.assignments)[mask])


def test_cluster_per_class_rejects_too_many_clusters():
    x = np.zeros((7, 2), np.float32)
    y = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2][:7])
    message = "cluster.num_clusters=3 exceeds the smallest class (class 1 has 2 examples); lower it"
    with pytest.raises(ValueError, match=re.escape(message)):
        clustering.cluster_per_class(x, y, num_classes=3, num_clusters=3, key=jax.random.key(0))
    with pytest.raises(ValueError, match="num_clusters"):
        clustering.cluster_per_class(x, y, num_classes=3, num_clusters=0, key=jax.random.key(0))
    with pytest.raises(ValueError, match="labels"):
        clustering.cluster_per_class(x, y, num_classes=2, num_clusters=1, key=jax.random.key(0))


def test_features_pixels_flattens_and_normalises():
    images = np.random.default_rng(0).uniform(size=(5, 4, 3, 2)).astype(np.float32)
    images[2] = 0.0
    feats = clustering.features_pixels(images)
    assert feats.shape == (5, 24) and feats.dtype == jnp.float32
    flat = images.reshape(5, -1)
    np.testing.assert_allclose(np.linalg.norm(feats, axis=-1), [1, 1, 0, 1, 1], atol=1e-6)
    np.testing.assert_allclose(feats[0], flat[0] / np.linalg.norm(flat[0]), rtol=1e-6)
