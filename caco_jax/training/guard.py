"""Fitting the out-of-distribution guard of a run (``caco_jax.evaluation.ood_score``): embeddings of
the training split (the guard's arrays) and of the validation split (its threshold), at the end of
training or afterwards for a run trained before guards existed (``caco-jax guard``)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from caco_jax.evaluation import ood_score
from caco_jax.training import parallel
from caco_jax.training.evaluate import host_array

# Chosen by measurement on a CPU-protocol run of configs/recipe.py (docs/results_ood_cpu.md).
DEFAULT_METHOD = "mahalanobis"
DEFAULT_LAYER = "pooled"


def embed(
    embed_step: Callable[..., dict[str, jax.Array]],
    params: Any,
    batch_stats: Any,
    batches: Iterable[Mapping[str, np.ndarray]],
    mesh: Mesh,
) -> dict[str, np.ndarray]:
    """{'logits', 'pooled', 'hidden', 'labels'} of every real row of the (process-local) eval batches,
    in order; one host sync at the end."""
    outputs = [embed_step(params, batch_stats, parallel.to_global(batch, mesh)) for batch in batches]
    parts: dict[str, list[np.ndarray]] = {"logits": [], "pooled": [], "hidden": [], "labels": []}
    for out in outputs:
        mask = host_array(out["mask"]).astype(bool)
        for key in ("logits", "pooled", "hidden"):
            parts[key].append(host_array(out[key])[mask])
        parts["labels"].append(host_array(out["label"])[mask])
    return {k: np.concatenate(v) if v else np.zeros((0,)) for k, v in parts.items()}


def fit(
    train: Mapping[str, np.ndarray],
    validation: Mapping[str, np.ndarray],
    num_classes: int,
    *,
    method: str = DEFAULT_METHOD,
    layer: str = DEFAULT_LAYER,
) -> ood_score.Guard:
    """The guard of ``method`` on ``layer``: arrays from the training split, threshold from validation."""
    guard = ood_score.fit(method, layer, dict(train), dict(validation), num_classes)
    guard.info["num_train"] = int(len(train["labels"]))
    return guard
