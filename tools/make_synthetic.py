"""Write synthetic HAM10000-like data in the Kaggle layout (no download needed).

python tools/make_synthetic.py --out_dir /tmp/ham_synth --num_images 400
caco-jax prepare-data --manual_dir /tmp/ham_synth --data_dir /tmp/tfds --image_size 64
"""

from __future__ import annotations

import collections
import csv

from absl import app, flags

from caco_jax.data import synthetic

FLAGS = flags.FLAGS
flags.DEFINE_string("out_dir", None, "Folder to write (created).", required=True)
flags.DEFINE_integer("num_images", 400, "Number of images.")
flags.DEFINE_integer("width", 200, "Image width in px.")
flags.DEFINE_integer("height", 150, "Image height in px.")
flags.DEFINE_integer("seed", 0, "Random seed (same seed, same files).")


def main(argv):
    del argv
    out = synthetic.write_manual_dir(
        FLAGS.out_dir, num_images=FLAGS.num_images, image_size=(FLAGS.width, FLAGS.height), seed=FLAGS.seed
    )
    with open(out / "HAM10000_metadata.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    per_class = collections.Counter(row["dx"] for row in rows)
    lesions = len({row["lesion_id"] for row in rows})
    print(
        f"wrote {len(rows)} images of {lesions} lesions to {out}: "
        + ", ".join(f"{n} {dx}" for dx, n in sorted(per_class.items()))
    )


if __name__ == "__main__":
    app.run(main)
