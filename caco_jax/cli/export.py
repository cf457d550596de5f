"""Export a trained caco-jax model for deployment: a PyTorch state_dict and/or an ONNX file.

    caco-jax export --workdir runs/caco --pytorch caco.pth --onnx caco.onnx
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
  (N, 3, H, W) ImageNet-normalised RGB with N dynamic, output ``logits`` (N, classes).
"""

from __future__ import annotations

import argparse
import pathlib
import sys

from caco_jax.cli import common
from caco_jax.errors import UsageError
from caco_jax.interop.convert import export_state_dict
from caco_jax.interop.torch_io import save_state_dict
from caco_jax.runs.weights import model_from_weights

NAME = "export"


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--workdir", type=pathlib.Path, help="training run (its best weights and config)")
    src.add_argument("--weights", type=pathlib.Path, help="caco-jax weights directory")
    p.add_argument("--pytorch", type=pathlib.Path, metavar="FILE", help="write a PyTorch state_dict (.pth) here")
    p.add_argument("--onnx", type=pathlib.Path, metavar="FILE", help="write an ONNX model here")
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
        choices=("swish", "hardswish"),
        default=None,
        help="coordinate attention's activation, if neither config nor metadata says",
    )
    common.add_common(p, compile_cache=False)


def run(args: argparse.Namespace) -> int:
    if not (args.pytorch or args.onnx):
        raise UsageError("nothing to do: give --pytorch FILE and/or --onnx FILE")
    if args.pytorch:
        common.require(["torch"], "--pytorch", "torch")
    if args.onnx:
        common.require(["torch", "onnx", "onnxscript"], "--onnx", "onnx")
    size, ca_activation, bn_momentum = None, args.ca_activation, None
    weights = args.weights
    if args.workdir:
        from caco_jax.runs.workspace import load_config

        config = load_config(args.workdir)
        size, bn_momentum = config.data.image_size, config.model.bn_momentum
        ca_activation = ca_activation or config.model.ca_activation
        weights = args.workdir / "best"
    model, _ = model_from_weights(weights, ca_activation=ca_activation, bn_momentum=bn_momentum)
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
    if args.onnx:
        from caco_jax.interop.export_onnx import export_onnx

        hw = tuple(args.image_size) if args.image_size else (size or 224,)
        hw = (hw[0], hw[-1])
        export_onnx(model, args.onnx, image_size=hw)
        print(f"wrote {args.onnx}: input 'images' (N, 3, {hw[0]}, {hw[1]}), output 'logits' (N, {model.num_classes})")
    return 0


def main(argv: list[str] | None = None) -> int:
    return common.main(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
