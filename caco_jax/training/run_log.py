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


def _summary_writer(logdir: str) -> Any:
    """tensorboardX's SummaryWriter, imported without PyTorch: tensorboardX imports torch when it can, only to
    accept torch tensors (which this project never passes), and that import costs every training start about
    3 s on a 2-core CPU. A process that has already imported torch keeps it."""
    if "torch" in sys.modules:
        from tensorboardX import SummaryWriter
    else:
        sys.modules["torch"] = None  # type: ignore[assignment]  # `import torch` raises ImportError meanwhile
        try:
            from tensorboardX import SummaryWriter
        finally:
            del sys.modules["torch"]
    return SummaryWriter(logdir)


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
        return dropped

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
    from tensorboardX.proto import event_pb2

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
