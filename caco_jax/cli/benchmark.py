"""Training / evaluation throughput of caco-jax on the current accelerator, against torchvision.

    caco-jax benchmark                                            # batch 128, 224 px, every row
    caco-jax benchmark --manual_dir /path/to/HAM10000 --build_size 225     # + grain end to end
    caco-jax benchmark --batch_size 16 --image_size 64 --dtypes float32 --variants caco \\
        --depthwise conv,shifts_vjp --torch_modes eager --torch_threads 2 --windows 3 --steps 3 \\
        --no_overhead                                             # a quick CPU run

Measures (steady state: compile and warm-up excluded, device synchronised, median of --windows
windows of --steps steps) caco-jax training images/s with the trainer's own jitted step
(caco_jax.training.steps.build_steps) for each --variants x --dtypes x --depthwise, evaluation
images/s and batch-1 latency, compile times; torchvision mobilenet_v3_small in each --torch_modes,
its windows interleaved with caco-jax's in the same rounds, and the ratios to torch eager taken
round by round; the training rate with the grain pipeline feeding the step (from --data_dir, or
built from --manual_dir) against synthetic on-device input; and the per-call overhead of nnx.jit
against the split-once jax.jit step. Prints markdown tables and writes --out (JSON). The harness
is caco_jax/benchmark/.
"""

from __future__ import annotations

import argparse
import os
import sys

from caco_jax.cli import common

NAME = "benchmark"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from caco_jax.benchmark import options

    options.add_arguments(p)
    common.add_common(p, compile_cache=False)  # --compile_cache is one of the options


def run(args: argparse.Namespace) -> int:
    from caco_jax.benchmark import options
    from caco_jax.benchmark.run import run_options

    run_options(options.from_args(args), sys.argv[1:])
    return 0


def main(argv: list[str] | None = None) -> int:
    return common.main(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
