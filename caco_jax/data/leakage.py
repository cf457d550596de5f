"""How much of a test split the training split has already seen: the leak of a protocol.

Two kinds, per test image: a photograph of the same lesion is in training
(``same_lesion``: an image-level split of HAM10000, whose lesions are often
photographed more than once), and the same source photograph is in training, as
itself or as an offline copy (``same_source``: augmentation before the split). A
same-source leak is also a same-lesion leak.
"""

from __future__ import annotations

from typing import Any

import numpy as np

KINDS = ("same_lesion", "same_source")


def flags(train: Any, test: Any) -> dict[str, np.ndarray]:
    """Per test image (in ``test``'s order), bool arrays ``same_lesion`` and ``same_source``.
    ``train`` and ``test`` are :class:`caco_jax.data.records.Source` (or anything with
    ``lesion_ids`` and ``source_ids``). Images without a lesion_id match only themselves."""
    lesions = {str(x) for x in train.lesion_ids if str(x)}
    sources = {str(x) for x in train.source_ids}
    same_source = np.asarray([str(s) in sources for s in test.source_ids], bool)
    same_lesion = np.asarray([bool(str(x)) and str(x) in lesions for x in test.lesion_ids], bool) | same_source
    return {"same_lesion": same_lesion, "same_source": same_source}


def summary(train: Any, test: Any) -> dict[str, Any]:
    """Share of test images with each kind of leak, overall and per class (with counts)."""
    leaks = flags(train, test)
    labels = np.asarray(test.labels, np.int64)
    out: dict[str, Any] = {"num_test": int(len(labels)), "per_class": {}}
    for kind in KINDS:
        out[kind] = float(leaks[kind].mean()) if len(labels) else None
    for k, name in enumerate(test.class_names):
        rows = labels == k
        n = int(rows.sum())
        out["per_class"][name] = {
            "num_test": n,
            **{kind: (float(leaks[kind][rows].mean()) if n else None) for kind in KINDS},
        }
    return out


def table(summaries: dict[str, dict[str, Any]], class_names: list[str] | tuple[str, ...]) -> list[str]:
    """Markdown rows: one line per protocol, the share (%) of leaked test images overall and per class,
    as 'same lesion / same photograph'."""
    lines = [
        "| protocol | test images | all | " + " | ".join(class_names) + " |",
        "|---|---:|---:|" + "---:|" * len(class_names),
    ]

    def cell(row: dict[str, Any]) -> str:
        if row["same_lesion"] is None:
            return "-"
        return f"{100 * row['same_lesion']:.1f} / {100 * row['same_source']:.1f}"

    for name, s in summaries.items():
        lines.append(
            f"| {name} | {s['num_test']} | {cell(s)} | "
            + " | ".join(cell(s["per_class"][c]) for c in class_names)
            + " |"
        )
    return lines
