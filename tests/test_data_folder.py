"""Folder-per-class datasets (caco_jax.data.folder) through the same TFDS + grain path, and training on one."""

from __future__ import annotations

import json
import pathlib
import sys

import numpy as np
import pytest
from PIL import Image

from caco_jax.data import folder, pipeline, records
from caco_jax.data.errors import ManualDirError

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from caco_jax.configs import demo  # noqa: E402

# Three visibly different classes: a red disc, a blue bar, a green background.
CLASSES = ("bar", "disc", "plain")


def _image(kind: str, rng: np.random.Generator, size=(40, 56)) -> Image.Image:
    h, w = size
    img = np.full((h, w, 3), 200, np.uint8) + rng.integers(-20, 20, (h, w, 3)).astype(np.uint8)
    yy, xx = np.mgrid[:h, :w]
    if kind == "disc":
        img[(yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (h / 3) ** 2] = (200, 30, 30)
    elif kind == "bar":
        img[:, w // 3 : 2 * w // 3] = (30, 30, 200)
    else:
        img[:] = (40, 160, 40)
    return Image.fromarray(img)


def write_folders(root: pathlib.Path, per_class: int = 40, seed: int = 0) -> pathlib.Path:
    rng = np.random.default_rng(seed)
    for c in CLASSES:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            ext = "png" if i % 4 == 0 else "jpg"  # mixed formats, as users have them
            _image(c, rng).save(root / c / f"{c}_{i:03d}.{ext}")
    return root


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> pathlib.Path:
    return write_folders(tmp_path_factory.mktemp("folders") / "my_lesions")


def test_build_and_open_a_folder_dataset(folders, tmp_path):
    built = folder.prepare(folders, tmp_path / "tfds", image_size=32, progress=False)
    assert built.builder_config.name.startswith("my_lesions_") and built.builder_config.name.endswith("_32px")
    splits = records.split_source(records.open_source(built), split_by="image", seed=0)
    assert all(s.class_names == CLASSES for s in splits.values())
    assert sum(len(s) for s in splits.values()) == 3 * 40
    counts = records.class_counts(splits["train"])
    assert counts.shape == (3,) and counts.sum() == len(splits["train"]) and counts.min() >= 30
    batch = next(pipeline.eval_iterator(splits["test"], batch_size=8, image_size=24))
    assert batch["image"].shape == (8, 24, 24, 3) and set(batch["label"][batch["mask"]]) <= {0, 1, 2}
    record = splits["train"][0]
    assert record["image_id"].split("/")[0] in CLASSES and record["lesion_id"] == record["image_id"]
    # Rebuilding is a no-op; a second folder of the same name elsewhere gets its own build.
    assert folder.prepare(folders, tmp_path / "tfds", image_size=32, progress=False).data_path == built.data_path
    other = write_folders(tmp_path / "elsewhere" / "my_lesions", per_class=4, seed=1)
    assert folder.builder(other, tmp_path / "tfds", image_size=32).data_path != built.data_path


def test_bad_folders_are_named(tmp_path):
    with pytest.raises(ManualDirError, match="does not exist"):
        folder.scan(tmp_path / "nope")
    (tmp_path / "one" / "only").mkdir(parents=True)
    with pytest.raises(ManualDirError, match="at least two"):
        folder.scan(tmp_path / "one")
    (tmp_path / "one" / "empty").mkdir()
    _image("disc", np.random.default_rng(0)).save(tmp_path / "one" / "only" / "a.jpg")
    with pytest.raises(ManualDirError, match=r"empty holds no"):
        folder.scan(tmp_path / "one")


@pytest.mark.slow
def test_training_on_a_folder_dataset_learns_its_classes(folders, tmp_path):
    from caco_jax.serving.classify import predict
    from caco_jax.training.loop import train_and_evaluate

    c = demo.get_config()
    c.data.name = "folder"
    c.data.manual_dir = str(folders)
    c.data.data_dir = str(tmp_path / "tfds")
    c.data.synthetic_images = 0
    c.data.build_size = 32
    c.data.image_size = 32
    c.data.split_by = "image"
    c.model.arch = "tiny"
    c.batch_size = 16
    c.eval_batch_size = 16
    c.num_epochs = 6
    c.progress_bar = False
    result = train_and_evaluate(c, tmp_path / "run")
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["metrics"]["class_names"] == list(CLASSES)
    assert len(report["metrics"]["confusion"]) == 3
    assert result["report"]["accuracy"] > 0.6  # chance is 1/3: it learned the three classes
    meta = json.loads((tmp_path / "run" / "best" / "caco_jax_weights.json").read_text())
    assert meta["class_names"] == list(CLASSES)
    rows, problems = predict(tmp_path / "run", [folders / "disc"], top_k=2)
    assert not problems and len(rows) == 40
    assert set(rows[0]["probabilities"]) == set(CLASSES)
