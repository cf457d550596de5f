"""A preset's run records: what the tables are computed from when not every run is on this machine.

The results JSON of a preset keeps one record per run (its figures under every decision rule and view,
each with the run's own lesion-bootstrap interval). Rebuilding the tables, a run found on disk gives a
fresh record; a run that is not (trained in another session or on another machine) keeps its recorded
one, so a cell can gain seeds without retraining the old ones. Figures that need every run's
predictions (the lesion bootstrap of a cell's mean, a paired comparison) are exact when all the runs
are on disk, else taken from the record when its seeds are the same, else approximated from the
per-run intervals and marked ``approx``.
"""

from __future__ import annotations

import json
import pathlib
import statistics
from typing import Any

from caco_jax.evaluation.reported import NAMES as METRICS
from caco_jax.experiments import seeds


def previous(docs: pathlib.Path, stem: str) -> dict[str, Any] | None:
    """The preset's results JSON ``docs/<stem>.json`` (None when there is none)."""
    path = docs / f"{stem}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def recorded_runs(previous_json: dict[str, Any] | None, cell: str) -> dict[int, dict[str, Any]]:
    """{seed: record} of one cell in a previous results JSON."""
    for row in (previous_json or {}).get("rows", []):
        if row["cell"] == cell:
            return {int(s): r for s, r in row.get("runs", {}).items()}
    return {}


def recorded_row(previous_json: dict[str, Any] | None, cell: str) -> dict[str, Any] | None:
    return next((r for r in (previous_json or {}).get("rows", []) if r["cell"] == cell), None)


def run_value(run: dict[str, Any], metric: str, rule: str = "argmax", tta: bool = False) -> tuple[Any, Any]:
    """(value, lesion-bootstrap interval) of one run's test figure under ``rule`` with or without TTA;
    (value, None) for a run recorded without per-run figures (argmax, plain only)."""
    figures = run.get("figures") or {}
    variant = figures.get("tta" if tta else "plain")
    if variant and rule in variant:
        figure = variant[rule]
        return figure.get(metric), (figure.get("ci") or {}).get(metric)
    if rule == "argmax" and not tta:
        return run.get(metric), None
    return None, None


def view_from_records(runs: list[dict[str, Any]], rule: str, tta: bool) -> dict[str, Any] | None:
    """A cell's mean under one view from its runs' records: the value exact, the test-sampling interval
    approximated as the mean of the runs' own intervals around it (their errors move together)."""
    out: dict[str, Any] = {"approx": True}
    for metric in METRICS:
        pairs = [run_value(r, metric, rule, tta) for r in runs]
        if any(v is None for v, _ in pairs):
            return None
        mean = statistics.fmean(v for v, _ in pairs)
        ses = [seeds.standard_error(iv) for _, iv in pairs]
        interval = None
        if all(se is not None for se in ses):
            half = seeds.Z * statistics.fmean(se for se in ses if se is not None)
            interval = [mean - half, mean + half]
        out[metric] = {"value": mean, "interval": interval}
    return out


def seed_intervals(runs: list[dict[str, Any]], views: tuple[tuple[str, bool], ...]) -> dict[str, Any]:
    """{view: {metric: seeds.cell(...)}} over a cell's runs."""
    out: dict[str, Any] = {}
    for rule, tta in views:
        key = f"{rule}{'_tta' if tta else ''}"
        per_metric = {}
        for metric in METRICS:
            pairs = [run_value(r, metric, rule, tta) for r in runs]
            if pairs and all(v is not None for v, _ in pairs):
                per_metric[metric] = seeds.cell([v for v, _ in pairs], [iv for _, iv in pairs])
        if per_metric:
            out[key] = per_metric
    return out
