"""Synthetic HAM10000-like data: a manual_dir in the Kaggle layout, no download needed.

Each class draws a lesion-like blob on a skin-toned background, and the classes
differ visibly in shape, colour and texture (so a small model learns them well
above chance), in HAM10000's class proportions, with several images per lesion:

    akiec  rough red-pink patch with pale scale speckles
    bcc    pearly pink nodule with a bright rim and red vessel lines
    bkl    light tan, waxy, striped (cerebriform) patch
    df     small brown ring around a pale centre
    mel    large irregular dark lesion with blue-grey patches
    nv     round, evenly brown, smooth
    vasc   clustered red-purple lobules

    python tools/make_synthetic.py --out_dir /tmp/ham_synth --num_images 400
"""

from __future__ import annotations

import csv
import os
import pathlib
from typing import Any

import numpy as np
from PIL import Image

from caco_jax.data.classes import CLASS_NAMES, HAM10000_COUNTS

METADATA_COLUMNS = ("lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization", "dataset")
# Acquisition sources of the later HAM10000 release, drawn per lesion with their share of images.
_SOURCES = ("vidir_molemax", "vidir_modern", "rosendahl", "vienna_dias")
_SOURCE_SHARES = (0.39, 0.34, 0.23, 0.04)
_SKIN = np.array([[232, 190, 165], [214, 170, 140], [198, 150, 120], [240, 205, 185], [180, 130, 100]], np.float32)
_LOCALIZATIONS = (
    "back",
    "lower extremity",
    "trunk",
    "upper extremity",
    "abdomen",
    "face",
    "chest",
    "foot",
    "neck",
    "scalp",
    "hand",
    "ear",
    "unknown",
)
_DX_TYPES = {
    "akiec": "histo",
    "bcc": "histo",
    "bkl": "histo",
    "df": "consensus",
    "mel": "histo",
    "nv": "follow_up",
    "vasc": "consensus",
}
_IMAGES_PER_LESION = (1, 1, 1, 1, 2, 2, 3, 4)  # HAM10000: 1.34 images per lesion on average


def class_counts(num_images: int, min_per_class: int = 12) -> np.ndarray:
    """Images per class in HAM10000 proportions, each class at least min_per_class."""
    floor = min(min_per_class, num_images // len(CLASS_NAMES))
    if floor < 1:
        raise ValueError(f"num_images must be at least {len(CLASS_NAMES)}, got {num_images}")
    proportions = np.asarray(HAM10000_COUNTS, np.float64) / sum(HAM10000_COUNTS)
    counts = np.maximum(np.floor(proportions * num_images).astype(np.int64), floor)
    majority = int(np.argmax(proportions))
    counts[majority] += num_images - counts.sum()
    if counts[majority] < floor:
        raise ValueError(f"num_images={num_images} is too small for {floor} images per class")
    return counts


def _lesion_params(dx: str, rng: np.random.Generator) -> dict:
    """What stays fixed across the images of one lesion."""
    radius = {"df": 0.16, "mel": 0.36, "nv": 0.24, "bkl": 0.3, "bcc": 0.24, "akiec": 0.3, "vasc": 0.22}[
        dx
    ] * rng.uniform(0.85, 1.15)
    irregular = {"mel": 0.16, "akiec": 0.11, "bkl": 0.08, "vasc": 0.05}.get(dx, 0.03)
    return {
        "skin": _SKIN[rng.integers(len(_SKIN))] + rng.normal(0, 6, 3),
        "radius": radius,
        "harmonics": rng.normal(0, irregular, (5, 2)),
        "colour_shift": rng.normal(0, 8, 3),
        "seed": int(rng.integers(2**31)),
    }


def _noise(rng: np.random.Generator, shape) -> np.ndarray:
    return rng.standard_normal(shape, dtype=np.float32)


def _render(dx: str, lesion: dict, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """One uint8 [height, width, 3] image of a lesion, with per-image pose and noise."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    scale = min(height, width)
    cy = height / 2 + rng.normal(0, 0.06) * scale
    cx = width / 2 + rng.normal(0, 0.06) * scale
    dy, dx_ = (yy - cy) / scale, (xx - cx) / scale
    dist = np.hypot(dy, dx_)
    # Outline r(theta) = R (1 + sum_k a_k cos k theta + b_k sin k theta), tabulated on 512 angles.
    angles = np.linspace(0, 2 * np.pi, 512, endpoint=False, dtype=np.float32)
    k = np.arange(2, 7, dtype=np.float32)[:, None]
    a, b = lesion["harmonics"][:, :1], lesion["harmonics"][:, 1:]
    outline = 1 + (a * np.cos(k * angles) + b * np.sin(k * angles)).sum(0)
    theta = np.arctan2(dy, dx_) + rng.uniform(0, 2 * np.pi)
    r = lesion["radius"] * rng.uniform(0.9, 1.1) * outline[(theta * (512 / (2 * np.pi))).astype(np.int64) % 512]
    inside = np.clip((r - dist) / 0.02, 0, 1)[..., None]  # soft edge
    rel = (dist / np.maximum(r, 1e-3))[..., None]  # 0 at the centre, 1 on the edge
    tex = np.random.default_rng(lesion["seed"])  # lesion texture, same for all its images

    # Skin with vignette (dermoscope) and mottling.
    vignette = 1 - 0.35 * np.clip(np.hypot(yy / height - 0.5, xx / width - 0.5) * 2 - 0.6, 0, 1)
    skin = lesion["skin"].astype(np.float32) * vignette[..., None] + 4 * _noise(rng, (height, width, 1))

    colour = {
        "akiec": [200, 95, 95],
        "bcc": [235, 170, 185],
        "bkl": [185, 140, 95],
        "df": [120, 75, 50],
        "mel": [60, 35, 30],
        "nv": [135, 85, 55],
        "vasc": [150, 25, 60],
    }[dx]
    lesion_rgb = np.broadcast_to(np.asarray(colour, np.float32) + lesion["colour_shift"], (height, width, 3)).copy()
    if dx == "mel":  # blue-grey veil and black blotches
        phase = tex.uniform(0, 2 * np.pi, 2)
        veil = np.sin(xx / scale * 9 + phase[0]) * np.cos(yy / scale * 7 + phase[1]) > 0.2
        lesion_rgb[veil] = [90, 100, 130]
        lesion_rgb[(rel[..., 0] < 0.45)] *= 0.55
    elif dx == "nv":  # darker even centre
        lesion_rgb *= 1.0 - 0.2 * np.clip(1 - rel, 0, 1)
    elif dx == "bkl":  # cerebriform stripes
        angle = tex.uniform(0, np.pi)
        stripes = np.sin((np.cos(angle) * xx + np.sin(angle) * yy) / scale * 60)
        lesion_rgb += stripes[..., None] * 25
    elif dx == "df":  # pale centre inside a brown ring
        centre = np.clip((0.55 - rel) / 0.15, 0, 1)
        lesion_rgb = lesion_rgb * (1 - centre) + np.asarray([225, 200, 185], np.float32) * centre
    elif dx == "bcc":  # bright pearly rim and thin red vessels
        rim = np.clip(1 - np.abs(rel - 0.85) / 0.12, 0, 1)
        lesion_rgb += rim * 30
        for _ in range(4):
            p = tex.uniform(-0.5, 0.5, 2) * lesion["radius"]
            d = tex.normal(0, 1, 2)
            d /= np.linalg.norm(d)
            line = np.abs((dx_ - p[1]) * d[0] - (dy - p[0]) * d[1]) < 0.012
            lesion_rgb[line & (rel[..., 0] < 0.9)] = [190, 20, 30]
    elif dx == "akiec":  # pale scale speckles on a red patch
        speckle = rng.random((height, width)) < 0.12
        lesion_rgb[speckle] = [245, 235, 225]
    elif dx == "vasc":  # several lobules
        inside = np.zeros_like(inside)
        for _ in range(5):
            oy, ox = tex.normal(0, 0.45, 2) * lesion["radius"]
            lobe_r = lesion["radius"] * tex.uniform(0.35, 0.6)
            lobe = np.clip((lobe_r - np.hypot(dy - oy, dx_ - ox)) / 0.02, 0, 1)[..., None]
            inside = np.maximum(inside, lobe)
        lesion_rgb[(rel[..., 0] < 0.5)] = np.asarray([100, 20, 70], np.float32)

    image = skin * (1 - inside) + lesion_rgb * inside
    image = image * np.float32(rng.uniform(0.9, 1.1)) + 6 * _noise(rng, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def write_manual_dir(
    out_dir: os.PathLike | str,
    *,
    num_images: int = 400,
    image_size: tuple[int, int] = (200, 150),
    seed: int = 0,
    quality: int = 90,
) -> pathlib.Path:
    """Write a Kaggle-layout manual_dir of synthetic lesions; returns its path.

    out_dir/HAM10000_images_part_1/*.jpg, out_dir/HAM10000_images_part_2/*.jpg and
    out_dir/HAM10000_metadata.csv. image_size is (width, height), like HAM10000's
    600x450. The same seed writes the same files.
    """
    out = pathlib.Path(out_dir)
    width, height = image_size
    rng = np.random.default_rng(seed)
    source_rng = np.random.default_rng([seed, 1])  # its own stream: the images stay those of older versions
    counts = class_counts(num_images)
    rows: list[dict[str, Any]] = []
    lesion_no = 0
    for dx, count in zip(CLASS_NAMES, counts, strict=True):
        left = int(count)
        while left:
            n = min(left, int(rng.choice(_IMAGES_PER_LESION)))
            left -= n
            lesion_no += 1
            lesion = _lesion_params(dx, rng)
            age = "" if rng.random() < 0.02 else f"{5 * rng.integers(1, 18):.1f}"
            sex = str(rng.choice(["male", "female", "unknown"], p=[0.54, 0.45, 0.01]))
            localization = str(rng.choice(_LOCALIZATIONS))
            source = str(source_rng.choice(_SOURCES, p=_SOURCE_SHARES))
            for _ in range(n):
                rows.append(
                    {
                        "lesion_id": f"HAM_{lesion_no:07d}",
                        "dx": dx,
                        "dx_type": _DX_TYPES[dx],
                        "age": age,
                        "sex": sex,
                        "localization": localization,
                        "dataset": source,
                        "_lesion": lesion,
                    }
                )
    image_numbers = rng.permutation(len(rows)) + 24306  # HAM10000's ids start at ISIC_0024306
    for row, number in zip(rows, image_numbers, strict=True):
        row["image_id"] = f"ISIC_{int(number):07d}"
    parts = [out / "HAM10000_images_part_1", out / "HAM10000_images_part_2"]
    for part in parts:
        part.mkdir(parents=True, exist_ok=True)
    half = len(rows) // 2
    for i, row in enumerate(sorted(rows, key=lambda r: r["image_id"])):
        image = _render(row["dx"], row.pop("_lesion"), height, width, np.random.default_rng([seed, i]))
        Image.fromarray(image).save(parts[i >= half] / f"{row['image_id']}.jpg", quality=quality)
    with open(out / "HAM10000_metadata.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=METADATA_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return out
