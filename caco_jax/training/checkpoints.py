"""Training checkpoints: model, optimiser, step, RNG and data-iterator position together.

One orbax ``CheckpointManager`` under ``workdir/checkpoints`` keeps the latest N
checkpoints, each with three items: ``state`` (the :class:`~caco_jax.training.steps.TrainState`
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

from caco_jax.trees import flatten, unflatten

PyTree = Any


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

    def all_steps(self) -> list[int]:
        """Steps of the kept checkpoints, oldest first."""
        return sorted(self._manager.all_steps())

    def save(self, step: int, state: PyTree, data_state: Any, meta: dict[str, Any]) -> None:
        """Starts an (asynchronous) save; device arrays are copied before it returns."""
        self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(flatten(state)),
                data=ocp.args.JsonSave(_jsonable(data_state)),
                meta=ocp.args.JsonSave(meta),
            ),
            force=True,
        )

    def restore(self, step: int, like: PyTree) -> tuple[PyTree, Any, dict[str, Any]]:
        """Restores checkpoint ``step`` into the structure (and shardings) of ``like``."""
        abstract = {
            k: jax.ShapeDtypeStruct(np.shape(v), v.dtype, sharding=getattr(v, "sharding", None))
            for k, v in flatten(like).items()
        }
        out = self._manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore(), meta=ocp.args.JsonRestore()
            ),
        )
        return unflatten(dict(out["state"]), like, source=f"checkpoint {step}"), _from_jsonable(out["data"]), dict(out["meta"])

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
