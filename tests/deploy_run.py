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


def real_images(real_data_dir: pathlib.Path, count: int, size: tuple[int, int] = SIZE) -> np.ndarray:
    """The first ``count`` HAM10000 images (by image id), decoded at ``size`` as uint8."""
    import csv

    from caco_jax.data.images import decode

    with open(real_data_dir / "HAM10000_metadata.csv", newline="") as fh:
        ids = sorted(row["image_id"] for row in csv.DictReader(fh))[:count]
    return np.stack([decode((real_data_dir / "images_200x150" / f"{i}.jpg").read_bytes(), size) for i in ids])


def imagenet_caco(pth: pathlib.Path):
    """A caco model with torchvision's ImageNet backbone (random head), in eval mode."""
    from caco_jax.models import create_model
    from caco_jax.runs.loading import load_pretrained

    model = create_model(arch="small", attention="caco", num_classes=7, seed=0)
    load_pretrained(model, pth)
    model.eval()
    return model


def pooled_cosine(float_file: pathlib.Path, int8_file: pathlib.Path, images: np.ndarray) -> np.ndarray:
    """Per image, the cosine between the pooled features of an exported float file and of its int8 twin."""
    from caco_jax.serving.portable import PortablePredictor

    f = PortablePredictor(float_file).outputs(images)["pooled"]
    q = PortablePredictor(int8_file).outputs(images)["pooled"]
    return (f * q).sum(1) / np.linalg.norm(f, axis=1) / np.linalg.norm(q, axis=1)
