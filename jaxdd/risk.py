"""Risk measures over group losses: CVaR (sort-based, exact), mean and worst.

For losses L_1..L_n with probabilities p_i and tail mass alpha in (0, 1],

    CVaR_alpha(L) = min_eta  eta + (1 / alpha) * sum_i p_i * (L_i - eta)_+

which equals the p-weighted mean of the worst alpha-fraction of the losses, the boundary
element counted fractionally. We compute it by sorting: the i-th largest loss gets the weight
min(p_i, max(0, alpha - mass before it)) / alpha. Those weights do not depend on the loss
values, so the gradient with respect to the losses is exactly that weight vector, a valid
subgradient of the convex CVaR (ties split in sort order).

All reducers take unreduced losses and reduce one axis: `jax.jit`, `jax.vmap` and `jax.grad`
compose with them as with any jnp reduction.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

# Tolerance on sum(weights) == 1, loose enough for float32 weights built by a user.
_WEIGHT_SUM_ATOL = 1e-4


def _concrete_or_none(x: ArrayLike) -> np.ndarray | None:
    """The value of `x` as NumPy when it is known at trace time, else None (a tracer)."""
    try:
        return np.asarray(x)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def _check_alpha(alpha: ArrayLike) -> None:
    value = _concrete_or_none(alpha)
    if value is None:
        return  # A traced alpha (e.g. a schedule) cannot be checked here; the math stays defined.
    if value.ndim != 0 or not np.isfinite(value) or not 0.0 < float(value) <= 1.0:
        raise ValueError(
            f"alpha must be a scalar tail mass in (0, 1], got {value!r}. "
            "alpha=1 is the mean; smaller alpha focuses on the worst groups."
        )


def _normalised_weights(losses: jax.Array, weights: ArrayLike | None, axis: int) -> jax.Array:
    """Probability weights broadcast to `losses`, checked when concrete."""
    n = losses.shape[axis]
    if weights is None:
        return jnp.full(losses.shape, 1.0 / n, dtype=losses.dtype)
    weights = jnp.asarray(weights, dtype=losses.dtype)
    if weights.ndim == 1:
        if weights.shape[0] != n:
            raise ValueError(
                f"weights has {weights.shape[0]} entries but losses has {n} along axis {axis}; "
                "pass one probability per loss."
            )
        weights = jnp.moveaxis(
            jnp.broadcast_to(weights, losses.shape[:axis] + losses.shape[axis + 1 :] + (n,)),
            -1,
            axis,
        )
    elif weights.shape != losses.shape:
        raise ValueError(
            f"weights must have shape ({n},) or {losses.shape} (the losses' shape), "
            f"got {weights.shape}."
        )
    value = _concrete_or_none(weights)
    if value is not None:
        if not np.all(np.isfinite(value)) or np.any(value < 0):
            raise ValueError("weights must be finite and non-negative probabilities.")
        sums = value.sum(axis=axis)
        if not np.allclose(sums, 1.0, atol=_WEIGHT_SUM_ATOL):
            raise ValueError(
                f"weights must sum to 1 along axis {axis}, got sums {np.unique(sums.round(6))}; "
                "normalise them (w / w.sum())."
            )
    return weights


def _prepare(losses: ArrayLike, weights: ArrayLike | None, axis: int):
    losses = jnp.asarray(losses)
    if not jnp.issubdtype(losses.dtype, jnp.floating):
        losses = losses.astype(jnp.float32)
    if losses.ndim == 0:
        raise ValueError("losses must have at least one axis to reduce, got a scalar.")
    axis = axis % losses.ndim
    return losses, _normalised_weights(losses, weights, axis), axis


def cvar(
    losses: ArrayLike, alpha: ArrayLike, *, weights: ArrayLike | None = None, axis: int = -1
) -> jax.Array:
    """Conditional value at risk: the weighted mean of the worst `alpha` tail of `losses`.

    Args:
      losses: unreduced losses, any shape (..., n, ...).
      alpha: tail mass in (0, 1]; 1 gives the (weighted) mean, alpha <= min(p) the max.
      weights: probabilities of the losses, shape (n,) or `losses.shape`, non-negative and
        summing to 1 along `axis`; uniform when None.
      axis: the axis to reduce.

    Returns:
      `losses` with `axis` removed.

    Raises:
      ValueError: alpha outside (0, 1], or weights of the wrong shape, negative, or not summing
        to 1 (checked whenever they are concrete at trace time).
    """
    _check_alpha(alpha)
    alpha_value = _concrete_or_none(alpha)
    if alpha_value is not None and float(alpha_value) == 1.0:
        # The whole distribution: the mean, bit for bit (no reordering of the float sum).
        return mean(losses, weights=weights, axis=axis)
    losses, weights, axis = _prepare(losses, weights, axis)
    # Sort descending; a stable argsort on the negated losses keeps ties in input order.
    order = jnp.argsort(-losses, axis=axis, stable=True)
    sorted_losses = jnp.take_along_axis(losses, order, axis=axis)
    sorted_weights = jnp.take_along_axis(weights, order, axis=axis)
    alpha = jnp.asarray(alpha, dtype=losses.dtype)
    # The mass strictly before each loss, summed directly: `cumsum - w` would cancel
    # catastrophically after a heavy weight and misplace the tail boundary when alpha is small.
    inclusive = jnp.cumsum(sorted_weights, axis=axis)
    mass_before = jnp.concatenate(
        [
            jnp.zeros_like(jax.lax.slice_in_dim(inclusive, 0, 1, axis=axis)),
            jax.lax.slice_in_dim(inclusive, 0, inclusive.shape[axis] - 1, axis=axis),
        ],
        axis=axis,
    )
    tail = jnp.minimum(sorted_weights, jnp.maximum(alpha - mass_before, 0.0))
    # `tail` is built from the weights alone, never from the loss values, so the gradient
    # w.r.t. the losses is exactly `tail / alpha` scattered back through the sort.
    return jnp.sum(tail * sorted_losses, axis=axis) / alpha


def mean(losses: ArrayLike, *, weights: ArrayLike | None = None, axis: int = -1) -> jax.Array:
    """Weighted mean of `losses` along `axis` (CVaR at alpha = 1): ordinary ERM distillation."""
    losses, weights, axis = _prepare(losses, weights, axis)
    return jnp.sum(weights * losses, axis=axis)


def worst(losses: ArrayLike, *, weights: ArrayLike | None = None, axis: int = -1) -> jax.Array:
    """Largest loss with non-zero probability along `axis` (CVaR as alpha -> 0)."""
    losses, weights, axis = _prepare(losses, weights, axis)
    return jnp.max(jnp.where(weights > 0, losses, -jnp.inf), axis=axis)


def mean_plus_max(
    losses: ArrayLike, *, weights: ArrayLike | None = None, axis: int = -1
) -> jax.Array:
    """Mean plus worst: the two-level objective of the reference robust-DD code."""
    return mean(losses, weights=weights, axis=axis) + worst(losses, weights=weights, axis=axis)


# Risk names accepted by `robust.risk`; each maps to a reducer of (losses, alpha, weights).
RISKS: dict[str, Callable[..., jax.Array]] = {
    "mean": lambda losses, alpha, weights: mean(losses, weights=weights),
    "cvar": lambda losses, alpha, weights: cvar(losses, alpha, weights=weights),
    "max": lambda losses, alpha, weights: worst(losses, weights=weights),
    "mean+max": lambda losses, alpha, weights: mean_plus_max(losses, weights=weights),
}


def reduce(
    name: str, losses: ArrayLike, *, alpha: ArrayLike = 1.0, weights: ArrayLike | None = None
) -> jax.Array:
    """Reduces flat group losses (n,) to a scalar with the risk measure called `name`."""
    if name not in RISKS:
        raise ValueError(f"unknown risk {name!r}; choose one of {sorted(RISKS)}.")
    return RISKS[name](losses, alpha, weights)
