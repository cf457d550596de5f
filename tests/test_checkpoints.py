"""Checkpoints and best weights under faults: kill points of the save sequence, damaged files, failed saves.

Small arrays stand in for a train state, so every case runs in a fraction of a second; the
training loop's own kill points run for real (SIGKILL) in tests/test_train.py (slow).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import pathlib
import re
import shutil

import jax.numpy as jnp
import numpy as np
import pytest

from caco_jax.runs import faults
from caco_jax.runs.integrity import WeightsDamaged
from caco_jax.runs.loading import read_weights
from caco_jax.runs.weights import WeightsSaveError, WeightsWriter
from caco_jax.training.checkpoints import (
    DAMAGED_DIR,
    CheckpointDamaged,
    Checkpointer,
    CheckpointSaveError,
)
from caco_jax.training.loop import committed

STEPS_PER_EPOCH = 10


def state_at(epoch: int) -> dict:
    """A stand-in train state: different numbers every epoch."""
    rng = np.random.default_rng(epoch)
    return {
        "params": {"w": jnp.asarray(rng.normal(size=(64, 32)).astype(np.float32))},
        "opt": {"mu": jnp.asarray(rng.normal(size=(64, 32)).astype(np.float32))},
        "step": jnp.asarray(epoch * STEPS_PER_EPOCH, jnp.int32),
    }


def weights_at(epoch: int) -> dict[str, np.ndarray]:
    return {"w": np.asarray(state_at(epoch)["params"]["w"]), "b": np.full((3,), epoch, np.float32)}


def record_at(epoch: int) -> dict:
    return {"epoch": epoch, "step": epoch * STEPS_PER_EPOCH, "val_bacc": 0.1 * epoch, "class_names": ["a", "b"]}


class Killed(BaseException):
    """Raised at a kill point: nothing after it in the save sequence runs."""


def run_epochs(
    workdir: pathlib.Path,
    epochs: list[tuple[int, bool]],
    kill_at: str | None = None,
    monkeypatch: pytest.MonkeyPatch | None = None,
    best_so_far: int | None = None,
) -> None:
    """The training loop's save sequence (its ``committed`` and WeightsWriter / Checkpointer calls) for
    each (epoch, is a new best): best weights to best.partial, the checkpoint (holding them), and once
    it has committed, best.partial into best/. With
    ``kill_at='point:N'`` it stops dead at the N-th time that point is reached; writes already
    started finish (a kill a moment later), as the test then waits for them."""
    if kill_at:
        name, nth = kill_at.split(":")
        seen = {"n": 0}

        def point(reached: str) -> None:
            if reached == name:
                seen["n"] += 1
                if seen["n"] == int(nth):
                    raise Killed(kill_at)

        monkeypatch.setattr(faults, "point", point)
    ckpt, best = Checkpointer(workdir / "checkpoints"), WeightsWriter(workdir / "best")
    current = None if best_so_far is None else (record_at(best_so_far), weights_at(best_so_far))
    try:
        for epoch, new_best in epochs:
            committed(ckpt, best, block=True)  # during the epoch's steps: the previous checkpoint commits
            if new_best:
                current = (record_at(epoch), weights_at(epoch))
                best.save(current[1], current[0])
            committed(ckpt, best, block=True)  # as save_checkpoint does (nothing is pending by now)
            ckpt.save(
                epoch * STEPS_PER_EPOCH,
                state_at(epoch),
                {"position": epoch},
                {"history": [], "best_bacc": 0.0, "epoch": epoch, "best": current and current[0]},
                best=current and current[1],
            )
        committed(ckpt, best, block=True)
    except Killed:
        ckpt._manager.close()  # what was already being written lands (as if the kill came a moment later)
        best._checkpointer.close()
        monkeypatch.undo()
        return
    ckpt.close()
    best.close()


def resume(workdir: pathlib.Path, messages: list[str] | None = None):
    """What restore_or_init does: the newest good checkpoint, and best/ made to match it."""
    messages = [] if messages is None else messages
    ckpt = Checkpointer(workdir / "checkpoints")
    restored = ckpt.restore_newest(state_at(0), weights_at(0), log=messages.append)
    best = WeightsWriter(workdir / "best")
    if restored is not None:
        done = best.reconcile(restored.meta["best"], restored.best, f"checkpoint {restored.step}", restored.step)
        if done:
            messages.append(done)
    best.close()
    ckpt.close()
    return restored


def assert_best_is(workdir: pathlib.Path, epoch: int) -> None:
    flat, meta = read_weights(workdir / "best")
    assert meta["epoch"] == epoch and meta["step"] == epoch * STEPS_PER_EPOCH
    assert flat.keys() == weights_at(epoch).keys()
    for k, v in weights_at(epoch).items():
        np.testing.assert_array_equal(flat[k], v, err_msg=k)
    assert not (workdir / "best.partial").exists() and not (workdir / "best.old").exists()


def test_a_checkpoint_round_trips_with_its_best_weights(tmp_path):
    run_epochs(tmp_path, [(1, True), (2, False)])
    restored = resume(tmp_path)
    assert restored.step == 20 and restored.data == {"position": 2}
    np.testing.assert_array_equal(restored.state["opt"]["mu"], state_at(2)["opt"]["mu"])
    assert restored.meta["best"] == record_at(1) and "checksums" not in restored.meta
    for k, v in weights_at(1).items():
        np.testing.assert_array_equal(restored.best[k], v)
    assert_best_is(tmp_path, 1)


# Every moment of the sequence at the epoch that is the last new best (2), with a best/ already
# there from epoch 1; epoch 3 is no better. 'checkpoint.committed:2' is the kill of issue 23.
KILL_POINTS = ["best.write:2", "checkpoint.write:2", "checkpoint.committed:2", "best.promote:2", "best.swap:1"]


@pytest.mark.parametrize("kill_at", KILL_POINTS)
def test_a_kill_at_any_point_of_the_save_sequence_keeps_best_and_checkpoint_together(tmp_path, kill_at, monkeypatch):
    run_epochs(tmp_path, [(1, True), (2, True), (3, False)], kill_at, monkeypatch)
    restored = resume(tmp_path)
    assert_best_is(tmp_path, restored.meta["best"]["epoch"])  # the weights the checkpoint records
    replay = [(e, e == 2) for e in range(restored.step // STEPS_PER_EPOCH + 1, 4)]
    run_epochs(tmp_path, replay, best_so_far=restored.meta["best"]["epoch"])
    assert_best_is(tmp_path, 2)


@pytest.mark.parametrize("kill_at", ["best.write:2", "checkpoint.write:2"])
def test_a_kill_mid_write_leaves_torn_copies_that_resuming_ignores(tmp_path, kill_at, monkeypatch):
    """As a real kill -9 leaves them: half-written best.partial and checkpoint folders."""
    run_epochs(tmp_path, [(1, True), (2, True)], kill_at, monkeypatch)
    shutil.rmtree(tmp_path / "best.partial" / "weights")
    if (tmp_path / "checkpoints" / "20").exists():
        (tmp_path / "checkpoints" / "20").rename(tmp_path / "checkpoints" / "20.orbax-checkpoint-tmp-1")
    messages: list[str] = []
    restored = resume(tmp_path, messages)
    assert restored.step == 10 and not any(" is damaged (" in m for m in messages)
    assert_best_is(tmp_path, 1)


def test_a_resume_from_before_the_first_epoch_end_drops_later_best_weights(tmp_path):
    run_epochs(tmp_path, [(1, True)])
    shutil.rmtree(tmp_path / "checkpoints")
    ckpt = Checkpointer(tmp_path / "checkpoints")
    ckpt.save(5, state_at(0), {}, {"history": [], "best_bacc": 0.0, "epoch": 0, "best": None})
    ckpt.close()
    messages: list[str] = []
    assert resume(tmp_path, messages).best is None
    assert not (tmp_path / "best").exists() and "removed best weights" in messages[0]


def _overwrite_best(workdir: pathlib.Path) -> pathlib.Path:
    """64 bytes (seeded) replaced in the middle of best/'s largest array file; returns that file."""
    f = max((p for p in (workdir / "best" / "weights").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    data = bytearray(f.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = np.random.default_rng(1).bytes(64)
    f.write_bytes(bytes(data))
    return f


def _epoch_1_arrays_in_best(workdir: pathlib.Path) -> pathlib.Path:
    """best/weights replaced by epoch 1's (every file decodes; its metadata still says epoch 2)."""
    other = WeightsWriter(workdir / "other")
    other.save(weights_at(1), record_at(1))
    other.close()
    shutil.rmtree(workdir / "best" / "weights")
    shutil.copytree(workdir / "other" / "weights", workdir / "best" / "weights")
    return workdir / "best" / "weights"


@pytest.mark.parametrize("damage", [_overwrite_best, _epoch_1_arrays_in_best])
def test_a_damaged_best_is_rewritten_from_the_checkpoint_on_resume(tmp_path, damage):
    """best/ holds the step its checkpoint records but other bytes: resuming puts the recorded ones back."""
    run_epochs(tmp_path, [(1, True), (2, True), (3, False)])
    where = damage(tmp_path)
    messages: list[str] = []
    resume(tmp_path, messages)
    [line] = [m for m in messages if " is damaged (" in m]
    assert line.startswith(str(where)) and line.endswith(f"rewritten into {tmp_path / 'best'} from checkpoint 30")
    assert "\n" not in line and len(line) < 600
    assert_best_is(tmp_path, 2)


def test_reading_a_damaged_best_restores_it_from_its_checkpoint_or_names_the_file(tmp_path, caplog):
    """What evaluate / predict / serve / export read: a run's best/ is checked against the checkpoint
    that records it (restored from it, the temperature beside it kept); without one, one error naming the file."""
    run_epochs(tmp_path, [(1, True), (2, True), (3, False)])
    (tmp_path / "best" / "calibration.json").write_text('{"temperature": 1.5}')
    damaged_file = _overwrite_best(tmp_path)
    with caplog.at_level(logging.WARNING, logger="caco_jax"):
        assert_best_is(tmp_path, 2)
    [line] = [r.getMessage() for r in caplog.records if " is damaged (" in r.getMessage()]
    assert line.startswith(f"{damaged_file} is damaged (")
    assert line.endswith(f"restored {tmp_path / 'best'} from checkpoint 30")
    assert (tmp_path / "best" / "calibration.json").read_text() == '{"temperature": 1.5}'
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="caco_jax"):
        assert_best_is(tmp_path, 2)  # restored for good: nothing more to say
    assert not caplog.records
    damaged_file = _overwrite_best(tmp_path)
    shutil.move(tmp_path / "checkpoints", tmp_path / "elsewhere")
    with pytest.raises(WeightsDamaged) as err:
        read_weights(tmp_path / "best")
    assert str(err.value).startswith(f"{damaged_file} is damaged (arrays ")


@pytest.mark.parametrize("lost", ["caco_jax_weights.json", "weights"])
def test_a_lost_part_of_best_is_restored_from_its_checkpoint_with_its_side_files_record(tmp_path, caplog, lost):
    """Issue 39: a deleted best/caco_jax_weights.json was accepted silently (no class names), a deleted
    best/weights refused with advice assuming a wrong --workdir. Restored, with one line; the side files'
    record survives a lost weights folder; without a checkpoint, one error naming what is missing."""
    from caco_jax.evaluation import calibration, side_files

    run_epochs(tmp_path, [(1, True), (2, True), (3, False)])
    calibration.save(tmp_path / "best", 1.5)
    side_files.record(tmp_path / "best")
    path = tmp_path / "best" / lost
    shutil.rmtree(path) if path.is_dir() else path.unlink()
    with caplog.at_level(logging.WARNING, logger="caco_jax"):
        assert_best_is(tmp_path, 2)
    [line] = [r.getMessage() for r in caplog.records]
    assert line == f"{path} is missing; restored {tmp_path / 'best'} from checkpoint 30"
    assert side_files.temperature(tmp_path / "best") == 1.5
    assert (side_files.recorded(tmp_path / "best") is not None) == (lost == "weights")
    shutil.rmtree(tmp_path / "best" / "weights")
    shutil.move(tmp_path / "checkpoints", tmp_path / "elsewhere")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(WeightsDamaged, match=r"best/weights is missing and no checkpoint in .* records the best"):
        read_weights(tmp_path / "best")


def _largest_state_file(step_dir: pathlib.Path) -> pathlib.Path:
    return max((p for p in (step_dir / "state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def _truncate(step_dir):
    f = _largest_state_file(step_dir)
    f.write_bytes(f.read_bytes()[:100])


def _overwrite(step_dir):
    """Same size, 64 bytes replaced mid-file (seeded): inside a zstd frame they may break decoding (the
    array store's reader says so) or decode to other values (the checksums say so); both are damage."""
    f = _largest_state_file(step_dir)
    data = bytearray(f.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = np.random.default_rng(0).bytes(64)
    f.write_bytes(bytes(data))


def _swap_state(step_dir):
    """The arrays of checkpoint 20 under checkpoint 30's record: every file decodes, only the checksums
    (recorded for epoch 3's values) can tell."""
    shutil.rmtree(step_dir / "state")
    shutil.copytree(step_dir.parent / "20" / "state", step_dir / "state")


DAMAGE = {
    # Which array the truncated file holds (orbax names its data files at random) decides which read fails.
    "truncated array file": (_truncate, ("not valid for value of size 100", "OUT_OF_RANGE: Error reading")),
    # Either the decoder or the checksums notice, whichever comes first: the promise is the same.
    "overwritten array bytes": (_overwrite, ""),
    "decodable arrays with other values": (_swap_state, "do not match their checksums"),
    "garbage metadata": (lambda d: (d / "meta" / "metadata").write_bytes(b"\x00{garbage"), "Expecting value"),
    "missing manifest": (lambda d: (d / "state" / "manifest.ocdbt").unlink(), "state"),
    "missing array file": (lambda d: _largest_state_file(d).unlink(), "state"),
    "missing best weights": (lambda d: shutil.rmtree(d / "best"), "best"),
}


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_resume_walks_back_over_a_damaged_checkpoint_and_keeps_it(tmp_path, kind):
    run_epochs(tmp_path, [(1, True), (2, True), (3, False)])
    damage, why = DAMAGE[kind]
    damage(tmp_path / "checkpoints" / "30")
    messages: list[str] = []
    restored = resume(tmp_path, messages)
    assert restored.step == 20
    np.testing.assert_array_equal(restored.state["params"]["w"], state_at(2)["params"]["w"])
    line = next(m for m in messages if " is damaged (" in m)
    assert line.startswith("checkpoint 30 is damaged (") and line.endswith("; resuming from 20")
    assert any(w in line for w in ((why,) if isinstance(why, str) else why)), line
    assert "\n" not in line and len(line) < 600
    assert (tmp_path / DAMAGED_DIR / "30").is_dir()  # moved aside, never deleted
    assert Checkpointer(tmp_path / "checkpoints").all_steps() == [10, 20]
    assert_best_is(tmp_path, 2)


def test_two_damaged_checkpoints_each_get_a_line(tmp_path):
    run_epochs(tmp_path, [(1, True), (2, True), (3, False)])
    _truncate(tmp_path / "checkpoints" / "30")
    _overwrite(tmp_path / "checkpoints" / "20")
    messages: list[str] = []
    assert resume(tmp_path, messages).step == 10
    damaged = [m for m in messages if " is damaged (" in m]
    assert [m.split(" is damaged")[0] for m in damaged] == ["checkpoint 30", "checkpoint 20"]
    assert all(m.endswith("resuming from 10") for m in damaged)
    assert_best_is(tmp_path, 1)


def test_when_every_checkpoint_is_damaged_nothing_is_moved_and_the_error_lists_them(tmp_path):
    run_epochs(tmp_path, [(1, True), (2, False)])
    for step in (10, 20):
        _truncate(tmp_path / "checkpoints" / str(step))
    with pytest.raises(CheckpointDamaged, match="checkpoint 20: .*; checkpoint 10: .*Move the folder aside"):
        resume(tmp_path)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["10", "20"]


def test_a_save_that_cannot_fit_stops_before_writing(tmp_path, monkeypatch):
    run_epochs(tmp_path, [(1, True)])
    monkeypatch.setattr(faults, "free_bytes", lambda path: 12_345)
    ckpt = Checkpointer(tmp_path / "checkpoints")
    with pytest.raises(CheckpointSaveError) as err:
        ckpt.save(20, state_at(2), {}, {"history": [], "best_bacc": 0.0, "epoch": 2, "best": None})
    ckpt.close()
    message = str(err.value)
    assert str(tmp_path / "checkpoints") in message and "12.3 kB free" in message and "needed" in message
    assert "Checkpoint 10" in message and "rerun the same command" in message
    assert resume(tmp_path).step == 10  # the previous checkpoint and best weights are untouched
    assert_best_is(tmp_path, 1)


def test_a_save_failing_in_the_background_is_reported_at_the_next_poll(tmp_path, monkeypatch):
    """orbax writes in a thread; a full disk there surfaces at the first poll after it (each step)."""
    run_epochs(tmp_path, [(1, True)])
    ckpt = Checkpointer(tmp_path / "checkpoints")
    ckpt.save(20, state_at(2), {}, {"history": [], "best_bacc": 0.0, "epoch": 2, "best": None})
    full = ValueError(
        "RESOURCE_EXHAUSTED: Error writing local file: Failed to write 4096 bytes to file 7: "
        "No space left on device [os_error_code='28']"
    )
    real_wait = ckpt._manager.wait_until_finished

    def failing_wait():
        real_wait()
        raise full

    monkeypatch.setattr(ckpt._manager, "wait_until_finished", failing_wait)
    with pytest.raises(
        CheckpointSaveError,
        match=r"checkpoint 20 .*No space left on device \[errno 28\] "
        r"\(.* free on that disk",
    ):
        ckpt.poll(block=True)
    monkeypatch.undo()
    ckpt.close()


def test_a_save_refused_by_the_file_system_names_the_path(tmp_path, monkeypatch):
    ckpt = Checkpointer(tmp_path / "checkpoints")

    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "checkpoints" / "10"))

    monkeypatch.setattr(ckpt._manager, "save", refuse)
    with pytest.raises(CheckpointSaveError, match="Permission denied .*No checkpoint was written yet"):
        ckpt.save(10, state_at(1), {}, {"history": [], "best_bacc": 0.0, "epoch": 1, "best": None})
    monkeypatch.undo()
    ckpt.close()


def test_best_weights_that_fail_to_write_leave_the_previous_ones(tmp_path, monkeypatch):
    best = WeightsWriter(tmp_path / "best")
    best.save(weights_at(1), record_at(1))
    best.wait()

    def failing_wait():
        raise ValueError("RESOURCE_EXHAUSTED: [os_error_code='28']")

    best.save(weights_at(2), record_at(2))
    best._checkpointer.wait_until_finished()
    monkeypatch.setattr(best._checkpointer, "wait_until_finished", failing_wait)  # as if the write had failed
    with pytest.raises(WeightsSaveError, match="No space left on device.*still holds the previous best weights"):
        best.wait()
    monkeypatch.undo()
    assert json.loads((tmp_path / "best" / "caco_jax_weights.json").read_text())["epoch"] == 1
    best.close()


def test_a_crash_point_named_in_the_environment_kills_the_process(tmp_path):
    import subprocess
    import sys

    code = (
        "from caco_jax.runs import faults\nfaults.point('x')\nfaults.point('y')\nprint('after y')\n"
        "faults.point('y')\nprint('not reached')"
    )
    env = dict(os.environ, **{faults.CRASH_ENV: "y:2"})
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == -9 and proc.stdout == "after y\n"


def test_reading_weights_quiets_orbax_before_its_first_restore(tmp_path, monkeypatch):
    """Issue 39: evaluate / predict / export printed 'Event loop is closed' tracebacks for a truncated
    best/ (8 of 12 runs): their first restore (check_weights) ran before the quiet handlers existed."""
    import sys

    from caco_jax.runs import integrity

    run_epochs(tmp_path, [(1, True)])
    monkeypatch.setattr(sys, "excepthook", sys.__excepthook__)
    monkeypatch.setattr(sys, "unraisablehook", sys.__unraisablehook__)
    for name in ("absl", "asyncio"):
        monkeypatch.setattr(logging.getLogger(name), "filters", [])
    seen = []

    class Restorer:
        def __init__(self) -> None:
            seen.append(
                (getattr(sys.excepthook, "_caco_jax", False), faults._FILTER in logging.getLogger("asyncio").filters)
            )
            raise RuntimeError("stop here")

    monkeypatch.setattr(integrity.ocp, "StandardCheckpointer", Restorer)
    assert integrity.check_weights(tmp_path / "best")[2] is not None  # reported as damage, not raised
    assert seen == [(True, True)]


def test_only_the_echoes_of_abandoned_reads_are_silenced(capsys):
    """A failed checkpoint read makes tensorstore call into orbax's closed event loop ('Event loop is
    closed', raised inside call_soon_threadsafe) and leaves orbax's read coroutines unfinished; those
    tracebacks go, any other error still prints."""
    import sys
    import types

    faults.quiet_orbax()

    def call_soon_threadsafe():
        raise RuntimeError("Event loop is closed")

    def outermost(fn) -> BaseException:
        try:
            fn()
        except RuntimeError as err:
            return err.with_traceback(err.__traceback__.tb_next)  # as a C callback calls it: no caller frame
        raise AssertionError("did not raise")

    echo = outermost(call_soon_threadsafe)
    sys.excepthook(type(echo), echo, echo.__traceback__)
    assert capsys.readouterr().err == ""
    ours = RuntimeError("Event loop is closed")
    try:
        raise ours
    except RuntimeError as err:
        sys.excepthook(type(err), err, err.__traceback__)
    assert "Event loop is closed" in capsys.readouterr().err
    code = compile("async def read(): pass", "/x/orbax/checkpoint/serialization.py", "exec")
    namespace: dict = {}
    exec(code, namespace)  # noqa: S102 - a coroutine whose code lives in orbax's package
    coroutine = namespace["read"]()
    hook_args = types.SimpleNamespace(
        exc_type=RuntimeError, exc_value=RuntimeError("x"), exc_traceback=None, err_msg=None, object=coroutine
    )
    sys.unraisablehook(hook_args)
    coroutine.close()
    assert capsys.readouterr().err == ""


def test_the_writes_of_a_failed_save_leave_no_flood_behind(caplog):
    """A disk filling mid-save fails every array write still in flight: each future's error was printed
    at exit ('Future exception was never retrieved', 3 lines each, 31 of them in issue 33), and the
    write coroutines never reached warned as never awaited. The save's error is reported once by the
    caller; those echoes go, other unretrieved errors still print."""
    import asyncio
    import gc
    import warnings

    faults.quiet_orbax()
    loop = asyncio.new_event_loop()
    for error in (
        ValueError(
            'RESOURCE_EXHAUSTED: Error writing "params/w/0" in OCDBT database at local file "/x/": Failed '
            'writing: "/x/d/1": No space left on device [os_error_code=28]'
        ),
        ValueError("a bug of ours"),
    ):
        future = loop.create_future()
        future.set_exception(error)
        del future
        gc.collect()
    loop.close()
    logged = [r for r in caplog.records if r.name == "asyncio"]
    assert [str(r.exc_info[1]) for r in logged] == ["a bug of ours"]

    async def async_serialize_from_host():
        async def write_fragment():
            pass

        return write_fragment()

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        faults.quiet_orbax()  # its filter goes in front of "always"
        loop = asyncio.new_event_loop()
        coroutine = loop.run_until_complete(async_serialize_from_host())
        loop.close()
        del coroutine
        gc.collect()
    assert [str(w.message) for w in seen if "never awaited" in str(w.message)] == []


def _as_older_versions_wrote(workdir: pathlib.Path) -> None:
    """The run's checkpoints and best/ as caco-jax wrote them before checkpoints held the best weights:
    no checksums anywhere, no best-weights record in the checkpoints."""
    for path in (workdir / "checkpoints").rglob("*"):
        try:
            meta = json.loads(path.read_text()) if path.is_file() else None
        except (UnicodeDecodeError, ValueError):
            continue
        if isinstance(meta, dict) and "checksums" in meta:
            path.write_text(json.dumps({k: v for k, v in meta.items() if k not in ("checksums", "best")}))
    path = workdir / "best" / "caco_jax_weights.json"
    meta = json.loads(path.read_text())
    path.write_text(json.dumps({k: v for k, v in meta.items() if k not in ("checksums", "files")}))


def test_a_run_too_old_to_read_is_one_error_naming_it(tmp_path):
    """A run from before checkpoints held the best weights (and recorded checksums): resuming it, or
    reading its best/ weights, is one RunTooOld naming the workdir and what to do; nothing is moved
    aside as damaged or rewritten."""
    from caco_jax.errors import EXIT_USAGE, RunTooOld

    run_epochs(tmp_path, [(1, True)])
    _as_older_versions_wrote(tmp_path)
    says = (
        "^"
        + re.escape(str(tmp_path))
        + r" was written by an older caco-jax \(%s\), .*: train it again in a new --workdir"
    )
    ckpt = Checkpointer(tmp_path / "checkpoints")
    try:
        with pytest.raises(RunTooOld, match=says % "checkpoint 10 records no checksums nor best weights") as err:
            ckpt.restore_newest(state_at(0), weights_at(0))
        assert ckpt.all_steps() == [10] and not (tmp_path / DAMAGED_DIR).exists()
    finally:
        ckpt.close()
    assert err.value.exit_code == EXIT_USAGE
    with pytest.raises(RunTooOld, match=says % re.escape(f"{tmp_path / 'best'} records no checksums")):
        read_weights(tmp_path / "best")
    assert "checksums" not in json.loads((tmp_path / "best" / "caco_jax_weights.json").read_text())
