"""The CPU side: a campaign archive merged into the runs folder, the docs of the presets it touched rebuilt
(as ``caco-jax reproduce --report_only`` does), and its benchmark JSON copied to docs/benchmark_<gpu>.json."""

from __future__ import annotations

import json
import pathlib
import shlex
import sys
import tempfile
from collections.abc import Callable
from typing import Any

from caco_jax.errors import UsageError
from caco_jax.experiments import grid, presets as presets_lib
from caco_jax.experiments.presets import Preset
from campaign import archive, figures, plan


def finished_runs(preset: Preset, runs_root: pathlib.Path) -> set[tuple[str, str]]:
    """(cell, seed) of the preset's runs with a report under ``runs_root``."""
    return {
        (c.name, str(s))
        for c in preset.cells
        for s in c.seeds
        if (grid.run_dir(runs_root, preset, c, s) / "report.json").is_file()
    }


def dropped_runs(old_json: pathlib.Path, finished: set[tuple[str, str]]) -> list[str]:
    """Runs (``cell_sN``) the current docs JSON reports that are not among ``finished``."""
    if not old_json.is_file():
        return []
    old = json.loads(old_json.read_text()).get("rows", [])
    return sorted(f"{r['cell']}_s{s}" for r in old for s in r.get("runs", {}) if (r["cell"], str(s)) not in finished)


def rebuild_docs(
    preset: Preset,
    runs_root: pathlib.Path,
    docs: pathlib.Path,
    trained: str,
    *,
    force: bool,
    log: Callable[[str], None],
) -> pathlib.Path | None:
    """docs/results_<preset>.{md,json,png} from the finished runs under ``runs_root``, by ``caco-jax reproduce
    --report_only`` (run here, so that a preset of --preset_module is known to it); not when that would drop
    runs the current docs report (their folders are elsewhere) unless ``force``."""
    from caco_jax.cli import reproduce

    lost = dropped_runs(docs / f"{preset.stem}.json", finished_runs(preset, runs_root))
    if lost and not force:
        log(
            f"docs/{preset.stem}: not rebuilt: {docs} reports runs that {runs_root} lacks ({', '.join(lost)}); "
            "merge their folders too, or pass --force to rebuild without them"
        )
        return None
    presets_lib.PRESETS.setdefault(preset.name, preset)
    argv = [
        "--preset",
        preset.name,
        "--report_only",
        "--out",
        str(runs_root),
        "--docs",
        str(docs),
        "--trained_on",
        trained,
    ]
    log(f"docs: caco-jax reproduce {shlex.join(argv)}")
    saved, sys.argv = sys.argv, ["reproduce", *argv]  # the docs' header quotes sys.argv as the command
    try:
        rc = reproduce.main(argv)
    finally:
        sys.argv = saved
    if rc != 0:
        log(f"docs/{preset.stem}: caco-jax reproduce --report_only failed (exit {rc})")
        return None
    return docs / f"{preset.stem}.md"


def copy_benchmarks(
    benches: dict[str, Any], docs: pathlib.Path, gpu: str, log: Callable[[str], None]
) -> list[pathlib.Path]:
    """meta/benchmark<suffix>.json -> docs/benchmark_<gpu><suffix>.json; a partial one never replaces a
    complete one."""
    written = []
    for name, result in benches.items():
        target = docs / f"benchmark_{figures.slug(gpu)}{name[len('benchmark') : -len('.json')]}.json"
        if result.get("partial") and target.is_file() and not json.loads(target.read_text()).get("partial"):
            log(f"{name}: partial, {target} kept")
            continue
        docs.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(result, indent=2) + "\n")
        written.append(target)
        log(f"benchmark: {target}")
    return written


def merge(
    path: pathlib.Path,
    runs_root: pathlib.Path,
    docs: pathlib.Path,
    *,
    preset_module: str = "",
    force: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Unpacks the archive's runs into ``runs_root`` (over older copies), rebuilds the docs of their presets
    and copies the benchmark JSON; returns what it wrote."""
    with tempfile.TemporaryDirectory() as tmp, archive.open_archive(path, pathlib.Path(tmp)) as tar:
        written = archive.extract_runs(tar, runs_root, replace=True, log=log)
        env = archive.read_json(tar, "meta/env.json", {}) or {}
        campaign = archive.read_json(tar, "meta/campaign.json", {}) or {}
        names = [
            m.name.split("/", 1)[1]
            for m in tar.getmembers()
            if m.name.startswith("meta/benchmark") and m.name.endswith(".json")
        ]
        benches = {n: archive.read_json(tar, f"meta/{n}") for n in names}
    log(f"merged {len(written)} run(s) into {runs_root}: {', '.join(written) or 'none'}")
    trained = figures.trained_on(env, campaign.get("parallel"))
    docs_written = []
    for name in sorted({k.split("/")[0] for k in written}):
        try:
            (preset,) = plan.load_presets([name], preset_module)
        except UsageError as e:
            log(f"docs for {name}: skipped ({e})")
            continue
        md = rebuild_docs(preset, runs_root, docs, trained, force=force, log=log)
        if md:
            docs_written.append(md)
    bench = copy_benchmarks({k: v for k, v in benches.items() if v}, docs, figures.gpu_name(env), log)
    return {"runs": written, "docs": docs_written, "benchmarks": bench, "trained_on": trained}
