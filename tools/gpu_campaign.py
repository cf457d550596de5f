"""One command for a slot of GPU time: a fixed wall-clock budget spent in order, stopping cleanly at its end.

    python tools/gpu_campaign.py --budget 540 --out DIR [--resume_from ARCHIVE] [--dry_run]
    python tools/gpu_campaign.py merge DIR/campaign.tar.gz --runs runs/gpu --docs docs
    python tools/gpu_campaign.py pack --runs runs/gpu          # fill the carried folders for a bare GPU machine

Phases (each a subprocess under a deadline: SIGTERM at it, SIGKILL after --grace seconds):
  env    GPUs, driver, jax / jaxlib / CUDA and torch versions -> DIR/env.json;
  bench  one ``caco-jax benchmark`` (caco and se, float32 and bfloat16, batch 128, 224 px, depthwise conv,
         against torch eager, channels_last + bf16 autocast and torch.compile) -> DIR/benchmark.json, then,
         while --bench_share of the budget lasts, caco with depthwise shifts_vjp and batch 256;
  probe  the paper's recipe (--probe_cell) alone from the real pipeline (data.cache=True) for --probe_epochs
         epochs: train images/s, seconds per epoch, start-up, the 100-epoch wall time projected;
  grid   the pending runs of --presets (partial runs first, then seed 0 of each preset in order, then seed 1,
         ...), --parallel side by side on the card, each as ``caco-jax reproduce`` would start it, the next
         started when one ends (with --start_policy fits: only if it should finish before the end), every
         one SIGTERMed at the end (a checkpoint is saved; exit 75).
Then DIR/campaign.tar.gz (parts .00, .01, ... past --part_mb) holds this slot's runs (no checkpoints of
finished runs; unfinished runs' latest checkpoint while --archive_mb allows), done.json and meta/ (campaign
summary, env, benchmark JSONs, the log); DIR/campaign.log is the log. --resume_from an earlier archive (or
the bundle ``pack`` writes) continues its unfinished runs and skips its finished ones. How to run it on the
lent GPU or any GPU box: tools/campaign/README.md.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shlex
import sys
import tempfile

# The repository, then tools/ (for campaign), ahead of the rest of sys.path.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tools"))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from caco_jax.errors import CacoError, UsageError
from campaign import archive, carry, phases, plan
from campaign.procs import Clock, Log

REPO = pathlib.Path(__file__).resolve().parents[1]
LEAN_BENCH = (
    "--variants caco,se --dtypes float32,bfloat16 --depthwise conv --batch_size 128 --image_size 224 "
    "--torch_modes eager,channels_last_bf16,compile --windows 3 --steps 10 --warmup 2 --latency_calls 20 "
    "--no_overhead --no_onnx"
)
PRETRAINED = f"weights/{carry.PRETRAINED}"


def _csv(text: str) -> list[str]:
    return [x for x in text.split(",") if x]


def run_parser() -> argparse.ArgumentParser:
    """The campaign's flags."""
    p = argparse.ArgumentParser(
        prog="gpu_campaign.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--budget", type=float, default=540, help="wall-clock seconds from start, packing included")
    p.add_argument("--out", type=pathlib.Path, required=True, help="where the archive, log and JSONs go")
    p.add_argument(
        "--work",
        type=pathlib.Path,
        help="runs, logs, caches (default OUT/work; keep it on a persistent box to resume without an archive)",
    )
    p.add_argument("--phases", type=_csv, default=list(phases.PHASES), help="subset of env,bench,probe,grid")
    p.add_argument("--presets", type=_csv, default=list(plan.DEFAULT_PRESETS), help="grids, in priority order")
    p.add_argument("--preset_module", default="", help="a .py file whose PRESETS dict adds presets (tests)")
    p.add_argument("--config", default="", help="shipped config for every run instead of each cell's (tests)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override for every run (default data.cache=True)",
    )
    p.add_argument("--data_dir", default="data/tfds")
    p.add_argument("--manual_dir", default="")
    p.add_argument("--pretrained", default=PRETRAINED, help="torchvision backbone .pth ('' for none)")
    p.add_argument("--parallel", type=int, default=4, help="grid runs side by side on the card")
    p.add_argument(
        "--start_policy",
        choices=plan.POLICIES,
        default="fits",
        help="fits: the first pending run that should end before the budget (the probe's pace), else, "
        "with none running, the first; strict: only runs that fit; always: queue order",
    )
    p.add_argument("--probe_cell", default="paper/caco_joint", help="PRESET/CELL of the probe run")
    p.add_argument("--probe_epochs", type=int, default=3)
    p.add_argument("--probe_share", type=float, default=0.2, help="fraction of the budget for the probe at most")
    p.add_argument("--bench_share", type=float, default=0.25, help="fraction of the budget for the benchmark")
    p.add_argument("--bench_flags", default=LEAN_BENCH, help="flags of the main caco-jax benchmark")
    p.add_argument(
        "--bench_extras",
        type=_csv,
        default=list(phases.BENCH_EXTRAS),
        help=f"later invocations while time remains, of {','.join(phases.BENCH_EXTRAS)}",
    )
    p.add_argument("--bench_min_s", type=float, default=60, help="seconds a later invocation needs to start")
    p.add_argument("--env_s", type=float, default=90, help="time limit of the environment phase")
    p.add_argument("--grace", type=float, default=30, help="seconds between SIGTERM and SIGKILL")
    p.add_argument("--pack_s", type=float, default=20, help="seconds kept for packing")
    p.add_argument("--poll", type=float, default=2.0, help="seconds between checks of the running processes")
    p.add_argument("--archive_mb", type=float, default=45, help="cap on the archive's weights and checkpoints")
    p.add_argument("--part_mb", type=float, default=15, help="largest archive file (the device tool: 16 MiB)")
    p.add_argument("--resume_from", action="append", default=[], type=pathlib.Path, help="earlier archive(s)")
    p.add_argument("--dry_run", action="store_true", help="print the plan, run nothing")
    return p


def _finish_args(args: argparse.Namespace) -> argparse.Namespace:
    unknown = set(args.phases) - set(phases.PHASES) or set(args.bench_extras) - set(phases.BENCH_EXTRAS)
    if unknown:
        raise UsageError(f"unknown phase or benchmark extra: {sorted(unknown)}")
    args.extra = {"data.cache": "True"}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--set {item!r}: expected KEY=VALUE")
        args.extra[key] = value
    for name in ("data_dir", "manual_dir", "pretrained"):
        value = getattr(args, name)
        if value and (name != "pretrained" or pathlib.Path(value).exists()):
            setattr(args, name, str(pathlib.Path(value).resolve()))
    args.out = args.out.resolve()
    args.work = (args.work or args.out / "work").resolve()
    return args


def resume(c: phases.Campaign) -> None:
    """Unpacks each --resume_from archive's runs (those not here) and learns its finished runs and probe."""
    for path in c.args.resume_from:
        with tempfile.TemporaryDirectory() as tmp, archive.open_archive(path, pathlib.Path(tmp)) as tar:
            written = archive.extract_runs(tar, c.runs_root, replace=False, log=c.log)
            done = archive.read_json(tar, "done.json", []) or []
            previous = (archive.read_json(tar, "meta/campaign.json", {}) or {}).get("probe")
        c.known_done |= set(done)
        if previous and previous.get("epochs_measured"):
            c.summary["previous_probe"] = previous
        c.log(f"resume: {path}: {len(written)} run(s) unpacked, {len(done)} known finished")


def dry_run(c: phases.Campaign) -> int:
    """The plan: each phase, its share, its command(s), and the grid's queue in order."""
    a = c.args
    for path in a.resume_from:
        with tempfile.TemporaryDirectory() as tmp, archive.open_archive(path, pathlib.Path(tmp)) as tar:
            c.known_done |= set(archive.read_json(tar, "done.json", []) or [])
            print(f"resume from {path}: unpack {len(archive.run_members(tar))} run(s)")
    specs = c.specs()
    print(f"budget {a.budget:.0f} s, work ends at {c.clock.end:.0f} s (grace {a.grace:.0f} s, pack {a.pack_s:.0f} s)")
    if "env" in a.phases:
        print(f"[env] at most {a.env_s:.0f} s: python tools/campaign/envinfo.py {a.out / 'env.json'}")
    if "bench" in a.phases:
        print(f"[bench] at most {a.bench_share * a.budget:.0f} s:")
        for tag, cmd in phases.bench_commands(c):
            print(f"  {tag}: {shlex.join(cmd[1:])}")
    if "probe" in a.phases:
        spec, scratch = phases.probe_spec(c, specs)
        print(
            f"[probe] at most {a.probe_share * a.budget:.0f} s, {a.probe_epochs} epochs: "
            + (f"{spec.key}{' (scratch copy)' if scratch else ''}: {shlex.join(spec.command[1:])}" if spec else "-")
        )
    if "grid" in a.phases:
        queue = plan.pending(specs)
        print(
            f"[grid] until the end, {a.parallel} side by side, policy {a.start_policy}: {len(queue)} pending of "
            f"{len(specs)}"
        )
        for s in queue:
            print(f"  [{s.state}] {s.key}: {shlex.join(s.command[1:])}")
    print(f"[pack] {a.out / archive.NAME} (parts of {a.part_mb:g} MiB, weights/checkpoints up to {a.archive_mb:g} MiB)")
    return 0


def run(argv: list[str]) -> int:
    """One slot: resume, the chosen phases in order, then the pack (always, even after an error)."""
    args = _finish_args(run_parser().parse_args(argv))
    clock = Clock(args.budget, args.grace + args.pack_s)
    c = phases.Campaign(args, REPO, args.out, args.work, clock, Log(args.out / "campaign.log", clock))
    if args.dry_run:
        return dry_run(c)
    clock.install()
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    c.summary.update(argv=argv, budget=args.budget, parallel=args.parallel, presets=args.presets, phases={})
    c.log(f"campaign: budget {args.budget:.0f} s, phases {','.join(args.phases)}, out {args.out}, work {args.work}")
    try:
        resume(c)
        for name in phases.PHASES:
            if name not in args.phases:
                continue
            if clock.left() <= 0:
                c.log(f"{name}: skipped, no time left")
                continue
            t0 = clock.now()
            c.log(f"=== phase {name} ===")
            getattr(phases, f"phase_{name}")(c)
            c.summary["phases"][name] = {"start_s": t0, "end_s": clock.now()}
    except CacoError as e:
        c.log(f"error: {e}")
        c.summary["error"] = str(e)
    finally:
        c.summary["stopped_by_signal"] = clock.stopped_by
        c.log("=== pack ===")
        phases.phase_pack(c)
        c.log(f"campaign: done in {clock.now():.0f} s of {args.budget:.0f}")
    return 0


def merge_main(argv: list[str]) -> int:
    """``merge ARCHIVE``: runs into --runs, docs rebuilt, benchmark JSON copied."""
    from campaign.merge import merge

    p = argparse.ArgumentParser(prog="gpu_campaign.py merge", description="merge an archive into runs and docs")
    p.add_argument("archive", type=pathlib.Path, help="DIR/campaign.tar.gz (or its first part's name without .00)")
    p.add_argument("--runs", type=pathlib.Path, default=pathlib.Path("runs/gpu"))
    p.add_argument("--docs", type=pathlib.Path, default=pathlib.Path("docs"))
    p.add_argument("--preset_module", default="")
    p.add_argument("--force", action="store_true", help="rebuild docs even when they would lose runs")
    a = p.parse_args(argv)
    result = merge(a.archive, a.runs, a.docs, preset_module=a.preset_module, force=a.force)
    print(json.dumps({k: [str(x) for x in v] if isinstance(v, list) else v for k, v in result.items()}, indent=2))
    return 0


def pack_main(argv: list[str]) -> int:
    """``pack``: the carried folders filled and measured; prints the carry list and the command."""
    p = argparse.ArgumentParser(prog="gpu_campaign.py pack", description=carry.__doc__)
    p.add_argument("--runs", type=pathlib.Path, default=REPO / "runs" / "gpu", help="merged runs (resume bundle)")
    p.add_argument("--wheels", type=pathlib.Path, default=REPO.parent / "shared" / "wheels" / "py312")
    p.add_argument(
        "--pretrained",
        type=pathlib.Path,
        default=REPO.parent / "shared" / "data" / "ham10000_real" / "pretrained" / carry.PRETRAINED,
    )
    p.add_argument("--data_dir", type=pathlib.Path, default=REPO / "data" / "tfds")
    p.add_argument("--budget", type=float, default=540)
    a = p.parse_args(argv)
    result = carry.prepare(REPO, wheels=a.wheels, pretrained=a.pretrained, data_dir=a.data_dir, runs_root=a.runs)
    resume_flag = " --resume_from .campaign/resume.tar.gz" if result["resume"] else ""
    print(
        f"\ncarry: {json.dumps(result['carry'])}\ncommand (timeout_s {int(a.budget) + 50}):\n"
        "python3 -m pip install -q --no-index --no-deps --no-compile --target .site .whl/*.whl && "
        "export PYTHONPATH=$PWD/.site:$PWD PYTHONUNBUFFERED=1 && "
        f"python3 tools/gpu_campaign.py --budget {a.budget:.0f} --out $OUT --work /tmp/campaign{resume_flag}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """``merge`` / ``pack`` / ``run`` (the default) with their flags."""
    argv = sys.argv[1:] if argv is None else argv
    commands = {"merge": merge_main, "pack": pack_main, "run": run}
    try:
        if argv and argv[0] in commands:
            return commands[argv[0]](argv[1:])
        return run(argv)
    except (CacoError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
