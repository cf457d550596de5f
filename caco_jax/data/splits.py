"""Seeded, deterministic, stratified train/validation/test splits of HAM10000.

Two rules, both stratified by class:

* 'lesion' (default): whole lesions go to one split (all images of a lesion_id
  together), so no lesion is seen in training and evaluated on;
* 'image': each image on its own, what the paper most likely did (8:1:1); it
  leaks lesions (a lesion photographed twice can be in train and test).

Algorithm: within each class, the groups (lesions, or single images) are put in
an order given by a hash of (seed, group id), then each goes to the split that
is furthest below its target image count (targets: fractions of the class's
images, rounded by largest remainder). With single images the targets are met
exactly; with lesions each split is within two lesion sizes of its target. The
result depends only on (group id, label) pairs, not on row order or the numpy
version.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

SPLIT_NAMES = ("train", "validation", "test")
SPLIT_BY = ("lesion", "image")


def _order_key(seed: int, group: str) -> bytes:
    return hashlib.blake2b(f"{seed}\x00{group}".encode(), digest_size=8).digest()


def _targets(total: int, fractions: np.ndarray) -> np.ndarray:
    """Largest-remainder rounding of fractions * total (sums to total)."""
    raw = fractions * total
    out = np.floor(raw).astype(np.int64)
    order = np.argsort(-(raw - out), kind="stable")
    out[order[: total - out.sum()]] += 1
    return out


def group_keys(
    lesion_ids: Sequence[str] | np.ndarray, image_ids: Sequence[str] | np.ndarray, by: str = "lesion"
) -> list[str]:
    """Group id of every image: its lesion_id (its image_id where that is empty), or its image_id."""
    if by not in SPLIT_BY:
        raise ValueError(f"split_by must be one of {SPLIT_BY}, got {by!r}")
    if by == "image":
        return [str(i) for i in image_ids]
    return [str(lesion) or f"image:{image}" for lesion, image in zip(lesion_ids, image_ids, strict=True)]


def stratified_group_split(
    labels: Sequence[int] | np.ndarray,
    groups: Sequence[str],
    *,
    fractions: Sequence[float] | np.ndarray = (0.8, 0.1, 0.1),
    seed: int = 0,
    names: Sequence[str] = SPLIT_NAMES,
) -> dict[str, np.ndarray]:
    """Indices (sorted int64) of each split; no group is in two splits.

    A group whose images carry different labels is stratified by its most common label.
    """
    labels = np.asarray(labels, np.int64)
    fractions = np.asarray(fractions, np.float64)
    if len(groups) != len(labels):
        raise ValueError(f"{len(labels)} labels but {len(groups)} groups")
    if len(fractions) != len(names) or np.any(fractions < 0) or not np.isclose(fractions.sum(), 1.0):
        raise ValueError(f"fractions must be {len(names)} non-negative numbers summing to 1, got {fractions}")
    members: dict[str, list[int]] = {}
    for index, group in enumerate(groups):
        members.setdefault(group, []).append(index)
    by_class: dict[int, list[str]] = {}
    for group, indices in members.items():
        group_labels = labels[indices]
        if len(indices) == 1 or np.all(group_labels == group_labels[0]):
            label = int(group_labels[0])
        else:
            values, counts = np.unique(group_labels, return_counts=True)
            label = int(values[np.argmax(counts)])
        by_class.setdefault(label, []).append(group)

    assignment: dict[str, list[int]] = {name: [] for name in names}
    usable = fractions > 0
    for label in sorted(by_class):
        class_groups = sorted(by_class[label], key=lambda g: (_order_key(seed, g), g))
        sizes = [len(members[g]) for g in class_groups]
        target = _targets(sum(sizes), fractions)
        count = np.zeros(len(names), np.int64)
        for group, size in zip(class_groups, sizes, strict=True):
            deficit = np.where(usable, target - count, np.iinfo(np.int64).min)
            split = int(np.argmax(deficit))  # ties: the earlier split
            count[split] += size
            assignment[names[split]].extend(members[group])
    return {name: np.sort(np.asarray(idx, np.int64)) for name, idx in assignment.items()}


def split(
    labels: Sequence[int] | np.ndarray,
    lesion_ids: Sequence[str] | np.ndarray,
    image_ids: Sequence[str] | np.ndarray,
    *,
    by: str = "lesion",
    fractions: Sequence[float] | np.ndarray = (0.8, 0.1, 0.1),
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """HAM10000 train/validation/test indices by 'lesion' (default) or 'image'."""
    if len(set(image_ids)) != len(image_ids):
        raise ValueError("image_ids are not unique")
    return stratified_group_split(labels, group_keys(lesion_ids, image_ids, by), fractions=fractions, seed=seed)
