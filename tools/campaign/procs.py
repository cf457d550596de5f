"""The campaign's clock and log, and its subprocesses: each started in its own process group, stopped
at a deadline with SIGTERM (training saves a checkpoint and exits 75), then SIGKILL after a grace period."""

from __future__ import annotations

import importlib.util
import os
import pathlib
import signal
import subprocess
import time
from collections.abc import Callable, Sequence

MEMORY_FRACTION_VARS = ("XLA_CLIENT_MEM_FRACTION", "XLA_PYTHON_CLIENT_MEM_FRACTION")


class Clock:
    """Seconds since the campaign started, against a hard end; SIGTERM / SIGINT move the end to now."""

    def __init__(self, budget_s: float, reserve_s: float) -> None:
        self.t0 = time.monotonic()
        self.budget_s = budget_s
        self.end = budget_s - reserve_s  # work (every phase but packing) ends here
        self.stopped_by: int | None = None

    def now(self) -> float:
        return time.monotonic() - self.t0

    def left(self) -> float:
        return 0.0 if self.stopped_by is not None else max(0.0, self.end - self.now())

    def deadline(self, seconds: float) -> float:
        """The campaign time ``seconds`` from now, capped at the hard end."""
        return min(self.now() + seconds, self.end)

    def install(self) -> None:
        def stop(signum: int, _frame: object) -> None:
            self.stopped_by = signum

        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, stop)


class Log:
    """Timestamped lines (campaign seconds) to stdout and to the campaign log."""

    def __init__(self, path: pathlib.Path, clock: Clock) -> None:
        self.path, self.clock = path, clock

    def __call__(self, message: str) -> None:
        line = f"[{self.clock.now():7.1f} s] {message}"
        print(line, flush=True)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as fh:
            fh.write(line + "\n")


class Proc:
    """A subprocess with its output appended to ``log_path``, in its own process group."""

    def __init__(
        self, name: str, cmd: Sequence[str], log_path: pathlib.Path, env: dict[str, str], cwd: pathlib.Path
    ) -> None:
        self.name, self.cmd = name, list(cmd)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._out = open(log_path, "a")  # noqa: SIM115 -- closed in finish()
        self._out.write(f"$ {' '.join(self.cmd)}\n")
        self._out.flush()
        self.started = time.time()
        self.popen = subprocess.Popen(
            self.cmd, stdout=self._out, stderr=subprocess.STDOUT, env=env, cwd=cwd, process_group=0
        )
        self.terminated_at: float | None = None
        self.rc: int | None = None

    def poll(self) -> int | None:
        if self.rc is None:
            self.rc = self.popen.poll()
            if self.rc is not None:
                self._out.close()
        return self.rc

    def _signal(self, sig: int) -> None:
        try:
            os.killpg(self.popen.pid, sig)
        except ProcessLookupError:
            pass

    def terminate(self) -> None:
        if self.poll() is None and self.terminated_at is None:
            self._signal(signal.SIGTERM)
            self.terminated_at = time.monotonic()

    def kill(self) -> None:
        if self.poll() is None:
            self._signal(signal.SIGKILL)
            self.popen.wait()
            self.poll()


def stop_all(procs: Sequence[Proc], grace_s: float, log: Callable[[str], None], poll_s: float = 0.2) -> None:
    """SIGTERM every live process, wait up to ``grace_s`` for them, SIGKILL what is left."""
    live = [p for p in procs if p.poll() is None]
    for p in live:
        log(f"{p.name}: SIGTERM")
        p.terminate()
    until = time.monotonic() + grace_s
    while any(p.poll() is None for p in live) and time.monotonic() < until:
        time.sleep(poll_s)
    for p in live:
        if p.poll() is None:
            log(f"{p.name}: still running {grace_s:.0f} s after SIGTERM: SIGKILL")
            p.kill()


def run_until(
    proc: Proc,
    clock: Clock,
    deadline: float,
    grace_s: float,
    log: Callable[[str], None],
    stop_when: Callable[[], bool] | None = None,
    poll_s: float = 1.0,
) -> int:
    """Waits for ``proc`` until it exits, ``stop_when()`` is true, the campaign time ``deadline`` or a signal;
    returns its exit code (negative: the signal that ended it)."""
    while proc.poll() is None:
        if clock.now() >= deadline or clock.stopped_by is not None or (stop_when is not None and stop_when()):
            stop_all([proc], grace_s, log)
            break
        time.sleep(poll_s)
    return proc.poll()  # type: ignore[return-value]


def package_view(repo: pathlib.Path, work: pathlib.Path) -> list[str]:
    """Paths to put first on the children's PYTHONPATH so that ``caco_jax.configs`` imports without an
    install (a bare GPU machine: the repo on PYTHONPATH has configs/ beside caco_jax/, not inside it):
    a folder ``caco_jax`` of links to every entry of repo/caco_jax plus ``configs -> repo/configs``."""
    try:
        found = importlib.util.find_spec("caco_jax.configs") is not None
    except ModuleNotFoundError:
        found = False
    if found:
        return []
    view = work / "pyview" / "caco_jax"
    view.mkdir(parents=True, exist_ok=True)
    targets = {p.name: p for p in (repo / "caco_jax").iterdir() if p.name != "__pycache__"}
    targets["configs"] = repo / "configs"
    for name, target in targets.items():
        link = view / name
        if not link.is_symlink():
            link.symlink_to(target.resolve())
    return [str(view.parent)]


def child_env(repo: pathlib.Path, work: pathlib.Path, *, parallel: int = 0) -> dict[str, str]:
    """The environment of every subprocess: unbuffered output, one compilation cache for all of them, the
    repo importable, and with ``parallel`` > 0 each JAX process limited to its share of the GPU's memory."""
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    env.setdefault("CACO_JAX_COMPILE_CACHE", str(work / "jax_cache"))
    paths = [*package_view(repo, work), str(repo), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    if parallel > 0 and not any(env.get(k) for k in MEMORY_FRACTION_VARS):
        env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{min(0.75, 0.9 / parallel):.2f}"
    return env
