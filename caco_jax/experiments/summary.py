"""The figures of a preset's finished runs: per run, per cell (mean and spread over seeds, with the
lesion-bootstrap interval of the mean) and per paired comparison, from each run's report, metrics log and
saved predictions."""

from __future__ import annotations

import json
import pathlib
import statistics
from typing import Any

from caco_jax.evaluation import run_figures
from caco_jax.experiments import run_records, seeds
from caco_jax.experiments.grid import finished_runs
from caco_jax.experiments.presets import Comparison, Preset

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


def _views(
    dirs: list[pathlib.Path] | None, runs: list[dict[str, Any]], resamples: int, recorded: dict[str, Any] | None
) -> dict[str, Any]:
    """Mean over seeds (with the test-sampling interval of the mean) under each decision rule and TTA, where
    available: exact from the runs' predictions (``dirs``: every run on disk), else the recorded view of the
    same seeds, else approximated from the run records (``run_records.view_from_records``)."""
    views: dict[str, Any] = {}
    for rule, tta in VIEWS:
        variant = "tta" if tta else "plain"
        key = f"{rule}{'_tta' if tta else ''}"
        if not (runs and all(r.get("figures") and r["figures"].get(variant) for r in runs)):
            continue
        if dirs is not None:
            view: dict[str, Any] | None = dict(run_figures.cell_figures(dirs, rule=rule, tta=tta, resamples=resamples))
        elif recorded is not None and key in recorded:
            view = dict(recorded[key])
        else:
            view = run_records.view_from_records(runs, rule, tta)
        if view is not None:
            view["val_bacc"] = stats([r["figures"][variant][rule].get("val_bacc") for r in runs])
            views[key] = view
    return views


def _parts(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Mean over seeds of accuracy and BACC on the test split's clean and leaked parts."""
    if not runs or not all(r.get("figures") for r in runs):
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


def aggregate(
    preset: Preset, out: pathlib.Path, resamples: int = 1000, previous: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """One row per cell: mean / std over the seeds that finished (on disk, or recorded in ``previous``,
    the preset's last results JSON), the cell's views and parts, and its seeds-and-test intervals."""
    rows = []
    for cell in preset.cells:
        dirs = finished_runs(preset, cell, out)
        runs = {seed: summarise_run(d, resamples) for seed, d in dirs.items()}
        recorded = {s: r for s, r in run_records.recorded_runs(previous, cell.name).items() if s in cell.seeds}
        from_records = sorted(set(recorded) - set(runs))
        runs |= {s: recorded[s] for s in from_records}
        previous_row = run_records.recorded_row(previous, cell.name)
        same_seeds = previous_row is not None and sorted(map(int, previous_row.get("seeds", []))) == sorted(runs)
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
        ordered = [runs[s] for s in sorted(runs)]
        on_disk = [dirs[s] for s in sorted(runs)] if not from_records else None
        recorded_views = previous_row.get("views") if (same_seeds and previous_row is not None) else None
        row["views"] = _views(on_disk, ordered, resamples, recorded_views)
        row["parts"] = _parts(ordered)
        row["recorded_seeds"] = from_records  # runs not on this machine: their figures come from the record
        row["seed_intervals"] = run_records.seed_intervals(ordered, VIEWS)
        row["resamples"] = resamples
        rows.append(row)
    return rows


def _same(a: dict[str, Any], b: Comparison) -> bool:
    keys = ("a", "b", "a_rule", "b_rule", "a_tta", "b_tta")
    return all(a.get(k) == getattr(b, k) for k in keys)


def _from_record(previous: dict[str, Any], runs_a: list[dict], runs_b: list[dict], c: Comparison) -> dict[str, Any]:
    """The recorded comparison, its differences recomputed from the run records when the seeds changed
    (the test-sampling interval then keeps its recorded half-widths around the new difference)."""
    figures = {k: dict(previous[k]) for k in run_records.METRICS}
    if previous.get("seeds") == [len(runs_a), len(runs_b)]:
        return figures
    for metric in run_records.METRICS:
        va = [run_records.run_value(r, metric, c.a_rule, c.a_tta)[0] for r in runs_a]
        vb = [run_records.run_value(r, metric, c.b_rule, c.b_tta)[0] for r in runs_b]
        d = statistics.fmean(va) - statistics.fmean(vb)
        old, iv = previous[metric]["difference"], previous[metric]["interval"]
        figures[metric] = {
            "difference": d,
            "interval": None if iv is None else [d - (old - iv[0]), d + (iv[1] - old)],
            "share_above_zero": None,
            "approx": f"test part from the comparison of {previous['seeds'][0]} vs {previous['seeds'][1]} seeds",
        }
    return figures


def _with_seeds(figures: dict[str, Any], runs_a: list[dict], runs_b: list[dict], c: Comparison) -> dict[str, Any]:
    """Each metric's seeds-and-test interval (``seeds.difference``; seed by seed when a and b are one cell)."""
    out = {}
    for metric in run_records.METRICS:
        va = [run_records.run_value(r, metric, c.a_rule, c.a_tta)[0] for r in runs_a]
        vb = [run_records.run_value(r, metric, c.b_rule, c.b_tta)[0] for r in runs_b]
        if any(v is None for v in va + vb):
            continue
        paired = figures[metric]["interval"]
        if c.a == c.b:  # one cell under two views: the seeds pair up
            diffs = [x - y for x, y in zip(va, vb, strict=True)]
            cell = seeds.cell(diffs, [paired] * len(diffs), bounds=(-1.0, 1.0))
            out[metric] = {"difference": cell["mean"], **{k: v for k, v in cell.items() if k != "mean"}}
        else:
            out[metric] = seeds.difference(va, vb, paired)
    return out


def compare(
    preset: Preset,
    out: pathlib.Path,
    comparison: Comparison,
    resamples: int = 2000,
    rows: list[dict[str, Any]] | None = None,
    previous: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A paired comparison of two cells over their finished seeds, with its seeds-and-test interval;
    ``available`` False (with the reason) when it cannot be computed. Exact from the predictions when every
    run of both cells is on disk, else from ``previous`` (the preset's last results JSON) and the run
    records of ``rows``."""
    cells = {c.name: c for c in preset.cells}
    dirs = {
        name: [d for d in finished_runs(preset, cells[name], out).values() if (d / "predictions_test.npz").is_file()]
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
    by_cell = {r["cell"]: r for r in rows or []}
    runs = {
        name: [by_cell[name]["runs"][s] for s in sorted(by_cell[name]["runs"])] if name in by_cell else []
        for name in (comparison.a, comparison.b)
    }
    recorded = any(by_cell.get(name, {}).get("recorded_seeds") for name in runs)
    earlier = next(
        (c for c in (previous or {}).get("comparisons", []) if _same(c, comparison) and c["available"]), None
    )
    if recorded and earlier is not None:
        figures = _from_record(earlier, runs[comparison.a], runs[comparison.b], comparison)
        seeds_used = [len(runs[comparison.a]), len(runs[comparison.b])]
    else:
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
        seeds_used = [len(dirs[comparison.a]), len(dirs[comparison.b])]
        runs = {name: [summarise_run(d, 0) for d in found] for name, found in dirs.items()} if not rows else runs
    seed_figures = _with_seeds(figures, runs[comparison.a], runs[comparison.b], comparison)
    return result | {"available": True, "seeds": seeds_used, **figures, "with_seeds": seed_figures}
