"""Tests for caco_jax.evaluation.plots: each figure renders to a valid PNG of the expected size."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from matplotlib import image as mpimg

from caco_jax.data.classes import CLASS_NAMES, NUM_CLASSES
from caco_jax.evaluation import plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _check_png(path, width, height):
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13
    ihdr = data[16:29]
    assert struct.unpack(">II", ihdr[:8]) == (width, height)
    assert struct.unpack(">I", data[29:33])[0] == zlib.crc32(b"IHDR" + ihdr)  # not truncated/corrupt
    assert data.endswith(b"IEND\xaeB`\x82")
    pixels = mpimg.imread(path)  # decodes the whole image
    assert pixels.shape[:2] == (height, width)
    rgb = pixels[..., :3]
    assert rgb.std() > 0.05  # something was drawn
    return rgb


def test_confusion_matrix_png(tmp_path):
    rng = np.random.default_rng(0)
    cm = rng.integers(0, 40, size=(NUM_CLASSES, NUM_CLASSES))
    cm[3] = 0  # an absent class: its normalised row is undefined, must not crash
    path = plots.plot_confusion_matrix(cm, CLASS_NAMES, tmp_path / "sub" / "cm.png", title="val")
    assert path == tmp_path / "sub" / "cm.png"
    w, h = (int(round(v * plots.DPI)) for v in plots.CONFUSION_FIGSIZE)
    rgb = _check_png(path, w, h)
    # Two panels: dark (high-count) cells appear in both the left and the right half.
    dark = rgb.mean(axis=2) < 0.35
    assert dark[:, : w // 2].sum() > 100 and dark[:, w // 2 :].sum() > 100
    with pytest.raises(ValueError):
        plots.plot_confusion_matrix(cm[:3, :3], CLASS_NAMES, tmp_path / "bad.png")


def test_confusion_matrix_custom_size(tmp_path):
    path = plots.plot_confusion_matrix(
        np.eye(2, dtype=int) * 5, ("a", "b"), tmp_path / "small.png", figsize=(6.0, 3.0), dpi=50
    )
    _check_png(path, 300, 150)


def test_curves_png_tolerates_missing_keys(tmp_path):
    history = [
        {"epoch": 0, "train_loss": 1.9, "train_accuracy": 0.4},  # no validation yet
        {
            "epoch": 1,
            "train_loss": 1.2,
            "train_accuracy": 0.6,
            "val_loss": 1.3,
            "val_accuracy": 0.55,
            "val_bacc": 0.3,
            "lr": 1e-3,
        },
        {
            "epoch": 2,
            "train_loss": 0.8,
            "train_accuracy": 0.7,
            "val_loss": None,
            "val_accuracy": 0.6,
            "val_bacc": float("nan"),
            "val_paper_bacc": 0.7,
        },
        {"train_loss": 0.7},  # no epoch key: the row index stands in
    ]
    path = plots.plot_curves(history, tmp_path / "curves.png")
    w, h = (int(round(v * plots.DPI)) for v in plots.CURVES_FIGSIZE)
    rgb = _check_png(path, w, h)
    # Lines were drawn in both panels: matplotlib's first colour (C0, #1f77b4) on each side.
    c0 = np.all(np.abs(rgb - np.array([0x1F, 0x77, 0xB4]) / 255.0) < 0.08, axis=2)
    assert c0[:, : w // 2].sum() > 100 and c0[:, w // 2 :].sum() > 100


def test_curves_empty_history(tmp_path):
    path = plots.plot_curves([], tmp_path / "empty.png")
    w, h = (int(round(v * plots.DPI)) for v in plots.CURVES_FIGSIZE)
    _check_png(path, w, h)
