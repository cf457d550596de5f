"""Convert a torchvision mobilenet_v3 state_dict (.pth) into caco-jax weights (orbax).

    python scripts/convert_torchvision.py --pth mobilenet_v3_small-047dcff4.pth \
        --attention caco --num_classes 7 --out weights/caco_imagenet

The output directory can be given to training as ``--config.model.pretrained=DIR``.
No PyTorch installation is needed. Use ``--export`` to go the other way: a caco-jax
weights directory of an ``se`` model -> a torchvision state_dict (needs torch).
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys

from caco_jax.convert import export_torchvision, load_torchvision
from caco_jax.models import ARCHS, ATTENTIONS, create_model
from caco_jax.torch_io import save_state_dict
from caco_jax.weights import read_weights, save_weights, assign_weights


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pth", type=pathlib.Path, help="torchvision state_dict file (full or backbone-only)")
    p.add_argument("--out", type=pathlib.Path, required=True, help="output directory (or .pth with --export)")
    p.add_argument("--arch", default="small", choices=sorted(a for a in ARCHS if a != "tiny"))
    p.add_argument("--attention", default="caco", choices=ATTENTIONS)
    p.add_argument("--ca_activation", default="swish", choices=("swish", "hardswish"))
    p.add_argument("--num_classes", type=int, default=7)
    p.add_argument("--seed", type=int, default=0, help="initialisation seed for what the checkpoint lacks")
    p.add_argument("--export", type=pathlib.Path, help="caco-jax weights directory to export to torchvision")
    args = p.parse_args(argv)

    if args.export:
        flat, meta = read_weights(args.export)
        model = create_model(arch=meta.get("arch", args.arch), attention="se",
                             num_classes=meta.get("num_classes", args.num_classes))
        assign_weights(model, flat, source=str(args.export))
        save_state_dict(export_torchvision(model), args.out)
        print(f"wrote torchvision state_dict {args.out}")
        return 0
    if args.pth is None:
        p.error("--pth is required (or --export)")
    model = create_model(arch=args.arch, attention=args.attention, ca_activation=args.ca_activation,
                         num_classes=args.num_classes, seed=args.seed)
    report = load_torchvision(model, args.pth)
    print(report.summary())
    meta = {"source": str(args.pth), "arch": args.arch, "attention": args.attention,
            "ca_activation": args.ca_activation, "num_classes": args.num_classes, "report": report.to_json()}
    out = save_weights(model, args.out, metadata=meta)
    (out / "conversion_report.json").write_text(json.dumps(report.to_json(), indent=2))
    print(f"wrote caco-jax weights to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
