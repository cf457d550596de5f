"""The figures of a finished run computed from its saved predictions: test metrics under each
decision rule against independent formulas, and the validation BACC a choice made without the test
split sees."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score

from caco_jax.evaluation import run_figures

CLASSES = ("a", "b", "c")


def _write(workdir: pathlib.Path, split: str, logits: np.ndarray, labels: np.ndarray) -> None:
    n = len(labels)
    ids = np.asarray([f"{split}{i}" for i in range(n)])
    np.savez_compressed(
        workdir / f"predictions_{split}.npz",
        logits=logits.astype(np.float32),
        labels=labels.astype(np.int64),
        image_id=ids,
        lesion_id=np.asarray([f"L{split}{i // 2}" for i in range(n)]),
        source_id=ids,
        class_names=np.asarray(CLASSES),
        same_lesion=np.arange(n) % 5 == 0,
        same_source=np.zeros(n, bool),
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run whose logits favour the majority class: argmax misses most of the rare class."""
    workdir = tmp_path_factory.mktemp("run")
    (workdir / "best").mkdir()
    (workdir / "best" / "caco_jax_weights.json").write_text(json.dumps({"train_class_counts": [80, 15, 5]}))
    rng = np.random.default_rng(0)
    data = {}
    for split, n in (("validation", 300), ("test", 300)):
        labels = rng.choice(3, size=n, p=[0.6, 0.25, 0.15])
        logits = rng.normal(size=(n, 3)) + 1.2 * np.eye(3)[labels] + np.log([0.8, 0.15, 0.05])
        _write(workdir, split, logits, labels)
        data[split] = (logits, labels)
    return workdir, data, run_figures.run_figures(workdir, resamples=50)


def test_argmax_figures_match_sklearn_on_test_and_validation(run):
    _, data, figs = run
    (val_logits, val_labels), (test_logits, test_labels) = data["validation"], data["test"]
    argmax = figs["plain"]["argmax"]
    assert argmax["bacc"] == pytest.approx(balanced_accuracy_score(test_labels, test_logits.argmax(1)))
    assert argmax["val_bacc"] == pytest.approx(balanced_accuracy_score(val_labels, val_logits.argmax(1)))
    assert figs["tta"] is None  # no TTA predictions saved


def test_balanced_rules_are_fitted_on_validation_and_raise_its_bacc(run):
    _, data, figs = run
    plain = figs["plain"]
    assert plain["balanced"]["val_bacc"] > plain["argmax"]["val_bacc"] + 0.02
    assert plain["offsets"]["val_bacc"] >= plain["balanced"]["val_bacc"] - 1e-9  # starts from it, only climbs
    assert plain["balanced"]["tau"] > 0
    assert plain["balanced"]["recall"]["c"] > plain["argmax"]["recall"]["c"]


def test_parts_split_the_test_images_by_their_leak_flags(run):
    _, _, figs = run
    parts = figs["parts"]
    assert parts["same_lesion"]["num_examples"] == 60 and parts["clean"]["num_examples"] == 240
    assert parts["same_source"]["num_examples"] == 0


def test_recipe_table_gives_the_validation_bacc_of_each_view(run):
    from caco_jax.experiments import summary, tables

    workdir, _, figs = run
    views = summary._views([workdir], [{"figures": figs}], resamples=20, recorded=None)
    assert set(views) == {"argmax", "balanced", "offsets"}  # the TTA views need TTA predictions
    assert views["balanced"]["val_bacc"][0] == pytest.approx(figs["plain"]["balanced"]["val_bacc"])
    text = "\n".join(tables._recipe_lines([{"cell": "x", "seeds": [0], "views": views}]))
    assert f"| x | 0 | {100 * figs['plain']['argmax']['val_bacc']:.1f} |" in text
