"""A local web page for a trained run: drop a dermoscopy image, get class probabilities and a Grad-CAM overlay.

    pip install -e '.[app]'
    python scripts/serve.py --workdir runs/caco [--host 127.0.0.1] [--port 7860]

Binds to 127.0.0.1 (this machine only) unless --host says otherwise. The page says
plainly that it is a research tool, not a diagnosis.
"""
from __future__ import annotations

import argparse
import pathlib
import sys

from caco_jax import compile_cache


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", type=pathlib.Path, required=True, help="a scripts/train.py run directory")
    p.add_argument("--weights", type=pathlib.Path, help="weights directory (default: WORKDIR/best)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--max_upload_mb", type=float, default=20.0, help="largest accepted file")
    p.add_argument("--max_megapixels", type=float, default=40.0, help="largest accepted image")
    p.add_argument("--no_calibration", action="store_true", help="ignore the temperature saved with the weights")
    p.add_argument("--compile_cache", help="persistent XLA compilation cache directory, or 'off' "
                   f"(default: ${compile_cache.ENV} or {compile_cache.default_dir()})")
    args = p.parse_args(argv)
    try:
        from caco_jax import app
        import gradio  # noqa: F401
    except ImportError as err:
        p.error(f"the web page needs the app extra: pip install -e '.[app]' ({err})")
    compile_cache.enable(args.compile_cache)
    from caco_jax.inference import Predictor

    predictor = Predictor(args.workdir, args.weights, calibrate=not args.no_calibration, batch_size=1)
    limits = app.Limits(max_bytes=int(args.max_upload_mb * 2**20), max_pixels=int(args.max_megapixels * 1e6))
    analyser = app.Analyser(predictor, limits)
    print("compiling the model (cached after the first start) ...", flush=True)
    analyser.warm_up()
    page = app.build(analyser, description=app.describe(args.workdir, predictor))
    print(f"serving {args.workdir} on http://{args.host}:{args.port} (Ctrl-C stops)", flush=True)
    app.launch(page, host=args.host, port=args.port, limits=limits)
    return 0


if __name__ == "__main__":
    sys.exit(main())
