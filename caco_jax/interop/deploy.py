"""What ``caco-jax export`` writes for deployment: float32 and int8 ONNX and LiteRT files, each with its
metadata beside it (``caco_jax.interop.artifact``), and the calibration images int8 needs.

``--int8`` adds, beside each float file ``m.onnx`` / ``m.tflite``, its int8 twin ``m_int8.onnx`` /
``m_int8.tflite``; an int8 ONNX is always among them (beside the LiteRT file when only ``--tflite``
is given). The calibration images are the run's validation (or training) images, decoded and
normalised as evaluation does; never its test images.
"""

from __future__ import annotations

import pathlib
import shutil
import tempfile
from collections.abc import Callable
from typing import Any

import numpy as np

from caco_jax.data.classes import IMAGENET_MEAN, IMAGENET_STD
from caco_jax.errors import CacoError
from caco_jax.interop import artifact


class Int8Refused(CacoError):
    """The int8 file would change too many answers (its agreement with float is below the floor)."""


CALIBRATION_SPLITS = ("validation", "train")
DEFAULT_CALIBRATION_IMAGES = 256


def int8_path(path: pathlib.Path, suffix: str | None = None) -> pathlib.Path:
    """``m.tflite`` -> ``m_int8.tflite`` (``suffix`` changes the extension)."""
    return path.with_name(f"{path.stem}_int8{suffix or path.suffix}")


def normalise(images: np.ndarray) -> np.ndarray:
    """uint8 NHWC -> float32 ImageNet-normalised (the models' input)."""
    mean, std = np.asarray(IMAGENET_MEAN, np.float32), np.asarray(IMAGENET_STD, np.float32)
    return ((np.asarray(images, np.float32) / np.float32(255.0) - mean) / std).astype(np.float32)


def calibration_images(
    config: Any,
    workdir: pathlib.Path,
    *,
    size: tuple[int, int],
    split: str = "validation",
    count: int = DEFAULT_CALIBRATION_IMAGES,
    seed: int = 0,
) -> np.ndarray:
    """``count`` images of the run's ``split`` (a seeded sample, in file order) at ``size`` (H, W),
    float32 NHWC normalised."""
    from caco_jax.data import registry

    if split not in CALIBRATION_SPLITS:
        raise ValueError(f"calibration images come from {' or '.join(CALIBRATION_SPLITS)}, never test; got {split!r}")
    source = registry.open_data(config, workdir)[split]
    rows = np.sort(np.random.default_rng(seed).permutation(len(source))[: min(count, len(source))])
    return normalise(source.decode(rows.tolist(), size))


def export_models(
    model: Any,
    run: dict[str, Any],
    *,
    onnx: pathlib.Path | None = None,
    tflite: pathlib.Path | None = None,
    calibration: np.ndarray | None = None,
    calibration_source: str = "",
    log: Callable[[str], None] = print,
    force_int8: bool = False,
) -> list[pathlib.Path]:
    """Writes the requested float files and, with ``calibration`` images, their int8 twins, each with
    its metadata; returns the model files written. ``run``: :func:`artifact.describe_run`. An int8 file
    whose top class agrees with float on fewer than ``AGREEMENT_FLOOR`` of the calibration images is not
    written (``Int8Refused``) unless ``force_int8``."""
    from caco_jax.interop.export_onnx import INPUT_NAME, export_onnx

    size = tuple(run["image_size"])
    color = artifact.color_constancy(run)  # computed in every graph, as the metadata says
    written: list[pathlib.Path] = []

    def done(path: pathlib.Path, **meta: Any) -> None:
        artifact.write(path, run, **meta)
        written.append(path)
        beside = [artifact.metadata_path(path)] + ([artifact.guard_arrays_path(path)] if run.get("ood") else [])
        names = " and ".join(p.name for p in beside if p.is_file())
        log(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB) and {names}")

    if tflite is not None:
        from caco_jax.interop.export_litert import export_litert, export_litert_int8

        done(
            tflite,
            layout="NHWC",
            input_name=export_litert(model, tflite, image_size=size, color=color),
            precision="float32",
        )
        if calibration is not None:
            with tempfile.TemporaryDirectory() as tmp:
                staged = pathlib.Path(tmp) / "int8.tflite"
                name, settings = export_litert_int8(model, staged, calibration, image_size=size, color=color)
                settings["calibration_source"] = calibration_source
                agreed = settings["calibration_agreement"]
                log(check_agreement(agreed, len(calibration), force=force_int8, kind="LiteRT"))
                shutil.move(staged, int8_path(tflite))
            done(int8_path(tflite), layout="NHWC", input_name=name, precision="int8", quantization=settings)
    if onnx is not None or calibration is not None:
        with tempfile.TemporaryDirectory() as tmp:
            float_onnx = onnx or pathlib.Path(tmp) / "float.onnx"
            export_onnx(model, float_onnx, image_size=size, color=color)
            if onnx is not None:
                done(onnx, layout="NCHW", input_name=INPUT_NAME, precision="float32")
            if calibration is not None:
                from caco_jax.interop.quantize_onnx import quantize_onnx

                target = int8_path(onnx) if onnx is not None else int8_path(tflite or float_onnx, ".onnx")
                staged = pathlib.Path(tmp) / "int8.onnx"
                settings = quantize_onnx(float_onnx, staged, calibration, input_name=INPUT_NAME)
                settings["calibration_source"] = calibration_source
                log(check_agreement(settings["calibration_agreement"], len(calibration), force=force_int8))
                shutil.move(staged, target)
                done(target, layout="NCHW", input_name=INPUT_NAME, precision="int8", quantization=settings)
    return written


def check_agreement(agreement: float, count: int, *, force: bool = False, kind: str = "ONNX") -> str:
    """The line export prints on an int8 file's agreement with float on its ``count`` calibration images
    (``kind``: ONNX or LiteRT); raises ``Int8Refused`` below ``AGREEMENT_FLOOR`` unless ``force``."""
    from caco_jax.interop.quantize_onnx import AGREEMENT_FLOOR

    said = f"the top class of {100 * agreement:.1f} % of the {count} calibration images is the float model's"
    if agreement >= AGREEMENT_FLOOR:
        return f"int8 {kind}: {said} (docs/deploy.md measures test images)"
    if not force:
        raise Int8Refused(
            f"int8 {kind} not written: {said}, below the {AGREEMENT_FLOOR:.0%} floor (docs/deploy.md); the float "
            "files are written; --force_int8 writes it anyway"
        )
    return f"int8 {kind} written although {said}, below the {AGREEMENT_FLOOR:.0%} floor (--force_int8)"
