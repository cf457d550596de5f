"""Training checkpoints: model, optimiser, step, RNG, data-iterator position and best weights together.

One orbax ``CheckpointManager`` under ``workdir/checkpoints`` keeps the latest N
checkpoints, each with up to four items: ``state`` (the :class:`~caco_jax.training.steps.TrainState`
as a flat ``{path: array}`` dict), ``data`` (the grain iterator state, JSON), ``meta``
(epoch, history, the best weights' metadata and a CRC-32 of every array, JSON) and
``best`` (the best-validation weights so far, once an epoch has ended). Holding the best
weights in the checkpoint commits them together with the score that chose them: a
resumed run puts exactly those back in ``workdir/best`` (``WeightsWriter.reconcile``).

orbax writes to a temporary folder and renames it when complete, so a crash mid-save
never leaves a checkpoint that looks valid. Damage that happens later (a truncated or
overwritten file, lost metadata) is caught on restore (orbax's errors, and the CRC-32s
for silent corruption): :meth:`Checkpointer.restore_newest` then moves the checkpoint to
``workdir/checkpoints_damaged/`` with one log line and tries the one before. A save that
fails (full disk, no permission) raises :class:`CheckpointSaveError` at once: before
writing when the disk cannot hold it, else as soon as the background write reports it
(:meth:`Checkpointer.poll`, every step).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import shutil
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from caco_jax.errors import CacoError, RunTooOld, WeightsError
from caco_jax.runs import faults
from caco_jax.trees import flatten, unflatten

PyTree = Any
DAMAGED_DIR = "checkpoints_damaged"
_ITEMS = ("state", "data", "meta", "best")


class CheckpointSaveError(CacoError):
    """A checkpoint could not be written (full disk, permissions); the previous one is intact."""


class CheckpointDamaged(WeightsError):
    """A checkpoint cannot be restored (truncated, overwritten, missing files); the message says why."""


@dataclasses.dataclass
class Restored:
    """One restored checkpoint: ``best`` is the flat best weights, or None before the first epoch ended."""

    step: int
    state: PyTree
    data: Any
    meta: dict[str, Any]
    best: dict[str, np.ndarray] | None


checksums = faults.checksums  # a CRC-32 per array: orbax's zstd frames carry none


def _verify(flat: Mapping[str, Any], expected: Mapping[str, int], item: str) -> None:
    got = checksums(flat)
    bad = sorted(k for k in expected if got.get(k) != expected[k])
    if bad or got.keys() != expected.keys():
        raise CheckpointDamaged(f"{item} arrays do not match their checksums: {', '.join(bad[:3]) or 'keys differ'}")


def _du(path: pathlib.Path) -> int:
    """Bytes under ``path`` (files orbax deletes meanwhile count as 0)."""
    total = 0
    for p in path.rglob("*"):
        try:
            total += p.stat().st_size if p.is_file() else 0
        except OSError:
            pass
    return total


def _nbytes(x: Any) -> int:
    return int(np.prod(np.shape(x), dtype=np.int64)) * np.dtype(x.dtype).itemsize


class Checkpointer:
    """Saves and restores (train state, data-iterator state, metadata, best weights) under ``directory``."""

    def __init__(self, directory: str | pathlib.Path, *, keep: int = 3):
        self.directory = pathlib.Path(directory).resolve()
        faults.quiet_orbax()
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, cleanup_tmp_directories=True),
            item_names=_ITEMS,
        )
        self._pending: int | None = None
        self._needed = 0

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        """Steps of the kept checkpoints, oldest first."""
        return sorted(self._manager.all_steps())

    def save(
        self,
        step: int,
        state: PyTree,
        data_state: Any,
        meta: dict[str, Any],
        best: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        """Starts an (asynchronous) save; device arrays are copied before it returns. Raises
        :class:`CheckpointSaveError` when the previous save failed or this one cannot fit."""
        self.wait()
        flat = flatten(state)
        sums = {"state": checksums(flat)} | ({"best": checksums(best)} if best is not None else {})
        latest = self.latest_step()
        raw = sum(_nbytes(v) for v in flat.values()) + sum(_nbytes(v) for v in (best or {}).values())
        self._needed = int(1.1 * (_du(self.directory / str(latest)) if latest is not None else raw)) + 2**20
        free = faults.free_bytes(self.directory)
        if free is not None and free < self._needed:
            raise CheckpointSaveError(self._stopped(step, OSError("not enough free space")))
        items = {
            "state": ocp.args.StandardSave(flat),
            "data": ocp.args.JsonSave(_jsonable(data_state)),
            "meta": ocp.args.JsonSave(dict(meta) | {"checksums": sums}),
        }
        if best is not None:
            items["best"] = ocp.args.StandardSave(dict(best))
        try:
            self._manager.save(step, args=ocp.args.Composite(**items), force=True)
        except Exception as err:  # orbax raises OSError or tensorstore's ValueError
            raise CheckpointSaveError(self._stopped(step, err)) from err
        self._pending = step
        faults.point("checkpoint.write")

    def _stopped(self, step: int, err: BaseException) -> str:
        latest = self.latest_step()
        keep = (
            f"Checkpoint {latest} (with the best weights it records) is intact: free some space (or fix "
            "the permissions) and rerun the same command to resume from it"
            if latest is not None and latest != step
            else "No checkpoint was written yet: free some space (or fix the permissions) and rerun the same command"
        )
        return (
            faults.write_failure(f"checkpoint {step}", self.directory, err, self._needed)
            + f"; training stopped. {keep}"
        )

    def poll(self, *, block: bool = False) -> int | None:
        """The step of the pending save, once, when it has committed; raises :class:`CheckpointSaveError`
        if it failed. Blocks on a save in progress only with ``block``."""
        step = self._pending
        if step is None or (not block and self._manager.is_saving_in_progress()):
            return None
        self.wait()
        return step

    def wait(self) -> None:
        """Blocks until the pending save has committed (or raises :class:`CheckpointSaveError`)."""
        if self._pending is None:
            return
        step, self._pending = self._pending, None
        try:
            self._manager.wait_until_finished()
        except Exception as err:  # orbax re-raises the background thread's error
            raise CheckpointSaveError(self._stopped(step, err)) from err

    def restore(self, step: int, like: PyTree) -> tuple[PyTree, Any, dict[str, Any]]:
        """(train state, data-iterator state, metadata) of checkpoint ``step`` (see :meth:`read`)."""
        restored = self.read(step, like)
        return restored.state, restored.data, restored.meta

    def read(self, step: int, like: PyTree, best_like: Mapping[str, np.ndarray] | None = None) -> Restored:
        """Checkpoint ``step`` in the structure (and shardings) of ``like`` (the best weights in that of
        ``best_like``), verified against its checksums; :class:`CheckpointDamaged` says why it cannot be used,
        :class:`~caco_jax.errors.RunTooOld` that an older caco-jax wrote it (before checkpoints recorded
        checksums and held the best weights)."""
        abstract = {
            k: jax.ShapeDtypeStruct(np.shape(v), v.dtype, sharding=getattr(v, "sharding", None))
            for k, v in flatten(like).items()
        }
        try:
            head = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
            meta = dict(head["meta"])
            if "checksums" not in meta:
                raise RunTooOld(self.directory.parent, f"checkpoint {step} records no checksums nor best weights")
            if not isinstance(meta.get("history", []), list):
                raise CheckpointDamaged("its metadata has no history list")
            items = {"state": ocp.args.StandardRestore(abstract), "data": ocp.args.JsonRestore()}
            if meta.get("best") is not None and best_like is not None:
                items["best"] = ocp.args.StandardRestore(
                    {k: np.zeros(np.shape(v), v.dtype) for k, v in best_like.items()}
                )
            out = self._manager.restore(step, args=ocp.args.Composite(**items))
            sums = meta.pop("checksums")
            _verify(out["state"], sums["state"], "state")
            best = None
            if "best" in items:
                best = {k: np.asarray(v) for k, v in out["best"].items()}
                _verify(best, sums["best"], "best-weights")
            state = unflatten(dict(out["state"]), like, source=f"checkpoint {step}")
        except (CheckpointDamaged, RunTooOld):
            raise
        except Exception as err:  # damage shows as any of orbax's / tensorstore's / json's errors
            raise CheckpointDamaged(faults.reason(err)) from err
        return Restored(step, state, _from_jsonable(out["data"]), meta, best)

    def restore_newest(
        self,
        like: PyTree,
        best_like: Mapping[str, np.ndarray] | None = None,
        *,
        accept: Callable[[Restored], None] = lambda r: None,
        log: Callable[[str], None] = print,
    ) -> Restored | None:
        """The newest checkpoint that restores (and that ``accept`` takes without raising), or None if
        there is none. Each damaged one newer than it is moved to ``checkpoints_damaged/`` with one
        log line; if every checkpoint is damaged, nothing is moved and :class:`CheckpointDamaged` lists them."""
        damaged: list[tuple[int, str]] = []
        for step in reversed(self.all_steps()):
            try:
                restored = self.read(step, like, best_like)
                accept(restored)
            except (CheckpointDamaged, ValueError, KeyError, TypeError) as err:
                damaged.append((step, faults.reason(err)))
                continue
            for bad, why in damaged:  # the first process moves them (a shared folder), every one reloads
                moved = self.quarantine(bad) if jax.process_index() == 0 else self.directory.parent / DAMAGED_DIR
                log(f"checkpoint {bad} is damaged ({why}); moved to {moved}; resuming from {step}")
            if damaged and jax.process_count() > 1:
                from jax.experimental import multihost_utils

                multihost_utils.sync_global_devices("caco_jax: damaged checkpoints moved")
                self._manager.reload()
            return restored
        if damaged:
            listed = "; ".join(f"checkpoint {s}: {why}" for s, why in damaged)
            raise CheckpointDamaged(
                f"no checkpoint in {self.directory} can be restored ({listed}). Move the "
                "folder aside to start this run afresh, or use another --workdir"
            )
        return None

    def quarantine(self, step: int) -> pathlib.Path:
        """Moves checkpoint ``step`` out of the managed folder (kept for inspection, never deleted)."""
        target = self.directory.parent / DAMAGED_DIR / str(step)
        n = 1
        while target.exists():
            n += 1
            target = target.with_name(f"{step}-{n}")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(os.fspath(self.directory / str(step)), os.fspath(target))
        self._manager.reload()
        return target

    def close(self) -> None:
        """Waits for the pending save (raising if it failed) and releases orbax's threads."""
        try:
            self.wait()
        finally:
            self._manager.close()


def _jsonable(data_state: Any) -> Any:
    if isinstance(data_state, bytes):
        return {"__bytes__": data_state.decode("latin-1")}
    return data_state


def _from_jsonable(data: Any) -> Any:
    if isinstance(data, dict) and set(data) == {"__bytes__"}:
        return data["__bytes__"].encode("latin-1")
    return data
