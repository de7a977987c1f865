"""The distillation step: sample groups -> per-group losses -> risk -> update the synthetic set.

`train_step(state, key, real, ...) -> (state, metrics)` is pure and jitted once; the run loop
binds the hyperparameters with `functools.partial` and passes the real data as an argument
(never closed over, so XLA does not constant-fold the dataset into the program).

The network the gradient family matches through follows DC's outer/inner schedule, carried in
the state: it is re-initialised every `net_reset_every` steps and trained for `net_train_steps`
SGD steps on the (detached) synthetic set after each update. The distribution and risk
families use `net_reset_every=1, net_train_steps=0`: a fresh network every step.

Multi-device: given a `jax.sharding.Mesh`, the per-group losses are split over its devices
(`jaxdd.sharding.compute_group_losses`); the risk then reduces the gathered (C, K) losses.

The initial synthetic set comes from `jaxdd.synthetic`; `init_state` wraps it with the
optimiser states and the matched network into the `State` a run checkpoints.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from jaxdd import groups as groups_lib
from jaxdd import matching, risk, sharding


@flax.struct.dataclass
class RealData:
    """The real training data a step samples from (a jit argument, never a closure)."""

    images: jax.Array  # (N, H, W, Ch) normalised.
    groups: groups_lib.Groups  # (C, K, Gmax) member indices and (C, K) sizes.


@flax.struct.dataclass
class State:
    """Everything a distillation run evolves; a checkpoint is exactly this pytree."""

    step: jax.Array  # () int32, number of updates applied.
    images: jax.Array  # (C, ipc, H, W, Ch) synthetic images, in the dataset's normalised space.
    labels: jax.Array  # (C, ipc) int32 synthetic labels.
    opt_state: optax.OptState  # Optimiser state of the synthetic images.
    net_params: Any  # Network carried by the DC outer/inner schedule.
    net_opt_state: optax.OptState


def init_state(
    *,
    images: jax.Array,
    labels: jax.Array,
    net_params: Any,
    syn_optimizer: optax.GradientTransformation,
    net_optimizer: optax.GradientTransformation,
) -> State:
    """The step-0 `State`: the synthetic set, fresh optimiser states and the matched network."""
    return State(
        step=jnp.zeros((), jnp.int32),
        images=images,
        labels=labels,
        opt_state=syn_optimizer.init(images),
        net_params=net_params,
        net_opt_state=net_optimizer.init(net_params),
    )


def _train_network(
    params: Any,
    opt_state: optax.OptState,
    images: jax.Array,
    labels: jax.Array,
    *,
    key: jax.Array,
    apply_fn: matching.ApplyFn,
    optimizer: optax.GradientTransformation,
    augment_fn: matching.AugmentFn,
    num_steps: int,
) -> tuple[Any, optax.OptState]:
    """DC's inner loop: `num_steps` full-batch steps of the network on the synthetic set."""
    grad_fn = jax.grad(functools.partial(matching.mean_cross_entropy, apply_fn))

    def body(i, carry):
        params, opt_state = carry
        grads = grad_fn(params, augment_fn(images, jax.random.fold_in(key, i)), labels)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    return jax.lax.fori_loop(0, num_steps, body, (params, opt_state))


def robust_objective(
    images: jax.Array,
    *,
    losses_fn: Callable[[jax.Array], jax.Array],
    risk_name: str,
    alpha: float,
) -> tuple[jax.Array, jax.Array]:
    """R(S): the risk measure of the (C, K) group losses of the synthetic images `images`.

    Returns:
      () the risk, and (C, K) the group losses (as auxiliary output for `value_and_grad`).
    """
    group_losses = losses_fn(images)
    return risk.reduce(risk_name, group_losses.reshape(-1), alpha=alpha), group_losses


def train_step(
    state: State,
    key: jax.Array,
    real: RealData,
    *,
    losses_fn: Callable[..., jax.Array],
    init_net: Callable[[jax.Array], Any],
    apply_fn: matching.ApplyFn,
    syn_optimizer: optax.GradientTransformation,
    net_optimizer: optax.GradientTransformation,
    augment_fn: matching.AugmentFn,
    risk_name: str,
    alpha: float,
    num_real: int,
    net_reset_every: int,
    net_train_steps: int,
    mesh: Mesh | None = None,
) -> tuple[State, dict[str, jax.Array]]:
    """One distillation update; pure, so `fold_in(run_key, step)` keys make runs reproducible.

    Args:
      state: current `State`. key: this step's PRNG key. real: the real training data.
      losses_fn: a `matching.FAMILIES` entry with its own hyperparameters bound.
      init_net: key -> fresh network parameters. apply_fn: network apply.
      risk_name / alpha: reduction of the (C, K) group losses (`risk.RISKS`).
      num_real: m, real samples drawn per group.
      mesh: split the groups' losses over this mesh's devices (`sharding.compute_group_losses`);
        None: one device. The state and `real` should be replicated on it
        (`sharding.replicate`).

    Returns:
      The new state and scalar metrics (plus the (C, K) `group_losses`).
    """
    sample_key, init_key, loss_key, train_key = jax.random.split(key, 4)
    index = groups_lib.sample_groups(real.groups, num_real, key=sample_key)  # (C, K, m)

    reset = state.step % net_reset_every == 0
    fresh = init_net(init_key)
    net_params = jax.tree.map(lambda f, p: jnp.where(reset, f, p), fresh, state.net_params)
    net_opt_state = jax.tree.map(
        lambda f, p: jnp.where(reset, f, p), net_optimizer.init(fresh), state.net_opt_state
    )

    objective = functools.partial(
        robust_objective,
        losses_fn=functools.partial(
            sharding.compute_group_losses,
            losses_fn,
            net_params,
            labels=state.labels,
            images=real.images,
            index=index,
            key=loss_key,
            mesh=mesh,
        ),
        risk_name=risk_name,
        alpha=alpha,
    )
    (value, group_losses), grads = jax.value_and_grad(objective, has_aux=True)(state.images)
    updates, opt_state = syn_optimizer.update(grads, state.opt_state, state.images)
    images = optax.apply_updates(state.images, updates)

    net_params, net_opt_state = _train_network(
        net_params,
        net_opt_state,
        jax.lax.stop_gradient(images.reshape(-1, *images.shape[2:])),
        state.labels.reshape(-1, *state.labels.shape[2:]),
        key=train_key,
        apply_fn=apply_fn,
        optimizer=net_optimizer,
        augment_fn=augment_fn,
        num_steps=net_train_steps,
    )
    flat = group_losses.reshape(-1)
    metrics = {
        "loss": value,
        "group_loss_mean": risk.mean(flat),
        "group_loss_cvar": risk.cvar(flat, alpha),
        "group_loss_max": risk.worst(flat),
        "grad_norm": optax.global_norm(grads),
        # The run loop stops on a non-finite loss or synthetic set, keeping the last checkpoint.
        "finite": jnp.isfinite(value) & jnp.all(jnp.isfinite(images)),
        "group_losses": group_losses,
    }
    new_state = state.replace(
        step=state.step + 1,
        images=images,
        opt_state=opt_state,
        net_params=net_params,
        net_opt_state=net_opt_state,
    )
    return new_state, metrics


def synthetic_arrays(state: State) -> tuple[np.ndarray, np.ndarray]:
    """The synthetic set as flat host arrays: images (C*ipc, H, W, Ch), labels (C*ipc,)."""
    images = np.asarray(state.images)  # Replicated arrays read on every host, too.
    return images.reshape(-1, *images.shape[2:]), np.asarray(state.labels).reshape(-1)
