"""Shared test setup: CPU only, and a persistent XLA compilation cache across test runs."""

import os
import pathlib

import hypothesis
import jax
import pytest

from jaxdd import data

# Compiles dominate this suite's time on CPU; caching them makes re-runs several times faster.
# Set through the environment so that the runs the tests start as subprocesses (the CLI,
# SIGKILL/resume, multi-device and multi-host workers) share it: a cold CI run then compiles a
# program the suite builds twice (e.g. the evaluation's training loop) once.
_CACHE = pathlib.Path(
    os.environ.get("JAXDD_TEST_CACHE", pathlib.Path.home() / ".cache" / "jaxdd-tests")
)
_CACHE_SETTINGS = {
    "jax_compilation_cache_dir": str(_CACHE / "xla"),
    "jax_persistent_cache_min_compile_time_secs": 0.5,
    "jax_persistent_cache_min_entry_size_bytes": 0,
}
for _name, _value in _CACHE_SETTINGS.items():
    os.environ[_name.upper()] = str(_value)  # Read by JAX in the subprocesses.
    jax.config.update(_name, _value)
# The suite's time is XLA:CPU compiling many small programs once each, not running them: LLVM at
# optimisation level 0 for the programs that do not set their own (the distillation step keeps
# jaxdd.xla's level 1) cut a cold run of step_test, run_test's shipped configs and retrain_test
# from 588 to 451 s (-n 2, 2-core AMD EPYC). The results under test do not depend on it.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
).strip()

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
