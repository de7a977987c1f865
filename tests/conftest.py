"""Shared test setup: CPU only, and a persistent XLA compilation cache across test runs."""

import os
import pathlib

import jax
import pytest

from jaxdd import data

# Compiles dominate this suite's time on CPU; caching them makes re-runs several times faster.
_CACHE = pathlib.Path(
    os.environ.get("JAXDD_TEST_CACHE", pathlib.Path.home() / ".cache" / "jaxdd-tests")
)
jax.config.update("jax_compilation_cache_dir", str(_CACHE / "xla"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


@pytest.fixture(scope="module")
def digits() -> data.Dataset:
    """The embedded digits dataset with `data.load`'s default splits."""
    return data.load("digits")
