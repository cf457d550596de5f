"""A training run's workdir: one writer at a time (issue 39), and workdirs that cannot be made.

Nothing here trains: the refusals come before any data is read, so every case takes well under a
second.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys

import pytest

from caco_jax.cli.train import main as train_main
from caco_jax.runs import lock

ROOT = pathlib.Path(__file__).resolve().parents[1]
# A process that takes the lock and holds it until killed (it imports nothing but the lock module).
HOLD = (
    "import sys; from caco_jax.runs import lock; h = lock.acquire(sys.argv[1]); "
    "print('held', flush=True); sys.stdin.read()"
)


def test_a_second_train_on_a_workdir_in_use_is_refused_in_one_line_naming_the_holder(tmp_path, capsys):
    handle = lock.acquire(tmp_path)
    try:
        code = train_main(["--config", "demo", "--workdir", str(tmp_path)])
    finally:
        handle.close()
    err = capsys.readouterr().err
    assert code == 2, err
    [line] = err.splitlines()
    assert line.startswith(f"error: {tmp_path} is in use by another caco-jax train (pid {os.getpid()} on host ")
    assert [p.name for p in tmp_path.iterdir()] == [lock.LOCK_FILE]  # the refused run wrote nothing


def test_the_lock_is_released_at_the_end_of_the_block_and_names_its_holder(tmp_path):
    with lock.held(tmp_path):
        info = json.loads((tmp_path / lock.LOCK_FILE).read_text())
        assert info["pid"] == os.getpid()
        with pytest.raises(lock.WorkdirBusy, match=f"pid {os.getpid()} on host"):
            lock.acquire(tmp_path)
    lock.acquire(tmp_path).close()  # free again


def test_the_lock_file_of_a_killed_run_blocks_nothing(tmp_path):
    """kill -9 leaves the lock file (naming the dead process) but not the lock: the rerun starts."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(lock.WorkdirBusy, match=f"pid {holder.pid} on host"):
            lock.acquire(tmp_path)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert json.loads((tmp_path / lock.LOCK_FILE).read_text())["pid"] == holder.pid  # left behind
    with lock.held(tmp_path):
        assert json.loads((tmp_path / lock.LOCK_FILE).read_text())["pid"] == os.getpid()


@pytest.mark.parametrize("where", ["under_a_file", "lock_unwritable"])
def test_a_workdir_that_cannot_be_made_or_written_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch, where):
    """Issue 39: a workdir under a regular file was a 21-line traceback and exit 1."""
    (tmp_path / "file").write_text("x")
    workdir = tmp_path / "file" / "run"
    if where == "lock_unwritable":  # as on a read-only disk (root ignores file modes, so the open fails here)
        workdir = tmp_path / "run"

        def refuse(*_args: object, **_kwargs: object) -> None:
            raise PermissionError(13, "Permission denied")

        monkeypatch.setattr(lock, "open", refuse, raising=False)
    code = train_main(["--config", "demo", "--workdir", str(workdir)])
    err = capsys.readouterr().err
    assert code == 2, err
    [line] = err.splitlines()
    expected = "cannot create --workdir" if where == "under_a_file" else "cannot write in --workdir"
    assert line.startswith(f"error: {expected} {workdir}") and ("Not a directory" in line or "denied" in line)
