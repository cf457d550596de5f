"""Pytrees as flat ``{"a/b/0/c": leaf}`` dicts: the one flattening used by checkpoints and weights."""

from __future__ import annotations

from typing import Any

import jax

PyTree = Any


def _key(entry: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def path_str(path: tuple) -> str:
    """A jax key path as 'a/b/0/c'."""
    return "/".join(_key(p) for p in path)


def flatten(tree: PyTree) -> dict[str, Any]:
    """Any pytree (nested dicts, dataclasses, lists) -> {'a/b/0/c': leaf}."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {path_str(path): leaf for path, leaf in leaves}


def unflatten(flat: dict[str, Any], like: PyTree, *, source: str = "the checkpoint") -> PyTree:
    """Inverse of :func:`flatten`: ``like``'s structure filled from ``flat`` (every key must exist)."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(like)
    keys = [path_str(path) for path, _ in leaves]
    missing = [k for k in keys if k not in flat]
    if missing:
        raise KeyError(f"{source} lacks {len(missing)} entries, e.g. {missing[:3]}; was it written by another model?")
    return jax.tree_util.tree_unflatten(treedef, [flat[k] for k in keys])
