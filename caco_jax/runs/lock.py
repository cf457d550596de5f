"""One writer per workdir: ``caco-jax train`` holds an exclusive lock on ``<workdir>/train.lock``.

The lock is ``fcntl.flock`` on that file, which records the holder (PID, host, start time) for the
message a second writer gets. The kernel drops the lock when its process ends, however it ends
(``kill -9`` included), so a lock file left by a killed run blocks nothing: the next run takes the
lock and writes itself into the file. Readers (predict, evaluate, serve, export) never take it.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import pathlib
import socket
from collections.abc import Iterator
from typing import IO

from caco_jax.errors import EXIT_USAGE, CacoError, RunDirError

LOCK_FILE = "train.lock"


class WorkdirBusy(CacoError):
    """Another ``caco-jax train`` holds the workdir's lock; nothing was started."""

    exit_code = EXIT_USAGE


def holder(workdir: pathlib.Path) -> str:
    """'pid N on host H since T' as the lock file records it ('an unknown process' if unreadable)."""
    try:
        info = json.loads((workdir / LOCK_FILE).read_text())
        return f"pid {info['pid']} on host {info['host']} since {info['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "an unknown process"


def acquire(workdir: str | os.PathLike) -> IO[str]:
    """Takes the lock of ``workdir`` (an existing directory) and writes this process into its file; returns
    the open file, which holds the lock until closed. :class:`WorkdirBusy` names the holder."""
    workdir = pathlib.Path(workdir)
    path = workdir / LOCK_FILE
    try:
        handle = open(path, "a+")  # noqa: SIM115 - held open for the run: closing it releases the lock
    except OSError as err:
        why = f"{err.strerror} [errno {err.errno}]" if err.strerror else str(err)
        raise RunDirError(f"cannot write in --workdir {workdir} ({why}): give a folder this user can write") from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise WorkdirBusy(
            f"{workdir} is in use by another caco-jax train ({holder(workdir)}): wait for it to finish or stop "
            "it, or give another --workdir (predict, evaluate, serve and export may read it meanwhile)"
        ) from None
    except OSError:
        handle.close()
        raise
    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": now}) + "\n")
    handle.flush()
    return handle


@contextlib.contextmanager
def held(workdir: pathlib.Path, *, active: bool = True) -> Iterator[None]:
    """The lock of ``workdir`` for the block (``active`` False: none taken, e.g. not the first process)."""
    if not active:
        yield
        return
    handle = acquire(workdir)
    try:
        yield
    finally:
        handle.close()
