"""The losses ``loss.name`` selects (a registry), with deferred re-weighting: ``make_loss(config)``.

Each loss is one class registered with ``@register("name")``: ``from_config(cfg, class_counts,
num_classes)``, ``__call__(logits, labels, class_weights=None, mask=None)`` (pure, jit-able; the
formulas are in ``caco_jax.training.loss_functions``; it applies the class weights it is given, which
are DRW's once ``loss.drw_epoch`` is reached) and ``torch_formula()``, the PyTorch formula the tests hold
it to. Its config fields go in ``configs/default.py``. The LDAM scale ``s`` defaults to 1, not the
official 30 (measured: docs/model.md, Losses).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from caco_jax.registry import Registry, require
from caco_jax.training.loss_functions import (
    DEFAULT_LDAM_S,
    cross_entropy,
    drw_weights,
    focal_loss,
    joint_loss,
    ldam_loss,
    ldam_margins,
)

Array = jax.Array
ArrayLike = Any
TorchLoss = Any  # (logits, target, class_weights=None) -> torch scalar


# --------------------------------------------------------------------------- registry
class LossClass(Protocol):
    """What :func:`make_loss` asks of a registered loss class (its instances are the loss functions)."""

    def from_config(self, cfg: Any, class_counts: np.ndarray | None, num_classes: int) -> Any: ...


LOSSES: Registry[LossClass] = Registry("loss.name", require("loss", "from_config", "torch_formula"))


def register(name: str) -> Any:
    """Class decorator: makes a loss selectable as ``loss.name = name``. The class has
    ``from_config(cfg, class_counts, num_classes)``, ``__call__(logits, labels, class_weights=None,
    mask=None)`` and ``torch_formula()`` (the PyTorch formula the tests compare it with)."""

    def deco(cls: Any) -> Any:  # any class with the methods above (checked when it is registered)
        LOSSES.register(name, cls)
        cls.name = name
        return cls

    return deco


def _alpha(value: Any, num_classes: int) -> float | tuple[float, ...] | None:
    if value is None:
        return None
    if isinstance(value, (int, float, np.floating, np.integer)):
        return float(value)
    alpha = tuple(float(x) for x in value)
    if len(alpha) != num_classes:
        raise ValueError(f"focal_alpha has {len(alpha)} entries, expected {num_classes} (one per class)")
    return alpha


@register("ce")
@dataclasses.dataclass(frozen=True)
class CrossEntropy:
    """Cross-entropy with optional label smoothing (``loss.label_smoothing``)."""

    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")

    @classmethod
    def from_config(cls, cfg: Any, class_counts: np.ndarray | None, num_classes: int) -> CrossEntropy:
        return cls(label_smoothing=float(cfg.label_smoothing))

    def __call__(self, logits, labels, class_weights=None, mask=None) -> Array:
        return cross_entropy(
            logits, labels, label_smoothing=self.label_smoothing, class_weights=class_weights, mask=mask
        )

    def torch_formula(self) -> TorchLoss:
        """The PyTorch formula the tests hold this loss to: torch's own cross-entropy."""
        import torch.nn.functional as F

        return lambda logits, target, w=None: F.cross_entropy(
            logits, target, weight=w, label_smoothing=self.label_smoothing
        )


@register("focal")
@dataclasses.dataclass(frozen=True)
class Focal:
    """Softmax focal loss (``loss.focal_gamma``, ``loss.focal_alpha``)."""

    gamma: float = 2.0
    alpha: float | tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.gamma < 0:
            raise ValueError(f"focal_gamma must be >= 0, got {self.gamma}")

    @classmethod
    def from_config(cls, cfg: Any, class_counts: np.ndarray | None, num_classes: int) -> Focal:
        return cls(gamma=float(cfg.focal_gamma), alpha=_alpha(cfg.focal_alpha, num_classes))

    @property
    def alpha_array(self) -> Any:
        """``alpha`` as the formulas take it: None, a float, or a float32 [C] array."""
        return jnp.asarray(self.alpha, jnp.float32) if isinstance(self.alpha, tuple) else self.alpha

    def __call__(self, logits, labels, class_weights=None, mask=None) -> Array:
        return focal_loss(
            logits, labels, gamma=self.gamma, alpha=self.alpha_array, class_weights=class_weights, mask=mask
        )

    def torch_formula(self) -> TorchLoss:
        """Lin et al.'s softmax focal loss in PyTorch (``torch_reference.focal_loss``)."""
        from caco_jax.interop.torch_reference import focal_loss as torch_focal

        return lambda logits, target, w=None: torch_focal(logits, target, self.gamma, self.alpha, w)


@register("ldam")
@dataclasses.dataclass(frozen=True)
class LDAM:
    """LDAM with margins from the training counts (``loss.ldam_max_m``) and scale ``loss.ldam_s``."""

    margins: tuple[float, ...]
    s: float = DEFAULT_LDAM_S
    counts: tuple[float, ...] = ()  # the training class counts the margins come from

    def __post_init__(self) -> None:
        if self.s <= 0:
            raise ValueError(f"ldam_s must be > 0, got {self.s}")

    @classmethod
    def from_config(cls, cfg: Any, class_counts: np.ndarray | None, num_classes: int) -> LDAM:
        max_m = float(cfg.ldam_max_m)
        if max_m < 0:
            raise ValueError(f"ldam_max_m must be >= 0, got {max_m}")
        margins = tuple(float(x) for x in np.asarray(ldam_margins(class_counts, max_m)))
        assert class_counts is not None  # ldam_margins refuses missing counts
        return cls(margins=margins, s=float(cfg.ldam_s), counts=tuple(float(c) for c in class_counts))

    def __call__(self, logits, labels, class_weights=None, mask=None) -> Array:
        return ldam_loss(
            logits, labels, jnp.asarray(self.margins, jnp.float32), s=self.s, class_weights=class_weights, mask=mask
        )

    def torch_formula(self) -> TorchLoss:
        """The official LDAM-DRW code's ``LDAMLoss`` (``torch_reference.LDAMLoss``) on the same counts."""
        from caco_jax.interop.torch_reference import LDAMLoss

        return lambda logits, target, w=None: LDAMLoss(self.counts, max_m=max(self.margins), weight=w, s=self.s)(
            logits, target
        )


@register("joint")
@dataclasses.dataclass(frozen=True)
class Joint:
    """The paper's ``a * focal + (1 - a) * LDAM`` (``loss.joint_a``; the focal and LDAM fields)."""

    focal: Focal
    ldam: LDAM
    a: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 <= self.a <= 1.0:
            raise ValueError(f"joint_a must be in [0, 1], got {self.a}")

    @classmethod
    def from_config(cls, cfg: Any, class_counts: np.ndarray | None, num_classes: int) -> Joint:
        return cls(
            focal=Focal.from_config(cfg, class_counts, num_classes),
            ldam=LDAM.from_config(cfg, class_counts, num_classes),
            a=float(cfg.joint_a),
        )

    def __call__(self, logits, labels, class_weights=None, mask=None) -> Array:
        return joint_loss(
            logits,
            labels,
            jnp.asarray(self.ldam.margins, jnp.float32),
            a=self.a,
            gamma=self.focal.gamma,
            alpha=self.focal.alpha_array,
            s=self.ldam.s,
            class_weights=class_weights,
            mask=mask,
        )

    def torch_formula(self) -> TorchLoss:
        """``a * focal + (1 - a) * LDAM`` of the two PyTorch formulas."""
        focal, ldam = self.focal.torch_formula(), self.ldam.torch_formula()
        return lambda logits, target, w=None: self.a * focal(logits, target, w) + (1 - self.a) * ldam(logits, target, w)


@dataclasses.dataclass(frozen=True)
class Loss:
    """A configured loss plus its deferred re-weighting schedule. Hashable (tuples only), so
    it may be closed over or passed as a static argument to ``jax.jit``.

    ``loss(logits, labels, class_weights, mask=None)`` is pure and jit-able;
    ``loss.class_weights(epoch)`` gives the float32 [C] weights to feed it (ones
    unless DRW is on and ``epoch >= drw_epoch``), so the jitted step sees the same
    shapes and dtypes every epoch.
    """

    fn: Any  # one of the registered loss classes
    num_classes: int
    drw_epoch: int = -1
    drw_class_weights: tuple[float, ...] | None = None

    @property
    def name(self) -> str:
        return self.fn.name

    def __call__(
        self,
        logits: ArrayLike,
        labels: ArrayLike,
        class_weights: ArrayLike | None = None,
        mask: ArrayLike | None = None,
    ) -> Array:
        return self.fn(logits, labels, class_weights, mask)

    @property
    def drw_enabled(self) -> bool:
        """Whether deferred re-weighting is configured."""
        return self.drw_epoch >= 0

    def class_weights(self, epoch: int) -> np.ndarray:
        """Float32 [C] class weights for ``epoch`` (0-based)."""
        if self.drw_enabled and epoch >= self.drw_epoch:
            return np.asarray(self.drw_class_weights, np.float32)
        return np.ones((self.num_classes,), np.float32)


def make_loss(cfg: Any, class_counts: ArrayLike | None, num_classes: int | None = None) -> Loss:
    """Builds the loss named ``cfg.name`` from a config's ``loss`` section (every field of
    ``configs/default.py``'s, no defaults filled in here).

    ``class_counts`` are the training-split counts; required (all > 0) for 'ldam',
    'joint' and DRW. Without them, ``num_classes`` gives the class count."""
    loss_class = LOSSES[str(cfg.name).lower()]
    counts = None if class_counts is None else np.asarray(class_counts).reshape(-1)
    if counts is not None:
        n = len(counts)
    elif num_classes is not None:
        n = int(num_classes)
    else:
        raise ValueError("make_loss needs the training class counts or num_classes")
    fn = loss_class.from_config(cfg, counts, n)
    drw_epoch = int(cfg.drw_epoch)
    drw = tuple(float(x) for x in drw_weights(counts, float(cfg.drw_beta))) if drw_epoch >= 0 else None
    return Loss(fn=fn, num_classes=n, drw_epoch=drw_epoch, drw_class_weights=drw)


__all__ = [
    "DEFAULT_LDAM_S",
    "LOSSES",
    "LDAM",
    "CrossEntropy",
    "Focal",
    "Joint",
    "Loss",
    "cross_entropy",
    "drw_weights",
    "focal_loss",
    "joint_loss",
    "ldam_loss",
    "ldam_margins",
    "make_loss",
    "register",
]
