"""ONNX export of caco-jax models, and onnxruntime's batch-1 latency (``torch`` + ``onnx`` extras).

Route: caco-jax model -> its PyTorch reference (``caco_jax.interop.torch_reference.to_torch``,
weights loaded with ``strict=True``) -> ``torch.onnx.export`` (the ``torch.export`` based
exporter) with a dynamic batch dimension. The graph is the one the parity tests check
against caco-jax, in PyTorch's NCHW layout, which is what mobile runtimes expect.

The file has one input, ``images``: float32 ``(N, 3, H, W)``, ImageNet-normalised RGB
(caco-jax's input transposed: ``x.transpose(0, 3, 1, 2)``), with H, W fixed at export
time and N free; and three outputs (``caco_jax.interop.deployable``): ``logits``
``(N, num_classes)``, ``pooled`` and ``hidden``, the two feature layers the out-of-distribution
guard scores. :func:`run_onnx` takes caco-jax's NHWC images and returns the logits.

Why not jax2onnx (tried; docs/deploy.md): it was as exact, but jax2onnx 0.17 pins
``orbax-checkpoint<0.11.37`` (this project runs on 0.12), its ``nnx.Dropout`` patch
rejects our ``rngs=`` call, it writes a separate ``.onnx.data`` file, and its graph (4x
the nodes: caco-jax's matmuls, unfolded BatchNorm, transposes) ran batch 1 about 2x slower
in onnxruntime on our CPU.
"""

from __future__ import annotations

import os
import pathlib
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from caco_jax.data.constancy import OFF, ColorConstancy

INPUT_NAME = "images"
OUTPUT_NAME = "logits"  # the first of deployable.OUTPUTS
DEFAULT_OPSET = 18


def export_onnx(
    model: Any,
    path: str | os.PathLike,
    *,
    image_size: int | tuple[int, int] = 224,
    opset: int = DEFAULT_OPSET,
    color: ColorConstancy = OFF,
) -> pathlib.Path:
    """Writes caco-jax ``model`` (any attention variant, arch small or large) as one ONNX file.

    The batch dimension is dynamic; ``image_size`` (int or (H, W)) is fixed; ``color``: the run's
    colour constancy, computed in the graph. Needs torch and onnxscript (``pip install -e '.[torch,onnx]'``).
    """
    import torch

    from caco_jax.interop.deployable import OUTPUTS, Deployable

    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = Deployable(model, "NCHW", color).eval()  # float32
    example = torch.zeros(2, 3, h, w)
    torch.onnx.export(
        module,
        (example,),
        str(path),
        input_names=[INPUT_NAME],
        output_names=list(OUTPUTS),
        dynamic_shapes={"images": {0: torch.export.Dim("batch")}},
        opset_version=opset,
        dynamo=True,
        external_data=False,
        verbose=False,
    )
    return path


def onnx_session(path: str | os.PathLike, *, threads: int = 0) -> Any:
    """An onnxruntime CPU session (``threads`` intra-op threads; 0: onnxruntime's default)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads > 0:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_onnx(session: Any, images_nhwc: np.ndarray) -> np.ndarray:
    """Logits for caco-jax-layout images (N, H, W, 3) from an exported model's session."""
    x = np.ascontiguousarray(np.asarray(images_nhwc, np.float32).transpose(0, 3, 1, 2))
    return session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]


def ort_latency(
    model: Any, *, image_size: int = 224, calls: int = 50, warmup: int = 5, threads: int = 0
) -> dict[str, Any]:
    """onnxruntime CPU batch-1 latency of ``model`` exported by :func:`export_onnx`.

    Returns ``{"latency_ms": {"median", "min", "max"}, "export_s", "threads", "onnxruntime"}``,
    or ``{"skipped": reason}`` when the model or the installed packages cannot do it.
    """
    if model.arch not in ("small", "large"):
        return {"skipped": f"no ONNX export for arch {model.arch!r} (torchvision has no mobilenet_v3_{model.arch})"}
    try:
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401  (torch.onnx's exporter needs it)
        import torch  # noqa: F401
    except ImportError as err:
        return {"skipped": f"{err.name} is not installed (pip install -e '.[torch,onnx]')"}
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        path = export_onnx(model, pathlib.Path(tmp) / "model.onnx", image_size=image_size)
        export_s = time.perf_counter() - start
        session = onnx_session(path, threads=threads)
    return session_latency(session, image_size=image_size, calls=calls, warmup=warmup) | {"export_s": export_s}


def session_latency(
    session: Any, *, image_size: int | tuple[int, int] = 224, calls: int = 50, warmup: int = 5
) -> dict[str, Any]:
    """Batch-1 latency of an onnxruntime session: median / min / max ms over ``calls`` after ``warmup``."""
    import onnxruntime as ort

    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    x = np.random.default_rng(0).normal(size=(1, h, w, 3)).astype(np.float32)
    for _ in range(warmup):
        run_onnx(session, x)
    ms = []
    for _ in range(calls):
        start = time.perf_counter()
        run_onnx(session, x)
        ms.append(1e3 * (time.perf_counter() - start))
    threads = session.get_session_options().intra_op_num_threads
    return {
        "latency_ms": {"median": statistics.median(ms), "min": min(ms), "max": max(ms)},
        "threads": threads or "default",
        "onnxruntime": ort.__version__,
    }


def ort_latency_rows(
    arch: str,
    variants: Sequence[str],
    *,
    image_size: int = 224,
    calls: int = 50,
    threads: int = 0,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """One :func:`ort_latency` row per attention variant (randomly initialised 7-class models): the
    benchmark's onnxruntime rows (caco-jax benchmark --onnx)."""
    from caco_jax.data.classes import NUM_CLASSES
    from caco_jax.models import create_model

    rows = []
    for variant in variants:
        head = {"framework": "onnxruntime", "variant": variant, "model": f"mobilenetv3_{arch}-{variant}"}
        if arch not in ("small", "large"):
            rows.append(
                head | {"skipped": f"no ONNX export for arch {arch!r} (torchvision has no mobilenet_v3_{arch})"}
            )
            continue
        log(f"onnxruntime {variant}: exporting and timing batch 1 ...")
        model = create_model(arch=arch, attention=variant, num_classes=NUM_CLASSES, dropout=0.0)
        rows.append(head | ort_latency(model, image_size=image_size, calls=calls, threads=threads))
    return rows


def format_rows(rows: Sequence[dict[str, Any]], jax_latency_ms: dict[str, float] | None = None) -> list[str]:
    """Markdown lines for :func:`ort_latency_rows` (beside caco-jax's float32 batch-1 latency, if given)."""
    lines = [
        "",
        "onnxruntime (CPU), batch 1, the ONNX export of each variant:",
        "",
        "| model | onnxruntime batch-1 ms median (min-max) | threads | caco-jax batch-1 ms (float32) | note |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        jax_ms = (jax_latency_ms or {}).get(r["variant"])
        jax_text = "-" if jax_ms is None else f"{jax_ms:.2f}"
        if "skipped" in r:
            lines.append(f"| {r['model']} | - | - | {jax_text} | skipped: {r['skipped']} |")
        else:
            ms = r["latency_ms"]
            lines.append(
                f"| {r['model']} | {ms['median']:.2f} ({ms['min']:.2f}-{ms['max']:.2f}) | {r['threads']} | "
                f"{jax_text} | export {r['export_s']:.1f} s |"
            )
    return lines
