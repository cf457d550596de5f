"""Train and evaluate MobileNetV3-CaCo; rerunning with the same --workdir resumes.

    caco-jax train --config caco --workdir runs/caco [--config.data.manual_dir=/path/to/HAM10000]
                   [--config.KEY=VALUE ...]
    caco-jax train --config configs/caco.py ...        # a config file (edit a copy of one to make your own)
    caco-jax train --config demo                       # synthetic data, no download: the whole pipeline in a minute

--config is a shipped name (caco: the paper's recipe; recipe: ours, for balanced accuracy; demo;
mobilenetv3; ablation:attention=cbam) or a path to a .py file whose get_config() returns an
ml_collections.ConfigDict. Any field can be overridden with --config.KEY=VALUE (dotted keys,
Python literals for numbers, tuples and booleans). The config is checked before any data is read.

Exit codes: 0 finished, 1 failed, 2 bad flags or config, 75 stopped by a signal after saving a
checkpoint (rerun the same command to resume).
"""

from __future__ import annotations

import argparse
import pathlib
import sys

from caco_jax.cli import common
from caco_jax.errors import EXIT_INTERRUPTED

NAME = "train"
CONFIG_OVERRIDES = True


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        required=True,
        metavar="NAME|PATH",
        help=f"shipped config ({', '.join(common.config_names())}) or a .py file; NAME:ARG passes ARG to get_config",
    )
    p.add_argument(
        "--workdir", type=pathlib.Path, help="run directory: checkpoints, logs, report (default: runs/<config name>)"
    )
    p.add_argument("--check", action="store_true", help="check the config (and print it) without training")
    common.add_common(p)


def run(args: argparse.Namespace) -> int:
    from caco_jax.training.checks import check_config

    config = common.load_config(args.config)
    common.apply_overrides(config, args.overrides)
    check_config(config)
    workdir = args.workdir or pathlib.Path("runs") / pathlib.Path(args.config.partition(":")[0]).stem
    if args.check:
        print(config)
        print(f"config OK; would train in {workdir}")
        return 0
    from absl import logging as absl_logging

    from caco_jax.training import compile_cache
    from caco_jax.training.loop import train_and_evaluate

    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax and grain are chatty at INFO
    compile_cache.enable(args.compile_cache)
    result = train_and_evaluate(config, workdir)
    if result["status"] == "interrupted":
        print(
            f"interrupted at step {result['step']}; resume with: {args.command_line}",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    if result["paths"]:
        print(f"report: {result['paths']['md']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return common.main(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
