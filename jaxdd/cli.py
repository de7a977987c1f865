"""What the command-line programs share, and the `jaxdd` console script.

Programs (each also `python -m <module>`):
  jaxdd distill   = jaxdd.main    distil a set as configured;
  jaxdd evaluate  = jaxdd.score   score any set (npz, image folder, run) under a config's
                                  protocol, beside the random real subset of the same size;
  jaxdd export    = jaxdd.export  a run's set as an image folder and a PyTorch-ready npz.

Each shows a person only what matters: third-party INFO logging (orbax's checkpoint records,
JAX's backend probing) appears only with absl's `--verbosity=0`. A user error (a bad config
value, an override of a field that does not exist, missing or malformed data, a workdir in use
or holding another run's checkpoints, a diverged run) is printed as one `error: ...` line and
exits with status 2; any other exception is a bug and keeps its traceback.

`jaxdd distill` and `jaxdd evaluate` keep XLA's compiled programs between runs in JAX's
persistent compilation cache (`compilation_cache`), so a resumed, repeated or re-scored run
does not compile its step and its evaluation again.
"""

from __future__ import annotations

import os
import pathlib
import re
import runpy
import sys
from typing import NoReturn

import jax
from absl import flags, logging

from jaxdd import checkpoint, errors
from jaxdd import config as config_lib

__all__ = [
    "FLAG_ERRORS",
    "USER_ERRORS",
    "compilation_cache",
    "config_flag",
    "fail",
    "flag_error",
    "main",
    "parse_flags",
    "quiet",
]

# Errors of the command line itself: absl's, a config file that does not exist, an override of
# a field the config does not have (ml_collections raises KeyError / AttributeError for those).
FLAG_ERRORS = (flags.Error, FileNotFoundError, AttributeError, KeyError)
# Errors of a run that the user fixes.
USER_ERRORS = (errors.InputError, checkpoint.IncompatibleCheckpointError, FloatingPointError)

PROGRAMS = {"distill": "jaxdd.main", "evaluate": "jaxdd.score", "export": "jaxdd.export"}


def fail(message: str) -> NoReturn:
    """Exits with status 2 after one `error: ...` line on stderr."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def flag_error(e: Exception) -> str:
    """The one-line message of a `FLAG_ERRORS` exception."""
    if isinstance(e, AttributeError | KeyError):
        # ml_collections quotes the missing key (twice over) and may add "Did you mean ...".
        text = str(e)
        field = re.search(r"'+\\?'?(\w+)", text)
        guess = re.search(r'Did you mean "(\w+)"', text)
        return (
            f"the config has no field {field.group(1) if field else text!r}"
            + (f" (did you mean {guess.group(1)!r}?)" if guess else "")
            + "; a --config.<field>=... override must name a field that configs/default.py "
            "declares."
        )
    if isinstance(e, FileNotFoundError):
        return str(e)
    return f"{e}; see --helpfull for the flags."


def config_flag() -> flags.FlagHolder:
    """`--config` with its overrides (`jaxdd.config.config_flag`); defining it parses the default
    config file with the command line's overrides, so a flag error there is one `error:` line."""
    try:
        return config_lib.config_flag()
    except FLAG_ERRORS as e:
        fail(flag_error(e))


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing (app.run's `flags_parser`), a flag error as one `error:` line."""
    try:
        return flags.FLAGS(argv)
    except FLAG_ERRORS as e:
        fail(flag_error(e))


def quiet() -> None:
    """WARNING and above unless `--verbosity` was given (absl's app.run turns on INFO)."""
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)


# JAX's persistent compilation cache for the programs: JAXDD_COMPILATION_CACHE names its folder
# (empty: off); JAX's own JAX_COMPILATION_CACHE_DIR, when set, is left in charge.
CACHE_VARIABLE = "JAXDD_COMPILATION_CACHE"
DEFAULT_CACHE = pathlib.Path("~/.cache/jaxdd/xla")


def compilation_cache() -> pathlib.Path | None:
    """Turns on JAX's persistent compilation cache (`jax_compilation_cache_dir`) in the folder
    `$JAXDD_COMPILATION_CACHE` names, by default ~/.cache/jaxdd/xla; returns the folder in use,
    None when `JAXDD_COMPILATION_CACHE` is empty. Its entries are keyed by the program, the
    compile options and the jax/XLA versions, so a stale entry is never used."""
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):  # Read by JAX itself.
        return pathlib.Path(os.environ["JAX_COMPILATION_CACHE_DIR"])
    folder = os.environ.get(CACHE_VARIABLE, str(DEFAULT_CACHE))
    if not folder:
        return None
    path = pathlib.Path(folder).expanduser()
    jax.config.update("jax_compilation_cache_dir", str(path))
    return path


def main() -> None:
    """The `jaxdd` console script: `jaxdd {distill,evaluate,export} [flags]`."""
    if len(sys.argv) < 2 or sys.argv[1] not in PROGRAMS:
        usage = "usage: jaxdd {" + ",".join(PROGRAMS) + "} [--flags]; jaxdd <command> --help"
        if len(sys.argv) < 2:
            print(usage)
            sys.exit(0)
        fail(f"unknown command {sys.argv[1]!r}; {usage}")
    module = PROGRAMS[sys.argv[1]]
    sys.argv = [f"jaxdd {sys.argv[1]}", *sys.argv[2:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
