"""Classification losses: cross-entropy, softmax focal, LDAM, DRW and the joint loss.

Everything here is pure JAX and jit-able. Every loss takes integer ``labels`` [B],
``logits`` [B, C], optional per-class ``class_weights`` [C] and an optional
per-example ``mask`` [B] (bool or 0/1 float; padded evaluation rows are 0).

Reduction (the same for every loss, and PyTorch's weighted mean)::

    loss = sum_i m_i w_{y_i} l_i / sum_i m_i w_{y_i}

with ``w = 1`` when ``class_weights`` is None. Masked rows contribute nothing to
either sum, even if their logits are NaN or their labels out of range (they are
replaced by 0 before use, so their gradient is exactly 0); an all-masked batch gives
0, never NaN.

Formulas
--------
* **Cross-entropy** with label smoothing ``eps`` follows ``torch.nn.functional.
  cross_entropy`` exactly, weights included:
  ``l_i = (1-eps) w_{y_i} (-log p_{i,y_i}) + eps/C sum_c w_c (-log p_{i,c})``,
  divided by ``sum_i w_{y_i}``.
* **Focal** (Lin et al. 2017), softmax version: ``l_i = -alpha_t (1-p_t)^gamma log p_t``
  with ``p_t`` the *plain* softmax probability of the true class. (The LDAM-DRW
  reference code derives ``p_t = exp(-CE_weighted)`` from the class-weighted
  cross-entropy, which mixes the weights into the modulating factor; we do not.)
  ``alpha`` is None (1), a scalar (multiplies every example) or a per-class vector
  (``alpha_t = alpha[y]``). ``alpha`` scales the numerator only; ``class_weights``
  enter the weighted mean. ``gamma = 0`` and ``alpha = None`` give cross-entropy.
* **LDAM** (Cao et al. 2019): margins ``Delta_j ∝ n_j^(-1/4)`` from the training
  class counts, scaled so the largest is ``max_m``; the true-class logit is lowered
  by its margin and the logits are multiplied by ``s`` before (weighted)
  cross-entropy: ``l_i = CE(s * (z_i - Delta_{y_i} e_{y_i}), y_i)``.
* **DRW** (deferred re-weighting): from epoch ``drw_epoch`` on, class weights
  ``w_j = (1-beta)/(1-beta^{n_j})``, normalised to sum to C (as in Cao et al.).
* **Joint**: ``a * focal + (1-a) * LDAM`` (``a = 0.5``); both terms use the same
  class weights and mask.

The registered, configurable losses built from these are in ``caco_jax.training.losses``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
ArrayLike = Any

DEFAULT_LDAM_S: float = 1.0  # our plain linear head's scale (docs/model.md, Losses)


# --------------------------------------------------------------------------- helpers
def _prepare(logits: ArrayLike, labels: ArrayLike, mask: ArrayLike | None) -> tuple[Array, Array, Array]:
    """Float32 logits, int labels and a float mask with masked rows sanitised."""
    logits = jnp.asarray(logits, jnp.float32)
    labels = jnp.asarray(labels).astype(jnp.int32)
    if mask is None:
        valid = jnp.ones(labels.shape, jnp.float32)
    else:
        valid = (jnp.asarray(mask) > 0).astype(jnp.float32)
        keep = valid > 0
        logits = jnp.where(keep[:, None], logits, 0.0)
        labels = jnp.where(keep, labels, 0)
    return logits, labels, valid


def _weights(class_weights: ArrayLike | None, num_classes: int) -> Array:
    if class_weights is None:
        return jnp.ones((num_classes,), jnp.float32)
    return jnp.asarray(class_weights, jnp.float32)


def _weighted_mean(per_example: Array, example_weights: Array) -> Array:
    """sum(w l) / sum(w); 0 (with zero gradient) when sum(w) == 0."""
    num = jnp.sum(jnp.where(example_weights > 0, per_example * example_weights, 0.0))
    den = jnp.sum(example_weights)
    safe = jnp.where(den > 0, den, 1.0)
    return jnp.where(den > 0, num / safe, 0.0)


def _true_class(values: Array, labels: Array) -> Array:
    return jnp.take_along_axis(values, labels[:, None], axis=-1)[:, 0]


def _check_counts(class_counts: ArrayLike | None, what: str) -> np.ndarray:
    if class_counts is None:
        raise ValueError(f"{what} needs the training-split class counts, got None")
    counts = np.asarray(class_counts, dtype=np.float64)
    if counts.ndim != 1 or counts.size == 0:
        raise ValueError(f"{what}: class_counts must be a non-empty 1-D sequence, got shape {counts.shape}")
    if np.any(~np.isfinite(counts)) or np.any(counts <= 0):
        bad = [int(i) for i in np.flatnonzero(~(counts > 0) | ~np.isfinite(counts))]
        raise ValueError(
            f"{what} needs a positive count for every class; class indices {bad} have "
            f"counts {[class_counts[i] for i in bad]} (a class absent from the training split "
            "has no defined margin / effective number)"
        )
    return counts


# --------------------------------------------------------------------------- losses
def cross_entropy(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    label_smoothing: float = 0.0,
    class_weights: ArrayLike | None = None,
    mask: ArrayLike | None = None,
) -> Array:
    """Softmax cross-entropy, identical to ``torch.nn.functional.cross_entropy``
    (``weight=class_weights``, ``label_smoothing``, mean reduction), plus a mask."""
    logits, labels, valid = _prepare(logits, labels, mask)
    num_classes = logits.shape[-1]
    w = _weights(class_weights, num_classes)
    logp = jax.nn.log_softmax(logits, axis=-1)
    nll = -_true_class(logp, labels)
    w_t = w[labels]
    per_example = (1.0 - label_smoothing) * w_t * nll
    if label_smoothing:
        per_example = per_example + (label_smoothing / num_classes) * jnp.sum(-logp * w, axis=-1)
    # Numerator already carries w_t; the denominator is sum(m w_t).
    num = jnp.sum(jnp.where(valid > 0, per_example, 0.0))
    den = jnp.sum(valid * w_t)
    safe = jnp.where(den > 0, den, 1.0)
    return jnp.where(den > 0, num / safe, 0.0)


def focal_loss(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    gamma: float = 2.0,
    alpha: float | ArrayLike | None = None,
    class_weights: ArrayLike | None = None,
    mask: ArrayLike | None = None,
) -> Array:
    """Softmax focal loss ``-alpha_t (1 - p_t)^gamma log p_t`` (p_t: plain softmax),
    weighted mean ``sum m w_y l / sum m w_y``."""
    logits, labels, valid = _prepare(logits, labels, mask)
    num_classes = logits.shape[-1]
    w = _weights(class_weights, num_classes)
    logp_t = _true_class(jax.nn.log_softmax(logits, axis=-1), labels)
    per_example = -logp_t
    if gamma != 0:
        # 1 - p_t computed without cancellation; floored so d/dx x^gamma stays finite.
        one_minus_p = jnp.maximum(-jnp.expm1(logp_t), 1e-30)
        per_example = per_example * one_minus_p**gamma
    if alpha is not None:
        alpha = jnp.asarray(alpha, jnp.float32)
        per_example = per_example * (alpha[labels] if alpha.ndim == 1 else alpha)
    return _weighted_mean(per_example, valid * w[labels])


def ldam_margins(class_counts: ArrayLike, max_m: float = 0.5) -> Array:
    """LDAM margins ``Delta_j ∝ n_j^(-1/4)``, scaled so ``max(Delta) == max_m``.

    ``class_counts`` are the TRAINING-split counts; a zero/negative count raises
    ValueError."""
    counts = _check_counts(class_counts, "LDAM")
    m = 1.0 / np.sqrt(np.sqrt(counts))
    m = m * (max_m / np.max(m))
    return jnp.asarray(m, jnp.float32)


def ldam_loss(
    logits: ArrayLike,
    labels: ArrayLike,
    margins: ArrayLike,
    *,
    s: float = DEFAULT_LDAM_S,
    class_weights: ArrayLike | None = None,
    mask: ArrayLike | None = None,
) -> Array:
    """LDAM loss: weighted CE of ``s * (logits - margin_y * onehot(y))``."""
    logits, labels, valid = _prepare(logits, labels, mask)
    num_classes = logits.shape[-1]
    margins = jnp.asarray(margins, jnp.float32)
    shifted = logits - jax.nn.one_hot(labels, num_classes, dtype=jnp.float32) * margins[labels][:, None]
    w = _weights(class_weights, num_classes)
    logp_t = _true_class(jax.nn.log_softmax(s * shifted, axis=-1), labels)
    return _weighted_mean(-logp_t, valid * w[labels])


def drw_weights(class_counts: ArrayLike, beta: float = 0.9999) -> np.ndarray:
    """Effective-number class weights ``(1-beta)/(1-beta^n_j)``, normalised to sum to C."""
    counts = _check_counts(class_counts, "DRW")
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"drw_beta must be in [0, 1), got {beta}")
    if beta > 0:
        w = (1.0 - beta) / -np.expm1(counts * np.log(beta))  # 1 - beta^n, accurately
    else:
        w = np.ones_like(counts)
    w = w / w.sum() * len(counts)
    return w.astype(np.float32)


def joint_loss(
    logits: ArrayLike,
    labels: ArrayLike,
    margins: ArrayLike,
    *,
    a: float = 0.5,
    gamma: float = 2.0,
    alpha: float | ArrayLike | None = None,
    s: float = DEFAULT_LDAM_S,
    class_weights: ArrayLike | None = None,
    mask: ArrayLike | None = None,
) -> Array:
    """The paper's joint loss ``a * focal + (1 - a) * LDAM`` (same weights and mask)."""
    focal = focal_loss(logits, labels, gamma=gamma, alpha=alpha, class_weights=class_weights, mask=mask)
    ldam = ldam_loss(logits, labels, margins, s=s, class_weights=class_weights, mask=mask)
    return a * focal + (1.0 - a) * ldam
