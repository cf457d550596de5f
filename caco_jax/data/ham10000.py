"""TFDS builder for HAM10000 (and the ISIC 2018 Task 3 test/validation sets).

The builder reads a manual_dir in any official layout (see `layouts.INSTRUCTIONS`)
and writes array_record files without TensorFlow: images are handed to TFDS as
encoded JPEG bytes, shrunk at build time so their shorter side is at most
`image_size` pixels (aspect kept, never enlarged).

All images of a release go to one TFDS split ('train' for HAM10000, 'test' or
'validation' for the ISIC sets); train/validation/test splits of HAM10000 are
computed at load time (`caco_jax.data.splits`), so the split rule and seed are
run-time choices that need no rebuild.

    builder = prepare("~/HAM10000", "~/tensorflow_datasets")   # idempotent
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import os
import pathlib
import tempfile
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
import tqdm
from tensorflow_datasets.core.utils import tqdm_utils

from caco_jax.data import building, images, layouts, records
from caco_jax.data.classes import CLASS_NAMES
from caco_jax.data.errors import CorruptImageError, DataNotBuiltError, ManualDirError

log = logging.getLogger(__name__)

building.quiet_lookups()

# Shorter side of the stored images: the 600x450 originals are stored at 300x225,
# enough for 224-pixel crops. Smaller inputs (the shared 200x150 copy) are kept.
DEFAULT_IMAGE_SIZE = 225
DATASETS = layouts.DATASETS
TFDS_SPLIT = {"ham10000": "train", "isic2018_test": "test", "isic2018_validation": "validation"}
ON_CORRUPT = ("skip", "error")

_CITATION = """\
@article{tschandl2018ham10000,
  title={The HAM10000 dataset, a large collection of multi-source dermatoscopic
         images of common pigmented skin lesions},
  author={Tschandl, Philipp and Rosendahl, Cliff and Kittler, Harald},
  journal={Scientific Data}, volume={5}, pages={180161}, year={2018}}
"""


def features(class_names: Sequence[str]) -> tfds.features.FeaturesDict:
    """What every image-dataset build of this project stores (HAM10000's, a folder dataset's): the
    pipeline, the splits and the reports read these fields, so a new dataset kind writes the same."""
    text = tfds.features.Text()
    return tfds.features.FeaturesDict(
        {
            "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
            "label": tfds.features.ClassLabel(names=list(class_names)),
            "image_id": text,
            "lesion_id": text,
            "dx_type": text,
            "age": tfds.features.Scalar(dtype=np.float32, doc="years; NaN when unknown"),
            "sex": text,
            "localization": text,
            "source": text,  # acquisition source ('' when unknown); builds before 1.1.0 lack it
        }
    )


@dataclasses.dataclass
class Ham10000Config(tfds.core.BuilderConfig):
    """Which release to read and the stored image size (shorter side, px; None: as found)."""

    dataset: str = "ham10000"
    image_size: int | None = DEFAULT_IMAGE_SIZE


def config_name(dataset: str = "ham10000", image_size: int | None = DEFAULT_IMAGE_SIZE) -> str:
    """'ham10000' at the default size, else e.g. 'ham10000_64px' or 'ham10000_original'."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {DATASETS}")
    if image_size == DEFAULT_IMAGE_SIZE:
        return dataset
    if image_size is None:
        return f"{dataset}_original"
    if int(image_size) < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    return f"{dataset}_{int(image_size)}px"


def make_config(dataset: str = "ham10000", image_size: int | None = DEFAULT_IMAGE_SIZE) -> Ham10000Config:
    return Ham10000Config(
        name=config_name(dataset, image_size),
        description=f"{dataset}, shorter side <= {image_size or 'original'} px",
        dataset=dataset,
        image_size=image_size,
    )


class Ham10000(building.LocalBuild, tfds.core.GeneratorBasedBuilder):
    """HAM10000 dermoscopic images, 7 classes (akiec, bcc, bkl, df, mel, nv, vasc)."""

    VERSION = tfds.core.Version("1.1.0")
    SUPPORTED_VERSIONS = [tfds.core.Version("1.0.0")]
    RELEASE_NOTES = {
        "1.0.0": "First release: one split, images shrunk at build time.",
        "1.1.0": "Each image's acquisition source (`source`), from the metadata's `dataset` column or a sources table.",
    }
    BUILDER_CONFIGS = [make_config(dataset) for dataset in DATASETS]
    MANUAL_DOWNLOAD_INSTRUCTIONS = layouts.INSTRUCTIONS

    def __init__(
        self,
        *,
        skip_missing: bool = False,
        skip_unlisted: bool = False,
        on_corrupt: str = "skip",
        progress: bool = True,
        num_threads: int | None = None,
        **kwargs,
    ):
        """Build options (they do not change the config):

        skip_missing: leave out metadata rows whose image is missing (else error).
        skip_unlisted: ignore images no metadata row names (else error).
        on_corrupt: 'skip' (warn and count) or 'error' for an undecodable image.
        """
        if on_corrupt not in ON_CORRUPT:
            raise ValueError(f"on_corrupt must be one of {ON_CORRUPT}, got {on_corrupt!r}")
        self._skip_missing = skip_missing
        self._skip_unlisted = skip_unlisted
        self._on_corrupt = on_corrupt
        self._progress = progress
        self._num_threads = num_threads or min(8, os.cpu_count() or 1)
        self.manifest: layouts.Manifest | None = None  # set by prepare(): the manual_dir, already read
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                "HAM10000 (Tschandl et al. 2018), CC BY-NC-SA 4.0. Images stored as JPEG with "
                "their shorter side at most the config's image_size; one split holding every "
                "image (train/validation/test are computed at load time)."
            ),
            features=features(CLASS_NAMES),
            supervised_keys=("image", "label"),
            homepage="https://doi.org/10.7910/DVN/DBW86T",
            citation=_CITATION,
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager):
        config = self.builder_config
        manifest = self.manifest  # prepare() reads the manual_dir before TFDS starts
        if manifest is None:
            try:
                manual_dir = dl_manager.manual_dir
            except AssertionError as err:
                raise ManualDirError(f"{err}") from None
            manifest = layouts.collect(
                manual_dir,
                config.dataset,
                skip_missing=self._skip_missing,
                skip_unlisted=self._skip_unlisted,
            )
        return {TFDS_SPLIT[config.dataset]: self._generate_examples(manifest)}

    def _generate_examples(self, manifest: layouts.Manifest):
        size = self.builder_config.image_size
        reader = layouts.Reader()
        corrupt: list[str] = []
        shapes: dict[tuple[int, int], int] = {}

        def encode(item):
            row, ref = item
            try:
                return images.shrink(reader.read(ref), size)
            except images.UnreadableImage as err:
                if self._on_corrupt == "error":
                    raise CorruptImageError(
                        f"{ref} (image {row.image_id}) does not decode: {err}. Replace the file, "
                        "or pass on_corrupt='skip' (--on_corrupt=skip) to leave it out."
                    ) from None
                log.warning("skipping corrupt image %s: %s", ref, err)
                return None

        bar = tqdm.tqdm(
            total=len(manifest.items),
            desc=f"Encoding {manifest.dataset} images",
            unit="img",
            disable=not self._progress,
        )
        chunk = 8 * self._num_threads  # bounded: never more than a chunk of images in memory
        try:
            with bar, concurrent.futures.ThreadPoolExecutor(self._num_threads) as pool:
                for start in range(0, len(manifest.items), chunk):
                    items = manifest.items[start : start + chunk]
                    for (row, _), result in zip(items, pool.map(encode, items), strict=True):
                        bar.update()
                        if result is None:
                            corrupt.append(row.image_id)
                            continue
                        data, shape = result
                        shapes[shape] = shapes.get(shape, 0) + 1
                        yield row.image_id, _example(row, data)
        finally:
            reader.close()
        if corrupt:
            log.warning("skipped %d corrupt image(s): %s", len(corrupt), ", ".join(corrupt[:20]))
        if len(corrupt) == len(manifest.items):
            raise CorruptImageError(f"none of the {len(corrupt)} images of {manifest.dataset} decodes")
        self.info.metadata.update(
            {
                "dataset": manifest.dataset,
                "image_size": size,
                "tables": manifest.tables,
                "skipped_corrupt": corrupt,
                "skipped_missing": manifest.missing,
                "skipped_unlisted": manifest.unlisted,
                "image_shapes": {f"{h}x{w}": n for (h, w), n in sorted(shapes.items())},
            }
        )


def _example(row, jpeg: bytes) -> dict:
    return {
        "image": jpeg,
        "label": row.dx,
        "image_id": row.image_id,
        "lesion_id": row.lesion_id,
        "dx_type": row.dx_type,
        "age": np.float32(row.age),
        "sex": row.sex,
        "localization": row.localization,
        "source": row.source,
    }


def builder(
    data_dir: os.PathLike | str,
    *,
    config: str = "ham10000",
    image_size: int | None = DEFAULT_IMAGE_SIZE,
    older: bool = True,
    **options,
) -> Ham10000:
    """The builder of release `config` at `image_size` under data_dir (nothing is built): the current
    version's, or, with ``older`` and only an older complete build there, that build's (to read it).

    config: 'ham10000', 'isic2018_test' or 'isic2018_validation'.
    """
    data_dir = pathlib.Path(data_dir).expanduser()
    made = make_config(config, image_size)
    predefined = made.name in {c.name for c in Ham10000.BUILDER_CONFIGS}
    kwargs = {"config": made.name if predefined else made, "data_dir": os.fspath(data_dir), **options}
    current = Ham10000(**kwargs)
    if older and not current.is_prepared():
        for version in Ham10000.SUPPORTED_VERSIONS:  # an older complete build is read as it is
            older = Ham10000(version=str(version), **kwargs)
            if older.is_prepared():
                log.info(
                    "using the %s build at %s (no acquisition sources; prepare-data builds %s beside it)",
                    version,
                    older.data_path,
                    Ham10000.VERSION,
                )
                return older
    return current


def prepare(
    manual_dir: os.PathLike | str,
    data_dir: os.PathLike | str,
    *,
    config: str = "ham10000",
    image_size: int | None = DEFAULT_IMAGE_SIZE,
    skip_missing: bool = False,
    skip_unlisted: bool = False,
    on_corrupt: str = "skip",
    progress: bool = True,
    overwrite: bool = False,
) -> Ham10000:
    """Build release `config` from manual_dir into data_dir; a complete build is reused.

    config: 'ham10000' (all 10,015 images, split at load time), 'isic2018_test' or
    'isic2018_validation' (external evaluation). image_size: shorter side of the
    stored images (never enlarged; None keeps them as found). Returns the
    prepared builder (`.as_data_source(...)`, `.info`, `.data_path`).
    The manual_dir is read first, so a folder without the release's images or table fails
    before TFDS starts. A failed build leaves nothing behind: TFDS writes into an
    `incomplete.*` folder and renames it only on success, and folders this call created
    are removed.
    """
    data_dir = pathlib.Path(data_dir).expanduser()
    with building.nothing_left_on_failure(data_dir / "ham10000" / make_config(config, image_size).name):
        return _prepare(
            manual_dir, data_dir, config, image_size, skip_missing, skip_unlisted, on_corrupt, progress, overwrite
        )


def _prepare(
    manual_dir: os.PathLike | str,
    data_dir: pathlib.Path,
    config: str,
    image_size: int | None,
    skip_missing: bool,
    skip_unlisted: bool,
    on_corrupt: str,
    progress: bool,
    overwrite: bool,
) -> Ham10000:
    ham = builder(
        data_dir,
        config=config,
        image_size=image_size,
        older=False,  # building makes the current version (an older build stays beside it)
        skip_missing=skip_missing,
        skip_unlisted=skip_unlisted,
        on_corrupt=on_corrupt,
        progress=progress,
    )
    if ham.is_prepared() and not overwrite:
        log.info("reusing the complete build at %s", ham.data_path)
        return ham
    manual_dir = layouts.check_manual_dir(manual_dir)
    ham.manifest = layouts.collect(manual_dir, config, skip_missing=skip_missing, skip_unlisted=skip_unlisted)
    mode = tfds.download.GenerateMode
    # REUSE_CACHE_IF_EXISTS replaces whatever is at the data path (an old build, or
    # a folder left by something else); REUSE_DATASET_IF_EXISTS would keep it.
    replace = overwrite or pathlib.Path(os.fspath(ham.data_path)).exists()
    download_config = tfds.download.DownloadConfig(
        manual_dir=os.fspath(manual_dir),
        compute_stats=tfds.download.ComputeStatsMode.SKIP,
        download_mode=mode.REUSE_CACHE_IF_EXISTS if replace else mode.REUSE_DATASET_IF_EXISTS,
    )
    was_active = tqdm_utils._active  # pylint: disable=protected-access
    tfds.display_progress_bar(False)  # our own bar has a total; TFDS's would not
    try:
        with tempfile.TemporaryDirectory(prefix="caco_tfds_downloads_") as downloads:
            ham.download_and_prepare(
                download_dir=downloads, download_config=download_config, file_format="array_record"
            )
    finally:
        tfds.display_progress_bar(was_active)
    meta = ham.info.metadata
    log.info(
        "built %s: %d images at %s (skipped: %d corrupt, %d missing, %d unlisted)",
        ham.builder_config.name,
        ham.info.splits[TFDS_SPLIT[config]].num_examples,
        ham.data_path,
        len(meta["skipped_corrupt"]),
        len(meta["skipped_missing"]),
        len(meta["skipped_unlisted"]),
    )
    return ham


def not_built(data_dir: pathlib.Path, ham: Ham10000) -> DataNotBuiltError:
    """What to do when the build a run needs is not there."""
    root = data_dir / "ham10000"
    found = sorted(p.parent.parent.name for p in root.glob("*/*/dataset_info.json")) if root.is_dir() else []
    found_text = f"\nComplete builds in {data_dir}: {', '.join(found)}." if found else ""
    size = ham.builder_config.image_size
    dataset = ham.builder_config.dataset
    extra = "" if dataset == "ham10000" else f" --config {dataset}"
    return DataNotBuiltError(
        f"No complete HAM10000 build '{ham.builder_config.name}' in {data_dir} (expected {ham.data_path})."
        f"{found_text}\n"
        "Build it once from your downloaded copy (Kaggle, Harvard Dataverse or ISIC 2018 files, "
        "extracted or zipped; see caco_jax.data.layouts.INSTRUCTIONS):\n"
        f"  caco-jax prepare-data --manual_dir /path/to/HAM10000 --data_dir {data_dir}"
        f" --image_size {size or 0}{extra}\n"
        f"then point training at it: --config.data.data_dir={data_dir}\n"
        "(or give --config.data.manual_dir=/path/to/HAM10000 and training builds it first).\n"
        "To try everything without any download: caco-jax train --config demo "
        "(it builds synthetic HAM10000-like data)."
    )


def open_source(
    data_dir: os.PathLike | str, *, config: str = "ham10000", image_size: int | None = DEFAULT_IMAGE_SIZE
) -> records.Source:
    """Every image of the build of release ``config`` stored at ``image_size`` in ``data_dir``."""
    data_dir = pathlib.Path(data_dir).expanduser()
    ham = builder(data_dir, config=config, image_size=image_size)
    return records.open_source(ham, not_built=not_built(data_dir, ham) if not ham.is_prepared() else None)


def open_splits(
    data_dir: os.PathLike | str, *, image_size: int | None = DEFAULT_IMAGE_SIZE, **split: Any
) -> dict[str, records.Source]:
    """The train / validation / test Sources of the HAM10000 build (``records.split_source``'s keywords)."""
    return records.split_source(open_source(data_dir, image_size=image_size), **split)
