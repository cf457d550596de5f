"""The PyTorch counterpart of a configured loss (test_losses.py, trajectory.py): the formula the loss
that ``caco_jax.training.losses.make_loss`` builds declares (``torch_formula``), configured alike."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from caco_jax.training.losses import make_loss


def make_torch_loss(cfg: Any, class_counts: Any) -> Callable[..., torch.Tensor]:
    """``loss(logits, target, class_weights=None)`` for a config's ``loss`` section."""
    formula = make_loss(cfg, class_counts).fn.torch_formula()

    def loss(logits: torch.Tensor, target: torch.Tensor, class_weights: Any = None) -> torch.Tensor:
        w = None if class_weights is None else torch.as_tensor(class_weights, dtype=logits.dtype)
        return formula(logits, target, w)

    return loss
