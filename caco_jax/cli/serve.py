"""A local web page for a trained run: drop a dermoscopy image, get class probabilities and a Grad-CAM overlay.

    pip install 'caco-jax[app]'
    caco-jax serve --workdir runs/caco [--host 127.0.0.1] [--port 7860]

Binds to 127.0.0.1 (this machine only) unless --host says otherwise. The page says
plainly that it is a research tool, not a diagnosis. It offers the decision rules the
weights support (argmax, and balanced when they carry decision.json), preselecting
--decision (default: the run's evaluation.decision, or argmax), and says which rule gave
each answer. Uploads live in a folder of their own, deleted after --keep_minutes and kept
under --cache_mb in all (besides what arrived in the last minute, which a request may still
use); the folder goes when the server stops.
"""

from __future__ import annotations

import argparse
import pathlib
import signal
import sys

from caco_jax.cli import common
from caco_jax.errors import UsageError
from caco_jax.evaluation.decision import RULES
from caco_jax.training import compile_cache

NAME = "serve"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workdir", type=pathlib.Path, required=True, help="a training run (caco-jax train --workdir)")
    p.add_argument("--weights", type=pathlib.Path, help="weights directory (default: WORKDIR/best)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port (default: 7860)")
    p.add_argument("--max_upload_mb", type=float, default=20.0, help="largest accepted file in MB (default: 20)")
    p.add_argument(
        "--max_megapixels", type=float, default=40.0, help="largest accepted image in megapixels (default: 40)"
    )
    p.add_argument(
        "--decision",
        choices=RULES,
        default=None,
        help="the rule preselected on the page: argmax or balanced (default: the run's "
        "evaluation.decision, argmax for runs without one)",
    )
    p.add_argument(
        "--keep_minutes",
        type=float,
        default=10.0,
        help="delete uploads and result images older than this (default: 10)",
    )
    p.add_argument(
        "--cache_mb",
        type=float,
        default=256.0,
        help="most disk the uploads and result images may use, in MB (default: 256)",
    )
    common.add_switch(p, "calibration", True, "divide the logits by the temperature saved with the weights")
    common.add_common(p)


def run(args: argparse.Namespace) -> int:
    try:
        import gradio  # noqa: F401

        from caco_jax.serving import app
    except ImportError as err:
        raise UsageError(f"the web page needs the app extra: pip install 'caco-jax[app]' ({err})") from err
    if args.keep_minutes <= 0 or args.cache_mb <= 0:
        raise UsageError("--keep_minutes and --cache_mb must be positive")
    compile_cache.enable(args.compile_cache)
    from caco_jax.serving import uploads
    from caco_jax.serving.predictor import Predictor

    predictor = Predictor(args.workdir, args.weights, calibrate=args.calibration, batch_size=1, decision=args.decision)
    limits = app.Limits(
        max_bytes=int(args.max_upload_mb * 2**20),
        max_pixels=int(args.max_megapixels * 1e6),
        keep_seconds=int(args.keep_minutes * 60),
        cache_bytes=int(args.cache_mb * 2**20),
    )
    cache = uploads.UploadCache(keep_seconds=limits.keep_seconds, max_bytes=limits.cache_bytes)
    try:
        analyser = app.Analyser(predictor, limits, cache)
        print("compiling the model (cached after the first start) ...", flush=True)
        analyser.warm_up()
        page = app.build(analyser, description=app.describe(args.workdir, predictor))
        cache.start()
        signal.signal(signal.SIGTERM, _interrupt)  # a service manager's stop: close the page and its folder
        print(
            f"serving {args.workdir} on http://{args.host}:{args.port} (Ctrl-C stops); uploads in {cache.directory}",
            flush=True,
        )
        app.launch(page, host=args.host, port=args.port, limits=limits)
    finally:
        cache.close()
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    return common.main(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
