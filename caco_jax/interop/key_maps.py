"""The key layouts of PyTorch MobileNetV3 state_dicts, mapped to caco-jax's NNX paths.

Two layouts, both torchvision's ``mobilenet_v3_small`` / ``_large``::

    features.0.{0,1}                 stem conv / BN
    features.i.block.j.{0,1}         i = 1..n blocks; j runs over [expand], depthwise,
                                     [attention slot], project
    features.{n+1}.{0,1}             last 1x1 conv / BN
    classifier.0 / classifier.3      Linear 576->1024 / Linear 1024->num_classes

* **torchvision** (:func:`key_map`): the attention slot holds SE (``...block.j.fc1``,
  ``fc2``). Its SE weights go to the SE-shaped MLP of the variants that have one and are
  skipped (with the reason) by the others.
* **reference** (:func:`reference_key_map`): the slot holds the variant's own block as
  ``caco_jax.interop.torch_reference`` builds it, named mechanically from the NNX block's module
  tree (``...block.j.channel.mlp.fc1.weight``, ``...block.j.coord.bn1.running_var``,
  ``...block.j.channel.max_gain``; rules in ``caco_jax/models/attention.py``). For ``se`` the two
  layouts are the same: torchvision's own.

Each entry maps a PyTorch key to (NNX path, transform from PyTorch's layout to ours);
``INVERSE`` holds the way back.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import numpy as np
from flax import nnx

from caco_jax.models.attention import ATTENTION_BLOCKS, ATTENTION_INITS, layout
from caco_jax.models.layers import BatchNorm, Conv2d
from caco_jax.models.mobilenetv3 import ARCHS, MobileNetV3

Path = tuple[Any, ...]


def _conv(w: np.ndarray) -> np.ndarray:  # OIHW -> HWIO
    return np.transpose(w, (2, 3, 1, 0))


def _pointwise(w: np.ndarray) -> np.ndarray:  # 1x1 conv (O, I, 1, 1) -> dense (I, O)
    return np.transpose(w[:, :, 0, 0])


def _linear(w: np.ndarray) -> np.ndarray:  # (O, I) -> (I, O)
    return np.transpose(w)


def _same(w: np.ndarray) -> np.ndarray:
    return w


Transform = Callable[[np.ndarray], np.ndarray]

# PyTorch layout -> ours (the key), and back (the value).
INVERSE: dict[Transform, Transform] = {
    _conv: lambda k: np.transpose(k, (3, 2, 0, 1)),
    _pointwise: lambda k: np.transpose(k)[:, :, None, None],
    _linear: np.transpose,
    _same: lambda v: v,
}


def _conv_bn(torch_prefix: str, path: Path) -> dict[str, tuple[Path, Any]]:
    return {
        f"{torch_prefix}.0.weight": (path + ("conv", "kernel"), _conv),
        f"{torch_prefix}.1.weight": (path + ("bn", "scale"), _same),
        f"{torch_prefix}.1.bias": (path + ("bn", "bias"), _same),
        f"{torch_prefix}.1.running_mean": (path + ("bn", "mean"), _same),
        f"{torch_prefix}.1.running_var": (path + ("bn", "var"), _same),
    }


def key_map(model: MobileNetV3) -> tuple[dict[str, tuple[Path, Any]], dict[str, str]]:
    """torch key -> (NNX state path, transform), and torch keys this variant skips (-> why)."""
    spec = ARCHS[model.arch]
    mapping = _conv_bn("features.0", ("stem",))
    skipped: dict[str, str] = {}
    attention = ATTENTION_BLOCKS[model.attention_name]
    se_path = None if attention is None or attention.se_mlp_path is None else ("attention", *attention.se_mlp_path)
    width = spec.stem
    for i, block in enumerate(spec.blocks, start=1):
        j = 0
        if block.expanded != width:
            mapping |= _conv_bn(f"features.{i}.block.{j}", ("blocks", i - 1, "expand"))
            j += 1
        mapping |= _conv_bn(f"features.{i}.block.{j}", ("blocks", i - 1, "depthwise"))
        j += 1
        if block.attention:
            for fc in ("fc1", "fc2"):
                for kind, fn in (("weight", _pointwise), ("bias", _same)):
                    key = f"features.{i}.block.{j}.{fc}.{kind}"
                    if se_path is None:
                        skipped[key] = f"attention {model.attention_name!r} has no SE-shaped MLP"
                    else:
                        name = "kernel" if kind == "weight" else "bias"
                        mapping[key] = (("blocks", i - 1) + se_path + (fc, name), fn)
            j += 1
        mapping |= _conv_bn(f"features.{i}.block.{j}", ("blocks", i - 1, "project"))
        width = block.out
    mapping |= _conv_bn(f"features.{len(spec.blocks) + 1}", ("last_conv",))
    mapping["classifier.0.weight"] = (("head", "kernel"), _linear)
    mapping["classifier.0.bias"] = (("head", "bias"), _same)
    mapping["classifier.3.weight"] = (("classifier", "kernel"), _linear)
    mapping["classifier.3.bias"] = (("classifier", "bias"), _same)
    return mapping, skipped


# NNX parameter / statistic name -> PyTorch name, per kind of module holding it.
_BN_NAMES = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}


def _torch_leaf(parent: Any, name: str) -> tuple[str, Any]:
    """(PyTorch name, transform from the PyTorch layout to ours) of array ``name`` held by ``parent``."""
    if isinstance(parent, BatchNorm):
        return _BN_NAMES[name], _same
    if isinstance(parent, nnx.Linear):  # inside an attention block: a 1x1 conv on a pooled map
        return ("weight", _pointwise) if name == "kernel" else (name, _same)
    if isinstance(parent, Conv2d):
        return "weight", _conv
    return name, _same  # a bare parameter: gains, ECA's kernel


def attention_keys(block: nnx.Module, torch_prefix: str, path: Path) -> dict[str, tuple[Path, Any]]:
    """torch key -> (NNX path, transform) for every array of attention ``block`` (at ``path``),
    named mechanically from the module tree (see ``caco_jax/models/attention.py``)."""
    nodes = dict(nnx.iter_graph(block))
    out: dict[str, tuple[Path, Any]] = {}
    for sub, node in nodes.items():
        if not isinstance(node, (nnx.Param, nnx.BatchStat)):
            continue
        parts = []
        for depth, child in enumerate(sub[:-1]):
            renamed = getattr(nodes[sub[:depth]], "torch_names", {}).get(child, child)
            if renamed:
                parts.append(str(renamed))
        name, fn = _torch_leaf(nodes[sub[:-1]], str(sub[-1]))
        out[".".join(p for p in (torch_prefix, *parts, name) if p)] = (path + sub, fn)
    return out


def reference_key_map(model: MobileNetV3) -> dict[str, tuple[Path, Any]]:
    """torch key of ``caco_jax.interop.torch_reference.reference_model`` -> (NNX path, transform), for
    every parameter and BatchNorm statistic of ``model`` (torchvision's keys for ``se``)."""
    tv_mapping, _ = key_map(model)
    slots = _attention_slots(model)
    mapping = {k: v for k, v in tv_mapping.items() if not any(k.startswith(prefix + ".") for prefix in slots)}
    for prefix, index in slots.items():
        attention = model.blocks[index].attention
        if attention is not None:
            mapping |= attention_keys(attention, prefix, ("blocks", index, "attention"))
    return mapping


def _attention_slots(model: MobileNetV3) -> dict[str, int]:
    """torch prefix of every attention slot (``features.i.block.j``) -> block index."""
    slots, width = {}, ARCHS[model.arch].stem
    for i, block in enumerate(ARCHS[model.arch].blocks, start=1):
        if block.attention:
            slots[f"features.{i}.block.{1 if block.expanded == width else 2}"] = i - 1
        width = block.out
    return slots


def _torch_parts(name: str) -> set[str]:
    """The first PyTorch key component of every array of attention ``name`` (any init)."""
    block = ATTENTION_BLOCKS[name]
    if block is None:
        return set()
    renames = getattr(block, "torch_names", {})
    parts = set()
    for init in ATTENTION_INITS:
        for path in layout(name, init):
            first, _, rest = path.partition("/")
            renamed = renames.get(first, first)
            parts.add(renamed or rest.split("/")[0])
    return parts


def _guess_variant(keys: list[str]) -> str | None:
    """The registered attention variant(s) whose reference layout the unknown ``keys`` fit, if any."""
    found = set()
    for key in keys:
        match = re.search(r"\.block\.\d+\.([a-z_][a-z_0-9]*)\.", key)  # attention parts, not conv indices
        if match:
            found.add(match.group(1))
    if not found:
        return None
    fits = [name for name in ATTENTION_BLOCKS if found <= _torch_parts(name)]
    return " or ".join(fits) if fits else None
