"""jaxdd.cli: the programs' persistent compilation cache."""

import os
import pathlib
import subprocess
import sys

_SCRIPT = """
import jax, jax.numpy as jnp
from jaxdd import cli
print(cli.compilation_cache())
jax.jit(lambda x: jnp.sin(x) * 2 + 1)(jnp.ones(7)).block_until_ready()
print(jax.config.jax_compilation_cache_dir)
"""


def _run(tmp_path: pathlib.Path, **env: str) -> list[str]:
    environment = {
        key: value
        for key, value in os.environ.items()
        if key not in ("JAX_COMPILATION_CACHE_DIR", "JAXDD_COMPILATION_CACHE")
    }
    environment.update(HOME=str(tmp_path), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", **env)
    proc = subprocess.run(
        [sys.executable, "-c", _SCRIPT],
        env=environment,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.split()


def test_programs_cache_compiled_programs_under_home_by_default(tmp_path):
    folder = tmp_path / ".cache" / "jaxdd" / "xla"
    assert _run(tmp_path) == [str(folder), str(folder)]
    assert any(folder.iterdir()), "the compiled program was written to the cache"


def test_cache_folder_is_chosen_or_turned_off_by_the_environment(tmp_path):
    mine = tmp_path / "mine"
    assert _run(tmp_path, JAXDD_COMPILATION_CACHE=str(mine)) == [str(mine), str(mine)]
    assert any(mine.iterdir())
    assert _run(tmp_path, JAXDD_COMPILATION_CACHE="")[0] == "None"
    assert not (tmp_path / ".cache").exists()
    jax_own = tmp_path / "jax_own"  # JAX's own variable stays in charge.
    assert _run(tmp_path, JAX_COMPILATION_CACHE_DIR=str(jax_own)) == [str(jax_own)] * 2
