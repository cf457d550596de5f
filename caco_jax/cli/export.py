"""Export a trained caco-jax model for deployment: a PyTorch state_dict, ONNX and LiteRT files, float32 and int8.

    caco-jax export --workdir runs/caco --pytorch caco.pth --onnx caco.onnx
    caco-jax export --workdir runs/caco --tflite caco.tflite --int8      # + caco_int8.tflite, caco_int8.onnx
    caco-jax export --weights weights/caco_imagenet --onnx caco.onnx --image_size 224

``--workdir`` takes a training run's best weights (``--weights`` another directory of
caco-jax weights, e.g. from caco-jax convert or ``workdir/best``). The
architecture, attention variant, attention init and class count are read from the
weights; ``--ca_activation`` from the run's config or the weights' metadata.

* ``--pytorch``: a state_dict for ``caco_jax.interop.torch_reference.reference_model(arch,
  attention, num_classes=..., attention_init=..., ca_activation=...)`` (printed), which
  loads it with ``strict=True``; for ``se`` models that is torchvision's
  ``mobilenet_v3_small`` itself (needs the torch extra to write the file).
* ``--onnx``: one ONNX file (needs the onnx extra, which includes torch), input ``images`` float32
  (N, 3, H, W) ImageNet-normalised RGB with N dynamic, outputs ``logits`` (N, classes), ``pooled``
  and ``hidden`` (the features the out-of-distribution guard scores).
* ``--tflite``: one LiteRT file (needs the litert extra), input float32 (1, H, W, 3), the same outputs.
* ``--int8``: also the full-integer int8 twin of each (``m_int8.tflite``, ``m_int8.onnx``; an int8 ONNX
  always), calibrated on ``--calibration_images`` images of the run's ``--calibration_split``
  (validation by default, or train; never test). An int8 ONNX whose top class agrees with float on
  fewer than 90 % of those images is refused in one line (exit 1; the float files are written)
  unless ``--force_int8``.

Each ONNX / LiteRT file gets its metadata beside it (``m.onnx.json``: class names, preprocessing,
temperature, decision rules, reliability threshold, the out-of-distribution guard), which
``caco-jax predict --model m.onnx`` reads (``caco_jax.interop.artifact``).
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from typing import Any

from caco_jax.cli import common
from caco_jax.data.classes import CLASS_NAMES
from caco_jax.errors import UsageError
from caco_jax.interop.convert import export_state_dict
from caco_jax.interop.torch_io import save_state_dict
from caco_jax.models import CA_ACTIVATIONS
from caco_jax.runs.loading import model_from_weights

NAME = "export"


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--workdir", type=pathlib.Path, help="training run (its best weights and config)")
    src.add_argument("--weights", type=pathlib.Path, help="caco-jax weights directory")
    p.add_argument("--pytorch", type=pathlib.Path, metavar="FILE", help="write a PyTorch state_dict (.pth) here")
    p.add_argument("--onnx", type=pathlib.Path, metavar="FILE", help="write an ONNX model here")
    p.add_argument("--tflite", type=pathlib.Path, metavar="FILE", help="write a LiteRT (.tflite) model here")
    p.add_argument("--int8", action="store_true", help="also write int8 twins (m_int8.onnx, m_int8.tflite)")
    p.add_argument(
        "--force_int8",
        action="store_true",
        help="write the int8 ONNX even when it agrees with float on fewer than 90 %% of the calibration images",
    )
    p.add_argument(
        "--calibration_split",
        choices=("validation", "train"),
        default="validation",
        help="the run's images that calibrate --int8 (default: validation; never test)",
    )
    p.add_argument(
        "--calibration_images", type=int, default=256, metavar="N", help="how many (default: 256, a seeded sample)"
    )
    p.add_argument(
        "--image_size",
        type=int,
        nargs="+",
        default=None,
        metavar="PX",
        help="ONNX input H [W] (default: the run's data.image_size, else 224)",
    )
    p.add_argument(
        "--ca_activation",
        choices=CA_ACTIVATIONS,
        default=None,
        help="coordinate attention's activation, if neither config nor metadata says",
    )
    common.add_common(p, compile_cache=False)


def _check(args: argparse.Namespace) -> None:
    if not (args.pytorch or args.onnx or args.tflite):
        raise UsageError("nothing to do: give --pytorch FILE, --onnx FILE and/or --tflite FILE")
    if args.pytorch:
        common.require(["torch"], "--pytorch", "torch")
    if args.onnx or args.int8:
        common.require(["torch", "onnx", "onnxscript"], "--onnx" if args.onnx else "--int8", "onnx")
    if args.tflite:
        common.require(["torch", "litert_torch", "ai_edge_litert"], "--tflite", "litert")
    for flag, path, suffix in (("--onnx", args.onnx, ".onnx"), ("--tflite", args.tflite, ".tflite")):
        if path is not None and path.suffix != suffix:
            raise UsageError(f"{flag} {path}: the file name must end in {suffix}")
    if args.int8 and not (args.onnx or args.tflite):
        raise UsageError("--int8 quantises the --onnx / --tflite exports: give one of them")
    if args.int8 and not args.workdir:
        raise UsageError("--int8 calibrates on the run's images: give --workdir (not --weights)")
    if args.calibration_images < 1:
        raise UsageError("--calibration_images must be at least 1")


def run(args: argparse.Namespace) -> int:
    _check(args)
    size, ca_activation, bn_momentum, config = None, args.ca_activation, None, None
    weights = args.weights
    if args.workdir:
        from caco_jax.runs.workspace import load_config

        config = load_config(args.workdir)
        size, bn_momentum = config.data.image_size, config.model.bn_momentum
        ca_activation = ca_activation or config.model.ca_activation
        weights = args.workdir / "best"
    model, meta = model_from_weights(weights, ca_activation=ca_activation, bn_momentum=bn_momentum)
    print(
        f"{weights}: mobilenet_v3_{model.arch}, attention {model.attention_name!r} "
        f"(attention_init {model.attention_init!r}, ca_activation {model.ca_activation!r}), "
        f"{model.num_classes} classes"
    )
    if args.pytorch:
        save_state_dict(export_state_dict(model), args.pytorch)
        print(
            f"wrote {args.pytorch}: load it with caco_jax.interop.torch_reference.reference_model({model.arch!r}, "
            f"{model.attention_name!r}, num_classes={model.num_classes}, attention_init={model.attention_init!r}, "
            f"ca_activation={model.ca_activation!r}).load_state_dict(torch.load(path), strict=True)"
        )
    if args.onnx or args.tflite:
        hw = tuple(args.image_size) if args.image_size else (size or 224,)
        _deploy(args, model, meta, config, weights, (hw[0], hw[-1]))
    return 0


def _deploy(args: argparse.Namespace, model: Any, meta: dict, config: Any, weights: pathlib.Path, hw: tuple) -> None:
    """The ONNX / LiteRT files (and their int8 twins) with their metadata."""
    from caco_jax.interop import artifact, deploy

    names = meta.get("class_names") or (CLASS_NAMES if model.num_classes == len(CLASS_NAMES) else None)
    from caco_jax.data.constancy import OFF, ColorConstancy

    run_info = artifact.describe_run(
        weights,
        class_names=names or [f"class_{k}" for k in range(model.num_classes)],
        image_size=hw,
        default_decision=config.evaluation.decision if config is not None else "argmax",
        tta=bool(config.evaluation.tta) if config is not None else False,
        model={"arch": model.arch, "attention": model.attention_name, "num_classes": model.num_classes},
        color=ColorConstancy.from_config(config.data) if config is not None else OFF,
        fov_crop=bool(config.data.get("fov_crop", False)) if config is not None else False,
    )
    calibration = None
    if args.int8:
        calibration = deploy.calibration_images(
            config, args.workdir, size=hw, split=args.calibration_split, count=args.calibration_images
        )
        print(f"calibrating int8 on {len(calibration)} {args.calibration_split} images of {args.workdir}")
    deploy.export_models(
        model,
        run_info,
        onnx=args.onnx,
        tflite=args.tflite,
        calibration=calibration,
        calibration_source=f"{len(calibration)} {args.calibration_split} images" if calibration is not None else "",
        force_int8=args.force_int8,
    )


def main(argv: list[str] | None = None) -> int:
    return common.main(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
