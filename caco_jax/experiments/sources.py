"""The leave-one-source-out section of a reproduction page (preset ``sources_cpu``): does the model
transfer to an acquisition source it never saw?

For each held-out source S, the same recipe trained on every source (the ordinary lesion split) and
trained without S are compared on the *same images*: S's images in the ordinary split's test set. Same
images, same classes: what differs is whether S's images (its cameras, its population, its class mix)
were in training. Per class recall shows where the difference comes from; the held-out model on all of
S adds the whole source's figures. Every run answers under the balanced rule with TTA where the run
saved TTA predictions (the rule fitted on its TTA validation predictions, as the recipe tables do).
Intervals resample lesions (paired on the same images).
"""

from __future__ import annotations

import pathlib
from typing import Any

import numpy as np

from caco_jax.evaluation import intervals, predictions, run_figures, subgroups
from caco_jax.experiments.grid import finished_runs
from caco_jax.experiments.presets import Cell, Preset

REFERENCE = "lesion_recipe"


def _answers(workdir: pathlib.Path) -> dict[str, np.ndarray]:
    tta = predictions.path(workdir, "test", tta=True).is_file()
    out = run_figures.run_probs(workdir, tta=tta, rule="balanced")
    out["source"] = predictions.load(predictions.path(workdir, "test")).meta.get("source", np.zeros(0))
    out["tta"] = np.asarray(tta)
    return out


def _figures(run: dict[str, np.ndarray], rows: np.ndarray, class_names: list[str]) -> dict[str, Any]:
    labels, predicted = run["labels"][rows], run["predicted"][rows]
    present = sorted({int(k) for k in labels})
    recall = {class_names[k]: float(np.mean(predicted[labels == k] == k)) for k in present}
    ci = intervals.bootstrap(
        run["probs"][rows], labels, run["lesion_id"][rows], class_names, predicted=predicted, num_resamples=1000
    )
    return {
        "images": int(len(labels)),
        "classes": [class_names[k] for k in present],
        "support": {class_names[k]: int(np.sum(labels == k)) for k in present},
        "accuracy": float(np.mean(predicted == labels)),
        "bacc": float(np.mean(list(recall.values()))),
        "recall": recall,
        "ci": {k: ci[k] for k in ("accuracy", "bacc")} | {"recall": {c: ci["recall"][c] for c in recall}},
    }


def held_out(cell: Cell) -> str:
    return str(cell.overrides.get("data.holdout_source", ""))


def compare_source(ref_dir: pathlib.Path, loso_dir: pathlib.Path, source: str) -> dict[str, Any]:
    """One seed: the reference and the held-out model on S's images of the reference test split, paired;
    and the held-out model on all of S."""
    ref, loso = _answers(ref_dir), _answers(loso_dir)
    class_names = list(predictions.load(predictions.path(ref_dir, "test")).class_names)
    if not len(ref["source"]):
        raise ValueError(f"{ref_dir} saved no acquisition sources with its predictions (an older build?)")
    mine = np.flatnonzero(ref["source"] == source)
    position = {str(i): k for k, i in enumerate(loso["image_id"])}
    missing = [str(ref["image_id"][k]) for k in mine if str(ref["image_id"][k]) not in position]
    if missing:
        raise ValueError(f"{len(missing)} of {source}'s test images are not in {loso_dir}'s test split")
    theirs = np.asarray([position[str(ref["image_id"][k])] for k in mine])
    same = {k: ref[k][mine] for k in ("probs", "labels", "predicted", "lesion_id")}
    other = {k: loso[k][theirs] for k in ("probs", "labels", "predicted", "lesion_id")}
    paired = intervals.paired(other, same, same["lesion_id"], num_resamples=2000)
    return {
        "source": source,
        "tta": bool(ref["tta"]) and bool(loso["tta"]),
        "same_images": {
            "trained_on_every_source": _figures(ref, mine, class_names),
            "trained_without_it": _figures(loso, theirs, class_names),
            "difference": {k: paired[k] for k in ("accuracy", "bacc")},
        },
        "whole_source": _figures(loso, np.arange(len(loso["labels"])), class_names),
    }


def _recorded(previous: dict[str, Any] | None) -> dict[str, Any]:
    return (previous or {}).get("sources") or {}


def source_rows(preset: Preset, out: pathlib.Path, previous: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every held-out cell's comparison, seed by seed (the seeds both cells finished in ``out``; for the
    others, what ``previous``, the last results JSON, recorded: runs trained elsewhere keep their rows)."""
    cells = {c.name: c for c in preset.cells}
    if REFERENCE not in cells:
        return []
    reference = finished_runs(preset, cells[REFERENCE], out)
    recorded = {(r["cell"], r["seed"]): r for r in _recorded(previous).get("comparisons", [])}
    rows = []
    for cell in preset.cells:
        source = held_out(cell)
        if not source:
            continue
        loso = finished_runs(preset, cell, out)
        here = set(reference) & set(loso)
        for seed in sorted(here | {s for c, s in recorded if c == cell.name}):
            if seed in here:
                rows.append({"cell": cell.name, "seed": seed, **compare_source(reference[seed], loso[seed], source)})
            else:
                rows.append(recorded[cell.name, seed])
    return rows


def reference_subgroups(
    preset: Preset, out: pathlib.Path, previous: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    """Figures by subgroup of the reference cell's first seed (as shipped: balanced rule, TTA): computed
    when that seed's run is in ``out``, else as ``previous`` recorded it."""
    cells = {c.name: c for c in preset.cells}
    finished = finished_runs(preset, cells[REFERENCE], out) if REFERENCE in cells else {}
    kept = _recorded(previous).get("subgroups")
    if kept is not None and (not finished or kept["seed"] < min(finished)):
        return kept
    if not finished:
        return None
    seed = min(finished)
    workdir = finished[seed]
    run = _answers(workdir)
    test = predictions.load(predictions.path(workdir, "test"))
    sub = subgroups.breakdown(
        run["probs"], run["labels"], run["predicted"], run["lesion_id"], test.meta, test.class_names, rule="balanced"
    )
    return None if sub is None else {"cell": REFERENCE, "seed": seed, **sub}


def _pct(x: float | None, ci: Any = None) -> str:
    if x is None:
        return "-"
    return f"{100 * x:.1f}" + (f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else "")


def _diff(d: dict[str, Any]) -> str:
    iv = d["interval"]
    return f"{100 * d['difference']:+.1f}" + (f" [{100 * iv[0]:+.1f}, {100 * iv[1]:+.1f}]" if iv else "")


FIGURE = "results_sources_cpu_subgroups.png"  # the reference run's BACC by subgroup, beside the page


def markdown(rows: list[dict[str, Any]], sub: dict[str, Any] | None) -> list[str]:
    """The page's section: the paired same-image comparison, per-class recall, the whole source."""
    lines = [
        "",
        "## Leaving one acquisition source out",
        "",
        "Each held-out source's images of the ordinary lesion split's test set, answered by the recipe trained on "
        "every source and by the recipe trained without that source (same images, same classes): accuracy and "
        "BACC (mean recall over the classes the images have) with 95 % lesion-bootstrap intervals, and the paired "
        "difference *without - with* (test sampling only; one seed per row). Then the held-out model on every "
        "image of the source.",
        "",
        "| held out | seed | images (classes) | trained on every source: acc / BACC % | trained without it: "
        "acc / BACC % | difference: accuracy | difference: BACC | all of the source: images, acc / BACC % |",
        "|---|---|---:|---|---|---:|---:|---|",
    ]
    for r in rows:
        same, whole = r["same_images"], r["whole_source"]
        ref, loso = same["trained_on_every_source"], same["trained_without_it"]
        lines.append(
            f"| {r['source']} | {r['seed']} | {ref['images']} ({len(ref['classes'])}) | "
            f"{_pct(ref['accuracy'], ref['ci']['accuracy'])} / {_pct(ref['bacc'], ref['ci']['bacc'])} | "
            f"{_pct(loso['accuracy'], loso['ci']['accuracy'])} / {_pct(loso['bacc'], loso['ci']['bacc'])} | "
            f"{_diff(same['difference']['accuracy'])} | {_diff(same['difference']['bacc'])} | "
            f"{whole['images']}, {_pct(whole['accuracy'], whole['ci']['accuracy'])} / "
            f"{_pct(whole['bacc'], whole['ci']['bacc'])} |"
        )
    if rows:
        classes = sorted({c for r in rows for c in r["same_images"]["trained_on_every_source"]["classes"]})
        lines += [
            "",
            "Recall per class on the same images (%, trained on every source -> trained without the source; "
            "in brackets the images of the class):",
            "",
            "| held out | seed | " + " | ".join(classes) + " |",
            "|---|---|" + "---|" * len(classes),
        ]
        for r in rows:
            ref = r["same_images"]["trained_on_every_source"]
            loso = r["same_images"]["trained_without_it"]
            cells = []
            for c in classes:
                if c not in ref["recall"]:
                    cells.append("-")
                    continue
                cells.append(f"{_pct(ref['recall'][c])} -> {_pct(loso['recall'][c])} ({ref['support'][c]})")
            lines.append(f"| {r['source']} | {r['seed']} | " + " | ".join(cells) + " |")
    if sub is not None:
        lines += [
            "",
            f"## Figures by subgroup: {sub['cell']}, seed {sub['seed']} (TTA, balanced rule fitted on the TTA "
            "validation predictions, as in the recipe tables; the run's own report applies its saved rule)",
        ]
        lines += subgroups.markdown(sub, FIGURE)[3:]  # without the section's own heading
    return lines
