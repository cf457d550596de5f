"""A local web page for a trained run: drop a dermoscopy image, get class probabilities and a Grad-CAM overlay.

    pip install 'caco-jax[app]'
    caco-jax serve --workdir runs/caco [--host 127.0.0.1] [--port 7860]

Binds to 127.0.0.1 (this machine only) unless --host says otherwise. The page says
plainly that it is a research tool, not a diagnosis.
"""
from __future__ import annotations

import argparse
import pathlib
import sys

from caco_jax.cli import common
from caco_jax.errors import UsageError
from caco_jax.training import compile_cache


NAME = "serve"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workdir", type=pathlib.Path, required=True, help="a training run (caco-jax train --workdir)")
    p.add_argument("--weights", type=pathlib.Path, help="weights directory (default: WORKDIR/best)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port (default: 7860)")
    p.add_argument("--max_upload_mb", type=float, default=20.0, help="largest accepted file in MB (default: 20)")
    p.add_argument("--max_megapixels", type=float, default=40.0,
                   help="largest accepted image in megapixels (default: 40)")
    common.add_switch(p, "calibration", True, "divide the logits by the temperature saved with the weights")
    common.add_common(p)


def run(args: argparse.Namespace) -> int:
    try:
        import gradio  # noqa: F401

        from caco_jax.serving import app
    except ImportError as err:
        raise UsageError(f"the web page needs the app extra: pip install 'caco-jax[app]' ({err})") from err
    compile_cache.enable(args.compile_cache)
    from caco_jax.serving.predictor import Predictor

    predictor = Predictor(args.workdir, args.weights, calibrate=args.calibration, batch_size=1)
    limits = app.Limits(max_bytes=int(args.max_upload_mb * 2**20), max_pixels=int(args.max_megapixels * 1e6))
    analyser = app.Analyser(predictor, limits)
    print("compiling the model (cached after the first start) ...", flush=True)
    analyser.warm_up()
    page = app.build(analyser, description=app.describe(args.workdir, predictor))
    print(f"serving {args.workdir} on http://{args.host}:{args.port} (Ctrl-C stops)", flush=True)
    app.launch(page, host=args.host, port=args.port, limits=limits)
    return 0


def main(argv: list[str] | None = None) -> int:
    return common.main(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
