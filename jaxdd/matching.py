"""Per-group matching losses: the (C, K) array that the risk measure reduces.

SPEC's three families and FRePo's, each written for one (class, cluster) group and mapped
over all C*K groups, all with the same signature

    family(params, syn_images, *, labels, real, key, ...) -> (C, K) losses

where `syn_images` is `(C, ipc, H, W, Ch)` (the synthetic set, organised by class),
`labels` is `(C, ipc)` integer labels or `(C, ipc, C)` soft labels, and `real` is
`(C, K, m, H, W, Ch)`: m real samples of every group. Only `syn_images` is differentiated;
real-data terms are constants of the synthetic set.

- `gradient` (DC/DSA): layer-wise (1 - cosine) distance between the parameter gradient on the
  class-c synthetic images and on group (c, k)'s real batch, under one shared DSA draw.
- `distribution` (DM): squared distance between the mean embeddings of synthetic class c and of
  group (c, k) under a randomly initialised network.
- `risk` (unrolled): train the network on the synthetic set for T SGD steps inside the graph
  (rematerialised, O(sqrt(T)) memory), then the cross-entropy of the trained network on
  group (c, k).
- `krr` (FRePo): kernel ridge regression from the synthetic set's features to its centred
  labels, under a network drawn from an online-trained pool; the mean squared error of its
  prediction on group (c, k).

Mapping over groups goes through `jax.lax.map(..., batch_size=group_batch)`: `group_batch`
groups are vmapped together and the chunks run in sequence; `group_batch = 0` (the default)
vmaps all C*K groups at once. With `conv.SameConv`'s CPU kernels the vmapped kernel gradients
are batched GEMMs, and full vmap is the fastest on CPU (digits, ConvNet-128: 0.78 s per step
vs 1.33 s one group at a time); smaller values bound memory for large m or images. The value changes
speed and memory only, never results (up to float reassociation).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.typing import ArrayLike

from jaxdd import augment as augment_lib
from jaxdd import models

# (params, images) -> (logits, embedding): a flax `model.apply` with the variables dict built.
ApplyFn = Callable[[Any, jax.Array], tuple[jax.Array, jax.Array]]
# (images, key) -> images: the same key must give the same transform to any batch (siamese).
AugmentFn = Callable[[jax.Array, jax.Array], jax.Array]

_COSINE_EPS = 1e-6  # DC's epsilon in the cosine denominator.


def no_augment(images: jax.Array, key: jax.Array) -> jax.Array:
    """Identity augmentation (the signature of `siamese_augment`)."""
    del key
    return images


def siamese_augment(strategy: str, mode: str = "single") -> AugmentFn:
    """DSA with one parameter draw per call, shared by every batch augmented with that key
    (`augment.augment`'s `mode`: DSA's 'single' or IDC's 'idc')."""
    if not augment_lib.parse_strategy(strategy):
        return no_augment
    return functools.partial(augment_lib.augment, strategy=strategy, mode=mode, batch_shared=True)


def per_image_augment(strategy: str, mode: str = "single") -> AugmentFn:
    """DSA with parameters drawn per image (DC's `epoch` training the matched network)."""
    if not augment_lib.parse_strategy(strategy):
        return no_augment
    return functools.partial(augment_lib.augment, strategy=strategy, mode=mode, batch_shared=False)


def _cosine_rows(a: jax.Array, b: jax.Array) -> jax.Array:
    a = a.reshape(-1, a.shape[-1])
    b = b.reshape(-1, b.shape[-1])
    dot = jnp.sum(a * b, axis=0)
    norms = jnp.linalg.norm(a, axis=0) * jnp.linalg.norm(b, axis=0)
    return jnp.sum(1.0 - dot / (norms + _COSINE_EPS))


# Per-parameter distances (`gradient_distance`): DC's layer-wise cosine, IDC's l1 and mse
# (`condense.py` `dist`, 374-391: sums over every element of the difference).
_LEAF_DISTANCES: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    "dc": _cosine_rows,
    "l1": lambda a, b: jnp.sum(jnp.abs(a - b)),
    "mse": lambda a, b: jnp.sum(jnp.square(a - b)),
}
DISTANCES = tuple(_LEAF_DISTANCES)
# Which parameters' gradients are matched, by their number of axes: 'weights' (DC), every
# kernel, conv (kh, kw, in, out) and dense (in, out); 'conv' (IDC's `bias=False, fc=False`,
# `condense.py` 424-430), conv kernels only. Biases and norm scales (one axis) never are.
_MIN_AXES = {"weights": 2, "conv": 3}
DISTANCE_LAYERS = tuple(_MIN_AXES)


def gradient_distance(name: str = "dc", layers: str = "weights") -> Callable[[Any, Any], jax.Array]:
    """The distance between two gradient pytrees: the sum over the matched parameters
    (`layers`) of the per-parameter distance `name`.

    'dc' is DC's 'ours' (`utils.py` 218-246): each output unit of a parameter viewed as
    `(rest, out)` contributes 1 - cos between its columns. 'l1' and 'mse' are IDC's: the sum of
    |a - b| and of (a - b)^2 over the parameter. IDC matches l1 on Fashion-MNIST and MNIST at
    lr_img 1e-4 and mse on SVHN and CIFAR at 5e-3 (`misc/reproduce.py` 13-33), in [0, 1] pixel
    units: jaxdd's images are standardised, so the same step is `syn.lr` = lr_img / std^2.

    Raises ValueError (while tracing) when no parameter of the network is matched, e.g. 'conv'
    on an MLP: the objective would be a constant.
    """
    if name not in _LEAF_DISTANCES:
        raise ValueError(f"unknown gradient distance {name!r}; choose from {DISTANCES}.")
    if layers not in _MIN_AXES:
        raise ValueError(f"unknown matched layers {layers!r}; choose from {DISTANCE_LAYERS}.")
    leaf_distance, min_axes = _LEAF_DISTANCES[name], _MIN_AXES[layers]

    def distance(grads_a: Any, grads_b: Any) -> jax.Array:
        pairs = zip(jax.tree.leaves(grads_a), jax.tree.leaves(grads_b), strict=True)
        terms = [leaf_distance(a, b) for a, b in pairs if a.ndim >= min_axes]
        if not terms:
            raise ValueError(
                f"match.distance_layers={layers!r} matches no parameter of this network (it "
                f"matches parameters of >= {min_axes} axes); use 'weights'."
            )
        return sum(terms)

    return distance


def layerwise_cosine_distance(grads_a: Any, grads_b: Any) -> jax.Array:
    """DC's gradient distance: sum over layers and output units of (1 - cosine).

    Every parameter with two or more axes (conv kernels `(kh, kw, in, out)`, dense kernels
    `(in, out)`) is viewed as `(out, rest)`; each output unit contributes 1 - cos between its
    rows. One-axis parameters (biases, norm scales) are skipped, as in DC.

    Args:
      grads_a, grads_b: two gradient pytrees of the same structure.

    Returns:
      () the distance, >= 0.
    """
    return gradient_distance("dc", "weights")(grads_a, grads_b)


def mean_cross_entropy(apply_fn: ApplyFn, params: Any, images: jax.Array, labels: jax.Array):
    """Mean cross-entropy of the network on a batch (integer or soft labels)."""
    logits, _ = apply_fn(params, images)
    return jnp.mean(models.cross_entropy(logits, labels))


def _map_groups(fn: Callable, xs: Any, *, group_batch: int) -> Any:
    """`fn` over the leading axis of `xs`, `group_batch` at a time (see module docstring)."""
    num = jax.tree.leaves(xs)[0].shape[0]
    if group_batch <= 0 or group_batch >= num:
        return jax.vmap(fn)(xs)
    return jax.lax.map(fn, xs, batch_size=group_batch)


def _map_real_groups(fn: Callable, real: jax.Array, per_class: Any, *, group_batch: int) -> Any:
    """`fn((images, *per_class_values))` over all C*K real groups, `group_batch` at a time.

    `real` is (C, K, m, ...); `per_class` a tuple of arrays with a leading C axis, each
    repeated for the K groups of its class. Outputs come back shaped (C, K, ...).
    """
    num_classes, num_clusters = real.shape[:2]
    out = _map_groups(fn, _flat_groups(real, per_class), group_batch=group_batch)
    return jax.tree.map(lambda o: o.reshape(num_classes, num_clusters, *o.shape[1:]), out)


def _flat_groups(real: jax.Array, per_class: Any) -> tuple:
    """(C*K, m, ...) images and each `per_class` array repeated for the K groups of its class."""
    num_classes, num_clusters = real.shape[:2]
    return (
        real.reshape(num_classes * num_clusters, *real.shape[2:]),
        *(jnp.repeat(value, num_clusters, axis=0) for value in per_class),
    )


def gradient(
    params: Any,
    syn_images: jax.Array,
    *,
    labels: jax.Array,
    real: jax.Array,
    key: jax.Array,
    apply_fn: ApplyFn,
    augment_fn: AugmentFn = no_augment,
    group_batch: int = 0,
    distance: Callable[[Any, Any], jax.Array] = layerwise_cosine_distance,
) -> jax.Array:
    """DC/DSA gradient matching, one loss per group.

    For class c with DSA key k_c (shared by its synthetic batch and all its groups):
    L_{c,k} = distance(grad_theta CE(A(S_c; k_c)), grad_theta CE(A(R_{c,k}; k_c))), DC's
    layer-wise cosine distance by default (`gradient_distance` for IDC's).

    Args:
      params: network parameters theta (not differentiated through the real term).
      syn_images: (C, ipc, H, W, Ch). labels: (C, ipc) or (C, ipc, C).
      real: (C, K, m, H, W, Ch).
      key: PRNG key for the augmentation draws.
      apply_fn: network apply function. augment_fn: siamese augmentation.
      group_batch: groups vmapped together when computing the real gradients (0 = all);
        the synthetic gradients take classes of at most group_batch * m images at once.
      distance: the distance between two gradient pytrees (`gradient_distance`).

    Returns:
      (C, K) losses.
    """
    num_classes, num_clusters, m = real.shape[:3]
    grad_fn = jax.grad(functools.partial(mean_cross_entropy, apply_fn))
    class_keys = jax.random.split(key, num_classes)

    # Real gradients do not depend on the synthetic set: computed once per group, as constants.
    def real_group_grad(args):
        images, label, class_key = args
        return grad_fn(params, augment_fn(images, class_key), jnp.full((m,), label))

    real_grads = jax.lax.stop_gradient(
        _map_real_groups(
            real_group_grad, real, (jnp.arange(num_classes), class_keys), group_batch=group_batch
        )
    )

    def class_losses(args):
        images, labels, class_key, grads_c = args
        syn_grad = grad_fn(params, augment_fn(images, class_key), labels)
        return jax.vmap(lambda g: distance(syn_grad, g))(grads_c)

    # The synthetic side maps over classes, as many at once as hold at most the real side's
    # group_batch * m images: all classes in the shipped configs, whose loop-free program
    # compiled 2 s faster than two classes at a time (Fashion-MNIST, IPC 10) and used less
    # memory (SVHN IPC 10: 1.27 vs 1.92 GiB).
    ipc = syn_images.shape[1]
    return _map_groups(
        class_losses,
        (syn_images, labels, class_keys, real_grads),
        group_batch=max(1, group_batch * m // ipc) if group_batch > 0 else 0,
    )


def distribution(
    params: Any,
    syn_images: jax.Array,
    *,
    labels: jax.Array,
    real: jax.Array,
    key: jax.Array,
    apply_fn: ApplyFn,
    augment_fn: AugmentFn = no_augment,
    group_batch: int = 0,
    ce_weight: float = 0.0,
    ce_accuracy: jax.Array | None = None,
) -> jax.Array:
    """DM distribution matching, one loss per group: ||mean emb(A(S_c)) - mean emb(A(R_ck))||^2.

    `params` is a freshly initialised network (DM samples one per step) or a member of the
    step's pool (IDM's queue of networks trained on real data). The real groups' mean
    embeddings (constants) are computed `group_batch` groups at a time.

    With `ce_weight` > 0, IDM's class-aware regulariser (Zhao et al., CVPR 2023, `uitrbn/IDM`
    `IDM_cifar10.py` 318-327, `--syn_ce`): each group's loss gains
    ce_weight * acc_ck * CE(A(S_c)), the network's mean cross-entropy on its augmented class-c
    synthetic images, weighted by its accuracy on the group's augmented real images in percent
    (IDM's `ClassErrorMeter` scale, so IDM's `ce_weight` carries over). IDM weighs by the
    network's running accuracy on its real training batches over all classes: pass it as
    `ce_accuracy` (a () array, %; a pool's meter, `step.running_accuracy`) and every group's
    term is weighted by it. Without it, the group's own accuracy keeps every group's loss
    computable alone; but a fresh network's accuracy on one class is degenerate (0 on most
    classes and up to 100 % on the class it predicts for everything), where IDM's is ~10 %.

    Returns:
      (C, K) losses.
    """
    num_classes = real.shape[0]
    class_keys = jax.random.split(key, num_classes)

    def embed(images, class_key) -> tuple[jax.Array, jax.Array]:
        return apply_fn(params, augment_fn(images, class_key))

    if not ce_weight:
        del labels  # DM matches class-conditional embeddings; labels are implicit.

        def mean_embedding(args) -> jax.Array:
            return jnp.mean(embed(*args)[1], axis=0)

        real_means = jax.lax.stop_gradient(
            _map_real_groups(mean_embedding, real, (class_keys,), group_batch=group_batch)
        )
        syn_means = jax.vmap(mean_embedding)((syn_images, class_keys))
        return jnp.sum(jnp.square(real_means - syn_means[:, None]), axis=-1)

    def real_group(args) -> tuple[jax.Array, jax.Array]:
        images, class_key, label = args
        logits, features = embed(images, class_key)
        return jnp.mean(features, axis=0), 100.0 * jnp.mean(jnp.argmax(logits, -1) == label)

    real_means, real_accuracy = jax.lax.stop_gradient(
        _map_real_groups(
            real_group, real, (class_keys, jnp.arange(num_classes)), group_batch=group_batch
        )
    )

    def syn_class(args) -> tuple[jax.Array, jax.Array]:
        images, class_key, targets = args
        logits, features = embed(images, class_key)
        return jnp.mean(features, axis=0), jnp.mean(models.cross_entropy(logits, targets))

    syn_means, syn_ce = jax.vmap(syn_class)((syn_images, class_keys, labels))
    distance = jnp.sum(jnp.square(real_means - syn_means[:, None]), axis=-1)
    if ce_accuracy is not None:
        real_accuracy = jnp.broadcast_to(jax.lax.stop_gradient(ce_accuracy), distance.shape)
    return distance + ce_weight * real_accuracy * syn_ce[:, None]


REMATS = ("nested", "step", "none")
# The unrolled inner training's optimiser (`match.unroll_optimizer`): plain SGD, or Adam as
# RaT-BPTT's inner loop.
UNROLL_OPTIMIZERS = ("sgd", "adam")
# Adam's eps_root (optax: "needed for example when computing (meta-)gradients through Adam"):
# a parameter whose gradient is exactly 0 yet depends on the images (a conv bias before
# instance norm, which removes it; a weight after a ReLU unit dead on the whole set) has
# second moment 0 (or float noise), where sqrt's derivative is infinite: the
# backward pass then multiplies inf by 0 and the images' gradient turns NaN. Without it,
# RaT-BPTT's settings on digits (Adam 0.001 inner and outer, T = 40, window 10) made the set
# non-finite at iteration 24; with it the run trains on (tests/matching_test.py pins the case).
ADAM_EPS_ROOT = 1e-8


def remat_segment(num_steps: int) -> int:
    """The segment length of the nested remat of `num_steps` steps.

    The backward pass stores ceil(T / s) boundary carries plus the s carries of the segment it
    recomputes, fewest near s = sqrt(T). A length that divides T is preferred when it stores no
    more: a remainder is a second scan of the step in the program (digits risk step, T = 10,
    idle 2-core CPU, lower + compile: segments of 4 + a remainder of 2 took 19.7-20.4 s,
    segments of 5 14.5-15.3 s, the same 7 carries stored and the same step time).
    """
    stored = lambda s: -(-num_steps // s) + s
    best = max(1, int(np.ceil(np.sqrt(num_steps))))
    divisors = [s for s in range(1, num_steps + 1) if num_steps % s == 0]
    # Fewest carries stored; among those, no remainder, then the longer segment.
    return min([best, *divisors], key=lambda s: (stored(s), num_steps % s != 0, -s))


def _nested_remat_scan(body: Callable, carry: Any, xs: jax.Array, *, segment: int) -> Any:
    """`lax.scan(body, carry, xs)[0]` storing only segment-boundary carries for the backward.

    The steps run in segments of `segment`, each segment a `jax.checkpoint`ed inner scan of
    `jax.checkpoint`ed steps: the backward pass keeps the T / segment boundary carries, and
    recomputes one segment at a time (keeping its `segment` carries). With segment ~ sqrt(T)
    that is O(sqrt(T)) stored carries for one extra forward pass.
    """
    num_steps = xs.shape[0]
    step = jax.checkpoint(body)

    @jax.checkpoint
    def run_segment(carry, segment_xs):
        return jax.lax.scan(step, carry, segment_xs)[0], None

    whole = num_steps // segment * segment
    if whole:
        carry, _ = jax.lax.scan(run_segment, carry, xs[:whole].reshape(-1, segment, *xs.shape[1:]))
    if whole < num_steps:
        carry, _ = run_segment(carry, xs[whole:])
    return carry


def unrolled_training(
    params: Any,
    images: jax.Array,
    labels: jax.Array,
    *,
    key: jax.Array,
    apply_fn: ApplyFn,
    num_steps: int,
    learning_rate: ArrayLike,
    augment_fn: AugmentFn = no_augment,
    remat: str = "nested",
    unroll: int | bool = 1,
    window: int = 0,
    optimizer: str = "sgd",
) -> Any:
    """T full-batch SGD steps on (images, labels) inside the graph, differentiable in `images`.

    Truncated (`0 < window < T`, RaT-BPTT: Feng, Vedantam and Kempe, ICLR 2024,
    `fengyzpku/RaT-BPTT`): each call draws an unroll length N uniformly in [window, T] (from
    `key`), runs the first N - window steps without gradient and back-propagates through the
    last `window` only; the trained network is the one after N steps. `optimizer` 'adam' runs
    Adam (optax defaults, `learning_rate`) instead of SGD, its state carried through the
    unroll.

    `remat` sets what the backward pass stores (`REMATS`):
      - "nested" (default): segments of about sqrt(T) steps (`remat_segment`), each rematerialised
        (`_nested_remat_scan`): O(sqrt(T)) parameter iterates plus one step's activations,
        for a third forward pass per step.
      - "step": every step `jax.checkpoint`ed: the T parameter iterates plus one step's
        activations.
      - "none": every step's activations, O(T * activations).
    The compiled peak memory for T = 10..80 is in benchmarks/results/step_time.md.

    The loop is a rolled `lax.scan` (`unroll=1`): on the 2-core CPU (digits, ConvNet-128
    depth 2, C=10, K=4, m=32, ipc 10) it matched or beat the fully unrolled loop
    (`unroll=True`) at run time, 1.85 s vs 1.97 s per gradient for T=10 and 3.15 s vs 3.46 s
    for T=20, and compiled 2-5x faster (6.6 s vs 31.5 s at T=20).

    Returns:
      The trained parameters.
    """
    if remat not in REMATS:
        raise ValueError(f"unknown remat {remat!r}; expected one of {REMATS}.")
    if optimizer not in UNROLL_OPTIMIZERS:
        raise ValueError(f"unknown unroll optimizer {optimizer!r}; expected {UNROLL_OPTIMIZERS}.")
    if not 0 <= window <= num_steps:
        raise ValueError(f"window={window} must lie in [0, num_steps={num_steps}] (0: all).")
    if optimizer != "sgd" or 0 < window < num_steps:
        return _truncated_training(
            params, images, labels, key=key, apply_fn=apply_fn, num_steps=num_steps,
            learning_rate=learning_rate, augment_fn=augment_fn, remat=remat,
            window=window or num_steps, optimizer=optimizer,
        )  # fmt: skip

    def sgd_step(params, step_key):
        grads = jax.grad(functools.partial(mean_cross_entropy, apply_fn))(
            params, augment_fn(images, step_key), labels
        )
        return jax.tree.map(lambda p, g: p - learning_rate * g, params, grads), None

    keys = jax.random.split(key, num_steps)
    if remat == "nested":
        return _nested_remat_scan(sgd_step, params, keys, segment=remat_segment(num_steps))
    body = jax.checkpoint(sgd_step) if remat == "step" else sgd_step
    params, _ = jax.lax.scan(body, params, keys, unroll=unroll)
    return params


def _truncated_training(
    params: Any,
    images: jax.Array,
    labels: jax.Array,
    *,
    key: jax.Array,
    apply_fn: ApplyFn,
    num_steps: int,
    learning_rate: ArrayLike,
    augment_fn: AugmentFn,
    remat: str,
    window: int,
    optimizer: str,
) -> Any:
    """`unrolled_training` with an optax inner optimiser and a random back-propagated window."""
    if optimizer == "sgd":
        inner = optax.sgd(learning_rate)
    else:
        inner = optax.adam(learning_rate, eps_root=ADAM_EPS_ROOT)
    grad_fn = jax.grad(functools.partial(mean_cross_entropy, apply_fn))

    def train_step(train_images):
        def body(carry, step_key):
            params, opt_state = carry
            grads = grad_fn(params, augment_fn(train_images, step_key), labels)
            updates, opt_state = inner.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), None

        return body

    length_key, prefix_key, window_key = jax.random.split(key, 3)
    prefix = jax.random.randint(length_key, (), 0, num_steps - window + 1)
    carry = (params, inner.init(params))
    # The prefix runs without gradient: nothing of it is stored for the backward pass.
    prefix_step = train_step(jax.lax.stop_gradient(images))
    carry = jax.lax.fori_loop(
        0, prefix, lambda i, c: prefix_step(c, jax.random.fold_in(prefix_key, i))[0], carry
    )
    carry = jax.lax.stop_gradient(carry)
    keys = jax.random.split(window_key, window)
    step = train_step(images)
    if remat == "nested":
        return _nested_remat_scan(step, carry, keys, segment=remat_segment(window))[0]
    body = jax.checkpoint(step) if remat == "step" else step
    return jax.lax.scan(body, carry, keys)[0][0]


def risk(
    params: Any,
    syn_images: jax.Array,
    *,
    labels: jax.Array,
    real: jax.Array,
    key: jax.Array,
    apply_fn: ApplyFn,
    augment_fn: AugmentFn = no_augment,
    num_steps: int = 10,
    learning_rate: ArrayLike = 0.01,
    remat: str = "nested",
    unroll: int | bool = 1,
    group_batch: int = 0,
    window: int = 0,
    optimizer: str = "sgd",
) -> jax.Array:
    """Risk matching: cross-entropy on each group of a network trained on S for T steps.

    `params` is the unroll's start: a fresh network every update, or with `match.net_pool` the
    drawn member of a pool trained online on the set (a network part-way through its training,
    as RaT-BPTT's untracked prefix makes it, without rerunning that prefix every update).
    Training runs on the whole synthetic set with `unrolled_training`, then every group's real
    batch is scored by the trained network.
    The gradient w.r.t. `syn_images` flows back through the whole unroll, or its last
    `window` steps of a random-length unroll (truncated, RaT-BPTT; `unrolled_training`). The
    groups are scored `group_batch` at a time (0 = all in one vmap).

    Returns:
      (C, K) losses.
    """
    num_classes, ipc = syn_images.shape[:2]
    train_key, _ = jax.random.split(key)
    trained = unrolled_training(
        params,
        syn_images.reshape(num_classes * ipc, *syn_images.shape[2:]),
        labels.reshape(num_classes * ipc, *labels.shape[2:]),
        key=train_key,
        apply_fn=apply_fn,
        num_steps=num_steps,
        learning_rate=learning_rate,
        augment_fn=augment_fn,
        remat=remat,
        unroll=unroll,
        window=window,
        optimizer=optimizer,
    )

    return _scored_groups(apply_fn, trained, jax.lax.stop_gradient(real), group_batch)


# The risk family's real groups keep their parameter gradients from the forward to the
# backward pass (`_scored_groups_stored`) while C*K of them fit in this many bytes: a
# ConvNet-128's 0.3 M parameters x 40 groups are 51 MB. Past it (a ResNet-18's 11 M x 40 would
# be 1.8 GB, x 400 groups 18 GB), the backward pass recomputes them `group_batch` groups at a
# time (`_scored_groups_recomputed`): one more forward pass of the real groups, memory of one
# chunk and one parameter-sized sum (ResNet-18, 40 groups of 64 28x28 images: 5.07 -> 3.45 GiB
# compiled, step_time_findings.md; on XLA:CPU its convolution gradients run in a loop body,
# the slower path of jax-ml/jax#12868).
STORED_GROUP_GRADS_BYTES = 2**30


def _scored_groups(apply_fn: ApplyFn, params: Any, real: jax.Array, group_batch: int):
    """(C, K) mean cross-entropy of the network `params` on each real group (label c),
    differentiable in `params` only (`real` is data), by `_group_scorer`'s choice."""
    return _group_scorer(params, real)(apply_fn, params, real, group_batch)


def _group_scorer(params: Any, real: jax.Array) -> Callable:
    """`_scored_groups_stored` where the C*K groups' parameter gradients fit in
    `STORED_GROUP_GRADS_BYTES`, else `_scored_groups_recomputed` (same values and gradients)."""
    param_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params))
    stored = real.shape[0] * real.shape[1] * param_bytes
    return (
        _scored_groups_stored if stored <= STORED_GROUP_GRADS_BYTES else _scored_groups_recomputed
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 3))
def _scored_groups_stored(apply_fn: ApplyFn, params: Any, real: jax.Array, group_batch: int):
    """`_scored_groups` keeping each group's parameter gradient between the passes.

    The forward pass of a gradient keeps each group's parameter gradient (C*K parameter-sized
    arrays), and the backward pass contracts them with the losses' cotangent, so the real
    groups' backward runs inside the group map, as the gradient family's does, instead of being
    transposed through it. Fashion-MNIST, IPC 1 (40 groups of 64 images, ConvNet-128 depth 3,
    chunks of 8): the full step 15.3 -> 11.9 s and 5.0 -> 0.9 GiB compiled
    (`benchmarks.step_time`, 2-core Xeon, one run each; step_time_findings.md).
    """
    return _group_losses(apply_fn, params, real, group_batch)


def _group_losses(apply_fn: ApplyFn, params: Any, real: jax.Array, group_batch: int):
    return _map_labelled_groups(
        functools.partial(_group_cross_entropy, apply_fn, params), real, group_batch
    )


def _map_labelled_groups(fn: Callable, real: jax.Array, group_batch: int) -> Any:
    """`fn(images, c)` over the real groups (c: the group's class): the one mapping that the
    primal and the forward rule of `_scored_groups_stored` share."""
    per_group = lambda args: fn(*args)
    return _map_real_groups(per_group, real, (jnp.arange(real.shape[0]),), group_batch=group_batch)


def _group_cross_entropy(apply_fn: ApplyFn, params: Any, images: jax.Array, label: jax.Array):
    return mean_cross_entropy(apply_fn, params, images, jnp.full(images.shape[:1], label))


def _scored_groups_stored_fwd(apply_fn, params, real, group_batch):
    value_and_grad = jax.value_and_grad(functools.partial(_group_cross_entropy, apply_fn))
    return _map_labelled_groups(functools.partial(value_and_grad, params), real, group_batch)


def _scored_groups_stored_bwd(apply_fn, group_batch, grads, cotangent):
    del apply_fn, group_batch
    contract = lambda g: jnp.tensordot(cotangent, g, axes=cotangent.ndim)
    return jax.tree.map(contract, grads), None


_scored_groups_stored.defvjp(_scored_groups_stored_fwd, _scored_groups_stored_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 3))
def _scored_groups_recomputed(apply_fn: ApplyFn, params: Any, real: jax.Array, group_batch: int):
    """`_scored_groups` whose backward pass recomputes the groups' gradients, `group_batch`
    groups at a time (0 = all at once), summing their cotangent-weighted gradients as it goes."""
    return _group_losses(apply_fn, params, real, group_batch)


def _scored_groups_recomputed_fwd(apply_fn, params, real, group_batch):
    return _group_losses(apply_fn, params, real, group_batch), (params, real)


def _scored_groups_recomputed_bwd(apply_fn, group_batch, residuals, cotangent):
    params, real = residuals
    num = cotangent.size
    size = num if group_batch <= 0 else min(group_batch, num)
    pad = -num % size  # Padded groups repeat the first ones with weight 0.
    flat = _flat_groups(real, (jnp.arange(real.shape[0]),))
    images, classes = (jnp.concatenate([x, x[:pad]]) for x in flat)
    weights = jnp.concatenate([cotangent.reshape(num), jnp.zeros(pad, cotangent.dtype)])
    chunks = jax.tree.map(lambda x: x.reshape(-1, size, *x.shape[1:]), (images, classes, weights))

    def weighted_loss(p, chunk):
        chunk_images, chunk_classes, chunk_weights = chunk
        per_group = functools.partial(_group_cross_entropy, apply_fn, p)
        return jnp.sum(chunk_weights * jax.vmap(per_group)(chunk_images, chunk_classes))

    def add_chunk(total, chunk):
        return jax.tree.map(jnp.add, total, jax.grad(weighted_loss)(params, chunk)), None

    total, _ = jax.lax.scan(add_chunk, jax.tree.map(jnp.zeros_like, params), chunks)
    return total, None


_scored_groups_recomputed.defvjp(_scored_groups_recomputed_fwd, _scored_groups_recomputed_bwd)


def krr(
    params: Any,
    syn_images: jax.Array,
    *,
    labels: jax.Array,
    real: jax.Array,
    key: jax.Array,
    apply_fn: ApplyFn,
    augment_fn: AugmentFn = no_augment,
    group_batch: int = 0,
    ridge: float = 1e-6,
) -> jax.Array:
    """Kernel ridge regression on the network's features (FRePo, Zhou, Nezhadarya and Ba,
    NeurIPS 2022, `yongchao97/FRePo` `lib/datadistillation/frepo.py`), one loss per group.

    With F_S the embedding of the synthetic set (augmented by `augment_fn`, one draw) and Y_S
    its centred targets (one-hot or soft label minus 1/C, `init_proto` 74-78), each real image
    x of group (c, k) is predicted as f(x) F_S^T (F_S F_S^T + ridge * tr/n * I)^-1 Y_S
    (`nfr` 106-112: the ridge scaled by the kernel's mean diagonal, a Cholesky solve), and the
    group's loss is the mean over its m images of 0.5 * ||prediction - (e_c - 1/C)||^2
    (`mean_squared_loss`). The real features are constants, as FRePo's `feat`; `params` is
    the network the step draws from its pool (`jaxdd.step.NetPool`).

    Returns:
      (C, K) losses.
    """
    num_classes = syn_images.shape[0]
    images = syn_images.reshape(-1, *syn_images.shape[2:])
    targets = labels.reshape(-1, *labels.shape[2:])
    if targets.ndim == 1:
        targets = jax.nn.one_hot(targets, num_classes)
    targets = targets - 1.0 / num_classes
    features = apply_fn(params, augment_fn(images, key))[1]
    kernel = features @ features.T
    size = kernel.shape[0]
    regularised = kernel + ridge * jnp.trace(kernel) / size * jnp.eye(size, dtype=kernel.dtype)
    # F_S^T (K_SS + reg)^-1 Y_S as one (d, C) readout: each real group costs one GEMM.
    coefficients = jax.scipy.linalg.solve(regularised, targets, assume_a="pos")
    readout = features.T @ coefficients

    def group_loss(args) -> jax.Array:
        group_images, label = args
        real_features = jax.lax.stop_gradient(apply_fn(params, group_images)[1])
        target = jax.nn.one_hot(label, num_classes) - 1.0 / num_classes
        return jnp.mean(0.5 * jnp.sum(jnp.square(real_features @ readout - target), axis=-1))

    return _map_real_groups(group_loss, real, (jnp.arange(num_classes),), group_batch=group_batch)


# `match.family` -> per-group loss function with the common signature above.
FAMILIES: dict[str, Callable[..., jax.Array]] = {
    "gradient": gradient,
    "distribution": distribution,
    "risk": risk,
    "krr": krr,
}
