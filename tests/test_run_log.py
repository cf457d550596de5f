"""The run log's TensorBoard events: what a stop lost is written again from metrics.jsonl, once."""

from __future__ import annotations

import collections
import logging

from caco_jax.training.run_log import RunLog, tb_points, trim_events


def _logged(workdir, steps: range) -> None:
    runlog = RunLog(workdir)
    for step in steps:
        runlog.scalars(step, {"train/loss": 1.0 / step, "train/accuracy": 0.5})
        if step % 2 == 0:
            runlog.scalars(step, {"val_bacc": 0.1 * step}, kind="epoch")
    runlog.close()


def _every_point(steps: range) -> set[tuple[str, int]]:
    points = {(tag, s) for s in steps for tag in ("train/loss", "train/accuracy")}
    return points | {("epoch/val_bacc", s) for s in steps if s % 2 == 0}


def test_points_a_kill_lost_are_written_again_from_the_rows_once(tmp_path, caplog):
    _logged(tmp_path, range(1, 7))
    assert tb_points(tmp_path / "tb") == _every_point(range(1, 7))
    trim_events(tmp_path / "tb", 3)  # as if tensorboardX's queue had not reached the file after step 3
    assert tb_points(tmp_path / "tb") == _every_point(range(1, 4))

    runlog = RunLog(tmp_path)
    with caplog.at_level(logging.INFO, logger="caco_jax"):
        assert runlog.forget_after(5) == 2  # the rows of step 6 go; those of 4 and 5 stay, their points return
    runlog.close()
    assert tb_points(tmp_path / "tb") == _every_point(range(1, 6))
    assert "5 point(s) a stop had lost" in caplog.text

    counts = collections.Counter()
    for path in (tmp_path / "tb").glob("events.out.tfevents.*"):
        counts.update(tag_steps(path))
    assert max(counts.values()) == 1  # no point twice


def tag_steps(path):
    import struct

    from tensorboardX.proto import event_pb2

    data, pos = path.read_bytes(), 0
    while pos < len(data):
        (length,) = struct.unpack("<Q", data[pos : pos + 8])
        event = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + length])
        yield from ((v.tag, event.step) for v in event.summary.value)
        pos += 16 + length
