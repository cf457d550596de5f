"""Seeded, stratified train/validation/test splits (lesion-grouped and image-level)."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from caco_jax.data import splits
from caco_jax.data.classes import CLASS_NAMES

IDENTICAL_PAIRS = (("ISIC_0024366", "ISIC_0029861"), ("ISIC_0024777", "ISIC_0029938"))


def class_table(labels, parts, num_classes: int) -> np.ndarray:
    """Counts [split, class] (rows in the order of ``parts``)."""
    labels = np.asarray(labels, np.int64)
    return np.stack([np.bincount(labels[idx], minlength=num_classes) for idx in parts.values()])


@pytest.fixture(scope="module")
def ham(real_data_dir):
    """The real HAM10000 metadata (10,015 rows): labels, lesion ids, image ids."""
    with open(real_data_dir / "HAM10000_metadata.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    labels = np.asarray([CLASS_NAMES.index(r["dx"]) for r in rows])
    return labels, np.asarray([r["lesion_id"] for r in rows]), np.asarray([r["image_id"] for r in rows])


@pytest.fixture(scope="module")
def lesion_split(ham):
    return splits.split(*ham, by="lesion", seed=0)


def _partition_ok(parts, n):
    everything = np.concatenate(list(parts.values()))
    assert len(everything) == n and len(np.unique(everything)) == n
    assert all(np.all(np.diff(idx) > 0) for idx in parts.values())  # sorted, no repeats


@pytest.mark.real_data
def test_lesion_split_is_a_partition_without_lesion_overlap(ham, lesion_split):
    labels, lesions, _ = ham
    _partition_ok(lesion_split, len(labels))
    names = list(lesion_split)
    assert names == ["train", "validation", "test"]
    sets = {k: set(lesions[v]) for k, v in lesion_split.items()}
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not sets[a] & sets[b], (a, b)


@pytest.mark.real_data
def test_lesion_split_class_ratios_near_8_1_1(ham, lesion_split):
    labels, lesions, _ = ham
    table = class_table(labels, lesion_split, len(CLASS_NAMES))
    totals = np.bincount(labels)
    largest_lesion = max(np.unique(lesions, return_counts=True)[1])
    targets = np.outer([0.8, 0.1, 0.1], totals)
    assert np.all(np.abs(table - targets) <= 2 * largest_lesion)
    # whole splits within 1% of 8:1:1, every class in every split
    assert np.allclose(table.sum(1) / len(labels), [0.8, 0.1, 0.1], atol=0.01)
    assert np.all(table > 0)
    # large classes stratified tightly
    for c in np.flatnonzero(totals > 1000):
        assert np.allclose(table[:, c] / totals[c], [0.8, 0.1, 0.1], atol=0.01)


@pytest.mark.real_data
def test_byte_identical_pairs_share_a_split(ham, lesion_split):
    _, lesions, image_ids = ham
    where = {image_ids[i]: name for name, idx in lesion_split.items() for i in idx}
    for a, b in IDENTICAL_PAIRS:
        assert lesions[list(image_ids).index(a)] == lesions[list(image_ids).index(b)]
        assert where[a] == where[b]


@pytest.mark.real_data
def test_same_seed_same_split_other_seed_differs(ham, lesion_split):
    again = splits.split(*ham, by="lesion", seed=0)
    other = splits.split(*ham, by="lesion", seed=1)
    assert all(np.array_equal(lesion_split[k], again[k]) for k in lesion_split)
    assert not np.array_equal(lesion_split["test"], other["test"])


@pytest.mark.real_data
def test_split_does_not_depend_on_row_order(ham, lesion_split):
    labels, lesions, image_ids = ham
    perm = np.random.default_rng(0).permutation(len(labels))
    shuffled = splits.split(labels[perm], lesions[perm], image_ids[perm], by="lesion", seed=0)
    for name in lesion_split:
        assert set(image_ids[lesion_split[name]]) == set(image_ids[perm][shuffled[name]])


@pytest.mark.real_data
def test_image_split_exact_stratification_and_leaks_lesions(ham):
    labels, lesions, _ = ham
    parts = splits.split(*ham, by="image", seed=0)
    _partition_ok(parts, len(labels))
    table = class_table(labels, parts, len(CLASS_NAMES))
    targets = np.outer([0.8, 0.1, 0.1], np.bincount(labels))
    assert np.all(np.abs(table - targets) < 1)  # largest-remainder rounding: exact
    assert set(lesions[parts["train"]]) & set(lesions[parts["test"]])  # the leak the default avoids


def test_small_synthetic_grouped_split():
    rng = np.random.default_rng(0)
    groups = [f"L{g}" for g in rng.integers(0, 120, 400)]
    labels = np.asarray([int(g[1:]) % 3 for g in groups])  # one label per group
    parts = splits.stratified_group_split(labels, groups, fractions=(0.5, 0.25, 0.25), seed=7)
    _partition_ok(parts, 400)
    owner = {}
    for name, idx in parts.items():
        for i in idx:
            assert owner.setdefault(groups[i], name) == name


def test_zero_fraction_split_stays_empty_and_bad_fractions_raise():
    labels = np.arange(50) % 5
    groups = [str(i) for i in range(50)]
    parts = splits.stratified_group_split(labels, groups, fractions=(0.9, 0.1, 0.0))
    assert len(parts["test"]) == 0 and len(parts["validation"]) == 5
    with pytest.raises(ValueError, match="fractions"):
        splits.stratified_group_split(labels, groups, fractions=(0.8, 0.1))
    with pytest.raises(ValueError, match="fractions"):
        splits.stratified_group_split(labels, groups, fractions=(0.8, 0.3, -0.1))
    with pytest.raises(ValueError, match="split_by"):
        splits.split(labels, groups, groups, by="patient")


def test_empty_lesion_id_falls_back_to_the_image():
    keys = splits.group_keys(["L1", "", "L1", ""], ["a", "b", "c", "d"])
    assert keys[0] == keys[2] and keys[1] != keys[3]
