"""A new clinic's class prior, estimated from the model's posteriors on its unlabelled images (EM of
Saerens, Latinne & Decaestecker, Neural Computation 14, 2002), and the bias-corrected temperature that
makes the posteriors calibrated to a known prior first.

EM needs posteriors p_s(y | x) that are calibrated under a known source prior pi_s. A model trained with
re-weighted sampling and label smoothing (configs/recipe.py) does not give them; ``fit_bias_temperature``
fits a temperature and one bias per class on the validation split (natural class mix pi_s) by
maximum likelihood (bias-corrected temperature scaling, Alexandari et al., ICML 2020), which does. Then,
on the target images, with w = pi_t / pi_s:

    q(y | x) = p_s(y | x) w_y / sum_k p_s(k | x) w_k,      pi_t <- mean over x of q(y | x)

until pi_t moves less than ``tol``. The log ratio log(pi_t / pi_s) added to the calibrated log-posteriors
is Bayes' rule under the target's prior: what the ``argmax`` answer of an adapted run reads. The balanced
rule divides the prior out by construction, so its answers do not depend on pi_t.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


@dataclasses.dataclass(frozen=True)
class BiasTemperature:
    """softmax(logits / temperature + bias): posteriors calibrated under the prior they were fitted on."""

    temperature: float
    bias: tuple[float, ...]
    prior: tuple[float, ...]  # the class mix of the images it was fitted on

    def log_posteriors(self, logits: np.ndarray) -> np.ndarray:
        """[N, C] log p_s(y | x); for views [N, V, C], the log of the views' mean posterior."""
        z = np.asarray(logits, np.float64)
        if z.ndim == 3:
            p = np.exp(_log_softmax(z / self.temperature + np.asarray(self.bias))).mean(axis=1)
            return np.log(np.maximum(p, 1e-300))
        return _log_softmax(z / self.temperature + np.asarray(self.bias))

    def to_json(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "bias": list(self.bias), "prior": list(self.prior)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BiasTemperature:
        return cls(float(data["temperature"]), tuple(map(float, data["bias"])), tuple(map(float, data["prior"])))


def fit_bias_temperature(logits: np.ndarray, labels: np.ndarray, num_classes: int, steps: int = 500) -> BiasTemperature:
    """Temperature and per-class biases minimising the NLL of ``labels`` (Newton steps on the convex
    problem in (1 / T, b), b[0] = 0); the prior is the labels' class mix (every class must occur)."""
    z = np.asarray(logits, np.float64)
    y = np.asarray(labels, np.int64)
    counts = np.bincount(y, minlength=num_classes).astype(np.float64)
    if np.any(counts == 0):
        raise ValueError(f"every class needs images to fit the biases; counts {counts.astype(int).tolist()}")
    theta = np.zeros(num_classes)  # [1/T, b_1 .. b_{C-1}]
    theta[0] = 1.0
    onehot = np.eye(num_classes)[y]

    def parts(t: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        bias = np.concatenate([[0.0], t[1:]])
        logp = _log_softmax(t[0] * z + bias)
        p = np.exp(logp)
        nll = -float(logp[np.arange(len(y)), y].mean())
        # features of theta: d s / d(1/T) = z, d s / d b_k = e_k (k >= 1)
        feats = np.concatenate(
            [z[:, :, None], np.broadcast_to(np.eye(num_classes)[:, 1:], (len(y), num_classes, num_classes - 1))], axis=2
        )
        mean_feat = np.einsum("nc,ncf->nf", p, feats)
        grad = -(np.einsum("nc,ncf->nf", onehot, feats) - mean_feat).mean(axis=0)
        centred = feats - mean_feat[:, None, :]
        hess = np.einsum("nc,ncf,ncg->fg", p, centred, centred) / len(y)
        return nll, grad, hess

    for _ in range(steps):
        nll, grad, hess = parts(theta)
        step = np.linalg.solve(hess + 1e-9 * np.eye(len(theta)), grad)
        scale = 1.0
        while scale > 1e-6 and parts(theta - scale * step)[0] > nll:
            scale /= 2
        theta = theta - scale * step
        if np.max(np.abs(scale * step)) < 1e-10:
            break
    inv_t = max(float(theta[0]), 1e-3)
    return BiasTemperature(
        1.0 / inv_t, tuple(float(b) for b in np.concatenate([[0.0], theta[1:]])), tuple(counts / counts.sum())
    )


@dataclasses.dataclass(frozen=True)
class PriorEstimate:
    """The target prior EM found, with how it got there."""

    prior: tuple[float, ...]
    source_prior: tuple[float, ...]
    iterations: int
    converged: bool
    num_images: int

    @property
    def log_ratio(self) -> np.ndarray:
        """log(pi_t / pi_s): the offsets Bayes' rule adds to the calibrated log-posteriors."""
        return np.log(np.maximum(np.asarray(self.prior), 1e-12)) - np.log(np.asarray(self.source_prior))

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PriorEstimate:
        return cls(
            tuple(map(float, data["prior"])),
            tuple(map(float, data["source_prior"])),
            int(data["iterations"]),
            bool(data["converged"]),
            int(data["num_images"]),
        )


def clinic_rule(data: dict[str, Any]) -> tuple[BiasTemperature, PriorEstimate]:
    """The clinic rule's parts from ``clinic.json``'s content (KeyError, TypeError, ValueError if not one)."""
    return BiasTemperature.from_json(data["bias_temperature"]), PriorEstimate.from_json(data)  # extra keys: notes


def clinic_answer(
    rule: tuple[BiasTemperature, PriorEstimate], raw_log_probs: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(classes, probabilities) under the clinic's prior, from log softmax of the raw logits (with test-time
    augmentation: the log of the views' mean probability)."""
    bias, estimate = rule
    adjusted = adjusted_probabilities(bias.log_posteriors(raw_log_probs), estimate)
    return adjusted.argmax(-1), adjusted


def estimate_prior(
    log_posteriors: np.ndarray, source_prior: np.ndarray, *, tol: float = 1e-6, max_iter: int = 1000
) -> PriorEstimate:
    """EM estimate of the target's class prior from calibrated log p_s(y | x) [N, C] of its images."""
    logp = np.asarray(log_posteriors, np.float64)
    pi_s = np.asarray(source_prior, np.float64)
    if logp.ndim != 2 or logp.shape[1] != len(pi_s) or len(logp) == 0:
        raise ValueError(f"need log-posteriors [N, {len(pi_s)}] with N > 0, got {logp.shape}")
    pi_t = pi_s.copy()
    converged, iterations = False, 0
    for iterations in range(1, max_iter + 1):  # noqa: B007 - the count is reported
        q = np.exp(_log_softmax(logp + np.log(np.maximum(pi_t, 1e-300)) - np.log(pi_s)))
        new = q.mean(axis=0)
        change = float(np.max(np.abs(new - pi_t)))
        pi_t = new
        if change < tol:
            converged = True
            break
    return PriorEstimate(tuple(float(x) for x in pi_t), tuple(float(x) for x in pi_s), iterations, converged, len(logp))


def adjusted_probabilities(log_posteriors: np.ndarray, estimate: PriorEstimate) -> np.ndarray:
    """p_t(y | x) proportional to p_s(y | x) pi_t / pi_s: the posteriors under the target's prior."""
    return np.exp(_log_softmax(np.asarray(log_posteriors, np.float64) + estimate.log_ratio))
