"""Where 8 bits break an int8 ONNX model: each quantised activation tensor measured on its own (``onnx`` extra).

The int8 QDQ model onnxruntime's quantiser writes (``caco_jax.interop.quantize_onnx``) quantises a tensor
``t`` by a QuantizeLinear -> DequantizeLinear pair after it, whose output the consumers of ``t`` read.
From that model and its float twin (both after onnxruntime's pre-processing, so their tensors have the
same names) this module builds the two one-at-a-time variants of every quantised activation:

* ``only(t)``: the float model with exactly ``t``'s pair (its scale and zero point as the quantiser chose
  them) inserted: what quantising ``t`` alone costs;
* ``all_but(t)``: the int8 model with ``t``'s pair bypassed: what keeping ``t`` alone in float repairs.

Weights keep their int8 pairs in ``all_but`` and stay float in ``only``; ``weights_only`` removes every
activation pair (what the int8 weights alone cost). ``ranges`` reads each tensor's float range (min, max,
the 0.01 and 99.99 percentiles) on calibration images. Nothing here decides: the tool that uses it
(``tools/int8_sensitivity.py``) measures the variants on the validation split.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

import numpy as np

_QUANTIZE, _DEQUANTIZE = "QuantizeLinear", "DequantizeLinear"
_RENAMED = "_QuantizeLinear_Input"  # the quantiser's name for a graph output's float tensor


@dataclasses.dataclass(frozen=True)
class QuantisedTensor:
    """One activation tensor the int8 model quantises: its name in the float graph, the pair's nodes and
    parameters, and what produces and reads it."""

    name: str  # in the int8 graph
    dequantized: str  # the DequantizeLinear output the consumers read
    scale: str  # initializer names of the pair's parameters
    zero_point: str
    producer: str  # op type of the node that makes the tensor ('input' for the graph input)
    consumers: tuple[str, ...]  # op types that read it

    @property
    def float_name(self) -> str:
        """Its name in the float graph: a graph output the quantiser renamed keeps its name on the pair's
        output instead."""
        return self.dequantized if self.name.endswith(_RENAMED) else self.name


def _initializers(model: Any) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    return {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}


def quantised_activations(int8_model: Any) -> list[QuantisedTensor]:
    """Every activation (not weight) tensor the int8 QDQ model quantises, in graph order."""
    inits = _initializers(int8_model)
    nodes = list(int8_model.graph.node)
    producer = {out: n.op_type for n in nodes for out in n.output}
    for inp in int8_model.graph.input:
        producer[inp.name] = "input"
    readers: dict[str, list[str]] = {}
    for n in nodes:
        for i in n.input:
            readers.setdefault(i, []).append(n.op_type)
    by_output = {n.output[0]: n for n in nodes if n.op_type == _QUANTIZE}
    found = []
    for dq in nodes:
        if dq.op_type != _DEQUANTIZE or dq.input[0] not in by_output:
            continue
        q = by_output[dq.input[0]]
        source = q.input[0]
        if source in inits:  # a weight (or bias) pair
            continue
        found.append(
            QuantisedTensor(
                name=source,
                dequantized=dq.output[0],
                scale=q.input[1],
                zero_point=q.input[2] if len(q.input) > 2 else "",
                producer=producer.get(source, "?"),
                consumers=tuple(readers.get(dq.output[0], [])),
            )
        )
    return found


def pair_parameters(int8_model: Any, tensor: QuantisedTensor) -> tuple[np.ndarray, np.ndarray]:
    """(scale, zero point) the quantiser chose for ``tensor``."""
    inits = _initializers(int8_model)
    return inits[tensor.scale], inits[tensor.zero_point]


def _rename_inputs(nodes: Iterable[Any], old: str, new: str) -> None:
    for n in nodes:
        for i, name in enumerate(n.input):
            if name == old:
                n.input[i] = new


def only(float_model: Any, int8_model: Any, tensor: QuantisedTensor) -> Any:
    """The float model with ``tensor`` alone quantised as the int8 model quantises it (its readers read the
    pair's output; a graph output of the same name stays float)."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.ModelProto()
    model.CopyFrom(float_model)
    scale, zero = pair_parameters(int8_model, tensor)
    name = tensor.float_name
    q_out, dq_out = f"{name}__q", f"{name}__dq"
    s_name, z_name = f"{name}__scale", f"{name}__zero"
    model.graph.initializer.extend([numpy_helper.from_array(scale, s_name), numpy_helper.from_array(zero, z_name)])
    _rename_inputs(model.graph.node, name, dq_out)
    pair = [
        helper.make_node(_QUANTIZE, [name, s_name, z_name], [q_out], name=f"{name}__Q"),
        helper.make_node(_DEQUANTIZE, [q_out, s_name, z_name], [dq_out], name=f"{name}__DQ"),
    ]
    _insert_after(model, name, pair)
    return model


def _insert_after(model: Any, name: str, new_nodes: list[Any]) -> None:
    """Inserts ``new_nodes`` right after the node producing ``name`` (at the start for a graph input), so
    the graph stays topologically sorted."""
    nodes = list(model.graph.node)
    at = next((i + 1 for i, n in enumerate(nodes) if name in n.output), 0)
    del model.graph.node[:]
    model.graph.node.extend(nodes[:at] + new_nodes + nodes[at:])


def folded_relus(float_model: Any, int8_model: Any) -> set[str]:
    """Tensors whose ReLU the quantiser folded into their pair (the pair's range starts at 0, the Relu node
    is gone and the node before it writes its output): bypassing such a pair must put the ReLU back."""
    made_by_relu = {o for n in int8_model.graph.node if n.op_type == "Relu" for o in n.output}
    # the quantiser drops the Relu and lets the node before it write the Relu's output name
    return {n.output[0] for n in float_model.graph.node if n.op_type == "Relu" and n.output[0] not in made_by_relu}


def _bypass(model: Any, tensor: QuantisedTensor, relus: set[str]) -> None:
    """Consumers of ``tensor``'s pair read the float tensor (through a ReLU where the pair held one)."""
    from onnx import helper

    source = tensor.name
    if tensor.name in relus:
        source = f"{tensor.name}__relu"
        _insert_after(model, tensor.name, [helper.make_node("Relu", [tensor.name], [source], name=source)])
    _rename_inputs(model.graph.node, tensor.dequantized, source)


def all_but(int8_model: Any, tensor: QuantisedTensor, relus: set[str] = frozenset()) -> Any:  # type: ignore[assignment]
    """The int8 model with ``tensor``'s pair bypassed: its consumers read the float tensor. ``relus``:
    :func:`folded_relus`."""
    import onnx

    model = onnx.ModelProto()
    model.CopyFrom(int8_model)
    _bypass(model, tensor, relus)
    return _prune(model)


def weights_only(int8_model: Any, relus: set[str] = frozenset()) -> Any:  # type: ignore[assignment]
    """The int8 model with every activation pair bypassed: only the weights are quantised."""
    import onnx

    model = onnx.ModelProto()
    model.CopyFrom(int8_model)
    for tensor in quantised_activations(int8_model):
        _bypass(model, tensor, relus)
    return _prune(model)


def _prune(model: Any) -> Any:
    """Drops nodes whose outputs nothing reads (the bypassed pairs)."""
    outputs = {o.name for o in model.graph.output}
    while True:
        read = {i for n in model.graph.node for i in n.input} | outputs
        keep = [n for n in model.graph.node if any(o in read for o in n.output)]
        if len(keep) == len(model.graph.node):
            return model
        del model.graph.node[:]
        model.graph.node.extend(keep)


def ranges(float_model: Any, nchw: np.ndarray, names: list[str], *, batch_size: int = 32) -> dict[str, dict]:
    """Each named tensor's min, max and 0.01 / 99.99 percentiles over ``nchw`` (float32 NCHW, normalised),
    percentiles from a seeded sample of 200,000 values per tensor."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.ModelProto()
    model.CopyFrom(float_model)
    present = {o.name for o in model.graph.output}
    added = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names if n not in present]
    model.graph.output.extend(added)
    session = session_of(model)
    input_name = session.get_inputs()[0].name
    lo = {n: np.inf for n in names}
    hi = {n: -np.inf for n in names}
    samples: dict[str, list[np.ndarray]] = {n: [] for n in names}
    rng = np.random.default_rng(0)
    batches = range(0, len(nchw), batch_size)
    per_batch = max(1, 200_000 // max(1, len(batches)))
    for start in batches:
        values = session.run(names, {input_name: nchw[start : start + batch_size]})
        for n, v in zip(names, values, strict=True):
            flat = np.asarray(v, np.float32).ravel()
            lo[n], hi[n] = min(lo[n], float(flat.min())), max(hi[n], float(flat.max()))
            samples[n].append(flat[rng.integers(0, flat.size, size=min(per_batch, flat.size))])
    out = {}
    for n in names:
        s = np.concatenate(samples[n])
        p_lo, p_hi = np.percentile(s, [0.01, 99.99])
        out[n] = {"min": lo[n], "max": hi[n], "p0.01": float(p_lo), "p99.99": float(p_hi)}
    return out


def session_of(model: Any, threads: int = 0) -> Any:
    """An onnxruntime CPU session of an in-memory model (``threads`` 0: onnxruntime's default)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
