"""Static int8 quantisation of an exported ONNX model with onnxruntime's quantiser (``onnx`` extra).

QDQ format (QuantizeLinear / DequantizeLinear pairs around each quantised operator, which onnxruntime
runs as integer kernels), int8 weights (per output channel by default), uint8 activations (onnxruntime's
choice for x86 CPUs; an all-zero ReLU output, which the channel attention's squeeze MLP has in trained
runs, keeps its meaning with uint8, where int8 ranges of [0, 0] let negative values through), ranges
calibrated on images the caller gives (the run's training or validation images, never its test
images). The graph first goes through onnxruntime's pre-processing (constant folding and fusions;
its symbolic shape inference is skipped: ONNX's own shape inference covers these graphs).

Activations whose calibrated range is far wider than the bulk of their values (``wide_tensors``: full
range over 0.01-99.99 percentile range above ``WIDE_RATIO``) keep 16 bits (onnxruntime's per-tensor
overrides): one outlier channel otherwise takes all 256 levels of a per-tensor uint8 scale. In this model
that is the stem's convolution output and its hard-swish, the two tensors tools/int8_sensitivity.py found
to carry the whole int8 loss (docs/deploy.md).

``float_ops`` leaves operator types in float (e.g. the attention gates' ``Sigmoid`` and
``HardSigmoid`` and the ``Mul`` they feed): one of the remedies ``tools/measure_exports.py`` measures.
"""

from __future__ import annotations

import pathlib
import tempfile
from collections.abc import Sequence
from typing import Any

import numpy as np

METHODS = ("minmax", "entropy", "percentile")
# Full range / 0.01-99.99 % range above which an activation keeps 16 bits. On 32 real lesion images through
# an ImageNet-backbone caco model the stem's two tensors stood at 2.7-2.8 and every other tensor at 1.6 or
# below (tests/test_deploy.py's images: training images, never a test split).
WIDE_RATIO = 2.0
ACTIVATIONS = ("uint8", "int16")
# The least share of calibration (validation) images whose top class the int8 file must give as float does;
# below it export refuses the file unless forced. docs/deploy.md's int8 files changed 5.2 % of the test
# answers with the stem's wide tensors in 16 bits, and 34.7 % with every activation in 8 bits.
AGREEMENT_FLOOR = 0.90


def quantize_onnx(
    float_path: str | pathlib.Path,
    out_path: str | pathlib.Path,
    calibration: np.ndarray,
    *,
    per_channel: bool = True,
    method: str = "minmax",
    float_ops: Sequence[str] = (),
    activations: str = "uint8",
    input_name: str = "images",
    batch_size: int = 16,
    prepared_path: str | pathlib.Path | None = None,
    wide_ratio: float | None = WIDE_RATIO,
) -> dict[str, Any]:
    """Writes the int8 QDQ model of ``float_path`` to ``out_path``; returns its quantisation settings.

    ``calibration``: float32 NHWC images, normalised as the model's input (transposed to NCHW here).
    ``activations='int16'`` (int8 weights, 16-bit activations: not full-integer int8, a remedy measured in
    docs/deploy.md) keeps each ReLU as its own operator, since a ReLU folded into its convolution's
    output range is lost where that range is [0, 0] and the activations are signed. ``prepared_path``: also
    keep the pre-processed float graph there (its tensors have the names the int8 graph quantises).
    ``wide_ratio``: see :func:`wide_tensors` (None: every activation in 8 bits)."""
    import onnx
    from onnxruntime import quantization as q

    if activations not in ACTIVATIONS:
        raise ValueError(f"unknown activation type {activations!r}; expected one of {ACTIVATIONS}")
    if method not in METHODS:
        raise ValueError(f"unknown calibration method {method!r}; expected one of {METHODS}")
    if len(calibration) == 0:
        raise ValueError("int8 quantisation needs calibration images")
    nchw = np.ascontiguousarray(np.asarray(calibration, np.float32).transpose(0, 3, 1, 2))

    class Reader(q.CalibrationDataReader):
        def __init__(self) -> None:
            self.starts = iter(range(0, len(nchw), batch_size))

        def get_next(self) -> dict[str, np.ndarray] | None:
            start = next(self.starts, None)
            return None if start is None else {input_name: nchw[start : start + batch_size]}

    with tempfile.TemporaryDirectory() as tmp:
        prepared = pathlib.Path(tmp) / "prepared.onnx"
        q.quant_pre_process(str(float_path), str(prepared), skip_symbolic_shape=True)
        if prepared_path is not None:
            import shutil

            shutil.copy(prepared, prepared_path)
        wide = [] if wide_ratio is None or activations != "uint8" else wide_tensors(prepared, nchw, wide_ratio)
        overrides = {name: [{"quant_type": q.QuantType.QUInt16}] for name in wide}
        op_types = None
        if float_ops:
            present = {n.op_type for n in onnx.load(str(prepared)).graph.node}
            op_types = sorted(present - set(float_ops) - {"QuantizeLinear", "DequantizeLinear"})
        q.quantize_static(
            str(prepared),
            str(out_path),
            Reader(),
            quant_format=q.QuantFormat.QDQ,
            per_channel=per_channel,
            activation_type=q.QuantType.QUInt8 if activations == "uint8" else q.QuantType.QInt16,
            weight_type=q.QuantType.QInt8,
            op_types_to_quantize=op_types,
            calibrate_method={
                "minmax": q.CalibrationMethod.MinMax,
                "entropy": q.CalibrationMethod.Entropy,
                "percentile": q.CalibrationMethod.Percentile,
            }[method],
            extra_options={"QDQKeepRemovableActivations": activations == "int16", "TensorQuantOverrides": overrides},
        )
        agreement = _agreement(prepared, out_path, nchw, input_name, batch_size)
    weights = "int8 " + ("per channel" if per_channel else "per tensor")
    return {"calibration_agreement": agreement, "tool": "onnxruntime.quantization.quantize_static", "format": "QDQ"} | {
        "weights": weights, "activations": f"{activations} per tensor", "calibration_method": method,
        "calibration_images": int(len(calibration)), "float_ops": list(float_ops), "uint16_activations": wide,
    }  # fmt: skip


def wide_tensors(prepared: str | pathlib.Path, nchw: np.ndarray, ratio: float = WIDE_RATIO) -> list[str]:
    """The activations of the pre-processed float graph whose range over ``nchw`` (the calibration images)
    is more than ``ratio`` times the range of their 0.01-99.99 % percentiles, in graph order."""
    import onnx

    from caco_jax.interop.quant_analysis import ranges

    model = onnx.load(str(prepared))
    names = [o for node in model.graph.node for o in node.output if o]
    found = ranges(model, nchw, names)
    return [
        n
        for n in names
        if found[n]["max"] - found[n]["min"] > ratio * max(found[n]["p99.99"] - found[n]["p0.01"], 1e-12)
    ]


def _agreement(
    float_path: pathlib.Path, int8_path: str | pathlib.Path, nchw: np.ndarray, input_name: str, batch: int
) -> float:
    """The share of the calibration images whose top class the int8 model gives as the float one does (its
    first output, the logits): a check that the file keeps its answers, not a measure of them (those images
    set the ranges; docs/deploy.md measures on test images)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    sessions = [
        ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"]) for p in (float_path, int8_path)
    ]
    same = 0
    for start in range(0, len(nchw), batch):
        x = {input_name: nchw[start : start + batch]}
        f, q = (np.asarray(s.run(None, x)[0]).argmax(-1) for s in sessions)
        same += int((f == q).sum())
    return same / len(nchw)
