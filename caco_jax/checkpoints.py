"""Training checkpoints: model, optimiser, step, RNG and data-iterator position together.

One orbax ``CheckpointManager`` under ``workdir/checkpoints`` keeps the latest N
checkpoints, each with three items: ``state`` (the :class:`~caco_jax.steps.TrainState`
as a flat ``{path: array}`` dict), ``data`` (the grain iterator state, JSON) and
``meta`` (epoch, history, best score, JSON). orbax writes to a temporary folder and
renames it when complete, so a crash mid-save never leaves a checkpoint that looks
valid; restoring always takes the newest complete one.
"""
from __future__ import annotations

import pathlib
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

PyTree = Any


def _path_str(path: tuple) -> str:
    parts = []
    for p in path:
        for attr in ("key", "name", "idx"):
            if hasattr(p, attr):
                parts.append(str(getattr(p, attr)))
                break
        else:
            parts.append(str(p))
    return "/".join(parts)


def flatten_tree(tree: PyTree) -> dict[str, Any]:
    """Any pytree -> {'params/blocks/0/...': leaf} with readable string keys."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {_path_str(path): leaf for path, leaf in leaves}


def unflatten_tree(flat: dict[str, Any], like: PyTree) -> PyTree:
    """Inverse of :func:`flatten_tree`, using ``like`` for the structure."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(like)
    keys = [_path_str(path) for path, _ in leaves]
    missing = [k for k in keys if k not in flat]
    if missing:
        raise KeyError(f"checkpoint lacks {len(missing)} entries, e.g. {missing[:3]}; was it written by another model?")
    return jax.tree_util.tree_unflatten(treedef, [flat[k] for k in keys])


class Checkpointer:
    """Saves and restores (train state, data-iterator state, metadata) under ``directory``."""

    def __init__(self, directory: str | pathlib.Path, *, keep: int = 3):
        self.directory = pathlib.Path(directory).resolve()
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, cleanup_tmp_directories=True),
            item_names=("state", "data", "meta"),
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state: PyTree, data_state: Any, meta: dict[str, Any]) -> None:
        """Starts an (asynchronous) save; device arrays are copied before it returns."""
        self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(flatten_tree(state)),
                data=ocp.args.JsonSave(_jsonable(data_state)),
                meta=ocp.args.JsonSave(meta),
            ),
            force=True,
        )

    def restore(self, step: int, like: PyTree) -> tuple[PyTree, Any, dict[str, Any]]:
        """Restores checkpoint ``step`` into the structure (and shardings) of ``like``."""
        abstract = {
            k: jax.ShapeDtypeStruct(np.shape(v), v.dtype, sharding=getattr(v, "sharding", None))
            for k, v in flatten_tree(like).items()
        }
        out = self._manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore(), meta=ocp.args.JsonRestore()
            ),
        )
        return unflatten_tree(dict(out["state"]), like), _from_jsonable(out["data"]), dict(out["meta"])

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def _jsonable(data_state: Any) -> Any:
    if isinstance(data_state, bytes):
        return {"__bytes__": data_state.decode("latin-1")}
    return data_state


def _from_jsonable(data: Any) -> Any:
    if isinstance(data, dict) and set(data) == {"__bytes__"}:
        return data["__bytes__"].encode("latin-1")
    return data
