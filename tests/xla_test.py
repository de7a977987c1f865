"""Tests of jaxdd.xla: per-platform compiler options applied by `xla.jit`."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdd import conv, xla


def test_options_are_keyed_by_platform():
    assert xla.compiler_options("cpu") == {
        "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT"
    }
    assert xla.compiler_options("cpu", fast_compile=True) == {
        "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT",
        "xla_backend_optimization_level": "1",
    }
    for platform in ("gpu", "tpu"):
        assert xla.compiler_options(platform) == {}
        assert xla.compiler_options(platform, fast_compile=True) == {}
    xla.compiler_options("cpu").clear()  # A copy: callers cannot change the defaults.
    assert xla.compiler_options("cpu")


def _net(kernel, w, x, *, depth):
    for _ in range(depth):
        x = jnp.tanh(
            jax.lax.conv_general_dilated(
                x, kernel, (1, 1), "SAME", dimension_numbers=conv._CONV_DIMS
            )
        )
    return jnp.tanh(x.reshape(x.shape[0], -1) @ w).sum()


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the options are CPU's")
def test_jit_matches_plain_jit_and_passes_attributes_through():
    fun = jax.value_and_grad(_net, argnums=(0, 1))
    jitted = functools.partial(xla.jit, static_argnames="depth")(fun)
    keys = jax.random.split(jax.random.key(0), 3)
    kernel = jax.random.normal(keys[0], (3, 3, 8, 8)) / 8
    w = jax.random.normal(keys[1], (6 * 6 * 8, 16)) / 16
    x = jax.random.normal(keys[2], (4, 6, 6, 8))
    value, grads = jitted(kernel, w, x, depth=2)
    plain = jax.jit(fun, static_argnames="depth")
    plain_value, plain_grads = plain(kernel, w, x, depth=2)
    np.testing.assert_allclose(value, plain_value, rtol=1e-5)
    for g, plain_g in zip(grads, plain_grads, strict=True):
        np.testing.assert_allclose(g, plain_g, rtol=1e-4, atol=1e-6)

    assert jitted._cache_size() == 1  # The jitted function's own attributes pass through.
    jitted(kernel, w, x, depth=2)
    assert jitted._cache_size() == 1


def test_jit_hands_the_platform_options_to_the_compiler(monkeypatch):
    # An option XLA does not know makes compilation fail: proof that the options reach it.
    platform = jax.default_backend()
    monkeypatch.setitem(xla._OPTIONS, platform, {"xla_no_such_option": "1"})
    with pytest.raises(Exception, match="xla_no_such_option"):
        xla.jit(jnp.sin)(jnp.ones(3))
    monkeypatch.setitem(xla._OPTIONS, platform, {})
    np.testing.assert_allclose(xla.jit(jnp.sin)(jnp.ones(3)), np.sin(np.ones(3)), rtol=1e-6)


def test_fast_compile_adds_its_options(monkeypatch):
    platform = jax.default_backend()
    monkeypatch.setitem(xla._FAST_COMPILE, platform, {"xla_no_such_option": "1"})
    with pytest.raises(Exception, match="xla_no_such_option"):
        xla.jit(jnp.cos, fast_compile=True)(jnp.ones(3))
    np.testing.assert_allclose(xla.jit(jnp.cos)(jnp.ones(3)), np.cos(np.ones(3)), rtol=1e-6)
