"""Whether weights on disk are the ones recorded when they were written.

A weights directory's metadata (``caco_jax_weights.json``) records a CRC-32 of every array and the
size and CRC-32 of every file orbax wrote: bytes overwritten inside orbax's zstd frames still decode
(to other numbers), so the arrays are compared with their checksums, and the files with theirs to
name the one that changed.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Mapping
from typing import Any

import numpy as np
import orbax.checkpoint as ocp

from caco_jax import files
from caco_jax.errors import WeightsError
from caco_jax.runs import faults

META = files.WEIGHTS_META
# What the metadata records to catch damage (not read back as metadata): the arrays' and files'
# checksums, and those of the files saved beside the weights (caco_jax.evaluation.side_files).
INTEGRITY = ("checksums", "files", files.SIDE_RECORD)


class WeightsDamaged(WeightsError):
    """Weights on disk are not the ones recorded when they were written (the message names the file)."""


def check_weights(
    directory: pathlib.Path, expected: Mapping[str, int] | None = None, against: str = "the checksums they record"
) -> tuple[dict[str, np.ndarray] | None, dict[str, Any], str | None]:
    """(flat weights or None, metadata, what is damaged or None) of a weights directory, checked against
    ``expected`` checksums (default: those its metadata records; none recorded: not checked)."""
    meta_file = directory / META
    try:
        meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
        if not isinstance(meta, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as err:
        return None, {}, f"{meta_file} is damaged ({faults.reason(err)})"
    faults.quiet_orbax()  # before the first restore: a damaged file's abandoned reads print no tracebacks
    try:
        with ocp.StandardCheckpointer() as ckpt:
            flat = {k: np.asarray(v) for k, v in ckpt.restore(directory / "weights").items()}
    except Exception as err:  # noqa: BLE001 - damage shows as any of orbax's / tensorstore's errors: reported
        return None, meta, damaged(directory, meta, f"the arrays do not restore: {faults.reason(err)}")
    expected = meta.get("checksums") if expected is None else expected
    if expected is not None:
        got = faults.checksums(flat)
        bad = sorted(k for k in expected if got.get(k) != expected[k])
        if bad or got.keys() != expected.keys():
            return (
                flat,
                meta,
                damaged(directory, meta, f"arrays {', '.join(bad[:3]) or '(keys)'} differ from {against}"),
            )
    return flat, meta, None


def damaged(directory: pathlib.Path, meta: Mapping[str, Any], why: str) -> str:
    """'<the file that changed> is damaged (why)', the file found by the sizes and CRC-32s recorded at writing."""
    changed = faults.changed_files(directory / "weights", meta.get("files") or {})
    if not changed:
        return f"{directory / 'weights'} is damaged ({why})"
    more = f" and {len(changed) - 1} more files" if len(changed) > 1 else ""
    return f"{directory / 'weights' / changed[0]}{more} is damaged ({why})"
