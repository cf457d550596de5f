"""Out-of-distribution guard: a score of how unlike the training images an image is, and the threshold
above which the page and ``predict`` say so. NumPy only (no JAX), so exported models can use it.

Methods (none needs extra training data; higher score = more unlike the training data):

* ``max_logit``: minus the largest logit (Hendrycks et al. 2022);
* ``energy``: minus logsumexp of the logits (Liu et al. 2020);
* ``mahalanobis``: the smallest Mahalanobis distance (squared) of the features to a class mean, one
  covariance shared by the classes, fitted on the training split (Lee et al. 2018);
* ``knn``: the distance of the L2-normalised features to their k-th nearest training image (Sun et al.
  2022), on a fixed-size sample of the training split.

Features are the pooled backbone features (``pooled``) or the head's hidden activation (``hidden``):
``Guard.layer`` says which. The threshold is set on the validation split so that ``KEEP`` of its images
pass. The fitted guard is ``ood.json`` (method, layer, threshold, figures) + ``ood.npz`` (its arrays)
beside the best weights.

Two answers, not one: an image above that threshold may be a dermoscopy image taken elsewhere (another
camera, a circular field of view, another illuminant) or no dermoscopy image at all. The guard's *far*
part tells them apart: one Gaussian of the same features over the training images *and* acquisition-shifted
copies of them (``caco_jax.data.shifts``), whose squared Mahalanobis distance (``far_score``) above
``far_threshold`` (what ``FAR_KEEP`` of shifted validation copies stay under) says "not a dermoscopy
image"; below it, an image above the first threshold is "dermoscopy whose acquisition differs"
(docs/results_adaptation_cpu.md measures both on held-out sources and on far-OOD pictures).
"""

from __future__ import annotations

import dataclasses
import io
import json
import pathlib
from typing import Any

import numpy as np

from caco_jax import files

METHODS = ("max_logit", "energy", "mahalanobis", "knn")
LAYERS = ("pooled", "hidden")
KEEP = 0.95  # share of validation images the threshold lets through
FAR_KEEP = 0.99  # share of acquisition-shifted validation copies the "not dermoscopy" threshold lets through
KNN_K = 10
KNN_BANK = 2000  # training images kept for knn (a fixed, seeded sample)
JSON_FILE, ARRAYS_FILE = "ood.json", "ood.npz"


@dataclasses.dataclass
class Guard:
    """A fitted out-of-distribution score and its threshold."""

    method: str
    layer: str
    threshold: float
    arrays: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    info: dict[str, Any] = dataclasses.field(default_factory=dict)
    far_threshold: float | None = None  # None: a guard fitted before the far part existed (one answer)

    def score(self, logits: np.ndarray, features: np.ndarray | None = None) -> np.ndarray:
        """[N] scores (higher: more unlike the training data) of logits [N, C] and the guard's
        layer's features [N, F] (not needed by the logit methods)."""
        return score(self.method, self.arrays, np.asarray(logits, np.float64), features)

    def unlike(self, logits: np.ndarray, features: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(scores, bool [N]: above the threshold)."""
        s = self.score(logits, features)
        return s, s > self.threshold

    def far_score(self, features: np.ndarray) -> np.ndarray:
        """[N] squared Mahalanobis distances of the features to the Gaussian of training images and their
        acquisition-shifted copies (NaN without a far part)."""
        if self.far_threshold is None:
            return np.full(len(features), np.nan)
        d = np.asarray(features, np.float64) - self.arrays["far_mean"]
        return np.einsum("nf,fg,ng->n", d, self.arrays["far_precision"].astype(np.float64), d)

    def screen(self, logits: np.ndarray, features: np.ndarray | None) -> Screen:
        """Both answers for a batch: not dermoscopy (far part), and otherwise unlike the training images."""
        scores, unlike = self.unlike(logits, features)
        far = self.far_score(features) if features is not None else np.full(len(scores), np.nan)
        not_dermoscopy = far > self.far_threshold if self.far_threshold is not None else np.zeros(len(scores), bool)
        return Screen(scores, unlike & ~not_dermoscopy, far, not_dermoscopy)


@dataclasses.dataclass(frozen=True)
class Screen:
    """The guard's two answers for a batch: ``not_dermoscopy`` [N] (far from every dermoscopy image the
    guard knows, shifted copies included), and ``unlike_training`` [N] (a dermoscopy image, but unlike the
    training images: another acquisition); never both."""

    scores: np.ndarray
    unlike_training: np.ndarray
    far_scores: np.ndarray
    not_dermoscopy: np.ndarray


def gaussian(features: np.ndarray) -> dict[str, np.ndarray]:
    """One Gaussian of ``features`` [N, F] (mean, ridge-regularised precision): the far part's arrays."""
    f = np.asarray(features, np.float64)
    cov = np.cov(f.T)
    cov += 1e-6 * np.trace(cov) / len(cov) * np.eye(len(cov))
    return {"far_mean": f.mean(axis=0).astype(np.float32), "far_precision": np.linalg.inv(cov).astype(np.float32)}


def with_far_part(guard: Guard, train_features: np.ndarray, shifted_validation: np.ndarray) -> Guard:
    """The guard with its far part: the Gaussian of ``train_features`` (training images and shifted copies of
    them) and the threshold ``FAR_KEEP`` of the shifted validation copies stay under."""
    arrays = {**guard.arrays, **gaussian(train_features)}
    fitted = dataclasses.replace(guard, arrays=arrays, far_threshold=0.0)
    far = fitted.far_score(shifted_validation)
    info = {
        **guard.info,
        "far": {
            "keep": FAR_KEEP,
            "fitted_on": "train + shifted copies; threshold: shifted validation",
            "num_train": int(len(train_features)),
            "num_validation": int(len(far)),
        },
    }
    return dataclasses.replace(fitted, far_threshold=threshold_for(far, FAR_KEEP), info=info)


def _logsumexp(x: np.ndarray) -> np.ndarray:
    m = x.max(axis=1, keepdims=True)
    return (m + np.log(np.exp(x - m).sum(axis=1, keepdims=True)))[:, 0]


def _normalise(f: np.ndarray) -> np.ndarray:
    return f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)


def score(method: str, arrays: dict[str, np.ndarray], logits: np.ndarray, features: np.ndarray | None) -> np.ndarray:
    """The scores of one method with its fitted arrays."""
    if method == "max_logit":
        return -logits.max(axis=1)
    if method == "energy":
        return -_logsumexp(logits)
    if features is None:
        raise ValueError(f"the {method} score needs the features, not only the logits")
    f = np.asarray(features, np.float64)
    if method == "mahalanobis":
        centred = f[:, None, :] - arrays["means"][None, :, :]  # [N, C, F]
        d = np.einsum("ncf,fg,ncg->nc", centred, arrays["precision"], centred)
        return d.min(axis=1)
    if method == "knn":
        bank = arrays["bank"].astype(np.float64)
        sim = _normalise(f) @ bank.T  # cosine similarity to each bank image
        k = min(int(arrays["k"]), bank.shape[0])
        kth = -np.partition(-sim, k - 1, axis=1)[:, k - 1]
        return np.sqrt(np.maximum(2.0 - 2.0 * kth, 0.0))  # Euclidean distance of unit vectors
    raise ValueError(f"unknown OOD method {method!r}; methods: {', '.join(METHODS)}")


def fit_arrays(method: str, features: np.ndarray, labels: np.ndarray, num_classes: int, seed: int = 0) -> dict:
    """What a method needs from the training split's features and labels."""
    if method in ("max_logit", "energy"):
        return {}
    f = np.asarray(features, np.float64)
    if method == "mahalanobis":
        means = np.stack(
            [f[labels == k].mean(axis=0) if np.any(labels == k) else f.mean(axis=0) for k in range(num_classes)]
        )
        centred = f - means[labels]
        cov = centred.T @ centred / max(len(f) - num_classes, 1)
        cov += 1e-6 * np.trace(cov) / len(cov) * np.eye(len(cov))  # a ridge: the pooled features are rank-poor
        return {"means": means.astype(np.float32), "precision": np.linalg.inv(cov).astype(np.float32)}
    if method == "knn":
        rng = np.random.default_rng(seed)
        rows = np.sort(rng.permutation(len(f))[:KNN_BANK])
        return {"bank": _normalise(f[rows]).astype(np.float32), "k": np.asarray(KNN_K)}
    raise ValueError(f"unknown OOD method {method!r}; methods: {', '.join(METHODS)}")


def threshold_for(scores: np.ndarray, keep: float = KEEP) -> float:
    """The score that ``keep`` of these (in-distribution) scores do not exceed."""
    return float(np.quantile(np.asarray(scores, np.float64), keep))


def fit(
    method: str,
    layer: str,
    train: dict[str, np.ndarray],
    validation: dict[str, np.ndarray],
    num_classes: int,
) -> Guard:
    """A guard fitted on the training split ({'logits', layer, 'labels'}) with its threshold set on the
    validation split's scores."""
    if layer not in LAYERS:
        raise ValueError(f"unknown feature layer {layer!r}; layers: {', '.join(LAYERS)}")
    arrays = fit_arrays(method, train[layer], np.asarray(train["labels"]), num_classes)
    val = score(method, arrays, np.asarray(validation["logits"], np.float64), validation[layer])
    return Guard(
        method,
        layer,
        threshold_for(val),
        arrays,
        {"keep": KEEP, "fitted_on": {"arrays": "train", "threshold": "validation"}, "num_validation": len(val)},
    )


def save(weights_dir: str | pathlib.Path, guard: Guard) -> pathlib.Path:
    """Writes ``ood.json`` and ``ood.npz`` beside the weights; returns the JSON's path."""
    weights_dir = pathlib.Path(weights_dir)
    arrays: dict[str, Any] = dict(guard.arrays)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    files.write_atomic(weights_dir / ARRAYS_FILE, buffer.getvalue(), "the guard's arrays")
    info = {"method": guard.method, "layer": guard.layer, "threshold": guard.threshold, **guard.info}
    if guard.far_threshold is not None:
        info["far_threshold"] = guard.far_threshold
    return files.write_atomic(weights_dir / JSON_FILE, json.dumps(info, indent=2, default=float), "the guard")


def load(weights_dir: str | pathlib.Path) -> Guard | None:
    """The guard saved beside the weights, or None for a run trained before guards existed."""
    weights_dir = pathlib.Path(weights_dir)
    path = weights_dir / JSON_FILE
    if not path.is_file():
        return None
    info = json.loads(path.read_text())
    arrays_file = weights_dir / ARRAYS_FILE
    arrays: dict[str, np.ndarray] = {}
    if arrays_file.is_file():
        with np.load(arrays_file, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    method, layer, threshold = info.pop("method"), info.pop("layer"), float(info.pop("threshold"))
    far = info.pop("far_threshold", None)
    if (method in ("mahalanobis", "knn") or far is not None) and not arrays:
        raise FileNotFoundError(f"{arrays_file} is missing: the {method} guard in {path} needs it")
    return Guard(method, layer, threshold, arrays, info, None if far is None else float(far))
