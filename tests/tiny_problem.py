"""A tiny grouped problem on the real code path, and tiny resumable runs, shared by the tests."""

import jax
import numpy as np

from jaxdd import build, step
from jaxdd import groups as groups_lib

IMAGE_SHAPE = (8, 8, 1)


def three_classes(config):
    """(model, real, labels): 3 classes x 2 clusters of 12 random 8x8 images each (class c's
    shifted by c, so that classes differ), the config's model over them."""
    num_classes, per_class = 3, 12
    images = jax.random.normal(jax.random.key(0), (num_classes * per_class, *IMAGE_SHAPE))
    labels = np.repeat(np.arange(num_classes), per_class)
    assignments = np.tile(np.arange(per_class) % 2, num_classes)
    groups = groups_lib.make_groups(labels, assignments, num_classes=num_classes, num_clusters=2)
    model = build.create_model(config, num_classes, IMAGE_SHAPE)
    real = step.RealData(images=images + labels[:, None, None, None], groups=groups)
    return model, real, labels


def override(config, overrides: dict):
    """`config` with each dotted field of `overrides` ('match.net_pool': 2) set to its value."""
    for field, value in overrides.items():
        section, key = field.split(".")
        config[section][key] = value
    return config


def assert_one_member_trained(old_pool: step.NetPool, new_pool: step.NetPool) -> int:
    """A step drew one member of the pool, trained it (its age +1, every kernel moved: biases
    before a norm get no gradient) and left the others untouched; its index."""
    (moved,) = np.nonzero(np.asarray(new_pool.age != old_pool.age))
    assert len(moved) == 1 and new_pool.age[moved[0]] == old_pool.age[moved[0]] + 1
    size = old_pool.age.shape[0]
    trained = []
    for old_leaf, new_leaf in zip(
        jax.tree.leaves(old_pool.params), jax.tree.leaves(new_pool.params), strict=True
    ):
        changed = np.any(np.asarray(old_leaf != new_leaf).reshape(size, -1), axis=1)
        assert not np.any(np.delete(changed, moved[0]))  # The other members are untouched.
        if old_leaf.ndim > 2:  # A kernel.
            trained.append(changed[moved[0]])
    assert trained and all(trained), trained
    return int(moved[0])


def short_run(config, iterations):
    """`config` as a tiny run of `iterations` iterations, checkpointed every one, with the
    cheapest evaluation (1 network, 1 epoch, selection at the end only)."""
    config.num_iterations = iterations
    config.model.width = 8
    config.checkpoint.every = 1
    config.eval.num_models, config.eval.epochs = 1, 1
    config.eval.select_every, config.eval.select_num_models = 0, 1
    return config


def assert_resumes_bit_identically(make_config, tmp_path, *, total, first):
    """A run of `total` iterations and one stopped after `first` then resumed to `total`
    (`make_config(iterations)`) end in the same set, bit for bit; their two `Result`s."""
    import jaxdd

    whole = jaxdd.distill(make_config(total), tmp_path / "whole")
    jaxdd.distill(make_config(first), tmp_path / "split")
    resumed = jaxdd.distill(make_config(total), tmp_path / "split")  # Continues from `first`.
    assert resumed.metrics["step"] == whole.metrics["step"] == total
    got = np.load(tmp_path / "split" / "synthetic_last.npz")["images"]
    np.testing.assert_array_equal(got, np.load(tmp_path / "whole" / "synthetic_last.npz")["images"])
    return whole, resumed
