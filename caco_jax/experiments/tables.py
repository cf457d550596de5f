"""The result tables of a preset: per cell, mean and spread over seeds beside the paper's figures,
written to ``docs/results_<preset>.{md,json,png}``."""
from __future__ import annotations

import datetime
import json
import os
import pathlib
import platform
import statistics
from typing import Any

from caco_jax.experiments.grid import run_dir
from caco_jax.experiments.presets import Preset


def summarise_run(workdir: pathlib.Path) -> dict[str, Any]:
    """The figures of one finished run: test metrics, external metrics when present, time."""
    report = json.loads((workdir / "report.json").read_text())
    m = report["metrics"]
    history = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()
               if '"kind": "epoch"' in line]
    seconds = sum(r.get("epoch_seconds", 0.0) + r.get("val_seconds", 0.0) for r in history)
    out = {"accuracy": m["accuracy"], "bacc": m["bacc"], "paper_bacc": m["paper_bacc"], "macro_auc": m.get("macro_auc"),
           "mel_sensitivity": m["per_class"]["mel"]["sensitivity"] if "mel" in m["per_class"] else None,
           "params": report["model"]["params"], "train_seconds": seconds, "epochs": len(history),
           "best_epoch": 1 + max(range(len(history)), key=lambda i: history[i]["val_bacc"]) if history else None}
    external = workdir / "report_isic2018_test_test.json"
    if external.is_file():
        e = json.loads(external.read_text())["metrics"]
        out |= {"isic_accuracy": e["accuracy"], "isic_bacc": e["bacc"], "isic_macro_auc": e.get("macro_auc")}
    return out


def _stats(values: list[float | None]) -> tuple[float | None, float | None]:
    vals = [v for v in values if v is not None]
    if not vals:
        return None, None
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else None)


def aggregate(preset: Preset, out: pathlib.Path) -> list[dict[str, Any]]:
    """One row per cell: mean / std over the seeds that finished."""
    rows = []
    for cell in preset.cells:
        runs = {seed: summarise_run(run_dir(out, preset, cell, seed)) for seed in cell.seeds
                if (run_dir(out, preset, cell, seed) / "report.json").is_file()}
        row: dict[str, Any] = {"cell": cell.name, "note": cell.note, "overrides": cell.overrides,
                               "seeds": sorted(runs), "planned_seeds": list(cell.seeds), "runs": runs,
                               "paper": cell.paper()}
        for key in ("accuracy", "bacc", "paper_bacc", "macro_auc", "mel_sensitivity", "train_seconds",
                    "isic_accuracy", "isic_bacc", "isic_macro_auc"):
            row[key] = _stats([r.get(key) for r in runs.values()])
        row["params"] = next((r["params"] for r in runs.values()), None)
        rows.append(row)
    return rows


def _pct(stat: tuple[float | None, float | None]) -> str:
    mean, std = stat
    if mean is None:
        return "-"
    return f"{100 * mean:.2f}" + (f" ± {100 * std:.2f}" if std is not None else "")


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        import jax

        devices = f"{jax.device_count()} x {jax.devices()[0].device_kind}"
    except Exception:  # noqa: BLE001 -- the header must not fail
        devices = "unknown devices"
    return f"{cpu}, {os.cpu_count()} logical CPUs; JAX devices: {devices}"


def _versions() -> str:
    from importlib import metadata

    parts = [f"python {platform.python_version()}"]
    for name in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "tensorflow-datasets"):
        try:
            parts.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pass
    return ", ".join(parts)


def write_results(preset: Preset, rows: list[dict[str, Any]], docs: pathlib.Path, command: str,
                  trained_on: str = "") -> dict[str, Any]:
    """docs/results_<preset>.md, .json and .png; returns the paths. ``trained_on`` names the machine that
    trained the runs when it is not the one writing the tables (``--report_only`` elsewhere)."""
    from caco_jax.evaluation import plots

    docs.mkdir(parents=True, exist_ok=True)
    stem = docs / f"results_{preset.name}"
    external = any(r["isic_bacc"][0] is not None for r in rows)
    lines = [
        f"# caco-jax on HAM10000: preset `{preset.name}`",
        "",
        preset.description,
        "",
        f"- command: `{command}`",
        f"- written: {datetime.datetime.now(datetime.UTC).isoformat(timespec='seconds')}",
        *([f"- runs trained on: {trained_on}"] if trained_on else []),
        f"- {'tables written on' if trained_on else 'machine'}: {_machine()}",
        f"- versions{' (of the tables)' if trained_on else ''}: {_versions()}",
        "",
        "Test split (best-validation-BACC weights of each run), mean ± std over seeds (std only with 2+ seeds). "
        "BACC is mean per-class recall; *paper BACC* is the paper's formula, mean of (sensitivity + specificity) / 2. "
        "The paper's columns are its reported HAM10000 test figures for the same configuration (its split is not "
        "published: see the discussion).",
        "",
        "| cell | seeds | accuracy % | BACC % | paper BACC % | macro AUC | mel sens. % | params | train min"
        + (" | ISIC acc % | ISIC BACC %" if external else "") + " | paper acc % | paper BACC % | note |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:" + ("|---:|---:" if external else "") + "|---:|---:|---|",
    ]
    for r in rows:
        seeds = ",".join(map(str, r["seeds"])) or "-"
        if r["seeds"] != r["planned_seeds"]:
            seeds += f" (of {','.join(map(str, r['planned_seeds']))})"
        auc_mean, auc_std = r["macro_auc"]
        auc = "-" if auc_mean is None else f"{auc_mean:.4f}" + (f" ± {auc_std:.4f}" if auc_std else "")
        minutes = "-" if r["train_seconds"][0] is None else f"{r['train_seconds'][0] / 60:.1f}"
        params = "-" if r["params"] is None else f"{r['params'] / 1e6:.3f} M"
        paper = r["paper"]
        lines.append(
            f"| {r['cell']} | {seeds} | {_pct(r['accuracy'])} | {_pct(r['bacc'])} | {_pct(r['paper_bacc'])} | {auc} | "
            f"{_pct(r['mel_sensitivity'])} | {params} | {minutes}"
            + (f" | {_pct(r['isic_accuracy'])} | {_pct(r['isic_bacc'])}" if external else "")
            + f" | {paper[0] if paper else '-'} | {paper[1] if paper else '-'} | {r['note']} |")
    if not external:
        lines += ["", "External evaluation (ISIC 2018 Task 3 test): not run (no `--isic_dir` given)."]
    lines += ["", f"![BACC per cell]({stem.name}.png)", ""]
    discussion = docs / f"results_{preset.name}_discussion.md"
    if discussion.is_file():
        lines += [discussion.read_text().strip(), ""]
    stem.with_suffix(".md").write_text("\n".join(lines))
    stem.with_suffix(".json").write_text(json.dumps({"preset": preset.name, "command": command,
                                                     "trained_on": trained_on or _machine(), "rows": rows},
                                                    indent=2, default=str))
    plots.plot_results(rows, stem.with_suffix(".png"), title=f"preset {preset.name}: test BACC per cell")
    return {"md": stem.with_suffix(".md"), "json": stem.with_suffix(".json"), "png": stem.with_suffix(".png")}
