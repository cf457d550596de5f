"""Reproduce the paper on HAM10000: a named grid of training runs, evaluated, tabulated beside the paper.

    python scripts/reproduce.py --preset cpu --manual_dir /path/to/HAM10000 \\
        --pretrained /path/to/mobilenet_v3_small-047dcff4.pth [--isic_dir /path/to/ISIC2018]

Each cell of the preset's grid (attention x loss x init x seed ...) is one
``scripts/train.py`` run in ``--out/<preset>/<cell>_s<seed>``: finished cells (a
``report.json`` from the same setup) are skipped, unfinished ones resume from their
last checkpoint (so stopping and rerunning the command loses at most an epoch).
Every run's best-validation weights are evaluated on the test split (by train.py)
and, with ``--isic_dir``, on the official ISIC 2018 Task 3 test set. Then
``docs/results_<preset>.md`` (+ ``.json`` and a summary figure ``.png``) are written:
per cell, mean +- std over seeds of accuracy, BACC (mean recall), the paper's BACC
formula, macro AUC, melanoma sensitivity, parameters and wall time, beside the
paper's figures, with the command, versions and machine at the top. A hand-written
discussion in ``docs/results_<preset>_discussion.md`` is included when present.

Presets: ``cpu`` (112 px, 10 epochs: the paper's recipe scaled to a 2-core CPU) and
``paper`` (224 px, 100 epochs, 3 seeds: the paper's Tables 2, 4 and 5, for a GPU).
``--cells a,b`` runs a subset, ``--report_only`` only rebuilds the tables from what
has finished, ``--dry_run`` prints the commands.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import pathlib
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# The paper's HAM10000 test results (its Tables 2, 4, 5): (attention, loss, pretrained) -> (acc %, BACC %).
PAPER = {
    ("se", "ce", False): (87.17, 73.71), ("se", "ce", True): (90.88, 83.44),
    ("caco", "ce", True): (91.78, 85.70), ("caco", "focal", True): (91.98, 85.74),
    ("caco", "ldam", True): (91.78, 86.31), ("caco", "joint", True): (93.39, 86.35),
    ("cbam", "ce", True): (91.48, 85.72), ("seco", "ce", True): (89.68, 78.70), ("eca", "ce", True): (90.98, 82.64),
}


@dataclasses.dataclass(frozen=True)
class Cell:
    """One configuration of the grid: config overrides, run once per seed."""

    name: str
    overrides: dict[str, Any]
    seeds: tuple[int, ...] = (0,)
    note: str = ""
    config: str = "configs/default.py"  # the config file the overrides apply to

    def get(self, key: str, default: Any = None) -> Any:
        return self.overrides.get(key, default)

    def paper(self) -> tuple[float, float] | None:
        """The paper's (accuracy, BACC) for this configuration (Table 5 rows are CE-trained in its text),
        whatever the data protocol (the paper's own is what the leakage grid asks about)."""
        if self.get("loss.ldam_s") is not None:
            return None
        key = (self.get("model.attention"), self.get("loss.name"), self.get("model.pretrained", True) is not False)
        return PAPER.get(key)


@dataclasses.dataclass(frozen=True)
class Preset:
    name: str
    description: str
    base: dict[str, Any]
    cells: tuple[Cell, ...]


def _c(name: str, attention: str, loss: str, seeds: Sequence[int] = (0,), note: str = "", **extra: Any) -> Cell:
    return Cell(name, {"model.attention": attention, "loss.name": loss, **extra}, tuple(seeds), note)


# Offline copies of the augment-then-split protocol: every class topped up to 1,500 images
# (akiec, bcc, bkl, df, mel and vasc get copies; nv keeps its 6,705), then an image-level split.
_AUGMENT_THEN_SPLIT = {"data.offline.mode": "balance", "data.offline.target": 1500, "data.split_by": "image"}


def _leakage_cells() -> tuple[Cell, ...]:
    protocols = (("lesion", {"data.split_by": "lesion"}, "lesion-grouped split (no leak)"),
                 ("image", {"data.split_by": "image"}, "image-level split: lesions leak"),
                 ("augment", _AUGMENT_THEN_SPLIT, "offline copies, then an image-level split"))
    cells = []
    for name, extra, note in protocols:
        cells.append(_c(f"{name}_caco_joint", "caco", "joint", (0, 1, 2), f"{note}; the paper's model", **extra))
        cells.append(_c(f"{name}_se_ce", "se", "ce", (0,), f"{note}; SE + cross-entropy", **extra))
    return tuple(cells)


# Online augmentation of the CPU leakage grid: the 8 flips / rotations, nothing that changes pixels.
_DIHEDRAL_ONLY = {"data.augment.scale": (1.0, 1.0), "data.augment.ratio": (1.0, 1.0), "data.augment.brightness": 0.0,
                  "data.augment.contrast": 0.0, "data.augment.saturation": 0.0, "data.augment.hue": 0.0}

_RECIPE = "configs/recipe.py"


def _recipe_cells(seeds: Sequence[int] = (0, 1, 2), ema: float = 0.99) -> tuple[Cell, ...]:
    """The paper's recipe, configs/recipe.py, and the recipe with each training-time part taken out
    (the decision rule and TTA need no training: every run is reported with and without them)."""
    seeds = tuple(seeds)
    parts = (
        ("recipe_no_ls", {"loss.label_smoothing": 0.0}, "recipe without label smoothing"),
        ("recipe_joint", {"loss.name": "joint", "loss.label_smoothing": 0.0},
         "recipe with the paper's joint loss instead of CE + label smoothing"),
        ("recipe_constant_lr", {"optimizer.schedule": "constant", "optimizer.warmup_epochs": 0.0},
         "recipe with the paper's constant learning rate"),
        ("recipe_no_ema", {"optimizer.ema_decay": 0.0}, "recipe without the weights' moving average"),
        ("recipe_uniform", {"data.sampling": "uniform"}, "recipe with uniform sampling"),
    )
    return (
        Cell("paper", {"model.attention": "caco", "loss.name": "joint", "evaluation.tta": True}, seeds,
             "the paper's recipe (configs/caco.py)"),
        Cell("recipe", {"optimizer.ema_decay": ema}, seeds, "configs/recipe.py", _RECIPE),
        *(Cell(name, {"optimizer.ema_decay": ema, **extra}, seeds, note, _RECIPE) for name, extra, note in parts),
    )


PRESETS: dict[str, Preset] = {
    "cpu": Preset(
        "cpu",
        "The paper's recipe (ImageNet backbone, AdamW 5e-4 / 5e-2 constant, batch 128, lesion-grouped 8:1:1 "
        "split) at 112 px for 10 epochs: what a 2-core CPU affords.",
        {"data.image_size": 112, "num_epochs": 10, "batch_size": 128, "data.split_by": "lesion",
         "checkpoint.keep": 10},
        (
            _c("se_ce", "se", "ce", (0, 1), "torchvision's MobileNetV3-Small (paper Table 2)"),
            _c("caco_ce", "caco", "ce", note="CaCo, preserving init (ours)"),
            _c("caco_ce_plain", "caco", "ce", note="CaCo, plain init (the paper, most likely)",
               **{"model.attention_init": "plain"}),
            _c("caco_ce_preserve_channel", "caco", "ce", note="plain coordinate attention, gained max branch",
               **{"model.attention_init": "preserve_channel"}),
            _c("caco_ce_preserve_coord", "caco", "ce", note="gained coordinate attention, plain max branch",
               **{"model.attention_init": "preserve_coord"}),
            _c("caco_joint", "caco", "joint", (0, 1), "the paper's model, preserving init"),
            _c("caco_joint_plain", "caco", "joint", note="the paper's model, plain init",
               **{"model.attention_init": "plain"}),
            _c("se_joint", "se", "joint", note="SE with the joint loss"),
            _c("caco_joint_s30", "caco", "joint", (0, 1), "LDAM scale s = 30 (official) instead of 1",
               **{"loss.ldam_s": 30.0}),
        ),
    ),
    "paper": Preset(
        "paper",
        "The paper's protocol: 224 px, 100 epochs, AdamW 5e-4 / 5e-2 constant, batch 128, three seeds, "
        "lesion-grouped split (plus the paper's model on an image-level split).",
        {"data.image_size": 224, "num_epochs": 100, "batch_size": 128, "data.split_by": "lesion"},
        (
            _c("se_ce_scratch", "se", "ce", (0, 1, 2), "Table 2, no pretraining", **{"model.pretrained": False}),
            _c("se_ce", "se", "ce", (0, 1, 2), "Table 2, pretrained"),
            _c("caco_ce", "caco", "ce", (0, 1, 2), "Table 4"),
            _c("caco_focal", "caco", "focal", (0, 1, 2), "Table 4"),
            _c("caco_ldam", "caco", "ldam", (0, 1, 2), "Table 4"),
            _c("caco_joint", "caco", "joint", (0, 1, 2), "Table 4 / 5: the paper's model"),
            _c("caco_joint_plain", "caco", "joint", (0, 1, 2), "the paper's model, plain init",
               **{"model.attention_init": "plain"}),
            _c("cbam_ce", "cbam", "ce", (0, 1, 2), "Table 5 (cross-entropy, as the paper's ablation)"),
            _c("seco_ce", "seco", "ce", (0, 1, 2), "Table 5 (cross-entropy)"),
            _c("eca_ce", "eca", "ce", (0, 1, 2), "Table 5 (cross-entropy)"),
            _c("se_joint", "se", "joint", (0, 1, 2), "ours: Table 5's attention ablation with the joint loss"),
            _c("cbam_joint", "cbam", "joint", (0, 1, 2), "ours: attention ablation, joint loss"),
            _c("seco_joint", "seco", "joint", (0, 1, 2), "ours: attention ablation, joint loss"),
            _c("eca_joint", "eca", "joint", (0, 1, 2), "ours: attention ablation, joint loss"),
            _c("caco_joint_imagesplit", "caco", "joint", (0, 1, 2), "image-level split: lesions leak",
               **{"data.split_by": "image"}),
        ),
    ),
    "leakage_cpu": Preset(
        "leakage_cpu",
        "Does a leaky protocol explain the paper's figures? Three data protocols (lesion-grouped split, "
        "image-level split, offline copies then an image-level split), the paper's model on three seeds and SE + "
        "cross-entropy on one, at 64 px for 30 epochs with lossless online augmentation only (flips and 90-degree "
        "rotations: the paper lists its augmentations as an offline step): long enough on a 2-core CPU for "
        "training accuracy to pass 95 %, so that memorised training images can show in the test figures.",
        {"data.image_size": 64, "num_epochs": 30, "batch_size": 128, "checkpoint.keep": 2,
         "checkpoint.every_epochs": 2, **_DIHEDRAL_ONLY},
        _leakage_cells(),
    ),
    "leakage": Preset(
        "leakage",
        "The leakage grid on our reading of the paper's protocol (224 px, 100 epochs; for a GPU).",
        {"data.image_size": 224, "num_epochs": 100, "batch_size": 128},
        _leakage_cells(),
    ),
    "recipe_cpu": Preset(
        "recipe_cpu",
        "Beyond the paper: configs/recipe.py against the paper's recipe on the CPU protocol (112 px, 10 epochs, "
        "lesion-grouped split), three seeds, with each training-time part of the recipe taken out in turn.",
        {"data.image_size": 112, "num_epochs": 10, "batch_size": 128, "data.split_by": "lesion",
         "checkpoint.keep": 2},
        _recipe_cells(),
    ),
    "recipe": Preset(
        "recipe",
        "configs/recipe.py against the paper's recipe at 224 px for 100 epochs, three seeds (for a GPU).",
        {"data.image_size": 224, "num_epochs": 100, "batch_size": 128, "data.split_by": "lesion"},
        _recipe_cells(ema=0.998)[:2],
    ),
}

# Keys whose value in a finished run's config.json must equal the cell's, else the cell is not "done".
_IDENTITY = ("model.attention", "model.attention_init", "loss.name", "loss.ldam_s", "loss.label_smoothing", "seed",
             "data.image_size", "num_epochs", "batch_size", "data.split_by", "data.offline.mode",
             "data.offline.target", "data.sampling", "optimizer.schedule", "optimizer.ema_decay")


def run_dir(out: pathlib.Path, preset: Preset, cell: Cell, seed: int) -> pathlib.Path:
    return out / preset.name / f"{cell.name}_s{seed}"


def overrides(preset: Preset, cell: Cell, seed: int, *, pretrained: str, data_dir: str, manual_dir: str,
              extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every config override of one run (preset base, cell, seed, paths)."""
    out = {**preset.base, "data.data_dir": data_dir, "data.manual_dir": manual_dir, "model.pretrained": pretrained,
           "progress_bar": False, **cell.overrides, "seed": seed, **(extra or {})}
    if out["model.pretrained"] is False:
        out["model.pretrained"] = ""
    return out


def train_command(workdir: pathlib.Path, values: dict[str, Any], config: str = "configs/default.py") -> list[str]:
    return [sys.executable, str(ROOT / "scripts" / "train.py"), "--config", str(ROOT / config),
            "--workdir", str(workdir)] + [f"--config.{k}={v}" for k, v in values.items()]


def _dotted(config: dict[str, Any], key: str) -> Any:
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def status(workdir: pathlib.Path, values: dict[str, Any]) -> str:
    """'done' (report of this very setup), 'partial' (checkpoints to resume) or 'new'."""
    saved = workdir / "config.json"
    if saved.is_file():
        config = json.loads(saved.read_text())
        for key in _IDENTITY:
            want = values.get(key)
            have = _dotted(config, key)
            if want is not None and have is not None and str(have) != str(want):
                raise ValueError(f"{workdir} holds a run with {key}={have!r}, but this cell wants {want!r}: "
                                 "move it away or pick another --out")
    if (workdir / "report.json").is_file():
        return "done"
    return "partial" if (workdir / "checkpoints").is_dir() else "new"


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
    from caco_jax import plots

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


def run_grid(preset: Preset, out: pathlib.Path, *, pretrained: str, data_dir: str, manual_dir: str,
             isic_dir: str = "", cells: Sequence[str] = (), seeds: Sequence[int] = (), dry_run: bool = False,
             extra: dict[str, Any] | None = None, config: str = "configs/default.py",
             runner: Callable[[list[str], pathlib.Path], int] | None = None,
             log: Callable[[str], None] = print) -> list[pathlib.Path]:
    """Trains (or resumes) every unfinished run of the chosen cells, then the external evaluation."""
    runner = runner or _run_logged
    chosen = [c for c in preset.cells if not cells or c.name in cells]
    unknown = set(cells) - {c.name for c in preset.cells}
    if unknown:
        raise ValueError(f"unknown cell(s) {sorted(unknown)} in preset {preset.name!r}; "
                         f"cells: {[c.name for c in preset.cells]}")
    done = []
    for cell in chosen:
        for seed in [s for s in cell.seeds if not seeds or s in seeds]:
            workdir = run_dir(out, preset, cell, seed)
            values = overrides(preset, cell, seed, pretrained=pretrained, data_dir=data_dir, manual_dir=manual_dir,
                               extra=extra)
            state = status(workdir, values)
            cmd = train_command(workdir, values, cell.config if config == "configs/default.py" else config)
            if dry_run:
                log(f"[{state}] {shlex.join(cmd)}")
                continue
            if state != "done":
                log(f"{cell.name} seed {seed}: {'resuming' if state == 'partial' else 'training'} in {workdir}")
                t0 = time.perf_counter()
                if runner(cmd, workdir / "reproduce.log") != 0:
                    raise RuntimeError(f"training {workdir} failed: see {workdir / 'reproduce.log'}; rerun the same "
                                       "command to resume it")
                log(f"  finished in {(time.perf_counter() - t0) / 60:.1f} min")
            else:
                log(f"{cell.name} seed {seed}: done, skipped")
            if isic_dir and not (workdir / "report_isic2018_test_test.json").is_file():
                ev = [sys.executable, str(ROOT / "scripts" / "evaluate.py"), "--workdir", str(workdir), "--dataset",
                      "isic2018_test", "--manual_dir", isic_dir, "--data_dir", data_dir]
                if runner(ev, workdir / "reproduce_isic.log") != 0:
                    raise RuntimeError(f"ISIC evaluation of {workdir} failed: see {workdir / 'reproduce_isic.log'}")
            done.append(workdir)
    return done


def _run_logged(cmd: list[str], log_file: pathlib.Path) -> int:
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "a") as fh:
        fh.write(f"$ {shlex.join(cmd)}\n")
        fh.flush()
        return subprocess.call(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    p.add_argument("--manual_dir", default="", help="raw HAM10000 (any official layout) to build from")
    p.add_argument("--data_dir", default="data/tfds", help="TFDS data_dir (the build is made once, here)")
    p.add_argument("--pretrained", default="", help="torchvision mobilenet_v3_small ImageNet .pth (or converted dir)")
    p.add_argument("--isic_dir", default="", help="ISIC 2018 Task 3 files for the external test columns")
    p.add_argument("--out", default="runs/reproduce", help="where the runs go (one folder per cell and seed)")
    p.add_argument("--docs", default=str(ROOT / "docs"), help="where results_<preset>.{md,json,png} go")
    p.add_argument("--cells", default="", help="comma-separated subset of the preset's cells")
    p.add_argument("--seeds", default="", help="comma-separated subset of each cell's seeds (default: all planned)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra config override for every run, e.g. data.cache=True (repeatable)")
    p.add_argument("--report_only", action="store_true", help="only rebuild the tables from finished runs")
    p.add_argument("--trained_on", default="", help="with --report_only: the machine that trained the runs, "
                                                    "for the header (default: this one)")
    p.add_argument("--dry_run", action="store_true", help="print each run's command and state, run nothing")
    args = p.parse_args(argv)
    preset = PRESETS[args.preset]
    out = pathlib.Path(args.out).resolve()
    cells = [c for c in args.cells.split(",") if c]
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s]
    except ValueError:
        p.error(f"--seeds {args.seeds!r}: expected comma-separated integers, e.g. --seeds 0,1")
    chosen = [c for c in preset.cells if not cells or c.name in cells]
    unplanned = sorted(set(seeds) - {s for c in chosen for s in c.seeds})
    if unplanned:
        p.error(f"--seeds {unplanned} are planned in none of the chosen cells of preset {preset.name!r} "
                f"(their seeds: {sorted({s for c in chosen for s in c.seeds})})")
    extra = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            p.error(f"--set {item!r}: expected KEY=VALUE, e.g. data.cache=True")
        extra[key] = value
    if not args.report_only:
        if not args.pretrained:
            p.error("--pretrained is required: the paper fine-tunes torchvision's ImageNet weights")
        if not pathlib.Path(args.pretrained).exists():
            p.error(f"--pretrained {args.pretrained} does not exist")
        run_grid(preset, out, pretrained=str(pathlib.Path(args.pretrained).resolve()),
                 data_dir=str(pathlib.Path(args.data_dir).resolve()),
                 manual_dir=str(pathlib.Path(args.manual_dir).resolve()) if args.manual_dir else "",
                 isic_dir=args.isic_dir, cells=cells, seeds=seeds, dry_run=args.dry_run, extra=extra)
        if args.dry_run:
            return 0
    command = "python scripts/reproduce.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    paths = write_results(preset, aggregate(preset, out), pathlib.Path(args.docs), command, args.trained_on)
    print(f"results: {paths['md']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
