"""Model weights on disk: orbax checkpoints of an NNX model, and pretrained-init dispatch.

Weights are stored as a flat ``{"blocks/0/expand/conv/kernel": array, ...}`` dict (the
NNX parameter and BatchNorm-statistic paths joined by '/'), which orbax handles
without any knowledge of NNX and which reads like the model's structure.
"""
from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from caco_jax.convert import load_torchvision
from caco_jax.models.mobilenetv3 import ARCHS

WEIGHTS_FILTER = (nnx.Param, nnx.BatchStat)
_META = "caco_jax_weights.json"


def flatten(tree: Mapping[Any, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mapping -> {'a/b/c': leaf}."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out |= flatten(v, key + "/")
        else:
            out[key] = v
    return out


def unflatten_into(template: Mapping[Any, Any], flat: Mapping[str, Any], prefix: str = "") -> dict[Any, Any]:
    """Rebuilds ``template``'s nesting (including int keys) from a flat dict."""
    out: dict[Any, Any] = {}
    for k, v in template.items():
        key = f"{prefix}{k}"
        out[k] = unflatten_into(v, flat, key + "/") if isinstance(v, Mapping) else flat[key]
    return out


def model_weights(model: nnx.Module) -> dict[str, np.ndarray]:
    """Flat dict of the model's parameters and BatchNorm statistics (host numpy)."""
    return {k: np.asarray(v) for k, v in flatten(nnx.to_pure_dict(nnx.state(model, WEIGHTS_FILTER))).items()}


def assign_weights(model: nnx.Module, flat: Mapping[str, Any], *, source: str) -> None:
    """Writes a flat weights dict into ``model``; every key and shape must match."""
    state = nnx.state(model, WEIGHTS_FILTER)
    template = nnx.to_pure_dict(state)
    expected = {k: np.shape(v) for k, v in flatten(template).items()}
    missing = sorted(set(expected) - set(flat))
    unexpected = sorted(set(flat) - set(expected))
    wrong = sorted(k for k in expected.keys() & flat.keys() if tuple(np.shape(flat[k])) != expected[k])
    if missing or unexpected or wrong:
        details = [f"missing {missing[:5]}" if missing else "", f"unexpected {unexpected[:5]}" if unexpected else "",
                   "shape mismatch " + ", ".join(f"{k}: {np.shape(flat[k])} vs {expected[k]}" for k in wrong[:5])
                   if wrong else ""]
        raise ValueError(
            f"weights in {source} do not fit this model ({'; '.join(d for d in details if d)}); "
            "were they saved for another arch, attention or class count?"
        )
    nnx.replace_by_pure_dict(state, unflatten_into(template, {k: jax.numpy.asarray(v) for k, v in flat.items()}))
    nnx.update(model, state)


def save_weights(model: nnx.Module, directory: str | os.PathLike, *, metadata: Mapping[str, Any] | None = None) -> pathlib.Path:
    """Saves the model's weights as an orbax checkpoint in ``directory`` (plus a JSON sidecar)."""
    directory = pathlib.Path(directory).resolve()
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(directory / "weights", model_weights(model), force=True)
    (directory / _META).write_text(json.dumps(dict(metadata or {}), indent=2, default=str))
    return directory


def read_weights(directory: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Reads a :func:`save_weights` directory: (flat weights, metadata)."""
    directory = pathlib.Path(directory).resolve()
    if not (directory / "weights").is_dir():
        raise FileNotFoundError(
            f"no caco-jax weights at {directory} (expected {directory / 'weights'}); "
            "create them with scripts/convert_torchvision.py"
        )
    with ocp.StandardCheckpointer() as ckpt:
        flat = ckpt.restore(directory / "weights")
    meta_file = directory / _META
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    return {k: np.asarray(v) for k, v in flat.items()}, meta


def load_pretrained(model: nnx.Module, path: str | os.PathLike) -> str:
    """Initialises ``model`` from ``path`` and returns a summary of what was loaded.

    ``path`` is a torchvision ``.pth`` state_dict (full or backbone-only; converted on
    the fly, no torch needed) or a directory written by :func:`save_weights`
    (e.g. by scripts/convert_torchvision.py).
    """
    path = pathlib.Path(path)
    if path.is_dir():
        flat, meta = read_weights(path)
        assign_weights(model, flat, source=str(path))
        return f"loaded {len(flat)} arrays from caco-jax weights {path} ({meta.get('source', 'unknown source')})"
    if not path.exists():
        raise FileNotFoundError(
            f"pretrained weights not found: {path}; give a torchvision mobilenet_v3 .pth file or a "
            "directory written by scripts/convert_torchvision.py (or set the pretrained path to '' "
            "to start from scratch)"
        )
    return load_torchvision(model, path).summary()


def infer_model_config(flat: Mapping[str, Any]) -> dict[str, Any]:
    """arch, attention, attention_init and num_classes of the model that wrote ``flat`` (from its keys and shapes).

    (``ca_activation`` and ``bn_momentum`` leave no trace in the weights.)"""
    keys = list(flat)
    blocks = {int(k.split("/")[1]) for k in keys if k.startswith("blocks/")}
    archs = [name for name, spec in ARCHS.items() if len(spec.blocks) == len(blocks)]
    if len(archs) != 1 or "classifier/kernel" not in flat:
        raise ValueError(f"these weights are not a caco-jax MobileNetV3 ({len(blocks)} blocks, keys {keys[:3]} ...)")
    inside = {k.split("/attention/", 1)[1] for k in keys if "/attention/" in k}
    parts = {p.split("/")[0] for p in inside}
    if not parts:
        attention = "none"
    elif parts == {"mlp"}:
        attention = "se"
    elif parts == {"kernel"}:
        attention = "eca"
    elif parts == {"se", "coord"}:
        attention = "seco"
    elif parts == {"channel", "coord"}:
        attention = "caco"
    elif parts == {"channel", "spatial"}:
        attention = "cbam"
    else:
        raise ValueError(f"unknown attention block with parts {sorted(parts)}")
    channel_gain = any(p.endswith("max_gain") for p in inside)
    gated_gain = any(p.endswith("/gain") for p in inside)
    init = {(True, True): "preserve", (True, False): "preserve_channel", (False, True): "preserve_coord",
            (False, False): "plain"}[(channel_gain, gated_gain)]
    if attention == "seco" and init == "plain":
        init = "preserve_channel"  # seco has no max branch: both inits leave it without gains
    if attention in ("se", "eca", "none"):
        init = "preserve"  # no gains to tell (the default)
    return {"arch": archs[0], "attention": attention, "attention_init": init,
            "num_classes": int(np.shape(flat["classifier/kernel"])[-1])}


def model_from_weights(directory: str | os.PathLike, **overrides: Any) -> tuple[nnx.Module, dict[str, Any]]:
    """(model holding the weights of a :func:`save_weights` directory, its metadata).

    The architecture, attention, attention init and class count come from the weights
    themselves (:func:`infer_model_config`); ``ca_activation`` (and any other
    ``create_model`` argument in ``overrides``) from the metadata, else ``create_model``'s
    default. ``overrides`` win over both.
    """
    from caco_jax.models import MobileNetV3

    flat, meta = read_weights(directory)
    kwargs = infer_model_config(flat)
    if "ca_activation" in meta:
        kwargs["ca_activation"] = meta["ca_activation"]
    kwargs |= {k: v for k, v in overrides.items() if v is not None}
    # Abstract shapes, then the stored arrays: every array is in the weights, so nothing is initialised.
    model = nnx.eval_shape(lambda: MobileNetV3(dropout=0.0, **kwargs, rngs=nnx.Rngs(0)))
    assign_weights(model, flat, source=str(directory))
    model.eval()
    return model, meta
