"""Choose the decision fit without the test split: for each finished run of a grid, fit each rule
on half of the validation split's lesions and score BACC on the other half (5 random halvings,
both ways round), then average over runs.

    python tools/decision_fit_cv.py /work/runs/grid/recipe_cpu

Used for docs/results_recipe_cpu_discussion.md (logit adjustment against free per-class offsets).
"""

from __future__ import annotations

import argparse
import json
import pathlib

import numpy as np

from caco_jax.evaluation import calibration, decision, predictions


def halves_scores(run: pathlib.Path, repeats: int = 5) -> dict[str, list[float]]:
    """BACC on held-out validation halves under argmax and each fitted rule."""
    val = predictions.load(predictions.path(run, "validation"))
    temperature = calibration.load(run / "best") or 1.0
    prior = json.loads((run / "best" / "caco_jax_weights.json").read_text())["train_class_counts"]
    num_classes = len(val.class_names)
    lesions = np.unique(val.lesion_id)
    out: dict[str, list[float]] = {"argmax": [], **{how: [] for how in decision.FITS}}
    for r in range(repeats):
        half = set(np.random.default_rng(r).permutation(lesions)[: len(lesions) // 2])
        in_half = np.asarray([lesion in half for lesion in val.lesion_id])
        for fit_rows, score_rows in ((in_half, ~in_half), (~in_half, in_half)):
            labels = val.labels[score_rows]
            probs = calibration.probabilities(val.logits[score_rows], temperature)
            out["argmax"].append(decision.balanced_accuracy(probs.argmax(-1), labels, num_classes))
            for how in decision.FITS:
                rule = decision.fit(val.logits[fit_rows], val.labels[fit_rows], prior, temperature=temperature, how=how)
                predicted = rule.predict(val.logits[score_rows], temperature)
                out[how].append(decision.balanced_accuracy(predicted, labels, num_classes))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("grid", type=pathlib.Path, help="a preset's folder of runs (each with report.json)")
    args = parser.parse_args()
    runs = sorted(p.parent for p in args.grid.glob("*/report.json"))
    if not runs:
        raise SystemExit(f"error: no finished run (report.json) under {args.grid}")
    scores: dict[str, list[float]] = {}
    for run in runs:
        for key, values in halves_scores(run).items():
            scores.setdefault(key, []).extend(values)
    for key, values in scores.items():
        v = np.asarray(values)
        print(f"{key}: held-out validation BACC {100 * v.mean():.1f} % +- {100 * v.std() / np.sqrt(len(v)):.1f}")
    diff = np.asarray(scores["logit_adjustment"]) - np.asarray(scores["offsets"])
    print(
        f"logit_adjustment - offsets: {100 * diff.mean():+.2f} points, ahead in {100 * (diff > 0).mean():.0f} % of "
        f"{len(diff)} halves ({len(runs)} runs)"
    )


if __name__ == "__main__":
    main()
