"""PyTorch state_dicts <-> caco-jax NNX models: torchvision checkpoints and the reference models.

:func:`load_torchvision` takes either key layout (``caco_jax.interop.key_maps``: torchvision's, or
the variant's reference model's; a checkpoint with any reference-only key is read as a reference
checkpoint, which must then be complete). Accounting is strict: every key is either loaded or
skipped on purpose with a reason (BatchNorm's ``num_batches_tracked``; SE weights in a variant
without an SE-shaped MLP; a last layer whose class count differs), and any other key, a shape
mismatch or a missing tensor raises an error naming it and saying what to do. What stays at
initialisation is listed with the reason. :func:`export_state_dict` writes the reference layout
(it loads with ``strict=True`` into the reference module).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
from flax import nnx

from caco_jax.errors import WeightsError
from caco_jax.interop.key_maps import INVERSE, Path, _guess_variant, attention_keys, key_map, reference_key_map
from caco_jax.interop.torch_io import load_state_dict
from caco_jax.models.attention import why_new
from caco_jax.models.mobilenetv3 import MobileNetV3

_HEAD_KEYS = ("classifier.0.weight", "classifier.0.bias", "classifier.3.weight", "classifier.3.bias")


class ConversionError(WeightsError):
    """A checkpoint does not fit the model (unknown key, shape mismatch, missing tensor)."""


@dataclasses.dataclass
class ConversionReport:
    """What a conversion loaded, what it skipped on purpose, and what stayed at init."""

    loaded: list[str] = dataclasses.field(default_factory=list)
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)
    initialised: dict[str, str] = dataclasses.field(default_factory=dict)
    loaded_params: int = 0
    total_params: int = 0
    layout: str = "torchvision"  # or "reference" (caco_jax.interop.torch_reference's keys for the variant)

    def summary(self) -> str:
        """A human-readable account, grouped by reason."""
        source = "the torchvision checkpoint" if self.layout == "torchvision" else "the reference-model checkpoint"
        lines = [
            f"loaded {len(self.loaded)} tensors ({self.loaded_params:,} of {self.total_params:,} "
            f"parameters) from {source}"
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
        inside = tuple(map(str, path[path.index("attention") + 1 :]))
        return why_new(attention, inside) or "this attention block has no ImageNet counterpart"
    return "not in the checkpoint"


def _unknown_hint(model: MobileNetV3, unknown: list[str], keys: list[str]) -> str:
    """What to do about ``unknown`` keys (of a checkpoint with ``keys``)."""
    if all(k.endswith(("max_gain", ".gain")) for k in unknown):
        return (
            "these are attention gains, which only a preserving attention_init has: build the model with the "
            f"attention_init the checkpoint was saved with (this one has {model.attention_init!r})"
        )
    variant = _guess_variant(keys)
    if variant and variant != model.attention_name:
        return (
            f"they look like the reference layout of attention {variant!r}: build the model with that "
            f"attention (this one has {model.attention_name!r})"
        )
    return (
        f"is this a mobilenet_v3_{model.arch} state_dict? (strip a 'module.' prefix from DataParallel "
        "checkpoints first)"
    )


def load_torchvision(model: MobileNetV3, state_dict: Mapping[str, Any] | str | os.PathLike) -> ConversionReport:
    """Loads a PyTorch MobileNetV3 state_dict (dict or ``.pth`` path) into ``model`` in place.

    Either layout (module docstring): a torchvision checkpoint, or one of the reference
    model of this variant (``export_state_dict``, or ``caco_jax.interop.torch_reference``'s module
    trained in PyTorch). Backbone-only files (no ``classifier.*``) load and leave the head
    at its initialisation; a last layer whose class count differs from the model's is
    skipped (transfer learning to a new label set). Raises ConversionError for unknown
    keys, other shape mismatches and missing tensors, and changes nothing then.
    """
    sd = _numpy_state_dict(state_dict)
    keys = _choose_layout(model, sd)
    _check_keys(model, sd, keys)
    state = nnx.state(model, (nnx.Param, nnx.BatchStat))
    pure = nnx.to_pure_dict(state)
    report = ConversionReport(layout=keys.layout)
    head_reason = _load_tensors(model, sd, keys, pure, report)
    _list_initialised(model, pure, keys, report, head_reason)
    nnx.replace_by_pure_dict(state, pure)
    nnx.update(model, state)
    return report


@dataclasses.dataclass(frozen=True)
class _Keys:
    """How a checkpoint's keys map onto the model, in the layout it was read as."""

    layout: str  # "torchvision" or "reference"
    mapping: dict[str, tuple[Path, Any]]  # torch key -> (NNX path, transform)
    skipped: dict[str, str]  # torch keys this variant skips on purpose -> why


def _numpy_state_dict(state_dict: Mapping[str, Any] | str | os.PathLike) -> dict[str, np.ndarray]:
    """``state_dict`` (a mapping of tensors or arrays, or a ``.pth`` path) as numpy arrays."""
    if not isinstance(state_dict, Mapping):
        state_dict = load_state_dict(state_dict)
    return {k: np.asarray(v.detach().cpu().numpy() if hasattr(v, "detach") else v) for k, v in state_dict.items()}


def _choose_layout(model: MobileNetV3, sd: Mapping[str, Any]) -> _Keys:
    """The reference layout when any key of ``sd`` is reference-only, else torchvision's."""
    tv_mapping, tv_skipped = key_map(model)
    ref_mapping = reference_key_map(model)
    if any(k in ref_mapping and k not in tv_mapping for k in sd):
        return _Keys("reference", ref_mapping, {})
    return _Keys("torchvision", tv_mapping, tv_skipped)


def _check_keys(model: MobileNetV3, sd: Mapping[str, Any], keys: _Keys) -> None:
    """Raises ConversionError (naming the keys and what to do) for keys of ``sd`` the model has no place for,
    and for tensors of the model (the head aside) that ``sd`` lacks."""
    skipped = keys.skipped
    unknown = [k for k in sd if k not in keys.mapping and k not in skipped and not k.endswith("num_batches_tracked")]
    if unknown:
        where = ("torchvision's" if keys.layout == "torchvision" else "the reference") + f" mobilenet_v3_{model.arch}"
        raise ConversionError(
            f"{len(unknown)} checkpoint key(s) do not belong to {where} with attention {model.attention_name!r}"
            f" (attention_init {model.attention_init!r}): {unknown[:5]}{' ...' if len(unknown) > 5 else ''}; "
            + _unknown_hint(model, unknown, list(sd))
        )
    missing = [k for k in keys.mapping if k not in sd and k not in _HEAD_KEYS]
    if missing:
        hint = ""
        if all(k.endswith(("max_gain", ".gain")) for k in missing):
            hint = (
                f"; the checkpoint has no attention gains: it was saved from a model with another "
                f"attention_init (this one has {model.attention_init!r}, e.g. 'plain' has none)"
            )
        what = "backbone " if keys.layout == "torchvision" else ""
        raise ConversionError(
            f"checkpoint lacks {len(missing)} {what}tensor(s) of the {keys.layout} mobilenet_v3_{model.arch} with "
            f"attention {model.attention_name!r}: {missing[:5]}{' ...' if len(missing) > 5 else ''}{hint}"
        )


def _load_tensors(
    model: MobileNetV3, sd: Mapping[str, np.ndarray], keys: _Keys, pure: dict, report: ConversionReport
) -> str | None:
    """Writes every tensor of ``sd`` into ``pure`` (our layout and dtype), or records why it is skipped;
    returns why the head stays at initialisation (None when the checkpoint's head loads).

    Raises ConversionError on a shape mismatch other than the last layer's class count."""
    absent_head = [k for k in _HEAD_KEYS if k not in sd]
    head_reason = "backbone-only checkpoint (no classifier.* tensors)" if absent_head else None
    for key, value in sd.items():
        if key.endswith("num_batches_tracked"):
            report.skipped[key] = "BatchNorm step counter (unused: momentum is fixed)"
            continue
        if key in keys.skipped:
            report.skipped[key] = keys.skipped[key]
            continue
        path, fn = keys.mapping[key]
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
        if not key.endswith(("running_mean", "running_var")):
            report.loaded_params += int(new.size)
    return head_reason


def _list_initialised(
    model: MobileNetV3, pure: Mapping, keys: _Keys, report: ConversionReport, head_reason: str | None
) -> None:
    """Sets the report's parameter total and lists, with the reason, every array left at initialisation."""
    loaded_paths = {keys.mapping[k][0] for k in report.loaded}
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    report.total_params = int(sum(np.size(_get(params, p)) for p in _leaf_paths(params)))
    for path in _leaf_paths(pure):
        if path not in loaded_paths:
            report.initialised["/".join(map(str, path))] = _why_initialised(path, head_reason, model.attention_name)


def export_state_dict(model: MobileNetV3) -> dict[str, np.ndarray]:
    """The model as a PyTorch state_dict (numpy arrays) of its reference module.

    It loads with ``strict=True`` into ``caco_jax.interop.torch_reference.reference_model(arch,
    attention, num_classes=..., attention_init=...)`` built like ``model`` (for
    ``attention='se'``: torchvision's ``mobilenet_v3_<arch>(num_classes=...)`` itself), and
    back into caco-jax with :func:`load_torchvision`. No PyTorch needed.
    """
    if model.arch not in ("small", "large"):
        raise ValueError(f"torchvision has no mobilenet_v3_{model.arch}")
    return _export(model, reference_key_map(model))


def export_block(block: nnx.Module) -> dict[str, np.ndarray]:
    """One attention block as the state_dict of its ``caco_jax.interop.torch_reference`` twin (``strict=True``)."""
    return _export(block, attention_keys(block, "", ()))


def _export(module: nnx.Module, mapping: Mapping[str, tuple[Path, Any]]) -> dict[str, np.ndarray]:
    pure = nnx.to_pure_dict(nnx.state(module, (nnx.Param, nnx.BatchStat)))
    out: dict[str, np.ndarray] = {}
    for key, (path, fn) in mapping.items():
        out[key] = np.array(INVERSE[fn](np.asarray(_get(pure, path))), dtype=np.float32)
        if key.endswith("running_var"):
            out[key[: -len("running_var")] + "num_batches_tracked"] = np.zeros((), np.int64)
    return out
