"""95 % bootstrap intervals that resample lesions, not images, and paired comparisons.

A test split of HAM10000 holds several photographs of many lesions; those are not
independent draws, so the bootstrap resamples whole lesions (clusters) with
replacement and recomputes each metric from the images of the drawn lesions. With
few images in a class (10 dermatofibromas) one image moves BACC by more than a
point; the intervals say how far such chance moves the figures.

Every resample is a vector of lesion weights (how often each lesion was drawn), so
all metrics are weighted sums computed for all resamples at once.

``paired`` compares two sets of predictions on the same test images (aligned by
image_id) under the same resamples: the difference of each metric with its interval.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from caco_jax.evaluation import reported

DEFAULT_RESAMPLES = 2000
LEVEL = 0.95


def units(groups: Sequence[str] | np.ndarray) -> np.ndarray:
    """The resampling unit of each image: its lesion id, or the image itself when it has none."""
    ids = np.asarray(groups, str)
    return np.where(ids == "", np.char.add("\x00image:", np.arange(len(ids)).astype(str)), ids)


def lesion_weights(
    groups: Sequence[str] | np.ndarray, num_resamples: int = DEFAULT_RESAMPLES, seed: int = 0
) -> np.ndarray:
    """[R, N] image weights: image i weighs as often as its lesion was drawn in resample r. An image
    without a lesion id (an empty string, e.g. an external test set) is a lesion of its own."""
    _, cluster = np.unique(units(groups), return_inverse=True)
    k = cluster.max() + 1 if len(cluster) else 0
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, k, size=(num_resamples, k))
    counts = np.zeros((num_resamples, k), np.float64)
    np.add.at(counts, (np.arange(num_resamples)[:, None], draws), 1.0)
    return counts[:, cluster]


def _recalls(predicted: np.ndarray, labels: np.ndarray, weights: np.ndarray, num_classes: int) -> np.ndarray:
    """[R, C] weighted recall per class (NaN where a resample has no image of the class)."""
    out = np.full((weights.shape[0], num_classes), np.nan)
    correct = predicted == labels
    for k in range(num_classes):
        rows = labels == k
        total = weights[:, rows].sum(axis=1)
        hit = weights[:, rows & correct].sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[:, k] = np.where(total > 0, hit / np.where(total > 0, total, 1), np.nan)
    return out


def metric_samples(
    probs: np.ndarray, labels: np.ndarray, weights: np.ndarray, predicted: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Every reported metric (``reported.REPORTED``) under every resample [R], and per-class recall
    [R, C]. ``predicted`` defaults to argmax(probs); AUC always ranks by ``probs``."""
    probs = np.asarray(probs, np.float64)
    labels = np.asarray(labels, np.int64)
    predicted = probs.argmax(axis=1) if predicted is None else np.asarray(predicted)
    recall = _recalls(predicted, labels, weights, probs.shape[1])
    present = [k for k in range(probs.shape[1]) if np.any(labels == k)]
    inputs = reported.Inputs(probs, labels, predicted, weights, recall, present)
    return {m.name: m.compute(inputs) for m in reported.REPORTED} | {"recall": recall}


def interval(samples: np.ndarray, level: float = LEVEL) -> tuple[float, float] | None:
    """Percentile interval of the finite samples (None if there are none)."""
    finite = samples[np.isfinite(samples)]
    if finite.size == 0:
        return None
    lo, hi = np.quantile(finite, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def summarise(samples: dict[str, np.ndarray], class_names: Sequence[str], level: float = LEVEL) -> dict[str, Any]:
    """{metric: (lo, hi)} and {'recall': {class: (lo, hi)}} from :func:`metric_samples`."""
    out: dict[str, Any] = {k: interval(samples[k], level) for k in reported.NAMES}
    out["recall"] = {name: interval(samples["recall"][:, k], level) for k, name in enumerate(class_names)}
    return out


def bootstrap(
    probs: np.ndarray,
    labels: np.ndarray,
    groups: Sequence[str] | np.ndarray,
    class_names: Sequence[str],
    *,
    predicted: np.ndarray | None = None,
    num_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    level: float = LEVEL,
) -> dict[str, Any]:
    """95 % intervals of accuracy, BACC, macro AUC and per-class recall, resampling ``groups``
    (lesion ids); with the method in the result, for reports."""
    weights = lesion_weights(groups, num_resamples, seed)
    out = summarise(metric_samples(probs, labels, weights, predicted), class_names, level)
    out["method"] = {
        "resamples": num_resamples,
        "level": level,
        "unit": "lesion",
        "num_units": int(len(np.unique(units(groups)))),
    }
    return out


def align(a_ids: Sequence[str] | np.ndarray, b_ids: Sequence[str] | np.ndarray) -> np.ndarray:
    """Positions in b of a's image ids (every id of a must be in b exactly once)."""
    b_pos = {str(x): i for i, x in enumerate(b_ids)}
    if len(b_pos) != len(b_ids):
        raise ValueError("duplicate image ids in the second set of predictions")
    missing = [str(x) for x in a_ids if str(x) not in b_pos]
    if missing or len(a_ids) != len(b_ids):
        raise ValueError(
            f"the two sets of predictions are not on the same images ({len(a_ids)} vs {len(b_ids)}; "
            f"e.g. {missing[:3]} missing): compare runs on the same split"
        )
    return np.asarray([b_pos[str(x)] for x in a_ids])


def paired(
    a: dict[str, np.ndarray] | list[dict[str, np.ndarray]],
    b: dict[str, np.ndarray] | list[dict[str, np.ndarray]],
    groups: Sequence[str] | np.ndarray,
    *,
    num_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    level: float = LEVEL,
) -> dict[str, Any]:
    """Metric of a minus metric of b on the same images, resampled together.

    ``a`` and ``b``: {'probs' [N, C], 'labels' [N], optionally 'predicted' [N]} in the same row
    order (see :func:`align`), or lists of such dicts (seeds), whose metric means are compared.
    Returns {metric: {'difference', 'interval', 'share_above_zero'}}."""
    a_runs, b_runs = (a if isinstance(a, list) else [a]), (b if isinstance(b, list) else [b])
    weights = lesion_weights(groups, num_resamples, seed)
    ones = np.ones((1, len(groups)))
    sa, sb = _run_means(a_runs, weights), _run_means(b_runs, weights)
    pa, pb = _run_means(a_runs, ones), _run_means(b_runs, ones)
    out: dict[str, Any] = {}
    for key in reported.NAMES:
        diff = sa[key] - sb[key]
        finite = diff[np.isfinite(diff)]
        out[key] = {
            "difference": float(pa[key][0] - pb[key][0]),
            "interval": interval(diff, level),
            "share_above_zero": float(np.mean(finite > 0)) if finite.size else None,
        }
    out["method"] = {"resamples": num_resamples, "level": level, "unit": "lesion", "runs": [len(a_runs), len(b_runs)]}
    return out


def mean_over_runs(
    runs: list[dict[str, np.ndarray]],
    groups: Sequence[str] | np.ndarray,
    *,
    num_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    level: float = LEVEL,
) -> dict[str, dict[str, Any]]:
    """Mean over ``runs`` (seeds, on the same images in the same order; dicts as in :func:`paired`) of
    accuracy, BACC and macro AUC, each with the lesion-bootstrap interval of that mean (the test
    split's sampling noise; the seeds' own spread is reported separately)."""
    weights = lesion_weights(groups, num_resamples, seed)
    samples, point = _run_means(runs, weights), _run_means(runs, np.ones((1, len(groups))))
    return {k: {"value": float(point[k][0]), "interval": interval(samples[k], level)} for k in reported.NAMES}


def _run_means(runs: list[dict[str, np.ndarray]], weights: np.ndarray) -> dict[str, np.ndarray]:
    """Mean over runs of each scalar metric, per row of weights."""
    samples = [metric_samples(r["probs"], r["labels"], weights, r.get("predicted")) for r in runs]
    return {k: np.mean([s[k] for s in samples], axis=0) for k in reported.NAMES}
