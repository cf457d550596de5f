"""Which runs of the reproduction grids are pending, in which order, and whether one fits the time left.

Everything a run is (its folder, its config overrides, its ``caco-jax train`` command, whether it is
new, partial or done) comes from ``caco_jax.experiments.grid``, as ``caco-jax reproduce`` would use it.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import pathlib
import statistics
from collections.abc import Callable, Collection, Sequence
from typing import Any

from caco_jax.errors import CacoError, UsageError
from caco_jax.experiments import grid, presets as presets_lib
from caco_jax.experiments.presets import Preset

DEFAULT_PRESETS = ("paper", "leakage", "recipe")
DEFAULT_EPOCHS = 100  # configs/default.py, when neither the preset nor the overrides set num_epochs


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One run of a grid: where it lives, how it is started, how far it is."""

    preset: str
    cell: str
    seed: int
    workdir: pathlib.Path
    command: tuple[str, ...]
    state: str  # new | partial | done (grid.status)
    epochs: int

    @property
    def key(self) -> str:
        return f"{self.preset}/{self.cell}_s{self.seed}"


def load_presets(names: Sequence[str], module: str = "") -> list[Preset]:
    """The named presets, from caco_jax's PRESETS or (first) a ``PRESETS`` dict in the file ``module``."""
    table = dict(presets_lib.PRESETS)
    if module:
        spec = importlib.util.spec_from_file_location("campaign_presets", module)
        if spec is None or spec.loader is None:
            raise UsageError(f"--preset_module {module}: not a Python file")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        table |= dict(getattr(mod, "PRESETS", {}))
    unknown = [n for n in names if n not in table]
    if unknown:
        raise UsageError(f"unknown preset(s) {unknown}; known: {sorted(table)}")
    return [table[n] for n in names]


def plan_runs(
    chosen: Sequence[Preset],
    runs_root: pathlib.Path,
    *,
    pretrained: str,
    data_dir: str,
    manual_dir: str = "",
    extra: dict[str, Any] | None = None,
    config: str = "",
    known_done: Collection[str] = (),
    log: Callable[[str], None] = print,
) -> list[RunSpec]:
    """Every run of the presets, in priority order: partial runs first (their progress is kept), then by
    seed (all seed-0 cells of the first preset, of the second, ..., then seed 1 ...), then preset and cell
    order. ``known_done`` holds keys (``preset/cell_sN``) finished elsewhere (an earlier slot)."""
    ranked = []
    for p_rank, preset in enumerate(chosen):
        for c_rank, cell in enumerate(preset.cells):
            for s_rank, seed in enumerate(cell.seeds):
                workdir = grid.run_dir(runs_root, preset, cell, seed)
                values = grid.overrides(
                    preset, cell, seed, pretrained=pretrained, data_dir=data_dir, manual_dir=manual_dir, extra=extra
                )
                key = f"{preset.name}/{cell.name}_s{seed}"
                try:
                    state = "done" if key in known_done else grid.status(workdir, values)
                except CacoError as e:
                    log(f"skipping {key}: {e}")
                    continue
                spec = RunSpec(
                    preset.name,
                    cell.name,
                    seed,
                    workdir,
                    tuple(grid.train_command(workdir, values, config or cell.config)),
                    state,
                    int(values.get("num_epochs", DEFAULT_EPOCHS)),
                )
                ranked.append(((state != "partial", s_rank, p_rank, c_rank), spec))
    return [spec for _, spec in sorted(ranked, key=lambda item: item[0])]


def pending(specs: Sequence[RunSpec]) -> list[RunSpec]:
    return [s for s in specs if s.state != "done"]


def epoch_rows(workdir: pathlib.Path, since: float = 0.0) -> list[dict[str, Any]]:
    """The run's epoch rows of metrics.jsonl written at or after the wall time ``since``."""
    path = workdir / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        if '"kind": "epoch"' not in line:
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line being written
            continue
        if row.get("time", 0.0) >= since:
            rows.append(row)
    return rows


def epochs_left(spec: RunSpec) -> int:
    return max(0, spec.epochs - len(epoch_rows(spec.workdir)))


@dataclasses.dataclass(frozen=True)
class Pace:
    """A run alone on the card: seconds from its start to steady training, and per epoch (train + validation)."""

    startup_s: float
    epoch_s: float

    def run_s(self, epochs: int, epoch_s: float | None = None) -> float:
        return self.startup_s + epochs * (self.epoch_s if epoch_s is None else epoch_s)


def shared_epoch_s(pace: Pace, observed: Sequence[float], running: int) -> float:
    """One epoch's seconds for a run started beside ``running`` others: from their epochs measured while
    sharing (each slowed by one more run), else the run alone times the runs on the card (no gain assumed)."""
    if observed and running:
        return statistics.median(observed) * (running + 1) / running
    return pace.epoch_s * (running + 1)


def fits(spec: RunSpec, pace: Pace | None, seconds_left: float, observed: Sequence[float], running: int) -> bool:
    """Would ``spec`` finish in ``seconds_left`` if started now? Always True without a measured pace."""
    if pace is None:
        return True
    return pace.run_s(epochs_left(spec), shared_epoch_s(pace, observed, running)) <= seconds_left


POLICIES = ("fits", "strict", "always")


def choose(
    queue: Sequence[RunSpec],
    pace: Pace | None,
    seconds_left: float,
    observed: Sequence[float],
    running: int,
    policy: str = "fits",
) -> RunSpec | None:
    """The next run to start, or None. ``always``: the first in the queue; ``strict``: the first that fits;
    ``fits``: the first that fits, else (with nothing running, so that the card never idles) the first."""
    if not queue:
        return None
    if policy == "always":
        return queue[0]
    fitting = next((s for s in queue if fits(s, pace, seconds_left, observed, running)), None)
    if fitting is None and policy == "fits" and running == 0:
        return queue[0]
    return fitting
