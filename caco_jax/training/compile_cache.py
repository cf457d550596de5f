"""JAX's persistent compilation cache for the scripts: compiled steps are reused across runs.

XLA compilation dominates short runs on a CPU (tens of seconds per jitted model
function); with the cache a second ``caco-jax predict`` or demo run loads the compiled
programs from disk instead. Location, in order: the ``--compile_cache`` flag of a
script, the ``CACO_JAX_COMPILE_CACHE`` environment variable, then
``$XDG_CACHE_HOME/caco_jax/jax`` (``~/.cache/caco_jax/jax``). The value ``off`` (or
``0``, ``none``, ``false``) switches it off.
"""

from __future__ import annotations

import os
import pathlib

ENV = "CACO_JAX_COMPILE_CACHE"
_OFF = {"off", "0", "none", "false", "no"}


def default_dir() -> pathlib.Path:
    base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return pathlib.Path(base) / "caco_jax" / "jax"


def resolve(flag: str | None = None) -> pathlib.Path | None:
    """The cache directory the flag / environment / default select, or None when switched off."""
    value = flag if flag else os.environ.get(ENV, "")
    if value.strip().lower() in _OFF:
        return None
    return pathlib.Path(value).expanduser() if value else default_dir()


def enable(flag: str | None = None) -> pathlib.Path | None:
    """Points JAX's persistent cache at :func:`resolve`'s directory (before the first compile)."""
    import jax

    path = resolve(flag)
    if path is None:
        return None
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path
