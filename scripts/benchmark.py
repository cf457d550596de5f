"""Training / evaluation throughput of caco-jax on the current accelerator, against torchvision.

    python scripts/benchmark.py                                   # the issue's setup: batch 128, 224 px
    python scripts/benchmark.py --manual_dir /path/to/HAM10000 --build_size 225   # + grain end to end
    python scripts/benchmark.py --batch_size 16 --image_size 64 --dtypes float32 --variants caco \\
        --depthwise conv,shifts_vjp --torch_modes eager --torch_threads 2 --windows 3 --steps 3 \\
        --no-overhead                                             # a quick CPU run

Measures (steady state: compile and warm-up excluded, device synchronised, median of
--windows windows of --steps steps) caco-jax training images/s with the trainer's own
jitted step (caco_jax.steps.build_steps) for each --variants x --dtypes x --depthwise,
evaluation images/s and batch-1 latency, compile times; torchvision mobilenet_v3_small in
each --torch_modes, its windows interleaved with caco-jax's in the same rounds, and the
ratios to torch eager taken round by round; the training rate with the grain pipeline
feeding the step (from --data_dir, or built from --manual_dir) against synthetic
on-device input; and the per-call overhead of nnx.jit against the split-once jax.jit
step. Prints markdown tables and writes --out (JSON). The harness is scripts/bench/.
"""
from __future__ import annotations

import os
import pathlib
import sys
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # makes configs/ and scripts.bench importable
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Runs the benchmark, prints the tables, writes the JSON; returns the result dict."""
    from scripts.bench.run import main as run_main

    return run_main(argv, description=__doc__)


if __name__ == "__main__":
    main()
