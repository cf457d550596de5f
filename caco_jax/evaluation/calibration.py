"""Confidence calibration: expected calibration error, reliability bins and temperature scaling.

Temperature scaling (Guo et al., ICML 2017) divides the logits by one scalar T > 0
fitted on held-out data (the validation split) by minimising the negative
log-likelihood. It never changes a plain prediction's class, only how sure it says it
is. The fitted value is stored as ``calibration.json`` beside the weights it belongs to
(``workdir/best/calibration.json``); evaluation and prediction use it when present.

With test-time augmentation the temperature applies to each view's logits before the
views' probabilities are averaged (:func:`probabilities`).
"""

from __future__ import annotations

import json
import math
import pathlib
from typing import Any

import numpy as np

from caco_jax import files

CALIBRATION_FILE = "calibration.json"
NUM_BINS = 15
T_RANGE = (0.05, 20.0)  # the fitted temperature is clipped to this range


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def probabilities(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """softmax(logits / T) for logits [N, C]; for views [N, V, C], the mean over views."""
    z = np.asarray(logits, np.float64) / float(temperature)
    p = np.exp(_log_softmax(z))
    return p.mean(axis=1) if p.ndim == 3 else p


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``labels`` under softmax(logits / T), logits [N, C]."""
    z = np.asarray(logits, np.float64) / float(temperature)
    labels = np.asarray(labels, np.int64)
    return float(-_log_softmax(z)[np.arange(len(labels)), labels].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T minimising :func:`nll` of logits [N, C], clipped to ``T_RANGE``.

    With b = 1 / T the NLL is convex in b, and its derivative, mean(E_p[z] - z_y), is
    increasing; the root is found by bisection in log b (70 halvings, float64), so the
    fit is deterministic and cannot diverge.
    """
    z = np.asarray(logits, np.float64)
    y = np.asarray(labels, np.int64)
    if z.ndim != 2 or len(z) != len(y) or len(y) == 0:
        raise ValueError(f"need logits [N, C] and labels [N] with N > 0, got {z.shape} and {y.shape}")
    z_true = z[np.arange(len(y)), y]

    def slope(b: float) -> float:
        p = np.exp(_log_softmax(b * z))
        return float(((p * z).sum(axis=1) - z_true).mean())

    lo, hi = math.log(1.0 / T_RANGE[1]), math.log(1.0 / T_RANGE[0])  # log b
    if slope(math.exp(hi)) <= 0:  # still decreasing at the sharpest allowed T
        return T_RANGE[0]
    if slope(math.exp(lo)) >= 0:
        return T_RANGE[1]
    for _ in range(70):
        mid = 0.5 * (lo + hi)
        if slope(math.exp(mid)) > 0:
            hi = mid
        else:
            lo = mid
    return float(1.0 / math.exp(0.5 * (lo + hi)))


def reliability_bins(probs: np.ndarray, labels: np.ndarray, num_bins: int = NUM_BINS) -> list[dict[str, Any]]:
    """Top-1 confidence in ``num_bins`` equal-width bins of [0, 1] (the last bin includes 1):
    [{lo, hi, count, confidence (mean), accuracy}] with None for empty bins."""
    probs = np.asarray(probs, np.float64)
    labels = np.asarray(labels, np.int64)
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    index = np.minimum((confidence * num_bins).astype(np.int64), num_bins - 1)
    bins = []
    for b in range(num_bins):
        sel = index == b
        n = int(sel.sum())
        bins.append(
            {
                "lo": b / num_bins,
                "hi": (b + 1) / num_bins,
                "count": n,
                "confidence": float(confidence[sel].mean()) if n else None,
                "accuracy": float(correct[sel].mean()) if n else None,
            }
        )
    return bins


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, num_bins: int = NUM_BINS) -> float:
    """ECE: the count-weighted mean over bins of |accuracy - mean confidence| (top-1, equal width)."""
    bins = reliability_bins(probs, labels, num_bins)
    total = sum(b["count"] for b in bins)
    if total == 0:
        raise ValueError("no examples")
    return float(sum(b["count"] * abs(b["accuracy"] - b["confidence"]) for b in bins if b["count"]) / total)


def summary(logits: np.ndarray, labels: np.ndarray, temperature: float | None) -> dict[str, Any]:
    """ECE, NLL and reliability bins without and (if given) with the temperature; logits [N, C] or [N, V, C]."""
    out: dict[str, Any] = {"temperature": temperature, "num_bins": NUM_BINS}
    for name, t in (("uncalibrated", 1.0), ("calibrated", temperature)):
        if t is None:
            out[name] = None
            continue
        probs = probabilities(logits, t)
        out[name] = {
            "ece": expected_calibration_error(probs, labels),
            "nll": float(-np.log(np.maximum(probs[np.arange(len(labels)), labels], 1e-300)).mean()),
            "bins": reliability_bins(probs, labels),
        }
    return out


def save(directory: str | pathlib.Path, temperature: float, **info: Any) -> pathlib.Path:
    """Writes ``directory/calibration.json`` ({"temperature": T, ...info})."""
    path = pathlib.Path(directory) / CALIBRATION_FILE
    text = json.dumps({"temperature": float(temperature), **info}, indent=2, default=float)
    return files.write_atomic(path, text, "the temperature")


def load(directory: str | pathlib.Path) -> float | None:
    """The temperature saved in ``directory/calibration.json``, or None when there is none."""
    path = pathlib.Path(directory) / CALIBRATION_FILE
    if not path.is_file():
        return None
    value = float(json.loads(path.read_text())["temperature"])
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{path}: temperature must be a positive number, got {value}")
    return value
