"""The leave-one-source-out comparison of two runs' saved predictions, against direct computation."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

from caco_jax.evaluation import run_figures
from caco_jax.experiments import sources

CLASSES = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")


def _write(workdir: pathlib.Path, split: str, ids, labels, logits, source) -> None:
    np.savez_compressed(
        workdir / f"predictions_{split}.npz",
        logits=logits.astype(np.float32),
        labels=labels.astype(np.int64),
        image_id=np.asarray(ids),
        lesion_id=np.asarray([f"L{i}" for i in ids]),
        source_id=np.asarray(ids),
        class_names=np.asarray(CLASSES),
        same_lesion=np.zeros(len(ids), bool),
        same_source=np.zeros(len(ids), bool),
        source=np.asarray(source),
        dx_type=np.asarray(["histo"] * len(ids)),
        age=np.full(len(ids), 50.0, np.float32),
        sex=np.asarray(["male"] * len(ids)),
        localization=np.asarray(["back"] * len(ids)),
    )


def _run(root: pathlib.Path, name: str, ids, labels, source, noise: float, seed: int) -> pathlib.Path:
    workdir = root / name
    (workdir / "best").mkdir(parents=True)
    (workdir / "best" / "caco_jax_weights.json").write_text(
        json.dumps({"train_class_counts": [3, 5, 11, 1, 11, 67, 2]})
    )
    rng = np.random.default_rng(seed)
    for split, n in (("validation", 200), ("test", len(ids))):
        split_labels = labels if split == "test" else rng.integers(0, 7, n)
        logits = 3 * np.eye(7)[split_labels] + noise * rng.normal(size=(n, 7))
        split_ids = ids if split == "test" else [f"v{i}" for i in range(n)]
        _write(workdir, split, split_ids, split_labels, logits, source if split == "test" else ["x"] * n)
    return workdir


def test_the_same_images_are_compared_and_the_whole_source_reported(tmp_path):
    rng = np.random.default_rng(0)
    n = 300
    ids = [f"img{i}" for i in range(n)]
    labels = rng.integers(0, 7, n)
    source = np.where(np.arange(n) % 3 == 0, "rosendahl", "vidir_modern")
    ref = _run(tmp_path, "ref", ids, labels, source, noise=1.0, seed=1)
    held = source == "rosendahl"  # the held-out run's test split: every rosendahl image (here: also extra ones)
    extra = [f"extra{i}" for i in range(50)]
    loso_ids = [i for i, h in zip(ids, held, strict=True) if h][::-1] + extra  # another order, more images
    loso_labels = np.concatenate([labels[held][::-1], rng.integers(0, 7, 50)])
    loso = _run(tmp_path, "loso", loso_ids, loso_labels, ["rosendahl"] * len(loso_ids), noise=3.0, seed=2)
    out = sources.compare_source(ref, loso, "rosendahl")
    same = out["same_images"]
    mine = np.flatnonzero(held)
    want_ref = run_figures.run_probs(ref, rule="balanced")
    assert same["trained_on_every_source"]["images"] == len(mine)
    assert same["trained_on_every_source"]["accuracy"] == pytest.approx(
        np.mean(want_ref["predicted"][mine] == labels[mine])
    )
    want_loso = run_figures.run_probs(loso, rule="balanced")
    position = {i: k for k, i in enumerate(loso_ids)}
    rows = [position[ids[k]] for k in mine]
    loso_acc = np.mean(want_loso["predicted"][rows] == labels[mine])
    assert same["trained_without_it"]["accuracy"] == pytest.approx(loso_acc)
    d = same["difference"]["accuracy"]
    assert d["difference"] == pytest.approx(loso_acc - same["trained_on_every_source"]["accuracy"])
    assert d["interval"][0] <= d["difference"] <= d["interval"][1]
    assert out["whole_source"]["images"] == len(loso_ids)
    text = "\n".join(sources.markdown([{"cell": "loso_rosendahl", "seed": 0, **out}], None))
    assert "| rosendahl | 0 | 100 (" in text and "Recall per class on the same images" in text
    with pytest.raises(ValueError, match="of vidir_modern's test images are not in"):
        sources.compare_source(ref, loso, "vidir_modern")


def test_runs_trained_elsewhere_keep_their_recorded_rows_and_subgroups(tmp_path):
    """A report rebuilt where only some seeds' runs are (``--report_only`` elsewhere): the comparisons and the
    subgroup figures the last results JSON recorded for the others are kept, not dropped."""
    from caco_jax.experiments.presets import PRESETS

    preset = PRESETS["sources_cpu"]
    cells = [c.name for c in preset.cells if sources.held_out(c)]
    recorded = [{"cell": cell, "seed": seed, "marker": f"{cell}-{seed}"} for cell in cells for seed in (0, 1)]
    previous = {"sources": {"comparisons": recorded, "subgroups": {"cell": sources.REFERENCE, "seed": 0}}}
    rows = sources.source_rows(preset, tmp_path, previous)
    assert [r["marker"] for r in rows] == [r["marker"] for r in recorded]
    assert sources.reference_subgroups(preset, tmp_path, previous) == {"cell": sources.REFERENCE, "seed": 0}
    assert sources.source_rows(preset, tmp_path) == [] and sources.reference_subgroups(preset, tmp_path) is None
