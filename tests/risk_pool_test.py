"""The risk family unrolled from a pool of online networks (`match.net_pool` > 0)."""

import jax
import numpy as np
import tiny_problem

from configs import smoke
from jaxdd import build, step
from jaxdd import config as config_lib


def _config():
    config = smoke.get_config()
    config.model.width, config.model.depth = 8, 2
    config.cluster.num_clusters = 2
    config.match.family, config.match.unroll_steps = "risk", 3
    config.match.outer_loop, config.match.inner_loop = -1, -1
    config.match.net_pool, config.match.net_max_updates = 3, 6
    config.robust.risk = "mean"
    return config


def _with_member(pool: step.NetPool, index: int, params) -> step.NetPool:
    return pool.replace(
        params=jax.tree.map(lambda all_, one: all_.at[index].set(one), pool.params, params)
    )


def test_the_unroll_starts_from_the_drawn_member_which_then_trains():
    config = _config()
    config_lib.validate(config)
    assert build.loops(config) == (1, 1)  # One update, then one online epoch of the member.
    model, real, _ = tiny_problem.three_classes(config)
    state = build.create_state(config, real, key=jax.random.key(1), model=model)
    assert isinstance(state, step.PooledState)
    step_fn = build.create_step(config, model, tiny_problem.IMAGE_SHAPE)
    key = jax.random.key(7)
    new, metrics = step_fn(state, key, real)
    assert np.isfinite(float(metrics["loss"])) and not np.array_equal(new.images, state.images)
    drawn = tiny_problem.assert_one_member_trained(state.pool, new.pool)

    # The objective is the unroll's from the drawn member: another network in its place gives
    # other group losses; another network in any other member's place leaves them unchanged.
    other = jax.tree.map(lambda x: x[(drawn + 1) % 3], state.pool.params)

    def losses(pool):
        return np.asarray(step_fn(state.replace(pool=pool), key, real)[1]["group_losses"])

    assert not np.allclose(losses(_with_member(state.pool, drawn, other)), metrics["group_losses"])
    mine = jax.tree.map(lambda x: x[drawn], state.pool.params)
    for index in {0, 1, 2} - {drawn}:
        np.testing.assert_array_equal(
            losses(_with_member(state.pool, index, mine)), metrics["group_losses"]
        )


def _run_config(iterations):
    config = _config()
    config.ipc = 2
    return tiny_problem.short_run(config, iterations)


def test_risk_run_resumes_bit_identically_with_its_pool(tmp_path):
    tiny_problem.assert_resumes_bit_identically(_run_config, tmp_path, total=3, first=1)
