"""Run logging: console + ``train.log``, ``metrics.jsonl`` and TensorBoard event files."""

from __future__ import annotations

import json
import logging
import pathlib
import time
from collections.abc import Mapping

from tensorboardX import SummaryWriter

log = logging.getLogger("caco_jax")


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
        self._tb = SummaryWriter(str(self.workdir / "tb"))
        self._file = logging.FileHandler(self.workdir / "train.log")
        self._file.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        log.addHandler(self._file)

    def forget_after(self, step: int) -> int:
        """Drops the ``metrics.jsonl`` rows of steps after ``step`` (a run resuming from the checkpoint
        at ``step`` logs them again); returns how many were dropped."""
        if not self.files:
            return 0
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
        for k, v in clean.items():
            self._tb.add_scalar(k if "/" in k else f"{kind}/{k}", v, step)
        self._tb.flush()

    def close(self) -> None:
        if not self.files:
            return
        self._jsonl.close()
        self._tb.close()
        log.removeHandler(self._file)
        self._file.close()
