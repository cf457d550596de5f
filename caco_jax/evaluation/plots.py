"""Headless matplotlib figures for training reports (PNG).

Figures are drawn on ``matplotlib.figure.Figure`` with the Agg canvas directly, so
nothing touches pyplot's global state or needs a display. The pixel size of every
file is ``figsize * dpi`` exactly (no tight bounding box), e.g. 1200 x 520 for the
confusion matrix and 1200 x 450 for the curves with the defaults.
"""

from __future__ import annotations

import math
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

CONFUSION_FIGSIZE: tuple[float, float] = (12.0, 5.2)
CURVES_FIGSIZE: tuple[float, float] = (12.0, 4.5)
DPI: int = 100


def _save(fig: Figure, path: str | pathlib.Path, dpi: int) -> pathlib.Path:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, format="png", dpi=dpi)
    return path


def _matrix_panel(ax: Any, values: np.ndarray, class_names: Sequence[str], title: str, fmt: str, vmax: float) -> None:
    shown = np.where(np.isnan(values), 0.0, values)
    im = ax.imshow(shown, cmap="Blues", vmin=0.0, vmax=vmax if vmax > 0 else 1.0)
    n = len(class_names)
    ax.set_xticks(range(n), labels=list(class_names), rotation=45, ha="right")
    ax.set_yticks(range(n), labels=list(class_names))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    threshold = (vmax if vmax > 0 else 1.0) / 2.0
    for i in range(n):
        for j in range(n):
            text = "-" if np.isnan(values[i, j]) else format(values[i, j], fmt)
            ax.text(
                j, i, text, ha="center", va="center", fontsize=8, color="white" if shown[i, j] > threshold else "black"
            )
    ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04)


def plot_confusion_matrix(
    confusion: Any,
    class_names: Sequence[str],
    path: str | pathlib.Path,
    title: str = "Confusion matrix",
    *,
    figsize: tuple[float, float] = CONFUSION_FIGSIZE,
    dpi: int = DPI,
) -> pathlib.Path:
    """Two panels: counts and row-normalised (recall on the diagonal; rows of absent
    classes shown as "-"). Writes a PNG and returns its path."""
    cm = np.asarray(confusion, dtype=np.int64)
    n = len(class_names)
    if cm.shape != (n, n):
        raise ValueError(f"confusion must be [{n}, {n}] for {n} class names, got {cm.shape}")
    rows = cm.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        normalised = np.where(rows > 0, cm / np.maximum(rows, 1), np.nan)

    fig = Figure(figsize=figsize, dpi=dpi)
    ax_counts, ax_norm = fig.subplots(1, 2)
    _matrix_panel(ax_counts, cm.astype(np.float64), class_names, "counts", ".0f", float(cm.max(initial=0)))
    _matrix_panel(ax_norm, normalised, class_names, "row-normalised (recall)", ".2f", 1.0)
    fig.suptitle(title)
    fig.subplots_adjust(left=0.07, right=0.95, bottom=0.2, top=0.86, wspace=0.3)
    return _save(fig, path, dpi)


def _series(history: Sequence[Mapping[str, Any]], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for i, row in enumerate(history):
        value = row.get(key)
        if value is None:
            continue
        try:
            value = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(value):
            xs.append(float(row.get("epoch", i)))
            ys.append(value)
    return xs, ys


def _keys(history: Sequence[Mapping[str, Any]], suffixes: tuple[str, ...]) -> list[str]:
    seen: dict[str, None] = {}
    for row in history:
        for key in row:
            if key != "epoch" and key.endswith(suffixes):
                seen[key] = None
    order = {"train": 0, "val": 1, "test": 2}
    return sorted(seen, key=lambda k: (k.split("_", 1)[-1], order.get(k.split("_", 1)[0], 3), k))


_SPLIT_STYLES = {"train": "-", "val": "--", "test": ":"}


def _line_style(key: str) -> str:
    """Solid for train, dashed for validation, dotted for test (or anything else)."""
    return _SPLIT_STYLES.get(key.split("_", 1)[0], ":")


def plot_curves(
    history: Sequence[Mapping[str, Any]],
    path: str | pathlib.Path,
    title: str = "Training curves",
    *,
    figsize: tuple[float, float] = CURVES_FIGSIZE,
    dpi: int = DPI,
) -> pathlib.Path:
    """Loss (left) and accuracy / BACC (right) per epoch, train solid, validation
    dashed, test dotted, one colour per metric. ``history`` rows are per-epoch dicts (``epoch``, ``train_loss``,
    ``val_loss``, ``train_accuracy``, ``val_accuracy``, ``val_bacc``,
    ``val_paper_bacc``, ...): every key ending in ``loss`` goes left, every key
    ending in ``accuracy`` or ``bacc`` right; missing, None or non-finite values are
    skipped (the row index stands in for a missing ``epoch``)."""
    fig = Figure(figsize=figsize, dpi=dpi)
    ax_loss, ax_acc = fig.subplots(1, 2)
    panels = ((ax_loss, ("loss",), "loss"), (ax_acc, ("accuracy", "bacc"), "accuracy / BACC"))
    for ax, suffixes, ylabel in panels:
        drawn = 0
        colours: dict[str, str] = {}  # one colour per metric, shared by its splits
        for key in _keys(history, suffixes):
            xs, ys = _series(history, key)
            if xs:
                metric = key.split("_", 1)[-1] if key.split("_", 1)[0] in _SPLIT_STYLES else key
                colour = colours.setdefault(metric, f"C{len(colours)}")
                ax.plot(xs, ys, _line_style(key), color=colour, marker="o" if len(xs) < 2 else None, label=key)
                drawn += 1
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        if drawn:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    fig.suptitle(title)
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.12, top=0.88, wspace=0.25)
    return _save(fig, path, dpi)


RELIABILITY_FIGSIZE: tuple[float, float] = (10.0, 5.6)
GALLERY_CELL: float = 1.6  # inches per image


def plot_reliability(
    summary: Mapping[str, Any],
    path: str | pathlib.Path,
    title: str = "Reliability",
    *,
    figsize: tuple[float, float] = RELIABILITY_FIGSIZE,
    dpi: int = DPI,
) -> pathlib.Path:
    """Reliability diagrams from ``caco_jax.evaluation.calibration.summary``: per confidence bin, accuracy
    (bars) against mean confidence (the diagonal is perfect calibration), with the share of
    examples per bin below; one column without and, if fitted, one with the temperature."""
    panels = [(name, summary[name]) for name in ("uncalibrated", "calibrated") if summary.get(name)]
    fig = Figure(figsize=figsize, dpi=dpi)
    axes = fig.subplots(2, max(1, len(panels)), squeeze=False, gridspec_kw={"height_ratios": (3, 1)})
    for col, (name, data) in enumerate(panels):
        ax, ax_n = axes[0, col], axes[1, col]
        bins = data["bins"]
        width = bins[0]["hi"] - bins[0]["lo"]
        centres = [(b["lo"] + b["hi"]) / 2 for b in bins]
        acc = [b["accuracy"] or 0.0 for b in bins]
        conf = [b["confidence"] if b["confidence"] is not None else (b["lo"] + b["hi"]) / 2 for b in bins]
        filled = [b["count"] > 0 for b in bins]
        x = [c for c, f in zip(centres, filled, strict=True) if f]
        a = [v for v, f in zip(acc, filled, strict=True) if f]
        cf = [v for v, f in zip(conf, filled, strict=True) if f]
        ax.bar(x, a, width=width, color="C0", edgecolor="white", label="accuracy")
        ax.bar(
            x,
            [abs(u - v) for u, v in zip(cf, a, strict=True)],
            bottom=[min(u, v) for u, v in zip(cf, a, strict=True)],
            width=width,
            facecolor=(0.84, 0.15, 0.16, 0.25),
            edgecolor="C3",
            hatch="//",
            lw=0.8,
            label="gap to confidence",
        )
        ax.plot(x, cf, "_", color="k", ms=12, mew=2, label="mean confidence")
        ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_ylabel("accuracy")
        t = summary.get("temperature")
        label = "uncalibrated (T = 1)" if name == "uncalibrated" else f"temperature-scaled (T = {t:.3f})"
        ax.set_title(f"{label}\nECE {100 * data['ece']:.2f} %, NLL {data['nll']:.3f}", fontsize=10)
        ax.legend(fontsize=8, loc="upper left")
        ax.grid(True, alpha=0.3)
        total = max(1, sum(b["count"] for b in bins))
        ax_n.bar(centres, [b["count"] / total for b in bins], width=width, color="0.5", edgecolor="white")
        ax_n.set_xlim(0, 1)
        ax_n.set_xlabel("top-1 confidence")
        ax_n.set_ylabel("share")
    fig.suptitle(title)
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.1, top=0.86, wspace=0.25, hspace=0.3)
    return _save(fig, path, dpi)


def plot_gallery(
    cells: Sequence[Sequence[tuple[np.ndarray, str] | None]],
    row_names: Sequence[str],
    column_names: Sequence[str],
    path: str | pathlib.Path,
    title: str = "",
    *,
    cell: float = GALLERY_CELL,
    dpi: int = DPI,
) -> pathlib.Path:
    """A grid of images (uint8 [H, W, 3]) with a caption each; rows are labelled by ``row_names``,
    columns by ``column_names``; a None cell is drawn as "none"."""
    rows, cols = len(cells), len(column_names)
    aspect = 1.0
    for row in cells:
        for item in row:
            if item is not None:
                aspect = item[0].shape[1] / item[0].shape[0]
                break
    fig = Figure(figsize=(1.0 + cols * cell * aspect, 0.8 + rows * (cell + 0.3)), dpi=dpi)
    axes = fig.subplots(rows, cols, squeeze=False)
    for r, row in enumerate(cells):
        for c in range(cols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            item = row[c] if c < len(row) else None
            if item is None:
                ax.text(0.5, 0.5, "none", ha="center", va="center", color="0.5", transform=ax.transAxes)
                for spine in ax.spines.values():
                    spine.set_color("0.85")
            else:
                ax.imshow(item[0])
                ax.set_xlabel(item[1], fontsize=7)
            if r == 0:
                ax.set_title(column_names[c], fontsize=8)
            if c == 0:
                ax.set_ylabel(row_names[r], fontsize=10)
    if title:
        fig.suptitle(title)
    fig.subplots_adjust(
        left=0.5 / (1.0 + cols * cell * aspect),
        right=0.99,
        bottom=0.02,
        top=1 - 0.75 / fig.get_figheight(),
        wspace=0.05,
        hspace=0.35,
    )
    return _save(fig, path, dpi)


def plot_results(
    rows: Sequence[Mapping[str, Any]], path: str | pathlib.Path, *, title: str = "", dpi: int = DPI
) -> pathlib.Path:
    """Test BACC per grid cell (mean recall: a bar with +- std over seeds, every seed as a dot), our BACC
    in the paper's formula (a diamond) and the paper's BACC (a cross), one row per cell
    (``caco-jax reproduce``)."""
    rows = list(rows)
    legend_has = {"ours": False, "paper": False}
    fig = Figure(figsize=(9.0, 0.45 * max(len(rows), 3) + 1.2))
    ax = fig.add_subplot(1, 1, 1)
    for i, row in enumerate(rows):
        y = len(rows) - 1 - i
        mean, std = row["bacc"]
        seeds = [100 * r["bacc"] for r in row["runs"].values()]
        if mean is not None:
            ax.barh(y, 100 * mean, xerr=100 * std if std else None, color="#4c78a8", alpha=0.8, capsize=3)
            ax.plot(seeds, [y] * len(seeds), "o", color="black", markersize=3)
        ours_paper_formula = (row.get("paper_bacc") or (None, None))[0]
        if ours_paper_formula is not None:
            ax.plot(
                [100 * ours_paper_formula],
                [y],
                "D",
                mfc="none",
                color="#4c78a8",
                markersize=6,
                label=None if legend_has["ours"] else "ours, paper's formula",
            )
            legend_has["ours"] = True
        if row.get("paper"):
            ax.plot(
                [row["paper"][1]],
                [y],
                "x",
                color="#e45756",
                markersize=8,
                mew=2,
                label=None if legend_has["paper"] else "paper (its formula, its split)",
            )
            legend_has["paper"] = True
    ax.set_yticks(range(len(rows)), labels=[r["cell"] for r in reversed(rows)])
    ax.set_xlabel("test BACC %: bars mean per-class recall; diamonds and crosses mean (sens. + spec.) / 2")
    ax.set_xlim(0, 100)
    ax.grid(axis="x", alpha=0.3)
    if any(legend_has.values()):
        ax.legend(loc="lower left", fontsize=8)
    ax.set_title(title)
    fig.subplots_adjust(left=0.28, right=0.97, top=0.92, bottom=0.12)
    return _save(fig, path, dpi)


__all__ = ["plot_confusion_matrix", "plot_curves", "plot_gallery", "plot_reliability", "plot_results"]
