"""Build the HAM10000 TFDS dataset (array_record) from a manual download.

The manual_dir may hold the Kaggle archive, the Harvard Dataverse files or the ISIC 2018
Task 3 files, extracted or zipped (an image is found by its id anywhere below it). An
existing complete build is reused.

    caco-jax prepare-data --manual_dir ~/Downloads/HAM10000 --data_dir ~/tensorflow_datasets
    caco-jax prepare-data --manual_dir ~/isic2018 --data_dir data/tfds --dataset isic2018_test

Where to get HAM10000: the Harvard Dataverse (doi:10.7910/DVN/DBW86T), the ISIC 2018 challenge
(Task 3) or Kaggle's "Skin Cancer MNIST: HAM10000"; CC BY-NC-SA 4.0 (non-commercial).
"""

from __future__ import annotations

import argparse
import pathlib
import sys

from caco_jax.cli import common
from caco_jax.data import ham10000, records

NAME = "prepare-data"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--manual_dir",
        type=pathlib.Path,
        required=True,
        help="folder (or zips) with the downloaded images and metadata",
    )
    p.add_argument("--data_dir", type=pathlib.Path, required=True, help="TFDS data_dir to build into")
    p.add_argument(
        "--dataset",
        default="ham10000",
        choices=list(ham10000.DATASETS),
        help="release: HAM10000 (all images; split at load time) or an ISIC 2018 Task 3 evaluation set",
    )
    p.add_argument(
        "--image_size",
        type=int,
        default=ham10000.DEFAULT_IMAGE_SIZE,
        help="shorter side of the stored images in px (aspect kept, never enlarged); 0 keeps them "
        f"as found (default: {ham10000.DEFAULT_IMAGE_SIZE})",
    )
    common.add_switch(p, "skip_missing", False, "leave out metadata rows whose image is missing")
    common.add_switch(p, "skip_unlisted", False, "ignore images that no metadata row names")
    p.add_argument(
        "--on_corrupt",
        default="skip",
        choices=list(ham10000.ON_CORRUPT),
        help="an image that does not decode: skip it (warn, count) or fail (default: skip)",
    )
    common.add_switch(p, "overwrite", False, "rebuild even if a complete build exists")
    common.add_common(p, compile_cache=False)


def run(args: argparse.Namespace) -> int:
    from caco_jax.errors import UsageError

    if args.image_size < 0:
        raise UsageError(f"--image_size must be >= 0 (0: as found), got {args.image_size}")
    if not args.manual_dir.expanduser().is_dir():
        raise UsageError(
            f"--manual_dir {args.manual_dir}: no such folder; give the folder holding the downloaded "
            "HAM10000 files (extracted or zipped): caco-jax prepare-data --help says which"
        )
    size = args.image_size or None
    builder = ham10000.prepare(
        args.manual_dir,
        args.data_dir,
        config=args.dataset,
        image_size=size,
        skip_missing=args.skip_missing,
        skip_unlisted=args.skip_unlisted,
        on_corrupt=args.on_corrupt,
        overwrite=args.overwrite,
    )
    split = ham10000.TFDS_SPLIT[args.dataset]
    meta = builder.info.metadata
    source = ham10000.open_source(args.data_dir, config=args.dataset, image_size=size)
    counts = records.class_counts(source)
    print(
        f"{builder.builder_config.name}: {builder.info.splits[split].num_examples} images, "
        f"{len(set(source.lesion_ids))} lesion ids, in {builder.data_path}"
    )
    print("per class: " + ", ".join(f"{n} {c}" for c, n in zip(source.class_names, counts, strict=True)))
    print(f"stored sizes (h x w): {meta['image_shapes']}")
    print(
        f"skipped: {len(meta['skipped_corrupt'])} corrupt, {len(meta['skipped_missing'])} rows "
        f"without image, {len(meta['skipped_unlisted'])} images without row"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    return common.main(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
