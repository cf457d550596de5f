"""torchvision MobileNetV3 state_dict <-> caco-jax NNX model.

Key layout of torchvision's ``mobilenet_v3_small`` / ``_large``::

    features.0.{0,1}                 stem conv / BN
    features.i.block.j.{0,1}         i = 1..n blocks; j runs over [expand], depthwise,
                                     [SE (fc1, fc2)], project
    features.{n+1}.{0,1}             last 1x1 conv / BN
    classifier.0 / classifier.3      Linear 576->1024 / Linear 1024->num_classes

Accounting is strict: every torch key is either loaded or skipped on purpose with a
reason (BatchNorm's ``num_batches_tracked``; SE weights in a variant without an SE-shaped
MLP; a last layer whose class count differs), and any other key, a shape mismatch or a
missing backbone tensor raises an error naming it. What stays at initialisation is
listed with the reason. SE weights initialise the channel half of ``caco``, ``cbam``
and ``seco``, whose MLPs have SE's shape.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
from flax import nnx

from caco_jax.models.attention import attention_block, why_new
from caco_jax.models.mobilenetv3 import ARCHS, MobileNetV3
from caco_jax.torch_io import load_state_dict

Path = tuple[Any, ...]

_HEAD_KEYS = ("classifier.0.weight", "classifier.0.bias", "classifier.3.weight", "classifier.3.bias")


class ConversionError(ValueError):
    """A checkpoint does not fit the model (unknown key, shape mismatch, missing tensor)."""


@dataclasses.dataclass
class ConversionReport:
    """What a conversion loaded, what it skipped on purpose, and what stayed at init."""

    loaded: list[str] = dataclasses.field(default_factory=list)
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)
    initialised: dict[str, str] = dataclasses.field(default_factory=dict)
    loaded_params: int = 0
    total_params: int = 0

    def summary(self) -> str:
        """A human-readable account, grouped by reason."""
        lines = [
            f"loaded {len(self.loaded)} tensors ({self.loaded_params:,} of {self.total_params:,} "
            "parameters) from the torchvision checkpoint"
        ]
        for title, table in (("skipped (on purpose)", self.skipped), ("left at initialisation", self.initialised)):
            by_reason: dict[str, list[str]] = {}
            for key, why in table.items():
                by_reason.setdefault(why, []).append(key)
            for why, keys in by_reason.items():
                shown = ", ".join(keys[:3]) + (f", ... ({len(keys)} in all)" if len(keys) > 3 else "")
                lines.append(f"{title}: {why}: {shown}")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _conv(w: np.ndarray) -> np.ndarray:  # OIHW -> HWIO
    return np.transpose(w, (2, 3, 1, 0))


def _pointwise(w: np.ndarray) -> np.ndarray:  # 1x1 conv (O, I, 1, 1) -> dense (I, O)
    return np.transpose(w[:, :, 0, 0])


def _linear(w: np.ndarray) -> np.ndarray:  # (O, I) -> (I, O)
    return np.transpose(w)


def _same(w: np.ndarray) -> np.ndarray:
    return w


_INVERSE = {_conv: lambda k: np.transpose(k, (3, 2, 0, 1)), _pointwise: lambda k: np.transpose(k)[:, :, None, None],
            _linear: np.transpose, _same: lambda v: v}


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
    block = attention_block(model.attention_name)
    se_path = None if block is None or block.se_mlp_path is None else ("attention", *block.se_mlp_path)
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


def _get(tree: Mapping, path: Path) -> Any:
    for p in path:
        tree = tree[p]
    return tree


def _set(tree: dict, path: Path, value: Any) -> None:
    for p in path[:-1]:
        tree = tree[p]
    tree[path[-1]] = value


def _leaf_paths(tree: Mapping, prefix: Path = ()) -> list[Path]:
    out = []
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out += _leaf_paths(v, prefix + (k,))
        else:
            out.append(prefix + (k,))
    return out


def _why_initialised(path: Path, head_reason: str | None, attention: str) -> str:
    if path[0] in ("head", "classifier"):
        return head_reason or "not in the checkpoint"
    if "attention" in path:
        inside = tuple(map(str, path[path.index("attention") + 1:]))
        return why_new(attention, inside) or "this attention block has no ImageNet counterpart"
    return "not in the checkpoint"


def load_torchvision(
    model: MobileNetV3, state_dict: Mapping[str, Any] | str | os.PathLike
) -> ConversionReport:
    """Loads a torchvision MobileNetV3 state_dict (dict or ``.pth`` path) into ``model`` in place.

    Backbone-only files (no ``classifier.*``) load and leave the head at its
    initialisation; a last layer whose class count differs from the model's is skipped
    (transfer learning to a new label set). Raises ConversionError for unknown keys,
    other shape mismatches and missing backbone tensors.
    """
    if not isinstance(state_dict, Mapping):
        state_dict = load_state_dict(state_dict)
    sd = {k: np.asarray(v.detach().cpu().numpy() if hasattr(v, "detach") else v) for k, v in state_dict.items()}
    mapping, skipped_by_variant = key_map(model)
    state = nnx.state(model, (nnx.Param, nnx.BatchStat))
    pure = nnx.to_pure_dict(state)
    report = ConversionReport()

    unknown = [k for k in sd if k not in mapping and k not in skipped_by_variant and not k.endswith("num_batches_tracked")]
    if unknown:
        raise ConversionError(
            f"{len(unknown)} checkpoint key(s) do not belong to torchvision's mobilenet_v3_{model.arch}: "
            f"{unknown[:5]}{' ...' if len(unknown) > 5 else ''}. Is this a mobilenet_v3_{model.arch} state_dict? "
            "(strip a 'module.' prefix from DataParallel checkpoints first)"
        )
    missing = [k for k in mapping if k not in sd and k not in _HEAD_KEYS]
    if missing:
        raise ConversionError(
            f"checkpoint lacks {len(missing)} backbone tensor(s) of mobilenet_v3_{model.arch}: "
            f"{missing[:5]}{' ...' if len(missing) > 5 else ''}"
        )
    absent_head = [k for k in _HEAD_KEYS if k not in sd]
    head_reason = "backbone-only checkpoint (no classifier.* tensors)" if absent_head else None

    for key, value in sd.items():
        if key.endswith("num_batches_tracked"):
            report.skipped[key] = "BatchNorm step counter (unused: momentum is fixed)"
            continue
        if key in skipped_by_variant:
            report.skipped[key] = skipped_by_variant[key]
            continue
        path, fn = mapping[key]
        target = _get(pure, path)
        new = fn(value)
        if new.shape != target.shape:
            if key.startswith("classifier.3."):
                head_reason = (
                    f"last layer has {model.num_classes} classes, checkpoint {value.shape[0]}: "
                    "new layer for the new label set"
                )
                report.skipped[key] = head_reason
                continue
            raise ConversionError(
                f"shape mismatch for {key}: checkpoint {value.shape} -> {new.shape}, model expects "
                f"{target.shape} at {'/'.join(map(str, path))}"
            )
        _set(pure, path, new.astype(target.dtype))
        report.loaded.append(key)
        if key.split(".")[-1] in ("weight", "bias"):
            report.loaded_params += int(new.size)

    loaded_paths = {mapping[k][0] for k in report.loaded}
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    report.total_params = int(sum(np.size(_get(params, p)) for p in _leaf_paths(params)))
    for path in _leaf_paths(pure):
        if path not in loaded_paths:
            report.initialised["/".join(map(str, path))] = _why_initialised(path, head_reason, model.attention_name)
    nnx.replace_by_pure_dict(state, pure)
    nnx.update(model, state)
    return report


def export_torchvision(model: MobileNetV3) -> dict[str, np.ndarray]:
    """The model as a torchvision ``mobilenet_v3_<arch>`` state_dict (numpy arrays).

    Only ``attention='se'`` models have a torchvision counterpart; the result loads
    with ``strict=True`` into ``torchvision.models.mobilenet_v3_<arch>(num_classes=...)``.
    """
    if model.attention_name != "se":
        raise ValueError(
            f"only attention='se' models map onto torchvision; this one uses {model.attention_name!r}"
        )
    if model.arch not in ("small", "large"):
        raise ValueError(f"torchvision has no mobilenet_v3_{model.arch}")
    mapping, _ = key_map(model)
    pure = nnx.to_pure_dict(nnx.state(model, (nnx.Param, nnx.BatchStat)))
    out: dict[str, np.ndarray] = {}
    for key, (path, fn) in mapping.items():
        out[key] = np.asarray(_INVERSE[fn](np.asarray(_get(pure, path))), dtype=np.float32)
        if key.endswith(".1.running_var"):
            out[key[: -len("running_var")] + "num_batches_tracked"] = np.zeros((), np.int64)
    return out
