"""Tests for jaxdd.matching: shapes, group-mapping invariance, distances against NumPy."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxdd import matching, models

C, K, M, IPC, HW = 3, 2, 4, 2, 8


@pytest.fixture(scope="module")
def setup():
    model = models.instantiate("convnet", num_classes=C, width=8, depth=2)
    params = models.init_params(model, jax.random.key(0), (HW, HW, 1))
    apply_fn = lambda p, x: model.apply({"params": p}, x)
    k1, k2 = jax.random.split(jax.random.key(1))
    syn = jax.random.normal(k1, (C, IPC, HW, HW, 1))
    real = (
        jax.random.normal(k2, (C, K, M, HW, HW, 1)) + jnp.arange(C)[:, None, None, None, None, None]
    )
    labels = jnp.repeat(jnp.arange(C)[:, None], IPC, axis=1)
    return apply_fn, params, syn, real, labels


def _numpy_distance(a_tree, b_tree):
    total = 0.0
    for a, b in zip(jax.tree.leaves(a_tree), jax.tree.leaves(b_tree), strict=True):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        if a.ndim < 2:
            continue
        out = a.shape[-1]
        for o in range(out):
            x, y = a[..., o].ravel(), b[..., o].ravel()
            total += 1 - x @ y / (np.linalg.norm(x) * np.linalg.norm(y) + 1e-6)
    return total


def test_layerwise_cosine_distance_matches_numpy():
    keys = jax.random.split(jax.random.key(0), 6)
    a = {
        "k": jax.random.normal(keys[0], (3, 3, 2, 5)),
        "b": jax.random.normal(keys[1], (5,)),
        "d": {"kernel": jax.random.normal(keys[2], (7, 4))},
    }
    b = {
        "k": jax.random.normal(keys[3], (3, 3, 2, 5)),
        "b": jax.random.normal(keys[4], (5,)),
        "d": {"kernel": jax.random.normal(keys[5], (7, 4))},
    }
    np.testing.assert_allclose(
        matching.layerwise_cosine_distance(a, b), _numpy_distance(a, b), rtol=1e-5
    )
    np.testing.assert_allclose(matching.layerwise_cosine_distance(a, a), 0.0, atol=1e-4)
    # Scale invariance per output unit: cosine ignores gradient magnitude.
    scaled = jax.tree.map(lambda x: 3.0 * x, b)
    np.testing.assert_allclose(
        matching.layerwise_cosine_distance(a, scaled),
        matching.layerwise_cosine_distance(a, b),
        rtol=1e-5,
    )


def test_idc_distances_by_hand_and_the_matched_layers():
    keys = jax.random.split(jax.random.key(2), 6)

    def tree(k):
        return {
            "conv": jax.random.normal(k[0], (3, 3, 2, 5)),
            "bias": jax.random.normal(k[1], (5,)),
            "dense": jax.random.normal(k[2], (7, 4)),
        }

    a, b = tree(keys[:3]), tree(keys[3:])
    conv, dense = np.asarray(a["conv"] - b["conv"]), np.asarray(a["dense"] - b["dense"])
    # IDC's `dist` (condense.py 374-391): sums over elements; bias never, fc with 'weights'.
    expected = {
        ("l1", "weights"): np.abs(conv).sum() + np.abs(dense).sum(),
        ("l1", "conv"): np.abs(conv).sum(),
        ("mse", "weights"): np.square(conv).sum() + np.square(dense).sum(),
        ("mse", "conv"): np.square(conv).sum(),
        ("dc", "weights"): _numpy_distance(a, b),
        ("dc", "conv"): _numpy_distance({"c": a["conv"]}, {"c": b["conv"]}),
    }
    for (name, layers), value in expected.items():
        got = matching.gradient_distance(name, layers)(a, b)
        np.testing.assert_allclose(got, value, rtol=1e-5, err_msg=f"{name} {layers}")
    np.testing.assert_allclose(
        matching.layerwise_cosine_distance(a, b), expected[("dc", "weights")], rtol=1e-5
    )
    # A network without conv kernels would be matched on nothing: refused, not a constant.
    mlp = {"dense": a["dense"], "bias": a["bias"]}
    with pytest.raises(ValueError, match="matches no parameter of this network.*'weights'"):
        matching.gradient_distance("l1", "conv")(mlp, mlp)
    with pytest.raises(ValueError, match="unknown gradient distance 'l2'"):
        matching.gradient_distance("l2")
    with pytest.raises(ValueError, match="unknown matched layers 'all'"):
        matching.gradient_distance("l1", "all")


def test_gradient_family_uses_the_given_distance(setup):
    apply_fn, params, syn, real, labels = setup
    key = jax.random.key(3)
    common = dict(labels=labels, real=real, key=key, apply_fn=apply_fn)
    base = matching.gradient(params, syn, **common)
    l1 = matching.gradient(params, syn, distance=matching.gradient_distance("l1", "conv"), **common)
    assert base.shape == l1.shape == (C, K)
    # Group (c, k) by hand: l1 between the conv kernels' gradients of the class and the group.
    grad_fn = jax.grad(functools.partial(matching.mean_cross_entropy, apply_fn))
    c, k = 1, 0
    g_syn = grad_fn(params, syn[c], labels[c])
    g_real = grad_fn(params, real[c, k], jnp.full((M,), c))
    by_hand = sum(
        float(jnp.abs(x - y).sum())
        for x, y in zip(jax.tree.leaves(g_syn), jax.tree.leaves(g_real), strict=True)
        if x.ndim >= 3
    )
    np.testing.assert_allclose(l1[c, k], by_hand, rtol=1e-4)
    assert not np.allclose(base, l1)


def _bind(setup, family, *, key, strategy, **kwargs):
    """`family` with everything but the synthetic images bound, on the `setup` problem."""
    apply_fn, params, _, real, labels = setup
    return functools.partial(
        matching.FAMILIES[family],
        params,
        labels=labels,
        real=real,
        key=key,
        apply_fn=apply_fn,
        augment_fn=matching.siamese_augment(strategy),
        **kwargs,
    )


@pytest.mark.parametrize("family", sorted(matching.FAMILIES))
def test_families_return_finite_group_losses_and_gradients(setup, family):
    syn = setup[2]
    losses_fn = _bind(setup, family, key=jax.random.key(2), strategy="color_crop")
    losses = jax.jit(losses_fn)(syn)
    assert losses.shape == (C, K)
    assert np.all(np.isfinite(losses))
    grads = jax.jit(jax.grad(lambda s: losses_fn(s).sum()))(syn)  # Eager: a compile per op.
    assert grads.shape == syn.shape
    assert np.all(np.isfinite(grads)) and float(jnp.abs(grads).sum()) > 0


@pytest.mark.parametrize("family", sorted(matching.FAMILIES))
def test_group_losses_depend_only_on_their_group(setup, family):
    """Perturbing group (c, k)'s real batch changes L[c, k] and no other entry."""
    apply_fn, params, syn, real, labels = setup
    fn = jax.jit(
        functools.partial(
            matching.FAMILIES[family],
            params,
            syn,
            labels=labels,
            key=jax.random.key(3),
            apply_fn=apply_fn,
        )
    )
    base = fn(real=real)
    changed = fn(real=real.at[1, 0].add(2.0))
    diff = np.abs(np.asarray(changed - base)) > 1e-6
    expected = np.zeros((C, K), bool)
    expected[1, 0] = True
    np.testing.assert_array_equal(diff, expected)


@pytest.mark.parametrize("family", ["gradient", "distribution", "risk"])
def test_group_batch_changes_speed_not_results(setup, family):
    syn = setup[2]
    extra = {"num_steps": 2} if family == "risk" else {}

    def losses_and_grad(group_batch):
        fn = _bind(
            setup,
            family,
            key=jax.random.key(4),
            strategy="color_crop_scale",
            group_batch=group_batch,
            **extra,
        )
        return jax.jit(lambda s: (fn(s), jax.grad(lambda s: fn(s).sum())(s)))(syn)

    expected = losses_and_grad(0)
    assert float(jnp.abs(expected[1]).max()) > 0
    # A batch size that does not divide the C * K = 6 groups covers `lax.map`'s scan over
    # batches and its remainder (each size is a compile of a second-order program).
    got = losses_and_grad(4)
    np.testing.assert_allclose(got[0], expected[0], rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(
        got[1], expected[1], rtol=2e-3, atol=2e-5 * float(jnp.abs(expected[1]).max())
    )


@pytest.mark.parametrize("group_batch", [0, 4])
@pytest.mark.parametrize("limit", [2**30, 0], ids=["stored", "recomputed"])
def test_risk_gradient_matches_autodiff_through_the_group_map(
    setup, group_batch, limit, monkeypatch
):
    """The risk family scores the real groups with its own backward pass (each group's
    parameter gradient kept, then contracted with the losses' cotangent; or, past
    `STORED_GROUP_GRADS_BYTES`, recomputed a chunk of groups at a time, 4 of the 6 here
    leaving a padded chunk); a weighted sum of its losses must have the gradient of plain
    autodiff through the unroll and the groups."""
    apply_fn, params, syn, real, labels = setup
    monkeypatch.setattr(matching, "STORED_GROUP_GRADS_BYTES", limit)
    chosen = matching._group_scorer(params, real)
    assert chosen is (
        matching._scored_groups_stored if limit else matching._scored_groups_recomputed
    )
    weights = jax.random.uniform(jax.random.key(7), (C, K))
    kwargs = dict(key=jax.random.key(8), apply_fn=apply_fn, num_steps=3, learning_rate=0.05)

    def reference(s):
        trained = matching.unrolled_training(
            params, s.reshape(C * IPC, HW, HW, 1), labels.reshape(-1), **kwargs
        )
        ce = lambda x, c: matching.mean_cross_entropy(apply_fn, trained, x, jnp.full(M, c))
        per_class = jax.vmap(lambda xs, c: jax.vmap(lambda x: ce(x, c))(xs))
        return jnp.sum(weights * per_class(real, jnp.arange(C)))

    def scored(s):
        losses = matching.risk(
            params, s, labels=labels, real=real, group_batch=group_batch, **kwargs
        )
        return jnp.sum(weights * losses)

    want_value, want = jax.jit(jax.value_and_grad(reference))(syn)
    value, got = jax.jit(jax.value_and_grad(scored))(syn)
    np.testing.assert_allclose(value, want_value, rtol=1e-5)
    assert float(jnp.abs(want).max()) > 0
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * float(jnp.abs(want).max()))


def test_gradient_family_siamese_augmentation_shared_by_syn_and_real(setup):
    """With real == synthetic batch, a shared DSA draw gives identical gradients: loss 0."""
    apply_fn, params, syn, _, labels = setup
    real = jnp.broadcast_to(syn[:, None], (C, K, IPC, HW, HW, 1))
    losses = jax.jit(
        functools.partial(
            matching.gradient,
            apply_fn=apply_fn,
            augment_fn=matching.siamese_augment("color_crop_cutout_scale_rotate"),
        )
    )(params, syn, labels=labels, real=real, key=jax.random.key(5))
    # Not exactly 0: DC's 1e-6 in the cosine denominator leaves ~1e-6 / |g|^2 per output unit.
    np.testing.assert_allclose(losses, 0.0, atol=5e-3)


def test_distribution_family_matches_numpy(setup):
    apply_fn, params, syn, real, labels = setup
    losses = matching.distribution(
        params, syn, labels=labels, real=real, key=jax.random.key(0), apply_fn=apply_fn
    )
    embed = lambda x: np.asarray(apply_fn(params, x)[1], np.float64)
    for c in range(C):
        for k in range(K):
            expected = np.sum((embed(syn[c]).mean(0) - embed(real[c, k]).mean(0)) ** 2)
            np.testing.assert_allclose(losses[c, k], expected, rtol=1e-4)


def _numpy_idm_losses(apply_fn, params, syn, real, labels, weight, running=None):
    """DM's squared distance of mean embeddings plus weight x accuracy (%) of the network on
    the group's real images (or the given running accuracy) x its mean cross-entropy on the
    class's synthetic images, float64."""
    out = lambda x: [np.asarray(a, np.float64) for a in apply_fn(params, x)]
    losses = np.zeros((C, K))
    for c in range(C):
        syn_logits, syn_emb = out(syn[c])
        shifted = syn_logits - syn_logits.max(-1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
        syn_ce = -np.mean(log_probs[np.arange(IPC), np.asarray(labels[c])])
        for k in range(K):
            real_logits, real_emb = out(real[c, k])
            accuracy = 100.0 * np.mean(real_logits.argmax(-1) == c) if running is None else running
            distance = np.sum((syn_emb.mean(0) - real_emb.mean(0)) ** 2)
            losses[c, k] = distance + weight * accuracy * syn_ce
    return losses


def _idm_losses(setup, images, targets, weight, **kwargs):
    apply_fn, params, _, real, _ = setup
    return matching.distribution(
        params,
        images,
        labels=targets,
        real=real,
        key=jax.random.key(0),
        apply_fn=apply_fn,
        ce_weight=weight,
        **kwargs,
    )


@pytest.mark.parametrize("weight", [0.0, 0.5])
def test_idm_loss_is_dm_plus_accuracy_weighted_cross_entropy(setup, weight):
    """IDM's class-aware regulariser (`match.syn_ce`) against a float64 NumPy reference."""
    apply_fn, params, syn, real, labels = setup
    expected = _numpy_idm_losses(apply_fn, params, syn, real, labels, weight)
    np.testing.assert_allclose(_idm_losses(setup, syn, labels, weight), expected, rtol=1e-4)
    if weight:  # The term is not vanishing here, so the comparison tests it.
        assert not np.allclose(expected, _numpy_idm_losses(apply_fn, params, syn, real, labels, 0))


@pytest.mark.parametrize("running", [0.0, 37.5])
def test_idm_regulariser_weighted_by_a_running_accuracy(setup, running):
    """`ce_accuracy` (IDM's meter, one value for every group) replaces the groups' own."""
    apply_fn, params, syn, real, labels = setup
    losses = _idm_losses(setup, syn, labels, 0.5, ce_accuracy=jnp.float32(running))
    expected = _numpy_idm_losses(apply_fn, params, syn, real, labels, 0.5, running=running)
    np.testing.assert_allclose(losses, expected, rtol=1e-4)
    if not running:  # An empty meter: DM's loss alone.
        np.testing.assert_allclose(losses, _idm_losses(setup, syn, labels, 0.0), rtol=1e-6)


def test_the_idm_regulariser_reaches_learned_labels_and_images(setup):
    _, _, syn, _, labels = setup
    soft = jax.nn.one_hot(labels, C) * 0.9 + 0.1 / C
    total = lambda images, targets, weight: jnp.sum(_idm_losses(setup, images, targets, weight))
    grad_images, grad_labels = jax.grad(total, argnums=(0, 1))(syn, soft, 0.5)
    assert float(jnp.abs(grad_labels).max()) > 0
    without, _ = jax.grad(total, argnums=(0, 1))(syn, soft, 0.0)
    assert not np.allclose(grad_images, without)


def _unrolled_sum(apply_fn, params, labels, *, remat, num_steps):
    """images -> sum of the parameters after `num_steps` unrolled SGD steps (lr 0.1)."""

    def loss(images):
        trained = matching.unrolled_training(
            params,
            images,
            labels,
            key=jax.random.key(0),
            apply_fn=apply_fn,
            num_steps=num_steps,
            learning_rate=0.1,
            remat=remat,
        )
        return sum(jnp.sum(leaf) for leaf in jax.tree.leaves(trained))

    return loss


def test_remat_segment_stores_fewest_carries_and_avoids_a_remainder():
    stored = lambda t, s: -(-t // s) + s  # Boundary carries + one recomputed segment's.
    for t in range(1, 101):
        s = matching.remat_segment(t)
        assert 1 <= s <= t
        assert stored(t, s) == min(stored(t, d) for d in range(1, t + 1))
        if any(t % d == 0 and stored(t, d) == stored(t, s) for d in range(1, t + 1)):
            assert t % s == 0  # A second scan for a remainder only when dividing stores more.
    assert matching.remat_segment(10) == 5  # Not 4 + a remainder of 2: same 7 carries.
    assert matching.remat_segment(5) == 3  # 3 + 2 stores 5 carries, 5 or 1 x 5 store 6.


@pytest.mark.parametrize("num_steps", [5, 6])  # Nested: 3 + a remainder of 2; 2 segments of 3.
def test_unrolled_training_remat_and_python_loop_agree(setup, num_steps):
    apply_fn, params, syn, _, labels = setup
    images, flat_labels = syn.reshape(-1, HW, HW, 1), labels.reshape(-1)
    run = lambda remat: jax.jit(
        functools.partial(
            matching.unrolled_training,
            apply_fn=apply_fn,
            num_steps=num_steps,
            learning_rate=0.1,
            remat=remat,
        )
    )(params, images, flat_labels, key=jax.random.key(0))
    # Independent: plain Python loop of SGD steps.
    reference = params
    sgd_grad = jax.jit(jax.grad(functools.partial(matching.mean_cross_entropy, apply_fn)))
    for _ in range(num_steps):
        g = sgd_grad(reference, images, flat_labels)
        reference = jax.tree.map(lambda p, g: p - 0.1 * g, reference, g)
    for remat in matching.REMATS:
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
            run(remat),
            reference,
        )
    # The gradient w.r.t. the images flows through the unroll identically with and without remat.
    grad_of = lambda remat: jax.jit(
        jax.grad(_unrolled_sum(apply_fn, params, flat_labels, remat=remat, num_steps=num_steps))
    )(images)
    expected = grad_of("none")
    assert float(jnp.abs(expected).max()) > 0
    for remat in ("nested", "step"):
        np.testing.assert_allclose(grad_of(remat), expected, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="remat"):
        grad_of("sqrt")


def test_nested_remat_peak_memory_grows_sublinearly(setup):
    apply_fn, params, syn, _, labels = setup
    images, flat_labels = syn.reshape(-1, HW, HW, 1), labels.reshape(-1)

    def temp_bytes(remat, num_steps):
        loss = _unrolled_sum(apply_fn, params, flat_labels, remat=remat, num_steps=num_steps)
        compiled = jax.jit(jax.grad(loss)).lower(images).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    step = {t: temp_bytes("step", t) for t in (16, 64)}
    nested = {t: temp_bytes("nested", t) for t in (16, 64)}
    # Per-step remat stores all T iterates; nested stores ~2 sqrt(T): 4x the steps costs far
    # less than 4x the memory, and less than per-step remat at T=64.
    assert nested[64] < step[64]
    assert nested[64] - nested[16] < 0.5 * (step[64] - step[16])


def _optax_loop(apply_fn, params, images, labels, *, steps, optimizer, lr):
    """Reference: a plain Python loop of optax steps (no augmentation); Adam with the eps_root
    of 1e-8 that makes its meta-gradient finite."""
    inner = optax.adam(lr, eps_root=1e-8) if optimizer == "adam" else optax.sgd(lr)
    grad = jax.jit(jax.grad(functools.partial(matching.mean_cross_entropy, apply_fn)))
    state = inner.init(params)
    for _ in range(steps):
        updates, state = inner.update(grad(params, images, labels), state, params)
        params = optax.apply_updates(params, updates)
    return params


def test_unrolled_adam_is_a_loop_of_adam_steps(setup):
    _, _, syn, _, labels = setup
    images, flat_labels = syn.reshape(-1, HW, HW, 1), labels.reshape(-1)
    # No normalisation: instance norm gives the conv biases an exactly-zero gradient whose float
    # noise Adam scales to +-lr steps, differently in an eager loop and a compiled scan.
    model = models.instantiate("convnet", num_classes=C, width=8, depth=2, norm="none")
    params = models.init_params(model, jax.random.key(0), (HW, HW, 1))
    apply_fn = lambda p, x: model.apply({"params": p}, x)
    for remat in matching.REMATS:
        trained = matching.unrolled_training(
            params, images, flat_labels, key=jax.random.key(0), apply_fn=apply_fn,
            num_steps=4, learning_rate=0.01, remat=remat, optimizer="adam",
        )  # fmt: skip
        expected = _optax_loop(
            apply_fn, params, images, flat_labels, steps=4, optimizer="adam", lr=0.01
        )
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), trained, expected
        )


def test_truncated_unroll_backpropagates_only_its_window(setup):
    """RaT-BPTT: N ~ U[window, T] steps, the gradient through the last `window` only; the
    forward equals N plain steps, the gradient that of the window from the prefix's result."""
    apply_fn, params, syn, _, labels = setup
    images, flat_labels = syn.reshape(-1, HW, HW, 1), labels.reshape(-1)
    key, total, window = jax.random.key(3), 6, 2
    train = lambda x: matching.unrolled_training(
        params, x, flat_labels, key=key, apply_fn=apply_fn, num_steps=total,
        learning_rate=0.1, window=window, remat="step",
    )  # fmt: skip
    prefix = int(jax.random.randint(jax.random.split(key, 3)[0], (), 0, total - window + 1))
    forward = _optax_loop(
        apply_fn, params, images, flat_labels, steps=prefix + window, optimizer="sgd", lr=0.1
    )
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), train(images), forward
    )
    start = _optax_loop(
        apply_fn, params, images, flat_labels, steps=prefix, optimizer="sgd", lr=0.1
    )
    through_window = lambda x: sum(
        jnp.sum(leaf)
        for leaf in jax.tree.leaves(
            matching.unrolled_training(
                start,
                x,
                flat_labels,
                key=key,
                apply_fn=apply_fn,
                num_steps=window,
                learning_rate=0.1,
                remat="none",
            )  # fmt: skip
        )
    )
    total_sum = lambda x: sum(jnp.sum(leaf) for leaf in jax.tree.leaves(train(x)))
    np.testing.assert_allclose(
        jax.grad(total_sum)(images), jax.grad(through_window)(images), rtol=1e-3, atol=1e-6
    )
    with pytest.raises(ValueError, match="window=7 must lie in"):
        matching.unrolled_training(
            params, images, flat_labels, key=key, apply_fn=apply_fn, num_steps=6,
            learning_rate=0.1, window=7,
        )  # fmt: skip


def test_gradient_through_adam_unroll_stays_finite_with_a_dead_unit(monkeypatch):
    # A hidden ReLU unit dead on every image: the next layer's weights from it get gradient 0
    # (Adam's second moment 0) that still depends on the images through the backward pass.
    w1 = jnp.stack([jnp.full(4, 0.5), jnp.full(4, -0.5), jnp.zeros(4)], axis=1)  # (4, 3)
    params = {"w1": w1, "b1": jnp.array([0.0, 0.0, -100.0]), "w2": jnp.ones((3, 2))}

    def apply_fn(p, x):
        hidden = jax.nn.relu(x.reshape(x.shape[0], -1) @ p["w1"] + p["b1"])
        return hidden @ p["w2"], hidden  # (logits, embedding), as the models return.

    images = jnp.linspace(-1.0, 1.0, 8 * 4).reshape(8, 2, 2, 1)
    labels = jnp.arange(8) % 2

    def image_grad():
        def loss(x):
            trained = matching.unrolled_training(
                params, x, labels, key=jax.random.key(0), apply_fn=apply_fn, num_steps=3,
                learning_rate=0.01, optimizer="adam",
            )  # fmt: skip
            return matching.mean_cross_entropy(apply_fn, trained, x, labels)

        return jax.grad(loss)(images)

    grad = image_grad()
    assert bool(jnp.all(jnp.isfinite(grad))) and float(jnp.abs(grad).max()) > 0
    monkeypatch.setattr(matching, "ADAM_EPS_ROOT", 0.0)  # The case is the one that breaks.
    assert not bool(jnp.all(jnp.isfinite(image_grad())))
