"""A tiny Flax generator for the `syn.param=generator` tests (no pretrained weights offline)."""

import flax.linen as nn
import jax.numpy as jnp


class TinyGenerator(nn.Module):
    """(n, 16) latents -> (n, 8, 8, 1) images in roughly the normalised range of digits."""

    @nn.compact
    def __call__(self, latents):
        x = nn.relu(nn.Dense(32)(latents))
        return 2.0 * jnp.tanh(nn.Dense(64)(x)).reshape(-1, 8, 8, 1)


def make_wide():
    """A factory (not a class): builds a generator of 8x8x3 images, the wrong shape for digits."""
    return _Wide()


class _Wide(nn.Module):
    @nn.compact
    def __call__(self, latents):
        return nn.Dense(8 * 8 * 3)(latents).reshape(-1, 8, 8, 3)
