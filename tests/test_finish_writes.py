"""A disk filling during the end-of-training writes (issue 39): one error line, nothing half-written.

Every file the end of training writes (temperature, decision rule, reliability threshold, guard,
predictions, report) goes through ``caco_jax.files.write_atomic``; here its write fails half-way
with ENOSPC, in-process, so nothing is trained and each case takes milliseconds.
"""

from __future__ import annotations

import errno
import json
import pathlib

import numpy as np
import pytest

from caco_jax import files
from caco_jax.evaluation import calibration, decision, ood_score, selective
from caco_jax.training import loop

RULE = decision.DecisionRule("logit_adjustment", (0.1, -0.2), tau=1.0, info={})
SAVES = {
    "calibration.json": lambda d: calibration.save(d, 0.6),
    "decision.json": lambda d: decision.save(d, RULE),
    "selective.json": lambda d: selective.save(d, {"threshold": 0.7}),
    "ood.json": lambda d: ood_score.save(d, ood_score.Guard("mahalanobis", "pooled", 4.5, {"m": np.ones(3)}, {})),
}


def _full_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each write puts half its bytes down, then the disk is full."""

    def write(path: pathlib.Path, payload: bytes) -> None:
        path.write_bytes(payload[: len(payload) // 2])
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(files, "_write", write)


@pytest.mark.parametrize("name", sorted(SAVES))
def test_a_full_disk_at_the_end_of_training_is_one_line_and_leaves_the_previous_file_whole(tmp_path, monkeypatch, name):
    """Issue 39: a 46-line OSError traceback in calibration.save, best/calibration.json.tmp left behind."""
    SAVES[name](tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    _full_disk(monkeypatch)
    with pytest.raises(files.FileWriteError) as err:
        SAVES[name](tmp_path)
    message = str(err.value)
    assert "\n" not in message and message.startswith("could not write the ")
    assert f"{tmp_path}/" in message and "No space left on device [errno 28]" in message
    assert message.endswith("free some space and rerun")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no .tmp, nothing changed


def test_the_end_of_training_turns_a_write_error_into_one_line_and_lets_other_errors_through(tmp_path, monkeypatch):
    class Run:
        workdir = tmp_path

    def final_test(*_args: object) -> None:
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path / "report.md"))

    monkeypatch.setattr(loop, "final_test", final_test)
    with pytest.raises(files.FileWriteError, match=r"report\.md: Read-only file system \[errno 30\]"):
        loop._finished(Run(), None, None, [], None)  # type: ignore[arg-type]

    def broken(*_args: object) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(loop, "final_test", broken)
    with pytest.raises(OSError, match="Input/output error"):
        loop._finished(Run(), None, None, [], None)  # type: ignore[arg-type]


def test_an_atomic_write_replaces_the_file_whole(tmp_path):
    path = files.write_atomic(tmp_path / "a.json", json.dumps({"x": 1}))
    files.write_atomic(path, b"{}")
    assert path.read_text() == "{}" and [p.name for p in tmp_path.iterdir()] == ["a.json"]
