"""The krr family (FRePo's kernel ridge regression) and the pool of online networks it uses."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import tiny_problem

from configs import smoke
from jaxdd import build, matching, step
from jaxdd import config as config_lib


def _linear_features(params, images):
    """A network whose embedding is a linear map of the pixels: the regression is checkable."""
    return None, images.reshape(images.shape[0], -1) @ params


def _frepo_losses(features, syn, labels, real, ridge):
    """FRePo's `nfr` and `mean_squared_loss` in float64 numpy, group by group."""
    num_classes = syn.shape[0]
    f_s = syn.reshape(-1, syn[0, 0].size).astype(np.float64) @ features
    y_s = np.eye(num_classes)[labels.reshape(-1)] - 1 / num_classes
    k_ss = f_s @ f_s.T
    k_reg = k_ss + ridge * np.trace(k_ss) * np.eye(len(k_ss)) / len(k_ss)
    losses = np.zeros(real.shape[:2])
    for c in range(real.shape[0]):
        for k in range(real.shape[1]):
            f_t = real[c, k].reshape(real.shape[2], -1).astype(np.float64) @ features
            pred = f_t @ f_s.T @ np.linalg.solve(k_reg, y_s)
            target = np.eye(num_classes)[c] - 1 / num_classes
            losses[c, k] = np.mean(0.5 * np.sum((pred - target) ** 2, axis=-1))
    return losses


@pytest.mark.parametrize("ridge", [1e-6, 0.1])
def test_krr_losses_are_frepos_regression(ridge):
    keys = jax.random.split(jax.random.key(0), 3)
    syn = jax.random.normal(keys[0], (3, 4, 4, 4, 1))  # C = 3, ipc 4, 4x4 images.
    real = jax.random.normal(keys[1], (3, 2, 5, 4, 4, 1))  # K = 2 groups of m = 5.
    params = jax.random.normal(keys[2], (16, 32))  # d = 32 > n = 12: the kernel is full rank.
    labels = jnp.repeat(jnp.arange(3)[:, None], 4, axis=1)
    got = matching.krr(
        params, syn, labels=labels, real=real, key=jax.random.key(1),
        apply_fn=_linear_features, ridge=ridge,
    )  # fmt: skip
    want = _frepo_losses(*map(np.asarray, (params, syn, labels, real)), ridge)
    assert got.shape == (3, 2)
    np.testing.assert_allclose(got, want, rtol=2e-3, atol=1e-5)


def test_krr_gradient_reaches_the_images_and_soft_labels():
    keys = jax.random.split(jax.random.key(0), 3)
    syn = jax.random.normal(keys[0], (3, 2, 4, 4, 1))
    real = jax.random.normal(keys[1], (3, 2, 5, 4, 4, 1))
    params = jax.random.normal(keys[2], (16, 32))
    soft = jax.nn.softmax(jax.random.normal(keys[0], (3, 2, 3)))

    def total(images, labels):
        return jnp.sum(
            matching.krr(
                params,
                images,
                labels=labels,
                real=real,
                key=jax.random.key(1),
                apply_fn=_linear_features,
            )  # fmt: skip
        )

    grad_images, grad_labels = jax.grad(total, argnums=(0, 1))(syn, soft)
    assert np.all(np.isfinite(grad_images)) and np.any(np.asarray(grad_images) != 0)
    assert np.any(np.asarray(grad_labels) != 0)
    # A group's loss moves only through the synthetic side: the real side is a constant.
    grad_real = jax.grad(
        lambda r: jnp.sum(
            matching.krr(
                params,
                syn,
                labels=soft,
                real=r,
                key=jax.random.key(1),
                apply_fn=_linear_features,
            )  # fmt: skip
        )
    )(real)
    np.testing.assert_array_equal(grad_real, 0.0)


@pytest.fixture(scope="module")
def problem():
    """3 classes x 2 clusters of 12 real 8x8 images, the krr family with a pool of 3."""
    config = smoke.get_config()
    config.model.width, config.model.depth = 8, 2
    config.cluster.num_clusters = 2
    config.match.family = "krr"
    config.match.outer_loop, config.match.inner_loop = -1, -1
    config.match.net_pool, config.match.net_max_updates = 3, 6
    config.robust.risk = "mean"
    model, real, _ = tiny_problem.three_classes(config)
    return config, model, real


def test_pool_starts_staggered_and_a_step_trains_one_member(problem):
    config, model, real = problem
    assert build.loops(config) == (1, 1)  # FRePo: one update, one online epoch.
    state = build.create_state(config, real, key=jax.random.key(1), model=model)
    assert isinstance(state, step.PooledState)
    np.testing.assert_array_equal(state.pool.age, [0, 2, 4])  # (6 // 3) * i
    step_fn = build.create_step(config, model, (8, 8, 1))
    new, metrics = step_fn(state, jax.random.key(7), real)
    assert np.isfinite(float(metrics["loss"])) and not np.array_equal(new.images, state.images)
    # The drawn member trained its epoch on the set: every kernel moved, the others did not.
    tiny_problem.assert_one_member_trained(state.pool, new.pool)
    again, _ = step_fn(state, jax.random.key(7), real)
    chex.assert_trees_all_equal(again, new)  # Pure: same key, same state.


def test_a_member_is_reinitialised_after_max_updates():
    params = {"w": jnp.arange(3.0)[:, None] * jnp.ones((3, 2))}
    optimizer = optax.sgd(0.1)
    pool = step.NetPool(
        params=params, opt_state=jax.vmap(optimizer.init)(params), age=jnp.array([0, 5, 2])
    )
    trained = {"w": jnp.full((2,), 9.0)}
    fresh = ({"w": jnp.full((2,), -1.0)}, optimizer.init(trained))
    kept = step._return_member(pool, jnp.asarray(2), trained, optimizer.init(trained), fresh, 6)
    np.testing.assert_array_equal(kept.age, [0, 5, 3])
    np.testing.assert_array_equal(kept.params["w"][2], 9.0)
    reset = step._return_member(pool, jnp.asarray(1), trained, optimizer.init(trained), fresh, 6)
    np.testing.assert_array_equal(reset.age, [0, 0, 2])
    np.testing.assert_array_equal(reset.params["w"][1], -1.0)
    np.testing.assert_array_equal(reset.params["w"][0], 0.0)


def _run_config(iterations):
    config = smoke.get_config()
    config.match.family = "krr"
    config.match.outer_loop, config.match.inner_loop = -1, -1
    config.match.net_pool, config.match.net_max_updates = 2, 3
    config.ipc = 2
    return tiny_problem.short_run(config, iterations)


def test_krr_run_resumes_bit_identically_with_its_pool(tmp_path):
    tiny_problem.assert_resumes_bit_identically(_run_config, tmp_path, total=4, first=2)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"match.family": "krr", "match.net_pool": 0}, "pool of online networks"),
        (
            {"match.family": "risk", "match.net_pool": 2, "syn.learn_unroll_lr": True},
            "fresh network",
        ),
        ({"match.family": "krr", "match.net_pool": 2, "match.krr_ridge": 0.0}, "positive"),
    ],
)
def test_pool_settings_are_checked(overrides, message):
    config = tiny_problem.override(smoke.get_config(), overrides)
    with pytest.raises(ValueError, match=message):
        config_lib.validate(config)


def test_a_pool_needs_the_model(problem):
    config, _, real = problem
    with pytest.raises(ValueError, match="pass the model"):
        build.create_state(config, real, key=jax.random.key(1))
