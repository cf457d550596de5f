"""Per-image predictions of a run on a split, saved beside its report: what intervals,
paired comparisons, decision rules and leak analyses are computed from afterwards.

``predictions_<split>.npz`` holds ``logits`` float32 [N, C] (or [N, V, C] for
test-time-augmentation views; no temperature applied), ``labels`` int64 [N],
``image_id``, ``lesion_id``, ``source_id`` (the photograph an offline copy was made
from; the image itself otherwise), the leak flags ``same_lesion`` / ``same_source``
(against the training split) and ``class_names``.
"""

from __future__ import annotations

import dataclasses
import io
import pathlib
from typing import Any

import numpy as np

from caco_jax import files
from caco_jax.data import leakage
from caco_jax.data.classes import META_FIELDS


@dataclasses.dataclass(frozen=True)
class Predictions:
    logits: np.ndarray
    labels: np.ndarray
    image_id: np.ndarray
    lesion_id: np.ndarray
    source_id: np.ndarray
    same_lesion: np.ndarray
    same_source: np.ndarray
    class_names: tuple[str, ...]
    meta: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, rows: np.ndarray) -> Predictions:
        """The images where ``rows`` (bool mask or indices) holds."""
        arrays = {f.name: getattr(self, f.name)[rows] for f in dataclasses.fields(self) if f.name not in _NOT_ROWS}
        return dataclasses.replace(self, **arrays, meta={k: v[rows] for k, v in self.meta.items()})


_NOT_ROWS = ("class_names", "meta")


def path(workdir: str | pathlib.Path, split: str, tta: bool = False) -> pathlib.Path:
    return pathlib.Path(workdir) / f"predictions_{split}{'_tta' if tta else ''}.npz"


def save(
    file: str | pathlib.Path, logits: np.ndarray, labels: np.ndarray, source: Any, train: Any | None = None
) -> pathlib.Path:
    """Writes one split's predictions; ``source`` is the split's
    :class:`~caco_jax.data.records.Source` (row order = the logits'), ``train`` the training split
    (for the leak flags; without it they are all False)."""
    file = pathlib.Path(file)
    if len(logits) != len(source):
        raise ValueError(f"{len(logits)} rows of logits for a split of {len(source)} images")
    leaks = (
        leakage.flags(train, source) if train is not None else {k: np.zeros(len(source), bool) for k in leakage.KINDS}
    )
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer,
        logits=np.asarray(logits, np.float32),
        labels=np.asarray(labels, np.int64),
        image_id=np.asarray(source.image_ids, str),
        lesion_id=np.asarray(source.lesion_ids, str),
        source_id=np.asarray(source.source_ids, str),
        class_names=np.asarray(source.class_names, str),
        **leaks,
        **{k: v for k, v in getattr(source, "meta", {}).items() if k in META_FIELDS},
    )
    return files.write_atomic(file, buffer.getvalue(), "the predictions")


def load(file: str | pathlib.Path) -> Predictions:
    """A saved predictions file; a clear error when it is missing or not one."""
    file = pathlib.Path(file)
    if not file.is_file():
        raise FileNotFoundError(
            f"{file} not found: a training run writes predictions_<split>.npz at its end "
            "(runs older than this file format have none: rerun caco-jax evaluate "
            "--save_predictions on them)"
        )
    with np.load(file, allow_pickle=False) as data:
        fields = [f.name for f in dataclasses.fields(Predictions) if f.name != "meta"]
        missing = [name for name in fields if name not in data]
        if missing:
            raise ValueError(f"{file} lacks {missing}: not a caco-jax predictions file")
        return Predictions(
            **{name: data[name] for name in fields if name != "class_names"},
            class_names=tuple(str(c) for c in data["class_names"]),
            meta={k: data[k] for k in META_FIELDS if k in data.files},
        )
