"""Classification metrics: training metrics accumulated on the device (clu) and evaluation reports.

* :class:`TrainMetrics` (clu): example-weighted loss and accuracy, merged across steps on
  the device; the host reads them only at log time.
* :func:`classification_report`: accuracy; ``bacc`` = mean per-class recall (ISIC /
  scikit-learn); ``paper_bacc`` = mean over classes of (sensitivity + specificity) / 2 (the
  paper's formula); per-class sensitivity, specificity, precision, F1, support and
  one-vs-rest ROC AUC; macro means; the confusion matrix. Undefined values are None, and
  classes absent from the data are excluded from every macro mean (docs/model.md, Metrics).
* :class:`EvalAccumulator`: collects evaluation logits and builds the report.
"""

# No ``from __future__ import annotations`` here: clu's Collection reads the metric
# classes from ``__annotations__``, which must hold classes, not strings.
from collections.abc import Sequence
from typing import Any

import clu.metrics as clu_metrics
import flax
import jax
import jax.numpy as jnp
import numpy as np

from caco_jax.evaluation.calibration import probabilities

Array = jax.Array
ArrayLike = Any


# --------------------------------------------------------------------------- device
def _valid_count(labels: Array, mask: Array | None) -> Array:
    if mask is None:
        return jnp.asarray(labels.shape[0], jnp.float32)
    return jnp.sum((jnp.asarray(mask) > 0).astype(jnp.float32))


@flax.struct.dataclass
class LossAverage(clu_metrics.Metric):
    """Mean of a scalar batch loss, weighted by the batch's unmasked example count.

    ``from_model_output(loss=scalar, labels=[B], mask=None)``; a padded final
    batch therefore counts only its real examples. (With class weights the batch
    loss is itself a weighted mean; the epoch value weights batches by examples.)"""

    total: Array
    count: Array

    @classmethod
    def empty(cls) -> "LossAverage":
        return cls(total=jnp.array(0.0, jnp.float32), count=jnp.array(0.0, jnp.float32))

    @classmethod
    def from_model_output(
        cls, *, loss: ArrayLike, labels: ArrayLike, mask: ArrayLike | None = None, **_: Any
    ) -> "LossAverage":
        n = _valid_count(jnp.asarray(labels), mask)
        loss = jnp.asarray(loss, jnp.float32)
        return cls(total=jnp.where(n > 0, loss * n, 0.0), count=n)

    def merge(self, other: "LossAverage") -> "LossAverage":
        return type(self)(total=self.total + other.total, count=self.count + other.count)

    def compute(self) -> Array:
        """The mean (NaN if no example was seen)."""
        return self.total / self.count


@flax.struct.dataclass
class TrainMetrics(clu_metrics.Collection):
    """Per-step training metrics: ``loss`` (example-weighted mean), ``accuracy``.

    ``TrainMetrics.single_from_model_output(loss=l, logits=z, labels=y, mask=m)``;
    labels must be int32."""

    loss: LossAverage
    accuracy: clu_metrics.Accuracy


# --------------------------------------------------------------------------- host
def _ratio(num: float, den: float) -> float | None:
    return float(num) / float(den) if den > 0 else None


def _mean(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties get the average rank."""
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return (ends - (counts - 1) / 2.0)[inverse.reshape(-1)]


def binary_auc(scores: ArrayLike, positive: ArrayLike) -> float | None:
    """ROC AUC of ``scores`` for boolean ``positive`` (Mann-Whitney, ties averaged);
    None without both positives and negatives."""
    scores = np.asarray(scores, np.float64).reshape(-1)
    positive = np.asarray(positive, bool).reshape(-1)
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = _average_ranks(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def one_vs_rest_auc(probs: ArrayLike, labels: ArrayLike, num_classes: int) -> list[float | None]:
    """Per-class one-vs-rest ROC AUC (None where undefined)."""
    probs = np.asarray(probs, np.float64)
    labels = np.asarray(labels).reshape(-1)
    if probs.ndim != 2 or probs.shape != (labels.size, num_classes):
        raise ValueError(f"probs must be [N, {num_classes}] with N = {labels.size}, got {probs.shape}")
    return [binary_auc(probs[:, k], labels == k) for k in range(num_classes)]


def classification_report(
    confusion: ArrayLike,
    *,
    probs: ArrayLike | None = None,
    labels: ArrayLike | None = None,
    class_names: Sequence[str],
) -> dict[str, Any]:
    """JSON-serialisable report from a confusion matrix (rows true, columns predicted)
    and, optionally, probabilities [N, C] and labels [N] for ROC AUC.

    Keys: num_examples, accuracy, bacc (mean recall), paper_bacc (mean of
    (sens + spec) / 2), macro_specificity, macro_f1, macro_auc, absent_classes,
    class_names, per_class {name: {sensitivity, specificity, precision, f1, support,
    auc}}, confusion. See the module docstring for None / absent-class rules."""
    cm = np.asarray(confusion, dtype=np.int64)
    num_classes = len(class_names)
    if cm.shape != (num_classes, num_classes):
        raise ValueError(
            f"confusion must be [{num_classes}, {num_classes}] for {num_classes} class names, got {cm.shape}"
        )
    if (probs is None) != (labels is None):
        raise ValueError("pass both probs and labels (for AUC) or neither")
    aucs: list[float | None] = [None] * num_classes
    if probs is not None:
        aucs = one_vs_rest_auc(probs, labels, num_classes)

    total = int(cm.sum())
    tp = np.diag(cm)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    per_class: dict[str, dict[str, Any]] = {}
    present: list[bool] = []
    for k, name in enumerate(class_names):
        fn = int(support[k] - tp[k])
        fp = int(predicted[k] - tp[k])
        tn = total - int(tp[k]) - fn - fp
        sens = _ratio(tp[k], support[k])
        per_class[name] = {
            "sensitivity": sens,
            "specificity": _ratio(tn, tn + fp),
            "precision": _ratio(tp[k], predicted[k]),
            "f1": _ratio(2 * tp[k], 2 * tp[k] + fp + fn),
            "support": int(support[k]),
            "auc": aucs[k] if support[k] > 0 else None,
        }
        present.append(bool(support[k] > 0))

    kept = [per_class[n] for n, p in zip(class_names, present, strict=True) if p]
    paper_terms = [(c["sensitivity"] + c["specificity"]) / 2.0 if c["specificity"] is not None else None for c in kept]
    report: dict[str, Any] = {
        "num_examples": total,
        "accuracy": _ratio(tp.sum(), total),
        "bacc": _mean([c["sensitivity"] for c in kept]),
        "paper_bacc": _mean(paper_terms),
        "macro_specificity": _mean([c["specificity"] for c in kept]),
        "macro_f1": _mean([c["f1"] for c in kept]),
        "macro_auc": _mean([c["auc"] for c in kept]) if probs is not None else None,
        "absent_classes": [n for n, p in zip(class_names, present, strict=True) if not p],
        "class_names": list(class_names),
        "per_class": per_class,
        "confusion": cm.tolist(),
    }
    return report


class EvalAccumulator:
    """Host-side evaluation accumulator (confusion matrix + what AUC and calibration need).

    ``update(logits, labels, mask=None)`` keeps references to the (device) arrays
    without synchronising; logits are [B, C], or [B, V, C] for the V views of
    test-time augmentation. ``report()`` transfers them once, drops masked rows,
    turns logits into probabilities (softmax(logits / T), averaged over views) and
    returns :func:`classification_report` with AUC."""

    def __init__(self, class_names: Sequence[str]) -> None:
        self.class_names = tuple(class_names)
        self.num_classes = len(self.class_names)
        self._batches: list[tuple[Any, Any, Any]] = []

    def reset(self) -> None:
        """Forget every batch."""
        self._batches.clear()

    def update(self, logits: ArrayLike, labels: ArrayLike, mask: ArrayLike | None = None) -> None:
        """Adds one batch: logits [B, C] or [B, V, C], labels [B], mask [B] (0 = padding)."""
        if np.shape(logits)[-1] != self.num_classes:
            raise ValueError(f"logits have {np.shape(logits)[-1]} classes, expected {self.num_classes}")
        self._batches.append((logits, labels, mask))

    def logits(self) -> tuple[np.ndarray, np.ndarray]:
        """(logits [N, C] or [N, V, C] float64, labels [N] int64) of the unmasked rows."""
        zs, ys = [], []
        for logits, y, m in self._batches:
            z = np.asarray(logits, np.float64)
            z = z.reshape(-1, *z.shape[-(z.ndim - 1) :])
            y = np.asarray(y).reshape(-1).astype(np.int64)
            if m is not None:
                keep = np.asarray(m).reshape(-1) > 0
                z, y = z[keep], y[keep]
            zs.append(z)
            ys.append(y)
        if not zs:
            return np.zeros((0, self.num_classes)), np.zeros((0,), np.int64)
        return np.concatenate(zs), np.concatenate(ys)

    def arrays(self, temperature: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(probabilities [N, C] float64, labels [N] int64, predictions [N] int64) of the
        unmasked rows; predictions are the argmax of the probabilities."""
        logits, labels = self.logits()
        probs = probabilities(logits, temperature)
        return probs, labels, probs.argmax(axis=1).astype(np.int64)

    def report(self, temperature: float = 1.0) -> dict[str, Any]:
        """The full classification report, AUC included (labels outside [0, C) are
        dropped, as in :func:`confusion_matrix`)."""
        probs, labels, preds = self.arrays(temperature)
        return report_from_probabilities(probs, labels, self.class_names)


def report_from_probabilities(probs: ArrayLike, labels: ArrayLike, class_names: Sequence[str]) -> dict[str, Any]:
    """:func:`classification_report` of predictions argmax(probs) (rows with labels outside [0, C) dropped)."""
    probs = np.asarray(probs, np.float64).reshape(-1, len(class_names))
    labels = np.asarray(labels, np.int64).reshape(-1)
    preds = probs.argmax(axis=1)
    num_classes = len(class_names)
    ok = (labels >= 0) & (labels < num_classes)
    cm = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(cm, (labels[ok], preds[ok]), 1)
    return classification_report(cm, probs=probs[ok], labels=labels[ok], class_names=class_names)


__all__ = [
    "EvalAccumulator",
    "LossAverage",
    "TrainMetrics",
    "binary_auc",
    "classification_report",
    "one_vs_rest_auc",
    "report_from_probabilities",
]
