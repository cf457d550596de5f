"""Build the HAM10000 TFDS dataset (array_record) from a manual download.

The manual_dir may hold the Kaggle archive, the Harvard Dataverse files or the
ISIC 2018 Task 3 files, extracted or zipped (an image is found by its id anywhere
below it). An existing complete build is reused.

  python scripts/prepare_data.py --manual_dir ~/Downloads/HAM10000 --data_dir ~/tensorflow_datasets
  python scripts/prepare_data.py --manual_dir /work/shared/data/ham10000_real --data_dir data/tfds
  python scripts/prepare_data.py --manual_dir ~/isic2018 --data_dir data/tfds --config isic2018_test
"""
from __future__ import annotations

import logging
import sys

from absl import app, flags

from caco_jax.classes import CLASS_NAMES
from caco_jax.data import ham10000, pipeline
from caco_jax.data.errors import DataError

FLAGS = flags.FLAGS
flags.DEFINE_string("manual_dir", None, "Folder with the downloaded images and metadata.", required=True)
flags.DEFINE_string("data_dir", None, "TFDS data_dir to build into.", required=True)
flags.DEFINE_enum("config", "ham10000", list(ham10000.DATASETS),
                  "Release: HAM10000 (all images; split at load time) or an ISIC 2018 Task 3 "
                  "evaluation set.")
flags.DEFINE_integer("image_size", ham10000.DEFAULT_IMAGE_SIZE,
                     "Shorter side of the stored images in px (aspect kept, never enlarged); "
                     "0 keeps them as found.")
flags.DEFINE_bool("skip_missing", False, "Leave out metadata rows whose image is missing.")
flags.DEFINE_bool("skip_unlisted", False, "Ignore images that no metadata row names.")
flags.DEFINE_enum("on_corrupt", "skip", list(ham10000.ON_CORRUPT),
                  "An image that does not decode: skip it (warn, count) or fail.")
flags.DEFINE_bool("overwrite", False, "Rebuild even if a complete build exists.")


def main(argv):
    del argv
    logging.getLogger("caco_jax").setLevel(logging.INFO)
    try:
        builder = ham10000.prepare(
            FLAGS.manual_dir, FLAGS.data_dir, config=FLAGS.config,
            image_size=FLAGS.image_size or None, skip_missing=FLAGS.skip_missing,
            skip_unlisted=FLAGS.skip_unlisted, on_corrupt=FLAGS.on_corrupt,
            overwrite=FLAGS.overwrite)
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    split = ham10000.TFDS_SPLIT[FLAGS.config]
    meta = builder.info.metadata
    source = pipeline.open_source(FLAGS.data_dir, config=FLAGS.config, image_size=FLAGS.image_size or None)
    counts = pipeline.class_counts(source)
    print(f"{builder.builder_config.name}: {builder.info.splits[split].num_examples} images, "
          f"{len(set(source.lesion_ids))} lesion ids, in {builder.data_path}")
    print("per class: " + ", ".join(f"{n} {c}" for c, n in zip(CLASS_NAMES, counts)))
    print(f"stored sizes (h x w): {meta['image_shapes']}")
    print(f"skipped: {len(meta['skipped_corrupt'])} corrupt, {len(meta['skipped_missing'])} rows "
          f"without image, {len(meta['skipped_unlisted'])} images without row")
    return 0


if __name__ == "__main__":
    app.run(main)
