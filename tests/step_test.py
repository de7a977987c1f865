"""Tests for jaxdd.step: the robust gradient, the pure step, compile-once, the schedule."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import smoke
from jaxdd import build, matching, models, risk, sharding, step, xla
from jaxdd import groups as groups_lib


@pytest.fixture(scope="module")
def run():
    """Tiny problem (3 classes x 2 clusters, 8x8, width-8 ConvNet) on the real code path."""
    config = smoke.get_config()
    config.model.width, config.model.depth = 8, 2
    config.cluster.num_clusters = 2
    num_classes, per_class = 3, 12
    images = jax.random.normal(jax.random.key(0), (num_classes * per_class, 8, 8, 1))
    labels = np.repeat(np.arange(num_classes), per_class)
    assignments = np.tile(np.arange(per_class) % 2, num_classes)
    groups = groups_lib.make_groups(labels, assignments, num_classes=num_classes, num_clusters=2)
    model = build.create_model(config, num_classes)
    real = step.RealData(images=images + labels[:, None, None, None], groups=groups)
    state = build.create_state(config, model, real, key=jax.random.key(1))
    return config, (8, 8, 1), model, real, state, labels


def _losses_fn(config, model, real, state, family):
    config = config.copy_and_resolve_references()
    config.match.family = family
    apply_fn = lambda p, x: model.apply({"params": p}, x)
    index = jax.random.randint(jax.random.key(2), (*real.groups.sizes.shape, 4), 0, 1)
    index = real.groups.members[..., :1][..., index[0, 0]]  # (C, K, 4) members of each group
    real_images = real.images[index]
    losses_fn = build.create_losses_fn(config, apply_fn)
    return functools.partial(
        losses_fn, state.net_params, labels=state.labels, real=real_images, key=jax.random.key(3)
    )


@pytest.mark.parametrize("family", ["gradient", "risk"])
def test_cvar_gradient_is_cvar_weighted_sum_of_group_gradients(run, family):
    config, _, model, real, state, _ = run
    losses_fn = _losses_fn(config, model, real, state, family)
    # Jitted: op-by-op dispatch of these second-order programs compiled every primitive alone.
    group_losses = jax.jit(losses_fn)(state.images)
    jac = jax.jit(jax.jacrev(losses_fn))(state.images)  # (C, K, C, ipc, H, W, Ch)
    objective = lambda name, alpha: jax.jit(
        jax.grad(
            lambda s: step.robust_objective(s, losses_fn=losses_fn, risk_name=name, alpha=alpha)[0]
        )
    )(state.images)

    alpha = 0.3
    weights = jax.grad(lambda losses: risk.cvar(losses, alpha))(group_losses.reshape(-1))
    # Independent tail weights: greedy on the descending order, 1/n each, fractional boundary.
    n = weights.size
    order = np.argsort(-np.asarray(group_losses).reshape(-1), kind="stable")
    expected_w, mass = np.zeros(n), 0.0
    for i in order:
        expected_w[i] = min(1 / n, max(0.0, alpha - mass)) / alpha
        mass += 1 / n
    np.testing.assert_allclose(weights, expected_w, atol=1e-6)
    assert np.count_nonzero(expected_w) < n  # CVaR really drops the easy groups.

    expected = jnp.tensordot(
        jnp.asarray(expected_w, jnp.float32), jac.reshape(n, *state.images.shape), axes=1
    )
    got = objective("cvar", alpha)
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-6 * float(jnp.abs(expected).max()))
    assert float(jnp.abs(got).sum()) > 0  # The reference code's zero-gradient failure.

    mean_grad = objective("mean", 1.0)
    np.testing.assert_allclose(
        mean_grad, jac.reshape(n, *state.images.shape).mean(0), rtol=1e-3, atol=1e-7
    )
    assert not np.allclose(got, mean_grad, rtol=1e-2)
    # alpha = 1 is the mean exactly: same value and same gradient, bit for bit.
    np.testing.assert_array_equal(objective("cvar", 1.0), mean_grad)


@pytest.mark.parametrize("with_mesh", [False, True], ids=["one-device", "mesh"])
def test_step_compiles_with_the_fast_compile_options(run, monkeypatch, with_mesh):
    # An option XLA does not know fails the compile: proof that the step gets them.
    config, image_shape, model, real, state, _ = run
    monkeypatch.setitem(xla._FAST_COMPILE, jax.default_backend(), {"xla_no_such_option": "1"})
    mesh = sharding.create_mesh(config) if with_mesh else None
    args = (state, jax.random.key(7), real)
    args = sharding.replicate(args, mesh) if with_mesh else args
    with pytest.raises(Exception, match="xla_no_such_option"):
        build.create_step(config, model, image_shape, mesh).lower(*args).compile()


def test_step_is_pure_deterministic_and_compiles_once(run):
    config, image_shape, model, real, state, _ = run
    step_fn = build.create_step(config, model, image_shape)
    traced = chex.assert_max_traces(step.train_step, n=1)
    step_fn = jax.jit(functools.partial(traced, **step_fn.__wrapped__.keywords))
    s1, m1 = step_fn(state, jax.random.key(7), real)
    s2, m2 = step_fn(s1, jax.random.key(8), real)
    s3, _ = step_fn(s2, jax.random.key(9), real)  # no retrace on any later step
    again, _ = step_fn(state, jax.random.key(7), real)
    np.testing.assert_array_equal(s1.images, again.images)
    assert int(s3.step) == 3
    assert m1["group_losses"].shape == real.groups.sizes.shape
    for name in ("loss", "group_loss_mean", "group_loss_cvar", "group_loss_max"):
        assert np.isfinite(float(m1[name]))
    assert (
        float(m1["group_loss_max"])
        >= float(m1["group_loss_cvar"])
        >= float(m1["group_loss_mean"]) - 1e-5
    )
    assert not np.array_equal(s1.images, state.images)


def test_network_is_reset_on_schedule_and_trained_between(run):
    config, image_shape, model, real, state, _ = run
    step_fn = build.create_step(config, model, image_shape)  # reset every 2, train 2 steps
    s1, _ = step_fn(state, jax.random.key(0), real)
    s2, _ = step_fn(s1, jax.random.key(1), real)
    s3, _ = step_fn(s2, jax.random.key(2), real)
    leaf = lambda s: jax.tree.leaves(s.net_params if isinstance(s, step.State) else s)[0]
    assert not np.array_equal(leaf(s1), leaf(state))  # trained after the update
    assert not np.array_equal(leaf(s2), leaf(s1))
    # Step 2 (a multiple of net_reset_every) starts from the fresh init of its key, not s2.

    fresh = models.init_params(model, jax.random.split(jax.random.key(2), 4)[1], image_shape)
    assert not np.array_equal(leaf(s3), leaf(s2))
    zero_train = config.copy_and_resolve_references()
    zero_train.match.net_train_steps = 0
    s3_no_train, _ = build.create_step(zero_train, model, image_shape)(s2, jax.random.key(2), real)
    np.testing.assert_array_equal(leaf(s3_no_train), leaf(fresh))


def test_matching_family_registry_covers_the_spec():
    assert set(matching.FAMILIES) == {"gradient", "distribution", "risk"}
    assert set(risk.RISKS) == {"mean", "cvar", "max", "mean+max"}
