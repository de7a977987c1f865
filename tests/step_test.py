"""Tests for jaxdd.step: the robust gradient, the pure step, compile-once, the schedule."""

import functools
import types

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import tiny_problem

from configs import smoke
from jaxdd import build, matching, models, risk, sharding, step, xla
from jaxdd import groups as groups_lib


@pytest.fixture(scope="module")
def run():
    """Tiny problem (3 classes x 2 clusters, 8x8, width-8 ConvNet) on the real code path."""
    config = smoke.get_config()
    config.model.width, config.model.depth = 8, 2
    config.cluster.num_clusters = 2
    model, real, labels = tiny_problem.three_classes(config)
    state = build.create_state(config, real, key=jax.random.key(1))
    return config, (8, 8, 1), model, real, state, labels


def _net(model, seed=5):
    return models.init_params(model, jax.random.key(seed), (8, 8, 1))


def _losses_fn(config, model, real, state, family):
    config = config.copy_and_resolve_references()
    config.match.family = family
    apply_fn = lambda p, x: model.apply({"params": p}, x)
    index = jax.random.randint(jax.random.key(2), (*real.groups.sizes.shape, 4), 0, 1)
    index = real.groups.members[..., :1][..., index[0, 0]]  # (C, K, 4) members of each group
    real_images = real.images[index]
    losses_fn = build.create_losses_fn(config, apply_fn)
    return functools.partial(
        losses_fn, _net(model), labels=state.labels, real=real_images, key=jax.random.key(3)
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

    # DC's scale: C times the risk, so the tail weights sum to C (the number of classes).
    num_classes = group_losses.shape[0]
    expected = num_classes * jnp.tensordot(
        jnp.asarray(expected_w, jnp.float32), jac.reshape(n, *state.images.shape), axes=1
    )
    got = objective("cvar", alpha)
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-6 * float(jnp.abs(expected).max()))
    assert float(jnp.abs(got).sum()) > 0  # The reference code's zero-gradient failure.

    mean_grad = objective("mean", 1.0)
    np.testing.assert_allclose(
        mean_grad, num_classes * jac.reshape(n, *state.images.shape).mean(0), rtol=1e-3, atol=1e-6
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


def _dc_iteration_by_hand(config, model, real, state, key):
    """DC's iteration (main.py 130-199) written out: a fresh network, `outer_loop` updates of
    the images, the network trained `inner_loop` epochs after each update but the last."""
    outer, inner = build.loops(config)
    apply_fn = lambda p, x: model.apply({"params": p}, x)
    losses_fn = build.create_losses_fn(config, apply_fn)
    syn_opt, net_opt = build.create_syn_optimizer(config), build.create_net_optimizer(config)
    init_key, loop_key = jax.random.split(key)
    params = models.init_params(model, init_key, (8, 8, 1))
    net_state = net_opt.init(params)
    images, opt_state = state.images, state.opt_state
    for i, update_key in enumerate(jax.random.split(loop_key, outer)):
        sample_key, loss_key, train_key = jax.random.split(update_key, 3)
        index = groups_lib.sample_groups(real.groups, config.match.num_real, key=sample_key)
        bound = functools.partial(
            losses_fn, params, labels=state.labels, real=real.images[index], key=loss_key
        )
        grads = jax.grad(
            lambda s, bound=bound: step.robust_objective(
                s, losses_fn=bound, risk_name=config.robust.risk, alpha=config.robust.alpha
            )[0]
        )(images)
        updates, opt_state = syn_opt.update(grads, opt_state, images)
        images = images + updates
        if i == outer - 1:
            break
        flat = images.reshape(-1, *images.shape[2:])
        for epoch in range(inner):  # One full batch per epoch (N <= inner_batch).
            aug_key = jax.random.split(jax.random.fold_in(train_key, epoch))[1]
            x = matching.per_image_augment(config.match.augment)(
                flat, jax.random.split(aug_key, 1)[0]
            )
            g = jax.grad(functools.partial(matching.mean_cross_entropy, apply_fn))(
                params, x, state.labels.reshape(-1)
            )
            updates, net_state = net_opt.update(g, net_state, params)
            params = jax.tree.map(jnp.add, params, updates)
    return images


def test_one_step_is_dcs_iteration(run):
    config, image_shape, model, real, state, _ = run  # outer_loop 2, inner_loop 2
    assert build.loops(config) == (2, 2)
    new_state, _ = build.create_step(config, model, image_shape)(state, jax.random.key(0), real)
    expected = jax.jit(functools.partial(_dc_iteration_by_hand, config, model))(
        real, state, jax.random.key(0)
    )
    np.testing.assert_allclose(new_state.images, expected, rtol=1e-4, atol=1e-5)
    assert int(new_state.step) == 1

    # The network's training between updates matters: without it the images differ, so the
    # comparison above checks it. (Training after the last update cannot change the images, so
    # no image comparison can tell whether the step skips it.)
    no_train = config.copy_and_resolve_references()
    no_train.match.inner_loop = 0
    untrained, _ = build.create_step(no_train, model, image_shape)(state, jax.random.key(0), real)
    assert not np.allclose(untrained.images, new_state.images, atol=1e-6)


def test_train_network_epochs_cover_the_set_in_equal_minibatches():
    model = models.ConvNet(num_classes=2, width=4, depth=1)
    apply_fn = lambda p, x: model.apply({"params": p}, x)
    images = jax.random.normal(jax.random.key(0), (10, 8, 8, 1))
    labels = jnp.arange(10) % 2
    params = _net(model)
    seen = []

    def recording_augment(x, key):
        seen.append(x.shape[0])
        return x

    train = functools.partial(
        step._train_network,
        params,
        optax.sgd(0.1).init(params),
        images,
        labels,
        key=jax.random.key(1),
        apply_fn=apply_fn,
        optimizer=optax.sgd(0.1),
        augment_fn=recording_augment,
        batch_size=4,
    )
    trained, _, meter = train(num_epochs=jnp.asarray(2))
    assert seen == [3]  # ceil(10 / 4) = 3 batches of 10 // 3 = 3 images, traced once.
    assert not np.allclose(trained["fc"]["kernel"], params["fc"]["kernel"])
    # The top-1 meter: 2 epochs x 3 batches x 3 images seen, each hit counted once.
    hits, seen_images = np.asarray(meter)
    assert seen_images == 18 and 0 <= hits <= 18 and hits == int(hits)
    untouched, _, empty = train(num_epochs=jnp.asarray(0))
    chex.assert_trees_all_equal(untouched, params)
    np.testing.assert_array_equal(empty, [0, 0])


def test_matching_family_registry_covers_the_spec():
    assert set(matching.FAMILIES) == {"gradient", "distribution", "risk", "krr"}
    assert set(risk.RISKS) == {"mean", "cvar", "max", "mean+max"}


def _dc_match_loss(grads_real, grads_syn):
    """DC's match_loss 'ours' (utils.py 218-247), layer by layer: rows are output units
    (torch's layout: flax's last axis first); biases and norms count 0."""
    total = 0.0
    for gr, gs in zip(jax.tree.leaves(grads_real), jax.tree.leaves(grads_syn), strict=True):
        if gr.ndim < 2:
            continue
        gr, gs = gr.reshape(-1, gr.shape[-1]).T, gs.reshape(-1, gs.shape[-1]).T
        norms = jnp.sqrt(jnp.sum(gr**2, axis=1)) * jnp.sqrt(jnp.sum(gs**2, axis=1))
        total += jnp.sum(1 - jnp.sum(gr * gs, axis=1) / (norms + 1e-6))
    return total


def _one_group_per_class(run, family):
    """(params, apply_fn, real batches, the family's losses of the synthetic images) with
    K = 1: each class's group holds all 12 of its real images (DC's batch_real per class)."""
    _, _, model, real, state, _ = run
    params = _net(model)
    apply_fn = lambda p, x: model.apply({"params": p}, x)
    real_batches = real.images.reshape(state.images.shape[0], 1, 12, 8, 8, 1)
    bound = functools.partial(
        family,
        params,
        labels=state.labels,
        real=real_batches,
        key=jax.random.key(0),
        apply_fn=apply_fn,
    )
    return params, apply_fn, real_batches, bound


def test_gradient_objective_is_dcs_summed_loss_and_image_gradient(run):
    """K = 1, risk mean, DC's real batch per class: jaxdd's objective is DC's sum over classes
    of the per-class match loss (main.py 178-199), and so is its gradient in the images.

    The reference is DC's loop over classes. Its gradient is compared by autodiff, not finite
    differences: the synthetic parameter gradient holds ReLU's step function, so DC's
    objective jumps wherever a pre-activation changes sign (measured: jumps of 0.1 within
    1e-3 of these images) and central differences diverge as the step shrinks.
    """
    _, _, _, _, state, _ = run
    params, apply_fn, real_batches, bound = _one_group_per_class(run, matching.gradient)
    num_classes = state.images.shape[0]
    objective = jax.jit(
        jax.value_and_grad(
            lambda s: step.robust_objective(s, losses_fn=bound, risk_name="mean", alpha=1.0)[0]
        )
    )
    value, grad = objective(state.images)

    ce = lambda p, x, y: jnp.mean(models.cross_entropy(apply_fn(p, x)[0], y))

    def dc_loss(images):
        total = 0.0
        for c in range(num_classes):
            grads_real = jax.grad(ce)(params, real_batches[c, 0], jnp.full((12,), c))
            grads_syn = jax.grad(ce)(params, images[c], state.labels[c])
            total += _dc_match_loss(jax.lax.stop_gradient(grads_real), grads_syn)
        return total

    dc_value, dc_grad = jax.jit(jax.value_and_grad(dc_loss))(state.images)
    np.testing.assert_allclose(float(value), float(dc_value), rtol=1e-5)
    scale = float(jnp.abs(dc_grad).max())
    assert scale > 0
    np.testing.assert_allclose(grad, dc_grad, rtol=1e-4, atol=1e-5 * scale)
    # The old objective, the mean over the C groups, was C times smaller than DC's.
    assert float(value) > 2.5 * float(bound(state.images).mean())


def test_distribution_objective_is_dms_summed_loss(run):
    """K = 1, mean: DM's sum over classes of ||mean embed(real_c) - mean embed(syn_c)||^2
    (main_DM.py, ConvNet branch), value and gradient."""
    _, _, _, _, state, _ = run
    params, apply_fn, real_batches, bound = _one_group_per_class(run, matching.distribution)
    num_classes = state.images.shape[0]
    objective = lambda s: step.robust_objective(s, losses_fn=bound, risk_name="mean", alpha=1.0)[0]

    def dm(images):
        embed = lambda x: apply_fn(params, x)[1]
        return sum(
            jnp.sum((embed(real_batches[c, 0]).mean(0) - embed(images[c]).mean(0)) ** 2)
            for c in range(num_classes)
        )

    np.testing.assert_allclose(jax.jit(objective)(state.images), dm(state.images), rtol=1e-5)
    np.testing.assert_allclose(
        jax.jit(jax.grad(objective))(state.images),
        jax.jit(jax.grad(dm))(state.images),
        rtol=1e-4,
        atol=1e-7,
    )


def test_robust_network_loss_is_ce_plus_mean_and_max_of_cell_cvars(run):
    """The reference mode's network loss, against numpy: upper-tail CVaR of each cell, every
    cell kept, and a gradient of its own (the reference detaches it)."""
    _, _, model, real, _, labels = run
    apply_fn = lambda p, x: model.apply({"params": p}, x)
    params = _net(model)
    images = real.images.reshape(3, 12, 8, 8, 1)
    cells = jnp.asarray(np.tile(np.arange(12) % 3, (3, 1))[:, None, :] == np.arange(3)[:, None])
    loss = step.robust_network_loss(apply_fn, params, images, jnp.arange(3), cells, alpha=0.5)
    logits, _ = apply_fn(params, real.images)
    per_image = np.asarray(models.cross_entropy(logits, labels)).reshape(3, 12)
    cvars = np.array(
        [
            [np.sort(per_image[c][np.asarray(cells[c, k])])[::-1][:2].mean() for k in range(3)]
            for c in range(3)
        ]
    )  # 4 members per cell, alpha 0.5: the mean of the 2 largest.
    np.testing.assert_allclose(
        float(loss), per_image.mean() + cvars.mean() + cvars.max(), rtol=1e-5
    )
    ce_grad = jax.grad(lambda p: 3 * matching.mean_cross_entropy(apply_fn, p, real.images, labels))
    robust_grad = jax.grad(
        lambda p: step.robust_network_loss(apply_fn, p, images, jnp.arange(3), cells, alpha=0.5)
    )
    difference = optax.tree_utils.tree_norm(
        jax.tree.map(lambda a, b: a - b, robust_grad(params), ce_grad(params))
    )
    assert float(difference) > 1e-3  # Not the reference's (detached) gradient of CE alone.


def _real_training(params, images, labels, **kwargs):
    model = models.ConvNet(num_classes=2, width=4, depth=1)
    optimizer = optax.sgd(0.05, momentum=0.9)
    train = functools.partial(
        step._train_network,
        params,
        optimizer.init(params),
        images,
        labels,
        key=jax.random.key(1),
        apply_fn=lambda p, x: model.apply({"params": p}, x),
        optimizer=optimizer,
        **kwargs,
    )
    return model, train


def test_real_network_training_draws_distinct_real_batches_and_learns_them():
    labels = jnp.arange(40) % 2
    images = jax.random.normal(jax.random.key(0), (40, 8, 8, 1)) + 2.0 * labels[:, None, None, None]
    model = models.ConvNet(num_classes=2, width=4, depth=1)
    params = _net(model)
    seen = []

    def recording_augment(x, key):
        seen.append(x)
        return x

    model, train = _real_training(
        params, images, labels, num_data=10, batch_size=4, augment_fn=recording_augment,
        cutmix_probability=0.0,
    )  # fmt: skip
    untouched, _, _ = train(num_epochs=jnp.asarray(0))
    chex.assert_trees_all_equal(untouched, params)
    trained, _, _ = train(num_epochs=jnp.asarray(1))
    assert {x.shape[0] for x in seen} == {4}  # ceil(10 / 4) = 3 batches of 4.
    assert not np.allclose(trained["fc"]["kernel"], params["fc"]["kernel"])

    # One epoch draws 12 distinct images: record them eagerly (one batch per scan step).
    batches = []
    with jax.disable_jit():
        train(num_epochs=1, augment_fn=lambda x, key: batches.append(np.asarray(x)) or x)
    drawn = np.concatenate(batches).reshape(12, -1)
    assert len(np.unique(drawn, axis=0)) == 12

    def real_loss(p):
        logits = model.apply({"params": p}, images)[0]
        return float(jnp.mean(models.cross_entropy(logits, labels)))

    # Many epochs on the separable real data lower its loss, with CutMix as without.
    for cutmix in (0.0, 1.0):
        _, train = _real_training(
            params, images, labels, num_data=8, batch_size=8, augment_fn=matching.no_augment,
            cutmix_probability=cutmix,
        )  # fmt: skip
        assert real_loss(train(num_epochs=jnp.asarray(30))[0]) < 0.7 * real_loss(params)
    with pytest.raises(ValueError, match="lower match.net_data"):
        _real_training(
            params, images, labels, num_data=41, batch_size=4, augment_fn=matching.no_augment,
            cutmix_probability=0.0,
        )[1](num_epochs=1)  # fmt: skip


def test_real_network_training_step_needs_labels_and_changes_the_update(run):
    config, image_shape, model, real, state, labels = run  # outer_loop 2, inner_loop 2.
    config = config.copy_and_resolve_references()
    config.match.net_train, config.match.net_data, config.match.inner_batch = "real", 8, 4
    labelled = real.replace(labels=jnp.asarray(labels, jnp.int32))
    real_step = build.create_step(config, model, image_shape)
    s1, m1 = real_step(state, jax.random.key(7), labelled)
    again, _ = real_step(state, jax.random.key(7), labelled)
    np.testing.assert_array_equal(s1.images, again.images)
    assert np.isfinite(float(m1["loss"])) and not np.array_equal(s1.images, state.images)
    config.match.net_train = "synthetic"
    synthetic, _ = build.create_step(config, model, image_shape)(state, jax.random.key(7), real)
    assert not np.allclose(synthetic.images, s1.images, atol=1e-6)
    with pytest.raises(ValueError, match="RealData\\(..., labels="):
        real_step(state, jax.random.key(7), real)


def test_net_optimizer_is_pytorch_sgd_with_momentum_and_weight_decay():
    config = smoke.get_config()
    config.match.net_lr, config.match.net_momentum, config.match.net_weight_decay = 0.1, 0.9, 0.01
    optimizer = build.create_net_optimizer(config)
    params, grads = jnp.array([1.0, -2.0]), [jnp.array([0.5, 0.25]), jnp.array([-1.0, 2.0])]
    state = optimizer.init(params)
    p, buf = np.array([1.0, -2.0]), None
    for g in grads:  # torch.optim.SGD(lr, momentum, weight_decay), dampening 0.
        d = np.asarray(g) + 0.01 * p
        buf = d if buf is None else 0.9 * buf + d
        p = p - 0.1 * buf
        updates, state = optimizer.update(g, state, params)
        params = optax.apply_updates(params, updates)
    np.testing.assert_allclose(params, p, rtol=1e-6)
    config.match.net_momentum, config.match.net_weight_decay = 0.0, 0.0  # DC's: plain SGD.
    plain = build.create_net_optimizer(config)
    updates, _ = plain.update(grads[0], plain.init(params), params)
    np.testing.assert_allclose(updates, -0.1 * grads[0])


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_net_optimizer_adam_is_optax_adam_after_the_weight_decay(weight_decay):
    """match.net_optimizer=adam (FRePo's pool): optax's Adam at match.net_lr on the gradient
    plus the PyTorch-style decay; match.net_momentum does not enter."""
    config = smoke.get_config()
    config.match.net_optimizer, config.match.net_lr = "adam", 3e-4
    config.match.net_momentum, config.match.net_weight_decay = 0.9, weight_decay
    optimizer, reference = build.create_net_optimizer(config), optax.adam(3e-4)
    params, grads = jnp.array([1.0, -2.0]), [jnp.array([0.5, 0.25]), jnp.array([-1.0, 2.0])]
    state, ref_state, ref_params = optimizer.init(params), reference.init(params), params
    for g in grads:
        updates, state = optimizer.update(g, state, params)
        params = optax.apply_updates(params, updates)
        ref_updates, ref_state = reference.update(g + weight_decay * ref_params, ref_state)
        ref_params = optax.apply_updates(ref_params, ref_updates)
    np.testing.assert_allclose(params, ref_params, rtol=1e-6)
    assert not np.allclose(params, [1.0, -2.0])


def test_lamb_set_optimizer_is_optax_lamb_at_syn_lr():
    """syn.optimizer=lamb (FRePo's images): optax's LAMB at syn.lr, also per group with
    learned labels."""
    config = smoke.get_config()
    config.syn.optimizer, config.syn.lr, config.syn.learn_labels = "lamb", 3e-4, True
    config.syn.label_lr = 1e-3
    params = {"images": jnp.ones((2, 3)), "labels": jnp.zeros((2, 4))}
    grads = {"images": jnp.full((2, 3), 0.5), "labels": jnp.full((2, 4), -1.0)}
    optimizer = build.create_syn_optimizer(config)
    updates, _ = optimizer.update(grads, optimizer.init(params), params)
    for name, lr in (("images", 3e-4), ("labels", 1e-3)):
        lamb = optax.lamb(lr)
        expected, _ = lamb.update(grads[name], lamb.init(params[name]), params[name])
        np.testing.assert_allclose(updates[name], expected, rtol=1e-6)


@pytest.mark.parametrize("net_train", ["synthetic", "real_robust"])
def test_voronoi_step_is_deterministic_with_one_group_per_synthetic_image(run, net_train):
    config, image_shape, model, real, state, labels = run
    config = config.copy_and_resolve_references()
    config.cluster.assign, config.cluster.pool = "voronoi", 8
    config.match.net_train = net_train
    classes = step.RealData(
        images=real.images, groups=groups_lib.class_groups(labels, num_classes=3)
    )
    step_fn = build.create_step(config, model, image_shape)
    s1, m1 = step_fn(state, jax.random.key(7), classes)
    again, _ = step_fn(state, jax.random.key(7), classes)
    np.testing.assert_array_equal(s1.images, again.images)
    assert m1["group_losses"].shape == state.labels.shape  # (C, ipc) cells.
    assert np.isfinite(float(m1["loss"])) and not np.array_equal(s1.images, state.images)
    with pytest.raises(ValueError, match="use assign='voronoi'"):
        step.train_step(
            state, jax.random.key(0), real, **{
                **step_fn.__wrapped__.keywords, "assign": "kmeans", "net_train": "real_robust"
            }
        )  # fmt: skip


def test_factorized_step_learns_the_stored_images_through_their_decoding(run):
    """The state keeps ipc stored images; the losses see their f^2 * ipc decoded crops, and the
    update's gradient reaches every stored pixel through the upsampling."""
    config, image_shape, model, real, state, _ = run
    config = config.copy_and_resolve_references()
    config.syn.param, config.syn.factor = "factorized", 2
    config.robust.risk = "mean"  # Every class gets a gradient (CVaR's tail may skip one).
    step_fn = build.create_step(config, model, image_shape)
    new, metrics = step_fn(state, jax.random.key(7), real)
    assert new.images.shape == state.images.shape and new.labels.shape == state.labels.shape
    assert np.all(np.asarray(new.images != state.images))
    assert np.isfinite(float(metrics["loss"]))
    again, _ = step_fn(state, jax.random.key(7), real)
    np.testing.assert_array_equal(again.images, new.images)  # Deterministic.
    decoded, labels = step.synthetic_arrays(new, build.create_decoder(config)[0])
    assert decoded.shape == (3 * 2 * 4, *image_shape) and labels.shape == (24,)


def test_learned_labels_start_near_the_hard_ones_and_move_with_the_images(run):
    config, image_shape, model, real, state, _ = run
    config = config.copy_and_resolve_references()
    config.syn.learn_labels, config.syn.label_lr = True, 1.0
    config.robust.risk = "mean"
    soft = build.create_state(config, real, key=jax.random.key(1))
    np.testing.assert_array_equal(soft.images, state.images)  # Same initial images.
    targets = np.asarray(step.label_targets(soft.labels))
    assert targets.shape == (3, 2, 3)
    np.testing.assert_allclose(targets.sum(-1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(targets.argmax(-1), state.labels)
    np.testing.assert_allclose(targets.max(-1), 0.9 + 0.1 / 3, rtol=1e-5)
    step_fn = build.create_step(config, model, image_shape)
    new, metrics = step_fn(soft, jax.random.key(7), real)
    assert np.isfinite(float(metrics["loss"]))
    assert not np.allclose(new.labels, soft.labels)  # The objective's gradient reached them.
    assert not np.array_equal(new.images, soft.images)
    images, labels = step.synthetic_arrays(new)
    assert images.shape == (6, *image_shape) and labels.shape == (6, 3)
    # Hard labels keep their dtype, state layout and optimiser state (old checkpoints resume).
    assert not step.learned(state.labels) and step.learned(soft.labels)


def test_adam_set_optimizer_moves_every_pixel_by_the_learning_rate(run):
    """syn.optimizer=adam (RaT-BPTT's outer loop): Adam's first bias-corrected update is
    lr * g / (|g| + eps), so one image update moves every pixel with a gradient by lr."""
    config, image_shape, model, real, state, _ = run
    config = config.copy_and_resolve_references()
    config.syn.optimizer, config.syn.lr = "adam", 0.05
    config.robust.risk = "mean"  # Every class's images get a gradient (CVaR's tail: some).
    config.match.outer_loop, config.match.inner_loop = 1, 0
    adam_state = build.create_state(config, real, key=jax.random.key(1))
    new_state, _ = build.create_step(config, model, image_shape)(
        adam_state, jax.random.key(0), real
    )
    moved = np.abs(np.asarray(new_state.images) - np.asarray(adam_state.images))
    np.testing.assert_allclose(moved[moved > 1e-6], 0.05, rtol=1e-3)
    assert (moved > 1e-6).mean() > 0.9, "most pixels have a gradient"


def test_capped_update_moves_only_the_matched_images_of_each_class(run):
    """syn.max_decoded (IDC's batch_syn_max) below the images per class: one update (no
    network training in between) reaches exactly the max_decoded images each class matched."""
    config, image_shape, model, real, _, _ = run
    config = config.copy_and_resolve_references()
    config.ipc, config.syn.max_decoded = 4, 2
    config.robust.risk = "mean"  # Every class gets a gradient.
    config.match.outer_loop, config.match.inner_loop = 1, 0
    state = build.create_state(config, real, key=jax.random.key(1))
    new_state, _ = build.create_step(config, model, image_shape)(state, jax.random.key(0), real)
    moved = np.abs(np.asarray(new_state.images) - np.asarray(state.images)).max(axis=(2, 3, 4))
    np.testing.assert_array_equal((moved > 0).sum(axis=1), [2, 2, 2])


def test_clip_pixels_clips_the_stored_set_before_the_iteration_only(run):
    """syn.clip_pixels (IDC's clamp to [0, 1] once per iteration, `condense.py` 521): the
    iteration starts from the stored set clipped to the pixel range, and its updates may then
    leave the range (IDC saves its set unclamped)."""
    config, image_shape, model, real, state, _ = run
    config = config.copy_and_resolve_references()
    config.syn.clip_pixels = True
    with pytest.raises(ValueError, match="pixel_range=build.pixel_range"):
        build.create_step(config, model, image_shape)
    low, high = np.array([-0.5], np.float32), np.array([0.5], np.float32)
    assert np.any(np.asarray(state.images) < low) and np.any(np.asarray(state.images) > high)
    config.syn.lr = 0.0
    frozen = build.create_step(config, model, image_shape, pixel_range=(low, high))
    new, _ = frozen(state, jax.random.key(7), real)
    np.testing.assert_array_equal(new.images, np.clip(state.images, low, high))
    config.syn.lr, config.robust.risk = 10.0, "mean"
    moving = build.create_step(config, model, image_shape, pixel_range=(low, high))
    new, _ = moving(state, jax.random.key(7), real)
    assert np.any(np.abs(np.asarray(new.images)) > 0.5)


def test_pixel_range_is_zero_and_one_unnormalised():
    dataset = types.SimpleNamespace(mean=np.array([0.25, 0.5]), std=np.array([0.5, 0.25]))
    low, high = build.pixel_range(dataset)
    np.testing.assert_allclose(low * dataset.std + dataset.mean, 0.0, atol=1e-7)
    np.testing.assert_allclose(high * dataset.std + dataset.mean, 1.0, atol=1e-7)
