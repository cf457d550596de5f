"""Adapt a trained run to a clinic's unlabelled dermoscopy images: a new run directory whose BatchNorm
statistics are re-estimated on them (and, with ``--prior``, a decision rule for their estimated class mix).

    caco-jax adapt --workdir runs/recipe --images clinic_images/ --out runs/recipe_clinic
    caco-jax predict --workdir runs/recipe_clinic lesion.jpg        # evaluate, serve, export, guard too

The images are read as ``predict`` reads them (the same decoding, field-of-view crop and colour constancy
as the run); none is written anywhere. What is re-estimated and with how many images is in
``OUT/adaptation.json`` (with the source run, the folder, a hash of the images' bytes and, with ``--prior``,
the estimated class prior). Use images of the clinic's own patients, never the ones you will evaluate on: an image
used to adapt says nothing about how well the adapted run answers it.

What it gave on two held-out HAM10000 sources is in docs/results_adaptation_cpu.md: re-estimating the
BatchNorm statistics recovered part of the accuracy lost on one source and almost none on the other, and
on the first it lowered melanoma sensitivity. Measure on labelled images of your own before relying on it.
``--prior`` also estimates the clinic's class mix by EM (the ``clinic`` decision rule, ``predict --decision
clinic``). It is off by default: EM assumes that only the class mix changed, and on both held-out sources,
where the acquisition changed too, it estimated a class mix far from the true one and the clinic rule lost
accuracy (same page).
"""

from __future__ import annotations

import argparse
import pathlib
import sys

from caco_jax.cli import common
from caco_jax.errors import UsageError

NAME = "adapt"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workdir", required=True, type=pathlib.Path, help="the trained run to adapt")
    p.add_argument(
        "--images", required=True, type=pathlib.Path, help="a folder of the clinic's images (searched recursively)"
    )
    p.add_argument("--out", required=True, type=pathlib.Path, help="the new run directory (must not exist or be empty)")
    common.add_switch(
        p,
        "prior",
        False,
        "estimate the clinic's class prior by EM (the 'clinic' rule; measured to mislead under acquisition shift)",
    )
    common.add_common(p)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from caco_jax.adaptation import run as adaptation
    from caco_jax.serving.classify import find_images, load_images
    from caco_jax.serving.predictor import Predictor
    from caco_jax.training import compile_cache

    compile_cache.enable(args.compile_cache)
    if not args.images.is_dir():
        raise UsageError(f"--images {args.images} is not a folder: give the folder of the clinic's images")
    predictor = Predictor(args.workdir, batch_size=64, decision="argmax")
    files, problems = find_images([args.images])
    loaded, unreadable = load_images(predictor, files)
    for path, why in problems + unreadable:
        print(f"skipped {path}: {why}", file=sys.stderr)
    images = np.stack([im for _, im in loaded]) if loaded else np.zeros((0, 1, 1, 3), np.uint8)
    record = adaptation.adapt(
        args.workdir,
        images,
        args.out,
        folder=str(args.images.resolve()),
        image_hash=adaptation.images_hash([f.read_bytes() for f, _ in loaded]),
        estimate_prior=args.prior,
    )
    bn = record["batchnorm"]
    if record["images"] < adaptation.RECOMMENDED_IMAGES:
        print(
            f"warning: {record['images']} images; on the held-out sources the adapted figures settled from "
            f"{adaptation.RECOMMENDED_IMAGES} images on (docs/results_adaptation_cpu.md): give more if you have them",
            file=sys.stderr,
        )
    print(
        f"adapted {args.workdir} to {record['images']} images of {args.images}: BatchNorm statistics of "
        f"{bn['layers']} of {bn['of_layers']} layers re-estimated -> {args.out}"
    )
    prior = record.get("prior")
    if prior:
        names = predictor.class_names
        print("class mix, training (validation split) -> estimated for these images:")
        for name, before, after in zip(names, prior["source_prior"], prior["prior"], strict=True):
            print(f"  {name:>6}  {before:6.1%} -> {after:6.1%}")
    elif args.prior:
        print("no class prior estimated: the run saved no validation predictions", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    return common.main(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
