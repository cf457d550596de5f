"""The C memory allocator a process runs under: finding one, and which one is loaded.

XLA's CPU runtime allocates each execution's temporary buffer afresh and frees it after the
step; with glibc's malloc that block is mmap-served and every step faults it back in, zero-filled
by the kernel (docs/performance.md). Another allocator, preloaded (``LD_PRELOAD``) before the
interpreter starts, keeps such blocks. This module only finds the libraries and reads
``/proc/self/maps``; :func:`relaunch` starts a command again under the preferred allocator when one is
installed (``CACO_JAX_ALLOCATOR=glibc`` turns that off).
"""

from __future__ import annotations

import ctypes.util
import os
import pathlib
import sys
from collections.abc import Mapping

# name -> library names to look for (the ld.so name first); Debian's package in the comment.
LIBRARIES: dict[str, tuple[str, ...]] = {
    "tcmalloc_minimal": ("tcmalloc_minimal",),  # libtcmalloc-minimal4 (gperftools)
    "tcmalloc": ("tcmalloc",),  # libgoogle-perftools4
    "jemalloc": ("jemalloc",),  # libjemalloc2
    "mimalloc": ("mimalloc",),  # libmimalloc2.0, or PyPI's cmeel-mimalloc (in site-packages)
}
SYSTEM = "glibc"  # the C library's own malloc: no preload


def _site_library(stem: str) -> str | None:
    """A library shipped inside a Python package (PyPI's cmeel-* wheels put them in cmeel.prefix/lib)."""
    for entry in sys.path:
        lib = pathlib.Path(entry) / "cmeel.prefix" / "lib"
        if lib.is_dir():
            found = sorted(lib.glob(f"lib{stem}.so.*"), key=lambda p: len(p.name))
            if found:
                return str(found[0])
    return None


def find(name: str) -> str | None:
    """The path or ld.so name of allocator ``name`` (a key of :data:`LIBRARIES`), or None when not installed."""
    if name == SYSTEM:
        return None
    if name not in LIBRARIES:
        raise ValueError(f"unknown allocator {name!r}; expected one of {', '.join([SYSTEM, *LIBRARIES])}")
    for stem in LIBRARIES[name]:
        found = ctypes.util.find_library(stem)
        if found:
            return found
        found = _site_library(stem)
        if found:
            return found
    return None


def loaded() -> str:
    """Which allocator this process runs under (``glibc`` when none of :data:`LIBRARIES` is mapped)."""
    try:
        maps = pathlib.Path("/proc/self/maps").read_text()
    except OSError:
        return SYSTEM
    names = {os.path.basename(line.split()[-1]) for line in maps.splitlines() if ".so" in line}
    # tcmalloc_minimal before tcmalloc: "libtcmalloc.so" is not a prefix of "libtcmalloc_minimal.so"
    for name in LIBRARIES:
        if any(n.startswith(f"lib{name}.so") or n.startswith(f"lib{name}_and_profiler.so") for n in names):
            return name
    return SYSTEM


# What the commands start under, in order of preference (docs/performance.md, "The memory allocator":
# tcmalloc measured fastest for caco-jax's training and evaluation on the CPU).
PREFERRED: tuple[str, ...] = ("tcmalloc_minimal", "tcmalloc")
ENV = "CACO_JAX_ALLOCATOR"  # auto (default): the first of PREFERRED installed | glibc: no preload | a name
_STARTED = "CACO_JAX_ALLOCATOR_STARTED"  # set in the relaunched process: never relaunch twice
OFF = ("glibc", "system", "off", "none")
# tcmalloc reports every allocation over 1 GiB on stderr by default; XLA's per-step buffers at 224 px pass it.
_QUIET = {"TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD": str(1 << 60)}


def wanted(environ: Mapping[str, str] | None = None) -> tuple[str, str | None]:
    """(allocator name, library) the commands should run under, from ``CACO_JAX_ALLOCATOR``:
    (``glibc``, None) when turned off, not on Linux or nothing preferred is installed."""
    env = os.environ if environ is None else environ
    choice = env.get(ENV, "auto").strip().lower() or "auto"
    if choice in OFF or not sys.platform.startswith("linux"):
        return SYSTEM, None
    if choice != "auto" and choice not in LIBRARIES:
        raise ValueError(f"{ENV}={choice!r}: expected auto, glibc or one of {', '.join(LIBRARIES)}")
    for name in PREFERRED if choice == "auto" else (choice,):
        lib = find(name)
        if lib is not None:
            return name, lib
    return SYSTEM, None


def relaunch() -> None:
    """Starts this command again under the preferred allocator (``LD_PRELOAD``), when one is installed
    and the process runs under glibc's; returns (and the command goes on) otherwise. Called only by the
    commands' entry points, before anything heavy is imported; the relaunched process says which
    allocator runs (:func:`describe`)."""
    if os.environ.get(_STARTED) or loaded() != SYSTEM:
        return
    try:
        name, lib = wanted()
    except ValueError as err:
        print(f"warning: {err}; running under glibc's malloc", file=sys.stderr)
        return
    if lib is None:
        return
    env = dict(os.environ) | _QUIET | {_STARTED: name}
    env["LD_PRELOAD"] = lib + (":" + env["LD_PRELOAD"] if env.get("LD_PRELOAD") else "")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


def describe() -> str:
    """One line: the allocator this process runs under, and how to change it."""
    name = loaded()
    asked = os.environ.get(_STARTED)
    if name == SYSTEM:
        why = f" ({asked} could not be preloaded)" if asked else ""
        return f"memory allocator: glibc's malloc{why}"
    return f"memory allocator: {name} ({ENV}=glibc turns it off)"
