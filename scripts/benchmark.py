"""Training / evaluation throughput of caco-jax on the current accelerator, against torchvision.

    python scripts/benchmark.py                                   # the issue's setup: batch 128, 224 px
    python scripts/benchmark.py --manual_dir /path/to/HAM10000 --build_size 225   # + grain end to end
    python scripts/benchmark.py --batch_size 16 --image_size 64 --dtypes float32 \\
        --windows 3 --steps 5 --torch_modes eager                  # a quick CPU run

Measures (steady state: compile and warm-up excluded, device synchronised, median of
--windows windows of --steps steps) caco-jax training images/s with the trainer's own
jitted step for each --variants x --dtypes, evaluation images/s and batch-1 latency,
compile times; torchvision mobilenet_v3_small in each --torch_modes; the training rate
with the grain pipeline feeding the step (from --data_dir, or built from --manual_dir)
against synthetic on-device input; and the per-call overhead of nnx.jit against the
split-once jax.jit step. Prints markdown tables and writes --out (JSON).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # makes configs/ importable


def _csv(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--image_size", type=int, default=224, help="network input size")
    p.add_argument("--load_size", type=int, default=0,
                   help="uint8 size the train step crops from (0: image_size*256/224 on synthetic input; "
                        "the grain rows then load at the stored size, as the trainer)")
    p.add_argument("--arch", default="small", help="small | large | tiny (tests)")
    p.add_argument("--variants", type=_csv, default=("se", "caco"), help="attention variants, comma-separated")
    p.add_argument("--depthwise", type=_csv, default=("auto",),
                   help="depthwise-conv implementations, comma-separated: auto, conv, shifts, shifts_vjp")
    p.add_argument("--dtypes", type=_csv, default=("float32", "bfloat16"), help="compute dtypes, comma-separated")
    p.add_argument("--windows", type=int, default=5, help="timed windows; the median window is reported")
    p.add_argument("--steps", type=int, default=20, help="steps (calls) per window")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps after the first (compiling) call")
    p.add_argument("--latency_calls", type=int, default=50, help="batch-1 calls for the latency median")
    p.add_argument("--eval", action=argparse.BooleanOptionalAction, default=True,
                   help="measure evaluation throughput and batch-1 latency")
    p.add_argument("--torch", action=argparse.BooleanOptionalAction, default=True,
                   help="torchvision baseline (when torch is installed)")
    p.add_argument("--torch_modes", type=_csv, default=("eager", "channels_last_bf16", "compile",
                                                        "compile_reduce_overhead"),
                   help="eager, channels_last_bf16, compile, compile_reduce_overhead (compile modes run per --dtypes)")
    p.add_argument("--onnx", action=argparse.BooleanOptionalAction, default=True,
                   help="onnxruntime batch-1 CPU latency of each variant's ONNX export (torch + onnx extras)")
    p.add_argument("--torch_threads", type=int, default=0,
                   help="torch and onnxruntime CPU threads (0: their default); 1 on a CPU shared with other jobs")
    p.add_argument("--data_dir", default="", help="TFDS data_dir with a HAM10000 build (for the grain rows)")
    p.add_argument("--manual_dir", default="",
                   help="raw HAM10000 to build from (into --data_dir, or a temporary dir deleted afterwards)")
    p.add_argument("--build_size", type=int, default=225, help="stored shorter side of the build")
    p.add_argument("--num_workers", type=int, default=-1, help="grain worker processes (-1: CPUs - 2, at most 16)")
    p.add_argument("--pipeline_variant", default="caco", help="variant whose step the grain pipeline feeds")
    p.add_argument("--overhead", action=argparse.BooleanOptionalAction, default=True,
                   help="measure nnx.jit vs split-once jax.jit per-call overhead")
    p.add_argument("--overhead_batch", type=int, default=2)
    p.add_argument("--overhead_image_size", type=int, default=32)
    p.add_argument("--steps_per_dispatch", type=int, default=1,
                   help=">1: also measure K train steps per dispatch (lax.scan over K batches in one jit)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmark.json", help="JSON output path")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Runs the benchmark, prints the tables, writes the JSON; returns the result dict."""
    args = parse_args(argv)
    if args.torch:
        # JAX preallocates 75% of GPU memory by default; leave room for the torch baseline.
        os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.5")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()  # grain worker processes read absl flags

    from caco_jax import benchmarking
    from configs import default

    opts = benchmarking.Options(**{k: v for k, v in vars(args).items() if k != "out"})
    start = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - start:6.1f} s] {message}", flush=True)

    result = benchmarking.jsonable(benchmarking.run(default.get_config(), opts, log=log))
    result["argv"] = sys.argv[1:] if argv is None else list(argv)
    result["wall_s"] = time.perf_counter() - start
    table = benchmarking.format_table(result)
    print("\n" + table)
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {out}")
    return result


if __name__ == "__main__":
    main()
