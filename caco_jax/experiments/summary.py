"""The figures of a preset's finished runs: per run, per cell (mean and spread over seeds, with the
lesion-bootstrap interval of the mean) and per paired comparison, from each run's report, metrics log and
saved predictions."""

from __future__ import annotations

import json
import pathlib
import statistics
from typing import Any

from caco_jax.evaluation import run_figures
from caco_jax.experiments.grid import run_dir
from caco_jax.experiments.presets import Cell, Comparison, Preset

SCALARS = (
    "accuracy",
    "bacc",
    "paper_bacc",
    "macro_auc",
    "mel_sensitivity",
    "train_seconds",
    "isic_accuracy",
    "isic_bacc",
    "isic_macro_auc",
)
# The decision rule x test-time augmentation combinations a cell is reported under.
VIEWS = (("argmax", False), ("balanced", False), ("offsets", False), ("argmax", True), ("balanced", True))


def epoch_rows(workdir: pathlib.Path) -> list[dict[str, Any]]:
    """The epoch rows of ``metrics.jsonl``, one per epoch (a row logged twice by a resumed run before
    that was fixed counts once: the later one)."""
    rows = {}
    for line in (workdir / "metrics.jsonl").read_text().splitlines():
        if '"kind": "epoch"' in line:
            row = json.loads(line)
            rows[row["step"]] = row  # an epoch ends at one step
    return [rows[k] for k in sorted(rows)]


def summarise_run(workdir: pathlib.Path, resamples: int = 1000) -> dict[str, Any]:
    """One finished run: test metrics, training time and epochs, external (ISIC) metrics when present,
    and ``figures`` (intervals, decision rules, TTA, leaked / clean parts) when it saved predictions."""
    report = json.loads((workdir / "report.json").read_text())
    m = report["metrics"]
    history = epoch_rows(workdir)
    seconds = sum(r.get("epoch_seconds", 0.0) + r.get("val_seconds", 0.0) for r in history)
    out = {
        "accuracy": m["accuracy"],
        "bacc": m["bacc"],
        "paper_bacc": m["paper_bacc"],
        "macro_auc": m.get("macro_auc"),
        "mel_sensitivity": m["per_class"]["mel"]["sensitivity"] if "mel" in m["per_class"] else None,
        "params": report["model"]["params"],
        "train_seconds": seconds,
        "epochs": len(history),
        "best_epoch": 1 + max(range(len(history)), key=lambda i: history[i]["val_bacc"]) if history else None,
        "final_train_accuracy": history[-1].get("train_accuracy") if history else None,
        "leakage": m.get("leakage"),
    }
    external = workdir / "report_isic2018_test_test.json"
    if external.is_file():
        e = json.loads(external.read_text())["metrics"]
        out |= {"isic_accuracy": e["accuracy"], "isic_bacc": e["bacc"], "isic_macro_auc": e.get("macro_auc")}
    out["figures"] = run_figures.run_figures(workdir, resamples=resamples)
    return out


def stats(values: list[float | None]) -> tuple[float | None, float | None]:
    """(mean, sample standard deviation) of the values given (None when fewer than one / two)."""
    vals = [v for v in values if v is not None]
    if not vals:
        return None, None
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else None)


def _finished(preset: Preset, cell: Cell, out: pathlib.Path) -> dict[int, pathlib.Path]:
    return {
        seed: run_dir(out, preset, cell, seed)
        for seed in cell.seeds
        if (run_dir(out, preset, cell, seed) / "report.json").is_file()
    }


def _views(dirs: list[pathlib.Path], runs: list[dict[str, Any]], resamples: int) -> dict[str, Any]:
    """Mean over seeds (with the interval of the mean) under each decision rule and TTA, where available."""
    views: dict[str, Any] = {}
    for rule, tta in VIEWS:
        variant = "tta" if tta else "plain"
        if runs and all(r["figures"] and r["figures"].get(variant) for r in runs):
            view: dict[str, Any] = dict(run_figures.cell_figures(dirs, rule=rule, tta=tta, resamples=resamples))
            view["val_bacc"] = stats([r["figures"][variant][rule].get("val_bacc") for r in runs])
            views[f"{rule}{'_tta' if tta else ''}"] = view
    return views


def _parts(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Mean over seeds of accuracy and BACC on the test split's clean and leaked parts."""
    if not runs or not all(r["figures"] for r in runs):
        return None
    out = {}
    for part in run_figures.PARTS:
        figs = [r["figures"]["parts"][part] for r in runs]
        out[part] = {
            "num_examples": figs[0]["num_examples"],
            "accuracy": stats([f["accuracy"] for f in figs]),
            "bacc": stats([f["bacc"] for f in figs]),
        }
    return out


def aggregate(preset: Preset, out: pathlib.Path, resamples: int = 1000) -> list[dict[str, Any]]:
    """One row per cell: mean / std over the seeds that finished, and the cell's views and parts."""
    rows = []
    for cell in preset.cells:
        dirs = _finished(preset, cell, out)
        runs = {seed: summarise_run(d, resamples) for seed, d in dirs.items()}
        row: dict[str, Any] = {
            "cell": cell.name,
            "note": cell.note,
            "overrides": cell.overrides,
            "seeds": sorted(runs),
            "planned_seeds": list(cell.seeds),
            "runs": runs,
            "paper": cell.paper(),
        }
        for key in SCALARS:
            row[key] = stats([r.get(key) for r in runs.values()])
        row["params"] = next((r["params"] for r in runs.values()), None)
        row["final_train_accuracy"] = stats([r.get("final_train_accuracy") for r in runs.values()])
        row["leakage"] = next((r["leakage"] for r in runs.values() if r.get("leakage")), None)
        row["views"] = _views([dirs[s] for s in sorted(runs)], [runs[s] for s in sorted(runs)], resamples)
        row["parts"] = _parts([runs[s] for s in sorted(runs)])
        rows.append(row)
    return rows


def compare(preset: Preset, out: pathlib.Path, comparison: Comparison, resamples: int = 2000) -> dict[str, Any]:
    """A paired comparison of two cells over their finished seeds; ``available`` False (with the reason)
    when either cell lacks finished runs with saved predictions."""
    cells = {c.name: c for c in preset.cells}
    dirs = {
        name: [d for d in _finished(preset, cells[name], out).values() if (d / "predictions_test.npz").is_file()]
        for name in (comparison.a, comparison.b)
    }
    result: dict[str, Any] = {
        "a": comparison.a,
        "b": comparison.b,
        "question": comparison.question,
        "a_rule": comparison.a_rule,
        "b_rule": comparison.b_rule,
        "a_tta": comparison.a_tta,
        "b_tta": comparison.b_tta,
    }
    missing = [name for name, found in dirs.items() if not found]
    if missing:
        return result | {"available": False, "reason": f"no finished run with saved predictions in {missing}"}
    try:
        figures = run_figures.compare(
            dirs[comparison.a],
            dirs[comparison.b],
            a_rule=comparison.a_rule,
            b_rule=comparison.b_rule,
            a_tta=comparison.a_tta,
            b_tta=comparison.b_tta,
            resamples=resamples,
        )
    except (FileNotFoundError, ValueError) as err:
        return result | {"available": False, "reason": str(err)}
    return result | {"available": True, "seeds": [len(dirs[comparison.a]), len(dirs[comparison.b])], **figures}
