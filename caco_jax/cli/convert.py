"""Convert a torchvision mobilenet_v3 state_dict (.pth) into caco-jax weights (orbax).

    caco-jax convert --pth mobilenet_v3_small-047dcff4.pth --attention caco --num_classes 7 \
        --out weights/caco_imagenet
    caco-jax convert --pth imagenet --arch large --out weights/caco_large_imagenet
    caco-jax convert --export weights/caco_back_from_jax --out caco.pth

The output directory can be given to training as ``--config.model.pretrained=DIR``.
No PyTorch installation is needed. The ``.pth`` may also be a state_dict of a
``caco_jax.interop.torch_reference`` model of the same variant (e.g. one exported, then trained
in PyTorch). Use ``--export`` to go the other way: a caco-jax weights directory of any
variant -> a state_dict of its PyTorch reference (for ``se``: torchvision's own model);
needs torch. ``caco-jax export`` does the same and writes ONNX too.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

from caco_jax.cli import common
from caco_jax.errors import UsageError
from caco_jax.interop.convert import export_state_dict, load_torchvision
from caco_jax.interop.torch_io import load_state_dict, save_state_dict
from caco_jax.models import ARCHS, ATTENTION_BLOCKS, ATTENTION_INITS, CA_ACTIVATIONS, create_model
from caco_jax.runs.loading import model_from_weights
from caco_jax.runs.weights import save_weights

NAME = "convert"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--pth",
        type=pathlib.Path,
        help="torchvision state_dict file (full or backbone-only), or 'imagenet': torchvision's "
        "ImageNet weights for --arch, downloaded once into the user cache and checked",
    )
    p.add_argument("--out", type=pathlib.Path, required=True, help="output directory (or .pth with --export)")
    p.add_argument(
        "--arch",
        default="small",
        choices=sorted(a for a in ARCHS if a != "tiny"),
        help="MobileNetV3 size (default: small)",
    )
    p.add_argument(
        "--attention", default="caco", choices=tuple(ATTENTION_BLOCKS), help="attention variant (default: caco)"
    )
    p.add_argument(
        "--ca_activation",
        default="swish",
        choices=CA_ACTIVATIONS,
        help="coordinate attention's activation (default: swish, the paper's)",
    )
    p.add_argument(
        "--attention_init",
        default="preserve",
        choices=ATTENTION_INITS,
        help="how attention parts the checkpoint lacks start (caco_jax.models.attention)",
    )
    p.add_argument("--num_classes", type=int, default=7, help="classifier outputs (default: 7)")
    p.add_argument("--seed", type=int, default=0, help="initialisation seed for what the checkpoint lacks")
    p.add_argument(
        "--export",
        type=pathlib.Path,
        metavar="DIR",
        help="the other way: a caco-jax weights directory to write as a PyTorch state_dict (--out FILE)",
    )
    common.add_common(p, compile_cache=False)


def run(args: argparse.Namespace) -> int:
    if args.export:
        common.require(["torch"], "--export", "torch")
        model, _ = model_from_weights(args.export)
        save_state_dict(export_state_dict(model), args.out)
        where = "torchvision's mobilenet_v3" if model.attention_name == "se" else "caco_jax.interop.torch_reference's"
        print(
            f"wrote a state_dict of {where} {model.arch} with attention {model.attention_name!r} "
            f"(attention_init {model.attention_init!r}) to {args.out}"
        )
        return 0
    if args.pth is None:
        raise UsageError("--pth FILE is required (or --export DIR)")
    pth = args.pth
    if str(pth) == "imagenet":
        from caco_jax.interop import imagenet

        pth = imagenet.fetch(args.arch)
    state_dict = load_state_dict(pth)  # first: a file that is not a .pth fails before a model is built
    model = create_model(
        arch=args.arch,
        attention=args.attention,
        ca_activation=args.ca_activation,
        attention_init=args.attention_init,
        num_classes=args.num_classes,
        seed=args.seed,
    )
    report = load_torchvision(model, state_dict)
    print(report.summary())
    meta = {
        "source": str(pth),
        "arch": args.arch,
        "attention": args.attention,
        "ca_activation": args.ca_activation,
        "attention_init": args.attention_init,
        "num_classes": args.num_classes,
        "report": report.to_json(),
    }
    out = save_weights(model, args.out, metadata=meta)
    (out / "conversion_report.json").write_text(json.dumps(report.to_json(), indent=2))
    print(f"wrote caco-jax weights to {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return common.main(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
