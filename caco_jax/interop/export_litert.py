"""LiteRT (TFLite) export of caco-jax models, float32 and full-integer int8 (``litert`` extra).

Route: caco-jax model -> its PyTorch reference in NHWC with the three outputs
(``caco_jax.interop.deployable``) -> ``torch.export`` -> LiteRT's PyTorch converter
(``litert_torch.convert``), one LiteRT flatbuffer with batch 1, input float32 (1, H, W, 3)
ImageNet-normalised RGB, outputs ``logits``, ``pooled`` and ``hidden``.

int8: post-training static quantisation in PyTorch's PT2E flow with LiteRT's quantiser
(``litert_torch.quantize``: int8 weights, per output channel by default, int8 activations with
histogram-calibrated ranges), calibrated on images the caller gives (the run's training or validation
images, never test), then converted: every convolution, matrix product and elementwise operator runs
on int8 tensors, the input and outputs included (their scale and zero point are in the file;
``caco_jax.serving.portable`` quantises and dequantises). Why this route: docs/deploy.md (measured).
"""

from __future__ import annotations

import pathlib
from typing import Any

import numpy as np

from caco_jax.data.constancy import OFF, ColorConstancy


def _converter() -> Any:
    try:
        import litert_torch
    except ImportError:
        from caco_jax.errors import UsageError

        raise UsageError(
            "LiteRT export needs the litert extra (pip install -e '.[torch,litert]', in an environment without "
            "the app and dev extras: see docs/deploy.md)"
        ) from None
    litert_torch.config.show_progress = False
    return litert_torch


def _input_name(path: pathlib.Path) -> str:
    from ai_edge_litert.interpreter import Interpreter

    return Interpreter(model_path=str(path)).get_signature_list()["serving_default"]["inputs"][0]


def _graph(model: Any, image_size: tuple[int, int], color: ColorConstancy) -> tuple[Any, Any, Any]:
    """(the NHWC module, its exported graph module, an example input); ``color`` in the graph."""
    import torch

    from caco_jax.interop.deployable import Deployable, exported_program

    module = Deployable(model, "NHWC", color).eval()
    example = torch.zeros(1, *image_size, 3)
    return module, exported_program(module, example).module(), example


def export_litert(
    model: Any, path: str | pathlib.Path, *, image_size: tuple[int, int], color: ColorConstancy = OFF
) -> str:
    """Writes ``model`` as a float32 LiteRT file (``color``: the run's colour constancy, in the graph);
    returns its input's name."""
    litert_torch = _converter()
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _, graph, example = _graph(model, image_size, color)
    litert_torch.convert(graph, (example,)).export(str(path))
    return _input_name(path)


def export_litert_int8(
    model: Any,
    path: str | pathlib.Path,
    calibration: np.ndarray,
    *,
    image_size: tuple[int, int],
    per_channel: bool = True,
    color: ColorConstancy = OFF,
) -> tuple[str, dict[str, Any]]:
    """Writes the full-integer int8 LiteRT file of ``model`` calibrated on ``calibration`` (float32 NHWC
    normalised images); returns (its input's name, its quantisation settings)."""
    litert_torch = _converter()
    import torch
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    if len(calibration) == 0:
        raise ValueError("int8 quantisation needs calibration images")
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _, graph, example = _graph(model, image_size, color)
    quantizer = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=per_channel))
    prepared = prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        for image in np.asarray(calibration, np.float32):  # the graph's batch is 1
            prepared(torch.from_numpy(image[None]))
    quantized = convert_pt2e(prepared, fold_quantize=False)
    litert_torch.convert(quantized, (example,), quant_config=QuantConfig(pt2e_quantizer=quantizer)).export(str(path))
    return _input_name(path), {
        "tool": "litert_torch PT2E (PT2EQuantizer, torchao prepare_pt2e / convert_pt2e)",
        "weights": "int8 symmetric " + ("per channel" if per_channel else "per tensor"),
        "activations": "int8 per tensor, histogram observer",
        "input_output": "int8 (scale and zero point in the file)",
        "calibration_images": int(len(calibration)),
    }
