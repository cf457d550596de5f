"""Finding HAM10000 / ISIC 2018 images and metadata under a user's manual_dir.

Any of the official layouts works, extracted or as the downloaded zips, and so
does any other arrangement: an image is `<image_id>.jpg` (or .jpeg/.png) anywhere
below the folder, or inside any zip below it; a metadata table is found by its
official file name anywhere below it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
import threading
import zipfile

from caco_jax.data import metadata as metadata_lib
from caco_jax.data.errors import ManualDirError, MetadataError

log = logging.getLogger(__name__)

DATASETS = ("ham10000", "isic2018_test", "isic2018_validation")

INSTRUCTIONS = """\
Download HAM10000 (CC BY-NC-SA 4.0) in any one of these forms and put the files,
extracted or still zipped, in one folder (the manual_dir); nothing else is needed:

* Kaggle "skin-cancer-mnist-ham10000"
  (https://www.kaggle.com/datasets/kmader/skin-cancer-mnist-ham10000):
  HAM10000_images_part_1/, HAM10000_images_part_2/, HAM10000_metadata.csv
* Harvard Dataverse (https://doi.org/10.7910/DVN/DBW86T):
  HAM10000_images_part_1.zip, HAM10000_images_part_2.zip, HAM10000_metadata(.csv|.tab)
  (extract the "download all" dataverse_files.zip first; zips inside zips are not read)
* ISIC 2018 Task 3 (https://challenge.isic-archive.com/data/#2018):
  ISIC2018_Task3_Training_Input/, ISIC2018_Task3_Training_GroundTruth.csv and,
  for lesion-grouped splits, ISIC2018_Task3_Training_LesionGroupings.csv
* any folder with <image_id>.jpg files anywhere below it and HAM10000_metadata.csv

For external evaluation (config isic2018_test / isic2018_validation) add
ISIC2018_Task3_Test_Input/ (or _Validation_Input/) and its
ISIC2018_Task3_Test_GroundTruth.csv (or _Validation_GroundTruth.csv).
"""

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
TABLE_SUFFIXES = (".csv", ".tab", ".txt")

# A table of acquisition sources (image_id, dataset) beside a metadata table that lacks them.
SOURCES_TABLE = "ham10000_sources"
# dataset -> (candidate label tables in order of preference, optional lesion table)
_TABLES: dict[str, tuple[tuple[str, ...], str | None]] = {
    "ham10000": (
        ("ham10000_metadata", "isic2018_task3_training_groundtruth"),
        "isic2018_task3_training_lesiongroupings",
    ),
    "isic2018_test": (("isic2018_task3_test_groundtruth",), None),
    "isic2018_validation": (("isic2018_task3_validation_groundtruth",), None),
}


@dataclasses.dataclass(frozen=True, order=True)
class FileRef:
    """A file on disk, or a member of a zip archive on disk."""

    path: pathlib.Path
    member: str | None = None

    @property
    def name(self) -> str:
        return (self.member or str(self.path)).replace("\\", "/").rsplit("/", 1)[-1]

    def __str__(self) -> str:
        return f"{self.path}:{self.member}" if self.member else str(self.path)


class Reader:
    """Reads `FileRef`s, keeping zip archives open (one handle per thread)."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._lock = threading.Lock()
        self._opened: list[zipfile.ZipFile] = []

    def read(self, ref: FileRef) -> bytes:
        if ref.member is None:
            return ref.path.read_bytes()
        archives = self._local.__dict__.setdefault("archives", {})
        if ref.path not in archives:
            archives[ref.path] = zipfile.ZipFile(ref.path)
            with self._lock:
                self._opened.append(archives[ref.path])
        return archives[ref.path].read(ref.member)

    def close(self) -> None:
        """Close every archive opened by any thread (call once the threads are done)."""
        with self._lock:
            for archive in self._opened:
                archive.close()
            self._opened = []
        self._local = threading.local()


def image_set(path: str) -> str:
    """Which release an image belongs to, from the folders/zips it sits in."""
    low = path.lower()
    if "task3_test" in low:
        return "isic2018_test"
    if "task3_validation" in low:
        return "isic2018_validation"
    if any(tag in low for tag in ("task1", "task2", "segmentation", "groundtruth")):
        return "other"  # lesion masks and the segmentation challenges' inputs
    return "ham10000"


@dataclasses.dataclass
class Inventory:
    """Everything found under a manual_dir."""

    root: pathlib.Path
    images: dict[str, FileRef] = dataclasses.field(default_factory=dict)
    duplicate_files: int = 0
    tables: dict[str, list[FileRef]] = dataclasses.field(default_factory=dict)
    nested_archives: list[str] = dataclasses.field(default_factory=list)

    def _add(self, ref: FileRef, relpath: str) -> None:
        parts = relpath.replace("\\", "/").split("/")
        name = parts[-1]
        if name.startswith("._") or "__MACOSX" in parts:
            return
        stem, suffix = os.path.splitext(name)
        suffix = suffix.lower()
        if suffix in IMAGE_SUFFIXES:
            if stem in self.images:
                self.duplicate_files += 1  # e.g. Kaggle's lower-case copies of the folders
            else:
                self.images[stem] = ref
        elif suffix in TABLE_SUFFIXES:
            self.tables.setdefault(stem.lower(), []).append(ref)
        elif suffix == ".zip":
            self.nested_archives.append(str(ref))


def check_manual_dir(manual_dir: os.PathLike | str) -> pathlib.Path:
    root = pathlib.Path(manual_dir).expanduser()
    if not root.is_dir():
        raise ManualDirError(f"manual_dir {root} does not exist or is not a folder.\n\n{INSTRUCTIONS}")
    return root


def scan(manual_dir: os.PathLike | str) -> Inventory:
    """Walk manual_dir (following links) and the zips in it, in sorted order."""
    root = check_manual_dir(manual_dir)
    inventory = Inventory(root=root)
    for folder, dirs, files in os.walk(root, followlinks=True):
        dirs.sort()
        for name in sorted(files):
            path = pathlib.Path(folder) / name
            relpath = str(path.relative_to(root))
            if name.lower().endswith(".zip") and not name.startswith("._"):
                try:
                    with zipfile.ZipFile(path) as archive:
                        members = sorted(i.filename for i in archive.infolist() if not i.is_dir())
                except zipfile.BadZipFile as err:
                    raise ManualDirError(f"{path} is not a readable zip archive ({err})") from err
                for member in members:
                    inventory._add(FileRef(path, member), f"{relpath}/{member}")
            else:
                inventory._add(FileRef(path), relpath)
    for nested in inventory.nested_archives:
        log.warning("zip inside a zip is not read: %s (extract the outer archive)", nested)
    return inventory


@dataclasses.dataclass
class Manifest:
    """The images of one dataset, matched with their metadata rows."""

    dataset: str
    items: list[tuple[metadata_lib.Row, FileRef]]
    tables: list[str]
    missing: list[str]  # rows skipped because their image was not found
    unlisted: list[str]  # images skipped because no row names them
    duplicate_files: int


def _table(inventory: Inventory, stems: tuple[str, ...]) -> FileRef | None:
    for stem in stems:
        refs = sorted(inventory.tables.get(stem, []))
        if refs:
            if len(refs) > 1:
                log.warning("several %s tables; using %s", stem, refs[0])
            return refs[0]
    return None


def _named(ids: list[str], limit: int = 10) -> str:
    shown = ", ".join(ids[:limit])
    return shown + (f", ... ({len(ids) - limit} more)" if len(ids) > limit else "")


def _with_groupings(
    inventory: Inventory, reader: Reader, rows: list[metadata_lib.Row], tables: list[str], stem: str
) -> list[metadata_lib.Row]:
    """Rows with the lesion ids of a LesionGroupings table, when there is one (else a warning: every
    image counts as its own lesion); the table is added to ``tables``."""
    ref = _table(inventory, (stem,))
    if ref is None:
        log.warning(
            "%s has no lesion ids and no %s was found: every image counts as its own "
            "lesion, so lesion-grouped splits cannot keep a lesion's images together",
            tables[0],
            stem,
        )
        return rows
    tables.append(str(ref))
    return metadata_lib.with_groupings(
        rows, metadata_lib.lesion_groupings(reader.read(ref).decode("utf-8-sig"), ref.name)
    )


def _with_sources(
    inventory: Inventory, reader: Reader, rows: list[metadata_lib.Row], tables: list[str]
) -> list[metadata_lib.Row]:
    """Rows with the acquisition sources of a sources table beside the metadata, when there is one (it
    fills what the metadata lacks; a disagreement is an error); the table is added to ``tables``."""
    ref = _table(inventory, (SOURCES_TABLE,))
    if ref is None:
        return rows
    tables.append(str(ref))
    return metadata_lib.with_sources(
        rows, metadata_lib.sources_table(reader.read(ref).decode("utf-8-sig"), ref.name), ref.name
    )


def collect(
    manual_dir: os.PathLike | str,
    dataset: str = "ham10000",
    *,
    skip_missing: bool = False,
    skip_unlisted: bool = False,
    inventory: Inventory | None = None,
) -> Manifest:
    """Read the metadata of `dataset` and pair every row with its image.

    Raises `ManualDirError` without the folder or its table, and `MetadataError`
    for a malformed table, a row without its image (unless `skip_missing`) or an
    image of this release that no row names (unless `skip_unlisted`).
    """
    if dataset not in _TABLES:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {DATASETS}")
    inventory = inventory or scan(manual_dir)
    reader = Reader()
    stems, lesion_stem = _TABLES[dataset]
    table = _table(inventory, stems)
    if table is None:
        raise ManualDirError(
            f"no metadata table for {dataset} under {inventory.root} (looked for "
            f"{' or '.join(s + '.csv' for s in stems)}, also .tab, also inside zips).\n\n{INSTRUCTIONS}"
        )
    rows = metadata_lib.parse_table(reader.read(table).decode("utf-8-sig"), table.name)
    tables = [str(table)]
    if lesion_stem and not any(row.lesion_id for row in rows):
        rows = _with_groupings(inventory, reader, rows, tables, lesion_stem)
    if dataset == "ham10000":
        rows = _with_sources(inventory, reader, rows, tables)
    reader.close()

    missing = sorted(row.image_id for row in rows if row.image_id not in inventory.images)
    if missing and not skip_missing:
        raise MetadataError(
            f"{len(missing)} metadata row(s) of {table.name} have no image under "
            f"{inventory.root}: {_named(missing)}. Add the images, or pass "
            "skip_missing=True (--skip_missing) to leave those rows out."
        )
    listed = {row.image_id for row in rows}
    unlisted = sorted(
        image_id
        for image_id, ref in inventory.images.items()
        if image_id not in listed and image_set(str(ref)) == dataset and ref.name.lower().endswith((".jpg", ".jpeg"))
    )
    if unlisted and not skip_unlisted:
        raise MetadataError(
            f"{len(unlisted)} image(s) under {inventory.root} have no row in {table.name}: "
            f"{_named(unlisted)}. Remove them, or pass skip_unlisted=True (--skip_unlisted) "
            "to ignore them."
        )
    if missing:
        log.warning("skipped %d metadata row(s) without an image: %s", len(missing), _named(missing))
    if unlisted:
        log.warning("ignored %d image(s) without a metadata row: %s", len(unlisted), _named(unlisted))
    items = sorted(
        ((row, inventory.images[row.image_id]) for row in rows if row.image_id in inventory.images),
        key=lambda item: item[0].image_id,
    )
    if not items:
        raise ManualDirError(f"no image of {table.name} was found under {inventory.root}.\n\n{INSTRUCTIONS}")
    return Manifest(
        dataset=dataset,
        items=items,
        tables=tables,
        missing=missing,
        unlisted=unlisted,
        duplicate_files=inventory.duplicate_files,
    )
