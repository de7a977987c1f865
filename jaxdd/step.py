"""The distillation step: one DC iteration of sample groups -> per-group losses -> risk -> update.

`train_step(state, key, real, ...) -> (state, metrics)` is pure and jitted once; the run loop
binds the hyperparameters with `functools.partial` and passes the real data as an argument
(never closed over, so XLA does not constant-fold the dataset into the program).

One step is one iteration as DC counts them (`VICO-UoE/DatasetCondensation` `main.py`
130-199): a freshly initialised network, then `outer_loop` updates of the synthetic set, each
but the last followed by `inner_loop` epochs of training that network on the (detached)
synthetic set, minibatches of at most `inner_batch` images with per-image DSA (DC's `epoch`,
`utils.py` 297). DC's `get_loops` gives IPC 1 -> 1/1, 10 -> 10/50, 50 -> 50/10; the
distribution (DM) and risk families take 1/0: a fresh random network for every update.
With `net_train='real'` the network trains on random real images between updates instead
(IDC's, `snu-mllab/Efficient-Dataset-Condensation` `condense.py` 489-542: 100 updates per
network, each followed by 500 real images with CutMix), so the set matches gradients along a
trajectory trained on real data. Nothing of the network outlives its iteration, so the state
holds only the synthetic set and what is learned with it (`LearnedLrState`), except for the
krr family's pool (`PooledState`).

The objective of an update is `C *` the risk of the (C, K) group losses (`robust_objective`):
with K = 1 and the mean that is DC's (and DM's) sum of per-class losses, and for every risk the
group weights sum to C, so one image learning rate (DC's 0.1, DM's 1.0) serves all of them.

The reference code's mode (`assign="voronoi"`, `net_train="real_robust"`; SPEC "Subgroups,
second mode"): every update draws a pool of real images per class and its groups are the
Voronoi cells of the class's synthetic images in the matched network's embedding
(`groups.voronoi_groups`); and instead of the synthetic set the matched network trains on that
pool, with mean cross-entropy plus the mean and the max over cells of each cell's CVaR of its
per-image losses (`robust_network_loss`): with gradient, the upper tail and every cell, where
`Mming11/RobustDatasetDistillation` (`utils.py` 483-590, `epoch_mix`) detaches it, takes the
lower tail and drops zero-loss cells, so that its robust term never reaches the network.

Multi-device: given a `jax.sharding.Mesh`, the per-group losses are split over its devices
(`jaxdd.sharding.compute_group_losses`); the risk then reduces the gathered (C, K) losses.

The initial synthetic set comes from `jaxdd.synthetic`; `init_state` wraps it with the
optimiser state into the `State` a run checkpoints.
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
from jax.typing import ArrayLike

from jaxdd import groups as groups_lib
from jaxdd import matching, models, retrain, risk, sharding

# (stored set, labels, decoder parameters) -> the training images and labels they decode to
# (`jaxdd.synthetic`: identity for pixels, IDC's multi-formation for factorized, G(latents) for
# a generator, whose parameters are `RealData.decoder`).
DecodeFn = Callable[[jax.Array, jax.Array, Any], tuple[jax.Array, jax.Array]]


def identity_decode(
    images: jax.Array, labels: jax.Array, params: Any = None
) -> tuple[jax.Array, jax.Array]:
    del params
    return images, labels


# `net_train`: what the matched network trains on between updates.
NET_TRAINING = ("synthetic", "real", "real_robust")

# DC's `get_loops` (`utils.py` 275-294): ipc -> (outer_loop, inner_loop).
DC_LOOPS: dict[int, tuple[int, int]] = {
    1: (1, 1), 10: (10, 50), 20: (20, 25), 30: (30, 20), 40: (40, 15), 50: (50, 10)
}  # fmt: skip


def dc_loops(ipc: int) -> tuple[int, int]:
    """DC's (outer_loop, inner_loop) for `ipc`; a ValueError for an ipc DC does not define."""
    if ipc not in DC_LOOPS:
        raise ValueError(
            f"config.match.outer_loop/inner_loop = -1 take DC's get_loops(ipc), which is "
            f"defined for ipc in {sorted(DC_LOOPS)}, not config.ipc={ipc}; set both "
            "explicitly (e.g. --config.match.outer_loop=10 --config.match.inner_loop=50, "
            "DC's values for ipc 10)."
        )
    return DC_LOOPS[ipc]


@flax.struct.dataclass
class RealData:
    """The real training data a step samples from (a jit argument, never a closure)."""

    images: jax.Array  # (N, H, W, Ch) normalised.
    groups: groups_lib.Groups  # (C, K, Gmax) member indices and (C, K) sizes.
    # Parameters of the set's decoder (a generator's), passed like the data; None otherwise.
    decoder: Any = None
    # (N,) int32 classes of `images`: what `net_train='real'` trains the network on.
    labels: jax.Array | None = None


@flax.struct.dataclass
class State:
    """Everything a distillation run evolves; a checkpoint is exactly this pytree."""

    step: jax.Array  # () int32, number of iterations done.
    # (C, ipc, H, W, Ch) stored images in the dataset's normalised space ((C, ipc, Z) latents for
    # a generator; `jaxdd.synthetic.decode` makes the training images).
    images: jax.Array
    # (C, ipc) int32 hard labels, or (C, ipc, C) float32 logits of learned soft labels.
    labels: jax.Array
    # Optimiser state of the images, or of {'images', 'labels'} when the labels are learned.
    opt_state: optax.OptState


@flax.struct.dataclass
class NetPool:
    """FRePo's pool of online networks (`frepo.py` `proto_train_and_evaluate`): P networks
    trained on the synthetic set across iterations, each re-initialised after `max_updates`
    of its own updates; their ages start staggered so that the pool always spans them."""

    params: Any  # Every leaf stacked on a leading (P,) axis.
    opt_state: optax.OptState  # Likewise.
    age: jax.Array  # (P,) int32 updates each network has had since its initialisation.
    # (P, 2) float32 top-1 hits and images seen on each network's real training batches since
    # its initialisation or the last reset (IDM's accuracy meters, which weigh its regulariser:
    # `match.syn_ce_accuracy='running'`); None: not kept (other runs' checkpoints unchanged).
    meter: jax.Array | None = None


@flax.struct.dataclass
class PooledState(State):
    """The `State` of a run whose matched networks outlive their iteration (`match.net_pool`
    > 0): the pool is checkpointed with the set, so resume stays bit-identical. Runs without a
    pool keep the plain `State`, whose checkpoints stay readable."""

    pool: NetPool


@flax.struct.dataclass
class LearnedLrState(State):
    """The `State` of a risk-family run that learns its unroll's learning rate
    (`syn.learn_unroll_lr`, as Wang et al.'s dataset distillation learns its step size): the
    log of the rate, trained with the set, so that it stays positive. Other runs keep the
    plain `State`."""

    log_unroll_lr: jax.Array  # () float32.


def init_pool(
    init_net: Callable[[jax.Array], Any],
    optimizer: optax.GradientTransformation,
    *,
    key: jax.Array,
    size: int,
    max_updates: int,
    meter: bool = False,
) -> NetPool:
    """`size` fresh networks with ages staggered as FRePo's, `(max_updates // size) * i`;
    with `meter`, their accuracy meters too, empty."""
    params = jax.vmap(init_net)(jax.random.split(key, size))
    return NetPool(
        params=params,
        opt_state=jax.vmap(optimizer.init)(params),
        age=(max_updates // size) * jnp.arange(size, dtype=jnp.int32),
        meter=jnp.zeros((size, 2), jnp.float32) if meter else None,
    )


def running_accuracy(meter: jax.Array) -> jax.Array:
    """A (2,) meter's top-1 accuracy in percent, 0 while it is empty (`IDM_cifar10.py` 323:
    `net_acc.value()[0] if net_acc.n != 0 else 0`)."""
    return jnp.where(meter[1] > 0, 100.0 * meter[0] / jnp.maximum(meter[1], 1.0), 0.0)


def _pool_member(pool: NetPool, index: jax.Array) -> tuple[Any, optax.OptState]:
    return jax.tree.map(lambda x: x[index], (pool.params, pool.opt_state))


def _return_member(
    pool: NetPool,
    index: jax.Array,
    params: Any,
    opt_state: optax.OptState,
    fresh: tuple[Any, optax.OptState],
    max_updates: int,
    meter: jax.Array | None = None,
) -> NetPool:
    """The pool with network `index` replaced by its trained version (its meter by `meter`), or
    by `fresh` (an empty meter) once it has had `max_updates` updates."""
    age = pool.age[index] + 1
    reset = age >= max_updates
    member = jax.tree.map(lambda new, old: jnp.where(reset, new, old), fresh, (params, opt_state))
    stacked = jax.tree.map(
        lambda all_, one: all_.at[index].set(one), (pool.params, pool.opt_state), member
    )
    meters = pool.meter
    if meters is not None:
        meters = meters.at[index].set(jnp.where(reset, 0.0, meter))
    return NetPool(
        params=stacked[0],
        opt_state=stacked[1],
        age=pool.age.at[index].set(jnp.where(reset, 0, age)),
        meter=meters,
    )


def learned(labels: jax.Array) -> bool:
    """Whether `labels` are learned (float logits) rather than hard class indices."""
    return jnp.issubdtype(labels.dtype, jnp.floating)


def label_targets(labels: jax.Array) -> jax.Array:
    """What the networks train on: hard labels as they are, learned logits as softmax
    probabilities `(C, ipc, C)`."""
    return jax.nn.softmax(labels, axis=-1) if learned(labels) else labels


def soft_label_logits(labels: jax.Array, num_classes: int, smoothing: float = 0.1) -> jax.Array:
    """Initial logits of learned labels: the log of `labels` one-hot, smoothed by `smoothing`
    (0.9 + 0.01 on the class at C = 10), so the softmax starts near the hard labels with a
    gradient that is not vanishing (a one-hot limit would saturate it)."""
    target = jax.nn.one_hot(labels, num_classes) * (1 - smoothing) + smoothing / num_classes
    return jnp.log(target).astype(jnp.float32)


def _trained(images: jax.Array, labels: jax.Array, log_lr: jax.Array | None = None) -> Any:
    """The pytree the synthetic optimiser updates: the images alone, or {'images'} with the
    learned labels ('labels') and the learned log unroll lr ('log_unroll_lr') where learned."""
    if not learned(labels) and log_lr is None:
        return images
    trained = {"images": images}
    if learned(labels):
        trained["labels"] = labels
    if log_lr is not None:
        trained["log_unroll_lr"] = log_lr
    return trained


def _untrained(
    trained: Any, labels: jax.Array, log_lr: jax.Array | None = None
) -> tuple[jax.Array, jax.Array, jax.Array | None]:
    """`_trained`'s inverse: (images, labels, log_lr) of the optimised pytree (`labels` and
    `log_lr` the state's: whether they are learned)."""
    if not learned(labels) and log_lr is None:  # The stored set alone (a dict for a learned G).
        return trained, labels, log_lr
    return trained["images"], trained.get("labels", labels), trained.get("log_unroll_lr")


def init_state(
    *,
    images: jax.Array,
    labels: jax.Array,
    syn_optimizer: optax.GradientTransformation,
    pool: NetPool | None = None,
    unroll_lr: float | None = None,
) -> State:
    """The step-0 `State`: the synthetic set and a fresh optimiser state (`labels` float: the
    logits of learned labels, `soft_label_logits`); a `PooledState` when given a `pool`, a
    `LearnedLrState` starting at `unroll_lr` when given one."""
    if pool is not None and unroll_lr is not None:
        raise ValueError(
            "A learned unroll lr is kept for unrolls from a fresh network: pass no pool with it."
        )
    log_lr = None if unroll_lr is None else jnp.log(jnp.asarray(unroll_lr, jnp.float32))
    fields = dict(
        step=jnp.zeros((), jnp.int32),
        images=images,
        labels=labels,
        opt_state=syn_optimizer.init(_trained(images, labels, log_lr)),
    )
    if pool is not None:
        return PooledState(**fields, pool=pool)
    return State(**fields) if log_lr is None else LearnedLrState(**fields, log_unroll_lr=log_lr)


def _train_network(
    params: Any,
    opt_state: optax.OptState,
    images: jax.Array,
    labels: jax.Array,
    *,
    key: jax.Array,
    num_epochs: ArrayLike,
    apply_fn: matching.ApplyFn,
    optimizer: optax.GradientTransformation,
    augment_fn: matching.AugmentFn,
    batch_size: int,
    num_data: int = 0,
    cutmix_probability: float = 0.0,
) -> tuple[Any, optax.OptState, jax.Array]:
    """`num_epochs` epochs of the network on `images` (per-image augmentation, mean CE); the
    trained parameters, their optimiser state and a (2,) float32 meter: the top-1 predictions
    on the training batches that matched their (hard, or most probable) label, and the images
    seen, each counted before its step (IDM's `ClassErrorMeter` on its training batches).

    DC's inner loop on the synthetic set (`num_data` 0): each epoch shuffles the N images into
    `ceil(N / batch_size)` equal minibatches (DC's DataLoader with `batch_train`; a remainder
    of fewer images than batches sits the epoch out); with N <= batch_size, as at IPC <= 25 on
    10 classes, one full batch per epoch, as DC.

    IDC's network update on the real training set (`num_data` > 0,
    `snu-mllab/Efficient-Dataset-Condensation` `condense.py` 532-542, `train.py` `train_epoch`
    180-247): each epoch is `ceil(num_data / batch_size)` minibatches of `batch_size` images
    drawn without replacement (IDC stops the epoch once it has seen `n_data` images), mixed by
    CutMix with probability `cutmix_probability` per batch (IDC's `mixup_net='cut'`), the loss
    mixed as CutMix mixes it (`retrain.cutmix_cross_entropy`).

    `num_epochs` may be traced (DC skips the training after an iteration's last update).
    """
    num_examples = images.shape[0]
    if num_data:
        num_batches, per_batch = -(-num_data // batch_size), batch_size
        if num_batches * per_batch > num_examples:
            raise ValueError(
                f"net_train='real' draws {num_batches} x {per_batch} real images per epoch "
                f"(match.net_data={num_data}, match.inner_batch={batch_size}) from "
                f"{num_examples}: lower match.net_data."
            )
    else:
        num_batches = -(-num_examples // batch_size)
        per_batch = num_examples // num_batches

    def loss_fn(params, x, y, y_mixed, ratio):
        logits = apply_fn(params, x)[0]
        return retrain.cutmix_cross_entropy(logits, y, y_mixed, ratio), logits

    def batch_step(carry, inputs):
        params, opt_state, meter = carry
        index, step_key = inputs
        x, y = augment_fn(images[index], step_key), labels[index]
        y_mixed, ratio = None, None
        if cutmix_probability > 0:
            mix_key = jax.random.fold_in(step_key, 1)
            x, permutation, ratio = retrain.cutmix(x, mix_key, probability=cutmix_probability)
            y_mixed = y[permutation]
        grads, logits = jax.grad(loss_fn, has_aux=True)(params, x, y, y_mixed, ratio)
        hard = y if y.ndim == 1 else jnp.argmax(y, axis=-1)
        correct = jnp.sum(jnp.argmax(logits, axis=-1) == hard).astype(jnp.float32)
        meter = meter + jnp.stack([correct, jnp.float32(y.shape[0])])
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state, meter), None

    def epoch(i, carry):
        epoch_key = jax.random.fold_in(key, i)
        perm_key, aug_key = jax.random.split(epoch_key)
        if num_batches == 1 and not num_data:  # One full batch: its order changes nothing.
            batches = jnp.arange(num_examples)[None]
        else:
            perm = jax.random.permutation(perm_key, num_examples)
            batches = perm[: num_batches * per_batch].reshape(num_batches, per_batch)
        keys = jax.random.split(aug_key, num_batches)
        return jax.lax.scan(batch_step, carry, (batches, keys))[0]

    return jax.lax.fori_loop(0, num_epochs, epoch, (params, opt_state, jnp.zeros(2, jnp.float32)))


def robust_network_loss(
    apply_fn: matching.ApplyFn,
    params: Any,
    images: jax.Array,
    labels: jax.Array,
    cells: jax.Array,
    *,
    alpha: float,
) -> jax.Array:
    """The reference mode's network loss on a real pool: mean CE + mean and max over the cells
    of the cell's CVaR_alpha of its per-image cross-entropies (upper tail, with gradient).

    Args:
      apply_fn: network apply. params: its parameters.
      images: (C, B, H, W, Ch) each class's pool. labels: (C,) their classes.
      cells: (C, K, B) bool, cell k of class c holds pool image b; every cell non-empty.
      alpha: the cells' CVaR tail mass.
    """
    num_classes, size = images.shape[:2]
    logits, _ = apply_fn(params, images.reshape(num_classes * size, *images.shape[2:]))
    per_image = models.cross_entropy(logits, jnp.repeat(labels, size)).reshape(num_classes, size)
    weights = cells / jnp.sum(cells, axis=-1, keepdims=True)
    cell_cvar = jax.vmap(
        jax.vmap(lambda w, losses: risk.cvar(losses, alpha, weights=w), in_axes=(0, None))
    )(weights, per_image)
    return jnp.mean(per_image) + jnp.mean(cell_cvar) + jnp.max(cell_cvar)


def _train_network_robust(
    params: Any,
    opt_state: optax.OptState,
    images: jax.Array,
    labels: jax.Array,
    cells: jax.Array,
    *,
    key: jax.Array,
    num_steps: ArrayLike,
    apply_fn: matching.ApplyFn,
    optimizer: optax.GradientTransformation,
    augment_fn: matching.AugmentFn,
    alpha: float,
) -> tuple[Any, optax.OptState]:
    """`num_steps` full-pool steps of `robust_network_loss` (per-image augmentation)."""
    grad_fn = jax.grad(functools.partial(robust_network_loss, apply_fn), argnums=0)
    shape = images.shape

    def body(i, carry):
        params, opt_state = carry
        flat = augment_fn(images.reshape(-1, *shape[2:]), jax.random.fold_in(key, i))
        grads = grad_fn(params, flat.reshape(shape), labels, cells, alpha=alpha)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    return jax.lax.fori_loop(0, num_steps, body, (params, opt_state))


def robust_objective(
    images: Any,
    *,
    losses_fn: Callable[[jax.Array], jax.Array],
    risk_name: str,
    alpha: float,
) -> tuple[jax.Array, jax.Array]:
    """R(S) = C * risk of the (C, K) group losses of the synthetic set `images` (the images,
    or {'images', 'labels'} where the labels are learned: whatever `losses_fn` takes).

    The factor C (the number of classes) puts every risk on DC's scale: DC sums its per-class
    matching distances (`main.py` 178-199), and C * mean over C groups is that sum. For any
    risk the weights on the group losses sum to C (mean: C / (C K) each; CVaR: C / (alpha C K)
    on the tail groups; max: C on the worst), so the gradient has the size DC's image learning
    rate was tuned for whatever the risk or K (`mean+max` weighs 2C).

    Returns:
      () the objective, and (C, K) the group losses (as auxiliary output for `value_and_grad`).
    """
    group_losses = losses_fn(images)
    value = group_losses.shape[0] * risk.reduce(risk_name, group_losses.reshape(-1), alpha=alpha)
    return value, group_losses


def subsample_decoded(
    images: jax.Array, labels: jax.Array, max_size: int, key: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """IDC's cap on the decoded images each class matches per update (`batch_syn_max`, 128;
    `snu-mllab/Efficient-Dataset-Condensation` `condense.py` 183-192 `sample` and 94-100
    `subsample`): per class, `max_size` of its n decoded images drawn without replacement
    (`key`) when n > max_size, else all. images: (C, n, ...); labels: (C, n) or (C, n, C)."""
    num = images.shape[1]
    if not 0 < max_size < num:
        return images, labels
    keys = jax.random.split(key, images.shape[0])
    index = jax.vmap(lambda k: jax.random.permutation(k, num)[:max_size])(keys)  # (C, max)

    def take(x):
        return jnp.take_along_axis(x, index.reshape(*index.shape, *(1,) * (x.ndim - 2)), axis=1)

    return take(images), take(labels)


def _all_finite(tree: Any) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def _update_images(
    images: jax.Array,
    labels: jax.Array,
    log_lr: jax.Array | None,
    opt_state: optax.OptState,
    net_params: Any,
    *,
    sample_key: jax.Array,
    loss_key: jax.Array,
    real: RealData,
    groups: groups_lib.Groups,
    losses_fn: Callable[..., jax.Array],
    syn_optimizer: optax.GradientTransformation,
    risk_name: str,
    alpha: float,
    num_real: int,
    mesh: Mesh | None,
    decode_fn: Callable[[jax.Array, jax.Array], tuple[jax.Array, jax.Array]],
    max_decoded: int = 0,
    ce_accuracy: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array | None, optax.OptState, dict[str, jax.Array]]:
    """One update of the synthetic set through the network `net_params`: sample m real images
    per group of `groups` (`sample_key`), the (C, K) group losses (`loss_key`: augmentation) of
    the decoded set (at most `max_decoded` images per class, `subsample_decoded`), the
    objective, an optimiser step (of the labels and of the unroll's log learning rate `log_lr`
    too where they are learned); and its metrics. `ce_accuracy`: the network's running
    accuracy (%) that weighs IDM's regulariser (`matching.distribution`); None: per group."""
    group_losses_fn = functools.partial(
        sharding.compute_group_losses,
        losses_fn,
        net_params,
        images=real.images,
        index=groups_lib.sample_groups(groups, num_real, key=sample_key),
        key=loss_key,
        mesh=mesh,
        ce_accuracy=ce_accuracy,
    )

    def losses(trained):
        # The stored set is what is learned; the losses see the images it decodes to.
        stored, stored_labels, stored_lr = _untrained(trained, labels, log_lr)
        decoded, targets = decode_fn(stored, label_targets(stored_labels))
        decoded, targets = subsample_decoded(
            decoded, targets, max_decoded, jax.random.fold_in(loss_key, 1)
        )
        rate = {} if stored_lr is None else {"learning_rate": jnp.exp(stored_lr)}
        return group_losses_fn(decoded, labels=targets, **rate)

    objective = functools.partial(
        robust_objective, losses_fn=losses, risk_name=risk_name, alpha=alpha
    )
    trained = _trained(images, labels, log_lr)
    (value, group_losses), grads = jax.value_and_grad(objective, has_aux=True)(trained)
    updates, opt_state = syn_optimizer.update(grads, opt_state, trained)
    trained = optax.apply_updates(trained, updates)
    images, labels, log_lr = _untrained(trained, labels, log_lr)
    flat = group_losses.reshape(-1)
    metrics = {
        "loss": value,
        "group_loss_mean": risk.mean(flat),
        "group_loss_cvar": risk.cvar(flat, alpha),
        "group_loss_max": risk.worst(flat),
        "grad_norm": optax.tree_utils.tree_norm(grads),
        # The run loop stops on a non-finite loss or synthetic set, keeping the last checkpoint.
        "finite": jnp.isfinite(value) & _all_finite(images),
        "group_losses": group_losses,
    }
    if log_lr is not None:
        metrics["unroll_lr"] = jnp.exp(log_lr)
        metrics["finite"] &= jnp.isfinite(log_lr)
    return images, labels, log_lr, opt_state, metrics


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
    net_augment_fn: matching.AugmentFn,
    risk_name: str,
    alpha: float,
    num_real: int,
    outer_loop: int,
    inner_loop: int,
    inner_batch: int,
    mesh: Mesh | None = None,
    assign: str = "kmeans",
    pool_size: int = 256,
    net_train: str = "synthetic",
    decode_fn: DecodeFn = identity_decode,
    pool_max_updates: int = 0,
    max_decoded: int = 0,
    net_data: int = 500,
    net_cutmix: float = 0.5,
    pixel_range: tuple[ArrayLike, ArrayLike] | None = None,
    meter_reset: int = 0,
) -> tuple[State, dict[str, jax.Array]]:
    """One DC iteration; pure, so `fold_in(run_key, step)` keys make runs reproducible.

    Args:
      state: current `State`. key: this iteration's PRNG key. real: the real training data.
      losses_fn: a `matching.FAMILIES` entry with its own hyperparameters bound.
      init_net: key -> fresh network parameters. apply_fn: network apply.
      syn_optimizer / net_optimizer: the images' and the matched network's optimisers.
      net_augment_fn: augmentation of the network's training batches (per image, as DC).
      risk_name / alpha: reduction of the (C, K) group losses (`risk.RISKS`).
      num_real: m, real samples drawn per group for each update.
      outer_loop / inner_loop / inner_batch: DC's schedule (module docstring).
      mesh: split the groups' losses over this mesh's devices (`sharding.compute_group_losses`);
        None: one device. The state and `real` should be replicated on it
        (`sharding.replicate`).
      assign: 'kmeans' (the groups of `real`) or 'voronoi' (`real.groups` are whole classes,
        `groups.class_groups`; each update's groups are the Voronoi cells of the synthetic
        images among `pool_size` real images per class, in the matched network's embedding).
      net_train: 'synthetic' (DC), 'real' (IDC: each inner epoch, `net_data` random real
        images of `real.labels`' classes in minibatches of `inner_batch`, with CutMix at
        probability `net_cutmix`; `_train_network`) or 'real_robust' (the network trains
        on the update's real pool with `robust_network_loss`, one full-pool step per inner
        epoch; needs 'voronoi').
      decode_fn: stored set -> training images (`DecodeFn`); the state holds the stored set,
        gradients reach it through the decoding, and the matching, the Voronoi cells and the
        network's training see the decoded images.
      pool_max_updates: with a `PooledState`, the matched network is a member of its pool drawn
        uniformly (FRePo) instead of a fresh one; it trains `inner_loop` epochs after every
        update, the last included, goes back to the pool, and is re-initialised once it has
        had this many updates (FRePo's `max_online_updates`).
      max_decoded: each update matches at most this many decoded images per class, drawn
        afresh (IDC's `batch_syn_max`, `subsample_decoded`); 0: all. The network still trains
        on the whole decoded set.
      pixel_range: (low, high), per channel in the normalised space (`build.pixel_range`): the
        stored images are clipped to it before the iteration's first update, as IDC clamps its
        set to [0, 1] pixels once per iteration (`condense.py` 521); None: never clipped.
      meter_reset: with a pool that keeps accuracy meters (`NetPool.meter`), every meter is
        emptied before iterations meter_reset, 2 * meter_reset, ... (IDM resets them after
        each in-loop evaluation, every `eval_interval` = 100 iterations); 0: never. A pool's
        meters weigh IDM's regulariser by the matched network's running accuracy, and its
        training adds the hits on its real batches to them.

    Returns:
      The new state and scalar metrics averaged over the iteration's updates (plus the
      (C, K) `group_losses`, averaged too).
    """
    if assign not in groups_lib.ASSIGNMENTS or net_train not in NET_TRAINING:
        raise ValueError(
            f"assign={assign!r} / net_train={net_train!r}: expected one of "
            f"{groups_lib.ASSIGNMENTS} / {NET_TRAINING}."
        )
    if net_train == "real_robust" and assign != "voronoi":
        raise ValueError(
            "net_train='real_robust' trains on the Voronoi cells: use assign='voronoi'."
        )
    if net_train == "real" and real.labels is None:
        raise ValueError(
            "net_train='real' trains the network on the real images' classes: build "
            "RealData(..., labels=<(N,) int classes>)."
        )
    pool = state.pool if isinstance(state, PooledState) else None
    init_key, loop_key = jax.random.split(key)
    if pool is None:
        net_params = init_net(init_key)
        net_opt_state = net_optimizer.init(net_params)
    else:
        member = jax.random.randint(init_key, (), 0, pool.age.shape[0])
        net_params, net_opt_state = _pool_member(pool, member)
    metered = pool is not None and pool.meter is not None
    if metered and meter_reset:
        due = (state.step > 0) & (state.step % meter_reset == 0)
        pool = pool.replace(meter=jnp.where(due, 0.0, pool.meter))
    meter = pool.meter[member] if metered else jnp.zeros(2, jnp.float32)
    num_classes = state.labels.shape[0]
    decode = lambda stored, labels: decode_fn(stored, labels, real.decoder)
    update_images = functools.partial(
        _update_images,
        real=real,
        losses_fn=losses_fn,
        syn_optimizer=syn_optimizer,
        risk_name=risk_name,
        alpha=alpha,
        num_real=num_real,
        mesh=mesh,
        decode_fn=decode,
        max_decoded=max_decoded,
    )

    def update(carry, inputs):
        images, labels, log_lr, opt_state, net_params, net_opt_state, meter = carry
        index, update_key = inputs
        sample_key, loss_key, train_key = jax.random.split(update_key, 3)
        groups, cells, real_pool = real.groups, None, None
        if assign == "voronoi":
            pool_key = jax.random.fold_in(update_key, 3)  # K-means runs keep their keys.
            real_pool = groups_lib.sample_groups(real.groups, pool_size, key=pool_key)[:, 0]
            groups, cells = groups_lib.voronoi_groups(
                lambda x: apply_fn(net_params, x)[1],
                decode(images, labels)[0],
                real.images,
                real_pool,
            )
        images, labels, log_lr, opt_state, metrics = update_images(
            images,
            labels,
            log_lr,
            opt_state,
            net_params,
            groups=groups,
            sample_key=sample_key,
            loss_key=loss_key,
            ce_accuracy=running_accuracy(meter) if metered else None,
        )
        # DC trains the network after every update of the iteration but the last; a pool's
        # network outlives the iteration and trains after the last one too. A schedule in
        # which it never trains (no epochs, or one update and no pool: DM, the risk family, DC
        # at IPC 1) leaves the training out of the program instead of compiling it for no trip.
        if inner_loop == 0 or (outer_loop == 1 and pool is None):
            return (images, labels, log_lr, opt_state, net_params, net_opt_state, meter), metrics
        last = (index == outer_loop - 1) & (pool is None)
        num_epochs = jnp.where(last, 0, inner_loop)
        if net_train == "real_robust":
            net_params, net_opt_state = _train_network_robust(
                net_params,
                net_opt_state,
                real.images[real_pool],
                jnp.arange(num_classes),
                cells,
                key=train_key,
                num_steps=num_epochs,
                apply_fn=apply_fn,
                optimizer=net_optimizer,
                augment_fn=net_augment_fn,
                alpha=alpha,
            )
        else:
            if net_train == "real":  # IDC's: random real images, with CutMix.
                train_images, train_labels = real.images, real.labels
                num_data, cutmix = net_data, net_cutmix
            else:  # DC's: the (detached) decoded synthetic set, whole.
                decoded, targets = jax.lax.stop_gradient(decode(images, label_targets(labels)))
                train_images = decoded.reshape(-1, *decoded.shape[2:])
                train_labels = targets.reshape(-1, *targets.shape[2:])
                num_data, cutmix = 0, 0.0
            net_params, net_opt_state, hits = _train_network(
                net_params,
                net_opt_state,
                train_images,
                train_labels,
                key=train_key,
                num_epochs=num_epochs,
                apply_fn=apply_fn,
                optimizer=net_optimizer,
                augment_fn=net_augment_fn,
                batch_size=inner_batch,
                num_data=num_data,
                cutmix_probability=cutmix,
            )
            meter = meter + hits
        return (images, labels, log_lr, opt_state, net_params, net_opt_state, meter), metrics

    log_lr = state.log_unroll_lr if isinstance(state, LearnedLrState) else None
    images = state.images if pixel_range is None else jnp.clip(state.images, *pixel_range)
    carry = (images, state.labels, log_lr, state.opt_state, net_params, net_opt_state, meter)
    inputs = (jnp.arange(outer_loop), jax.random.split(loop_key, outer_loop))
    carry, per_update = jax.lax.scan(update, carry, inputs)
    images, labels, log_lr, opt_state, net_params, net_opt_state, meter = carry
    metrics = {
        name: jnp.all(value, axis=0) if name == "finite" else jnp.mean(value, axis=0)
        for name, value in per_update.items()
    }
    state = state.replace(step=state.step + 1, images=images, labels=labels, opt_state=opt_state)
    if log_lr is not None:
        state = state.replace(log_unroll_lr=log_lr)
    if pool is not None:
        fresh = init_net(jax.random.fold_in(init_key, 1))
        fresh = (fresh, net_optimizer.init(fresh))
        state = state.replace(
            pool=_return_member(
                pool, member, net_params, net_opt_state, fresh, pool_max_updates, meter
            )
        )
    return state, metrics


def synthetic_arrays(
    state: State, decode_fn: DecodeFn = identity_decode, decoder: Any = None
) -> tuple[np.ndarray, np.ndarray]:
    """The training set the state decodes to (with the `decoder` parameters), as flat host
    arrays: images (C*n, H, W, Ch), labels (C*n,) or, learned, (C*n, C) probabilities (n = ipc
    for pixels)."""
    images, labels = decode_fn(state.images, label_targets(state.labels), decoder)
    images = np.asarray(images)  # Replicated arrays read on every host, too.
    labels = np.asarray(labels)
    return images.reshape(-1, *images.shape[2:]), labels.reshape(-1, *labels.shape[2:])
