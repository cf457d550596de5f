"""A model from anything: a torchvision ``.pth``, torchvision's ImageNet weights, a weights directory,
or a training run (its config and its ``best/`` weights, checked against the checkpoint that records
them).

The on-disk weights format and its writer are :mod:`caco_jax.runs.weights`; the check of a run's
``best/`` against its checkpoints is :mod:`caco_jax.runs.best`.
"""

from __future__ import annotations

import os
import pathlib
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
from flax import nnx

from caco_jax.errors import RunDirError, RunTooOld, WeightsError
from caco_jax.interop.convert import load_torchvision
from caco_jax.models import MobileNetV3, attention, model_from_config
from caco_jax.models.mobilenetv3 import ARCHS
from caco_jax.runs.best import verified
from caco_jax.runs.integrity import INTEGRITY, META, WeightsDamaged, check_weights
from caco_jax.runs.weights import assign_weights
from caco_jax.runs.workspace import load_config


def read_weights(directory: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Reads a :func:`~caco_jax.runs.weights.save_weights` directory: (flat weights, metadata), verified
    against the checksums recorded when it was written. A run's ``best/`` is verified against the
    checkpoint that records it, and restored from it when damaged (:mod:`caco_jax.runs.best`); other
    damage is a :class:`WeightsDamaged` naming the file, weights an older caco-jax wrote (no checksums)
    a :class:`~caco_jax.errors.RunTooOld`."""
    directory = pathlib.Path(directory).resolve()
    recorded = directory.name == "best" and (directory.parent / "checkpoints").is_dir()  # its checkpoint decides
    a_run = recorded or (directory.name == "best" and (directory.parent / "config.json").is_file())
    if not _settled(directory):
        if recorded:  # lost: the checkpoint recording them restores them
            return _strip(verified(directory, None, {}, f"{directory / 'weights'} is missing"))
        if a_run:
            raise WeightsDamaged(
                f"{directory / 'weights'} is missing and no checkpoint in {directory.parent / 'checkpoints'} "
                "records the best weights: rerun the training command (or train again)"
            )
        raise RunDirError(
            f"no caco-jax weights at {directory} (expected {directory / 'weights'}): give a training run's "
            "--workdir (its best/ weights), or weights made by caco-jax convert"
        )
    flat, meta, problem = check_weights(directory)
    if meta and "checksums" not in meta:  # metadata from before weights recorded their checksums
        raise RunTooOld(
            directory.parent if directory.name == "best" else directory, f"{directory} records no checksums"
        )
    if recorded and problem is None and not meta:
        problem = f"{directory / META} is missing"
    if recorded:
        flat, meta = verified(directory, flat, meta, problem)
    elif problem is not None or flat is None:
        raise WeightsDamaged(f"{problem}; nothing beside them records them: copy them again, or rerun what wrote them")
    return _strip((flat, meta))


def _settled(directory: pathlib.Path) -> bool:
    """Whether ``directory/weights`` is there, given a training run a moment to finish moving a new
    copy into place (``best.old`` present: ``WeightsWriter._promote`` is between its two renames)."""
    old = directory.with_name(directory.name + ".old")
    for _ in range(20):
        if (directory / "weights").is_dir() or directory.name != "best" or not old.exists():
            break
        time.sleep(0.1)
    return (directory / "weights").is_dir()


def _strip(read: tuple[dict[str, np.ndarray], dict[str, Any]]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(weights, metadata without the checksums it records)."""
    return read[0], {k: v for k, v in read[1].items() if k not in INTEGRITY}


def load_pretrained(model: MobileNetV3, path: str | os.PathLike) -> str:
    """Initialises ``model`` from ``path`` and returns a summary of what was loaded.

    ``path`` is a torchvision ``.pth`` state_dict (full or backbone-only; converted on
    the fly, no torch needed), a directory written by :func:`~caco_jax.runs.weights.save_weights`
    (e.g. by ``caco-jax convert``), or ``'imagenet'``: torchvision's ImageNet file for
    ``model.arch``, downloaded once into the user cache and checked
    (:func:`caco_jax.interop.imagenet.fetch`).
    """
    fetched = os.fspath(path) == "imagenet"
    if fetched:
        from caco_jax.interop import imagenet

        path = imagenet.fetch(model.arch)
    path = pathlib.Path(path)
    if path.is_dir():
        flat, meta = read_weights(path)
        assign_weights(model, flat, source=str(path))
        return f"loaded {len(flat)} arrays from caco-jax weights {path} ({meta.get('source', 'unknown source')})"
    if not path.exists():
        raise WeightsError(
            f"pretrained weights not found: {path}; give a torchvision mobilenet_v3 .pth file, a "
            "directory written by caco-jax convert, 'imagenet' (fetched once and checked) or '' "
            "(from scratch)"
        )
    summary = load_torchvision(model, path).summary()
    return f"torchvision's ImageNet weights {path}:\n{summary}" if fetched else summary


def infer_model_config(flat: Mapping[str, Any]) -> dict[str, Any]:
    """arch, attention, attention_init and num_classes of the model that wrote ``flat`` (from its keys and
    shapes): the attention block is the registered one whose parameter layout matches
    (``caco_jax.models.attention.identify``). ``ca_activation`` and ``bn_momentum`` leave no trace."""
    keys = list(flat)
    blocks = {int(k.split("/")[1]) for k in keys if k.startswith("blocks/")}
    archs = [name for name, spec in ARCHS.items() if len(spec.blocks) == len(blocks)]
    if len(archs) != 1 or "classifier/kernel" not in flat:
        raise WeightsError(f"these weights are not a caco-jax MobileNetV3 ({len(blocks)} blocks, keys {keys[:3]} ...)")
    per_block: dict[str, set[str]] = {}
    for k in keys:
        if "/attention/" in k:
            head, inside = k.split("/attention/", 1)
            per_block.setdefault(head, set()).add(inside)
    found = attention.identify(next(iter(per_block.values()), set()))
    if found is None:
        parts = sorted({p.split("/")[0] for p in next(iter(per_block.values()), set())})
        raise WeightsError(
            f"these weights hold an attention block with parts {parts} that no registered "
            f"attention lays out (registered: {', '.join(attention.ATTENTION_BLOCKS)})"
        )
    return {
        "arch": archs[0],
        "attention": found[0],
        "attention_init": found[1],
        "num_classes": int(np.shape(flat["classifier/kernel"])[-1]),
    }


def model_from_weights(directory: str | os.PathLike, **overrides: Any) -> tuple[MobileNetV3, dict[str, Any]]:
    """(model holding the weights of a :func:`~caco_jax.runs.weights.save_weights` directory, its metadata).

    The architecture, attention, attention init and class count come from the weights
    themselves (:func:`infer_model_config`); ``ca_activation`` (and any other
    ``create_model`` argument in ``overrides``) from the metadata, else ``create_model``'s
    default. ``overrides`` win over both.
    """
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


def load_trained(
    workdir: str | pathlib.Path, weights: str | pathlib.Path | None = None
) -> tuple[Any, MobileNetV3, dict[str, Any], pathlib.Path]:
    """(config, model in eval mode, weights metadata, weights dir) of a training run.

    ``weights`` defaults to ``workdir/best`` (the best validation BACC), written by
    caco-jax train; any directory in that format that records its class names works (the same
    architecture and class count). ``metadata['class_names']`` names the classes.
    """
    workdir = pathlib.Path(workdir)
    config = load_config(workdir)
    weights_dir = pathlib.Path(weights) if weights else workdir / "best"
    flat, meta = read_weights(weights_dir)
    if not meta.get("class_names"):
        raise WeightsError(f"{weights_dir} does not record its class names (caco_jax_weights.json: class_names)")
    model = model_from_config(config.model, num_classes=len(meta["class_names"]), seed=config.seed)
    assign_weights(model, flat, source=str(weights_dir))
    model.eval()
    return config, model, meta, weights_dir
