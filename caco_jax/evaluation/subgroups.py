"""Figures by subgroup: acquisition source, diagnosis confirmation, age band, sex and body site.

Each dimension splits the evaluated images by one metadata field (``Source.meta``, saved with the
predictions). Per subgroup: images, lesions, the classes present, accuracy, BACC over the classes
present and melanoma sensitivity (where it has ``MIN_MELANOMAS``), each with its lesion-bootstrap interval,
and whether the interval lies wholly below the overall figure. Groups too small to say anything
(fewer than ``MIN_IMAGES`` images, or fewer than ``MIN_CLASSES`` classes for BACC) are listed, not
scored. The bands and thresholds are fixed here, before any result is looked at.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from caco_jax.evaluation import intervals

MIN_IMAGES = 20  # below this a subgroup is listed, not scored
MIN_CLASSES = 2  # BACC needs at least this many classes present
# Melanoma sensitivity needs this many melanomas (added after a first real-data report marked a group
# whose 3 melanomas were all missed: a bootstrap of 0 of 3 collapses to [0, 0] and says nothing).
MIN_MELANOMAS = 5
TOP_SITES = 6  # body sites shown on their own (the most frequent in the split); the rest pooled
CONFIRMED = "histo"  # dx_type of a biopsy-confirmed diagnosis (histopathology)
AGE_BANDS = ("< 40", "40-59", "60+", "unknown")
UNKNOWN = "unknown"


def _text(values: np.ndarray) -> np.ndarray:
    out = np.asarray(values, str)
    return np.where(out == "", UNKNOWN, out)


def age_band(ages: np.ndarray) -> np.ndarray:
    """'< 40', '40-59', '60+' or 'unknown' (NaN) for each age in years."""
    ages = np.asarray(ages, np.float64)
    bands = np.full(len(ages), UNKNOWN, dtype=object)
    known = np.isfinite(ages)
    bands[known & (ages < 40)] = AGE_BANDS[0]
    bands[known & (ages >= 40) & (ages < 60)] = AGE_BANDS[1]
    bands[known & (ages >= 60)] = AGE_BANDS[2]
    return bands.astype(str)


def body_site(sites: np.ndarray) -> np.ndarray:
    """The ``TOP_SITES`` most frequent sites of these images by name, every other as 'other sites'."""
    named = _text(sites)
    values, counts = np.unique(named[named != UNKNOWN], return_counts=True)
    top = {str(v) for v in values[np.lexsort((values, -counts))][:TOP_SITES]}
    return np.where(np.isin(named, list(top)) | (named == UNKNOWN), named, "other sites")


# dimension -> (metadata field, grouping of its values, fixed order of the groups or None: by size)
DIMENSIONS: dict[str, tuple[str, Callable[[np.ndarray], np.ndarray], tuple[str, ...] | None]] = {
    "acquisition source": ("source", _text, None),
    "diagnosis confirmation": ("dx_type", _text, None),
    "age": ("age", age_band, AGE_BANDS),
    "sex": ("sex", _text, None),
    "body site": ("localization", body_site, None),
}


def _figures(
    probs: np.ndarray,
    labels: np.ndarray,
    predicted: np.ndarray,
    groups: np.ndarray,
    class_names: Sequence[str],
    resamples: int,
) -> dict[str, Any]:
    """Point figures and lesion-bootstrap intervals of one set of images."""
    present = sorted({int(k) for k in labels})
    weights = intervals.lesion_weights(groups, resamples)
    samples = intervals.metric_samples(probs, labels, weights, predicted)
    recall = {k: float(np.mean(predicted[labels == k] == k)) for k in present}
    mel = list(class_names).index("mel") if "mel" in class_names else None
    out: dict[str, Any] = {
        "images": int(len(labels)),
        "lesions": int(len(np.unique(np.asarray(groups, str)))),
        "classes": [class_names[k] for k in present],
        "accuracy": float(np.mean(predicted == labels)),
        "accuracy_ci": intervals.interval(samples["accuracy"]),
        "bacc": float(np.mean(list(recall.values()))) if len(present) >= MIN_CLASSES else None,
        "bacc_ci": intervals.interval(samples["bacc"]) if len(present) >= MIN_CLASSES else None,
        "melanomas": int(np.sum(labels == mel)) if mel is not None else 0,
    }
    scored = mel is not None and mel in recall and out["melanomas"] >= MIN_MELANOMAS
    out["mel_sensitivity"] = recall[mel] if (scored and mel is not None) else None
    out["mel_sensitivity_ci"] = intervals.interval(samples["recall"][:, mel]) if (scored and mel is not None) else None
    return out


def _below(figures: Mapping[str, Any], overall: Mapping[str, Any]) -> list[str]:
    """The metrics whose interval lies wholly below the overall point figure."""
    out = []
    for key in ("accuracy", "bacc", "mel_sensitivity"):
        ci, ref = figures.get(f"{key}_ci"), overall.get(key)
        if ci is not None and ref is not None and ci[1] < ref:
            out.append(key)
    return out


def breakdown(
    probs: np.ndarray,
    labels: np.ndarray,
    predicted: np.ndarray,
    groups: Sequence[str] | np.ndarray,
    meta: Mapping[str, np.ndarray],
    class_names: Sequence[str],
    *,
    rule: str = "argmax",
    resamples: int = 1000,
    dimensions: Sequence[str] | None = None,
) -> dict[str, Any] | None:
    """Every dimension's subgroups (``dimensions``: the dataset's declared ones, default all of
    ``DIMENSIONS``) and the biopsy-confirmed images of one evaluation; None when the images carry no
    metadata. ``predicted``: the classes the decision ``rule`` gave."""
    probs, labels, predicted = np.asarray(probs), np.asarray(labels, np.int64), np.asarray(predicted, np.int64)
    groups = np.asarray(groups, str)
    usable = {k: v for k, v in meta.items() if len(v) == len(labels)}
    if not usable or not len(labels):
        return None
    overall = _figures(probs, labels, predicted, groups, class_names, resamples)
    dims: dict[str, list[dict[str, Any]]] = {}
    for dim, (field, grouping, order) in DIMENSIONS.items():
        if field not in usable or (dimensions is not None and dim not in dimensions):
            continue
        names = grouping(usable[field])
        if field != "age" and np.all(names == UNKNOWN):
            continue  # nothing known along this dimension (e.g. an older build has no sources)
        found = [str(n) for n in np.unique(names)]
        ordered = [n for n in order if n in found] if order else sorted(found, key=lambda n: (-np.sum(names == n), n))
        rows = []
        for name in ordered:
            mask = names == name
            row: dict[str, Any] = {"group": name, "images": int(mask.sum())}
            present = len(np.unique(labels[mask]))
            if mask.sum() < MIN_IMAGES:
                row["scored"] = False
                row["why"] = f"fewer than {MIN_IMAGES} images"
            else:
                row |= _figures(probs[mask], labels[mask], predicted[mask], groups[mask], class_names, resamples)
                row["scored"] = True
                row["below_overall"] = _below(row, overall)
                if present < MIN_CLASSES:
                    row["why"] = f"one class only ({row['classes'][0]}): accuracy is its recall, no BACC"
            rows.append(row)
        dims[dim] = rows
    out: dict[str, Any] = {
        "rule": rule,
        "overall": overall,
        "dimensions": dims,
        "method": {"resamples": resamples, "unit": "lesion", "min_images": MIN_IMAGES, "min_classes": MIN_CLASSES},
    }
    if "dx_type" in usable:
        confirmed = np.asarray(usable["dx_type"], str) == CONFIRMED
        if confirmed.sum() >= MIN_IMAGES:
            out["biopsy_confirmed"] = _figures(
                probs[confirmed], labels[confirmed], predicted[confirmed], groups[confirmed], class_names, resamples
            )
    return out


def _pct(x: float | None, ci: Sequence[float] | None = None) -> str:
    if x is None:
        return "-"
    return f"{100 * x:.1f}" + (f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else "")


def markdown(sub: Mapping[str, Any], figure_name: str | None = None) -> list[str]:
    """The report section: one table per dimension, groups too small listed after it."""
    method = sub["method"]
    lines = [
        "",
        "## Where the model does worse: figures by subgroup",
        "",
        f"Decision rule: {sub['rule']}. Each figure with its 95 % lesion-bootstrap interval "
        f"({method['resamples']} resamples of the subgroup's lesions). BACC is the mean recall over the classes "
        "the subgroup has (their number in the `classes` column). **Bold** with a v: the interval lies wholly "
        f"below the overall figure. Groups under {method['min_images']} images are listed, not scored; melanoma "
        f"sensitivity needs {MIN_MELANOMAS} melanomas.",
        "",
    ]
    overall = sub["overall"]
    lines.append(
        f"Overall: accuracy {_pct(overall['accuracy'], overall['accuracy_ci'])} %, BACC "
        f"{_pct(overall['bacc'], overall['bacc_ci'])} %, melanoma sensitivity "
        f"{_pct(overall['mel_sensitivity'], overall['mel_sensitivity_ci'])} % ({overall['images']} images)."
    )
    confirmed = sub.get("biopsy_confirmed")
    if confirmed:
        lines.append(
            f"Biopsy-confirmed (histopathology) images only: accuracy "
            f"{_pct(confirmed['accuracy'], confirmed['accuracy_ci'])} %, BACC "
            f"{_pct(confirmed['bacc'], confirmed['bacc_ci'])} % ({confirmed['images']} images)."
        )
    if figure_name:
        lines += ["", f"![BACC by subgroup]({figure_name})"]
    for dim, rows in sub["dimensions"].items():
        scored = [r for r in rows if r["scored"]]
        small = [r for r in rows if not r["scored"]]
        lines += ["", f"### By {dim}", ""]
        if scored:
            lines += [
                "| group | images | lesions | classes | accuracy % | BACC % | melanoma sensitivity % (melanomas) |",
                "|---|---:|---:|---:|---:|---:|---:|",
            ]
        for r in scored:
            below = set(r["below_overall"])

            def cell(key: str, r: Mapping[str, Any] = r, below: set[str] = below) -> str:
                text = _pct(r[key], r[f"{key}_ci"])
                return f"**v {text}**" if key in below else text

            shown = r["mel_sensitivity"] is not None
            mel = f"{cell('mel_sensitivity') if shown else '-'} ({r['melanomas']})"
            lines.append(
                f"| {r['group']} | {r['images']} | {r['lesions']} | {len(r['classes'])} | {cell('accuracy')} | "
                f"{cell('bacc')} | {mel} |"
            )
        if small:
            listed = "; ".join(f"{r['group']} ({r['images']} images)" for r in small)
            lines += ["", f"Not scored: {listed}."] if scored else [f"Not scored: {listed}."]
    return lines
