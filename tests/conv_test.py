"""Tests for jaxdd.conv: the CPU kernels against lax's convolution (to second order), the two
formulations against each other, the per-platform selection and the `SameConv` module."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxdd import conv

# The CPU formulation, whatever the platform: these tests are about its kernels.
cpu_conv = functools.partial(conv.same_conv, impl="cpu_kernels")


@pytest.mark.parametrize(
    "x_shape, kernel_shape",
    [
        # Every forward formulation of `same_conv` (and its dx, which runs one on C_out):
        ((2, 6, 5, 3), (3, 3, 3, 4)),  # shifted GEMMs (C_in <= 4)
        ((2, 6, 5, 3), (5, 3, 3, 2)),
        ((2, 6, 5, 3), (1, 1, 3, 2)),
        ((2, 5, 4, 6), (3, 3, 6, 5)),  # XLA's convolution
        ((2, 2, 2, 6), (3, 3, 6, 5)),  # dense matrix (<= 4 pixels)
        ((2, 1, 3, 5), (5, 3, 5, 6)),  # dense, kernel larger than the map
        ((1, 16, 16, 16), (3, 3, 16, 4)),  # kernel gradient from shifted views (no im2col)
        ((2, 4, 4, 6), (3, 3, 6, 5)),  # Winograd F(4x4, 3x3), one tile
        ((2, 3, 4, 6), (3, 3, 6, 5)),  # Winograd, part of a tile
        ((2, 4, 2, 3), (3, 3, 3, 2)),
    ],
)
def test_same_conv_matches_xla_conv_to_second_order(x_shape, kernel_shape):
    """The CPU kernels (hand-written VJP, Winograd) equal autodiff of lax's convolution, twice
    over."""
    kx, kk, kg = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, x_shape)
    kernel = jax.random.normal(kk, kernel_shape)

    def reference(x, k):
        dims = ("NHWC", "HWIO", "NHWC")
        return jax.lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=dims)

    np.testing.assert_allclose(cpu_conv(x, kernel), reference(x, kernel), rtol=1e-5, atol=1e-4)
    probe = jax.random.normal(kg, reference(x, kernel).shape)

    def first(f):
        return jax.grad(lambda x, k: jnp.sum(jnp.sin(f(x, k)) * probe), argnums=(0, 1))

    for got, want in zip(first(cpu_conv)(x, kernel), first(reference)(x, kernel), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)

    # Second order (gradient matching differentiates a parameter gradient w.r.t. images).
    def second(f):
        return jax.grad(lambda x: jnp.sum(first(f)(x, kernel)[1] ** 2))

    want = second(reference)(x)
    np.testing.assert_allclose(
        second(cpu_conv)(x), want, rtol=1e-3, atol=1e-3 * float(jnp.abs(want).max())
    )
    if not conv._winograd_fits(x_shape, kernel_shape):
        # Numerically, too, for the hand-written VJP. (Winograd's path is jax's own autodiff,
        # checked against the reference above; its f32 rounding, about 1e-5 of the output
        # through transform coefficients up to 8 and 1/24, is past finite differences' reach.)
        check_grads(cpu_conv, (x, kernel), order=2, modes=("rev",), atol=5e-2, rtol=5e-2)


@pytest.mark.parametrize(
    "x_shape, winograd",
    [((3, 4, 4, 8), True), ((3, 3, 4, 8), True), ((3, 2, 2, 8), False), ((3, 5, 4, 8), False)],
)
def test_same_conv_uses_winograd_on_small_maps_only(x_shape, winograd):
    """Maps within one 4x4 tile (and over 4 pixels) run F(4x4, 3x3): GEMMs only, no custom
    VJP and no convolution, to second order; other maps keep the direct formulations."""
    x = jax.random.normal(jax.random.key(0), x_shape)
    kernel = jax.random.normal(jax.random.key(1), (3, 3, 8, 8))

    def second(x):
        first = jax.grad(lambda x, k: jnp.sum(jnp.sin(cpu_conv(x, k))), argnums=1)
        return jnp.sum(first(x, kernel) ** 2)

    jaxpr = str(jax.make_jaxpr(jax.grad(second))(x))
    assert ("custom_vjp" not in jaxpr and "conv_general" not in jaxpr) == winograd
    if winograd:  # 36 transformed products, batched: (36, N, C_in) x (36, C_in, C_out).
        y = jax.make_jaxpr(cpu_conv)(x, kernel)
        dots = [e for e in y.eqns if e.primitive.name == "dot_general"]
        assert any(v.aval.shape[0] == 36 for e in dots for v in e.outvars)


def test_same_conv_module_is_a_drop_in_for_nn_conv():
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
    fast = conv.SameConv(4)
    params = fast.init(jax.random.key(2), x)
    reference = nn.Conv(4, (3, 3), padding="SAME")
    assert jax.tree.map(jnp.shape, reference.init(jax.random.key(2), x)) == jax.tree.map(
        jnp.shape, params
    )
    np.testing.assert_allclose(
        fast.apply(params, x), reference.apply(params, x), rtol=1e-5, atol=1e-5
    )
    with pytest.raises(ValueError, match="odd kernels"):
        conv.SameConv(4, kernel_size=(2, 2)).init(jax.random.key(0), x)


@pytest.mark.parametrize(
    "x_shape, kernel_shape",
    [
        ((2, 4, 4, 8), (3, 3, 8, 16)),  # Winograd F(4x4, 3x3), one tile
        ((2, 3, 4, 8), (3, 3, 8, 8)),  # Winograd, part of a tile
        ((2, 2, 2, 8), (3, 3, 8, 8)),  # dense matrix
        ((2, 8, 8, 3), (3, 3, 3, 8)),  # shifted GEMMs (the image layer)
        ((2, 8, 8, 16), (3, 3, 16, 16)),  # XLA's convolution, im2col kernel gradient
        ((2, 28, 28, 1), (3, 3, 1, 8)),  # the 28x28 image layer
        ((2, 28, 28, 8), (3, 3, 8, 8)),  # kernel gradient from shifted views (no im2col)
    ],
)
def test_impls_agree_forward_and_first_order(x_shape, kernel_shape):
    """'cpu_kernels' and 'xla' compute the same convolution and gradients, under `jax.jit`."""
    kx, kk, kg = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, x_shape)
    kernel = jax.random.normal(kk, kernel_shape)
    probe = jax.random.normal(kg, (*x_shape[:3], kernel_shape[-1]))

    def output_and_grads(impl):
        @jax.jit
        def f(x, kernel):
            y, vjp = jax.vjp(functools.partial(conv.same_conv, impl=impl), x, kernel)
            return y, *vjp(probe)

        return f(x, kernel)

    want = output_and_grads("xla")
    got = output_and_grads("cpu_kernels")
    for name, g, w in zip(("output", "d_x", "d_kernel"), got, want, strict=True):
        assert g.shape == w.shape, name
        scale = float(jnp.abs(w).max())
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-4 * scale, err_msg=name)


def test_default_impl_per_platform():
    assert conv.default_impl("cpu") == "cpu_kernels"
    assert conv.default_impl("gpu") == "xla"
    assert conv.default_impl("tpu") == "xla"


def _has_conv(f, *args) -> bool:
    return "conv_general_dilated" in str(jax.make_jaxpr(f)(*args))


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the CPU's selection")
@pytest.mark.parametrize(
    "x_shape, kernel_shape",
    [((2, 8, 8, 3), (3, 3, 3, 8)), ((2, 4, 4, 8), (3, 3, 8, 8)), ((2, 2, 2, 8), (3, 3, 8, 8))],
    ids=["shifted", "winograd", "dense"],
)
def test_default_on_cpu_is_the_cpu_kernels(x_shape, kernel_shape):
    """On these shapes the CPU kernels use no convolution, the 'xla' formulation nothing else."""
    x = jax.random.normal(jax.random.key(0), x_shape)
    kernel = jax.random.normal(jax.random.key(1), kernel_shape)
    assert not _has_conv(conv.same_conv, x, kernel)
    assert _has_conv(functools.partial(conv.same_conv, impl="xla"), x, kernel)
    np.testing.assert_array_equal(jax.jit(conv.same_conv)(x, kernel), jax.jit(cpu_conv)(x, kernel))


def test_same_conv_module_goes_through_the_selection(monkeypatch):
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
    module = conv.SameConv(4)
    params = module.init(jax.random.key(2), x)
    monkeypatch.setattr(conv, "default_impl", lambda platform: "xla")
    assert _has_conv(module.apply, params, x)
    monkeypatch.setattr(conv, "default_impl", lambda platform: "cpu_kernels")
    assert not _has_conv(module.apply, params, x)


def test_same_conv_rejects_unknown_impls_and_bad_shapes():
    x = jnp.zeros((1, 4, 4, 3))
    with pytest.raises(ValueError, match=r"'cudnn'.*\['cpu_kernels', 'xla'\]"):
        conv.same_conv(x, jnp.zeros((3, 3, 3, 2)), impl="cudnn")
    with pytest.raises(ValueError, match="odd kernel"):
        conv.same_conv(x, jnp.zeros((2, 3, 3, 2)))
    with pytest.raises(ValueError, match="C_in"):
        conv.same_conv(x, jnp.zeros((3, 3, 4, 2)))
