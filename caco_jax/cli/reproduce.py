"""Reproduce the paper on HAM10000: a named grid of training runs, evaluated, tabulated beside the paper.

    caco-jax reproduce --preset cpu --manual_dir /path/to/HAM10000 \\
        --pretrained /path/to/mobilenet_v3_small-047dcff4.pth [--isic_dir /path/to/ISIC2018]

Each cell of the preset's grid (attention x loss x init x seed ...) is one
``caco-jax train`` run in ``--out/<preset>/<cell>_s<seed>``: finished cells (a
``report.json`` from the same setup) are skipped, unfinished ones resume from their
last checkpoint (so stopping and rerunning the command loses at most an epoch).
Every run's best-validation weights are evaluated on the test split (by train.py)
and, with ``--isic_dir``, on the official ISIC 2018 Task 3 test set. Then
``docs/results_<preset>.md`` (+ ``.json`` and a summary figure ``.png``; a preset may name
another page, ``Preset.page``) are written:
per cell, mean +- std over seeds of accuracy, BACC (mean recall), the paper's BACC
formula, macro AUC, melanoma sensitivity, parameters and wall time, beside the
paper's figures, with the command, versions and machine at the top. A hand-written
discussion in ``docs/results_<preset>_discussion.md`` is included when present.

Presets: ``cpu`` (112 px, 10 epochs: the paper's recipe scaled to a 2-core CPU) and
``paper`` (224 px, 100 epochs, 3 seeds: the paper's Tables 2, 4 and 5, for a GPU).
``--cells a,b`` runs a subset, ``--report_only`` only rebuilds the tables from what
has finished, ``--dry_run`` prints the commands. Runs that are not in ``--out`` (trained in
another session or on another machine) keep the figures ``docs/results_<preset>.json``
recorded for them, so a cell can gain seeds without retraining the others.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from typing import Any

from caco_jax.cli import common
from caco_jax.errors import UsageError
from caco_jax.experiments import presets, run_records, sources
from caco_jax.experiments.grid import run_grid
from caco_jax.experiments.summary import aggregate, compare
from caco_jax.experiments.tables import write_results

NAME = "reproduce"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", choices=sorted(presets.PRESETS), default="cpu", help="the grid (default: cpu)")
    p.add_argument("--manual_dir", default="", help="raw HAM10000 (any official layout) to build from")
    p.add_argument("--data_dir", default="data/tfds", help="TFDS data_dir (the build is made once, here)")
    p.add_argument(
        "--pretrained",
        default="",
        help="torchvision mobilenet_v3_small ImageNet .pth (or converted dir), or 'imagenet' to fetch it",
    )
    p.add_argument("--isic_dir", default="", help="ISIC 2018 Task 3 files for the external test columns")
    p.add_argument("--out", default="runs/reproduce", help="where the runs go (one folder per cell and seed)")
    p.add_argument("--docs", default="docs", help="where results_<preset>.{md,json,png} go (default: docs)")
    p.add_argument("--cells", default="", help="comma-separated subset of the preset's cells")
    p.add_argument("--seeds", default="", help="comma-separated subset of each cell's seeds (default: all planned)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra config override for every run, e.g. data.cache=True (repeatable)",
    )
    p.add_argument("--report_only", action="store_true", help="only rebuild the tables from finished runs")
    p.add_argument(
        "--trained_on",
        default="",
        help="with --report_only: the machine that trained the runs, for the header (default: this one)",
    )
    p.add_argument("--dry_run", action="store_true", help="print each run's command and state, run nothing")
    common.add_common(p, compile_cache=False)


def _choices(args: argparse.Namespace) -> tuple[presets.Preset, list[str], list[int], dict[str, str]]:
    preset = presets.PRESETS[args.preset]
    cells = [c for c in args.cells.split(",") if c]
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s]
    except ValueError:
        raise UsageError(f"--seeds {args.seeds!r}: expected comma-separated integers, e.g. --seeds 0,1") from None
    chosen = [c for c in preset.cells if not cells or c.name in cells]
    unplanned = sorted(set(seeds) - {s for c in chosen for s in c.seeds})
    if unplanned:
        raise UsageError(
            f"--seeds {unplanned} are planned in none of the chosen cells of preset {preset.name!r} "
            f"(their seeds: {sorted({s for c in chosen for s in c.seeds})})"
        )
    extra = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--set {item!r}: expected KEY=VALUE, e.g. data.cache=True")
        extra[key] = value
    return preset, cells, seeds, extra


def run(args: argparse.Namespace) -> int:
    preset, cells, seeds, extra = _choices(args)
    out = pathlib.Path(args.out).resolve()
    if not args.report_only:
        if not args.pretrained:
            raise UsageError(
                "--pretrained is required: the paper fine-tunes torchvision's ImageNet weights "
                "(a .pth path, or 'imagenet' to fetch it)"
            )
        pretrained = args.pretrained
        if pretrained != "imagenet":
            if not pathlib.Path(pretrained).exists():
                raise UsageError(f"--pretrained {pretrained} does not exist")
            pretrained = str(pathlib.Path(pretrained).resolve())
        run_grid(
            preset,
            out,
            pretrained=pretrained,
            data_dir=str(pathlib.Path(args.data_dir).resolve()),
            manual_dir=str(pathlib.Path(args.manual_dir).resolve()) if args.manual_dir else "",
            isic_dir=args.isic_dir,
            cells=cells,
            seeds=seeds,
            dry_run=args.dry_run,
            extra=extra,
        )
        if args.dry_run:
            return 0
    command = getattr(args, "command_line", "caco-jax reproduce")
    # Runs trained elsewhere keep the figures the last results JSON recorded for them (run_records).
    previous = run_records.previous(pathlib.Path(args.docs), preset.stem)
    rows = aggregate(preset, out, previous=previous)
    comparisons = [compare(preset, out, c, rows=rows, previous=previous) for c in preset.comparisons]
    sections: dict[str, tuple[list[str], Any]] = {}
    if "sources" in preset.sections:
        found, sub = sources.source_rows(preset, out, previous), sources.reference_subgroups(preset, out, previous)
        sections["sources"] = (sources.markdown(found, sub), {"comparisons": found, "subgroups": sub})
        if sub is not None:
            from caco_jax.evaluation.trust_plots import plot_subgroups

            plot_subgroups(sub, pathlib.Path(args.docs) / sources.FIGURE)
    paths = write_results(preset, rows, pathlib.Path(args.docs), command, args.trained_on, comparisons, sections)
    print(f"results: {paths['md']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return common.main(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
