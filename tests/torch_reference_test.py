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


def _random_params(model, seed=0):
    """Flax params with every leaf random (norm scales and biases too, so a swap would show)."""
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, *IMAGE_SHAPE)))
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
