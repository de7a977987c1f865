"""The risk family's learned unroll learning rate (`syn.learn_unroll_lr`)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tiny_problem

from configs import smoke
from jaxdd import build, step
from jaxdd import config as config_lib


def _config():
    config = smoke.get_config()
    config.model.width, config.model.depth = 8, 2
    config.cluster.num_clusters = 2
    config.match.family, config.syn.learn_unroll_lr = "risk", True
    config.match.unroll_steps = 3
    # A small unroll lr, where this tiny problem's objective is smooth enough in log lr for the
    # central difference below (at the shipped 0.1 it differs from the slope by 10-20 %).
    config.match.unroll_lr = 0.01
    config.match.outer_loop, config.match.inner_loop = -1, -1  # The risk family's 1 / 0.
    config.syn.unroll_lr_lr = 0.5
    return config


def test_step_descends_the_objective_in_the_log_learning_rate():
    """One update (risk: outer loop 1) moves log lr by -unroll_lr_lr * d objective / d log lr
    (SGD with momentum: the first update is the plain gradient step); the derivative is
    checked against a central difference of the step's own objective."""
    config = _config()
    model, real, _ = tiny_problem.three_classes(config)
    state = build.create_state(config, real, key=jax.random.key(1))
    assert isinstance(state, step.LearnedLrState)
    np.testing.assert_allclose(jnp.exp(state.log_unroll_lr), config.match.unroll_lr, rtol=1e-6)
    step_fn = build.create_step(config, model, tiny_problem.IMAGE_SHAPE)
    key = jax.random.key(0)
    new_state, metrics = step_fn(state, key, real)
    moved = float(new_state.log_unroll_lr - state.log_unroll_lr)
    assert abs(moved) > 1e-4
    np.testing.assert_allclose(metrics["unroll_lr"], jnp.exp(new_state.log_unroll_lr))

    eps = 0.02
    shifted = lambda d: float(
        step_fn(state.replace(log_unroll_lr=state.log_unroll_lr + d), key, real)[1]["loss"]
    )
    derivative = (shifted(eps) - shifted(-eps)) / (2 * eps)
    np.testing.assert_allclose(moved, -config.syn.unroll_lr_lr * derivative, rtol=0.05)
    assert not np.array_equal(new_state.images, state.images)  # The set learns beside it.


def _run_config(iterations):
    return tiny_problem.short_run(_config(), iterations)


def test_run_with_a_learned_lr_resumes_bit_identically_and_reports_it(tmp_path):
    whole, resumed = tiny_problem.assert_resumes_bit_identically(
        _run_config, tmp_path, total=3, first=1
    )
    learned = whole.report["learned_unroll_lr"]
    assert learned == resumed.report["learned_unroll_lr"]
    assert learned != pytest.approx(_run_config(3).match.unroll_lr, rel=1e-6)


@pytest.mark.parametrize("family", ["gradient", "distribution", "krr"])
def test_only_the_risk_family_learns_an_unroll_lr(family):
    config = _config()
    config.match.family = family
    with pytest.raises(ValueError, match=r"syn.learn_unroll_lr=True .* \(only the risk family"):
        config_lib.validate(config)
