"""Metadata tables of the HAM10000 releases, parsed into one `Row` per image.

Two table formats exist and both are recognised by their header:

* HAM10000 style (Kaggle / Harvard Dataverse `HAM10000_metadata.csv` or `.tab`):
  `lesion_id, image_id, dx, dx_type, age, sex, localization` (extra columns are
  ignored; only `image_id` and `dx` are required). The later Dataverse release adds
  `dataset`, each image's acquisition source (`vidir_molemax`, `vidir_modern`,
  `rosendahl`, `vienna_dias`), kept as `Row.source`; older copies (Kaggle's) lack it,
  and a sources table beside them (`image_id, dataset`: `sources_table`) can add it.
* ISIC 2018 Task 3 ground truth: `image, MEL, NV, BCC, AKIEC, BKL, DF, VASC`, one-hot.
  Its training set ships lesion ids separately, in
  `ISIC2018_Task3_Training_LesionGroupings.csv` (`image, lesion_id,
  diagnosis_confirm_type`), which `lesion_groupings` reads.

Every problem raises `MetadataError` naming the file, line and image.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
from collections.abc import Iterable, Iterator

from caco_jax.data.classes import CLASS_NAMES
from caco_jax.data.errors import MetadataError

# ISIC one-hot column -> HAM10000 dx code.
ISIC_COLUMNS: dict[str, str] = {
    "MEL": "mel",
    "NV": "nv",
    "BCC": "bcc",
    "AKIEC": "akiec",
    "BKL": "bkl",
    "DF": "df",
    "VASC": "vasc",
}
# ISIC `diagnosis_confirm_type` -> HAM10000 `dx_type`.
CONFIRM_TYPES: dict[str, str] = {
    "histopathology": "histo",
    "serial imaging showing no change": "follow_up",
    "single image expert consensus": "consensus",
    "confocal microscopy with consensus dermoscopy": "confocal",
}
_MISSING = {"", "na", "nan", "none", "null", "unknown"}


@dataclasses.dataclass(frozen=True)
class Row:
    """One image's metadata; text fields are '' and age NaN when unknown."""

    image_id: str
    dx: str
    lesion_id: str = ""
    dx_type: str = ""
    age: float = math.nan
    sex: str = ""
    localization: str = ""
    source: str = ""  # acquisition source (the metadata's `dataset` column)
    where: str = ""  # "file:line", for messages


def _records(text: str, name: str) -> tuple[dict[str, str], Iterator[tuple[int, dict[str, str]]]]:
    """Header (lower-cased name -> original) and (line, row) pairs of a CSV/TSV text."""
    text = text.lstrip("\ufeff")
    first = text.split("\n", 1)[0]
    delimiter = "\t" if name.lower().endswith(".tab") or "\t" in first else ","
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise MetadataError(f"{name}: the table is empty") from None
    columns = {h.lower(): h for h in header}

    def rows() -> Iterator[tuple[int, dict[str, str]]]:
        for values in reader:
            if not any(v.strip() for v in values):
                continue
            if len(values) != len(header):
                raise MetadataError(f"{name}:{reader.line_num}: {len(values)} fields, header has {len(header)}")
            yield reader.line_num, {h.lower(): v.strip() for h, v in zip(header, values, strict=True)}

    return columns, rows()


def _age(value: str, where: str) -> float:
    if value.lower() in _MISSING:
        return math.nan
    try:
        return float(value)
    except ValueError:
        raise MetadataError(f"{where}: age {value!r} is not a number") from None


def _text(value: str) -> str:
    return "" if value.lower() in {"na", "nan", "null"} else value


def parse_table(text: str, name: str) -> list[Row]:
    """Rows of a HAM10000-style or ISIC one-hot table (format told by its header)."""
    columns, records = _records(text, name)
    if "image_id" in columns and "dx" in columns:
        rows = [_ham_row(record, f"{name}:{line}") for line, record in records]
    elif "image" in columns and all(c.lower() in columns for c in ISIC_COLUMNS):
        rows = [_isic_row(record, f"{name}:{line}") for line, record in records]
    else:
        raise MetadataError(
            f"{name}: unrecognised header {list(columns.values())}; expected HAM10000 "
            "columns (image_id, dx, lesion_id, dx_type, age, sex, localization) or ISIC "
            f"2018 one-hot columns (image, {', '.join(ISIC_COLUMNS)})"
        )
    if not rows:
        raise MetadataError(f"{name}: the table has a header but no rows")
    check_unique(rows)
    return rows


def _ham_row(record: dict[str, str], where: str) -> Row:
    image_id = record["image_id"]
    if not image_id:
        raise MetadataError(f"{where}: empty image_id")
    dx = record["dx"].lower()
    if dx not in CLASS_NAMES:
        raise MetadataError(
            f"{where}: image {image_id} has unknown dx {record['dx']!r}; expected one of {', '.join(CLASS_NAMES)}"
        )
    return Row(
        image_id=image_id,
        dx=dx,
        lesion_id=_text(record.get("lesion_id", "")),
        dx_type=_text(record.get("dx_type", "")),
        age=_age(record.get("age", ""), where),
        sex=_text(record.get("sex", "")),
        localization=_text(record.get("localization", "")),
        source=_text(record.get("dataset", "")),
        where=where,
    )


def _isic_row(record: dict[str, str], where: str) -> Row:
    image_id = record["image"]
    if not image_id:
        raise MetadataError(f"{where}: empty image")
    hot = []
    for column, dx in ISIC_COLUMNS.items():
        value = record[column.lower()]
        try:
            number = float(value)
        except ValueError:
            raise MetadataError(f"{where}: image {image_id}: {column}={value!r} is not a number") from None
        if number not in (0.0, 1.0):
            raise MetadataError(f"{where}: image {image_id}: {column}={value!r}, expected 0 or 1")
        if number == 1.0:
            hot.append(dx)
    if len(hot) != 1:
        raise MetadataError(
            f"{where}: image {image_id} has {len(hot)} classes set ({', '.join(hot) or 'none'}); "
            f"exactly one of {', '.join(ISIC_COLUMNS)} must be 1 (unknown dx)"
        )
    return Row(image_id=image_id, dx=hot[0], where=where)


def lesion_groupings(text: str, name: str) -> dict[str, tuple[str, str]]:
    """ISIC 2018 `LesionGroupings` table: image id -> (lesion_id, dx_type)."""
    columns, records = _records(text, name)
    if "image" not in columns or "lesion_id" not in columns:
        raise MetadataError(f"{name}: expected columns image, lesion_id, diagnosis_confirm_type")
    out: dict[str, tuple[str, str]] = {}
    for _line, record in records:
        confirm = record.get("diagnosis_confirm_type", "")
        out[record["image"]] = (record["lesion_id"], CONFIRM_TYPES.get(confirm.lower(), confirm))
    return out


def with_groupings(rows: Iterable[Row], groupings: dict[str, tuple[str, str]]) -> list[Row]:
    """Fill lesion_id / dx_type of rows from a LesionGroupings table."""
    out = []
    for row in rows:
        lesion_id, dx_type = groupings.get(row.image_id, (row.lesion_id, row.dx_type))
        out.append(dataclasses.replace(row, lesion_id=lesion_id or row.lesion_id, dx_type=dx_type or row.dx_type))
    return out


def sources_table(text: str, name: str) -> dict[str, str]:
    """A sources table (`image_id, dataset`): image id -> acquisition source."""
    columns, records = _records(text, name)
    if "image_id" not in columns or "dataset" not in columns:
        raise MetadataError(
            f"{name}: expected columns image_id, dataset (the acquisition source of each image); "
            f"found {list(columns.values())}"
        )
    out: dict[str, str] = {}
    for line, record in records:
        image_id = record["image_id"]
        if image_id in out:
            raise MetadataError(f"{name}:{line}: image {image_id} is listed twice")
        out[image_id] = _text(record["dataset"])
    return out


def with_sources(rows: Iterable[Row], sources: dict[str, str], name: str) -> list[Row]:
    """Fill the acquisition source of rows from a sources table; a row whose own `dataset`
    column disagrees with the table is an error (two tables, two answers)."""
    out = []
    for row in rows:
        source = sources.get(row.image_id, "")
        if row.source and source and row.source != source:
            raise MetadataError(
                f"{row.where}: image {row.image_id} has dataset {row.source!r} but {name} says {source!r}; "
                "remove one of the two tables"
            )
        out.append(dataclasses.replace(row, source=row.source or source))
    return out


def check_unique(rows: Iterable[Row]) -> None:
    """Raise if an image_id appears on two rows."""
    seen: dict[str, Row] = {}
    dupes = []
    for row in rows:
        if row.image_id in seen:
            dupes.append(f"{row.image_id} ({seen[row.image_id].where} and {row.where})")
        else:
            seen[row.image_id] = row
    if dupes:
        shown = "; ".join(dupes[:10]) + (f"; ... {len(dupes) - 10} more" if len(dupes) > 10 else "")
        raise MetadataError(f"duplicate image_id on {len(dupes)} row(s): {shown}")
