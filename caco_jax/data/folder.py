"""A TFDS builder for a folder-per-class image dataset (torchvision's ``ImageFolder`` layout).

    my_lesions/
        benign/    a.jpg b.png ...
        malignant/ c.jpg ...

Any number of classes (the sorted sub-folder names), JPEG/PNG/BMP images. It writes the
same features as the HAM10000 builder (image as JPEG bytes with the shorter side shrunk
to ``image_size``, label, image_id = "class/file", lesion_id = image_id, metadata fields
empty), so splits, the grain pipeline and training work unchanged: train with
``--config.data.name=folder --config.data.manual_dir=my_lesions``. Splits are computed
at load time, stratified by class; every image is its own group (no lesion ids).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import pathlib
import re
import tempfile

import numpy as np
import tensorflow_datasets as tfds
import tqdm

from caco_jax.data import building, ham10000, images
from caco_jax.data.errors import CorruptImageError, ManualDirError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
SPLIT = "train"  # every image in one TFDS split; train/validation/test at load time


def scan(root: os.PathLike | str) -> tuple[tuple[str, ...], list[tuple[pathlib.Path, int]]]:
    """(class names, [(image path, label)]) of a folder-per-class dataset; errors name what is wrong."""
    root = pathlib.Path(root).expanduser()
    if not root.is_dir():
        raise ManualDirError(f"image folder {root} does not exist (expected one sub-folder of images per class)")
    classes = tuple(sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")))
    if len(classes) < 2:
        raise ManualDirError(
            f"{root} has {len(classes)} class folder(s) {list(classes)}; a classifier needs at "
            "least two sub-folders, one per class, each holding that class's images"
        )
    items: list[tuple[pathlib.Path, int]] = []
    for label, name in enumerate(classes):
        files = sorted(p for p in (root / name).rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ManualDirError(f"class folder {root / name} holds no {'/'.join(IMAGE_SUFFIXES)} images")
        items += [(f, label) for f in files]
    return classes, items


@dataclasses.dataclass
class FolderConfig(tfds.core.BuilderConfig):
    """One folder's build: its classes and the stored shorter side (None: as found)."""

    root: str = ""
    class_names: tuple[str, ...] = ()
    image_size: int | None = 225


def make_config(root: os.PathLike | str, image_size: int | None) -> FolderConfig:
    """Config named after the folder (plus a hash of its path, so two folders never share a build)."""
    root = pathlib.Path(root).expanduser().resolve()
    classes, _ = scan(root)
    slug = re.sub(r"[^a-z0-9]+", "_", root.name.lower()).strip("_") or "folder"
    digest = hashlib.sha1(str(root).encode()).hexdigest()[:8]
    size = "original" if image_size is None else f"{int(image_size)}px"
    return FolderConfig(
        name=f"{slug}_{digest}_{size}",
        description=f"{root}, {len(classes)} classes",
        root=str(root),
        class_names=classes,
        image_size=image_size,
    )


class ImageFolder(building.LocalBuild, tfds.core.GeneratorBasedBuilder):
    """Images in one sub-folder per class."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}

    def __init__(self, *, on_corrupt: str = "skip", progress: bool = True, **kwargs):
        self._on_corrupt = on_corrupt
        self._progress = progress
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="A folder-per-class image dataset, images stored as JPEG.",
            features=ham10000.features(self.builder_config.class_names),
            supervised_keys=("image", "label"),
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager):
        return {SPLIT: self._generate_examples()}

    def _generate_examples(self):
        root = pathlib.Path(self.builder_config.root)
        classes, items = scan(root)
        if classes != self.builder_config.class_names:
            raise ManualDirError(f"the class folders of {root} changed during the build: {list(classes)}")
        shapes: dict[str, int] = {}
        corrupt: list[str] = []
        for path, label in tqdm.tqdm(items, desc=f"Encoding {root.name}", unit="img", disable=not self._progress):
            image_id = path.relative_to(root).with_suffix("").as_posix()
            try:
                data, (h, w) = images.shrink(path.read_bytes(), self.builder_config.image_size)
            except images.UnreadableImage as err:
                if self._on_corrupt == "error":
                    raise CorruptImageError(f"{path} does not decode: {err}; replace or remove it") from None
                log.warning("skipping corrupt image %s: %s", path, err)
                corrupt.append(str(path))
                continue
            shapes[f"{h}x{w}"] = shapes.get(f"{h}x{w}", 0) + 1
            yield (
                image_id,
                {
                    "image": data,
                    "label": label,
                    "image_id": image_id,
                    "lesion_id": image_id,
                    "dx_type": "",
                    "age": np.float32(np.nan),
                    "sex": "",
                    "localization": "",
                    "source": "",
                },
            )
        if len(corrupt) == len(items):
            raise CorruptImageError(f"none of the {len(items)} images under {root} decodes")
        self.info.metadata.update(
            {"root": str(root), "image_shapes": dict(sorted(shapes.items())), "skipped_corrupt": corrupt}
        )


def builder(
    root: os.PathLike | str, data_dir: os.PathLike | str, *, image_size: int | None = 225, **options
) -> ImageFolder:
    """The builder of folder ``root`` at ``image_size`` under ``data_dir`` (nothing is built)."""
    return ImageFolder(
        config=make_config(root, image_size), data_dir=os.fspath(pathlib.Path(data_dir).expanduser()), **options
    )


def prepare(
    root: os.PathLike | str,
    data_dir: os.PathLike | str,
    *,
    image_size: int | None = 225,
    on_corrupt: str = "skip",
    progress: bool = True,
) -> ImageFolder:
    """Builds ``root`` into ``data_dir`` once (a complete build is reused); returns the builder."""
    made = builder(root, data_dir, image_size=image_size, on_corrupt=on_corrupt, progress=progress)
    if made.is_prepared():
        return made
    download_config = tfds.download.DownloadConfig(compute_stats=tfds.download.ComputeStatsMode.SKIP)
    with tempfile.TemporaryDirectory(prefix="caco_tfds_downloads_") as downloads:
        made.download_and_prepare(download_dir=downloads, download_config=download_config, file_format="array_record")
    log.info(
        "built %s: %d images in %d classes at %s",
        made.builder_config.name,
        made.info.splits[SPLIT].num_examples,
        len(made.builder_config.class_names),
        made.data_path,
    )
    return made
