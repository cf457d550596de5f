"""Running a preset: one ``caco-jax train`` process per cell and seed, in ``<out>/<preset>/<cell>_s<seed>``.

Finished runs (a ``report.json`` of the same setup) are skipped, unfinished ones resume from their
last checkpoint, so stopping and rerunning loses at most an epoch.
"""

from __future__ import annotations

import json
import pathlib
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from caco_jax.errors import CacoError, UsageError
from caco_jax.experiments.presets import Cell, Preset

# Keys whose value in a finished run's config.json must equal the cell's, else the cell is not "done".
_IDENTITY = (
    "model.attention",
    "model.attention_init",
    "loss.name",
    "loss.ldam_s",
    "loss.label_smoothing",
    "seed",
    "data.image_size",
    "num_epochs",
    "batch_size",
    "data.split_by",
    "data.holdout_source",
    "data.offline.mode",
    "data.offline.target",
    "data.sampling",
    "optimizer.schedule",
    "optimizer.ema_decay",
)


def run_dir(out: pathlib.Path, preset: Preset, cell: Cell, seed: int) -> pathlib.Path:
    return out / preset.name / f"{cell.name}_s{seed}"


def finished_runs(preset: Preset, cell: Cell, out: pathlib.Path) -> dict[int, pathlib.Path]:
    """Seed -> workdir of each of ``cell``'s runs under ``out`` that has finished (written its report.json)."""
    return {
        seed: run_dir(out, preset, cell, seed)
        for seed in cell.seeds
        if (run_dir(out, preset, cell, seed) / "report.json").is_file()
    }


def overrides(
    preset: Preset,
    cell: Cell,
    seed: int,
    *,
    pretrained: str,
    data_dir: str,
    manual_dir: str,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Every config override of one run (preset base, cell, seed, paths)."""
    out = {
        **preset.base,
        "data.data_dir": data_dir,
        "data.manual_dir": manual_dir,
        "model.pretrained": pretrained,
        "progress_bar": False,
        **cell.overrides,
        "seed": seed,
        **(extra or {}),
    }
    if out["model.pretrained"] is False:
        out["model.pretrained"] = ""
    return out


def train_command(workdir: pathlib.Path, values: dict[str, Any], config: str = "default") -> list[str]:
    """The ``caco-jax train`` command of one run (as ``python -m caco_jax``, so it is this Python's)."""
    return [sys.executable, "-m", "caco_jax", "train", "--config", config, "--workdir", str(workdir)] + [
        f"--config.{k}={v}" for k, v in values.items()
    ]


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
                raise CacoError(
                    f"{workdir} holds a run with {key}={have!r}, but this cell wants {want!r}: "
                    "move it away or pick another --out"
                )
    if (workdir / "report.json").is_file():
        return "done"
    return "partial" if (workdir / "checkpoints").is_dir() else "new"


def run_grid(
    preset: Preset,
    out: pathlib.Path,
    *,
    pretrained: str,
    data_dir: str,
    manual_dir: str,
    isic_dir: str = "",
    cells: Sequence[str] = (),
    seeds: Sequence[int] = (),
    dry_run: bool = False,
    extra: dict[str, Any] | None = None,
    config: str = "",
    runner: Callable[[list[str], pathlib.Path], int] | None = None,
    log: Callable[[str], None] = print,
) -> list[pathlib.Path]:
    """Trains (or resumes) every unfinished run of the chosen cells, then the external evaluation."""
    runner = runner or _run_logged
    chosen = [c for c in preset.cells if not cells or c.name in cells]
    unknown = set(cells) - {c.name for c in preset.cells}
    if unknown:
        raise UsageError(
            f"unknown cell(s) {sorted(unknown)} in preset {preset.name!r}; cells: {[c.name for c in preset.cells]}"
        )
    done = []
    for cell in chosen:
        for seed in [s for s in cell.seeds if not seeds or s in seeds]:
            workdir = run_dir(out, preset, cell, seed)
            values = overrides(
                preset, cell, seed, pretrained=pretrained, data_dir=data_dir, manual_dir=manual_dir, extra=extra
            )
            state = status(workdir, values)
            cmd = train_command(workdir, values, config or cell.config)
            if dry_run:
                log(f"[{state}] {shlex.join(cmd)}")
                continue
            if state != "done":
                log(f"{cell.name} seed {seed}: {'resuming' if state == 'partial' else 'training'} in {workdir}")
                t0 = time.perf_counter()
                if runner(cmd, workdir / "reproduce.log") != 0:
                    raise CacoError(
                        f"training {workdir} failed: see {workdir / 'reproduce.log'}; rerun the same "
                        "command to resume it"
                    )
                log(f"  finished in {(time.perf_counter() - t0) / 60:.1f} min")
            else:
                log(f"{cell.name} seed {seed}: done, skipped")
            if isic_dir and not (workdir / "report_isic2018_test_test.json").is_file():
                ev = [
                    sys.executable,
                    "-m",
                    "caco_jax",
                    "evaluate",
                    "--workdir",
                    str(workdir),
                    "--dataset",
                    "isic2018_test",
                    "--manual_dir",
                    isic_dir,
                    "--data_dir",
                    data_dir,
                ]
                if runner(ev, workdir / "reproduce_isic.log") != 0:
                    raise CacoError(f"ISIC evaluation of {workdir} failed: see {workdir / 'reproduce_isic.log'}")
            done.append(workdir)
    return done


def _run_logged(cmd: list[str], log_file: pathlib.Path) -> int:
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "a") as fh:
        fh.write(f"$ {shlex.join(cmd)}\n")
        fh.flush()
        return subprocess.call(cmd, stdout=fh, stderr=subprocess.STDOUT)
