"""Tests for jaxdd.groups: the (class, cluster) group table, sampling from it, its features."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxdd import clustering, models
from jaxdd import groups as groups_lib

_sample = jax.jit(groups_lib.sample_groups, static_argnames=("num_samples",))


def _groups_from_sizes(sizes: np.ndarray, seed: int = 0):
    """Random labels/assignments with the given (C, K) group sizes, shuffled over the dataset."""
    c, k = np.indices(sizes.shape)
    labels = np.repeat(c.ravel(), sizes.ravel())
    assign = np.repeat(k.ravel(), sizes.ravel())
    perm = np.random.default_rng(seed).permutation(labels.size)
    return labels[perm], assign[perm]


def test_make_groups_lists_every_member():
    sizes = np.array([[3, 1], [2, 5]])
    labels, assign = _groups_from_sizes(sizes)
    groups = groups_lib.make_groups(labels, assign, num_classes=2, num_clusters=2)
    assert groups.members.shape == (2, 2, 5) and groups.members.dtype == jnp.int32
    np.testing.assert_array_equal(groups.sizes, sizes)
    for c in range(2):
        for k in range(2):
            row = np.asarray(groups.members[c, k])
            expected = np.flatnonzero((labels == c) & (assign == k))
            np.testing.assert_array_equal(np.sort(row[: sizes[c, k]]), expected)
            assert set(row[sizes[c, k] :]) <= set(expected)  # padding repeats a member


def test_make_groups_rejects_empty_group():
    with pytest.raises(ValueError, match=re.escape("group (class 1, cluster 0) is empty")):
        groups_lib.make_groups([0, 0, 1], [0, 1, 1], num_classes=2, num_clusters=2)


@settings(max_examples=20, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 9), min_size=5, max_size=5),
    num_samples=st.sampled_from([2, 7]),
    seed=st.integers(0, 2**16),
)
def test_sample_groups_draws_members(sizes, num_samples, seed):
    # The last group has the largest size, 9, so that only num_samples changes compiled shapes.
    sizes = np.array([*sizes, 9]).reshape(2, 3)
    labels, assign = _groups_from_sizes(sizes, seed)
    groups = groups_lib.make_groups(labels, assign, num_classes=2, num_clusters=3)
    idx = np.asarray(_sample(groups, num_samples, key=jax.random.key(seed)))
    assert idx.shape == (2, 3, num_samples) and idx.dtype == np.int32
    for c in range(2):
        for k in range(3):
            row = idx[c, k]
            assert np.all((labels[row] == c) & (assign[row] == k))
            if sizes[c, k] >= num_samples:
                assert len(set(row)) == num_samples


def test_sample_groups_with_replacement_for_small_groups():
    sizes = np.array([[1, 3, 40]])
    labels, assign = _groups_from_sizes(sizes)
    groups = groups_lib.make_groups(labels, assign, num_classes=1, num_clusters=3)
    idx = np.asarray(_sample(groups, 30, key=jax.random.key(0)))
    np.testing.assert_array_equal(idx[0, 0], np.flatnonzero(assign == 0)[0])  # m copies
    assert set(idx[0, 1]) == set(np.flatnonzero(assign == 1))  # 30 draws hit all 3 members
    assert len(set(idx[0, 2])) == 30  # large group: no duplicates


def test_sample_groups_is_uniform_and_keyed():
    sizes = np.array([[4, 3]])
    labels, assign = _groups_from_sizes(sizes)
    groups = groups_lib.make_groups(labels, assign, num_classes=1, num_clusters=2)
    keys = jax.random.split(jax.random.key(0), 4000)
    draws = np.asarray(jax.jit(jax.vmap(lambda k: _sample(groups, 3, key=k)))(keys))
    # Without replacement from 4: each member appears in 3/4 of the draws.
    for member in np.flatnonzero(assign == 0):
        assert np.mean(np.any(draws[:, 0, 0] == member, axis=-1)) == pytest.approx(0.75, abs=0.03)
    # Exactly m = size: a permutation of the group.
    assert np.all(np.sort(draws[:, 0, 1], -1) == np.sort(np.flatnonzero(assign == 1)))
    # Same key -> same draw, different key -> different draw.
    a = _sample(groups, 3, key=jax.random.key(1))
    np.testing.assert_array_equal(a, _sample(groups, 3, key=jax.random.key(1)))
    assert not np.array_equal(draws[0], draws[1])


def test_sample_groups_uniform_with_replacement():
    groups = groups_lib.make_groups([0, 0, 0], [0, 0, 0], num_classes=1, num_clusters=1)
    draws = np.asarray(_sample(groups, 6000, key=jax.random.key(2)))
    np.testing.assert_allclose(np.bincount(draws.ravel(), minlength=3) / 6000, 1 / 3, atol=0.03)


def test_cluster_groups_is_per_class_kmeans_of_the_chosen_features():
    rng = np.random.default_rng(0)
    images = rng.normal(size=(60, 4, 4, 1)).astype(np.float32)
    labels = np.repeat(np.arange(3), 20)
    model = models.instantiate("mlp", num_classes=3, width=8, depth=2)
    key = jax.random.key(4)
    groups = groups_lib.cluster_groups(
        images, labels, features="pixels", model=model, num_classes=3, num_clusters=2,
        num_iters=10, key=key,
    )  # fmt: skip
    assignments = clustering.cluster_per_class(
        clustering.features_pixels(images), labels, num_classes=3, num_clusters=2,
        key=jax.random.split(key)[1], num_iters=10,
    )  # fmt: skip
    expected = groups_lib.make_groups(
        labels, np.asarray(assignments), num_classes=3, num_clusters=2
    )
    np.testing.assert_array_equal(groups.members, expected.members)
    assert int(groups.sizes.sum()) == 60
    embedded = groups_lib.random_net_features(images, key=key, model=model)
    np.testing.assert_allclose(np.linalg.norm(embedded, axis=1), 1.0, rtol=1e-5)
    with pytest.raises(ValueError, match="unknown cluster features"):
        groups_lib.cluster_groups(
            images, labels, features="sift", model=model, num_classes=3, num_clusters=2,
            num_iters=10, key=key,
        )  # fmt: skip


def test_network_outputs_are_one_apply_across_chunks(monkeypatch):
    monkeypatch.setattr(groups_lib, "_EMBED_CHUNK", 4)  # 10 images: chunks of 4, 4 and 2.
    images = np.random.default_rng(1).normal(size=(10, 4, 4, 1)).astype(np.float32)
    model = models.instantiate("mlp", num_classes=3, width=8, depth=2)
    params = models.init_params(model, jax.random.key(2), images.shape[1:])
    logits, embedding = groups_lib.network_outputs(model, params, images)
    expected_logits, expected_embedding = model.apply({"params": params}, images)
    assert logits.shape == (10, 3) and embedding.shape == expected_embedding.shape
    np.testing.assert_allclose(logits, expected_logits, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(embedding, expected_embedding, rtol=1e-5, atol=1e-6)


def test_voronoi_groups_are_same_class_nearest_cells_and_keep_empty_ones():
    """1-pixel images, identity embedding: pool images go to the nearest synthetic image of
    their own class; a cell nothing falls into holds its nearest pool image."""
    embed = lambda x: x.reshape(x.shape[0], -1)
    # Class 0's synthetic images at 0 and 10, class 1's at 5 and 100 (empty cell).
    syn = jnp.array([[0.0, 10.0], [5.0, 100.0]]).reshape(2, 2, 1, 1, 1)
    real = jnp.array([1.0, 9.0, 4.0, 6.0, 4.5, 7.0, 3.0, 8.0]).reshape(8, 1, 1, 1)
    pool = jnp.array([[0, 1, 2, 6], [3, 4, 5, 7]])  # Class 0: 1, 9, 4, 3; class 1: 6, 4.5, 7, 8.
    groups, cells = groups_lib.voronoi_groups(embed, syn, real, pool)
    # Class 0: 1, 4, 3 nearer 0 than 10; 9 nearer 10. Not 5 (class 1's image) for 4 and 6.
    np.testing.assert_array_equal(
        cells,
        [
            [[1, 0, 1, 1], [0, 1, 0, 0]],
            [[1, 1, 1, 1], [0, 0, 0, 1]],  # 100's cell is empty: its nearest pool image, 8.
        ],
    )
    np.testing.assert_array_equal(groups.sizes, [[3, 1], [4, 1]])
    np.testing.assert_array_equal(groups.members[0, 0, :3], [0, 2, 6])  # Cell members first.
    np.testing.assert_array_equal(groups.members[0, 1], [1, 1, 1, 1])  # Padding repeats.
    np.testing.assert_array_equal(groups.members[1, 1, :1], [7])
    index = groups_lib.sample_groups(groups, 5, key=jax.random.key(0))
    assert set(np.asarray(index[0, 0]).tolist()) <= {0, 2, 6}
    assert set(np.asarray(index[1, 1]).tolist()) == {7}
    jitted = jax.jit(groups_lib.voronoi_groups, static_argnums=0)(embed, syn, real, pool)
    np.testing.assert_array_equal(jitted[1], cells)


def test_class_groups_is_one_group_per_class():
    groups = groups_lib.class_groups(np.array([1, 0, 1, 1]), num_classes=2)
    np.testing.assert_array_equal(groups.sizes, [[1], [3]])
    np.testing.assert_array_equal(groups.members[1, 0], [0, 2, 3])
