"""One run per workdir: an advisory lock held for the whole run.

`lock(out)` takes an exclusive `fcntl.flock` on `out/.lock` and writes the holder's pid, host,
command and start time into it. A second run on the same workdir is refused with a message
that names the running process. The operating system releases a `flock` when its process
dies, however it dies (`kill -9` included), so a lock left behind by a killed run is simply
taken over by the next one (which says so, naming the dead holder its file still records); a
run that ends (normally or by an exception) empties the file. There is no stale-pid guessing.
The lock file is not part of the run's results: resuming is unaffected by it.

`flock` needs a POSIX system and, for workdirs on network file systems, a server that supports
it (NFSv4 does; a multi-host run locks each process's own output directory).
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import pathlib
import socket
import sys
from collections.abc import Iterator

from absl import logging

from jaxdd import errors

__all__ = ["LOCK_NAME", "WorkdirInUse", "lock"]

LOCK_NAME = ".lock"


class WorkdirInUse(errors.InputError, RuntimeError):
    """Another live process holds the workdir's lock."""


def _holder(path: pathlib.Path) -> dict:
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}


def _describe(holder: dict) -> str:
    if not holder:
        return "another process"
    return (
        f"process {holder.get('pid')} on {holder.get('host')} (started {holder.get('started')}: "
        f"{holder.get('command')})"
    )


@contextlib.contextmanager
def lock(out: pathlib.Path) -> Iterator[None]:
    """Holds `out/.lock` for the block; raises `WorkdirInUse` if a live process holds it."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise WorkdirInUse(
                f"workdir {out} is in use by {_describe(_holder(path))}; wait for it to finish, "
                "stop it, or pass another --workdir."
            ) from None
        previous = _holder(path)
        if previous.get("pid") not in (None, os.getpid()):
            logging.warning(
                "took over the lock of workdir %s from %s, which is no longer running",
                out,
                _describe(previous),
            )
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": " ".join(sys.argv),
            "started": datetime.datetime.now().isoformat(timespec="seconds"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)  # Released normally: the next run takes over nothing.
    finally:
        os.close(fd)  # Closing releases the flock.
