"""The campaign's phases, in order, each under its own deadline: the environment, the lean benchmark, one
paper-recipe run alone, then the pending grid runs side by side until the end of the budget; then the pack."""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import shlex
import shutil
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

from caco_jax.experiments import grid
from campaign import archive, figures, plan
from campaign.procs import Clock, Log, Proc, child_env, run_until, stop_all

PHASES = ("env", "bench", "probe", "grid")
# Extra benchmark invocations, run only while the benchmark's share of the budget lasts: flags appended to
# the main invocation's (argparse keeps the last value of a repeated flag).
BENCH_EXTRAS = {
    "shifts_vjp": ["--variants", "caco", "--depthwise", "shifts_vjp", "--no_torch"],
    "b256": ["--batch_size", "256"],
}


@dataclasses.dataclass
class Campaign:
    """Everything the phases share: options, folders, the clock and log, and what has been measured."""

    args: argparse.Namespace
    repo: pathlib.Path
    out: pathlib.Path
    work: pathlib.Path
    clock: Clock
    log: Log
    summary: dict[str, Any] = dataclasses.field(default_factory=dict)
    touched: dict[str, pathlib.Path] = dataclasses.field(default_factory=dict)  # runs trained in this slot
    known_done: set[str] = dataclasses.field(default_factory=set)
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)  # meta/<name> files of the archive

    @property
    def runs_root(self) -> pathlib.Path:
        return self.work / "runs"

    def env(self, parallel: int = 0) -> dict[str, str]:
        return child_env(self.repo, self.work, parallel=parallel)

    def specs(self) -> list[plan.RunSpec]:
        a = self.args
        return plan.plan_runs(
            plan.load_presets(a.presets, a.preset_module),
            self.runs_root,
            pretrained=a.pretrained,
            data_dir=a.data_dir,
            manual_dir=a.manual_dir,
            extra=a.extra,
            config=a.config,
            known_done=self.known_done,
            log=self.log,
        )


def bench_commands(c: Campaign) -> list[tuple[str, list[str]]]:
    """(tag, command) of each benchmark invocation; the first writes OUT/benchmark.json."""
    base = shlex.split(c.args.bench_flags)
    out = []
    for tag, extra in [("benchmark", []), *((f"benchmark_{e}", BENCH_EXTRAS[e]) for e in c.args.bench_extras)]:
        path = (c.out if tag == "benchmark" else c.work) / f"{tag}.json"
        out.append((tag, [sys.executable, "-m", "caco_jax", "benchmark", *base, *extra, "--out", str(path)]))
    return out


def phase_env(c: Campaign) -> None:
    """The environment, recorded by tools/campaign/envinfo.py in its own process."""
    path = c.out / "env.json"
    proc = Proc(
        "env",
        [sys.executable, str(c.repo / "tools" / "campaign" / "envinfo.py"), str(path)],
        c.out / "campaign.log",
        c.env(),
        c.repo,
    )
    rc = run_until(proc, c.clock, c.clock.deadline(c.args.env_s), c.args.grace, c.log, poll_s=0.2)
    c.meta["env.json"] = json.loads(path.read_text()) if path.is_file() else {"error": f"exit {rc}"}


def phase_bench(c: Campaign) -> None:
    """The benchmark invocations in order within --bench_share of the budget; a stopped one leaves
    what it printed (compile seconds) as a partial JSON."""
    end = c.clock.deadline(c.args.bench_share * c.args.budget)
    results, calls = {}, {}
    for i, (tag, cmd) in enumerate(bench_commands(c)):
        if end - c.clock.now() < (c.args.bench_min_s if i else 5):
            c.log(f"{tag}: skipped, {max(0.0, end - c.clock.now()):.0f} s left of the benchmark's share")
            continue
        path, log_path = pathlib.Path(cmd[-1]), c.work / f"{tag}.log"
        log_path.unlink(missing_ok=True)
        c.log(f"{tag}: {shlex.join(cmd[1:])}")
        t0 = c.clock.now()
        proc = Proc(tag, cmd, log_path, c.env(), c.repo)
        rc = run_until(proc, c.clock, end, c.args.grace, c.log)
        text = log_path.read_text(errors="replace")
        with open(c.out / "campaign.log", "a") as fh:
            fh.write(text)
        if rc == 0 and path.is_file():
            results[tag] = json.loads(path.read_text())
        else:
            why = "stopped at the end of its share" if proc.terminated_at else "failed"
            results[tag] = figures.salvage(text, f"exit {rc}: {why}")
            path.write_text(json.dumps(results[tag], indent=2) + "\n")
        calls[tag] = {"argv": cmd[3:], "rc": rc, "seconds": c.clock.now() - t0, "partial": rc != 0}
        c.log(f"{tag}: exit {rc} after {calls[tag]['seconds']:.0f} s")
        c.meta[f"{tag}.json"] = results[tag]
    rows = figures.bench_rows(results)
    c.summary["benchmark"] = {"invocations": calls, "rows": rows, "depthwise": figures.depthwise_choice(rows)}


def probe_spec(c: Campaign, specs: Sequence[plan.RunSpec]) -> tuple[plan.RunSpec | None, bool]:
    """The probe: the first pending seed of --probe_cell (it then continues in the grid phase), else that
    cell's first seed in a scratch folder (thrown away), else the first pending run; and whether scratch."""
    preset_name, _, cell_name = c.args.probe_cell.partition("/")
    for s in plan.pending(specs):
        if (s.preset, s.cell) == (preset_name, cell_name):
            return s, False
    try:
        (preset,) = plan.load_presets([preset_name], c.args.preset_module)
        cell = next(x for x in preset.cells if x.name == cell_name)
    except (ValueError, StopIteration):
        return (plan.pending(specs) or [None])[0], False
    workdir = c.work / "probe"
    shutil.rmtree(workdir, ignore_errors=True)
    a = c.args
    values = grid.overrides(
        preset,
        cell,
        cell.seeds[0],
        pretrained=a.pretrained,
        data_dir=a.data_dir,
        manual_dir=a.manual_dir,
        extra=a.extra,
    )
    cmd = grid.train_command(workdir, values, a.config or cell.config)
    return plan.RunSpec(
        preset.name,
        cell.name,
        cell.seeds[0],
        workdir,
        tuple(cmd),
        "new",
        int(values.get("num_epochs", plan.DEFAULT_EPOCHS)),
    ), True


def phase_probe(c: Campaign) -> None:
    """The probe run alone until --probe_epochs epochs (then SIGTERM: it saves and exits 75) or its
    deadline; its pace and projection go to the summary."""
    spec, scratch = probe_spec(c, c.specs())
    if spec is None:
        c.log("probe: nothing to run")
        return
    end = c.clock.deadline(c.args.probe_share * c.args.budget)
    c.log(
        f"probe: {spec.key} alone ({'scratch copy' if scratch else spec.state}), until {c.args.probe_epochs} "
        f"epochs or {end:.0f} s: {shlex.join(spec.command[1:])}"
    )
    started = time.time()
    if not scratch:
        c.touched[spec.key] = spec.workdir
    proc = Proc(f"probe {spec.key}", spec.command, spec.workdir / "reproduce.log", c.env(), c.repo)
    rc = run_until(
        proc,
        c.clock,
        end,
        c.args.grace,
        c.log,
        poll_s=c.args.poll,
        stop_when=lambda: len(plan.epoch_rows(spec.workdir, started)) >= c.args.probe_epochs,
    )
    probe = figures.probe_figures(plan.epoch_rows(spec.workdir, started), started, spec.epochs)
    c.summary["probe"] = probe | {"run": spec.key, "scratch": scratch, "rc": rc, "seconds": time.time() - started}
    c.log(f"probe: exit {rc}; " + ", ".join(f"{k} {v:.1f}" for k, v in probe.items() if isinstance(v, float)))


def _observed(running: dict[str, tuple[Proc, plan.RunSpec]]) -> list[float]:
    """The latest epoch's seconds (gap between epoch rows) of each running run that has two this slot."""
    out = []
    for proc, spec in running.values():
        times = [r["time"] for r in plan.epoch_rows(spec.workdir, proc.started)]
        if len(times) > 1:
            out.append(times[-1] - times[-2])
    return out


def phase_grid(c: Campaign) -> None:
    """Pending runs side by side until the end: the next one started (--start_policy) when one ends,
    every one still running SIGTERMed at the end."""
    a = c.args
    queue = plan.pending(c.specs())
    pace = figures.pace_of(c.summary.get("probe") or c.summary.get("previous_probe"))
    env = c.env(parallel=a.parallel)
    running: dict[str, tuple[Proc, plan.RunSpec]] = {}
    codes: dict[str, int] = {}
    started: dict[str, tuple[float, pathlib.Path]] = {}
    c.log(
        f"grid: {len(queue)} pending run(s), {a.parallel} side by side, start policy {a.start_policy}"
        + (f" (alone: {pace.startup_s:.0f} s start-up, {pace.epoch_s:.1f} s per epoch)" if pace else "")
    )
    while c.clock.left() > 0:
        for key, (proc, _) in list(running.items()):
            if proc.poll() is not None:
                codes[key] = proc.poll()  # type: ignore[assignment]
                c.log(f"{key}: exit {codes[key]} after {time.time() - proc.started:.0f} s")
                del running[key]
        while len(running) < a.parallel and queue:
            spec = plan.choose(queue, pace, c.clock.left(), _observed(running), len(running), a.start_policy)
            if spec is None:
                break
            queue.remove(spec)
            running[spec.key] = (Proc(spec.key, spec.command, spec.workdir / "reproduce.log", env, c.repo), spec)
            c.touched[spec.key] = spec.workdir
            started[spec.key] = (time.time(), spec.workdir)
            c.log(f"{spec.key}: started ({spec.state}, {plan.epochs_left(spec)} epochs left), {len(running)} running")
        if not running:
            c.log("grid: " + (f"nothing pending fits in the {c.clock.left():.0f} s left" if queue else "all done"))
            break
        time.sleep(a.poll)
    stop_all([p for p, _ in running.values()], a.grace, c.log)
    for key, (proc, _) in running.items():
        codes[key] = proc.poll()  # type: ignore[assignment]
        c.log(f"{key}: exit {codes[key]}" + (" (checkpoint saved, resumes next time)" if codes[key] == 75 else ""))
    c.summary["grid"] = {"exit_codes": codes, "not_started": [s.key for s in queue], "rates": _rates(started)}


def _rates(started: dict[str, tuple[float, pathlib.Path]]) -> dict[str, Any]:
    """Per grid run of this slot: epochs trained and the median train images/s while sharing the card."""
    out = {}
    for key, (since, workdir) in started.items():
        rows = plan.epoch_rows(workdir, since)
        rates = [r.get("images_per_sec", 0.0) for r in rows[1:] or rows]
        out[key] = {"epochs": len(rows), "train_images_per_s": statistics.median(rates) if rates else None}
    return out


def phase_pack(c: Campaign) -> list[pathlib.Path]:
    """The results archive (in parts when it exceeds --part_mb) with this slot's runs and every JSON."""
    done = c.known_done | {k for k, w in _all_runs(c.runs_root).items() if (w / "report.json").is_file()}
    files, manifest = archive.select(c.touched, int(c.args.archive_mb * archive.MiB))
    c.summary["archive"] = {"runs": manifest["runs"], "left_out": manifest["left_out"], "done": len(done)}
    for item in manifest["left_out"]:
        c.log(
            f"archive: {item['run']} {item['kind']} left out ({item['bytes'] / archive.MiB:.1f} MiB over "
            f"--archive_mb {c.args.archive_mb})"
        )
    c.log(f"pack: {len(c.touched)} run(s), {len(done)} finished in all; {c.clock.now():.0f} s of {c.args.budget}")
    files.append((c.out / "campaign.log", "meta/campaign.log"))
    meta = {**c.meta, "campaign.json": c.summary, "manifest.json": manifest}
    written = archive.write(c.out, files, meta, sorted(done), int(c.args.part_mb * archive.MiB))
    c.log("archive: " + ", ".join(f"{p.name} ({p.stat().st_size / archive.MiB:.2f} MiB)" for p in written))
    return written


def _all_runs(root: pathlib.Path) -> dict[str, pathlib.Path]:
    return {f"{d.parent.name}/{d.name}": d for d in root.glob("*/*_s*") if d.is_dir()}
