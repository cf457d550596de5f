"""The files fitted at the end of training and saved beside a run's best weights, verified when read.

``calibration.json`` (the temperature), ``decision.json`` (the balanced rule), ``selective.json``
(the reliability threshold), ``ood.json`` + ``ood.npz`` (the guard) and an adapted run's
``clinic.json``. Once written, :func:`record` adds the size and CRC-32 of each to the weights'
metadata (``caco_jax_weights.json``, key ``side_files``); the readers here compare a file with
that record and parse it, and a file that differs, is missing although recorded, or does not
parse switches its feature off with one warning line saying how to refit it: never a traceback,
never a changed number used silently. None of these files is held by a checkpoint (they are
fitted after the last one), so they cannot be restored from one; a run whose metadata records
none of them (older runs, or metadata restored from a checkpoint after it was lost) has its files
parsed but not compared.
"""

from __future__ import annotations

import json
import logging
import math
import pathlib
import zipfile
import zlib
from collections.abc import Callable
from typing import Any, TypeVar

from caco_jax import files
from caco_jax.evaluation import calibration, decision, ood_score, prior_shift, selective

log = logging.getLogger("caco_jax")

T = TypeVar("T")
NAMES = (
    calibration.CALIBRATION_FILE,
    decision.DECISION_FILE,
    selective.FILE,
    ood_score.JSON_FILE,
    ood_score.ARRAYS_FILE,
    decision.CLINIC_FILE,
)
_REFIT_END = "rerun the run's training command to refit it"
_REFIT_GUARD = "caco-jax guard --workdir RUN refits it"
# What a damaged file can raise while it is parsed (a damaged .npz: BadZipFile or zlib.error).
_UNREADABLE = (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile, zlib.error)
_warned: set[str] = set()


def recorded(weights_dir: pathlib.Path) -> dict[str, list[int]] | None:
    """{file name: [size, CRC-32]} the weights' metadata records, or None when it records none."""
    try:
        meta = json.loads((weights_dir / files.WEIGHTS_META).read_text())
    except (OSError, ValueError):
        return None
    record = meta.get(files.SIDE_RECORD) if isinstance(meta, dict) else None
    return record if isinstance(record, dict) else None


def record(weights_dir: str | pathlib.Path) -> dict[str, list[int]]:
    """Records the size and CRC-32 of each side file present in the weights' metadata (written
    atomically); returns the record."""
    weights_dir = pathlib.Path(weights_dir)
    path = weights_dir / files.WEIGHTS_META
    meta = json.loads(path.read_text())
    sums = {name: files.crc(weights_dir / name) for name in NAMES if (weights_dir / name).is_file()}
    meta[files.SIDE_RECORD] = sums
    files.write_atomic(path, json.dumps(meta, indent=2, default=str), "the weights' metadata")
    return sums


def _problem(weights_dir: pathlib.Path, names: tuple[str, ...]) -> str | None:
    """'<path> is damaged (...)' for the first of ``names`` that differs from the record, else None."""
    sums = recorded(weights_dir)
    for name in names:
        path = weights_dir / name
        if sums is None or name not in sums:
            continue
        if not path.is_file():
            return f"{path} is missing (its metadata records it)"
        if files.crc(path) != list(sums[name]):
            return f"{path} is damaged (it differs from the checksum recorded in {files.WEIGHTS_META})"
    return None


def read(
    weights_dir: str | pathlib.Path, names: tuple[str, ...], parse: Callable[[pathlib.Path], T | None], off: str
) -> T | None:
    """``parse(weights_dir)`` once ``names`` match their record; a mismatch or a parse error is one
    warning line ('...; ``off``') and None (the feature off). None also when the file is absent."""
    weights_dir = pathlib.Path(weights_dir)
    if not (weights_dir / names[0]).is_file() and not _problem(weights_dir, names[:1]):
        return None
    problem = _problem(weights_dir, names)
    if problem is None:
        try:
            return parse(weights_dir)
        except _UNREADABLE as err:
            text = " ".join(str(err).split())[:160] or type(err).__name__
            problem = f"{weights_dir / names[0]} cannot be read ({type(err).__name__}: {text})"
    message = f"{problem}; {off}"
    if message not in _warned:  # one line per file, however many readers look at it
        _warned.add(message)
        log.warning(message)
    return None


def temperature(weights_dir: str | pathlib.Path) -> float | None:
    """The saved temperature, or None (none saved, or damaged: the probabilities are uncalibrated)."""
    off = f"the probabilities are shown uncalibrated (temperature 1): {_REFIT_END}"
    return read(weights_dir, (calibration.CALIBRATION_FILE,), calibration.load, off)


def rule(weights_dir: str | pathlib.Path) -> decision.DecisionRule | None:
    """The balanced decision rule, or None (none saved, or damaged)."""
    off = f"the balanced decision rule is off: {_REFIT_END}"
    return read(weights_dir, (decision.DECISION_FILE,), decision.load, off)


def threshold(weights_dir: str | pathlib.Path) -> dict[str, Any] | None:
    """The reliability threshold's record (``selective.json``), or None (none saved, or damaged)."""
    off = f"no answer is marked unreliable by its confidence: {_REFIT_GUARD}"
    return read(weights_dir, (selective.FILE,), _selective, off)


def guard(weights_dir: str | pathlib.Path) -> ood_score.Guard | None:
    """The out-of-distribution guard, or None (none saved, or either of its files damaged)."""
    off = f"the out-of-distribution guard is off: {_REFIT_GUARD}"
    return read(weights_dir, (ood_score.JSON_FILE, ood_score.ARRAYS_FILE), ood_score.load, off)


def clinic(weights_dir: str | pathlib.Path) -> dict[str, Any] | None:
    """An adapted run's clinic prior (``clinic.json``, checked to make a rule), or None."""
    off = "the clinic rule is off: adapt the run again (caco-jax adapt)"
    return read(weights_dir, (decision.CLINIC_FILE,), _clinic, off)


def _selective(weights_dir: pathlib.Path) -> dict[str, Any] | None:
    fitted = selective.load(weights_dir)
    if not isinstance(fitted, dict):
        raise ValueError("not a JSON object")
    for tta in (False, True):
        value = selective.threshold_for(fitted, tta)
        if value is not None and not (isinstance(value, int | float) and math.isfinite(value)):
            raise ValueError(f"threshold {value!r} is not a number")
    return fitted


def _clinic(weights_dir: pathlib.Path) -> dict[str, Any]:
    data = json.loads((weights_dir / decision.CLINIC_FILE).read_text())
    prior_shift.clinic_rule(data)  # raises if it is not one
    return data
