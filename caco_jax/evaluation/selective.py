"""Selective prediction: how often the model is right when it is this sure.

The images are ordered by the calibrated probability of the class the decision rule gives (most
confident first); answering only the first k of them gives a coverage k / N and the accuracy and BACC
of the answered images: the risk-coverage curve. A confidence threshold fitted on the validation
split (the lowest confidence at which the answered validation images are still ``TARGET`` accurate)
is what the page and ``predict`` call unreliable below; the test split shows how it holds.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from caco_jax import files
from caco_jax.evaluation import intervals

TARGETS = (0.90, 0.95)  # accuracies whose coverage the report gives
TARGET = 0.90  # the accuracy the saved threshold promises on validation images
FILE = "selective.json"  # beside the best weights
_POINTS = 101  # curve points (coverage 0 .. 100 %)


def confidence(probs: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """The calibrated probability of each image's answer."""
    probs = np.asarray(probs, np.float64)
    return probs[np.arange(len(probs)), np.asarray(predicted, np.int64)]


def _order(conf: np.ndarray) -> np.ndarray:
    return np.argsort(-conf, kind="stable")


def _running(correct: np.ndarray, labels: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Accuracy and BACC (mean recall over the classes among the answered) of the first k, k = 1..N."""
    k = np.arange(1, len(correct) + 1)
    accuracy = np.cumsum(correct) / k
    hits = np.zeros((len(correct), num_classes))
    seen = np.zeros((len(correct), num_classes))
    hits[np.arange(len(correct)), labels] = correct
    seen[np.arange(len(correct)), labels] = 1.0
    hits, seen = np.cumsum(hits, axis=0), np.cumsum(seen, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(seen > 0, hits / np.where(seen > 0, seen, 1), np.nan)
    present = np.maximum((seen > 0).sum(axis=1), 1)
    bacc = np.nansum(recall, axis=1) / present
    return accuracy, bacc


def coverage_at(conf: np.ndarray, correct: np.ndarray, target: float) -> tuple[float | None, float | None]:
    """(largest coverage whose answered images are at least ``target`` accurate, the confidence
    threshold that gives it: answer when confidence >= threshold), or (None, None) when not even the
    most confident images reach it. Images of equal confidence are answered or withheld together."""
    order = _order(conf)
    sorted_conf = conf[order]
    acc = np.cumsum(correct[order]) / np.arange(1, len(order) + 1)
    ends = np.flatnonzero(np.append(sorted_conf[1:] != sorted_conf[:-1], True))  # last index of each tie block
    ok = ends[acc[ends] >= target]
    if ok.size == 0:
        return None, None
    k = int(ok[-1]) + 1
    return k / len(conf), float(sorted_conf[k - 1])


def curve(
    probs: np.ndarray,
    labels: np.ndarray,
    predicted: np.ndarray,
    groups: Sequence[str] | np.ndarray,
    *,
    split: str,
    threshold: float | None = None,
    resamples: int = 1000,
) -> dict[str, Any]:
    """The risk-coverage curve (``_POINTS`` coverages), the coverage at each of ``TARGETS``, and, with
    a ``threshold`` fitted elsewhere (validation), the coverage and accuracy (lesion-bootstrap
    interval) of the images at or above it."""
    labels, predicted = np.asarray(labels, np.int64), np.asarray(predicted, np.int64)
    conf = confidence(probs, predicted)
    correct = (predicted == labels).astype(np.float64)
    order = _order(conf)
    accuracy, bacc = _running(correct[order], labels[order], np.asarray(probs).shape[1])
    ks = np.unique(np.clip(np.round(np.linspace(0, 1, _POINTS) * len(order)).astype(int), 1, len(order)))
    out: dict[str, Any] = {
        "split": split,
        "confidence": "calibrated probability of the answer",
        "images": int(len(labels)),
        "coverage": [float(k / len(order)) for k in ks],
        "accuracy": [float(accuracy[k - 1]) for k in ks],
        "bacc": [float(bacc[k - 1]) for k in ks],
        "targets": [],
    }
    for target in TARGETS:
        cov, thr = coverage_at(conf, correct, target)
        out["targets"].append({"accuracy": target, "coverage": cov, "threshold": thr})
    if threshold is not None:
        kept = conf >= threshold
        weights = intervals.lesion_weights(np.asarray(groups, str)[kept], resamples) if kept.any() else None
        ci = (
            intervals.interval((weights * correct[kept]).sum(1) / np.maximum(weights.sum(1), 1))
            if weights is not None
            else None
        )
        out["at_threshold"] = {
            "threshold": threshold,
            "coverage": float(kept.mean()),
            "accuracy": float(correct[kept].mean()) if kept.any() else None,
            "accuracy_ci": ci,
            "accuracy_below": float(correct[~kept].mean()) if (~kept).any() else None,
        }
    return out


def fit_threshold(probs: np.ndarray, labels: np.ndarray, predicted: np.ndarray) -> dict[str, Any]:
    """The validation split's threshold: the lowest confidence at which the answered images are still
    ``TARGET`` accurate (None when even the most confident are not)."""
    conf = confidence(probs, predicted)
    correct = (np.asarray(predicted) == np.asarray(labels)).astype(np.float64)
    cov, thr = coverage_at(conf, correct, TARGET)
    return {"target_accuracy": TARGET, "threshold": thr, "coverage": cov, "fitted_on": "validation"}


def threshold_for(fitted: dict[str, Any] | None, tta: bool) -> float | None:
    """The saved threshold for answers with or without test-time augmentation. Each was fitted on the
    validation confidences of its own kind; a run saved before the TTA threshold existed has none for TTA
    answers (a threshold fitted on single-view confidences does not carry to the views' average)."""
    if not fitted:
        return None
    return (fitted.get("tta") or {}).get("threshold") if tta else fitted.get("threshold")


def save(weights_dir: str | pathlib.Path, fitted: dict[str, Any]) -> pathlib.Path:
    """Writes ``selective.json`` beside the weights (atomically)."""
    path = pathlib.Path(weights_dir) / FILE
    return files.write_atomic(path, json.dumps(fitted, indent=2), "the reliability threshold")


def load(weights_dir: str | pathlib.Path) -> dict[str, Any] | None:
    """The saved threshold, or None for runs trained before it existed."""
    path = pathlib.Path(weights_dir) / FILE
    return json.loads(path.read_text()) if path.is_file() else None


def _at_threshold(at: dict[str, Any]) -> str:
    """The sentence on the validation threshold applied to this split (either side of it may be empty)."""
    ci = at["accuracy_ci"]
    ci_text = f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else ""
    answered = "" if at["accuracy"] is None else f", {100 * at['accuracy']:.1f} %{ci_text} of them correctly"
    below = (
        "no image of this split falls below it"
        if at["accuracy_below"] is None
        else f"the images below it are right {100 * at['accuracy_below']:.1f} % of the time"
    )
    return (
        f"The threshold fitted on the validation split (confidence {at['threshold']:.3f}, where its answered "
        f"images were {100 * TARGET:.0f} % accurate) answers {100 * at['coverage']:.1f} % of this split's "
        f"images{answered}; {below}. The page and `predict` flag answers below this confidence as unreliable."
    )


def markdown(sel: dict[str, Any], figure_name: str | None = None) -> list[str]:
    """The report section: coverage at each target accuracy, the validation threshold on this split."""
    lines = [
        "",
        "## When the model is sure: selective prediction",
        "",
        "The images ordered by the calibrated probability of their answer; answering only the most confident "
        "ones trades coverage (the share answered) for accuracy.",
        "",
        "| answered images at least this accurate | coverage % | confidence at least |",
        "|---|---:|---:|",
    ]
    for t in sel["targets"]:
        cov = "not reached" if t["coverage"] is None else f"{100 * t['coverage']:.1f}"
        thr = "-" if t["threshold"] is None else f"{t['threshold']:.3f}"
        lines.append(f"| {100 * t['accuracy']:.0f} % | {cov} | {thr} |")
    at = sel.get("at_threshold")
    if at:
        lines += ["", _at_threshold(at)]
    if figure_name:
        lines += ["", f"![risk-coverage curve]({figure_name})"]
    return lines
