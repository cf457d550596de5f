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


FAR_TRAIN_IMAGES = 2000  # training images (a seeded sample) whose plain and shifted features fit the far part
SHIFT_SEED = 1


def far_images(train: Any, validation: Any, image_size: int, seed: int = SHIFT_SEED) -> dict[str, np.ndarray]:
    """uint8 images the far part is fitted on: a sample of the training split, as the network sees it and
    acquisition-shifted (``caco_jax.data.shifts.mixed``), and the validation split shifted."""
    from caco_jax.data import shifts
    from caco_jax.data.records import stored_size

    rows = np.sort(np.random.default_rng(seed).permutation(len(train))[:FAR_TRAIN_IMAGES]).tolist()
    size = (image_size, image_size)
    val_rows = list(range(len(validation)))
    return {
        "train": train.decode(rows, size),
        "train_shifted": shifts.mixed(train.decode(rows, stored_size(train)), image_size, seed),
        "validation_shifted": shifts.mixed(validation.decode(val_rows, stored_size(validation)), image_size, seed + 10),
    }


def add_far_part(
    fitted: ood_score.Guard,
    embed_images: Callable[[np.ndarray], Mapping[str, np.ndarray]],
    images: dict[str, np.ndarray],
) -> ood_score.Guard:
    """The guard with its "not dermoscopy" part (``ood_score.with_far_part``) from :func:`far_images`,
    embedded by ``embed_images`` (uint8 images -> {'logits', 'pooled', 'hidden'})."""
    layer = fitted.layer
    train = np.concatenate([embed_images(images["train"])[layer], embed_images(images["train_shifted"])[layer]])
    return ood_score.with_far_part(fitted, train, embed_images(images["validation_shifted"])[layer])
