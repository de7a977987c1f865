"""Tests for jaxdd.risk against an independent NumPy Rockafellar-Uryasev minimisation."""

import functools

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads

import jaxdd
from jaxdd import risk

jax.config.update("jax_enable_x64", False)

# The property tests call CVaR jitted, alpha traced: one compile per loss-vector length (and
# weights or none) instead of one per primitive per length, eagerly. The eager path, whose
# alpha = 1 is the mean exactly, has its own tests below.
_cvar = jax.jit(risk.cvar)
_cvar_grad = jax.jit(jax.grad(risk.cvar))


def cvar_reference(losses: np.ndarray, alpha: float, weights: np.ndarray | None = None) -> float:
    """min_eta eta + (1/alpha) sum p (L - eta)_+ by brute force over the breakpoints eta = L_i.

    The objective is convex and piecewise linear in eta with kinks at the losses, so its minimum
    is attained at one of them; no sorting or top-k logic is shared with the implementation.
    """
    losses = np.asarray(losses, np.float64)
    p = (
        np.full(losses.shape, 1.0 / losses.size)
        if weights is None
        else np.asarray(weights, np.float64)
    )
    objective = [eta + np.sum(p * np.maximum(losses - eta, 0.0)) / alpha for eta in losses]
    return float(np.min(objective))


def _weights(draw, n):
    raw = draw(hnp.arrays(np.float64, n, elements=st.floats(0.0, 1.0)))
    raw = raw + 1e-3  # strictly positive so that the max property below is well defined
    return raw / raw.sum()


@st.composite
def losses_and_weights(draw, tied=False):
    n = draw(st.integers(1, 24))
    if tied:  # few distinct values: many exact ties
        values = draw(hnp.arrays(np.float64, n, elements=st.sampled_from([-1.0, 0.0, 0.5, 2.0])))
    else:
        values = draw(
            hnp.arrays(np.float64, n, elements=st.floats(-10, 10, width=32, allow_subnormal=False))
        )
    weights = _weights(draw, n) if draw(st.booleans()) else None
    alpha = draw(st.floats(1e-3, 1.0))
    return values.astype(np.float32), weights, alpha


@settings(max_examples=200, deadline=None)
@given(losses_and_weights())
def test_matches_rockafellar_uryasev(case):
    losses, weights, alpha = case
    got = _cvar(losses, alpha, weights=weights)
    np.testing.assert_allclose(got, cvar_reference(losses, alpha, weights), rtol=1e-4, atol=1e-4)


@settings(max_examples=100, deadline=None)
@given(losses_and_weights(tied=True))
def test_matches_reference_with_ties(case):
    losses, weights, alpha = case
    got = _cvar(losses, alpha, weights=weights)
    np.testing.assert_allclose(got, cvar_reference(losses, alpha, weights), rtol=1e-4, atol=1e-4)


def test_fractional_boundary_element():
    # n = 4, alpha = 0.3: the worst loss (weight 0.25) plus 0.05 of the second, divided by 0.3.
    losses = np.array([1.0, 4.0, 2.0, 3.0], np.float32)
    expected = (0.25 * 4.0 + 0.05 * 3.0) / 0.3
    np.testing.assert_allclose(risk.cvar(losses, 0.3), expected, rtol=1e-6)


@settings(max_examples=100, deadline=None)
@given(losses_and_weights())
def test_alpha_one_is_weighted_mean(case):
    losses, weights, _ = case
    expected = risk.mean(losses, weights=weights)
    np.testing.assert_allclose(
        risk.cvar(losses, 1.0, weights=weights), expected, rtol=1e-5, atol=1e-5
    )
    p = np.full(len(losses), 1 / len(losses)) if weights is None else weights
    np.testing.assert_allclose(expected, np.sum(p * losses), rtol=1e-5, atol=1e-5)


@settings(max_examples=100, deadline=None)
@given(losses_and_weights())
def test_small_alpha_is_max(case):
    losses, weights, _ = case
    p = np.full(len(losses), 1 / len(losses)) if weights is None else weights
    alpha = float(p.min()) * 0.999
    np.testing.assert_allclose(
        _cvar(losses, alpha, weights=weights), losses.max(), rtol=1e-4, atol=1e-6
    )
    np.testing.assert_allclose(risk.worst(losses, weights=weights), losses.max())


@settings(max_examples=100, deadline=None)
@given(losses_and_weights())
def test_non_decreasing_as_alpha_falls(case):
    losses, weights, _ = case
    alphas = np.linspace(1.0, 0.01, 25)
    values = np.array([_cvar(losses, a, weights=weights) for a in alphas])
    assert np.all(np.diff(values) >= -1e-4 * (1 + np.abs(values[:-1])))


# Found by CI: a heavy weight right after a tiny alpha's boundary made `cumsum - w` cancel.
_HEAVY_AFTER_BOUNDARY = (
    np.array([0, 0, 0, 1, 0, 0, 0], np.float32),
    np.array([4.98256104e-04, 4.98754360e-01, 4.98754360e-01] + [4.98256104e-04] * 4),
    0.001,
)


@settings(max_examples=100, deadline=None)
@given(losses_and_weights())
@example(_HEAVY_AFTER_BOUNDARY)
def test_gradient_is_the_tail_weights(case):
    losses, weights, alpha = case
    grad = _cvar_grad(jnp.asarray(losses), alpha, weights=weights)
    p = np.full(len(losses), 1 / len(losses)) if weights is None else weights
    # Independent construction of the weights: stable descending order, greedy tail filling.
    order = sorted(range(len(losses)), key=lambda i: -losses[i])
    expected, mass = np.zeros(len(losses)), 0.0
    for i in order:
        expected[i] = min(p[i], max(0.0, alpha - mass)) / alpha
        mass += p[i]
    np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(grad.sum(), 1.0, rtol=1e-4)


def test_check_grads_distinct_losses():
    losses = jnp.array([0.3, -1.2, 2.5, 0.9, 1.7])
    for alpha in (1.0, 0.5, 0.37, 0.1):
        check_grads(
            functools.partial(risk.cvar, alpha=alpha), (losses,), order=1, modes=("rev", "fwd")
        )
    weights = jnp.array([0.1, 0.2, 0.3, 0.15, 0.25])
    check_grads(
        lambda w: risk.cvar(losses, 0.4, weights=w / w.sum()), (weights,), order=1, modes=("rev",)
    )


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_any_axis_and_vmap_and_jit(axis):
    x = jax.random.normal(jax.random.key(0), (3, 5, 7))
    got = jax.jit(functools.partial(risk.cvar, alpha=0.3, axis=axis))(x)
    moved = np.moveaxis(np.asarray(x), axis, -1).reshape(-1, x.shape[axis])
    expected = np.array([cvar_reference(row, 0.3) for row in moved])
    np.testing.assert_allclose(np.asarray(got).reshape(-1), expected, rtol=1e-5, atol=1e-5)
    vmapped = jax.vmap(lambda row: risk.cvar(row, 0.3, axis=-1))(
        np.moveaxis(np.asarray(x), axis, 0)
    )
    assert vmapped.shape[0] == x.shape[axis]


def test_traced_alpha_under_jit_and_grad():
    losses = jnp.array([1.0, 5.0, 3.0, 2.0])
    f = jax.jit(lambda a: risk.cvar(losses, a))
    np.testing.assert_allclose(f(0.5), 4.0)
    np.testing.assert_allclose(f(1.0), losses.mean())


def test_per_example_weights_shape_and_axis():
    losses = np.array([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]], np.float32)
    weights = np.array([[0.5, 0.25, 0.25], [0.2, 0.3, 0.5]], np.float32)
    got = risk.cvar(losses, 0.5, weights=weights)
    expected = [cvar_reference(losses[i], 0.5, weights[i]) for i in range(2)]
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    got0 = risk.cvar(losses.T, 0.5, weights=weights.T, axis=0)
    np.testing.assert_allclose(got0, expected, rtol=1e-6)


@pytest.mark.parametrize("alpha", [0.0, -0.1, 1.5, float("nan"), [0.5, 0.5]])
def test_invalid_alpha(alpha):
    with pytest.raises(ValueError, match="alpha"):
        risk.cvar(jnp.ones(3), alpha)


@pytest.mark.parametrize(
    "weights, match",
    [
        ([0.5, 0.6, -0.1], "non-negative"),
        ([0.2, 0.2, 0.2], "sum to 1"),
        ([0.5, 0.5], "entries"),
        (np.full((2, 3), 1 / 3), "shape"),
    ],
)
def test_invalid_weights(weights, match):
    for reducer in (functools.partial(risk.cvar, alpha=0.5), risk.mean, risk.worst):
        with pytest.raises(ValueError, match=match):
            reducer(jnp.ones(3), weights=weights)


def test_zero_weight_losses_never_count():
    losses = jnp.array([100.0, 1.0, 2.0])
    weights = jnp.array([0.0, 0.5, 0.5])
    assert float(risk.worst(losses, weights=weights)) == 2.0
    np.testing.assert_allclose(risk.cvar(losses, 0.5, weights=weights), 2.0)


def test_named_reducers_and_package_export():
    losses = jnp.array([1.0, 2.0, 3.0, 10.0])
    assert jaxdd.cvar is risk.cvar
    np.testing.assert_allclose(risk.reduce("mean", losses), 4.0)
    np.testing.assert_allclose(risk.reduce("max", losses), 10.0)
    np.testing.assert_allclose(risk.reduce("mean+max", losses), 14.0)
    np.testing.assert_allclose(risk.reduce("cvar", losses, alpha=0.25), 10.0)
    np.testing.assert_allclose(risk.reduce("cvar", losses, alpha=1.0), risk.reduce("mean", losses))
    with pytest.raises(ValueError, match="unknown risk"):
        risk.reduce("median", losses)
