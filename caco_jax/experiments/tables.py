"""The result tables of a preset, written to ``docs/results_<preset>.{md,json,png}``: per cell, mean and
spread over seeds with the lesion-bootstrap interval of the mean, beside the paper's figures; paired
comparisons; and the preset's own sections (the leakage protocols, the recipe's ablation)."""

from __future__ import annotations

import datetime
import json
import os
import pathlib
import platform
from typing import Any

from caco_jax.data import leakage
from caco_jax.evaluation.reported import REPORTED
from caco_jax.experiments import leak_parts
from caco_jax.experiments.presets import Preset


def _pct(stat: tuple[float | None, float | None], interval: tuple[float, float] | None = None) -> str:
    """'mean ± std [lo, hi]' in percent (std with 2+ seeds, the interval when known)."""
    mean, std = stat
    if mean is None:
        return "-"
    text = f"{100 * mean:.1f}" + (f" ± {100 * std:.1f}" if std is not None else "")
    return text + (f" [{100 * interval[0]:.1f}, {100 * interval[1]:.1f}]" if interval else "")


def _interval(row: dict[str, Any], metric: str, view: str = "argmax") -> tuple[float, float] | None:
    figure = row.get("views", {}).get(view)
    return figure[metric]["interval"] if figure else None


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


def _header(preset: Preset, command: str, trained_on: str, resamples: int) -> list[str]:
    return [
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
        "Test split, best-validation-BACC weights of each run: mean ± standard deviation over seeds (with 2+ seeds), "
        f"then in brackets the 95 % interval of that mean over the test split's sampling only ({resamples:,} "
        "bootstrap resamples of its lesions, every photograph of a drawn lesion together; only for runs that saved "
        "their predictions). The interval that also covers the seed is in the table *Seeds and test sampling* "
        "below. "
        "BACC is mean per-class recall; *paper BACC* is the paper's formula, mean of (sensitivity + specificity) / 2. "
        "The paper's columns are its reported HAM10000 test figures for the same model and loss (its split and "
        "input size are not published: see the discussion).",
        "",
    ]


def _main_table(rows: list[dict[str, Any]]) -> list[str]:
    external = any(r["isic_bacc"][0] is not None for r in rows)
    lines = [
        "| cell | seeds | accuracy % | BACC % | paper BACC % | macro AUC | mel sens. % | params | train min"
        + (" | ISIC acc % | ISIC BACC %" if external else "")
        + " | paper acc % | paper BACC % | note |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:" + ("|---:|---:" if external else "") + "|---:|---:|---|",
    ]
    for r in rows:
        seeds = ",".join(map(str, r["seeds"])) or "-"
        if r["seeds"] != r["planned_seeds"]:
            seeds += f" (of {','.join(map(str, r['planned_seeds']))})"
        auc_mean, auc_std = r["macro_auc"]
        auc_iv = _interval(r, "macro_auc")
        auc = (
            "-"
            if auc_mean is None
            else f"{auc_mean:.3f}"
            + (f" ± {auc_std:.3f}" if auc_std else "")
            + (f" [{auc_iv[0]:.3f}, {auc_iv[1]:.3f}]" if auc_iv else "")
        )
        minutes = "-" if r["train_seconds"][0] is None else f"{r['train_seconds'][0] / 60:.1f}"
        params = "-" if r["params"] is None else f"{r['params'] / 1e6:.3f} M"
        paper = r["paper"]
        lines.append(
            f"| {r['cell']} | {seeds} | {_pct(r['accuracy'], _interval(r, 'accuracy'))} | "
            f"{_pct(r['bacc'], _interval(r, 'bacc'))} | {_pct(r['paper_bacc'])} | {auc} | "
            f"{_pct(r['mel_sensitivity'])} | {params} | {minutes}"
            + (f" | {_pct(r['isic_accuracy'])} | {_pct(r['isic_bacc'])}" if external else "")
            + f" | {paper[0] if paper else '-'} | {paper[1] if paper else '-'} | {r['note']} |"
        )
    if not external:
        lines += ["", "External evaluation (ISIC 2018 Task 3 test): not run (no `--isic_dir` given)."]
    return lines


def _iv(interval: Any, scale: float = 100.0, signed: bool = False) -> str:
    if not interval:
        return "-"
    fmt = "+.1f" if signed else ".1f"
    return f"[{scale * interval[0]:{fmt}}, {scale * interval[1]:{fmt}}]"


def _seed_cell(figure: dict[str, Any] | None, signed: bool = False) -> str:
    """'[lo, hi]' of a seeds-and-test interval, or why there is none."""
    if not figure:
        return "-"
    if figure.get("interval") is None:
        return figure.get("why", "-")
    return _iv(figure["interval"], signed=signed)


TWO_SEED_COVERAGE = "86-95 %"  # a two-seed cell's interval in simulation (docs/interval_coverage.json)
SEED_INTERVAL_NOTE = (
    "Student's t with Satterthwaite's degrees of freedom, the seeds' spread estimated and each run's "
    "lesion-bootstrap standard error taken as known (caco_jax/experiments/seeds.py). In simulation it covers a "
    "difference of two cells 93-97 % of the time at 2, 3 and 5 seeds, and a single cell's mean 91-95 % at 3 "
    "seeds and 94-95 % at 5; with 2 seeds a cell's interval covers 86-95 %, the least when the seeds disagree "
    "far more than the test sampling explains (docs/interval_coverage.json)"
)


_SEED_VIEWS = (("argmax", "argmax"), ("balanced_tta", "balanced rule + TTA"))


def _seed_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Per cell (and view): the mean with its interval over seeds and test sampling together."""
    lines = [
        "",
        "## Seeds and test sampling",
        "",
        "The mean over seeds with a 95 % interval that covers both the seed and the test split's sampling: "
        + SEED_INTERVAL_NOTE
        + ". A cell with one seed has no such interval: its seed part is unknown. Percent (AUC x 100).",
        "",
        "| cell | view | seeds | " + " | ".join(m.label for m in REPORTED) + " |",
        "|---|---|---|" + "---|" * len(REPORTED),
    ]
    for r in rows:
        for key, name in _SEED_VIEWS:
            figure = (r.get("seed_intervals") or {}).get(key)
            if not figure:
                continue
            recorded = f" ({len(r['recorded_seeds'])} from the record)" if r.get("recorded_seeds") else ""
            if len(r["seeds"]) == 2 and any((figure.get(m.name) or {}).get("interval") for m in REPORTED):
                recorded += f"; covers {TWO_SEED_COVERAGE}"
            lines.append(
                f"| {r['cell']} | {name} | {len(r['seeds'])}{recorded} | "
                + " | ".join(_seed_cell(figure.get(m.name)) for m in REPORTED)
                + " |"
            )
    return lines


def _rule(rule: str, tta: bool) -> str:
    return rule + (" + TTA" if tta else "")


def _difference(comparison: dict[str, Any], key: str) -> str:
    d, iv = comparison[key]["difference"], comparison[key]["interval"]
    return f"{100 * d:+.1f}" + (f" [{100 * iv[0]:+.1f}, {100 * iv[1]:+.1f}]" if iv else "")


def _comparison_lines(comparisons: list[dict[str, Any]]) -> list[str]:
    if not comparisons:
        return []
    lines = [
        "",
        "## Paired comparisons",
        "",
        "Each row: the mean over seeds of cell *a* minus that of cell *b*, on the same test images, in points "
        "(percent for accuracy and BACC, AUC x 100), with the 95 % interval of the difference over the test "
        "split's sampling only (both resampled together by lesion); *P(a > b)* is the share of those resamples in "
        "which a wins. *Seeds + test* is the interval that also covers the seeds, the one a claim about the "
        "recipes should quote: " + SEED_INTERVAL_NOTE + ". An interval that contains 0 cannot tell the two apart.",
        "",
        "| question | a (rule) | b (rule) | seeds | BACC a - b (test) | BACC a - b (seeds + test) | "
        "accuracy a - b (test) | accuracy a - b (seeds + test) | macro AUC a - b (test) | P(a > b), BACC |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for c in comparisons:
        head = (
            f"| {c['question']} | {c['a']} ({_rule(c['a_rule'], c['a_tta'])}) "
            f"| {c['b']} ({_rule(c['b_rule'], c['b_tta'])}) |"
        )
        if not c["available"]:
            lines.append(head + f" - | not available: {c['reason']} | | | | |")
            continue
        share = c["bacc"]["share_above_zero"]
        approx = " (≈)" if c["bacc"].get("approx") else ""
        lines.append(
            head + f" {c['seeds'][0]} vs {c['seeds'][1]} | {_difference(c, 'bacc')}{approx} | "
            f"{_seed_cell((c.get('with_seeds') or {}).get('bacc'), signed=True)} | "
            f"{_difference(c, 'accuracy')} | {_seed_cell((c.get('with_seeds') or {}).get('accuracy'), signed=True)} | "
            f"{_difference(c, 'macro_auc')} | "
            f"{'-' if share is None else f'{share:.2f}'} |"
        )
    if any(c.get("available") and c["bacc"].get("approx") for c in comparisons):
        lines += [
            "",
            "(≈): a cell gained seeds since its other runs were trained (their predictions are not on this "
            "machine): the difference is recomputed from the run records and the test-sampling interval keeps the "
            "half-widths of the last exact comparison.",
        ]
    return lines


def _part_cell(parts: dict[str, Any], part: str) -> str:
    p = parts[part]
    if not p["num_examples"]:
        return "n = 0"
    return f"{_pct(p['accuracy'])} / {_pct(p['bacc'])} (n = {p['num_examples']})"


def _leakage_lines(rows: list[dict[str, Any]]) -> list[str]:
    protocols = {r["cell"].split("_")[0]: r["leakage"] for r in rows if r.get("leakage")}
    class_names = next((list(s["per_class"]) for s in protocols.values()), [])
    lines = [
        "",
        "## The leak of each protocol",
        "",
        "Share of test images (%) that have a photograph of the same lesion in the training split / that have "
        "the same photograph (itself or an offline copy) in the training split, overall and per class.",
    ]
    if protocols:
        lines += [""] + leakage.table(protocols, class_names)
    lines += [
        "",
        "## Test figures on the leaked and the clean parts of each test split",
        "",
        "*clean*: no photograph of the lesion in training; *same lesion*: another photograph of the lesion "
        "(or a copy) in training; *same photo*: the photograph itself, as an offline copy, in training. "
        "Accuracy / BACC %, mean ± std over seeds; n = test images in the part. Training accuracy is that of "
        "the last epoch (augmented batches).",
        "",
        "| cell | seeds | train acc % | all: acc / BACC | clean | same lesion | same photo | paper acc / BACC |",
        "|---|---|---:|---|---|---|---|---|",
    ]
    for r in rows:
        parts = r.get("parts")
        if not parts:
            continue
        paper = r["paper"]
        lines.append(
            f"| {r['cell']} | {','.join(map(str, r['seeds']))} | {_pct(r['final_train_accuracy'])} | "
            f"{_pct(r['accuracy'])} / {_pct(r['bacc'])} | {_part_cell(parts, 'clean')} | "
            f"{_part_cell(parts, 'same_lesion')} | {_part_cell(parts, 'same_source')} | "
            f"{f'{paper[0]} / {paper[1]}' if paper else '-'} |"
        )
    return lines


def _view_cell(views: dict[str, Any], key: str) -> str:
    if key not in views:
        return "-"
    f = views[key]
    return f"{100 * f['accuracy']['value']:.1f} / {100 * f['bacc']['value']:.1f}" + (
        f" [{100 * f['bacc']['interval'][0]:.1f}, {100 * f['bacc']['interval'][1]:.1f}]"
        if f["bacc"]["interval"]
        else ""
    )


_VIEW_NAMES = (
    ("argmax", "argmax"),
    ("balanced", "balanced rule"),
    ("offsets", "per-class offsets"),
    ("argmax_tta", "TTA"),
    ("balanced_tta", "TTA + balanced rule"),
)


def _validation_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Validation BACC under each view: what a choice made without the test split sees."""
    lines = [
        "",
        "Validation BACC % under the same views (mean over seeds): what a choice made without the test split "
        "sees. The balanced rules are fitted on these images, so their figures here are optimistic.",
        "",
        "| cell | seeds | " + " | ".join(name for _, name in _VIEW_NAMES) + " |",
        "|---|---|" + "---:|" * len(_VIEW_NAMES),
    ]
    for r in rows:
        v = r.get("views") or {}
        if v:
            cells = [_pct(v[k]["val_bacc"]) if k in v and "val_bacc" in v[k] else "-" for k, _ in _VIEW_NAMES]
            lines.append(f"| {r['cell']} | {','.join(map(str, r['seeds']))} | " + " | ".join(cells) + " |")
    return lines


def _recipe_lines(rows: list[dict[str, Any]]) -> list[str]:
    views = _VIEW_NAMES
    lines = [
        "",
        "## The recipe's parts: decision rules and test-time augmentation",
        "",
        "Every run evaluated under each decision rule (fitted on its validation split) with and without TTA "
        "(the 8 flips and 90-degree rotations): accuracy / BACC %, mean over seeds with the interval of the "
        "mean; macro AUC does not depend on the rule.",
        "",
        "| cell | seeds | " + " | ".join(name for _, name in views) + " | macro AUC (plain / TTA) |",
        "|---|---|" + "---|" * len(views) + "---|",
    ]
    for r in rows:
        v = r.get("views") or {}
        if not v:
            continue
        auc = [f"{v[k]['macro_auc']['value']:.3f}" if k in v else "-" for k in ("argmax", "argmax_tta")]
        lines.append(
            f"| {r['cell']} | {','.join(map(str, r['seeds']))} | "
            + " | ".join(_view_cell(v, k) for k, _ in views)
            + f" | {auc[0]} / {auc[1]} |"
        )
    return lines + _validation_lines(rows)


def write_results(
    preset: Preset,
    rows: list[dict[str, Any]],
    docs: pathlib.Path,
    command: str,
    trained_on: str = "",
    comparisons: list[dict[str, Any]] | None = None,
    extra: dict[str, tuple[list[str], Any]] | None = None,
) -> dict[str, Any]:
    """docs/<preset.stem>.md, .json and .png; returns the paths. ``trained_on`` names the machine that
    trained the runs when it is not the one writing the tables (``--report_only`` elsewhere); ``extra``:
    the preset's own sections, {name: (markdown lines, what the JSON keeps)}."""
    from caco_jax.evaluation import plots

    docs.mkdir(parents=True, exist_ok=True)
    stem = docs / preset.stem
    comparisons = comparisons or []
    resamples = next((r["resamples"] for r in rows if r.get("resamples")), 1000)
    lines = _header(preset, command, trained_on, resamples) + _main_table(rows) + _seed_lines(rows)
    lines += _comparison_lines(comparisons)
    if "leakage" in preset.sections:
        lines += _leakage_lines(rows) + leak_parts.markdown(rows)
    if "recipe" in preset.sections:
        lines += _recipe_lines(rows)
    for section_lines, _ in (extra or {}).values():
        lines += section_lines
    lines += ["", f"![BACC per cell]({stem.name}.png)", ""]
    discussion = docs / f"{preset.stem}_discussion.md"
    if discussion.is_file():
        lines += [discussion.read_text().strip(), ""]
    stem.with_suffix(".md").write_text("\n".join(lines))
    stem.with_suffix(".json").write_text(
        json.dumps(
            {
                "preset": preset.name,
                "command": command,
                "trained_on": trained_on or _machine(),
                "rows": rows,
                "comparisons": comparisons,
                **{name: data for name, (_, data) in (extra or {}).items()},
            },
            indent=2,
            default=str,
        )
    )
    plots.plot_results(rows, stem.with_suffix(".png"), title=f"preset {preset.name}: test BACC per cell")
    return {"md": stem.with_suffix(".md"), "json": stem.with_suffix(".json"), "png": stem.with_suffix(".png")}
