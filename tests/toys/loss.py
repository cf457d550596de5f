"""A toy loss: the Brier score (squared distance between the softmax and the one-hot label), with
the registry's contract: class weights, masks (masked rows' garbage ignored) and its PyTorch formula."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from caco_jax.training.losses import register

NAME = "toy_brier"


@register(NAME)
@dataclasses.dataclass(frozen=True)
class ToyBrier:
    @classmethod
    def from_config(cls, cfg: Any, class_counts: Any, num_classes: int) -> ToyBrier:
        return cls()

    def __call__(self, logits, labels, class_weights=None, mask=None):
        logits = jnp.asarray(logits, jnp.float32)
        m = jnp.ones(logits.shape[0]) if mask is None else jnp.asarray(mask, jnp.float32)
        logits = jnp.where(m[:, None] > 0, logits, 0.0)
        labels = jnp.where(m > 0, jnp.asarray(labels), 0)
        err = ((jax.nn.softmax(logits) - jax.nn.one_hot(labels, logits.shape[-1])) ** 2).sum(-1)
        w = jnp.ones(logits.shape[-1]) if class_weights is None else jnp.asarray(class_weights, jnp.float32)
        wm = w[labels] * m
        return (wm * err).sum() / jnp.maximum(wm.sum(), 1e-12)

    def torch_formula(self):
        import torch

        def formula(logits, target, w=None):
            err = ((torch.softmax(logits, -1) - torch.nn.functional.one_hot(target, logits.shape[-1])) ** 2).sum(-1)
            w = torch.ones(logits.shape[-1], dtype=logits.dtype) if w is None else w
            return (w[target] * err).sum() / w[target].sum()

        return formula
