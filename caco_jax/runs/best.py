"""A run's ``best/`` weights, verified against the checkpoint that records them and restored from it.

Every checkpoint of a run (:mod:`caco_jax.training.checkpoints`) holds the best weights so far
(item ``best``) and, in its metadata (item ``meta``), their record and a CRC-32 of each array, so
the newest checkpoint recording the step of ``best/`` says what its arrays must be. Weights that
differ, do not restore or lost their metadata are rewritten from that checkpoint (one log line
names the damaged file); when no checkpoint records them, a
:class:`~caco_jax.runs.integrity.WeightsDamaged` names it. Nothing here writes unless ``best/``
is damaged, and the checkpoints are only read (a training run may be writing beside them).
"""

from __future__ import annotations

import logging
import pathlib
from typing import Any

import numpy as np
import orbax.checkpoint as ocp

from caco_jax.runs import faults
from caco_jax.runs.integrity import WeightsDamaged, damaged
from caco_jax.runs.weights import WeightsWriter

log = logging.getLogger("caco_jax")


def verified(
    directory: pathlib.Path, flat: dict[str, np.ndarray] | None, meta: dict[str, Any], problem: str | None
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(weights, metadata) of ``directory`` (a run's ``best/``, read and checked against its own
    checksums as ``problem`` says), checked against the checkpoint that records them; restored from it
    if damaged."""
    checkpoints = directory.parent / "checkpoints"
    faults.quiet_orbax()
    # a reader: nothing created, cleaned or saved (orbax's read_only option only adds warnings)
    options = ocp.CheckpointManagerOptions(create=False, save_root_metadata=False)
    with ocp.CheckpointManager(checkpoints, options=options, item_names=("meta", "best")) as manager:
        record = _record(manager, meta.get("step") if problem is None else None)
        if record is None:
            if problem is not None or flat is None:
                raise WeightsDamaged(
                    f"{problem}; no checkpoint in {checkpoints} records these weights, so they cannot be "
                    "restored: rerun the training command (or train again)"
                )
            return flat, meta
        step, recorded, sums = record
        if problem is None and flat is not None and faults.checksums(flat) != sums:
            problem = damaged(directory, meta, f"the arrays differ from the checksums checkpoint {step} records")
        if problem is None and flat is not None:
            return flat, meta
        try:
            restored = manager.restore(step, args=ocp.args.Composite(best=ocp.args.StandardRestore()))["best"]
            flat = {k: np.asarray(v) for k, v in restored.items()}
        except Exception as err:  # damage shows as any of orbax's errors: reported
            raise WeightsDamaged(
                f"{problem}; checkpoint {step}, which records them, cannot be read either ({faults.reason(err)})"
            ) from err
    if faults.checksums(flat) != sums:
        raise WeightsDamaged(f"{problem}; the copy in checkpoint {step}, which records them, is damaged too")
    writer = WeightsWriter(directory)
    writer.save(flat, recorded, extras_from=directory)
    writer.close()
    log.warning("%s; restored %s from checkpoint %d", problem, directory, step)
    return flat, recorded


def _record(manager: Any, best_step: int | None) -> tuple[int, dict[str, Any], dict[str, int]] | None:
    """(checkpoint step, best-weights record, their checksums) of the newest checkpoint that records the
    best weights of ``best_step`` (None: any), or None."""
    for step in sorted(manager.all_steps(), reverse=True):
        try:
            meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        except Exception:  # noqa: BLE001 - a damaged checkpoint records nothing usable
            continue
        record, sums = meta.get("best"), meta.get("checksums", {}).get("best")
        if record and sums and (best_step is None or record.get("step") == best_step):
            return step, dict(record), dict(sums)
    return None
