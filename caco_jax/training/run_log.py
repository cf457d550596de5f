"""Run logging: console + ``train.log``, ``metrics.jsonl`` and TensorBoard event files."""

from __future__ import annotations

import json
import logging
import pathlib
import struct
import sys
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tensorboardX import SummaryWriter

log = logging.getLogger("caco_jax")


def _tensorboardx() -> Any:
    """tensorboardX, imported without PyTorch: tensorboardX imports torch when it can, only to accept torch
    tensors (which this project never passes), and that import costs every training start about 3 s on a
    2-core CPU. A process that has already imported torch keeps it."""
    if "torch" in sys.modules:
        import tensorboardX
    else:
        sys.modules["torch"] = None  # type: ignore[assignment]  # `import torch` raises ImportError meanwhile
        try:
            import tensorboardX
        finally:
            del sys.modules["torch"]
    return tensorboardX


def _event_pb2() -> Any:
    _tensorboardx()
    from tensorboardX.proto import event_pb2

    return event_pb2


def _summary_writer(logdir: str) -> Any:
    # tensorboardX names the file by the second it opens in: a writer opened again within that second (a
    # quick rerun) would overwrite the file before it, so a finer clock tells the two apart
    return _tensorboardx().SummaryWriter(logdir, filename_suffix=f".{time.time_ns()}")


class RunLog:
    """Appends to ``workdir/metrics.jsonl`` and ``workdir/train.log``; writes TensorBoard events to ``workdir/tb``.

    With ``files=False`` (every process but the first of a multi-host run) it only logs to the console.
    """

    def __init__(self, workdir: str | pathlib.Path, *, files: bool = True):
        self.workdir = pathlib.Path(workdir)
        self.files = files
        if log.level == logging.NOTSET:
            log.setLevel(logging.INFO)
        if not files:
            return
        self._jsonl = open(self.workdir / "metrics.jsonl", "a", encoding="utf-8")  # noqa: SIM115
        self._tb: SummaryWriter | None = None  # opened at the first scalar, after any trimming
        self._file = logging.FileHandler(self.workdir / "train.log")
        self._file.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        log.addHandler(self._file)

    def forget_after(self, step: int) -> int:
        """Drops the ``metrics.jsonl`` rows and TensorBoard events of steps after ``step`` (a run resuming
        from the checkpoint at ``step`` logs them again); returns how many rows were dropped."""
        if not self.files:
            return 0
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        trim_events(self.workdir / "tb", step)
        self._jsonl.close()
        path = self.workdir / "metrics.jsonl"
        kept, dropped = [], 0
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                later = json.loads(line).get("step", 0) > step
            except (json.JSONDecodeError, AttributeError):
                later = True  # a line cut short by a crash
            if later:
                dropped += 1
            else:
                kept.append(line)
        if dropped:
            tmp = path.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
            tmp.replace(path)
        self._jsonl = open(path, "a", encoding="utf-8")  # noqa: SIM115
        self._replay(kept)
        return dropped

    def _replay(self, lines: list[str]) -> None:
        """Writes again the TensorBoard points of ``metrics.jsonl`` rows the event files lack: tensorboardX
        queues points for a thread of its own, so a kill -9 can lose the last ones, while each row of
        ``metrics.jsonl`` is flushed as it is written."""
        have = tb_points(self.workdir / "tb")
        missing = []
        for line in lines:
            row = json.loads(line)
            kind, step = row.get("kind", "train"), row.get("step", 0)
            for k, v in row.items():
                tag = k if "/" in k else f"{kind}/{k}"
                if k not in ("kind", "step", "time") and isinstance(v, (int, float)) and (tag, step) not in have:
                    missing.append((tag, v, step))
        if not missing:
            return
        self._tb = _summary_writer(str(self.workdir / "tb"))
        for tag, v, step in missing:
            self._tb.add_scalar(tag, v, step)
        self._tb.flush()
        log.info(f"TensorBoard: {len(missing)} point(s) a stop had lost written again from metrics.jsonl")

    def info(self, message: str) -> None:
        log.info(message)

    def scalars(self, step: int, values: Mapping[str, float | None], kind: str = "train") -> None:
        """One JSON line per call (flushed, so a crash loses nothing logged) + TensorBoard scalars."""
        if not self.files:
            return
        clean = {k: v for k, v in values.items() if v is not None}
        self._jsonl.write(json.dumps({"kind": kind, "step": step, "time": time.time(), **clean}) + "\n")
        self._jsonl.flush()
        if self._tb is None:
            self._tb = _summary_writer(str(self.workdir / "tb"))
        for k, v in clean.items():
            self._tb.add_scalar(k if "/" in k else f"{kind}/{k}", v, step)
        self._tb.flush()

    def close(self) -> None:
        if not self.files:
            return
        self._jsonl.close()
        if self._tb is not None:
            self._tb.close()
        log.removeHandler(self._file)
        self._file.close()


def trim_events(tb_dir: pathlib.Path, step: int) -> int:
    """Rewrites each TensorBoard event file in ``tb_dir`` without the summaries of steps after ``step``
    (and without a record cut short by a crash), so that readers see every step once after a resume;
    a file left without any summary is removed. Returns how many summaries were dropped.

    Records are copied byte for byte (TFRecord framing: 8-byte length, 4-byte CRC, data, 4-byte CRC);
    only their step is read."""
    event_pb2 = _event_pb2()
    dropped = 0
    for path in sorted(tb_dir.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        kept, pos, summaries = [], 0, 0
        while pos + 12 <= len(data):
            (length,) = struct.unpack("<Q", data[pos : pos + 8])
            end = pos + 12 + length + 4
            if end > len(data):
                break
            event = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + length])
            if event.HasField("summary") and event.step > step:
                dropped += 1
            else:
                kept.append(data[pos:end])
                summaries += event.HasField("summary")
            pos = end
        if not summaries:
            path.unlink()
        elif sum(map(len, kept)) != len(data):
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_bytes(b"".join(kept))
            tmp.replace(path)
    return dropped


def tb_points(tb_dir: pathlib.Path) -> set[tuple[str, int]]:
    """The (tag, step) of every scalar in ``tb_dir``'s event files (a record cut short is ignored)."""
    event_pb2 = _event_pb2()
    points = set()
    for path in sorted(tb_dir.glob("events.out.tfevents.*")):
        data, pos = path.read_bytes(), 0
        while pos + 12 <= len(data):
            (length,) = struct.unpack("<Q", data[pos : pos + 8])
            if pos + 16 + length > len(data):
                break
            event = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + length])
            points |= {(value.tag, event.step) for value in event.summary.value}
            pos += 16 + length
    return points
