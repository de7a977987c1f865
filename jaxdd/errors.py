"""Errors that are the user's to fix, told apart from bugs.

Everything that reads what a user gives (the config, the data files, a synthetic set, a
workdir) raises ordinary `ValueError` / `FileNotFoundError`s whose messages say what to do.
`user_input()` marks those raised while such input is read as `InputError`s, keeping their
type (a marked `ValueError` is still a `ValueError`) and message, so the command line can print
them as one `error: ...` line and exit with status 2, while an exception from anywhere else is
a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

__all__ = ["InputError", "InvalidInput", "MissingInput", "user_input"]


class InputError(Exception):
    """Marker: the user's input is wrong or missing; the message says what to do."""


class InvalidInput(InputError, ValueError):
    """A `ValueError` raised while reading the user's input."""


class MissingInput(InputError, FileNotFoundError):
    """A `FileNotFoundError` raised while reading the user's input."""


@contextlib.contextmanager
def user_input() -> Iterator[None]:
    """Re-raises a ValueError / FileNotFoundError from the block as an `InputError`."""
    try:
        yield
    except InputError:
        raise
    except FileNotFoundError as e:
        raise MissingInput(str(e)) from e
    except ValueError as e:
        raise InvalidInput(str(e)) from e
