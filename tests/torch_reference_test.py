"""Tests for benchmarks/torch_reference.py: the PyTorch baseline computes what jaxdd computes."""

import functools

import pytest

torch = pytest.importorskip("torch")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import torch_reference  # noqa: E402
from jaxdd import matching, models, risk, step  # noqa: E402

IMAGE_SHAPE = (8, 8, 1)
C, K, M, IPC = 3, 2, 4, 2


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Run torch single-threaded here: once scipy's OpenBLAS is loaded (conftest imports
    jaxdd.data -> scikit-learn -> scipy), torch's OpenMP threads contend with its threads on
    small CPUs and these tiny problems run ~100x slower; one thread is also the fastest for
    them."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _random_params(model, seed=0, image_shape=IMAGE_SHAPE):
    """Flax params with every leaf random (norm scales and biases too, so a swap would show)."""
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, *image_shape)))
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        if len(leaf.shape) >= 2:
            fan_in = int(np.prod(leaf.shape[:-1]))
            return rng.normal(size=leaf.shape).astype(np.float32) / np.sqrt(fan_in)
        if path[-1].key == "scale":
            return (1.0 + 0.2 * rng.normal(size=leaf.shape)).astype(np.float32)
        return (0.1 * rng.normal(size=leaf.shape)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(fill, shapes["params"])


@pytest.fixture(scope="module")
def problem():
    """3 classes x 2 clusters x 4 real, ipc 2, 8x8x1, ConvNet width 8 depth 2 (2x2x8 features)."""
    model = models.ConvNet(num_classes=C, width=8, depth=2)
    params = _random_params(model)
    rng = np.random.default_rng(1)
    syn = rng.normal(size=(C, IPC, *IMAGE_SHAPE)).astype(np.float32)
    real = rng.normal(size=(C, K, M, *IMAGE_SHAPE)).astype(np.float32)
    real += np.arange(C, dtype=np.float32)[:, None, None, None, None, None]
    labels = np.repeat(np.arange(C), IPC).reshape(C, IPC)

    net = torch_reference.ConvNet(IMAGE_SHAPE, C, width=8, depth=2)
    net.load_state_dict(torch_reference.params_from_flax(params, feature_hw=net.feature_hw))
    return model, params, net, syn, real, labels


def _nchw(x):
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, -3)))


def test_convnet_matches_jaxdd_logits(problem):
    model, params, net, syn, _, _ = problem
    assert net.feature_hw == (2, 2)  # Flatten order matters: the map is not 1x1.
    images = syn.reshape(-1, *IMAGE_SHAPE)
    expected, _ = model.apply({"params": params}, images)
    with torch.no_grad():
        got = net(_nchw(images)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("alpha", [0.4, 1.0])
def test_robust_step_matches_jaxdd_losses_and_image_gradient(problem, alpha):
    model, params, net, syn, real, labels = problem
    losses_fn = functools.partial(
        matching.gradient,
        params,
        labels=jnp.asarray(labels),
        real=jnp.asarray(real),
        key=jax.random.key(0),
        apply_fn=lambda p, x: model.apply({"params": p}, x),
    )
    (_, expected_losses), expected_grad = jax.jit(
        jax.value_and_grad(
            functools.partial(
                step.robust_objective, losses_fn=losses_fn, risk_name="cvar", alpha=alpha
            ),
            has_aux=True,
        )
    )(jnp.asarray(syn))

    syn_t = _nchw(syn).requires_grad_(True)
    risk_value, losses, grad = torch_reference.robust_matching_step(
        net, syn_t, torch.from_numpy(labels), _nchw(real), alpha
    )
    np.testing.assert_allclose(losses.numpy(), expected_losses, rtol=1e-4)
    np.testing.assert_allclose(
        float(risk_value), risk.cvar(expected_losses.reshape(-1), alpha), rtol=1e-4
    )
    grad = np.moveaxis(grad.numpy(), -3, -1)  # back to (C, ipc, H, W, Ch)
    # jaxdd's objective is C * risk (DC's sum over classes, `step.robust_objective`), the
    # torch step's the risk itself.
    expected_grad = expected_grad / C
    scale = float(np.abs(expected_grad).max())
    assert scale > 0
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-4, atol=1e-5 * scale)
    # Only the images' gradient is accumulated, as in jaxdd.
    assert all(p.grad is None for p in net.parameters())


@pytest.mark.parametrize("alpha", [0.05, 0.3, 0.5, 0.77, 1.0])
def test_cvar_matches_jaxdd(alpha):
    losses = np.random.default_rng(2).normal(size=13).astype(np.float32)
    losses[3] = losses[7]  # a tie
    got = torch_reference.cvar(torch.from_numpy(losses), alpha)
    np.testing.assert_allclose(float(got), risk.cvar(losses, alpha), rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# The port of DC / DSA / DM (dc_distill, dm_distill, evaluate_synset and DSA).
# ---------------------------------------------------------------------------------------------


def test_get_loops_is_dcs_table():
    table = {1: (1, 1), 10: (10, 50), 20: (20, 25), 30: (30, 20), 40: (40, 15), 50: (50, 10)}
    for ipc, loops in table.items():
        assert torch_reference.get_loops(ipc) == loops
    with pytest.raises(ValueError, match="ipc in .* not 5"):
        torch_reference.get_loops(5)


def test_convnet_stem_pad_gives_dcs_mnist_shapes():
    net = torch_reference.ConvNet((28, 28, 1), 10, width=128, depth=3, stem_pad=2)
    assert net.feature_hw == (4, 4)  # 32 -> 16 -> 8 -> 4, as DC's padding-3 first conv.
    assert net.features.conv0.padding == (3, 3)
    x = torch.zeros(2, 1, 28, 28)
    assert net.embed(x).shape == (2, 2048)
    assert net(x).shape == (2, 10)
    # Without it the rule sees 28: 28 -> 14 -> 7 -> 3.
    assert torch_reference.ConvNet((28, 28, 1), 10).feature_hw == (3, 3)


def test_convnet_stem_pad_matches_jaxdd_on_padded_input():
    model = models.ConvNet(num_classes=C, width=8, depth=3)
    # jaxdd's SAME 3x3 conv on an input padded by 2 is a padding-3 conv on the raw input.
    params = _random_params(model, seed=3, image_shape=(32, 32, 1))
    images = np.random.default_rng(4).normal(size=(5, 28, 28, 1)).astype(np.float32)
    padded = jnp.pad(jnp.asarray(images), ((0, 0), (2, 2), (2, 2), (0, 0)))
    expected, expected_embedding = model.apply({"params": params}, padded)

    net = torch_reference.ConvNet((28, 28, 1), C, width=8, depth=3, stem_pad=2)
    net.load_state_dict(torch_reference.params_from_flax(params, feature_hw=net.feature_hw))
    with torch.no_grad():
        logits = net(_nchw(images)).numpy()
        embedding = net.embed(_nchw(images)).numpy()
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-5)
    # The same features, flattened (c, h, w) in torch and (h, w, c) in jaxdd.
    embedding = embedding.reshape(5, 8, 4, 4).transpose(0, 2, 3, 1).reshape(5, -1)
    np.testing.assert_allclose(embedding, expected_embedding, rtol=1e-4, atol=1e-5)


def test_init_network_is_seeded_torch_default_and_leaves_global_rng_alone():
    state = torch.random.get_rng_state()
    a = torch_reference.init_network((8, 8, 1), 3, width=8, depth=2, seed=5)
    assert torch.equal(torch.random.get_rng_state(), state)
    b = torch_reference.init_network((8, 8, 1), 3, width=8, depth=2, seed=5)
    c = torch_reference.init_network((8, 8, 1), 3, width=8, depth=2, seed=6)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    assert not torch.equal(a.features.conv0.weight, c.features.conv0.weight)
    # torch's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) kernels; norm scale 1, bias 0.
    bound = 1.0 / np.sqrt(9 * 8)
    largest = float(a.features.conv1.weight.detach().abs().max())
    assert 0.8 * bound < largest <= bound
    assert torch.equal(a.features.norm0.weight, torch.ones(8))


def _generator(seed):
    return torch.Generator().manual_seed(seed)


def _draw(ops):
    return torch_reference.DSADraw(ops=tuple((op, torch.as_tensor(v)) for op, v in ops))


def _apply(x, *ops):
    return torch_reference.apply_diff_augment(torch.as_tensor(x), _draw(ops)).numpy()


# The ops of each DSA family (`utils.py` 643-650).
DSA_FAMILY_OPS = {
    ("brightness", "saturation", "contrast"),
    ("crop",),
    ("cutout",),
    ("flip",),
    ("scale",),
    ("rotate",),
}


def test_dsa_single_mode_draws_one_family_each_time_and_all_of_them():
    seen = set()
    for seed in range(60):
        draw = torch_reference.draw_diff_augment(
            torch_reference.DEFAULT_DSA_STRATEGY, 1, (8, 8), generator=_generator(seed)
        )
        ops = tuple(op for op, _ in draw.ops)
        assert ops in DSA_FAMILY_OPS
        seen.add(ops)
    assert len(seen) == 6
    # Mode 'M' (`utils.py` 507-510) applies every family, in the strategy's order.
    draw = torch_reference.draw_diff_augment(
        "flip_color_crop",
        3,
        (8, 8),
        generator=_generator(0),
        param=torch_reference.ParamDiffAug(aug_mode="M"),
    )
    assert [op for op, _ in draw.ops] == ["flip", "brightness", "saturation", "contrast", "crop"]
    with pytest.raises(ValueError, match="Unknown DSA families"):
        torch_reference.draw_diff_augment("crop_blur", 1, (8, 8), generator=_generator(0))


def test_dsa_draw_ranges():
    gen = _generator(0)
    draw = dict(torch_reference.draw_diff_augment("crop", 2000, (8, 28), generator=gen).ops)
    # int(8 * 0.125 + 0.5) = 1 and int(28 * 0.125 + 0.5) = 4, both ends included.
    assert set(draw["crop"][:, 0].tolist()) == {-1, 0, 1}
    assert set(draw["crop"][:, 1].tolist()) == set(range(-4, 5))
    draw = dict(torch_reference.draw_diff_augment("cutout", 2000, (8, 7), generator=gen).ops)
    # Cut 4 (even): centres in [0, 8]; cut int(3.5 + 0.5) = 4 on 7 too: [0, 7].
    assert set(draw["cutout"][:, 0].tolist()) == set(range(9))
    assert set(draw["cutout"][:, 1].tolist()) == set(range(8))
    scale = dict(torch_reference.draw_diff_augment("scale", 2000, (8, 8), generator=gen).ops)
    assert scale["scale"].shape == (2000, 2)
    assert (
        1 / 1.2 <= float(scale["scale"].min()) < 0.85 and 1.15 < float(scale["scale"].max()) < 1.2
    )
    angles = dict(torch_reference.draw_diff_augment("rotate", 2000, (8, 8), generator=gen).ops)
    degrees = np.degrees(angles["rotate"].numpy())
    assert -15 <= degrees.min() < -14 and 14 < degrees.max() < 15


def test_dsa_flip_by_hand():
    x = np.random.default_rng(0).normal(size=(2, 1, 4, 5)).astype(np.float32)
    got = _apply(x, ("flip", [0.3, 0.7]))  # Flipped where u < 0.5.
    np.testing.assert_array_equal(got[0], x[0, :, :, ::-1])
    np.testing.assert_array_equal(got[1], x[1])


def test_dsa_crop_is_an_integer_shift_with_zero_fill():
    x = np.random.default_rng(0).normal(size=(2, 2, 5, 6)).astype(np.float32)
    got = _apply(x, ("crop", [[1, -2], [0, 0]]))
    expected = np.zeros_like(x[0])
    for i in range(5):
        for j in range(6):
            if 0 <= i + 1 < 5 and 0 <= j - 2 < 6:
                expected[:, i, j] = x[0, :, i + 1, j - 2]
    np.testing.assert_array_equal(got[0], expected)
    np.testing.assert_array_equal(got[1], x[1])


def test_dsa_cutout_zeros_a_clipped_square():
    x = np.ones((2, 3, 8, 8), np.float32)
    got = _apply(x, ("cutout", [[4, 4], [0, 7]]))
    inside = np.ones((8, 8), np.float32)
    inside[2:6, 2:6] = 0  # 4x4 = int(8 * 0.5 + 0.5), starting at centre - 2.
    corner = np.ones((8, 8), np.float32)
    corner[0:2, 5:8] = 0  # rows -2..1 and cols 5..8 clipped to the image.
    np.testing.assert_array_equal(got[0], np.broadcast_to(inside, (3, 8, 8)))
    np.testing.assert_array_equal(got[1], np.broadcast_to(corner, (3, 8, 8)))


def test_dsa_color_with_known_uniforms():
    x = np.random.default_rng(0).normal(size=(1, 3, 4, 4)).astype(np.float32)
    got = _apply(x, ("brightness", [0.8]), ("saturation", [0.25]), ("contrast", [0.1]))
    y = x + (0.8 - 0.5) * 1.0
    mean_c = y.mean(axis=1, keepdims=True)
    y = (y - mean_c) * (0.25 * 2.0) + mean_c
    mean_all = y.mean(axis=(1, 2, 3), keepdims=True)
    y = (y - mean_all) * (0.1 + 0.5) + mean_all
    np.testing.assert_allclose(got, y, rtol=1e-5, atol=1e-6)


def test_dsa_scale_and_rotate_by_hand():
    rows, cols = np.meshgrid(np.arange(5.0), np.arange(5.0), indexing="ij")
    ramp = (2.0 * rows + 0.5 * cols).astype(np.float32)[None, None]  # bilinear reads it exactly
    # Scale 0.5 magnifies 2x about the centre: pixel (i, j) reads (1 + i / 2, 1 + j / 2).
    got = _apply(ramp, ("scale", [[0.5, 0.5]]))
    np.testing.assert_allclose(got[0, 0], 2.0 * (1 + rows / 2) + 0.5 * (1 + cols / 2), atol=1e-5)
    np.testing.assert_allclose(_apply(ramp, ("scale", [[1.0, 1.0]])), ramp, atol=1e-6)
    x = np.random.default_rng(0).normal(size=(2, 1, 6, 6)).astype(np.float32)
    got = _apply(x, ("rotate", [np.pi / 2, 0.0]))
    np.testing.assert_allclose(got[0], np.rot90(x[0], 1, axes=(1, 2)), atol=1e-5)
    np.testing.assert_allclose(got[1], x[1], atol=1e-6)


def test_dsa_siamese_shares_one_transform_across_batches():
    strategy = torch_reference.DEFAULT_DSA_STRATEGY
    moved = 0
    for seed in range(12):
        x = np.random.default_rng(seed).normal(size=(6, 3, 8, 8)).astype(np.float32)
        x = torch.from_numpy(x)
        batch = torch_reference.diff_augment(x, strategy, generator=_generator(seed), siamese=True)
        first = torch_reference.diff_augment(
            x[:1], strategy, generator=_generator(seed), siamese=True
        )
        np.testing.assert_allclose(batch[:1].numpy(), first.numpy(), atol=1e-6)
        real, syn = torch_reference.diff_augment_pair(
            x, x[2:4], strategy, generator=_generator(seed)
        )
        np.testing.assert_allclose(real[2:4].numpy(), syn.numpy(), atol=1e-6)
        moved += not torch.allclose(real, x)
    # Not vacuous: most draws transform (a flip or crop may draw the identity).
    assert moved >= 8


def test_dsa_per_image_differs_across_identical_images():
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(1, 1, 8, 8)).astype(np.float32))
    x = x.expand(16, 1, 8, 8)
    for strategy in ("rotate", "flip", "crop"):
        per_image = torch_reference.diff_augment(
            x, strategy, generator=_generator(1), siamese=False
        )
        distinct = {tuple(np.round(im.numpy().ravel(), 5)) for im in per_image}
        assert len(distinct) > 1, strategy
        shared = torch_reference.diff_augment(x, strategy, generator=_generator(1), siamese=True)
        assert len({tuple(np.round(im.numpy().ravel(), 5)) for im in shared}) == 1, strategy
    assert torch_reference.diff_augment(x, "none", generator=_generator(0), siamese=True) is x


def test_dsa_is_differentiable():
    x = torch.randn(4, 3, 8, 8, generator=_generator(0), requires_grad=True)
    for seed in range(8):
        out = torch_reference.diff_augment(
            x, torch_reference.DEFAULT_DSA_STRATEGY, generator=_generator(seed), siamese=False
        )
        (grad,) = torch.autograd.grad(out.square().sum(), x)
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0


TINY_C, TINY_PER_CLASS = 3, 20


def _patterns(num_per_class, rng, noise):
    """(3 * n, 8, 8, 1) images: horizontal stripes, vertical stripes, checkerboard + noise."""
    rows, cols = np.meshgrid(np.arange(8), np.arange(8), indexing="ij")
    bases = [(-1.0) ** rows, (-1.0) ** cols, (-1.0) ** (rows + cols)]
    labels = np.repeat(np.arange(3), num_per_class)
    images = np.stack([bases[c] for c in labels])[..., None]
    images = images + noise * rng.normal(size=images.shape)
    return images.astype(np.float32), labels


@pytest.fixture(scope="module")
def tiny():
    """3 classes x 20 noisy-pattern 8x8x1 images in shuffled order; ipc 2 initial indices."""
    rng = np.random.default_rng(7)
    images, labels = _patterns(TINY_PER_CLASS, rng, noise=1.0)
    order = rng.permutation(labels.size)
    images, labels = images[order], labels[order]
    init = np.concatenate([np.flatnonzero(labels == c)[:2] for c in range(TINY_C)])
    return images, labels, init


def _dc(tiny, **kwargs):
    images, labels, init = tiny
    args = dict(
        init_indices=init,
        num_classes=TINY_C,
        method="DC",
        iterations=2,
        outer_loop=2,
        inner_loop=2,
        batch_real=8,
        batch_train=4,
        width=8,
        depth=2,
        seed=0,
    )
    args.update(kwargs)
    return torch_reference.dc_distill(images, labels, **args)


def _dm(tiny, **kwargs):
    images, labels, init = tiny
    args = dict(
        init_indices=init,
        num_classes=TINY_C,
        iterations=2,
        batch_real=8,
        width=8,
        depth=2,
        seed=0,
    )
    args.update(kwargs)
    return torch_reference.dm_distill(images, labels, **args)


@pytest.mark.parametrize(
    "run",
    [_dc, functools.partial(_dc, method="DSA"), _dm, functools.partial(_dm, dsa_strategy=None)],
)
def test_distill_is_seeded_moves_images_and_starts_from_init(tiny, run):
    images, _, init = tiny
    out = run(tiny)
    assert out.shape == (6, 8, 8, 1) and out.dtype == np.float32
    np.testing.assert_array_equal(out, run(tiny))  # deterministic given the seed
    assert not np.array_equal(out, run(tiny, seed=1))
    assert np.abs(out - images[init]).max() > 1e-2  # the images moved
    # With a tiny step size the result stays at train_images[init_indices], class-major.
    near = run(tiny, lr_img=1e-7)
    np.testing.assert_allclose(near, images[init], atol=1e-5)
    assert not np.array_equal(near, images[init])


def test_dc_inner_loop_and_dsa_change_the_result(tiny):
    base = _dc(tiny)
    # The network trained between the two updates moves the second update.
    assert not np.allclose(base, _dc(tiny, inner_loop=0), atol=1e-6)
    assert not np.allclose(base, _dc(tiny, method="DSA"), atol=1e-6)


def test_distill_rejects_bad_arguments(tiny):
    images, labels, init = tiny
    with pytest.raises(ValueError, match="'DC' or 'DSA'"):
        _dc(tiny, method="DM")
    with pytest.raises(ValueError, match="class-major"):
        _dc(tiny, init_indices=init[::-1])
    with pytest.raises(ValueError, match=r"\(C \* ipc,\)"):
        _dm(tiny, init_indices=init[:5])


def _class_real(tiny, c):
    images, labels, _ = tiny
    return _nchw(images[labels == c])


def _first_network(seed):
    streams = torch_reference.RandomStreams(seed)
    seed = streams.network_seed()
    return torch_reference.init_network((8, 8, 1), TINY_C, width=8, depth=2, seed=seed)


def test_dc_first_update_is_minus_lr_times_the_matching_gradient(tiny):
    images, _, init = tiny
    # batch_real covers each class, so the real gradient does not depend on the sampled order.
    out = _dc(tiny, iterations=1, outer_loop=1, lr_img=0.1, batch_real=100, seed=4)

    net = _first_network(4)
    params = list(net.parameters())
    syn = _nchw(images[init]).requires_grad_(True)
    total = 0.0
    for c in range(TINY_C):
        real = _class_real(tiny, c)
        loss_real = torch.nn.functional.cross_entropy(net(real), torch.full((len(real),), c))
        grads_real = [g.detach() for g in torch.autograd.grad(loss_real, params)]
        logits_syn = net(syn[2 * c : 2 * c + 2])
        loss_syn = torch.nn.functional.cross_entropy(logits_syn, torch.full((2,), c))
        grads_syn = torch.autograd.grad(loss_syn, params, create_graph=True)
        total = total + torch_reference.layerwise_cosine_distance(grads_syn, grads_real)
    (grad,) = torch.autograd.grad(total, syn)
    # SGD's momentum buffer starts at the first gradient: the step is -lr * grad.
    expected = images[init] - 0.1 * np.moveaxis(grad.numpy(), 1, -1)
    step = np.abs(expected - images[init]).max()
    assert step > 1e-3
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-4 * step)


def test_dm_first_update_is_minus_lr_times_the_embedding_gradient(tiny):
    images, _, init = tiny
    out = _dm(tiny, iterations=1, lr_img=1.0, batch_real=100, dsa_strategy="none", seed=4)

    net = _first_network(4)
    syn = _nchw(images[init]).requires_grad_(True)
    total = 0.0
    for c in range(TINY_C):
        with torch.no_grad():
            mean_real = net.embed(_class_real(tiny, c)).mean(0)
        total = total + torch.sum((mean_real - net.embed(syn[2 * c : 2 * c + 2]).mean(0)) ** 2)
    (grad,) = torch.autograd.grad(total, syn)
    expected = images[init] - 1.0 * np.moveaxis(grad.numpy(), 1, -1)
    step = np.abs(expected - images[init]).max()
    assert step > 1e-3
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-4 * step)


def test_evaluate_synset_learns_a_separable_problem_deterministically():
    rng = np.random.default_rng(11)
    train, train_labels = _patterns(4, rng, noise=0.3)
    test, test_labels = _patterns(30, rng, noise=0.3)
    kwargs = dict(num_classes=3, epochs=20, width=16, depth=2, seeds=(0, 1))
    acc = torch_reference.evaluate_synset(train, train_labels, test, test_labels, **kwargs)
    assert acc.shape == (2,)
    assert acc.min() >= 0.9
    again = torch_reference.evaluate_synset(train, train_labels, test, test_labels, **kwargs)
    np.testing.assert_array_equal(acc, again)
    # With DSA and a few epochs it runs and reports accuracies in [0, 1].
    dsa = torch_reference.evaluate_synset(
        train,
        train_labels,
        test,
        test_labels,
        num_classes=3,
        epochs=2,
        width=8,
        depth=2,
        dsa_strategy=torch_reference.DEFAULT_DSA_STRATEGY,
        seeds=(3,),
    )
    assert dsa.shape == (1,) and 0.0 <= dsa[0] <= 1.0


def _record_calls(monkeypatch, name):
    """Wrap `torch_reference.<name>`; returns the list its calls' (args, kwargs) go to."""
    calls = []
    original = getattr(torch_reference, name)

    def wrapper(*args, **kwargs):
        calls.append((args, kwargs))
        return original(*args, **kwargs)

    monkeypatch.setattr(torch_reference, name, wrapper)
    return calls


def test_dc_loop_structure(tiny, monkeypatch):
    epochs = _record_calls(monkeypatch, "_train_epoch")
    networks = _record_calls(monkeypatch, "init_network")
    _dc(tiny, method="DSA", iterations=2, outer_loop=3, inner_loop=2, batch_train=4)
    assert len(networks) == 2  # a fresh network per iteration, exactly `iterations` of them
    # inner_loop epochs after every outer step but the last: 2 * (3 - 1) * 2.
    assert len(epochs) == 8
    # One SGD(lr_net) per iteration, without momentum, shared by its epochs; per-image DSA.
    optimizers = [args[1] for args, _ in epochs]
    assert len({id(o) for o in optimizers}) == 2
    assert all(o.defaults["lr"] == 0.01 and o.defaults["momentum"] == 0 for o in optimizers)
    assert all(kw["dsa_strategy"] == torch_reference.DEFAULT_DSA_STRATEGY for _, kw in epochs)
    assert all(kw["batch_size"] == 4 for _, kw in epochs)


def test_evaluate_synset_runs_epochs_plus_one_with_one_decay(tiny, monkeypatch):
    images, labels, _ = tiny
    epochs = _record_calls(monkeypatch, "_train_epoch")
    torch_reference.evaluate_synset(
        images, labels, images, labels, num_classes=TINY_C, epochs=4, width=8, depth=2
    )
    # DC trains Epoch + 1 epochs and decays x0.1 after epoch Epoch // 2 + 1 = 3, with a fresh
    # optimiser (`utils.py` 343-355).
    optimizers = [args[1] for args, _ in epochs]
    assert [o.param_groups[0]["lr"] for o in optimizers] == pytest.approx([0.01] * 4 + [0.001])
    assert len({id(o) for o in optimizers}) == 2
    assert all(o.defaults["momentum"] == 0.9 for o in optimizers)
    assert all(o.defaults["weight_decay"] == 5e-4 for o in optimizers)
    assert all(kw["dsa_strategy"] is None for _, kw in epochs)


@pytest.mark.parametrize(
    "run",
    [
        functools.partial(_dc, method="DSA", iterations=3),
        functools.partial(_dm, iterations=3),
    ],
)
def test_an_interrupted_run_resumes_bit_identically(tiny, tmp_path, monkeypatch, run):
    straight = run(tiny)
    path = tmp_path / "run.pt"
    original, calls = torch_reference.init_network, []

    def interrupted(*args, **kwargs):  # Stops the run at the start of its third iteration.
        calls.append(1)
        if len(calls) > 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(torch_reference, "init_network", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(tiny, checkpoint=path, checkpoint_every=1)
    assert torch.load(path, weights_only=False)["iteration"] == 2
    monkeypatch.setattr(torch_reference, "init_network", original)
    resumed = run(tiny, checkpoint=path, checkpoint_every=1)
    np.testing.assert_array_equal(resumed, straight)
    saved = torch.load(path, weights_only=False)
    seconds, segments = torch_reference.checkpoint_seconds(path)
    assert saved["iteration"] == 3 and seconds > 0 and segments == 2
    # A finished checkpoint returns its set without distilling again.
    monkeypatch.setattr(torch_reference, "init_network", None)
    np.testing.assert_array_equal(run(tiny, checkpoint=path), straight)


def test_a_checkpoint_from_other_arguments_is_refused(tiny, tmp_path):
    path = tmp_path / "run.pt"
    _dc(tiny, checkpoint=path, checkpoint_every=1)
    with pytest.raises(ValueError, match="other arguments \\(seed\\).*delete it"):
        _dc(tiny, checkpoint=path, seed=1)
    with pytest.raises(ValueError, match="holds 2 iterations, more than the 1"):
        _dc(tiny, checkpoint=path, iterations=1)
    # More iterations continue the run: the same set as one run of that length.
    np.testing.assert_array_equal(_dc(tiny, checkpoint=path, iterations=3), _dc(tiny, iterations=3))
    with pytest.raises(ValueError, match="checkpoint_every must be >= 1"):
        _dm(tiny, checkpoint=tmp_path / "dm.pt", checkpoint_every=0)


def test_a_checkpoint_names_its_device(tiny, tmp_path):
    path = tmp_path / "run.pt"
    _dc(tiny, checkpoint=path, checkpoint_every=1)
    saved = torch.load(path, weights_only=False)
    assert saved["signature"]["device"] == "cpu"
    # Written on a GPU: refused on the CPU, naming the device.
    torch.save({**saved, "signature": {**saved["signature"], "device": "cuda"}}, path)
    with pytest.raises(ValueError, match="other arguments \\(device\\)"):
        _dc(tiny, checkpoint=path, iterations=3)
    # Written before signatures named the device (CPU only then): resumes on the CPU.
    del saved["signature"]["device"]
    torch.save(saved, path)
    np.testing.assert_array_equal(_dc(tiny, checkpoint=path, iterations=3), _dc(tiny, iterations=3))


def _idm(tiny, **kwargs):
    """IDM's loop on the tiny problem, from its initial images (ipc 2, stored)."""
    images, labels, init = tiny
    args = dict(
        init_images=images[init],
        num_classes=TINY_C,
        iterations=2,
        batch_real=8,
        model_train_steps=2,
        trained_bs=8,
        net_generate_interval=1,
        width=8,
        depth=2,
        seed=0,
    )
    args.update(kwargs)
    return torch_reference.idm_distill(images, labels, **args)


def test_number_sign_augment_is_jaxdds_factorized_decode():
    """IDM's decoder and jaxdd's `synthetic.decode(factor=2)` make the same images (IDM's
    quarters TL, BL, TR, BR quarter-major; jaxdd's crops row-major within each class)."""
    from jaxdd import synthetic

    stored = np.random.default_rng(3).normal(size=(2, 3, 8, 6, 2)).astype(np.float32)
    labels = np.repeat(np.arange(2), 3).reshape(2, 3)
    ours, our_labels = synthetic.decode(stored, labels, param="factorized", factor=2)
    theirs, their_labels = torch_reference.number_sign_augment(
        _nchw(stored.reshape(6, 8, 6, 2)), torch.from_numpy(labels.reshape(-1))
    )
    theirs = np.moveaxis(theirs.numpy(), 1, -1).reshape(4, 2, 3, 8, 6, 2)  # quarter, class, n
    their_labels = their_labels.numpy().reshape(4, 2, 3)
    ours, our_labels = np.asarray(ours).reshape(2, 4, 3, 8, 6, 2), np.asarray(our_labels)
    for jaxdd_crop, idm_quarter in enumerate((0, 2, 1, 3)):  # (i, j) row-major vs column-major
        np.testing.assert_allclose(ours[:, jaxdd_crop], theirs[idm_quarter], atol=1e-6)
        np.testing.assert_array_equal(our_labels.reshape(2, 4, 3)[:, jaxdd_crop], labels)
        np.testing.assert_array_equal(their_labels[idm_quarter], labels)


def test_idm_is_seeded_decodes_and_moves_images(tiny):
    images, labels, init = tiny
    out, out_labels = _idm(tiny)
    assert out.shape == (24, 8, 8, 1) and out.dtype == np.float32
    np.testing.assert_array_equal(out_labels, np.tile(np.repeat(np.arange(TINY_C), 2), 4))
    again, _ = _idm(tiny)
    np.testing.assert_array_equal(out, again)
    assert not np.array_equal(out, _idm(tiny, seed=1)[0])
    start, _ = torch_reference.number_sign_augment(
        _nchw(images[init]), torch.zeros(6, dtype=torch.long)
    )
    start = np.moveaxis(start.numpy(), 1, -1)
    assert np.abs(out - start).max() > 1e-2
    np.testing.assert_allclose(_idm(tiny, lr_img=1e-7)[0], start, atol=1e-5)


def test_idm_first_iteration_steps_each_class_in_turn_with_shared_momentum(tiny):
    """Iteration 0: the meters are empty, so the loss is DM's through the one network drawn
    from the queue (3 + 1 fresh networks); each class takes its own SGD(momentum 0.5) step on
    the whole image tensor, so class c's gradient moves its images by
    lr * (1 + 0.5 + ... + 0.5^(C-1-c)) in all (`IDM_cifar10.py` 329-331)."""
    images, _, init = tiny
    out, _ = _idm(tiny, iterations=1, lr_img=0.5, batch_real=100, dsa_strategy="none", seed=4)

    streams = torch_reference.RandomStreams(4)
    seeds = [streams.network_seed() for _ in range(4)]
    drawn = streams.real.permutation(4)[0]
    net = torch_reference.init_network((8, 8, 1), TINY_C, width=8, depth=2, seed=seeds[drawn])
    syn = _nchw(images[init]).requires_grad_(True)
    expected = images[init].copy()
    for c in range(TINY_C):
        with torch.no_grad():
            mean_real = net.embed(_class_real(tiny, c)).mean(0)
        decoded, _ = torch_reference.number_sign_augment(
            syn[2 * c : 2 * c + 2], torch.zeros(2, dtype=torch.long)
        )
        loss = torch.sum((mean_real - net.embed(decoded).mean(0)) ** 2)
        (grad,) = torch.autograd.grad(loss, syn)
        total = sum(0.5**k for k in range(TINY_C - c))
        expected -= 0.5 * total * np.moveaxis(grad.numpy(), 1, -1)
    step = np.abs(expected - images[init]).max()
    assert step > 1e-3
    ours = torch_reference.number_sign_augment(_nchw(expected), torch.zeros(6, dtype=torch.long))
    np.testing.assert_allclose(out, np.moveaxis(ours[0].numpy(), 1, -1), atol=1e-4 * step)


def test_idm_regulariser_weighs_by_the_networks_training_accuracy(tiny):
    """The cross-entropy term is weighted by the matched network's accuracy on its training
    batches: zero at iteration 0 (no network trained yet), so ce_weight only acts after."""
    first = _idm(tiny, iterations=1, ce_weight=0.5)[0]
    np.testing.assert_array_equal(first, _idm(tiny, iterations=1, ce_weight=0.0)[0])
    # Every network of the queue (3 + 1 at iteration 0, none added at 1) trained at iteration 0.
    queue = dict(fetch_net_num=4, net_generate_interval=30)
    with_ce, without = _idm(tiny, ce_weight=0.5, **queue)[0], _idm(tiny, ce_weight=0.0, **queue)[0]
    assert not np.allclose(with_ce, without, atol=1e-6)


def test_idm_queue_grows_to_net_num_and_trains_with_weight_decay(tiny, monkeypatch):
    networks = _record_calls(monkeypatch, "init_network")
    optimizers = _record_calls(monkeypatch, "_QueuedNet")
    _idm(tiny, iterations=5, net_generate_interval=2, net_num=4)
    # 3 to start, then one at iterations 0, 2 and 4 (the oldest leaving at 4).
    assert len(networks) == 6
    sgds = [args[1] for args, _ in optimizers]
    assert all(o.defaults["lr"] == 0.01 and o.defaults["momentum"] == 0.9 for o in sgds)
    assert all(o.defaults["weight_decay"] == 5e-4 for o in sgds)


def test_idm_interrupted_run_resumes_bit_identically_with_its_queue(tiny, tmp_path, monkeypatch):
    straight, _ = _idm(tiny, iterations=3)
    path = tmp_path / "idm.pt"
    original, calls = torch_reference.number_sign_augment, []

    def interrupted(*args, **kwargs):  # Stops at the third iteration's first class.
        calls.append(1)
        if len(calls) > 2 * TINY_C:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(torch_reference, "number_sign_augment", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _idm(tiny, iterations=3, checkpoint=path, checkpoint_every=1)
    saved = torch.load(path, weights_only=False)
    assert saved["iteration"] == 2 and len(saved["extra"]["queue"]) == 5
    assert saved["extra"]["queue"][0]["seen"] > 0  # meters and momenta travel with the nets
    monkeypatch.setattr(torch_reference, "number_sign_augment", original)
    resumed, _ = _idm(tiny, iterations=3, checkpoint=path, checkpoint_every=1)
    np.testing.assert_array_equal(resumed, straight)
    with pytest.raises(ValueError, match="other arguments \\(ce_weight\\)"):
        _idm(tiny, iterations=3, checkpoint=path, ce_weight=0.1)


def test_idm_rejects_bad_arguments(tiny):
    images, _, init = tiny
    with pytest.raises(ValueError, match="must be even"):
        _idm(tiny, init_images=images[init][:, :7])
    with pytest.raises(ValueError, match="net_num.*>= 1"):
        _idm(tiny, net_num=0)
    with pytest.raises(ValueError, match=r"\(C \* ipc, H, W, Ch\)"):
        _idm(tiny, init_images=images[init][:5])
