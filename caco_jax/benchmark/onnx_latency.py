"""onnxruntime batch-1 CPU latency of each variant's ONNX export, as rows of the shared rounds."""

from __future__ import annotations

import functools
import pathlib
import tempfile
from collections.abc import Callable
from typing import Any

import ml_collections
import numpy as np

from caco_jax.benchmark.options import Options
from caco_jax.benchmark.timing import Timed


def prepare(
    config: ml_collections.ConfigDict, opts: Options, setups: dict, log: Callable[[str], None]
) -> dict[tuple, Timed]:
    """One entry per attention variant: a randomly initialised float32 model exported through the
    PyTorch reference (``caco_jax.interop.export_onnx``), in an onnxruntime session with ``--torch_threads``."""
    from caco_jax.data.classes import NUM_CLASSES
    from caco_jax.interop.export_onnx import export_onnx, onnx_session, run_onnx
    from caco_jax.models import model_from_config

    if config.model.arch not in ("small", "large"):
        raise ValueError(f"no ONNX export for arch {config.model.arch!r} (torchvision has none)")
    entries: dict[tuple, Timed] = {}
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="caco_bench_onnx_"))
    x = np.random.default_rng(opts.seed).normal(size=(1, opts.image_size, opts.image_size, 3)).astype(np.float32)
    for variant in opts.variants:
        cfg = config.model.copy_and_resolve_references()
        with cfg.unlocked():
            cfg.attention, cfg.dtype, cfg.dropout = variant, "float32", 0.0
        model = model_from_config(cfg, num_classes=NUM_CLASSES, seed=opts.seed)
        path = export_onnx(model, tmp / f"{variant}.onnx", image_size=opts.image_size)
        session = onnx_session(path, threads=opts.torch_threads)
        for _ in range(opts.warmup):
            run_onnx(session, x)
        row: dict[str, Any] = {
            "framework": "onnxruntime",
            "model": f"mobilenetv3_{config.model.arch}-{variant}",
            "variant": variant,
            "mode": "onnx float32 (batch 1 only)",
            "dtype": "float32",
            "threads": opts.torch_threads or "default",
        }
        log(f"  onnxruntime {variant}: exported ({path.stat().st_size / 1e6:.1f} MB)")
        entries[("onnxruntime", variant, "float32")] = Timed(row=row, latency=functools.partial(run_onnx, session, x))
    return entries
