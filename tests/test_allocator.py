"""The memory allocator the commands start under: chosen from CACO_JAX_ALLOCATOR, preloaded by starting the
command again, named in one line; the opt-out; and (tests/test_train.py) the same weights either way."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

from caco_jax import allocator

ROOT = pathlib.Path(__file__).resolve().parents[1]
PREFERRED = next((name for name in allocator.PREFERRED if allocator.find(name)), None)
needs_preferred = pytest.mark.skipif(
    PREFERRED is None or not sys.platform.startswith("linux"),
    reason="no preferred allocator installed (Debian: apt-get install libtcmalloc-minimal4; .ci/run installs it)",
)


def test_the_choice_follows_the_environment(monkeypatch):
    monkeypatch.setattr(allocator, "find", lambda name: f"lib{name}.so.4" if name == "tcmalloc" else None)
    monkeypatch.setattr(sys, "platform", "linux")
    assert allocator.wanted({}) == ("tcmalloc", "libtcmalloc.so.4")  # the first preferred one installed
    assert allocator.wanted({allocator.ENV: "glibc"}) == ("glibc", None)
    assert allocator.wanted({allocator.ENV: "off"}) == ("glibc", None)
    assert allocator.wanted({allocator.ENV: "jemalloc"}) == ("glibc", None)  # asked for, not installed
    with pytest.raises(ValueError, match="CACO_JAX_ALLOCATOR='hoard'"):
        allocator.wanted({allocator.ENV: "hoard"})
    monkeypatch.setattr(sys, "platform", "darwin")
    assert allocator.wanted({}) == ("glibc", None)


def _command(env_extra: dict[str, str]) -> subprocess.CompletedProcess:
    """``caco-jax predict`` on a workdir that does not exist: it parses, starts, says its allocator and fails."""
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", allocator.ENV, "CACO_JAX_ALLOCATOR_STARTED")}
    env |= {"PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"} | env_extra
    code = "import sys; from caco_jax.cli.main import main; sys.exit(main())"
    args = [sys.executable, "-c", code, "predict", "--workdir", "/nonexistent/run", "x.jpg"]
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=300, check=False)


@needs_preferred
def test_a_command_starts_itself_under_the_preferred_allocator_and_says_so():
    done = _command({})
    lines = done.stderr.splitlines()
    assert f"memory allocator: {PREFERRED} (CACO_JAX_ALLOCATOR=glibc turns it off)" in lines, done.stderr
    assert sum("memory allocator" in line for line in lines) == 1  # started again once, not in a loop
    assert done.returncode == 2 and "error:" in done.stderr  # then the command runs as before


def test_the_opt_out_keeps_glibcs_malloc():
    done = _command({allocator.ENV: "glibc"})
    assert "memory allocator: glibc's malloc" in done.stderr.splitlines(), done.stderr


@needs_preferred
def test_loaded_reads_the_preloaded_library():
    probe = "from caco_jax import allocator; print(allocator.loaded())"
    env = dict(os.environ, PYTHONPATH=str(ROOT), LD_PRELOAD=str(allocator.find(PREFERRED)))
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == PREFERRED
    env.pop("LD_PRELOAD")
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "glibc"


def test_a_library_shipped_in_a_python_package_is_found(tmp_path, monkeypatch):
    lib = tmp_path / "cmeel.prefix" / "lib"
    lib.mkdir(parents=True)
    (lib / "libmimalloc.so.3").write_bytes(b"")
    monkeypatch.setattr(allocator.ctypes.util, "find_library", lambda stem: None)
    monkeypatch.setattr(sys, "path", [str(tmp_path)])
    assert allocator.find("mimalloc") == str(lib / "libmimalloc.so.3")
    assert allocator.find("jemalloc") is None
