"""Acquisition-shifted copies of dermoscopy images: what another clinic's camera might give (a circular field
of view with the lesion smaller in the frame, another illuminant and gamma), made with the training
augmentation's own operations (``caco_jax.data.acquisition``) at probability 1, seeded.

The out-of-distribution guard learns from them what a dermoscopy image taken elsewhere can look like (so
that it is not called "not dermoscopy"), and tools/measure_adaptation.py measures each remedy on
shifted copies of the test split (HAM10000's own sources are all cropped inside the field of view).
"""

from __future__ import annotations

from typing import Any

import numpy as np

# Fixed before any figure that uses them was looked at.
SHIFTS: dict[str, dict[str, Any]] = {
    "field_of_view": {
        "zoom_p": 1.0,
        "zoom_out": (1.2, 1.5),
        "fov_p": 1.0,
        "fov_radius": (0.9, 1.1),
        "fov_softness": (0.02, 0.08),
        "fov_shift": 0.05,
    },
    "illuminant": {"channel_gain": 0.25, "gamma": (0.8, 1.25)},
}
SHIFTS["both"] = {**SHIFTS["field_of_view"], **SHIFTS["illuminant"]}
BATCH = 64


def shifted(images: np.ndarray, kind: str, out_size: int, seed: int) -> np.ndarray:
    """uint8 [N, out, out, 3] copies of uint8 ``images`` [N, H, W, 3] (best as stored, before any resize)
    under shift ``kind`` (a key of :data:`SHIFTS`); nothing else random (the whole image, no flips)."""
    import jax

    from caco_jax.data.augment import AugmentConfig, augment_batch
    from caco_jax.data.classes import IMAGENET_MEAN, IMAGENET_STD

    if kind not in SHIFTS:
        raise ValueError(f"unknown acquisition shift {kind!r}; shifts: {', '.join(SHIFTS)}")
    none = AugmentConfig.none()
    cfg = AugmentConfig(**{**{f: getattr(none, f) for f in none.__dataclass_fields__}, **SHIFTS[kind]})
    mean, std = np.asarray(IMAGENET_MEAN, np.float32), np.asarray(IMAGENET_STD, np.float32)
    out = []
    for start in range(0, len(images), BATCH):
        key = jax.random.fold_in(jax.random.key(seed), start)
        batch = jax.numpy.asarray(images[start : start + BATCH])
        x = np.asarray(augment_batch(key, batch, out_size=out_size, cfg=cfg)) * std + mean
        out.append(np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8))
    return np.concatenate(out) if out else np.zeros((0, out_size, out_size, 3), np.uint8)


def mixed(images: np.ndarray, out_size: int, seed: int) -> np.ndarray:
    """Each image under one of the shifts, in turn (image i under ``list(SHIFTS)[i % 3]``)."""
    kinds = list(SHIFTS)
    out = np.zeros((len(images), out_size, out_size, 3), np.uint8)
    for k, kind in enumerate(kinds):
        rows = np.arange(k, len(images), len(kinds))
        if len(rows):
            out[rows] = shifted(images[rows], kind, out_size, seed + k)
    return out
