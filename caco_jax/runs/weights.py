"""Model weights on disk: orbax checkpoints of an NNX model, written in the background.

Weights are stored as a flat ``{"blocks/0/expand/conv/kernel": array, ...}`` dict (the
NNX parameter and BatchNorm-statistic paths joined by '/'), which orbax handles
without any knowledge of NNX and which reads like the model's structure.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from caco_jax import files
from caco_jax.errors import CacoError, WeightsError
from caco_jax.runs import faults
from caco_jax.runs.integrity import INTEGRITY as _INTEGRITY, META as _META, check_weights
from caco_jax.trees import flatten, unflatten

WEIGHTS_FILTER = (nnx.Param, nnx.BatchStat)


def model_weights(model: nnx.Module) -> dict[str, np.ndarray]:
    """Flat dict of the model's parameters and BatchNorm statistics (host numpy)."""
    return {k: np.asarray(v) for k, v in flatten(nnx.to_pure_dict(nnx.state(model, WEIGHTS_FILTER))).items()}


def state_weights(params: Any, batch_stats: Any) -> dict[str, np.ndarray]:
    """The same flat dict from a train state's pure parameter and statistics trees (no model needed)."""
    host = jax.device_get((params, batch_stats))
    return {k: np.asarray(v) for k, v in (flatten(host[0]) | flatten(host[1])).items()}


def assign_weights(model: nnx.Module, flat: Mapping[str, Any], *, source: str) -> None:
    """Writes a flat weights dict into ``model``; every key and shape must match."""
    state = nnx.state(model, WEIGHTS_FILTER)
    template = nnx.to_pure_dict(state)
    expected = {k: np.shape(v) for k, v in flatten(template).items()}
    missing = sorted(set(expected) - set(flat))
    unexpected = sorted(set(flat) - set(expected))
    wrong = sorted(k for k in expected.keys() & flat.keys() if tuple(np.shape(flat[k])) != expected[k])
    if missing or unexpected or wrong:
        details = [
            f"missing {missing[:5]}" if missing else "",
            f"unexpected {unexpected[:5]}" if unexpected else "",
            "shape mismatch " + ", ".join(f"{k}: {np.shape(flat[k])} vs {expected[k]}" for k in wrong[:5])
            if wrong
            else "",
        ]
        raise WeightsError(
            f"weights in {source} do not fit this model ({'; '.join(d for d in details if d)}); "
            "were they saved for another arch, attention or class count?"
        )
    nnx.replace_by_pure_dict(
        state, unflatten({k: jax.numpy.asarray(v) for k, v in flat.items()}, template, source=source)
    )
    nnx.update(model, state)


def save_weights(
    model: nnx.Module, directory: str | os.PathLike, *, metadata: Mapping[str, Any] | None = None
) -> pathlib.Path:
    """Saves the model's weights as an orbax checkpoint in ``directory`` (plus a JSON sidecar)."""
    writer = WeightsWriter(directory)
    writer.save(model_weights(model), metadata)
    writer.close()
    return writer.directory


class WeightsWriter:
    """Writes flat weights to ``directory`` in the background (the training loop goes on).

    Each save goes to ``<directory>.partial`` and replaces ``directory`` once it is complete
    (:meth:`wait`: at the next save, when the checkpoint recording it has committed, or at the
    end), through ``<directory>.old``, so a crash at any point leaves a complete copy in one of
    the three places; :meth:`reconcile` puts the one a checkpoint records back in ``directory``.
    In a multi-host run only the first process writes (the weights are the same everywhere).
    """

    def __init__(self, directory: str | os.PathLike):
        self.directory = pathlib.Path(directory).resolve()
        self._partial = self.directory.with_name(self.directory.name + ".partial")
        self._old = self.directory.with_name(self.directory.name + ".old")
        self._active = jax.process_index() == 0
        faults.quiet_orbax()
        self._checkpointer = (
            ocp.AsyncCheckpointer(
                ocp.StandardCheckpointHandler(),
                multiprocessing_options=ocp.options.MultiprocessingOptions(primary_host=0, active_processes={0}),
            )
            if self._active
            else None
        )
        self._pending = False
        self._pending_step: int | None = None
        self._bytes = 0

    def save(
        self,
        flat: Mapping[str, np.ndarray],
        metadata: Mapping[str, Any] | None = None,
        *,
        extras_from: pathlib.Path | None = None,
    ) -> None:
        """Starts writing ``flat`` (host arrays) and ``metadata`` (with a CRC-32 of every array); returns
        before the files are written. ``extras_from``: a directory whose other top-level files (a
        temperature, a decision rule) come along."""
        if self._checkpointer is None:  # not the first process: it writes nothing
            return
        self.wait()
        try:
            if self._partial.exists():
                shutil.rmtree(self._partial)
            self._partial.mkdir(parents=True)
            meta = {k: v for k, v in (metadata or {}).items() if k not in _INTEGRITY} | {
                "checksums": faults.checksums(flat)
            }
            extras = extras_from if extras_from is not None and extras_from.is_dir() else None
            meta |= _side_record(extras)
            (self._partial / _META).write_text(json.dumps(meta, indent=2, default=str))
            for extra in sorted(extras.iterdir()) if extras is not None else ():
                if extra.is_file() and extra.name != _META:
                    shutil.copy2(extra, self._partial / extra.name)
            self._bytes = sum(np.asarray(v).nbytes for v in flat.values())
            self._checkpointer.save(self._partial / "weights", args=ocp.args.StandardSave(dict(flat)))
        except (OSError, ValueError) as err:  # orbax reports tensorstore's I/O errors as ValueError
            raise WeightsSaveError(faults.write_failure("the best weights", self._partial, err, self._bytes)) from err
        self._pending = True
        self._pending_step = (metadata or {}).get("step")
        faults.point("best.write")

    def wait(self, *, upto: int | None = None) -> None:
        """Blocks until the last save is on disk, then moves it into place; with ``upto``, only if
        its metadata's ``step`` is at most that (the step of the newest committed checkpoint)."""
        if not self._pending or self._checkpointer is None:
            return
        if upto is not None and self._pending_step is not None and self._pending_step > upto:
            return
        self._pending = False
        try:
            self._checkpointer.wait_until_finished()
        except Exception as err:  # orbax wraps OSError in ValueError
            raise WeightsSaveError(
                faults.write_failure("the best weights", self._partial, err, self._bytes)
                + f"; {self.directory} still holds the previous best weights"
            ) from err
        _record_files(self._partial)
        faults.point("best.promote")
        self._promote(self._partial)

    def _promote(self, source: pathlib.Path) -> None:
        """``source`` (a complete copy) becomes ``directory``; the former one goes through ``.old``
        (or, when ``source`` is ``.old`` itself, is dropped: it is not the copy to keep)."""
        if source == self._old:
            if self.directory.exists():
                shutil.rmtree(self.directory)
        else:
            if self._old.exists():
                shutil.rmtree(self._old)
            if self.directory.exists():
                self.directory.rename(self._old)
                faults.point("best.swap")
        source.rename(self.directory)
        if self._old.exists():
            shutil.rmtree(self._old)

    def close(self) -> None:
        self.wait()
        if self._checkpointer is not None:
            self._checkpointer.close()

    def reconcile(
        self, record: Mapping[str, Any] | None, flat: Mapping[str, np.ndarray] | None, checkpoint: str, step: int
    ) -> str | None:
        """Makes ``directory`` hold the best weights a resumed checkpoint records, and returns what was done.

        ``record`` is the best-weights metadata of the checkpoint of ``step`` (their ``step``
        identifies them) and ``flat`` the weights it stores; None for both: no epoch had ended.
        Copies written after the checkpoint (or left incomplete by a crash) are removed; the
        recorded weights come from a complete copy on disk that matches, else from the checkpoint.
        """
        if not self._active:
            return None
        copies = {path: _written_step(path) for path in (self.directory, self._partial, self._old)}
        if record is None:
            stale = [p for p, s in copies.items() if p.exists() and (s is None or s > step)]
            for p in stale:
                shutil.rmtree(p)
            return (
                (
                    f"removed best weights written after {checkpoint}, which records none yet: "
                    + ", ".join(p.name for p in stale)
                )
                if stale
                else None
            )
        wanted = record.get("step")
        done = None
        rewrite = f"best weights of epoch {record.get('epoch')} rewritten into {self.directory} from {checkpoint}"
        if copies[self.directory] != wanted:
            match = next((p for p in (self._partial, self._old) if copies[p] == wanted), None)
            if match is not None:
                self._promote(match)
                done = f"best weights of epoch {record.get('epoch')} moved from {match.name} into {self.directory}"
            elif flat is not None:
                self.save(flat, record)
                self.wait()
                return self._tidy(rewrite)
            else:
                return (
                    f"{checkpoint} records best weights of step {wanted} but stores none; "
                    f"{self.directory} holds step {copies[self.directory]}"
                )
        if flat is not None:  # the right step; are they the bytes the checkpoint holds?
            problem = check_weights(self.directory, faults.checksums(flat), f"the checksums {checkpoint} records")[2]
            if problem is not None:
                self.save(flat, record)
                self.wait()
                done = f"{problem}; {rewrite}"
        return self._tidy(done)

    def _tidy(self, done: str | None) -> str | None:
        """Removes the copies beside ``directory`` (written after the checkpoint, or already promoted)."""
        for p in (self._partial, self._old):
            if p.exists():
                shutil.rmtree(p)
        return done


class WeightsSaveError(CacoError):
    """Best weights could not be written (a full disk, no permission); the previous ones are intact."""


def _record_files(directory: pathlib.Path) -> None:
    """Adds the size and CRC-32 of every file under ``directory/weights`` to its metadata, so damage can
    be traced to a file (written once orbax has finished, replaced atomically)."""
    path = directory / _META
    meta = json.loads(path.read_text())
    meta["files"] = faults.file_manifest(directory / "weights")
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(meta, indent=2, default=str))
    tmp.replace(path)


def _side_record(directory: pathlib.Path | None) -> dict[str, Any]:
    """{'side_files': record} of the checksums of the files beside ``directory``'s weights (they come
    along with them), or {} when its metadata records none or cannot be read."""
    try:
        meta = json.loads((directory / _META).read_text()) if directory is not None else {}
    except (OSError, ValueError):
        return {}
    record = meta.get(files.SIDE_RECORD) if isinstance(meta, dict) else None
    return {files.SIDE_RECORD: record} if isinstance(record, dict) else {}


def _written_step(directory: pathlib.Path) -> int | None:
    """The ``step`` in a complete weights copy's metadata (None: absent, incomplete or unreadable)."""
    if not (directory / "weights" / "_METADATA").is_file():
        return None
    try:
        meta = json.loads((directory / _META).read_text())
    except (OSError, ValueError):
        return None
    return meta.get("step") if isinstance(meta, dict) else None
