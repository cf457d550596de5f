"""What an exported model says about itself: a JSON file beside it (``m.onnx`` -> ``m.onnx.json``).

Everything ``caco-jax predict --model`` needs to classify as the run does, without the run: the class
names; the input (name, layout, size, dtype, and the preprocessing: RGB decoded as the run decodes,
resized to the input size, x / 255, then (x - mean) / std per channel); the outputs (``logits``,
``pooled``, ``hidden``); the run's colour constancy (``color_constancy``: computed in the exported
graph) and field-of-view crop (``fov_crop``: on the host, when decoding, since the crop's size depends
on the image; ``caco_jax.serving.portable`` does it); the temperature (``calibration.json``); the balanced decision rule
(``decision.json``) and the run's default rule and test-time augmentation; the reliability threshold
(``selective.json``); and the out-of-distribution guard (``ood.json``, with its arrays copied to
``m.onnx.ood.npz``). Absent parts are ``null``. Plain JSON and NumPy: no JAX, no torch.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import numpy as np

from caco_jax.data.classes import IMAGENET_MEAN, IMAGENET_STD
from caco_jax.data.constancy import OFF, ColorConstancy
from caco_jax.errors import UsageError
from caco_jax.evaluation import ood_score, side_files

SCHEMA = "caco-jax export 1"
FORMATS = {".onnx": "onnx", ".tflite": "litert"}
IN_THE_GRAPH = "in the graph"
FOV_CROP_WHERE = (
    "before the graph, when decoding, at the full image size (caco_jax.data.fov via caco_jax.data.images.decode; "
    "caco_jax.serving.portable does it): the crop's size depends on the image"
)


def metadata_path(model_path: str | pathlib.Path) -> pathlib.Path:
    """``m.onnx`` -> ``m.onnx.json``."""
    return pathlib.Path(f"{model_path}.json")


def guard_arrays_path(model_path: str | pathlib.Path) -> pathlib.Path:
    """``m.onnx`` -> ``m.onnx.ood.npz``: the guard's arrays (class means, precision or the kNN bank)."""
    return pathlib.Path(f"{model_path}.ood.npz")


def describe_run(
    weights_dir: pathlib.Path,
    *,
    class_names: tuple[str, ...] | list[str],
    image_size: tuple[int, int],
    default_decision: str = "argmax",
    tta: bool = False,
    model: dict[str, Any] | None = None,
    color: ColorConstancy = OFF,
    fov_crop: bool = False,
) -> dict[str, Any]:
    """The run's part of the metadata, read from the files saved beside its best weights; ``color`` and
    ``fov_crop``: how the run treats its images (its ``config.data``)."""
    rule = side_files.rule(weights_dir)
    guard = side_files.guard(weights_dir)
    return {
        "schema": SCHEMA,
        "class_names": list(class_names),
        "image_size": [int(image_size[0]), int(image_size[1])],
        "preprocessing": {
            "decode": "RGB, EXIF orientation applied (caco_jax.data.images.decode), resized to image_size",
            "scale": 1.0 / 255.0,
            "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD),
        },
        "color_constancy": color.describe(IN_THE_GRAPH),
        "fov_crop": {"enabled": True, "where": FOV_CROP_WHERE} if fov_crop else None,
        "temperature": side_files.temperature(weights_dir),
        "decision": {
            "default": default_decision,
            "balanced": None if rule is None else rule.to_json(),
            "clinic": side_files.clinic(weights_dir),
        },
        "tta_default": bool(tta),
        "selective": side_files.threshold(weights_dir),
        "ood": None
        if guard is None
        else {
            "method": guard.method,
            "layer": guard.layer,
            "threshold": guard.threshold,
            "far_threshold": guard.far_threshold,
            "info": guard.info,
        },
        "model": model or {},
        "source": str(weights_dir),
    }


def write(
    model_path: str | pathlib.Path,
    run: dict[str, Any],
    *,
    layout: str,
    input_name: str,
    precision: str,
    quantization: dict[str, Any] | None = None,
) -> pathlib.Path:
    """Writes ``model_path``'s metadata (and its guard's arrays, when the run has a guard); returns its path."""
    model_path = pathlib.Path(model_path)
    meta = dict(run)
    meta.update(
        file=model_path.name,
        format=FORMATS[model_path.suffix],
        precision=precision,
        quantization=quantization,
        input={"name": input_name, "layout": layout, "dtype": "float32"},
        outputs=["logits", "pooled", "hidden"],
    )
    if run.get("ood") is not None:
        guard = side_files.guard(run["source"])
        assert guard is not None
        arrays: dict[str, Any] = dict(guard.arrays)
        np.savez_compressed(guard_arrays_path(model_path), **arrays)
        meta["ood"] = dict(run["ood"], arrays=guard_arrays_path(model_path).name if guard.arrays else None)
    path = metadata_path(model_path)
    path.write_text(json.dumps(meta, indent=2))
    return path


def read(model_path: str | pathlib.Path) -> dict[str, Any]:
    """The metadata of an exported model (UsageError naming the file and what to do when it is missing)."""
    model_path = pathlib.Path(model_path)
    if model_path.suffix not in FORMATS:
        raise UsageError(f"{model_path}: not an exported model (.onnx or .tflite from caco-jax export)")
    if not model_path.is_file():
        raise UsageError(f"{model_path}: no such file")
    path = metadata_path(model_path)
    if not path.is_file():
        raise UsageError(
            f"{path} is missing: caco-jax export writes it beside the model (class names, preprocessing, "
            "temperature, decision rule); copy it with the model, or export again"
        )
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UsageError(f"{path} is not valid JSON ({err}); export the model again") from None
    if not isinstance(meta, dict) or meta.get("schema") != SCHEMA:
        raise UsageError(f"{path} is not caco-jax export metadata ({SCHEMA!r}); export the model again")
    return meta


def color_constancy(meta: dict[str, Any]) -> ColorConstancy:
    """The colour constancy the metadata says the graph computes (metadata written before it: none)."""
    described = meta.get("color_constancy")
    if not described:
        return OFF
    if described.get("where") != IN_THE_GRAPH:
        raise UsageError(f"colour constancy computed {described.get('where')!r}: this version computes it in the graph")
    return ColorConstancy(described["method"], described["p"])


def fov_crop(meta: dict[str, Any]) -> bool:
    """Whether images are cropped to their field of view before the graph (metadata written before it: no)."""
    return bool((meta.get("fov_crop") or {}).get("enabled", False))


def guard_from(model_path: str | pathlib.Path, meta: dict[str, Any]) -> ood_score.Guard | None:
    """The out-of-distribution guard the metadata describes (its arrays from ``m.onnx.ood.npz``), or None."""
    ood = meta.get("ood")
    if not ood:
        return None
    arrays: dict[str, np.ndarray] = {}
    if ood.get("arrays"):
        file = pathlib.Path(model_path).parent / ood["arrays"]
        if not file.is_file():
            raise UsageError(f"{file} is missing: the {ood['method']} guard needs it; copy it with the model")
        with np.load(file, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    far = ood.get("far_threshold")
    info = ood.get("info") or {}
    return ood_score.Guard(
        ood["method"], ood["layer"], float(ood["threshold"]), arrays, info, None if far is None else float(far)
    )
