"""Offline augmentation before the split: the protocol many HAM10000 papers use.

Copies of an image are made with the paper's listed transforms (flips, rotations by
90/180/270 degrees, colour changes, scaling) and added to the dataset *before* it is
split, so a copy and its source photograph can land in different splits. Each copy
is virtual: a (source image, copy number) pair whose transform is a deterministic
function of ``(seed, image_id, copy)``, applied when the image is decoded. That is the
same leak as copies written to disk, without a second build.

Modes: ``balance`` tops every class up to ``target`` images (classes already at or
above it get no copies; copies are spread round-robin over the class's images),
``multiple`` gives every image ``multiple`` copies.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from caco_jax.data.config_section import from_section

MODES = ("none", "balance", "multiple")
COPY_SEPARATOR = "#copy"


@dataclasses.dataclass(frozen=True)
class OfflineCopies:
    """How many copies to make before the split (``data.offline`` in the config)."""

    mode: str = "none"
    target: int = 0  # balance: images per class after topping up
    multiple: int = 1  # multiple: copies per image
    seed: int = 0

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"data.offline.mode must be one of {MODES}, got {self.mode!r}")
        if self.mode == "balance" and self.target < 1:
            raise ValueError(
                f"data.offline.mode=balance needs data.offline.target >= 1 (images per class), got {self.target}"
            )
        if self.mode == "multiple" and self.multiple < 1:
            raise ValueError(f"data.offline.mode=multiple needs data.offline.multiple >= 1, got {self.multiple}")

    @classmethod
    def from_config(cls, cfg: Any) -> OfflineCopies:
        """From the ``data.offline`` section (a ConfigDict or a mapping); unknown keys raise, naming them."""
        return from_section(cls, cfg, "data.offline")

    @property
    def enabled(self) -> bool:
        return self.mode != "none"


def plan(
    labels: Sequence[int] | np.ndarray, copies: OfflineCopies, image_ids: Sequence[str] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(source positions, copy numbers) of the expanded dataset: every original (copy 0) in
    order, then the copies (copy >= 1), class by class. Which images of a class are copied (when a
    class is topped up by fewer copies than it has images) depends on the image ids and the seed, not
    on the order of the rows."""
    labels = np.asarray(labels, np.int64)
    ids = [str(i) for i in image_ids]
    if len(ids) != len(labels):
        raise ValueError(f"{len(labels)} labels but {len(ids)} image ids")
    positions = [np.arange(len(labels))]
    numbers = [np.zeros(len(labels), np.int64)]
    if copies.mode == "multiple":
        for k in range(1, copies.multiple + 1):
            positions.append(np.arange(len(labels)))
            numbers.append(np.full(len(labels), k, np.int64))
    elif copies.mode == "balance":
        for label in np.unique(labels):
            members = np.flatnonzero(labels == label)
            members = members[np.argsort([_order_key(copies.seed, ids[m]) for m in members], kind="stable")]
            extra = copies.target - len(members)
            if extra <= 0:
                continue
            order = np.arange(extra)
            positions.append(members[order % len(members)])
            numbers.append(1 + order // len(members))
    return np.concatenate(positions), np.concatenate(numbers)


def _order_key(seed: int, image_id: str) -> bytes:
    return hashlib.blake2b(f"order\x00{seed}\x00{image_id}".encode(), digest_size=8).digest()


def copy_id(image_id: str, copy: int) -> str:
    """The image_id of copy ``copy`` of ``image_id`` (copy 0 is the image itself)."""
    return image_id if copy == 0 else f"{image_id}{COPY_SEPARATOR}{copy}"


def _rng(seed: int, image_id: str, copy: int) -> np.random.Generator:
    digest = hashlib.blake2b(f"{seed}\x00{image_id}\x00{copy}".encode(), digest_size=8).digest()
    return np.random.default_rng(int.from_bytes(digest, "little"))


def transform(image: np.ndarray, image_id: str, copy: int, seed: int = 0) -> np.ndarray:
    """Copy ``copy`` of a decoded uint8 [H, W, 3] image, same shape: one of the 7 non-identity
    flips/rotations (a different one for each of an image's first 7 copies), a zoom to a random
    area of 75-100 %, and brightness / contrast / saturation factors in [0.8, 1.2]."""
    if copy == 0:
        return image
    rng = _rng(seed, image_id, copy)
    height, width = image.shape[:2]
    offset = int(_rng(seed, image_id, 0).integers(7))
    element = 1 + (copy - 1 + offset) % 7  # 1..7: rot90 k = element // 2, flip = element % 2
    out = np.rot90(image, element // 2)
    if element % 2:
        out = out[:, ::-1]
    area = rng.uniform(0.75, 1.0)
    h, w = out.shape[:2]
    ch, cw = max(1, round(h * np.sqrt(area))), max(1, round(w * np.sqrt(area)))
    y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    crop = np.ascontiguousarray(out[y0 : y0 + ch, x0 : x0 + cw])
    resized = np.asarray(Image.fromarray(crop).resize((width, height), Image.Resampling.BILINEAR), np.float32) / 255.0
    brightness, contrast, saturation = rng.uniform(0.8, 1.2, size=3)
    resized = np.clip(resized * brightness, 0.0, 1.0)
    luma = resized @ np.asarray([0.299, 0.587, 0.114], np.float32)
    resized = np.clip((resized - luma.mean()) * contrast + luma.mean(), 0.0, 1.0)
    luma = (resized @ np.asarray([0.299, 0.587, 0.114], np.float32))[..., None]
    resized = np.clip((resized - luma) * saturation + luma, 0.0, 1.0)
    return np.round(resized * 255.0).astype(np.uint8)
