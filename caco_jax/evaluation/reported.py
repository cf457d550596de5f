"""The scalar metrics every report, interval, reproduction table and paired comparison gives: declared
once, here. Each is computed under a matrix of image weights (one row per bootstrap resample, or a
single row of ones for the point figure), so one declaration yields the figure, its lesion-bootstrap
interval, the mean over seeds and the paired difference.

A new metric is one :class:`Metric` added to ``REPORTED``; intervals.py, the reports' interval
brackets, experiments/summary.py, run_records.py and tables.py iterate over it.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable

import numpy as np


@dataclasses.dataclass(frozen=True)
class Inputs:
    """What a metric may read: probabilities [N, C], labels [N], predicted classes [N], image weights
    [R, N], per-class recall under those weights [R, C] (NaN where a resample lacks the class) and the
    classes present in ``labels``."""

    probs: np.ndarray
    labels: np.ndarray
    predicted: np.ndarray
    weights: np.ndarray
    recall: np.ndarray
    present: list[int]


@dataclasses.dataclass(frozen=True)
class Metric:
    name: str  # its key in reports and JSON
    label: str  # how tables head it
    compute: Callable[[Inputs], np.ndarray]  # [R] under each row of weights
    scale: float = 100.0  # tables show value * scale (percent, or AUC x 100)


def _accuracy(x: Inputs) -> np.ndarray:
    total = x.weights.sum(axis=1)
    return (x.weights * (x.predicted == x.labels)).sum(axis=1) / np.where(total > 0, total, 1)


def _bacc(x: Inputs) -> np.ndarray:
    if not x.present:
        return np.full(len(x.weights), np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a resample without some class: NaN, not a warning
        return np.nanmean(x.recall[:, x.present], axis=1)


def weighted_auc(scores: np.ndarray, positive: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """[R] one-vs-rest ROC AUC under each row of weights (a tied positive-negative pair counts 1/2)."""
    order = np.argsort(scores, kind="stable")
    s, pos, w = scores[order], positive[order], weights[:, order]
    w_neg = np.where(~pos, w, 0.0)
    w_pos = np.where(pos, w, 0.0)
    _, start, counts = np.unique(s, return_index=True, return_counts=True)
    neg_cum = np.concatenate([np.zeros((w.shape[0], 1)), np.cumsum(w_neg, axis=1)], axis=1)
    neg_before = neg_cum[:, np.repeat(start, counts)]  # negative weight at lower scores
    neg_tied = neg_cum[:, np.repeat(start + counts, counts)] - neg_before  # ... at the same score
    num = (w_pos * (neg_before + 0.5 * neg_tied)).sum(axis=1)
    den = w_pos.sum(axis=1) * w_neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def _macro_auc(x: Inputs) -> np.ndarray:
    if not x.present:
        return np.full(len(x.weights), np.nan)
    aucs = np.stack([weighted_auc(x.probs[:, k], x.labels == k, x.weights) for k in x.present], axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(aucs, axis=1)


REPORTED: tuple[Metric, ...] = (
    Metric("accuracy", "accuracy", _accuracy),
    Metric("bacc", "BACC", _bacc),
    Metric("macro_auc", "macro AUC", _macro_auc),
)
NAMES: tuple[str, ...] = tuple(m.name for m in REPORTED)
