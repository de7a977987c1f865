"""Tests for jaxdd.evaluate: training from scratch, prediction and (group) accuracy.

Networks are tiny MLPs on 8x8 images so that every compiled training program stays cheap on CPU.
"""

import chex
import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxdd import models, retrain

jax.config.update("jax_enable_x64", False)

EPOCHS = 10
BATCH = 16
AUGMENT = "crop_flip"


def bright_vs_dark(n: int, seed: int, shape=(8, 8, 1)) -> tuple[np.ndarray, np.ndarray]:
    """Two classes: images around +0.5 (class 1) or -0.5 (class 0) plus N(0, 0.5^2) noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n).astype(np.int32)
    images = (labels - 0.5)[:, None, None, None] + rng.normal(scale=0.5, size=(n, *shape))
    return images.astype(np.float32), labels


def _mlp(**kwargs):
    return models.instantiate("mlp", num_classes=2, **{"width": 16, "depth": 2, **kwargs})


def _max_abs_diff(a, b) -> float:
    return max(jax.tree.leaves(jax.tree.map(lambda x, y: float(jnp.max(jnp.abs(x - y))), a, b)))


@pytest.fixture(scope="module")
def problem():
    return bright_vs_dark(32, seed=0), bright_vs_dark(200, seed=1)


@pytest.fixture(scope="module")
def keys():
    return jax.random.split(jax.random.key(0), 2)


@pytest.fixture(scope="module")
def trained(problem, keys):
    (images, labels), _ = problem
    return retrain.train_models(
        _mlp(), images, labels, keys=keys, epochs=EPOCHS, batch_size=BATCH, augment=AUGMENT
    )


def test_learns_separable_problem(problem, trained):
    _, (test_images, test_labels) = problem
    predictions = retrain.predict(_mlp(), trained, test_images)
    assert predictions.shape == (2, 200)
    np.testing.assert_array_less(0.9, np.asarray(retrain.accuracy(predictions, test_labels)))


def test_models_differ_and_rerun_is_identical(problem, keys, trained):
    (images, labels), _ = problem
    leaves = jax.tree.leaves(trained)
    assert all(leaf.shape[0] == 2 for leaf in leaves)
    assert any(not np.allclose(leaf[0], leaf[1]) for leaf in leaves)
    again = retrain.train_models(
        _mlp(), images, labels, keys=keys, epochs=EPOCHS, batch_size=BATCH, augment=AUGMENT
    )
    chex.assert_trees_all_equal(trained, again)


@pytest.mark.parametrize("vectorize", [True, False], ids=["vmap", "map"])
def test_networks_do_not_mix_seeds(problem, keys, trained, vectorize):
    (images, labels), (test_images, _) = problem
    both = retrain.train_models(
        _mlp(),
        images,
        labels,
        keys=keys,
        epochs=EPOCHS,
        batch_size=BATCH,
        augment=AUGMENT,
        vectorize=vectorize,
    )
    # vmapped and mapped networks agree to float rounding, and so do their predictions.
    assert _max_abs_diff(both, trained) < 1e-5
    np.testing.assert_array_equal(
        retrain.predict(_mlp(), both, test_images, vectorize=vectorize),
        retrain.predict(_mlp(), trained, test_images, vectorize=not vectorize),
    )
    for i in range(2):
        alone = retrain.train_models(
            _mlp(),
            images,
            labels,
            keys=keys[i : i + 1],
            epochs=EPOCHS,
            batch_size=BATCH,
            augment=AUGMENT,
            vectorize=vectorize,
        )
        model_i = jax.tree.map(lambda leaf, i=i: leaf[i : i + 1], both)
        assert _max_abs_diff(model_i, alone) < 1e-5


def test_compiled_once_for_new_data_and_hyperparameters(monkeypatch):
    # 10x10 images: a shape no other test uses, so the first call below must trace.
    monkeypatch.setattr(retrain, "_train_one", chex.assert_max_traces(retrain._train_one, n=1))
    model = _mlp(width=8, depth=1)
    keys = jax.random.split(jax.random.key(1), 2)
    cache_before = retrain._train_stacked._cache_size()
    first = retrain.train_models(model, *bright_vs_dark(8, 2, (10, 10, 1)), keys=keys, epochs=2)
    second = retrain.train_models(
        model, *bright_vs_dark(8, 3, (10, 10, 1)), keys=keys, epochs=2, learning_rate=0.05
    )
    assert retrain._train_stacked._cache_size() == cache_before + 1
    assert _max_abs_diff(first, second) > 0


def sgd_reference(x, onehot, w, b, *, lr, momentum, weight_decay, epochs):
    """Full-batch softmax regression with PyTorch SGD (coupled decay, momentum, x0.1 at half)."""
    x, w, b = (np.asarray(a, np.float64) for a in (x.reshape(len(x), -1), w, b))
    buf_w, buf_b = np.zeros_like(w), np.zeros_like(b)
    for step in range(epochs):
        logits = x @ w + b
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        g_logits = (p - onehot) / len(x)
        g_w = x.T @ g_logits + weight_decay * w
        g_b = g_logits.sum(0) + weight_decay * b
        buf_w, buf_b = momentum * buf_w + g_w, momentum * buf_b + g_b
        rate = lr if step < (epochs + 1) // 2 else 0.1 * lr
        w, b = w - rate * buf_w, b - rate * buf_b
    return w, b


@pytest.mark.parametrize("soft", [False, True], ids=["int_labels", "soft_labels"])
def test_matches_numpy_sgd_reference(soft):
    images, labels = bright_vs_dark(16, seed=5)
    onehot = np.eye(2, dtype=np.float32)[labels]
    # depth 1: the MLP is a single Dense, i.e. softmax regression on the flattened pixels.
    model = _mlp(depth=1)
    key = jax.random.key(3)
    hp = dict(learning_rate=0.5, momentum=0.9, weight_decay=0.1)
    trained = retrain.train_models(
        model, images, onehot if soft else labels, keys=key[None], epochs=6, **hp
    )
    # train_models initialises network i from split(keys[i], 3)[0].
    init = models.init_params(model, jax.random.split(key, 3)[0], images.shape[1:])
    w, b = sgd_reference(
        images,
        onehot,
        init["fc"]["kernel"],
        init["fc"]["bias"],
        lr=hp["learning_rate"],
        momentum=hp["momentum"],
        weight_decay=hp["weight_decay"],
        epochs=6,
    )
    np.testing.assert_allclose(trained["fc"]["kernel"][0], w, atol=1e-5)
    np.testing.assert_allclose(trained["fc"]["bias"][0], b, atol=1e-5)


@pytest.mark.parametrize("total_steps", [1, 7, 10])
def test_learning_rate_schedule(total_steps):
    schedule = retrain.learning_rate_schedule(0.01, total_steps=total_steps)
    half = -(-total_steps // 2)
    for step in range(total_steps):
        expected = 0.01 if step < half else 0.001
        np.testing.assert_allclose(schedule(step), expected, rtol=1e-6)
    if total_steps >= 2:  # Step < half is lr, step >= half is lr / 10.
        np.testing.assert_allclose(schedule(total_steps // 2 - 1), 0.01, rtol=1e-6)
        np.testing.assert_allclose(schedule(total_steps - 1), 0.001, rtol=1e-6)


@pytest.mark.parametrize("epochs, per_epoch", [(12, 3), (300, 1), (5, 2)])
def test_idc_learning_rate_schedule(epochs, per_epoch):
    # PyTorch's MultiStepLR(milestones=[2E // 3, 5E // 6], gamma=0.2) stepped once per epoch:
    # epoch e (0-based) trains at lr * 0.2 ** (number of milestones <= e).
    schedule = retrain.learning_rate_schedule(
        0.01, total_steps=epochs * per_epoch, schedule="idc", epochs=epochs
    )
    milestones = [2 * epochs // 3, 5 * epochs // 6]
    for step in range(epochs * per_epoch):
        expected = 0.01 * 0.2 ** sum(step // per_epoch >= m for m in milestones)
        np.testing.assert_allclose(schedule(step), expected, rtol=1e-6, err_msg=str(step))


def test_idc_schedule_needs_whole_epochs():
    with pytest.raises(ValueError, match="equal epochs"):
        retrain.learning_rate_schedule(0.01, total_steps=10, schedule="idc", epochs=3)
    with pytest.raises(ValueError, match="unknown lr_schedule"):
        retrain.learning_rate_schedule(0.01, total_steps=10, schedule="cosine")


def _index_images(n: int, size: int = 12) -> jnp.ndarray:
    """Image i is the constant i + 1: which image a pixel came from is its value."""
    return jnp.broadcast_to(jnp.arange(1.0, n + 1)[:, None, None, None], (n, size, size, 2))


def test_cutmix_pastes_one_box_from_the_permuted_batch():
    images = _index_images(6)
    cut = jax.jit(lambda key: retrain.cutmix(images, key, probability=1.0))
    areas = []
    for key in jax.random.split(jax.random.key(0), 20):
        mixed, permutation, ratio = cut(key)
        assert sorted(np.asarray(permutation).tolist()) == list(range(6))
        source = np.asarray(mixed[..., 0]) - 1  # (n, H, W): which image each pixel is from.
        own = np.arange(6)[:, None, None]
        assert np.all((source == own) | (source == np.asarray(permutation)[:, None, None]))
        # One box, the same for every image: where an image differs from its partner.
        moved = np.asarray(permutation) != np.arange(6)
        if not moved.any():
            continue
        box = source[moved][0] != np.flatnonzero(moved)[0]
        for i in np.flatnonzero(moved):
            np.testing.assert_array_equal(source[i] != i, box)
        rows, cols = np.flatnonzero(box.any(1)), np.flatnonzero(box.any(0))
        if box.any():  # A rectangle: every pixel of its bounding rows x cols is in it.
            assert box[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].all()
        np.testing.assert_allclose(ratio, 1 - box.mean(), rtol=1e-6)
        areas.append(box.mean())
    # lam ~ Beta(1, 1): boxes of many sizes, some empty or near-empty, none the whole image
    # more than rarely.
    assert len(set(areas)) > 5 and min(areas) < 0.2


def test_cutmix_probability():
    images = _index_images(4)
    keys = jax.random.split(jax.random.key(1), 400)
    never = jax.vmap(lambda k: retrain.cutmix(images, k, probability=0.0))(keys)
    np.testing.assert_array_equal(never[0], jnp.broadcast_to(images, never[0].shape))
    np.testing.assert_array_equal(never[2], 1.0)
    half = jax.vmap(lambda k: retrain.cutmix(images, k, probability=0.5))(keys)[2]
    mixed = float(np.mean(np.asarray(half) < 1.0))
    # P(mixed) = 0.5 * P(non-empty box): 0.5 * P(floor(12 sqrt(1 - lam)) >= 2) = 0.486 for a
    # 12x12 image and lam ~ U(0, 1); 400 draws: a standard deviation of 0.025.
    assert 0.38 < mixed < 0.59, mixed


def test_idc_protocol_trains_and_differs_from_dc(problem, keys, trained):
    (images, labels), (test_images, test_labels) = problem
    idc = retrain.train_models(
        _mlp(), images, labels, keys=keys, epochs=EPOCHS, batch_size=BATCH, augment=AUGMENT,
        augment_mode="idc", lr_schedule="idc", cutmix_probability=0.5,
    )  # fmt: skip
    predictions = retrain.predict(_mlp(), idc, test_images)
    assert np.all(np.asarray(retrain.accuracy(predictions, test_labels)) > 0.9)
    assert _max_abs_diff(idc, trained) > 1e-3
    with pytest.raises(ValueError, match="cutmix_probability"):
        retrain.train_models(_mlp(), images, labels, keys=keys, epochs=1, cutmix_probability=2)
    with pytest.raises(ValueError, match="lr_schedule"):
        retrain.train_models(_mlp(), images, labels, keys=keys, epochs=1, lr_schedule="cos")


def test_optimizer_is_pytorch_sgd_with_decay():
    tx = retrain.create_optimizer(learning_rate=0.1, total_steps=4, momentum=0.9, weight_decay=0.5)
    params = jnp.array([2.0, -1.0])
    state = tx.init(params)
    p, buf = np.array([2.0, -1.0]), np.zeros(2)
    for step in range(4):
        grad = np.array([1.0, 3.0])
        updates, state = tx.update(jnp.asarray(grad, jnp.float32), state, params)
        params = params + updates
        buf = 0.9 * buf + grad + 0.5 * p
        p = p - (0.1 if step < 2 else 0.01) * buf
        np.testing.assert_allclose(params, p, rtol=1e-5)


@pytest.mark.parametrize("total_steps", [1000, 2000, 300])
def test_frepo_learning_rate_schedule(total_steps):
    # FRePo's script/eval.py 221-225: linear 0 -> lr over 500 steps, then
    # lr * (0.01 + 0.99 * (1 + cos(pi * t / T)) / 2) with t = step - 500, T = max(total - 500, 1),
    # held at 0.01 lr after T.
    lr, warmup = 3e-4, 500
    schedule = retrain.learning_rate_schedule(lr, total_steps=total_steps, schedule="frepo")
    decay = max(total_steps - warmup, 1)
    for step in [0, 1, 250, 499, 500, 501, 750, total_steps - 1, total_steps + 10]:
        if step < warmup:
            expected = lr * step / warmup
        else:
            t = min(step - warmup, decay)
            expected = lr * (0.01 + 0.99 * 0.5 * (1 + np.cos(np.pi * t / decay)))
        np.testing.assert_allclose(schedule(step), expected, rtol=1e-5, atol=1e-12, err_msg=step)


def test_adam_optimizer_is_adam_after_coupled_decay():
    # PyTorch's Adam(weight_decay=wd): g + wd * p, then Adam's moments; eps 1e-8 as optax's.
    lr, wd, b1, b2, eps = 0.1, 0.5, 0.9, 0.999, 1e-8
    tx = retrain.create_optimizer(
        learning_rate=lr, total_steps=3, weight_decay=wd, optimizer="adam"
    )  # 'dc' schedule: lr for steps 0-1, lr / 10 at step 2.
    params = jnp.array([2.0, -1.0])
    state = tx.init(params)
    p, m, v = np.array([2.0, -1.0]), np.zeros(2), np.zeros(2)
    for step in range(3):
        grad = np.array([1.0, 3.0]) * (step + 1)
        updates, state = tx.update(jnp.asarray(grad, jnp.float32), state, params)
        params = params + updates
        g = grad + wd * p
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g**2
        m_hat, v_hat = m / (1 - b1 ** (step + 1)), v / (1 - b2 ** (step + 1))
        p = p - (lr if step < 2 else lr / 10) * m_hat / (np.sqrt(v_hat) + eps)
        np.testing.assert_allclose(params, p, rtol=1e-5)
    with pytest.raises(ValueError, match="unknown optimizer"):
        retrain.create_optimizer(learning_rate=lr, total_steps=3, optimizer="lamb")


def test_mse_to_centred_targets():
    logits = jnp.array([[0.5, -0.2, 0.1], [1.0, 0.0, -1.0]])
    hard = jnp.array([2, 0])
    one_hot = np.eye(3)[[2, 0]]
    expected = 0.5 * np.sum((np.asarray(logits) - (one_hot - 1 / 3)) ** 2, axis=-1)
    np.testing.assert_allclose(retrain.mse_to_centred(logits, hard), expected, rtol=1e-6)
    # Soft labels: the probabilities minus 1/C; a one-hot probability equals the hard label.
    np.testing.assert_allclose(
        retrain.mse_to_centred(logits, jnp.asarray(one_hot, jnp.float32)), expected, rtol=1e-6
    )
    soft = jnp.array([[0.2, 0.3, 0.5], [0.6, 0.2, 0.2]])
    expected_soft = 0.5 * np.sum((np.asarray(logits) - (np.asarray(soft) - 1 / 3)) ** 2, -1)
    np.testing.assert_allclose(retrain.mse_to_centred(logits, soft), expected_soft, rtol=1e-6)
    # Zero exactly at the centred target: FRePo's regression, not cross-entropy.
    np.testing.assert_allclose(
        retrain.mse_to_centred(jnp.asarray(one_hot - 1 / 3), hard), 0, atol=1e-12
    )
    with pytest.raises(ValueError, match="match neither"):
        retrain.mse_to_centred(logits, jnp.zeros((2, 4)))
    with pytest.raises(ValueError, match="unknown loss"):
        retrain.cutmix_loss(logits, hard, None, 1.0, loss="l1")


def test_frepo_protocol_trains_and_differs_from_dc(problem, keys, trained):
    (images, labels), (test_images, test_labels) = problem
    # 600 full-batch steps: past FRePo's 500 warm-up steps into its cosine decay.
    frepo = retrain.train_models(
        _mlp(), images, labels, keys=keys, epochs=600, batch_size=500, augment=AUGMENT,
        learning_rate=1e-3, momentum=0.0, weight_decay=0.0, optimizer="adam", loss="mse",
        lr_schedule="frepo",
    )  # fmt: skip
    predictions = retrain.predict(_mlp(), frepo, test_images)
    assert np.all(np.asarray(retrain.accuracy(predictions, test_labels)) > 0.8)
    assert _max_abs_diff(frepo, trained) > 1e-3
    with pytest.raises(ValueError, match="optimizer must be one of"):
        retrain.train_models(_mlp(), images, labels, keys=keys, epochs=1, optimizer="lamb")
    with pytest.raises(ValueError, match="loss one of"):
        retrain.train_models(_mlp(), images, labels, keys=keys, epochs=1, loss="hinge")


def test_predict_is_batched_consistently(problem, trained):
    _, (test_images, _) = problem
    model = _mlp()
    full = retrain.predict(model, trained, test_images)
    chunked = retrain.predict(model, trained, test_images, batch_size=7)
    logits = jax.vmap(lambda p: model.apply({"params": p}, test_images)[0])(trained)
    np.testing.assert_array_equal(full, chunked)
    np.testing.assert_array_equal(full, np.argmax(logits, axis=-1))
    assert full.dtype == jnp.int32


def group_accuracy_reference(predictions, labels, groups, num_groups):
    out = np.full((predictions.shape[0], num_groups), np.nan)
    for g in range(num_groups):
        members = groups == g
        if members.any():
            out[:, g] = (predictions[:, members] == labels[members]).mean(axis=1)
    return out


def test_accuracy_and_group_accuracy_against_numpy():
    rng = np.random.default_rng(6)
    predictions = rng.integers(0, 3, (4, 50))
    labels = rng.integers(0, 3, 50)
    groups = rng.choice([0, 1, 3, 4], size=50)  # Group 2 is empty.
    accuracy = jax.jit(retrain.accuracy)(predictions, labels)
    np.testing.assert_allclose(accuracy, (predictions == labels).mean(axis=1), rtol=1e-6)
    per_group = jax.jit(retrain.group_accuracy, static_argnums=3)(predictions, labels, groups, 5)
    expected = group_accuracy_reference(predictions, labels, groups, 5)
    np.testing.assert_allclose(per_group, expected, rtol=1e-6)
    assert np.isnan(per_group[:, 2]).all()
    assert per_group.shape == (4, 5)


@settings(max_examples=25, deadline=None)
@given(
    hnp.arrays(np.int32, (2, 30), elements=st.integers(0, 2)),
    hnp.arrays(np.int32, 30, elements=st.integers(0, 2)),
    hnp.arrays(np.int32, 30, elements=st.integers(0, 3)),
)
def test_group_accuracies_weighted_by_size_give_accuracy(predictions, labels, groups):
    per_group = np.asarray(retrain.group_accuracy(predictions, labels, groups, 4))
    sizes = np.bincount(groups, minlength=4)
    pooled = np.nansum(per_group * sizes, axis=1) / sizes.sum()
    np.testing.assert_allclose(pooled, retrain.accuracy(predictions, labels), atol=1e-6)


def test_rejects_bad_inputs(problem, keys):
    (images, labels), _ = problem
    model = _mlp()
    with pytest.raises(ValueError, match="labels must be"):
        retrain.train_models(model, images, labels[:-1], keys=keys, epochs=1)
    with pytest.raises(ValueError, match="images must be"):
        retrain.train_models(model, images[0], labels, keys=keys, epochs=1)
    with pytest.raises(ValueError, match="Unknown augmentation"):
        retrain.train_models(model, images, labels, keys=keys, epochs=1, augment="warp")
    with pytest.raises(ValueError, match="keys must stack"):
        retrain.train_models(model, images, labels, keys=keys[0], epochs=1)
    with pytest.raises(ValueError, match="epochs"):
        retrain.train_models(model, images, labels, keys=keys, epochs=0)
    with pytest.raises(ValueError, match="predictions must be"):
        retrain.accuracy(np.zeros(5, np.int32), np.zeros(5, np.int32))
