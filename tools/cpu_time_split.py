"""Where a CPU step's time goes: user time, kernel time and page faults, with glibc's malloc as is and tuned.

Runs the trainer's own jitted train and evaluation steps (``caco_jax.benchmark.jax_steps``,
synthetic uint8 input) in a fresh interpreter per measurement and prints per step: wall ms,
user and kernel (sys) CPU ms from ``os.times()``, and minor page faults. XLA's CPU runtime
allocates each execution's temporary buffer afresh and frees it after; glibc serves such a
block with mmap and returns it with munmap, so every step faults it in again, zero-filled by
the kernel. The experiment alternates glibc's defaults ("system") with settings that keep freed
memory in the heap for reuse ("tuned": one arena, no mmap-served blocks, no trimming; applied
before anything else allocates). docs/performance.md has the figures: the tuned settings
remove the faults and most of the kernel time, and the step gets no faster (training slower).

    python tools/cpu_time_split.py                                   # caco, batch 128, 112 px
    python tools/cpu_time_split.py --rounds 3 --calls 5 --out split.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

_CHILD = "--child"
# mallopt(3) parameters, from glibc's malloc.h.
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8


def _tune_malloc() -> bool:
    """One malloc arena, no mmap-served blocks, no trimming of the heap's top (glibc only)."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018  (glibc only: other C libraries lack or ignore mallopt)
    except (OSError, AttributeError):
        return False
    settings = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 2**31 - 1))
    return all(libc.mallopt(param, value) == 1 for param, value in settings)


def _child(args: argparse.Namespace) -> None:
    applied = _tune_malloc() if args.malloc == "tuned" else False
    import resource

    import jax

    from caco_jax.benchmark.jax_steps import build_jax, eval_window, synthetic_batch, train_window
    from caco_jax.training import parallel
    from configs import default

    config = default.get_config()
    mesh = parallel.make_mesh(1)
    setup = build_jax(
        config,
        args.variant,
        "float32",
        batch_size=args.batch_size,
        image_size=args.image_size,
        load_size=args.load_size,
        mesh=mesh,
    )
    batch = synthetic_batch(args.batch_size, args.load_size, mesh)
    big = synthetic_batch(args.batch_size, args.image_size, mesh, mask=True)
    out: dict[str, object] = {"malloc_settings": applied, "devices": str(jax.devices())}
    assert setup.steps.train is not None, "build_jax builds the steps with an optimiser"
    for name, window in (
        ("train", train_window(setup, setup.steps.train, batch, args.calls)),
        ("eval", eval_window(setup, big, args.calls)),
    ):
        window()  # compile and warm up
        window()
        w0, t0, f0 = time.perf_counter(), os.times(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        window()
        w1, t1, f1 = time.perf_counter(), os.times(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        n = args.calls
        out[name] = {
            "wall_ms": 1e3 * (w1 - w0) / n,
            "user_ms": 1e3 * (t1.user - t0.user) / n,
            "sys_ms": 1e3 * (t1.system - t0.system) / n,
            "minor_faults": (f1 - f0) / n,
        }
    print(json.dumps(out))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", default="caco")
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--image_size", type=int, default=112)
    p.add_argument("--load_size", type=int, default=128)
    p.add_argument("--calls", type=int, default=5, help="steps per timed window")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds of (system, tuned)")
    p.add_argument("--out", default="", help="JSON file for the per-round figures")
    p.add_argument(_CHILD, action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--malloc", default="system", choices=("system", "tuned"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        _child(args)
        return
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    forwarded = [f"--{k}={getattr(args, k)}" for k in ("variant", "batch_size", "image_size", "load_size", "calls")]
    results: dict[str, list[dict]] = {"system": [], "tuned": []}
    for r in range(args.rounds):
        for mode in ("system", "tuned"):
            env = dict(os.environ)
            env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
            proc = subprocess.run(
                [sys.executable, os.path.abspath(__file__), *forwarded, f"--malloc={mode}", _CHILD],
                env=env,
                capture_output=True,
                text=True,
                check=False,
            )
            if proc.returncode != 0:
                sys.exit(f"round {r} ({mode}) failed:\n{proc.stderr[-3000:]}")
            results[mode].append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(f"round {r + 1}/{args.rounds} {mode}: {results[mode][-1]}", file=sys.stderr, flush=True)
    print("| step | malloc | wall ms | user ms | kernel (sys) ms | minor faults / step | img/s |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for step in ("train", "eval"):
        for mode in ("system", "tuned"):
            rows = [r[step] for r in results[mode]]
            med = {k: statistics.median(x[k] for x in rows) for k in rows[0]}
            print(
                f"| {step} | {mode} | {med['wall_ms']:.0f} | {med['user_ms']:.0f} | {med['sys_ms']:.0f} | "
                f"{med['minor_faults']:,.0f} | {1e3 * args.batch_size / med['wall_ms']:.0f} |"
            )
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "rounds": results}, f, indent=1)


if __name__ == "__main__":
    main()
