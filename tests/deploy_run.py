"""A run's best-weights folder for the deployment tests (test_deploy.py, test_export_litert.py): the
weights of a model with every file the exports carry beside them: a temperature, a balanced decision
rule, a reliability threshold and a Mahalanobis out-of-distribution guard (fitted on random features)."""

from __future__ import annotations

import pathlib
from collections.abc import Callable

import numpy as np

from caco_jax.data.classes import CLASS_NAMES
from caco_jax.evaluation import calibration, decision, ood_score, selective
from caco_jax.runs.weights import save_weights

SIZE = (64, 64)  # square: test-time augmentation rotates the images


def uint8_images(n: int, seed: int = 0, size: tuple[int, int] = SIZE) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, *size, 3), dtype=np.uint8)


def make_run(folder: pathlib.Path, model, logits_of: Callable[..., np.ndarray]) -> pathlib.Path:
    """``folder`` holding ``model``'s weights and the run's files; ``logits_of(model, uint8 images)``."""
    save_weights(model, folder, metadata={"class_names": list(CLASS_NAMES)})
    calibration.save(folder, 1.7)
    logits = logits_of(model, uint8_images(32, seed=1))
    labels = np.arange(32) % len(CLASS_NAMES)
    decision.save(folder, decision.fit(logits, labels, np.full(7, 1 / 7), temperature=1.3))
    tta = {"threshold": 0.55, "target_accuracy": 0.9}
    selective.save(folder, {"threshold": 0.6, "target_accuracy": 0.9, "tta": tta})
    rng = np.random.default_rng(2)
    train = {"logits": logits, "pooled": rng.normal(size=(32, 576)), "labels": labels}
    val = {"logits": logits[:8], "pooled": rng.normal(size=(8, 576))}
    ood_score.save(folder, ood_score.fit("mahalanobis", "pooled", train, val, len(CLASS_NAMES)))
    return folder
