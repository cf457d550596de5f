"""The figures of one finished run, from its saved predictions: every metric with its lesion-level
interval, under each decision rule, with and without test-time augmentation, and on the leaked and
clean parts of its test split.

Everything is computed from ``predictions_{validation,test}[_tta].npz`` and the weights' metadata
(temperature, training class counts), so a rule or an interval added later applies to old runs.
"""

from __future__ import annotations

import functools
import json
import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from caco_jax.evaluation import calibration, decision, intervals, predictions, side_files
from caco_jax.evaluation.metrics import classification_report

RULES = ("argmax", "balanced", "offsets")  # balanced = the logit-adjustment fit
PARTS = ("clean", "same_lesion", "same_source")  # test images with no leak / a same-lesion photo / the same photo


def figures(
    probs: np.ndarray,
    labels: np.ndarray,
    groups: Sequence[str] | np.ndarray,
    class_names: Sequence[str],
    *,
    predicted: np.ndarray | None = None,
    resamples: int = intervals.DEFAULT_RESAMPLES,
) -> dict[str, Any]:
    """accuracy, bacc, macro_auc, per-class recall and their 95 % lesion-bootstrap intervals (``ci``)."""
    labels = np.asarray(labels, np.int64)
    predicted = probs.argmax(axis=1) if predicted is None else np.asarray(predicted)
    c = len(class_names)
    cm = np.zeros((c, c), np.int64)
    np.add.at(cm, (labels, predicted), 1)
    report = classification_report(cm, probs=probs, labels=labels, class_names=class_names)
    out = {
        "num_examples": int(len(labels)),
        "accuracy": report["accuracy"],
        "bacc": report["bacc"],
        "macro_auc": report["macro_auc"],
        "recall": {n: report["per_class"][n]["sensitivity"] for n in class_names},
    }
    if len(labels) and resamples:
        out["ci"] = intervals.bootstrap(
            probs, labels, groups, class_names, predicted=predicted, num_resamples=resamples
        )
    return out


def _prior(workdir: pathlib.Path, val: predictions.Predictions) -> np.ndarray:
    meta = workdir / "best" / "caco_jax_weights.json"
    counts = json.loads(meta.read_text()).get("train_class_counts") if meta.is_file() else None
    if not counts:
        raise FileNotFoundError(f"{meta} records no train_class_counts: the prior of the balanced rule is unknown")
    return np.asarray(counts, np.float64)


def rules(workdir: pathlib.Path, val: predictions.Predictions, temperature: float) -> dict[str, Any]:
    """The balanced rules fitted on the validation predictions (None for argmax)."""
    prior = _prior(workdir, val)
    return {
        "argmax": None,
        "balanced": decision.fit(val.logits, val.labels, prior, temperature=temperature),
        "offsets": decision.fit(val.logits, val.labels, prior, temperature=temperature, how="offsets"),
    }


@functools.lru_cache(maxsize=512)
def fitted_rules(workdir: pathlib.Path, tta: bool, temperature: float) -> dict[str, Any]:
    """``rules`` of a finished run's validation predictions, fitted once per process: the tables
    ask for the same run's rules once per view and per comparison."""
    return rules(workdir, predictions.load(predictions.path(workdir, "validation", tta)), temperature)


def run_figures(workdir: str | pathlib.Path, resamples: int = intervals.DEFAULT_RESAMPLES) -> dict[str, Any] | None:
    """{'plain': {rule: figures}, 'tta': {rule: figures} or None, 'parts': {part: figures},
    'temperature', 'tau'} of a run's test split; None for a run without saved predictions."""
    workdir = pathlib.Path(workdir)
    if not predictions.path(workdir, "test").is_file():
        return None
    temperature = side_files.temperature(workdir / "best") or 1.0
    out: dict[str, Any] = {"temperature": temperature}
    for variant, tta in (("plain", False), ("tta", True)):
        if not predictions.path(workdir, "test", tta).is_file():
            out[variant] = None
            continue
        val = predictions.load(predictions.path(workdir, "validation", tta))
        test = predictions.load(predictions.path(workdir, "test", tta))
        fitted = fitted_rules(workdir, tta, temperature)
        probs = calibration.probabilities(test.logits, temperature)
        out[variant] = {
            name: figures(
                probs,
                test.labels,
                test.lesion_id,
                test.class_names,
                predicted=None if rule is None else rule.predict(test.logits, temperature),
                resamples=resamples,
            )
            for name, rule in fitted.items()
        }
        out[variant]["balanced"]["tau"] = fitted["balanced"].tau
        for name, rule in fitted.items():  # what a choice made on validation sees (in-sample for the fitted rules)
            if rule is None:
                val_pred = calibration.probabilities(val.logits, temperature).argmax(-1)
            else:
                val_pred = rule.predict(val.logits, temperature)
            out[variant][name]["val_bacc"] = decision.balanced_accuracy(val_pred, val.labels, len(val.class_names))
    test = predictions.load(predictions.path(workdir, "test"))
    probs = calibration.probabilities(test.logits, temperature)
    masks = {"clean": ~test.same_lesion, "same_lesion": test.same_lesion, "same_source": test.same_source}
    out["parts"] = {
        part: figures(probs[m], test.labels[m], test.lesion_id[m], test.class_names, resamples=resamples)
        for part, m in masks.items()
    }
    return out


def run_probs(workdir: str | pathlib.Path, *, tta: bool = False, rule: str = "argmax") -> dict[str, np.ndarray]:
    """{'probs', 'labels', 'predicted', 'image_id', 'lesion_id'} of a run's test split, for paired comparisons."""
    workdir = pathlib.Path(workdir)
    temperature = side_files.temperature(workdir / "best") or 1.0
    test = predictions.load(predictions.path(workdir, "test", tta))
    probs = calibration.probabilities(test.logits, temperature)
    predicted = probs.argmax(axis=1)
    if rule != "argmax":
        fitted = fitted_rules(workdir, tta, temperature)[rule]
        predicted = fitted.predict(test.logits, temperature)
    return {
        "probs": probs,
        "labels": test.labels,
        "predicted": predicted,
        "image_id": test.image_id,
        "lesion_id": test.lesion_id,
    }


def _aligned(dirs: Sequence[pathlib.Path], rule: str, tta: bool) -> list[dict[str, np.ndarray]]:
    runs = [run_probs(d, tta=tta, rule=rule) for d in dirs]
    for run in runs[1:]:
        order = intervals.align(runs[0]["image_id"], run["image_id"])
        for key in ("probs", "labels", "predicted", "image_id", "lesion_id"):
            run[key] = run[key][order]
    return runs


def cell_figures(
    dirs: Sequence[pathlib.Path],
    *,
    rule: str = "argmax",
    tta: bool = False,
    resamples: int = intervals.DEFAULT_RESAMPLES,
) -> dict[str, dict[str, Any]]:
    """Mean over a cell's runs (seeds, same test split) of accuracy / BACC / macro AUC under ``rule``
    (argmax | balanced | offsets), with or without TTA, each with its lesion-bootstrap interval."""
    runs = _aligned(dirs, rule, tta)
    return intervals.mean_over_runs(runs, runs[0]["lesion_id"], num_resamples=resamples)


def compare(
    a_dirs: Sequence[pathlib.Path],
    b_dirs: Sequence[pathlib.Path],
    *,
    a_rule: str = "argmax",
    b_rule: str = "argmax",
    a_tta: bool = False,
    b_tta: bool = False,
    resamples: int = intervals.DEFAULT_RESAMPLES,
) -> dict[str, Any]:
    """Mean over a's runs minus mean over b's runs of accuracy / BACC / macro AUC on the same test images,
    with the lesion-bootstrap interval of the difference (``intervals.paired``)."""
    a, b = _aligned(a_dirs, a_rule, a_tta), _aligned(b_dirs, b_rule, b_tta)
    order = intervals.align(a[0]["image_id"], b[0]["image_id"])
    for run in b:
        for key in ("probs", "labels", "predicted", "image_id", "lesion_id"):
            run[key] = run[key][order]
    return intervals.paired(a, b, a[0]["lesion_id"], num_resamples=resamples)
