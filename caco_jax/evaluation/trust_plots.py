"""Headless figures of when to trust the model: BACC by subgroup with intervals, and the
risk-coverage curve of selective prediction (PNG, drawn as in :mod:`caco_jax.evaluation.plots`)."""

from __future__ import annotations

import pathlib
from collections.abc import Mapping
from typing import Any

from matplotlib.figure import Figure

from caco_jax.evaluation.plots import DPI, _save


def plot_subgroups(sub: Mapping[str, Any], path: str | pathlib.Path, *, dpi: int = DPI) -> pathlib.Path:
    """One row per scored subgroup: BACC (accuracy where a group has one class) with its 95 % interval,
    the overall BACC as a vertical line; subgroups whose interval lies below it in red."""
    rows: list[tuple[str, float, tuple[float, float] | None, bool]] = []
    for dim, groups in sub["dimensions"].items():
        for g in groups:
            if not g["scored"]:
                continue
            key = "bacc" if g.get("bacc") is not None else "accuracy"
            label = f"{dim}: {g['group']} ({g['images']})" + ("" if key == "bacc" else " [accuracy]")
            rows.append((label, g[key], g[f"{key}_ci"], key in g["below_overall"]))
    fig = Figure(figsize=(9.0, 0.32 * len(rows) + 1.4))
    ax = fig.add_subplot(1, 1, 1)
    for i, (_, value, ci, below) in enumerate(rows):
        color = "tab:red" if below else "tab:blue"
        if ci is not None:
            ax.plot([100 * ci[0], 100 * ci[1]], [i, i], color=color, linewidth=2)
        ax.plot([100 * value], [i], "o", color=color)
    overall = sub["overall"].get("bacc")
    if overall is not None:
        ax.axvline(100 * overall, color="black", linestyle="--", linewidth=1, label=f"overall BACC {100 * overall:.1f}")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_yticks(range(len(rows)), labels=[r[0] for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("BACC % (mean recall over the classes present), 95 % lesion-bootstrap interval")
    ax.grid(axis="x", alpha=0.3)
    fig.subplots_adjust(left=0.38, right=0.97, top=0.97, bottom=max(0.08, 0.6 / (0.32 * len(rows) + 1.4)))
    return _save(fig, path, dpi)


def plot_risk_coverage(curve: Mapping[str, Any], path: str | pathlib.Path, *, dpi: int = DPI) -> pathlib.Path:
    """Accuracy and BACC of the answered images against the share answered (coverage), as the least
    confident images are withheld."""
    fig = Figure(figsize=(6.5, 4.2))
    ax = fig.add_subplot(1, 1, 1)
    coverage = [100 * c for c in curve["coverage"]]
    ax.plot(coverage, [100 * a for a in curve["accuracy"]], label="accuracy of the answered images")
    bacc = [None if b is None else 100 * b for b in curve["bacc"]]
    ax.plot(coverage, [float("nan") if b is None else b for b in bacc], label="BACC of the answered images")
    for target in curve.get("targets", []):
        if target["coverage"] is not None:
            ax.axvline(100 * target["coverage"], color="grey", linestyle=":", linewidth=1)
            ax.annotate(
                f"{100 * target['accuracy']:.0f} % accurate\nat {100 * target['coverage']:.0f} % answered",
                (100 * target["coverage"], 100 * target["accuracy"]),
                fontsize=7,
                ha="right",
            )
    ax.set_xlim(0, 100)
    ax.set_xlabel("coverage: share of images answered (most confident first) %")
    ax.set_ylabel("%")
    ax.set_title(f"Risk-coverage ({curve['split']} split, {curve['confidence']})", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    fig.subplots_adjust(left=0.1, right=0.97, top=0.9, bottom=0.13)
    return _save(fig, path, dpi)
