"""caco-jax and torch under each C memory allocator: fresh processes, alternated rounds, one JSON.

Each measurement is one ``caco-jax benchmark`` process (caco-jax's train / eval / batch-1 rows and
torchvision eager's, timed in the same rounds) started with ``LD_PRELOAD`` naming the allocator
(none for glibc). Rounds alternate the allocators, rotating their order, so that a slow spell of
the shared machine falls on all of them. ``--split`` adds, per allocator and round, the
user / kernel time and page faults of one train and one eval step (tools/cpu_time_split.py);
``--epochs N`` adds the real-data epoch time of ``configs/recipe.py`` on the CPU protocol.

    python tools/measure_allocators.py --rounds 5 --split 2 --epochs 3 --out docs/allocators_cpu.json
    python tools/measure_allocators.py --table docs/allocators_cpu.json     # the markdown tables

CACO_JAX_ALLOCATOR=glibc is set in every child, so the command's own allocator choice never
overrides the one measured.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from caco_jax import allocator  # noqa: E402

SIZES = {"128x112": (128, 112, 128), "16x64": (16, 64, 64)}  # batch, image size, load size


def _libraries(names: list[str], mimalloc: str) -> dict[str, str | None]:
    libs: dict[str, str | None] = {}
    for name in names:
        path = mimalloc if name == "mimalloc" and mimalloc else allocator.find(name)
        if name != allocator.SYSTEM and path is None:
            sys.exit(f"allocator {name} is not installed (docs/performance.md says which package has it)")
        libs[name] = path
    return libs


def _versions() -> dict[str, str]:
    """The allocator packages' versions (Debian's, and PyPI's cmeel-mimalloc), as far as they can be read."""
    import importlib.metadata

    out = {}
    for pkg in ("libtcmalloc-minimal4", "libgoogle-perftools4", "libjemalloc2", "libmimalloc2.0", "libc6"):
        proc = subprocess.run(["dpkg-query", "-W", "-f=${Version}", pkg], capture_output=True, text=True, check=False)
        if proc.returncode == 0 and proc.stdout:
            out[pkg] = proc.stdout
    try:
        out["cmeel-mimalloc"] = importlib.metadata.version("cmeel-mimalloc")
    except importlib.metadata.PackageNotFoundError:
        pass
    return out


def _env(lib: str | None) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    env["CACO_JAX_ALLOCATOR"] = allocator.SYSTEM
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    if lib:
        env["LD_PRELOAD"] = lib
    return env


def _benchmark(size: str, lib: str | None, args: argparse.Namespace) -> dict[str, Any]:
    batch, image, load = SIZES[size]
    with tempfile.TemporaryDirectory() as tmp:
        out = pathlib.Path(tmp) / "b.json"
        cmd = [
            sys.executable,
            "-m",
            "caco_jax",
            "benchmark",
            f"--batch_size={batch}",
            f"--image_size={image}",
            f"--load_size={load}",
            "--variants=caco",
            "--dtypes=float32",
            "--torch_modes=eager",
            "--torch_threads=2",
            f"--windows={args.windows}",
            f"--steps={args.steps}",
            "--no_overhead",
            "--no_onnx",
            f"--out={out}",
        ]
        proc = subprocess.run(cmd, env=_env(lib), capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"benchmark failed ({lib}):\n{proc.stderr[-3000:]}")
        result = json.loads(out.read_text())
    rows = {}
    for row in result["rows"]:
        key = "caco_jax" if row["framework"] == "caco-jax" else "torch_eager"
        rows[key] = {
            "train_img_s": row["images_per_s"]["median"],
            "eval_img_s": row["eval_images_per_s"]["median"],
            "latency_ms": row["latency_ms"]["median"],
        }
    return {"rows": rows, "load_average": result.get("load_average")}


def _split(lib: str | None) -> dict[str, Any]:
    cmd = [sys.executable, str(ROOT / "tools" / "cpu_time_split.py"), "--child", "--malloc=system"]
    proc = subprocess.run(cmd, env=_env(lib), capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"cpu_time_split failed ({lib}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _epochs(lib: str | None, args: argparse.Namespace) -> dict[str, Any]:
    """Two epochs of configs/recipe.py on the CPU protocol; the second epoch's wall time from metrics.jsonl."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable,
            "-m",
            "caco_jax",
            "train",
            "--config",
            "recipe",
            "--workdir",
            f"{tmp}/run",
            "--config.data.image_size=112",
            "--config.batch_size=128",
            "--config.data.split_by=lesion",
            "--config.num_epochs=2",
            f"--config.data.data_dir={args.data_dir}",
            f"--config.model.pretrained={args.pretrained}",
            "--config.evaluation.tta=False",
            "--config.progress_bar=False",
            "--compile_cache=off",
        ]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=_env(lib), capture_output=True, text=True, check=False)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"train failed ({lib}):\n{proc.stderr[-3000:]}")
        rows = [json.loads(line) for line in (pathlib.Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in rows if "epoch_seconds" in r]
    if len(epochs) < 2:
        raise RuntimeError(f"no epoch times in metrics.jsonl ({lib}): {rows[-3:]}")
    return {
        "epoch_s": [r["epoch_seconds"] + r["val_seconds"] for r in epochs],
        "train_img_s": [r["images_per_sec"] for r in epochs],
        "wall_s": wall,
    }


def measure(args: argparse.Namespace) -> dict[str, Any]:
    names = args.allocators.split(",")
    libs = _libraries(names, args.mimalloc)
    out = pathlib.Path(args.out)
    data: dict[str, Any] = json.loads(out.read_text()) if out.exists() else {}
    data.setdefault("libraries", libs)
    data.setdefault("machine", args.machine)
    data.setdefault("versions", _versions())
    data.setdefault("runs", [])
    done = {(r["kind"], r["size"], r["allocator"], r["round"]) for r in data["runs"]}
    epoch_names = args.epoch_allocators.split(",") if args.epoch_allocators else names
    kinds = [("benchmark", size, args.rounds, names) for size in args.sizes.split(",")]
    kinds += [("split", "128x112", args.split, names)]
    kinds += [("epoch", "recipe_cpu", args.epochs, epoch_names)]
    for r in range(args.rounds):
        for kind, size, rounds, kind_names in kinds:
            order = kind_names[r % len(kind_names) :] + kind_names[: r % len(kind_names)]
            for name in order:
                if (kind, size, name, r) in done or r >= rounds:
                    continue
                t0 = time.time()
                if kind == "benchmark":
                    result = _benchmark(size, libs[name], args)
                elif kind == "split":
                    result = _split(libs[name])
                else:
                    result = _epochs(libs[name], args)
                data["runs"].append({"kind": kind, "size": size, "allocator": name, "round": r, "result": result})
                out.write_text(json.dumps(data, indent=1) + "\n")  # after every process: resumable
                print(
                    f"round {r + 1}/{args.rounds} {kind} {size} {name}: {time.time() - t0:.0f} s {result}", flush=True
                )
    return data


def _median_spread(values: list[float], digits: int = 0) -> str:
    med = statistics.median(values)
    return f"{med:,.{digits}f} ({min(values):,.{digits}f}-{max(values):,.{digits}f})"


def table(data: dict[str, Any]) -> str:
    """Markdown: per size, each allocator's medians over rounds (min-max), caco-jax and torch, and ratios."""
    runs = data["runs"]
    names = list(dict.fromkeys(r["allocator"] for r in runs))
    lines = []
    for size in dict.fromkeys(r["size"] for r in runs if r["kind"] == "benchmark"):
        lines += [
            f"\nBatch {size.replace('x', ' / ')} px, median over rounds (min-max), one process each:\n",
            "| allocator | rounds | caco-jax train img/s | caco-jax eval img/s | caco-jax batch-1 ms | "
            "torch train img/s | torch eval img/s | torch batch-1 ms |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for name in names:
            rs = [
                r["result"]["rows"]
                for r in runs
                if r["kind"] == "benchmark" and r["size"] == size and r["allocator"] == name
            ]
            if not rs:
                continue
            cells = [
                _median_spread([x[fw][k] for x in rs], 2 if k == "latency_ms" else 0)
                for fw in ("caco_jax", "torch_eager")
                for k in ("train_img_s", "eval_img_s", "latency_ms")
            ]
            lines.append(f"| {name} | {len(rs)} | " + " | ".join(cells) + " |")
    splits = [r for r in runs if r["kind"] == "split"]
    if splits:
        lines += [
            "\nOne step at batch 128 / 112 px (tools/cpu_time_split.py), median over rounds:\n",
            "| allocator | step | wall ms | user ms | kernel ms | minor faults / step |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for name in names:
            rs = [r["result"] for r in splits if r["allocator"] == name]
            for step in ("train", "eval") if rs else ():
                med = {k: statistics.median(x[step][k] for x in rs) for k in rs[0][step]}
                lines.append(
                    f"| {name} | {step} | {med['wall_ms']:.0f} | {med['user_ms']:.0f} | "
                    f"{med['sys_ms']:.0f} | {med['minor_faults']:,.0f} |"
                )
    epochs = [r for r in runs if r["kind"] == "epoch"]
    if epochs:
        lines += [
            "\nconfigs/recipe.py, CPU protocol, real HAM10000: the second epoch (validation included), s:\n",
            "| allocator | rounds | epoch 2 s, median (min-max) | img/s (7,936 images) |",
            "|---|---:|---:|---:|",
        ]
        for name in names:
            es = [r["result"]["epoch_s"][1] for r in epochs if r["allocator"] == name]
            if es:
                lines.append(f"| {name} | {len(es)} | {_median_spread(es, 1)} | {7936 / statistics.median(es):.0f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--allocators", default="glibc,tcmalloc_minimal,tcmalloc,jemalloc,mimalloc")
    p.add_argument("--mimalloc", default="", help="path of the mimalloc library (default: found as the others)")
    p.add_argument("--sizes", default="128x112,16x64")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--windows", type=int, default=3)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--split", type=int, default=0, help="rounds of user / kernel time and page faults per step")
    p.add_argument("--epochs", type=int, default=0, help="rounds of the real-data epoch time of configs/recipe.py")
    p.add_argument("--epoch_allocators", default="", help="allocators of the epoch rounds (default: all)")
    p.add_argument("--data_dir", default="data/tfds")
    p.add_argument("--pretrained", default="weights/mobilenet_v3_small-047dcff4-features.pth")
    p.add_argument("--machine", default="")
    p.add_argument("--out", default="allocators.json", help="JSON, appended to after each process (resumable)")
    p.add_argument("--table", default="", help="print the tables of this JSON and exit")
    args = p.parse_args()
    if args.table:
        print(table(json.loads(pathlib.Path(args.table).read_text())))
        return
    print(table(measure(args)))


if __name__ == "__main__":
    main()
