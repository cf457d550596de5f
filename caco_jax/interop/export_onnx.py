"""ONNX export of caco-jax models, and running an export in onnxruntime (``torch`` + ``onnx`` extras).

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
