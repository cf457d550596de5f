"""Small files written whole: one guarded, atomic writer, and the names every package shares.

:func:`write_atomic` writes to ``<name>.tmp`` beside the target and renames it over the target, so
a reader sees the old file or the new one, never half of one; when the write fails (a full disk,
no permission) the ``.tmp`` is removed and a :class:`FileWriteError` says what, where, why and the
free space, in one line.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pathlib
import shutil
import zlib

from caco_jax.errors import CacoError

WEIGHTS_META = "caco_jax_weights.json"  # a weights directory's metadata (caco_jax.runs.integrity)
SIDE_RECORD = "side_files"  # its record of the files saved beside the weights (caco_jax.evaluation.side_files)


class FileWriteError(CacoError):
    """A file could not be written (a full disk, no permission); nothing half-written is left."""


def write_atomic(path: str | os.PathLike, data: str | bytes, what: str | None = None) -> pathlib.Path:
    """Writes ``data`` to ``path`` through ``path.tmp`` (replaced atomically); on an OSError the
    ``.tmp`` is removed and a :class:`FileWriteError` names ``what`` (default: the file's name)."""
    path = pathlib.Path(path)
    tmp = path.with_name(path.name + ".tmp")
    payload = data.encode() if isinstance(data, str) else data
    try:
        _write(tmp, payload)
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise FileWriteError(failure(what or path.name, path, err)) from err
    return path


def _write(path: pathlib.Path, payload: bytes) -> None:
    with open(path, "wb") as f:
        f.write(payload)


def failure(what: str, path: pathlib.Path, err: OSError) -> str:
    """'could not write WHAT to PATH: REASON (F free on that disk)' (one line)."""
    why = f"{err.strerror} [errno {err.errno}]" if err.errno and err.strerror else str(err) or type(err).__name__
    room = ""
    with contextlib.suppress(OSError, StopIteration):
        free = shutil.disk_usage(next(p for p in path.parents if p.is_dir())).free
        room = f" ({free / 1e6:.1f} MB free on that disk)"
    advice = "free some space" if err.errno == errno.ENOSPC else "check the folder and its permissions"
    return f"could not write {what} to {path}: {why}{room}; nothing half-written was left: {advice} and rerun"


def crc(path: pathlib.Path) -> list[int]:
    """[size, CRC-32] of a file's bytes."""
    data = path.read_bytes()
    return [len(data), zlib.crc32(data)]
