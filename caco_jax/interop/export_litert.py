"""LiteRT (TFLite) export of caco-jax models, float32 and int8 (``litert`` extra).

Route: caco-jax model -> its PyTorch reference in NHWC with the three outputs
(``caco_jax.interop.deployable``) -> ``torch.export`` -> LiteRT's PyTorch converter
(``litert_torch.convert``), one LiteRT flatbuffer with batch 1, input float32 (1, H, W, 3)
ImageNet-normalised RGB, outputs ``logits``, ``pooled`` and ``hidden``.

int8: post-training static quantisation in PyTorch's PT2E flow with LiteRT's quantiser
(``litert_torch.quantize``: int8 weights, per output channel by default, int8 activations with
histogram-calibrated ranges), calibrated on images the caller gives (the run's training or validation
images, never test), then converted: every convolution, matrix product and elementwise operator runs
on int8 tensors (an int8 input or output has its scale and zero point in the file;
``caco_jax.serving.portable`` quantises and dequantises). Why this route: docs/deploy.md (measured).

Two things keep its answers (issue 40, measured in docs/deploy.md): a convolution unit whose output is
far wider than the bulk of its values (:func:`wide_units`, the ONNX export's ``WIDE_RATIO``: in this
model the stem, where one channel spans about +-200, and in trained runs a few more) stays float32,
together with the unit that reads its output (so the file is not wholly integer: its input is float32
where the stem is); and each channel attention's max-pooled branch gets its own copy of the squeeze MLP
(``deployable.unshare``), whose shared weights the quantiser otherwise leaves in float32.
"""

from __future__ import annotations

import pathlib
from typing import Any

import numpy as np

from caco_jax.data.constancy import OFF, ColorConstancy
from caco_jax.interop.quantize_onnx import WIDE_RATIO


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


def _graph(
    model: Any, image_size: tuple[int, int], color: ColorConstancy, *, unshared: bool = False
) -> tuple[Any, Any, Any]:
    """(the NHWC module, its exported graph module, an example input); ``color`` in the graph."""
    import torch

    from caco_jax.interop.deployable import Deployable, exported_program, unshare

    module = Deployable(model, "NHWC", color).eval()
    if unshared:
        unshare(module)
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


def wide_units(module: Any, calibration: np.ndarray, ratio: float | None, images: int = 32) -> list[str]:
    """The convolution units (torchvision's ``Conv2dNormActivation``) of ``module`` whose convolution,
    normalisation or activation output spans more than ``ratio`` times its 0.01-99.99 % percentile range
    (a seeded sample of 200,000 values) on the first ``images`` calibration images, each followed by the
    unit that runs next (it reads that output); in run order. None or no images: none."""
    import torch
    from torchvision.ops.misc import Conv2dNormActivation

    if ratio is None or len(calibration) == 0:
        return []
    units = {name: m for name, m in module.named_modules() if isinstance(m, Conv2dNormActivation)}
    order: list[str] = []
    lo: dict[tuple[str, int], float] = {}
    hi: dict[tuple[str, int], float] = {}
    sample: dict[tuple[str, int], list[np.ndarray]] = {}
    rng = np.random.default_rng(0)
    shown = calibration[:images]

    def record(key: tuple[str, int]) -> Any:
        def hook(_m: Any, _inputs: Any, output: Any) -> None:
            if key[0] not in order:
                order.append(key[0])
            v = output.detach().numpy().ravel()
            lo[key], hi[key] = min(lo.get(key, np.inf), float(v.min())), max(hi.get(key, -np.inf), float(v.max()))
            sample.setdefault(key, []).append(v[rng.integers(0, v.size, size=min(v.size, 200_000 // len(shown)))])

        return hook

    handles = [c.register_forward_hook(record((n, k))) for n, u in units.items() for k, c in enumerate(u)]
    try:
        with torch.no_grad():
            for image in np.asarray(shown, np.float32):
                module(torch.from_numpy(image[None]))
    finally:
        for h in handles:
            h.remove()
    wide = set()
    for key, parts in sample.items():
        p_lo, p_hi = np.percentile(np.concatenate(parts), [0.01, 99.99])
        if hi[key] - lo[key] > ratio * max(float(p_hi - p_lo), 1e-12):
            wide.add(key[0])
    return [u for i, u in enumerate(order) if u in wide or (i > 0 and order[i - 1] in wide)]


def export_litert_int8(
    model: Any,
    path: str | pathlib.Path,
    calibration: np.ndarray,
    *,
    image_size: tuple[int, int],
    per_channel: bool = True,
    color: ColorConstancy = OFF,
    wide_ratio: float | None = WIDE_RATIO,
    unshared: bool = True,
) -> tuple[str, dict[str, Any]]:
    """Writes the full-integer int8 LiteRT file of ``model`` calibrated on ``calibration`` (float32 NHWC
    normalised images); returns (its input's name, its quantisation settings). ``wide_ratio``: see
    :func:`wide_units` (None: every activation in 8 bits); ``unshared``: the attention's max branch with its
    own squeeze-MLP weights (``deployable.unshare``)."""
    litert_torch = _converter()
    import torch
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    if len(calibration) == 0:
        raise ValueError("int8 quantisation needs calibration images")
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module, graph, example = _graph(model, image_size, color, unshared=unshared)
    wide = wide_units(module, calibration, wide_ratio)
    quantizer = _quantizer(per_channel, wide)  # the wide units unannotated: float32
    prepared = prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        for image in np.asarray(calibration, np.float32):  # the graph's batch is 1
            prepared(torch.from_numpy(image[None]))
    quantized = convert_pt2e(prepared, fold_quantize=False)
    litert_torch.convert(quantized, (example,), quant_config=QuantConfig(pt2e_quantizer=quantizer)).export(str(path))
    name = _input_name(path)
    return name, {
        "calibration_agreement": _agreement(module, path, name, calibration),
        "tool": "litert_torch PT2E (PT2EQuantizer, torchao prepare_pt2e / convert_pt2e)",
        "weights": "int8 symmetric " + ("per channel" if per_channel else "per tensor"),
        "activations": "int8 per tensor, histogram observer" + (", float32 in float32_units" if wide else ""),
        "float32_units": wide,
        "attention_max_branch": "own squeeze-MLP weights" if unshared else "shared squeeze-MLP weights (float32)",
        "input_output": _io_types(path, name),
        "calibration_images": int(len(calibration)),
    }


def _io_types(path: pathlib.Path, input_name: str) -> str:
    """What the file's input and logits are: int8 (scale and zero point in the file) or float32."""
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=str(path)).get_signature_runner()
    fed, logits = runner.get_input_details()[input_name]["dtype"], runner.get_output_details()["logits"]["dtype"]
    said = f"input {np.dtype(fed).name}, logits {np.dtype(logits).name}"
    return said + " (an int8 one's scale and zero point in the file)"


def _agreement(module: Any, path: pathlib.Path, input_name: str, calibration: np.ndarray) -> float:
    """The share of the calibration images whose top class the int8 file gives as the float module does (a
    check that the file keeps its answers; docs/deploy.md measures them on test images)."""
    import torch

    from caco_jax.interop.runtimes import litert_runner

    x = np.asarray(calibration, np.float32)
    with torch.no_grad():
        float_top = np.concatenate([module(torch.from_numpy(x[i : i + 1]))["logits"].numpy() for i in range(len(x))])
    int8_top = litert_runner(path, {"input": {"name": input_name}})(x)["logits"]
    return float(np.mean(float_top.argmax(-1) == int8_top.argmax(-1)))


def _quantizer(per_channel: bool, float_units: list[str]) -> Any:
    """LiteRT's PT2E quantiser with its int8 configuration everywhere but in ``float_units`` (module paths),
    which it leaves unannotated, so float32 (its module-name option cannot do this: it takes no empty
    configuration and misreads the paths ``torch.export`` records, ``L__self__ref.features.0``)."""
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config

    def outside(node: Any) -> bool:
        paths = [p for p, _ in node.meta.get("nn_module_stack", {}).values()]
        return not any(p == u or p.startswith(u + ".") for p in paths for u in float_units)

    class Quantizer(PT2EQuantizer):
        def _annotate_for_static_quantization_config(self, graph: Any) -> Any:
            self._annotate_all_static_patterns(graph, self.global_config, outside)
            return graph

    return Quantizer().set_global(get_symmetric_quantization_config(is_per_channel=per_channel))
