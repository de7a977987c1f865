"""Shared test setup: CPU only, and a persistent XLA compilation cache across test runs."""

import os
import pathlib

import hypothesis
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

# Property tests draw the same examples on every run, so a red CI is reproducible and never
# depends on the draw; `HYPOTHESIS_PROFILE=explore` searches fresh examples (do it when a
# numerical path changes, and pin what it finds with `@example`).
hypothesis.settings.register_profile("reproducible", derandomize=True)
hypothesis.settings.register_profile("explore", derandomize=False)
hypothesis.settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "reproducible"))


@pytest.fixture(scope="module")
def digits() -> data.Dataset:
    """The embedded digits dataset with `data.load`'s default splits."""
    return data.load("digits")
