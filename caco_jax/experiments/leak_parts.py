"""Leaked against clean test images, like with like: the leakage section's comparison on the classes
both parts have.

The clean and leaked parts of a leaky test split differ in their class mix (the augment protocol's
clean part has no akiec, df or vasc: its copies all leak), so their plain BACC and accuracy compare
different things. Here each part is scored on the classes present in both: BACC over those classes,
and accuracy reweighted to the clean part's class mix (sum over the common classes of its share of the
clean part times the part's recall). Per run, the difference leaked - clean has an interval from the
per-class lesion-bootstrap intervals each run records (the parts hold different lesions, and each
class different images, so their errors add in quadrature); over seeds, ``seeds.cell`` gives the
interval that covers both. What it cannot reweight: the case mix inside a class (follow-up against
biopsy-confirmed nevi), which also differs between the parts.
"""

from __future__ import annotations

import math
from typing import Any

from caco_jax.experiments import seeds


def _counts(run: dict[str, Any], part: str) -> dict[str, float]:
    """Test images of each class in a part (from the run's leak summary)."""
    per_class = (run.get("leakage") or {}).get("per_class") or {}
    share = {"clean": lambda s: 1.0 - s["same_lesion"], "same_lesion": lambda s: s["same_lesion"]}[part]
    return {c: s["num_test"] * share(s) for c, s in per_class.items()}


def _part(
    run: dict[str, Any], part: str, common: list[str], weights: dict[str, float]
) -> tuple[float, float, float, float]:
    """(BACC over ``common``, accuracy at the clean mix, the standard errors of both)."""
    figure = run["figures"]["parts"][part]
    recall = figure["recall"]
    ci = (figure.get("ci") or {}).get("recall") or {}
    bacc = sum(recall[c] for c in common) / len(common)
    accuracy = sum(weights[c] * recall[c] for c in common)
    found = [seeds.standard_error(ci.get(c)) for c in common]
    ses = [s for s in found if s is not None]
    if len(ses) < len(found):
        return bacc, accuracy, math.nan, math.nan
    se = math.sqrt(sum(s * s for s in ses)) / len(common)
    se_accuracy = math.sqrt(sum((weights[c] * s) ** 2 for c, s in zip(common, ses, strict=True)))
    return bacc, accuracy, se, se_accuracy


def run_difference(run: dict[str, Any]) -> dict[str, Any] | None:
    """One run's leaked - clean on the classes both parts have; None without both parts."""
    parts = (run.get("figures") or {}).get("parts") or {}
    if not parts.get("clean", {}).get("num_examples") or not parts.get("same_lesion", {}).get("num_examples"):
        return None
    present = {p: {c for c, r in parts[p]["recall"].items() if r is not None} for p in ("clean", "same_lesion")}
    common = sorted(present["clean"] & present["same_lesion"])
    clean_counts = _counts(run, "clean")
    total = sum(clean_counts.get(c, 0.0) for c in common)
    weights = {c: clean_counts.get(c, 0.0) / total for c in common} if total else {c: 1 / len(common) for c in common}
    clean, leaked = _part(run, "clean", common, weights), _part(run, "same_lesion", common, weights)
    d, d_accuracy = leaked[0] - clean[0], leaked[1] - clean[1]
    se, se_accuracy = math.hypot(leaked[2], clean[2]), math.hypot(leaked[3], clean[3])
    return {
        "classes": common,
        "bacc": {"clean": clean[0], "leaked": leaked[0], "difference": d},
        "accuracy_at_clean_mix": {"clean": clean[1], "leaked": leaked[1], "difference": d_accuracy},
        "difference_interval": None if math.isnan(se) else [d - seeds.Z * se, d + seeds.Z * se],
        "accuracy_interval": (
            None
            if math.isnan(se_accuracy)
            else [d_accuracy - seeds.Z * se_accuracy, d_accuracy + seeds.Z * se_accuracy]
        ),
    }


def cell(row: dict[str, Any]) -> dict[str, Any] | None:
    """The cell's per-run differences and their mean with the seeds-and-test interval."""
    runs = {s: run_difference(r) for s, r in sorted(row.get("runs", {}).items(), key=lambda kv: int(kv[0]))}
    found = {s: d for s, d in runs.items() if d is not None}
    if not found:
        return None
    diffs = [d["bacc"]["difference"] for d in found.values()]
    accuracy = [d["accuracy_at_clean_mix"]["difference"] for d in found.values()]
    return {
        "runs": found,
        "mean": seeds.cell(diffs, [d["difference_interval"] for d in found.values()], bounds=(-1.0, 1.0)),
        "accuracy_mean": seeds.cell(accuracy, [d.get("accuracy_interval") for d in found.values()], bounds=(-1.0, 1.0)),
        "classes": sorted(set.intersection(*(set(d["classes"]) for d in found.values()))),
    }


def markdown(rows: list[dict[str, Any]]) -> list[str]:
    """The like-with-like table of the leakage section."""
    lines = [
        "",
        "## Leaked against clean, like with like",
        "",
        "Each part scored on the classes both parts have: BACC over those classes, and accuracy reweighted to "
        "the clean part's class mix. Per run, the difference leaked - clean in points with a 95 % interval from "
        "the runs' per-class lesion-bootstrap intervals; the mean over seeds with its interval over seeds and "
        "test sampling (Satterthwaite t, caco_jax/experiments/seeds.py). The case mix inside a class (follow-up "
        "against biopsy-confirmed nevi) still differs between the parts.",
        "",
        "| cell | classes | per seed: BACC clean -> leaked (difference [95 %]) | accuracy at the clean mix: clean -> "
        "leaked | mean difference, BACC [seeds + test] | mean difference, accuracy at the clean mix [seeds + test] |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        found = cell(r)
        if found is None:
            continue
        per_seed, per_seed_acc = [], []
        for s, d in found["runs"].items():
            b, a, iv = d["bacc"], d["accuracy_at_clean_mix"], d["difference_interval"]
            ci = f" [{100 * iv[0]:+.1f}, {100 * iv[1]:+.1f}]" if iv else ""
            per_seed.append(
                f"s{s}: {100 * b['clean']:.1f} -> {100 * b['leaked']:.1f} ({100 * b['difference']:+.1f}{ci})"
            )
            per_seed_acc.append(f"s{s}: {100 * a['clean']:.1f} -> {100 * a['leaked']:.1f}")
        classes = ", ".join(found["classes"])
        means = " | ".join(mean_text(found[k]) for k in ("mean", "accuracy_mean"))
        lines.append(f"| {r['cell']} | {classes} | {'; '.join(per_seed)} | {'; '.join(per_seed_acc)} | {means} |")
    return lines


def mean_text(m: dict[str, Any]) -> str:
    """'+9.9 [-5.5, +25.3]' in points, or the mean and why it has no interval."""
    if m.get("interval"):
        lo, hi = m["interval"]
        return f"{100 * m['mean']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"
    return f"{100 * m['mean']:+.1f} ({m.get('why', '-')})"
