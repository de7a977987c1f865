"""Retraining: trains networks from scratch on an image set and measures their predictions.

This is SPEC's evaluation protocol. A set of images (a synthetic set, a coreset or real data)
is judged by training `M` freshly initialised networks on it and testing them:

- `train_models`: SGD with momentum 0.9, weight decay 5e-4, learning rate 0.01 decayed x0.1 at
  half of the total steps, minibatches of 256 drawn by a per-epoch permutation, and DSA
  augmentation with per-image parameters. Other published protocols are options: IDC's
  (`lr_schedule='idc'`, CutMix) and FRePo's (`optimizer='adam'`, `loss='mse'`,
  `lr_schedule='frepo'`; see `train_models`). All `M` networks train in ONE compiled program:
  mapped over their keys (see below), `jax.lax.fori_loop` over epochs and `jax.lax.scan` over
  steps.
- `predict`, `accuracy`, `group_accuracy`: predictions of every network and accuracies, overall
  and per group (subgroup robustness lives in `jaxdd.robustness`).

How the `M` networks are mapped (`vectorize`): on GPU and TPU `jax.vmap` runs them side by side;
on CPU `jax.lax.map` runs them one after another, because XLA:CPU lowers convolutions vmapped over
parameters to grouped convolutions, which are slower than the same convolutions run in turn
(2-core Xeon, jax 0.10.2, Fashion-MNIST's ConvNet, 3 networks, 30 epochs with DSA on IPC 10:
41.4 s vmapped, 31.5 s mapped; predicting 10,000 test images: 26.2 and 21.7 s; digits 8x8:
within 0.3 s either way; `benchmarks/results/step_time_eval.md`). Either way network `i`
depends only on `keys[i]`.

Every function here is pure: the images and labels are arguments of the compiled programs (never
constants closed over), the hyperparameters are never mutated (the reference code silently
changes the learning rate in its evaluation), and all randomness comes from the keys.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike

from jaxdd import augment as augment_lib
from jaxdd import models, xla

__all__ = [
    "LOSSES",
    "LR_SCHEDULES",
    "OPTIMIZERS",
    "accuracy",
    "create_optimizer",
    "cutmix",
    "cutmix_cross_entropy",
    "cutmix_loss",
    "group_accuracy",
    "learning_rate_schedule",
    "mse_to_centred",
    "predict",
    "steps_per_epoch",
    "train_models",
    "vectorize_by_default",
]

# The learning rate is multiplied by this once half of the steps are done (DC/DSA protocol).
LR_DECAY = 0.1
# `lr_schedule`: 'dc' (DC/DSA/DM: x0.1 after half of the steps) | 'idc' (IDC's evaluation,
# snu-mllab/Efficient-Dataset-Condensation train.py 104-105: MultiStepLR x0.2 after epochs
# 2E // 3 and 5E // 6).
# 'frepo' (FRePo's evaluation, yongchao97/FRePo script/eval.py 221-225): linear warm-up from 0
# over FREPO_WARMUP_STEPS steps, then cosine decay to FREPO_FINAL_SCALE x over the rest.
LR_SCHEDULES = ("dc", "idc", "frepo")
IDC_LR_DECAY = 0.2
FREPO_WARMUP_STEPS = 500
FREPO_FINAL_SCALE = 0.01
# `optimizer`: 'sgd' (DC/DSA/DM/IDC: PyTorch's SGD with momentum) | 'adam' (FRePo's
# evaluation, lib/training/utils.py 293-306: optax.adam, no weight decay of its own).
OPTIMIZERS = ("sgd", "adam")
# `loss`: 'ce' (softmax cross-entropy) | 'mse' (FRePo's `mean_squared_loss`, lib/training/
# metrics.py 47-55, on centred targets, script/eval.py 193-194: see `mse_to_centred`).
LOSSES = ("ce", "mse")


def vectorize_by_default() -> bool:
    """Whether `train_models` and `predict` vmap over the networks when `vectorize` is None:
    everywhere but on CPU (see the module docstring)."""
    return jax.default_backend() != "cpu"


def _vectorize(vectorize: bool | None) -> bool:
    """The `vectorize` argument of `train_models` / `predict`, None resolved."""
    return vectorize_by_default() if vectorize is None else bool(vectorize)


def _map_models(fun, stacked: Any, vectorize: bool):
    """`fun` applied to each network's slice of `stacked` (leading axis): `jax.vmap` if
    `vectorize`, else `jax.lax.map` (one network at a time)."""
    return jax.vmap(fun)(stacked) if vectorize else jax.lax.map(fun, stacked)


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """Minibatches per epoch: `ceil(N / min(batch_size, N))`."""
    return math.ceil(num_examples / min(batch_size, num_examples))


def learning_rate_schedule(
    learning_rate: ArrayLike, *, total_steps: int, schedule: str = "dc", epochs: int = 0
) -> optax.Schedule:
    """The evaluation's learning rate per step (`schedule` from `LR_SCHEDULES`).

    'dc': `learning_rate` for the first `ceil(total_steps / 2)` steps, then `0.1 *
    learning_rate`. Rounding the boundary up keeps a single-step run at the full learning rate;
    for an even `total_steps` the two halves are exactly equal.

    'idc': `epochs` epochs of `total_steps / epochs` steps; x0.2 from epoch `2 * epochs // 3`
    and again from `5 * epochs // 6` (0-based, PyTorch's MultiStepLR stepped once per epoch).

    'frepo': 0 rising linearly to `learning_rate` over the first `FREPO_WARMUP_STEPS` (500)
    steps, then a cosine decay to `FREPO_FINAL_SCALE` (0.01) x `learning_rate` over
    `max(total_steps - 500, 1)` steps, as FRePo's evaluation builds it (`script/eval.py`
    221-225); a run shorter than the warm-up never reaches `learning_rate`, as there.

    `learning_rate` may be traced.
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}.")
    if schedule == "dc":
        boundary = -(-total_steps // 2)
        return optax.piecewise_constant_schedule(learning_rate, {boundary: LR_DECAY})
    if schedule == "frepo":
        warmup = optax.linear_schedule(0.0, learning_rate, transition_steps=FREPO_WARMUP_STEPS)
        cosine = optax.cosine_decay_schedule(
            learning_rate,
            decay_steps=max(total_steps - FREPO_WARMUP_STEPS, 1),
            alpha=FREPO_FINAL_SCALE,
        )
        return optax.join_schedules([warmup, cosine], boundaries=[FREPO_WARMUP_STEPS])
    if schedule != "idc":
        raise ValueError(f"unknown lr_schedule {schedule!r}; expected one of {LR_SCHEDULES}.")
    if epochs < 1 or total_steps % epochs:
        raise ValueError(
            f"the 'idc' schedule needs the epochs ({epochs}) that divide total_steps "
            f"({total_steps}) into equal epochs."
        )
    per_epoch = total_steps // epochs
    scales: dict[int, float] = {}
    for milestone in (2 * epochs // 3, 5 * epochs // 6):
        step = milestone * per_epoch
        scales[step] = scales.get(step, 1.0) * IDC_LR_DECAY  # Equal milestones: both decays.
    return optax.piecewise_constant_schedule(learning_rate, scales)


def create_optimizer(
    *,
    learning_rate: ArrayLike,
    total_steps: int,
    momentum: ArrayLike = 0.9,
    weight_decay: ArrayLike = 5e-4,
    lr_schedule: str = "dc",
    epochs: int = 0,
    optimizer: str = "sgd",
) -> optax.GradientTransformation:
    """`optimizer` ('sgd': SGD with momentum, as PyTorch's `SGD` in DC/DSA; 'adam': Adam, as
    FRePo's evaluation, which ignores `momentum`) with L2 weight decay on every parameter.

    The decay is added to the gradient before the optimizer's statistics (PyTorch's coupled
    `weight_decay`; FRePo's Adam has none: pass 0), and the learning rate follows
    `learning_rate_schedule` (`lr_schedule`, `epochs`). Every hyperparameter may be a traced
    scalar, so sweeping them does not recompile.
    """
    schedule = learning_rate_schedule(
        learning_rate, total_steps=total_steps, schedule=lr_schedule, epochs=epochs
    )
    if optimizer == "sgd":
        update = optax.sgd(schedule, momentum=momentum)
    elif optimizer == "adam":
        update = optax.adam(schedule)
    else:
        raise ValueError(f"unknown optimizer {optimizer!r}; expected one of {OPTIMIZERS}.")
    return optax.chain(optax.add_decayed_weights(weight_decay), update)


def _epoch_batches(key: jax.Array, num_examples: int, batch_size: int) -> jax.Array:
    """(steps_per_epoch, batch_size) indices: one permutation, the last batch wrapped.

    The last partial batch is filled with the first indices of the same permutation, so every
    example is seen at least once per epoch and every batch has the same static shape (at most
    `batch_size - 1` examples are seen twice in an epoch).
    """
    steps = steps_per_epoch(num_examples, batch_size)
    perm = jax.random.permutation(key, num_examples)
    pad = steps * batch_size - num_examples  # < batch_size <= num_examples
    return jnp.concatenate([perm, perm[:pad]]).reshape(steps, batch_size)


def cutmix(
    images: jax.Array, key: jax.Array, *, probability: ArrayLike, beta: ArrayLike = 1.0
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """IDC's evaluation CutMix on one batch (snu-mllab/Efficient-Dataset-Condensation
    train.py 200-212, misc/utils.py `rand_bbox`).

    With probability `probability` (one draw per batch): lam ~ Beta(beta, beta), a box of
    `floor(H sqrt(1 - lam)) x floor(W sqrt(1 - lam))` centred at a uniform pixel (clipped to
    the image) is copied into every image from the image a random permutation of the batch
    puts there. The loss is then `ratio * CE(y) + (1 - ratio) * CE(y[permutation])`.

    Returns:
      (mixed images, permutation, ratio): ratio = 1 - box area / image area, 1 if no mix.
    """
    apply_key, lam_key, perm_key, centre_key = jax.random.split(key, 4)
    n, h, w = images.shape[:3]
    lam = jax.random.beta(lam_key, beta, beta)
    permutation = jax.random.permutation(perm_key, n)
    cut = jnp.sqrt(1.0 - lam)
    size = jnp.floor(jnp.array([h, w]) * cut).astype(jnp.int32)
    centre = jax.random.randint(centre_key, (2,), 0, jnp.array([h, w]))
    low = jnp.clip(centre - size // 2, 0, jnp.array([h, w]))
    high = jnp.clip(centre + size // 2, 0, jnp.array([h, w]))
    rows, cols = jnp.arange(h)[:, None], jnp.arange(w)[None, :]
    box = (rows >= low[0]) & (rows < high[0]) & (cols >= low[1]) & (cols < high[1])
    box = box & (jax.random.uniform(apply_key) < probability)
    mixed = jnp.where(box[None, :, :, None], images[permutation], images)
    ratio = 1.0 - jnp.mean(box.astype(jnp.float32))
    return mixed, permutation, ratio


def mse_to_centred(logits: ArrayLike, labels: ArrayLike) -> jax.Array:
    """Per-example FRePo regression loss `0.5 * sum_c (logits_c - target_c)^2` to the centred
    target: `one_hot(labels) - 1/C` for `(N,)` class indices, `labels - 1/C` for `(N, C)`
    probabilities (soft labels), so a hard label's target is FRePo's 1 - 1/C / -1/C
    (`script/eval.py` 193-194, `lib/training/metrics.py` 47-55).

    Returns:
      `(N,)` unreduced losses.
    """
    logits, labels = jnp.asarray(logits), jnp.asarray(labels)
    num_classes = logits.shape[-1]
    if labels.shape == logits.shape[:-1]:
        labels = jax.nn.one_hot(labels, num_classes, dtype=logits.dtype)
    elif labels.shape != logits.shape:
        raise ValueError(
            f"labels of shape {labels.shape} match neither logits {logits.shape} (soft labels) "
            f"nor {logits.shape[:-1]} (integer labels)."
        )
    return 0.5 * jnp.sum(jnp.square(logits - (labels - 1.0 / num_classes)), axis=-1)


# `loss` name -> per-example loss `(logits, labels) -> (N,)`.
_LOSS_FNS = {"ce": models.cross_entropy, "mse": mse_to_centred}


def cutmix_loss(
    logits: jax.Array,
    labels: jax.Array,
    mixed_labels: jax.Array | None,
    ratio: ArrayLike,
    *,
    loss: str = "ce",
) -> jax.Array:
    """Mean `loss` (`LOSSES`) of a batch `cutmix` mixed: `ratio * L(labels) + (1 - ratio) *
    L(mixed_labels)` (IDC `train.py` 211); the plain mean when `mixed_labels` is None."""
    if loss not in _LOSS_FNS:
        raise ValueError(f"unknown loss {loss!r}; expected one of {LOSSES}.")
    loss_fn = _LOSS_FNS[loss]
    value = jnp.mean(loss_fn(logits, labels))
    if mixed_labels is None:
        return value
    return ratio * value + (1.0 - ratio) * jnp.mean(loss_fn(logits, mixed_labels))


def cutmix_cross_entropy(
    logits: jax.Array, labels: jax.Array, mixed_labels: jax.Array | None, ratio: ArrayLike
) -> jax.Array:
    """`cutmix_loss` with cross-entropy: IDC's loss of a CutMix batch."""
    return cutmix_loss(logits, labels, mixed_labels, ratio, loss="ce")


def _train_one(
    model: nn.Module,
    images: jax.Array,
    labels: jax.Array,
    key: jax.Array,
    hparams: tuple[jax.Array, jax.Array, jax.Array],
    *,
    epochs: int,
    batch_size: int,
    strategy: str,
    augment_mode: str,
    lr_schedule: str,
    cutmix_probability: float,
    cutmix_beta: float,
    optimizer: str,
    loss: str,
) -> Any:
    """Trains one network from scratch; `key` decides its init, batches and augmentation."""
    learning_rate, momentum, weight_decay = hparams
    num_examples = images.shape[0]
    batch_size = min(batch_size, num_examples)
    num_steps = steps_per_epoch(num_examples, batch_size)
    tx = create_optimizer(
        learning_rate=learning_rate,
        total_steps=epochs * num_steps,
        momentum=momentum,
        weight_decay=weight_decay,
        lr_schedule=lr_schedule,
        epochs=epochs,
        optimizer=optimizer,
    )
    init_key, perm_key, aug_key = jax.random.split(key, 3)
    mix_key = jax.random.fold_in(key, 3)  # Not a 4th split: runs without CutMix stay as before.
    params = models.init_params(model, init_key, images.shape[1:])

    def loss_fn(params, x, y, y_mixed, ratio):
        logits, _ = model.apply({"params": params}, x)
        return cutmix_loss(logits, y, y_mixed, ratio, loss=loss)

    def step(carry, inputs):
        params, opt_state = carry
        global_step, batch = inputs
        x, y = images[batch], labels[batch]
        # fold_in(step): a run is a pure function of its key, step by step.
        x = augment_lib.augment(
            x,
            jax.random.fold_in(aug_key, global_step),
            strategy=strategy,
            mode=augment_mode,
            batch_shared=False,
        )
        y_mixed, ratio = None, None
        if cutmix_probability > 0:
            x, permutation, ratio = cutmix(
                x,
                jax.random.fold_in(mix_key, global_step),
                probability=cutmix_probability,
                beta=cutmix_beta,
            )
            y_mixed = y[permutation]
        grads = jax.grad(loss_fn)(params, x, y, y_mixed, ratio)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), None

    def epoch(i, carry):
        batches = _epoch_batches(jax.random.fold_in(perm_key, i), num_examples, batch_size)
        global_steps = i * num_steps + jnp.arange(num_steps)
        carry, _ = jax.lax.scan(step, carry, (global_steps, batches))
        return carry

    params, _ = jax.lax.fori_loop(0, epochs, epoch, (params, tx.init(params)))
    return params


@functools.partial(
    xla.jit,
    static_argnames=(
        "model",
        "epochs",
        "batch_size",
        "strategy",
        "vectorize",
        "augment_mode",
        "lr_schedule",
        "cutmix_probability",
        "cutmix_beta",
        "optimizer",
        "loss",
    ),  # fmt: skip
)
def _train_stacked(
    model: nn.Module,
    images: jax.Array,
    labels: jax.Array,
    keys: jax.Array,
    hparams: tuple[jax.Array, jax.Array, jax.Array],
    *,
    epochs: int,
    batch_size: int,
    strategy: str,
    vectorize: bool,
    augment_mode: str,
    lr_schedule: str,
    cutmix_probability: float,
    cutmix_beta: float,
    optimizer: str,
    loss: str,
) -> Any:
    # `_train_one` is looked up when tracing, so a test can wrap it to count traces.
    train = functools.partial(
        _train_one, model, epochs=epochs, batch_size=batch_size, strategy=strategy,
        augment_mode=augment_mode, lr_schedule=lr_schedule,
        cutmix_probability=cutmix_probability, cutmix_beta=cutmix_beta,
        optimizer=optimizer, loss=loss,
    )  # fmt: skip
    return _map_models(lambda key: train(images, labels, key, hparams), keys, vectorize)


def train_models(
    model: nn.Module,
    images: ArrayLike,
    labels: ArrayLike,
    *,
    keys: jax.Array,
    epochs: int,
    batch_size: int = 256,
    learning_rate: float = 0.01,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    augment: str = "none",
    augment_mode: str = "single",
    lr_schedule: str = "dc",
    cutmix_probability: float = 0.0,
    cutmix_beta: float = 1.0,
    optimizer: str = "sgd",
    loss: str = "ce",
    vectorize: bool | None = None,
) -> Any:
    """Trains `len(keys)` networks from scratch on `(images, labels)`, in one program.

    Each epoch draws a fresh permutation and splits it into `ceil(N / B)` minibatches of
    `B = min(batch_size, N)` images, the last one wrapped around to the start of the permutation
    (see `_epoch_batches`). The optimizer is `create_optimizer`; by default (`lr_schedule`
    'dc') the learning rate drops x0.1 after `ceil(total_steps / 2)` of the
    `epochs * ceil(N / B)` steps. With `augment` != 'none' every batch is augmented with
    parameters drawn per image, by default one DSA family per batch (`augment_mode` 'single').
    IDC's evaluation protocol is `augment_mode='idc'`, `lr_schedule='idc'` and
    `cutmix_probability=0.5` (`cutmix`), with its batch size 64, 1000 epochs and the DSA
    strategy without cutout (IDC drops it when it mixes: `argument.py` 436-452). FRePo's
    evaluation protocol (`yongchao97/FRePo` `script/eval.py`) is `optimizer='adam'`,
    `learning_rate=3e-4`, `weight_decay=0`, `loss='mse'`, `lr_schedule='frepo'`, batches of
    `min(N, 500)` and its step count (1000 at 10 images, 2000 at 100: with N <= 500 an epoch is
    one step), on its network (`jaxdd.build.EVAL_NETWORKS['frepo']`).

    Network `i` depends only on `keys[i]`: its init, batch order and augmentation come from it
    (`fold_in` per epoch and step), so it equals a run with `keys[i]` alone, and re-running with
    the same keys reproduces it. The program is compiled once per (model, shapes, epochs,
    batch size, strategy); new images, labels, keys or learning-rate / momentum / decay values of
    the same shapes reuse it.

    Args:
      model: a `jaxdd.models` network returning `(logits, embedding)`.
      images: `(N, H, W, C)` float images (normalised, as the test images will be).
      labels: `(N,)` int class indices, or `(N, num_classes)` float soft labels.
      keys: `(M,)` PRNG keys (or `(M, 2)` raw uint32 keys), one per network.
      epochs: training epochs, >= 1.
      batch_size: minibatch size, capped at N.
      learning_rate, momentum, weight_decay: SGD hyperparameters.
      augment: DSA strategy string (see `jaxdd.augment`), or 'none'.
      augment_mode: `jaxdd.augment.MODES`: how the strategy's families combine per batch.
      lr_schedule: `LR_SCHEDULES` (see `learning_rate_schedule`).
      cutmix_probability, cutmix_beta: IDC's CutMix per batch (`cutmix`); 0 = off.
      optimizer: `OPTIMIZERS` ('sgd' or 'adam', see `create_optimizer`).
      loss: `LOSSES`: 'ce' (cross-entropy) or 'mse' (`mse_to_centred`).
      vectorize: vmap over the networks (True) or train them in turn with `jax.lax.map`
        (False); None: `vectorize_by_default()`. Results agree to float rounding.

    Returns:
      The `params` of the `M` networks, stacked along a leading axis of size `M`.
    """
    images = jnp.asarray(images, jnp.float32)
    labels = jnp.asarray(labels)
    if images.ndim != 4:
        raise ValueError(f"images must be (N, H, W, C), got shape {images.shape}.")
    if labels.ndim not in (1, 2) or labels.shape[0] != images.shape[0]:
        raise ValueError(
            f"labels must be (N,) or (N, num_classes) with N = {images.shape[0]} images, got "
            f"shape {labels.shape}."
        )
    if images.shape[0] == 0:
        raise ValueError("train_models needs at least one image.")
    keys = jnp.asarray(keys)
    key_ndim = 1 if jnp.issubdtype(keys.dtype, jax.dtypes.prng_key) else 2
    if keys.ndim != key_ndim or keys.shape[0] == 0:
        raise ValueError(
            "keys must stack M >= 1 PRNG keys on a leading axis (e.g. "
            f"jax.random.split(key, M)); got {keys.dtype} of shape {keys.shape}."
        )
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {epochs} and {batch_size}.")
    augment_lib.parse_strategy(augment)  # Fail on a bad strategy before compiling.
    # An unknown augment_mode or lr_schedule fails while tracing, in `augment.augment` and
    # `learning_rate_schedule`, before anything compiles.
    if optimizer not in OPTIMIZERS or loss not in LOSSES:
        raise ValueError(
            f"optimizer must be one of {OPTIMIZERS} and loss one of {LOSSES}, got "
            f"{optimizer!r} and {loss!r}."
        )
    if not 0.0 <= cutmix_probability <= 1.0 or not cutmix_beta > 0:
        raise ValueError(
            f"cutmix_probability must lie in [0, 1] and cutmix_beta be > 0, got "
            f"{cutmix_probability} and {cutmix_beta}."
        )
    hparams = tuple(jnp.float32(v) for v in (learning_rate, momentum, weight_decay))
    return _train_stacked(
        model,
        images,
        labels,
        keys,
        hparams,
        epochs=epochs,
        batch_size=batch_size,
        strategy=augment,
        vectorize=_vectorize(vectorize),
        augment_mode=augment_mode,
        lr_schedule=lr_schedule,
        cutmix_probability=float(cutmix_probability),
        cutmix_beta=float(cutmix_beta),
        optimizer=optimizer,
        loss=loss,
    )


@functools.partial(xla.jit, static_argnames=("model", "batch_size", "vectorize"))
def _predict(
    model: nn.Module, params_stacked: Any, images: jax.Array, *, batch_size: int, vectorize: bool
):
    num_examples = images.shape[0]
    num_chunks = -(-num_examples // batch_size)
    pad = num_chunks * batch_size - num_examples
    chunks = jnp.pad(images, ((0, pad), (0, 0), (0, 0), (0, 0)))
    chunks = chunks.reshape(num_chunks, batch_size, *images.shape[1:])

    def classify(params, x):
        logits, _ = model.apply({"params": params}, x)
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)

    def chunk_predictions(x):
        return _map_models(lambda params: classify(params, x), params_stacked, vectorize)  # (M, B)

    # lax.map keeps one chunk's activations alive at a time: memory is bounded by batch_size.
    out = jax.lax.map(chunk_predictions, chunks)  # (num_chunks, M, B)
    return jnp.moveaxis(out, 0, 1).reshape(out.shape[1], -1)[:, :num_examples]


def predict(
    model: nn.Module,
    params_stacked: Any,
    images: ArrayLike,
    *,
    batch_size: int = 1024,
    vectorize: bool | None = None,
) -> jax.Array:
    """Predicted classes of every network on every image.

    Args:
      model: the network the parameters belong to.
      params_stacked: `params` of `M` networks stacked on a leading axis (`train_models`).
      images: `(N, H, W, C)` images, normalised like the training images.
      batch_size: images per forward pass (the last chunk is zero-padded); bounds memory.
      vectorize: as in `train_models`.

    Returns:
      `(M, N)` int32 argmax classes.
    """
    images = jnp.asarray(images, jnp.float32)
    if images.ndim != 4:
        raise ValueError(f"images must be (N, H, W, C), got shape {images.shape}.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    return _predict(
        model,
        params_stacked,
        images,
        batch_size=min(batch_size, max(images.shape[0], 1)),
        vectorize=_vectorize(vectorize),
    )


def _check_predictions(predictions: jax.Array, labels: jax.Array) -> None:
    if predictions.ndim != 2 or labels.shape != predictions.shape[1:]:
        raise ValueError(
            f"predictions must be (M, N) and labels (N,), got {predictions.shape} and "
            f"{labels.shape}."
        )


def accuracy(predictions: ArrayLike, labels: ArrayLike) -> jax.Array:
    """Fraction of correct predictions of each network.

    Args:
      predictions: `(M, N)` int predicted classes.
      labels: `(N,)` int true classes.

    Returns:
      `(M,)` float32 accuracies in [0, 1].
    """
    predictions, labels = jnp.asarray(predictions), jnp.asarray(labels)
    _check_predictions(predictions, labels)
    return jnp.mean(predictions == labels, axis=-1, dtype=jnp.float32)


def group_accuracy(
    predictions: ArrayLike, labels: ArrayLike, groups: ArrayLike, num_groups: int
) -> jax.Array:
    """Accuracy of each network on each group of examples.

    Correct counts and sizes are accumulated per group and divided once (as big_vision's
    evaluators do), so a group's accuracy is exact whatever its size.

    Args:
      predictions: `(M, N)` int predicted classes.
      labels: `(N,)` int true classes.
      groups: `(N,)` int group of each example in [0, num_groups); others are ignored.
      num_groups: G.

    Returns:
      `(M, G)` float32 accuracies in [0, 1]; NaN for a group with no examples.
    """
    predictions, labels, groups = map(jnp.asarray, (predictions, labels, groups))
    _check_predictions(predictions, labels)
    if groups.shape != labels.shape:
        raise ValueError(f"groups must have shape {labels.shape}, got {groups.shape}.")
    # Integer sums: exact on every backend (a float matmul may run in reduced precision).
    # segment_sum drops ids outside [0, num_groups).
    correct = (predictions == labels).astype(jnp.int32).T  # (N, M)
    correct = jax.ops.segment_sum(correct, groups, num_segments=num_groups).T  # (M, G)
    counts = jax.ops.segment_sum(jnp.ones_like(groups, jnp.int32), groups, num_groups)  # (G,)
    ratio = correct.astype(jnp.float32) / jnp.maximum(counts, 1).astype(jnp.float32)
    return jnp.where(counts > 0, ratio, jnp.nan)
