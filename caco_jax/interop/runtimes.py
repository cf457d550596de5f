"""The runtimes an exported model runs in, as one callable each (no JAX, no torch): onnxruntime for ``.onnx``,
the LiteRT interpreter (``ai-edge-litert``) for ``.tflite``. ``caco_jax.serving.portable`` answers through
them, and the LiteRT export checks its int8 file with them.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable
from typing import Any

import numpy as np

from caco_jax.errors import UsageError

Runner = Callable[[np.ndarray], dict[str, np.ndarray]]  # float32 NHWC normalised -> {output: [N, ...]}


def onnx_runner(path: pathlib.Path, meta: dict[str, Any], *, threads: int = 0, batch_size: int = 32) -> Runner:
    """An onnxruntime CPU session as a :data:`Runner` (``threads`` intra-op threads; 0: onnxruntime's default)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise UsageError(f"{path} needs onnxruntime: pip install onnxruntime") from None
    options = ort.SessionOptions()
    if threads > 0:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    nchw = meta["input"]["layout"] == "NCHW"

    def run(x: np.ndarray) -> dict[str, np.ndarray]:
        parts = []
        for start in range(0, len(x), batch_size):
            chunk = x[start : start + batch_size]
            feed = np.ascontiguousarray(chunk.transpose(0, 3, 1, 2) if nchw else chunk)
            parts.append(session.run(names, {meta["input"]["name"]: feed}))
        return {name: np.concatenate([p[i] for p in parts]) for i, name in enumerate(names)}

    return run


def litert_runner(path: pathlib.Path, meta: dict[str, Any], *, threads: int = 0) -> Runner:
    """The LiteRT interpreter as a :data:`Runner`: one image per call (the exported batch is 1). An int8
    input or output is quantised / dequantised with the scale and zero point the file gives."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        raise UsageError(f"{path} needs the LiteRT interpreter: pip install ai-edge-litert") from None
    interpreter = Interpreter(model_path=str(path), num_threads=threads or None)
    signature = interpreter.get_signature_runner()
    key = meta["input"]["name"]
    fed = signature.get_input_details()[key]
    outputs = signature.get_output_details()

    def quantise(x: np.ndarray) -> np.ndarray:
        if fed["dtype"] == np.float32:
            return np.ascontiguousarray(x, np.float32)
        scale, zero = fed["quantization"]
        info = np.iinfo(fed["dtype"])
        return np.clip(np.round(x / scale + zero), info.min, info.max).astype(fed["dtype"])

    def dequantise(name: str, y: np.ndarray) -> np.ndarray:
        if outputs[name]["dtype"] == np.float32:
            return y
        scale, zero = outputs[name]["quantization"]
        return ((y.astype(np.float32) - zero) * scale).astype(np.float32)

    def run(x: np.ndarray) -> dict[str, np.ndarray]:
        outs = [signature(**{key: quantise(x[i : i + 1])}) for i in range(len(x))]
        return {name: dequantise(name, np.concatenate([o[name] for o in outs])) for name in outputs}

    return run
