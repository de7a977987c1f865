"""IDM (Zhao et al., CVPR 2023): the distribution family's pool of networks trained on real data
and the `:idm` preset (its cross-entropy regulariser: tests/matching_test.py)."""

import pathlib

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tiny_problem

from configs import smoke
from jaxdd import build, step
from jaxdd import config as config_lib

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_idm_preset_is_idms_command():
    config = config_lib.load(REPO / "configs" / "fashion_mnist.py:idm")
    config_lib.validate(config)
    assert config.match.family == "distribution" and config.match.syn_ce == 0.5
    assert (config.syn.param, config.syn.factor, config.syn.init) == ("factorized", 2, "mix")
    assert config.syn.lr == 0.2 and config.syn.momentum == 0.5
    assert (config.match.net_pool, config.match.net_max_updates) == (10, 60)
    assert config.match.net_train == "real" and config.match.net_cutmix == 0.0
    # 10 SGD steps, each on 256 random real images, as IDM's model_train_steps x trained_bs.
    assert config.match.net_data == config.match.inner_batch == 256
    assert (config.match.net_momentum, config.match.net_weight_decay) == (0.9, 5e-4)
    assert build.loops(config) == (1, 10) and build.net_strategy(config) == "none"
    assert config.num_iterations == 20000
    # K = 4 groups of 64: IDM's (DM's) 256 real images per class.
    assert config.cluster.num_clusters * config.match.num_real == 256


@pytest.fixture(scope="module")
def pooled():
    config = smoke.get_config()
    config.model.width, config.model.depth = 8, 2
    config.cluster.num_clusters = 2
    config.match.family = "distribution"
    config.match.syn_ce = 0.5
    config.match.outer_loop, config.match.inner_loop = -1, -1
    config.match.net_pool, config.match.net_max_updates = 3, 6
    config.match.net_train, config.match.net_augment = "real", "none"
    config.match.net_data, config.match.inner_batch, config.match.net_cutmix = 8, 4, 0.0
    config.robust.risk = "mean"
    config_lib.validate(config)
    model, real, labels = tiny_problem.three_classes(config)
    return config, model, real.replace(labels=jnp.asarray(labels))


def test_pooled_step_matches_through_one_member_and_trains_it_on_real_data(pooled):
    config, model, real = pooled
    assert build.loops(config) == (1, 1)
    state = build.create_state(config, real, key=jax.random.key(1), model=model)
    assert isinstance(state, step.PooledState)
    step_fn = build.create_step(config, model, tiny_problem.IMAGE_SHAPE)
    new, metrics = step_fn(state, jax.random.key(7), real)
    assert np.isfinite(float(metrics["loss"])) and not np.array_equal(new.images, state.images)
    tiny_problem.assert_one_member_trained(state.pool, new.pool)
    # What it trained on is real data: the same step with other synthetic images trains the
    # member identically (only the images' update differs).
    other = state.replace(images=state.images + 1.0)
    moved_other, _ = step_fn(other, jax.random.key(7), real)
    chex.assert_trees_all_equal(moved_other.pool, new.pool)


def test_running_accuracy_meters_weigh_the_regulariser_and_reset(pooled):
    """`match.syn_ce_accuracy='running'` (IDM's): the pool keeps each network's top-1 hits on
    its real training batches; an empty meter turns the regulariser off; meters empty when a
    network is re-initialised and, for every network, every `syn_ce_reset` iterations."""
    config, model, real = pooled
    config = config.copy_and_resolve_references()
    config.match.syn_ce_accuracy, config.match.syn_ce_reset = "running", 2
    config_lib.validate(config)
    state = build.create_state(config, real, key=jax.random.key(1), model=model)
    np.testing.assert_array_equal(state.pool.meter, np.zeros((3, 2)))
    step_fn = build.create_step(config, model, tiny_problem.IMAGE_SHAPE)
    new, _ = step_fn(state, jax.random.key(7), real)
    member = tiny_problem.assert_one_member_trained(state.pool, new.pool)
    # One epoch of ceil(net_data / inner_batch) = 2 batches of 4 real images.
    hits, seen = np.asarray(new.pool.meter[member])
    assert seen == 8 and 0 <= hits <= 8 and hits == int(hits)
    assert not np.any(np.delete(np.asarray(new.pool.meter), member, axis=0))
    # Empty meters: the first update is DM's alone (the regulariser weighs 0).
    without = config.copy_and_resolve_references()
    without.match.syn_ce = 0.0
    dm_state = build.create_state(without, real, key=jax.random.key(1), model=model)
    dm, _ = build.create_step(without, model, tiny_problem.IMAGE_SHAPE)(
        dm_state, jax.random.key(7), real
    )
    np.testing.assert_allclose(new.images, dm.images, rtol=1e-5, atol=1e-6)
    # A full meter weighs it: the same update from meters at 50 % moves the images otherwise.
    half = state.replace(pool=state.pool.replace(meter=jnp.full((3, 2), 4.0).at[:, 1].set(8.0)))
    weighed, _ = step_fn(half, jax.random.key(7), real)
    assert not np.allclose(weighed.images, new.images)
    np.testing.assert_array_equal(weighed.pool.meter[member], np.array([4.0, 8.0]) + [hits, 8])
    # Iteration 2 (a multiple of syn_ce_reset) starts from empty meters: only the trained
    # member's new hits remain.
    due, _ = step_fn(half.replace(step=jnp.asarray(2, half.step.dtype)), jax.random.key(7), real)
    np.testing.assert_array_equal(due.pool.meter[member], [hits, 8])
    assert not np.any(np.delete(np.asarray(due.pool.meter), member, axis=0))
    # A network re-initialised after its last update leaves with an empty meter.
    old = half.replace(pool=half.pool.replace(age=jnp.full((3,), 5, jnp.int32)))  # max 6
    renewed, _ = step_fn(old, jax.random.key(7), real)
    assert renewed.pool.age[member] == 0
    np.testing.assert_array_equal(renewed.pool.meter[member], [0, 0])


def _run_config(iterations):
    config = config_lib.load(REPO / "configs" / "digits.py:idm")
    config.ipc = 1
    config.cluster.num_clusters = 2
    config.match.num_real = 4
    config.match.net_pool, config.match.net_max_updates = 2, 3
    config.match.net_data, config.match.inner_batch, config.match.inner_loop = 8, 8, 2
    config.eval.global_k, config.eval.per_class_k = 2, 1
    config.eval.shifts = {"invert": 0.0}
    return tiny_problem.short_run(config, iterations)


def test_idm_run_resumes_bit_identically_with_its_pool(tmp_path):
    whole, _ = tiny_problem.assert_resumes_bit_identically(_run_config, tmp_path, total=3, first=1)
    stored = np.load(tmp_path / "whole" / "synthetic.npz")
    assert stored["images"].shape[0] == 4 * stored["stored"].shape[0]  # f = 2: 4 per stored.
    assert np.isfinite(whole.metrics["loss"])


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"match.family": "gradient", "match.syn_ce": 0.5}, "distribution family's"),
        ({"match.family": "distribution", "match.syn_ce": -1.0}, "a weight >= 0"),
        ({"match.family": "distribution", "match.net_train": "real"}, "never trained"),
        ({"match.family": "distribution", "syn.learn_labels": True}, "match.syn_ce > 0"),
        ({"match.net_augment": "crop_blur"}, "Unknown augmentation"),
        (
            {"match.family": "distribution", "match.syn_ce": 0.5,
             "match.syn_ce_accuracy": "running"},
            "match.net_pool > 0",
        ),  # fmt: skip
        ({"match.syn_ce_accuracy": "meter"}, "one of"),
    ],
)
def test_idm_settings_are_checked(overrides, message):
    config = smoke.get_config()
    config.match.outer_loop, config.match.inner_loop = -1, -1
    tiny_problem.override(config, overrides)
    with pytest.raises(ValueError, match=message):
        config_lib.validate(config)


def test_learned_labels_are_allowed_with_the_regulariser():
    config = smoke.get_config()
    config.match.outer_loop, config.match.inner_loop = -1, -1
    config.match.family, config.match.syn_ce, config.syn.learn_labels = "distribution", 0.5, True
    config_lib.validate(config)
