"""caco-jax: MobileNetV3-CaCo skin-lesion classification in JAX (the installed command).

    caco-jax train --config caco --workdir runs/caco
    caco-jax evaluate --workdir runs/caco
    caco-jax <command> --help

Exit codes: 0 done, 1 failed, 2 bad flags or config (nothing started), 75 interrupted after a
checkpoint (rerun to resume). ``--debug`` (or CACO_JAX_DEBUG=1) shows an error's traceback.
"""

from __future__ import annotations

import importlib
import sys

from caco_jax.cli import common
from caco_jax.errors import EXIT_USAGE

# command -> (module, one-line summary)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("train", "train (or resume) a model and report on the test split"),
    "evaluate": ("evaluate", "evaluate a run on a split of its data or an ISIC 2018 set"),
    "predict": ("predict", "classify image files with a trained run (table, CSV, JSON, Grad-CAM)"),
    "serve": ("serve", "a local web page for a trained run (needs the app extra)"),
    "export": ("export", "write a trained model as a PyTorch state_dict, ONNX and/or LiteRT (--tflite)"),
    "guard": ("guard", "fit a finished run's out-of-distribution guard and reliability threshold"),
    "adapt": ("adapt", "adapt a trained run to a clinic's unlabelled images (BatchNorm statistics, class prior)"),
    "convert": ("convert", "torchvision .pth <-> caco-jax weights"),
    "prepare-data": ("prepare_data", "build HAM10000 (or an ISIC 2018 set) into TFDS once"),
    "reproduce": ("reproduce", "run a grid of training runs and tabulate it beside the paper"),
    "benchmark": ("benchmark", "training / evaluation speed against torchvision"),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [__doc__.strip().split("\n")[0], "", "commands:"]
    lines += [f"  {name:<{width}}  {summary}" for name, (_, summary) in COMMANDS.items()]
    lines += ["", "caco-jax <command> --help shows a command's flags."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Runs ``caco-jax <command> ...``; ``argv`` None: this process was started as the command (it may start
    itself again under the preferred memory allocator: :func:`caco_jax.allocator.relaunch`)."""
    entry = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0 if argv else EXIT_USAGE
    if argv[0] in ("--version", "version"):
        from caco_jax import __version__

        print(f"caco-jax {__version__}")
        return 0
    name = argv[0]
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return EXIT_USAGE
    module = importlib.import_module(f"caco_jax.cli.{COMMANDS[name][0]}")
    return common.main(module, argv[1:], prog=f"caco-jax {name}", entry=entry)


if __name__ == "__main__":
    sys.exit(main())
