"""What checkpoints and best weights share about faults: crash points, disk-failure messages, quiet orbax.

* :func:`point` marks a step of a save sequence. With ``CACO_JAX_CRASH_AT=NAME`` (or
  ``NAME:N``, the N-th time) in the environment the process kills itself there with
  SIGKILL, exactly as ``kill -9`` would: how the tests prove that every moment of a save
  can be resumed. Without the variable it costs one dictionary lookup.
* :func:`write_failure` turns an OSError (or orbax's wrapped tensorstore error) into one
  sentence naming the path, the reason and the free space left.
* :func:`checksums` (a CRC-32 per array) and :func:`file_manifest` (size and CRC-32 per file) are what
  checkpoints and weights directories record to catch damage that still decodes (orbax's zstd frames
  carry no checksum): :func:`changed_files` names the files that no longer match.
* :func:`quiet_orbax` stops orbax from printing a full traceback for every failed write
  and every read it abandons (a full disk gave 1,893 lines, then 31 'Future exception was never
  retrieved', a damaged checkpoint hundreds of 'Event loop is closed'); the error itself still
  reaches the caller, which reports it once.
"""

from __future__ import annotations

import logging
import os
import pathlib
import re
import shutil
import signal
import sys
import warnings
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np

CRASH_ENV = "CACO_JAX_CRASH_AT"
_reached: dict[str, int] = {}


def point(name: str) -> None:
    """A named moment of a save sequence; kills the process here when ``CACO_JAX_CRASH_AT`` says so."""
    spec = os.environ.get(CRASH_ENV)
    if not spec:
        return
    target, _, nth = spec.partition(":")
    if target != name:
        return
    _reached[name] = _reached.get(name, 0) + 1
    if _reached[name] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)


def checksums(flat: Mapping[str, Any]) -> dict[str, int]:
    """CRC-32 of each array's bytes (host copies; one replica of a replicated multi-host array)."""
    out = {}
    for k, v in flat.items():
        if hasattr(v, "is_fully_addressable") and not v.is_fully_addressable:
            v = v.addressable_shards[0].data
        out[k] = zlib.crc32(np.ascontiguousarray(np.asarray(v)).data.cast("B"))
    return out


def file_manifest(directory: pathlib.Path) -> dict[str, list[int]]:
    """{path relative to ``directory``: [size, CRC-32]} of every file below it."""
    out = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        data = path.read_bytes()
        out[path.relative_to(directory).as_posix()] = [len(data), zlib.crc32(data)]
    return out


def changed_files(directory: pathlib.Path, manifest: Mapping[str, Any]) -> list[str]:
    """The files of ``manifest`` (relative to ``directory``) that are missing or differ from it."""
    changed = []
    for name, (size, crc) in sorted(manifest.items()):
        try:
            data = (directory / name).read_bytes()
        except OSError:
            changed.append(name)
            continue
        if len(data) != size or zlib.crc32(data) != crc:
            changed.append(name)
    return changed


def free_bytes(path: str | os.PathLike) -> int | None:
    """Free bytes on the disk holding ``path`` (its nearest existing parent), or None if unknown."""
    path = pathlib.Path(path)
    for candidate in (path, *path.parents):
        if candidate.exists():
            try:
                return shutil.disk_usage(candidate).free
            except OSError:
                return None
    return None


def size_text(n: float | None) -> str:
    """Bytes as '1.2 GB' / '340 MB' / '12 kB'."""
    if n is None:
        return "unknown"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} bytes"


def reason(err: BaseException, limit: int = 240) -> str:
    """An exception as one short line: its root cause's message (orbax wraps tensorstore's errors
    in ones that print pages of spec), cut to ``limit`` characters."""
    while err.__cause__ is not None:
        err = err.__cause__
    if isinstance(err, OSError) and err.errno and err.strerror:
        return f"{err.strerror} [errno {err.errno}]"
    text = " ".join(str(err).split()) or type(err).__name__
    code = re.search(r"os_error_code='?(\d+)", text)
    if code:  # tensorstore's I/O errors end with the OS error: say that, the path is named elsewhere
        return f"{os.strerror(int(code.group(1)))} [errno {code.group(1)}]"
    text = text.split(" [tensorstore_spec=")[0]
    return text if len(text) <= limit else text[: limit - 3] + "..."


def write_failure(what: str, path: str | os.PathLike, err: BaseException, needed: int | None = None) -> str:
    """'could not write WHAT to PATH: REASON (F free on that disk[, about N needed])'."""
    free = free_bytes(path)
    room = f"{size_text(free)} free on that disk" + (f", about {size_text(needed)} needed" if needed else "")
    return f"could not write {what} to {path}: {reason(err)} ({room})"


def _tensorstore_error(value: BaseException | None) -> bool:
    """Whether an exception is one of tensorstore's I/O errors ('RESOURCE_EXHAUSTED: Error writing "..." in
    OCDBT database ...'): set on a future from C++, so no Python frame says where it came from."""
    text = str(value)
    return (
        isinstance(value, ValueError | OSError)
        and re.match(r"[A-Z][A-Z_]+: ", text) is not None
        and any(mark in text for mark in ("OCDBT", "tensorstore", "os_error_code"))
    )


class _DropOrbaxErrors(logging.Filter):
    """Error records logged by orbax's code (absl logger) or about orbax's futures (asyncio logger: every
    array write still in flight when a full disk fails the save ends as 'Future exception was never
    retrieved')."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            return True
        if f"{os.sep}orbax{os.sep}" in record.pathname:
            return False
        if record.exc_info and _tensorstore_error(record.exc_info[1]):
            return False
        tb = record.exc_info[2] if record.exc_info else None
        while tb is not None:
            if f"{os.sep}orbax{os.sep}" in tb.tb_frame.f_code.co_filename:
                return False
            tb = tb.tb_next
        return True


_FILTER = _DropOrbaxErrors()


def _late_read_error(value: BaseException | None, where: object = None) -> bool:
    """Whether an exception is the echo of a read orbax abandoned: when one array of a checkpoint
    fails to read, orbax closes its event loop while tensorstore still completes the others,
    and each prints a traceback ('Event loop is closed' from a tensorstore callback,
    'Exception ignored in <coroutine>' for orbax's read coroutines)."""
    tb = getattr(value, "__traceback__", None)
    if (
        isinstance(value, RuntimeError)
        and "Event loop is closed" in str(value)
        and tb is not None
        and tb.tb_frame.f_code.co_name == "call_soon_threadsafe"
    ):  # raised into a callback, not by our code
        return True
    code = getattr(where, "cr_code", None)
    return code is not None and f"{os.sep}orbax{os.sep}" in code.co_filename


def quiet_orbax() -> None:
    """Drops the error records orbax logs from its save threads and the tracebacks of reads it
    abandoned (idempotent); the error itself still reaches the caller, which reports it once."""
    for name in ("absl", "asyncio"):
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
    # the write coroutines of a save that failed before reaching them, collected at exit
    warnings.filterwarnings("ignore", r"coroutine '[^']*async_serialize[^']*' was never awaited", RuntimeWarning)
    if getattr(sys.excepthook, "_caco_jax", False):
        return
    previous_except, previous_unraisable = sys.excepthook, sys.unraisablehook

    def excepthook(kind: type[BaseException], value: BaseException, tb: Any) -> None:
        if not _late_read_error(value):
            previous_except(kind, value, tb)

    def unraisablehook(unraisable: Any) -> None:
        if not _late_read_error(unraisable.exc_value, unraisable.object):
            previous_unraisable(unraisable)

    excepthook._caco_jax = True  # type: ignore[attr-defined]
    sys.excepthook, sys.unraisablehook = excepthook, unraisablehook
