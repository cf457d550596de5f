"""The page's own folder for uploads and the images it sends back, kept bounded by a sweeper thread."""

from __future__ import annotations

import contextlib
import logging
import os
import pathlib
import shutil
import tempfile
import threading
import time

log = logging.getLogger("caco_jax.serving.uploads")


class UploadCache:
    """The page's own folder for uploads and the images it sends back, kept bounded by a sweeper thread
    (:meth:`start`, every ``every`` seconds), never on a request's path.

    :meth:`sweep` deletes files older than ``keep_seconds``, then the oldest until at most ``max_bytes``
    remain. It never touches a file younger than ``grace_seconds`` (an upload still waiting in the
    queue, an image the browser has not fetched yet), and removes an empty folder only once it is
    older than ``keep_seconds`` (Gradio makes a folder, then writes into it, and reuses a folder for
    identical content). Ages count from a file's last change of content or name (the later of mtime
    and ctime: a copy that keeps its source's mtime is new)."""

    def __init__(
        self,
        directory: str | os.PathLike | None = None,
        *,
        keep_seconds: float = 600,
        max_bytes: int = 256 * 1024 * 1024,
        every: float = 10.0,
        grace_seconds: float = 60.0,
    ):
        self.directory = pathlib.Path(directory or tempfile.mkdtemp(prefix="caco-jax-page-")).resolve()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.keep_seconds, self.max_bytes, self.every = keep_seconds, max_bytes, every
        self.grace_seconds = min(grace_seconds, keep_seconds)
        self.removed = 0  # files deleted so far
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def usage(self) -> tuple[int, int]:
        """(files, bytes) in the folder now."""
        files = self._scan(time.time())[0]
        return len(files), sum(size for _, size, _ in files)

    def _scan(self, now: float) -> tuple[list[tuple[float, int, pathlib.Path]], list[tuple[float, pathlib.Path]]]:
        """([(age, size, path)] of the files, oldest first; [(age, path)] of the folders, deepest first)."""
        files, folders = [], []
        for root, dirs, names in os.walk(self.directory):
            for name in names:
                path = pathlib.Path(root, name)
                stat = _stat(path)
                if stat is not None:
                    files.append((now - max(stat.st_mtime, stat.st_ctime), stat.st_size, path))
            for name in dirs:
                path = pathlib.Path(root, name)
                stat = _stat(path)
                if stat is not None:
                    folders.append((now - max(stat.st_mtime, stat.st_ctime), path))
        files.sort(key=lambda e: -e[0])
        folders.sort(key=lambda e: -len(e[1].parts))
        return files, folders

    def sweep(self, now: float | None = None) -> int:
        """One pass (``now``: the clock to age files by; default the time); returns how many files went."""
        with self._lock:
            files, folders = self._scan(time.time() if now is None else now)
            total, removed = sum(size for _, size, _ in files), 0
            for age, size, path in files:
                if age < self.grace_seconds or (age <= self.keep_seconds and total <= self.max_bytes):
                    break  # the rest are younger still
                path.unlink(missing_ok=True)
                total -= size
                removed += 1
            self.removed += removed
            for age, folder in folders:
                if age > self.keep_seconds:
                    with contextlib.suppress(OSError):  # not empty (or gone): kept
                        folder.rmdir()
            return removed

    def start(self) -> None:
        """Sweeps every ``every`` seconds in a daemon thread."""

        def loop() -> None:
            while not self._stop.wait(self.every):
                try:
                    self.sweep()
                except OSError:  # the next pass tries again
                    log.exception("sweeping %s failed", self.directory)

        self._thread = threading.Thread(target=loop, name="caco-jax-upload-sweeper", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stops the sweeper and deletes the folder."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        shutil.rmtree(self.directory, ignore_errors=True)


def _stat(path: pathlib.Path) -> os.stat_result | None:
    try:
        return path.stat()
    except OSError:  # deleted meanwhile
        return None
