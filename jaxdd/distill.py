"""The distillation step: sample groups -> per-group losses -> risk -> update the synthetic set.

`train_step(state, key, real, ...) -> (state, metrics)` is pure and jitted once; the run loop
binds the hyperparameters with `functools.partial` and passes the real data as an argument
(never closed over, so XLA does not constant-fold the dataset into the program).

The network the gradient family matches through follows DC's outer/inner schedule, carried in
the state: it is re-initialised every `net_reset_every` steps and trained for `net_train_steps`
SGD steps on the (detached) synthetic set after each update. The distribution and risk
families use `net_reset_every=1, net_train_steps=0`: a fresh network every step.

Multi-device: given a `jax.sharding.Mesh`, the per-group losses run under `jax.shard_map`
with the K (cluster) axis of the groups split over the mesh: every device gathers and
augments only its own real batches and computes their losses, while the synthetic set, the
network and the optimiser states stay replicated (they are small next to C*K*m real images).
The risk measure then reduces the gathered (C, K) losses, and `jax.grad` through `shard_map`
sums every device's contribution to the synthetic-set gradient (no extra `pmean`, which would
multiply it by the device count). Results equal the single-device step up to float
reassociation (tested on 4 forced CPU devices).
"""

from __future__ import annotations

import functools
import sys
import types
from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxdd import clustering, matching, risk


@flax.struct.dataclass
class RealData:
    """The real training data a step samples from (a jit argument, never a closure)."""

    images: jax.Array  # (N, H, W, Ch) normalised.
    groups: clustering.Groups  # (C, K, Gmax) member indices and (C, K) sizes.


@flax.struct.dataclass
class State:
    """Everything a distillation run evolves; a checkpoint is exactly this pytree."""

    step: jax.Array  # () int32, number of updates applied.
    images: jax.Array  # (C, ipc, H, W, Ch) synthetic images, in the dataset's normalised space.
    labels: jax.Array  # (C, ipc) int32 synthetic labels.
    opt_state: optax.OptState  # Optimiser state of the synthetic images.
    net_params: Any  # Network carried by the DC outer/inner schedule.
    net_opt_state: optax.OptState


def init_synthetic(
    real: RealData, *, ipc: int, key: jax.Array, method: str = "real"
) -> tuple[jax.Array, jax.Array]:
    """Initial synthetic set: `ipc` random real images per class, or standard-normal noise.

    Returns:
      images (C, ipc, H, W, Ch) and labels (C, ipc) int32.
    """
    num_classes = real.groups.sizes.shape[0]
    labels = jnp.repeat(jnp.arange(num_classes, dtype=jnp.int32)[:, None], ipc, axis=1)
    if method == "noise":
        shape = (num_classes, ipc, *real.images.shape[1:])
        return jax.random.normal(key, shape, real.images.dtype), labels
    if method != "real":
        raise ValueError(f"unknown synthetic init {method!r}; use 'real' or 'noise'.")
    # Draw uniformly from the whole class: flatten its groups' members, sizes as weights.
    members = real.groups.members.reshape(num_classes, -1)
    slots = real.groups.members.shape[-1]
    valid = jnp.arange(slots)[None, None, :] < real.groups.sizes[:, :, None]
    valid = valid.reshape(num_classes, -1)

    def draw(class_members, class_valid, class_key):
        # Without replacement when the class is large enough (top-k of random scores).
        scores = jnp.where(class_valid, jax.random.uniform(class_key, class_valid.shape), -1.0)
        return class_members[jax.lax.top_k(scores, ipc)[1]]

    index = jax.vmap(draw)(members, valid, jax.random.split(key, num_classes))
    return real.images[index], labels


def create_state(
    *,
    images: jax.Array,
    labels: jax.Array,
    net_params: Any,
    syn_optimizer: optax.GradientTransformation,
    net_optimizer: optax.GradientTransformation,
) -> State:
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


def _to_varying(tree: Any, axis: str) -> Any:
    """Marks replicated values as per-device inside `shard_map` (`pcast`; `pvary` before it)."""
    if hasattr(jax.lax, "pcast"):
        return jax.lax.pcast(tree, axis, to="varying")
    return jax.lax.pvary(tree, axis)  # pragma: no cover - jax < 0.8


def compute_group_losses(
    losses_fn: Callable[..., jax.Array],
    params: Any,
    syn_images: jax.Array,
    *,
    labels: jax.Array,
    images: jax.Array,
    index: jax.Array,
    key: jax.Array,
    mesh: Mesh | None = None,
) -> jax.Array:
    """The (C, K) losses of the real groups `images[index]` against `syn_images`.

    Args:
      losses_fn: a `matching.FAMILIES` entry with its hyperparameters bound.
      params: the network matched through. syn_images: (C, ipc, H, W, Ch). labels: (C, ipc).
      images: (N, H, W, Ch) the real training images. index: (C, K, m) rows of every group.
      key: the matching key (augmentation draws).
      mesh: a one-axis mesh; the K axis of `index` is split over its devices, padded to a
        multiple of the device count with repeated groups whose losses are dropped. None: one
        device, no `shard_map`.

    Returns:
      (C, K) losses.
    """
    if mesh is None:
        return losses_fn(params, syn_images, labels=labels, real=images[index], key=key)
    (axis,) = mesh.axis_names
    num_clusters = index.shape[1]
    padded = -(-num_clusters // mesh.size) * mesh.size
    if padded != num_clusters:
        index = index[:, jnp.arange(padded) % num_clusters]

    def local(params, syn_images, labels, images, index, key):
        # Replicated inputs enter as device-invariant; differentiating an invariant value
        # inside shard_map would psum its gradient over devices, so the per-group real
        # gradients (w.r.t. params) and this device's share of the synthetic-set gradient
        # are taken w.r.t. per-device copies. shard_map's transpose sums the latter.
        params, syn_images = _to_varying((params, syn_images), axis)
        return losses_fn(params, syn_images, labels=labels, real=images[index], key=key)

    losses = jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(P(), P(), P(), P(), P(None, axis), P()),
        out_specs=P(None, axis),
    )(params, syn_images, labels, images, index, key)
    return losses[:, :num_clusters]


def replicate(tree: Any, mesh: Mesh) -> Any:
    """`tree`'s arrays replicated on every device of `mesh` (also across hosts).

    Every process must pass the same values (as every process of a run computes them from
    the same config and seed).
    """
    sharding = NamedSharding(mesh, P())

    def put(x):
        if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            return jax.random.wrap_key_data(
                put(jax.random.key_data(x)), impl=jax.random.key_impl(x)
            )
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    return jax.tree.map(put, tree)


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
      mesh: split the groups' losses over this mesh's devices (`compute_group_losses`); None: one
        device. The state and `real` should be replicated on it (`replicate`).

    Returns:
      The new state and scalar metrics (plus the (C, K) `group_losses`).
    """
    sample_key, init_key, loss_key, train_key = jax.random.split(key, 4)
    index = clustering.sample_groups(real.groups, num_real, key=sample_key)  # (C, K, m)

    reset = state.step % net_reset_every == 0
    fresh = init_net(init_key)
    net_params = jax.tree.map(lambda f, p: jnp.where(reset, f, p), fresh, state.net_params)
    net_opt_state = jax.tree.map(
        lambda f, p: jnp.where(reset, f, p), net_optimizer.init(fresh), state.net_opt_state
    )

    objective = functools.partial(
        robust_objective,
        losses_fn=functools.partial(
            compute_group_losses,
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


class _CallableModule(types.ModuleType):
    """Lets `jaxdd.distill(config, workdir)` run a whole distillation while `jaxdd.distill`
    stays this module (`jaxdd.distill.train_step`, `jaxdd.distill.State`, ...)."""

    def __call__(self, config, workdir):
        """Runs distillation as `python -m jaxdd.main` does; see `jaxdd.train.distill_run`."""
        from jaxdd import train  # The run loop imports this module: import it lazily.

        return train.distill_run(config, workdir)


sys.modules[__name__].__class__ = _CallableModule
