"""Synthetic HAM10000-like data: layout, proportions, determinism, learnability."""

from __future__ import annotations

import collections
import csv
import hashlib

import numpy as np
import pytest
from PIL import Image

from caco_jax.data import splits, synthetic
from caco_jax.data.classes import CLASS_NAMES, HAM10000_COUNTS


@pytest.fixture(scope="module")
def manual_dir(tmp_path_factory):
    return synthetic.write_manual_dir(tmp_path_factory.mktemp("synth"), num_images=300, image_size=(64, 48), seed=1)


def _rows(manual_dir):
    with open(manual_dir / "HAM10000_metadata.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_kaggle_layout_and_columns(manual_dir):
    rows = _rows(manual_dir)
    assert list(rows[0]) == list(synthetic.METADATA_COLUMNS)
    files = {p.stem: p for p in manual_dir.glob("HAM10000_images_part_*/*.jpg")}
    assert {p.parent.name for p in files.values()} == {"HAM10000_images_part_1", "HAM10000_images_part_2"}
    assert set(files) == {r["image_id"] for r in rows}
    assert len(rows) == 300
    with Image.open(next(iter(files.values()))) as image:
        assert image.size == (64, 48) and image.mode == "RGB" and image.format == "JPEG"


def test_class_proportions_follow_ham10000(manual_dir):
    counts = collections.Counter(r["dx"] for r in _rows(manual_dir))
    assert set(counts) == set(CLASS_NAMES)
    assert min(counts.values()) >= 12
    assert counts.most_common(1)[0][0] == "nv"
    expected_nv = HAM10000_COUNTS[CLASS_NAMES.index("nv")] / sum(HAM10000_COUNTS)
    assert abs(counts["nv"] / 300 - expected_nv) < 0.1
    # mel and bkl are the next largest, as in HAM10000
    assert counts["mel"] > counts["bcc"] and counts["bkl"] > counts["akiec"]


def test_several_images_per_lesion_one_dx_each(manual_dir):
    by_lesion = collections.defaultdict(set)
    sizes = collections.Counter(r["lesion_id"] for r in _rows(manual_dir))
    for r in _rows(manual_dir):
        by_lesion[r["lesion_id"]].add(r["dx"])
    assert max(sizes.values()) >= 2 and min(sizes.values()) == 1
    assert all(len(dx) == 1 for dx in by_lesion.values())


def test_same_seed_same_bytes(tmp_path):
    def digest(seed, name):
        out = synthetic.write_manual_dir(tmp_path / name, num_images=40, image_size=(32, 24), seed=seed)
        h = hashlib.sha256()
        for path in sorted(out.rglob("*")):
            if path.is_file():
                h.update(path.name.encode() + path.read_bytes())
        return h.hexdigest()

    assert digest(3, "a") == digest(3, "b")
    assert digest(3, "a") != digest(4, "c")


def test_class_counts_small_and_invalid():
    counts = synthetic.class_counts(70)
    assert counts.sum() == 70 and counts.min() >= 10
    with pytest.raises(ValueError):
        synthetic.class_counts(5)


def _colour_features(path):
    """Histogram of colours relative to the skin (border median): a rotation-free summary."""
    x = np.asarray(Image.open(path), np.float32) / 255
    border = np.concatenate(
        [x[:3].reshape(-1, 3), x[-3:].reshape(-1, 3), x[:, :3].reshape(-1, 3), x[:, -3:].reshape(-1, 3)]
    )
    q = np.clip(((x - np.median(border, 0) + 0.8) / 1.6 * 6).astype(int), 0, 5)
    h = np.bincount((q[..., 0] * 36 + q[..., 1] * 6 + q[..., 2]).ravel(), minlength=216)
    return np.sqrt(h / h.sum())


def test_a_small_model_learns_it_well_above_chance(manual_dir):
    """Class-balanced softmax regression on colour histograms, lesion-grouped held-out data."""
    rows = _rows(manual_dir)
    files = {p.stem: p for p in manual_dir.glob("*/*.jpg")}
    x = np.stack([_colour_features(files[r["image_id"]]) for r in rows])
    y = np.asarray([CLASS_NAMES.index(r["dx"]) for r in rows])
    parts = splits.split(
        y, [r["lesion_id"] for r in rows], [r["image_id"] for r in rows], fractions=(0.6, 0.2, 0.2), seed=0
    )
    train, test = parts["train"], np.concatenate([parts["validation"], parts["test"]])
    w, b = np.zeros((x.shape[1], 7)), np.zeros(7)
    weight = 1.0 / np.bincount(y[train], minlength=7)[y[train]]
    weight /= weight.sum()
    onehot = np.eye(7)[y[train]]
    for _ in range(500):
        z = x[train] @ w + b
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        g = (p - onehot) * weight[:, None]
        w -= 20 * x[train].T @ g
        b -= 20 * g.sum(0)
    pred = np.argmax(x[test] @ w + b, 1)
    recalls = [np.mean(pred[y[test] == c] == c) for c in range(7) if np.any(y[test] == c)]
    majority = np.bincount(y[test]).max() / len(test)
    assert np.mean(recalls) > 0.6  # chance: 1/7
    assert np.mean(pred == y[test]) > majority + 0.1
