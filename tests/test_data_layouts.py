"""Finding images and metadata in the official layouts; metadata errors name the culprit."""

from __future__ import annotations

import math
import zipfile

import numpy as np
import pytest
from PIL import Image

from caco_jax.data import layouts, metadata
from caco_jax.data.errors import ManualDirError, MetadataError

HEADER = "lesion_id,image_id,dx,dx_type,age,sex,localization\n"


def _jpeg_bytes(value: int) -> bytes:
    import io

    out = io.BytesIO()
    Image.fromarray(np.full((6, 8, 3), value, np.uint8)).save(out, format="JPEG")
    return out.getvalue()


def _write_images(folder, ids):
    folder.mkdir(parents=True, exist_ok=True)
    for i, image_id in enumerate(ids):
        (folder / f"{image_id}.jpg").write_bytes(_jpeg_bytes(10 * i))


def _ham_csv(rows):
    return HEADER + "".join(",".join(r) + "\n" for r in rows)


ROWS = [
    ("HAM_1", "ISIC_0000001", "nv", "follow_up", "45.0", "male", "back"),
    ("HAM_1", "ISIC_0000002", "nv", "follow_up", "45.0", "male", "back"),
    ("HAM_2", "ISIC_0000003", "mel", "histo", "", "female", "face"),
    ("HAM_3", "ISIC_0000004", "bkl", "consensus", "70.0", "unknown", "unknown"),
]
IDS = [r[1] for r in ROWS]


@pytest.fixture
def kaggle(tmp_path):
    _write_images(tmp_path / "HAM10000_images_part_1", IDS[:2])
    _write_images(tmp_path / "HAM10000_images_part_2", IDS[2:])
    _write_images(tmp_path / "ham10000_images_part_1", IDS[:2])  # Kaggle's lower-case copies
    (tmp_path / "HAM10000_metadata.csv").write_text(_ham_csv(ROWS))
    (tmp_path / "hmnist_8_8_RGB.csv").write_text("pixel0000,label\n1,2\n")
    return tmp_path


def test_kaggle_layout(kaggle):
    manifest = layouts.collect(kaggle)
    assert [row.image_id for row, _ in manifest.items] == IDS
    assert manifest.duplicate_files == 2
    row = manifest.items[2][0]
    assert (row.dx, row.lesion_id, row.sex, row.localization) == ("mel", "HAM_2", "female", "face")
    assert math.isnan(row.age) and manifest.items[0][0].age == 45.0
    assert manifest.items[3][1].path.parent.name == "HAM10000_images_part_2"


def test_dataverse_zips_and_tab_metadata(tmp_path):
    for name, ids in (("HAM10000_images_part_1.zip", IDS[:3]), ("HAM10000_images_part_2.zip", IDS[3:])):
        with zipfile.ZipFile(tmp_path / name, "w") as archive:
            for i, image_id in enumerate(ids):
                archive.writestr(f"{image_id}.jpg", _jpeg_bytes(i))
    tab = "\t".join(f'"{h}"' for h in HEADER.strip().split(",")) + "\n"
    for r in ROWS:
        tab += "\t".join(f'"{v}"' if not v.replace(".", "").isdigit() else v for v in r).replace('""', "NA") + "\n"
    (tmp_path / "HAM10000_metadata.tab").write_text(tab)
    manifest = layouts.collect(tmp_path)
    assert [row.image_id for row, _ in manifest.items] == IDS
    assert manifest.items[0][1].member == "ISIC_0000001.jpg"
    assert math.isnan(manifest.items[2][0].age)
    reader = layouts.Reader()
    assert reader.read(manifest.items[1][1]) == _jpeg_bytes(1)
    reader.close()


def _isic_csv(pairs):
    cols = list(metadata.ISIC_COLUMNS)
    lines = ["image," + ",".join(cols)]
    for image_id, dx in pairs:
        lines.append(image_id + "," + ",".join("1.0" if metadata.ISIC_COLUMNS[c] == dx else "0.0" for c in cols))
    return "\n".join(lines) + "\n"


@pytest.fixture
def isic(tmp_path):
    _write_images(tmp_path / "ISIC2018_Task3_Training_Input", IDS)
    with zipfile.ZipFile(tmp_path / "ISIC2018_Task3_Training_GroundTruth.zip", "w") as archive:
        archive.writestr(
            "ISIC2018_Task3_Training_GroundTruth/ISIC2018_Task3_Training_GroundTruth.csv",
            _isic_csv([(r[1], r[2]) for r in ROWS]),
        )
    (tmp_path / "ISIC2018_Task3_Training_LesionGroupings.csv").write_text(
        "image,lesion_id,diagnosis_confirm_type\n"
        + "".join(
            f"{r[1]},{r[0]},{'histopathology' if r[3] == 'histo' else 'serial imaging showing no change'}\n"
            for r in ROWS
        )
    )
    test_ids = ["ISIC_0034524", "ISIC_0034525"]
    _write_images(tmp_path / "ISIC2018_Task3_Test_Input", test_ids)
    (tmp_path / "ISIC2018_Task3_Test_GroundTruth.csv").write_text(_isic_csv(zip(test_ids, ["df", "vasc"], strict=True)))
    _write_images(tmp_path / "HAM10000_segmentations_lesion_tschandl", [f"{i}_segmentation" for i in IDS])
    return tmp_path


def test_isic2018_training_layout_with_lesion_groupings(isic):
    manifest = layouts.collect(isic, "ham10000")
    rows = [row for row, _ in manifest.items]
    assert [r.image_id for r in rows] == IDS
    assert [r.dx for r in rows] == [r[2] for r in ROWS]
    assert [r.lesion_id for r in rows] == [r[0] for r in ROWS]
    assert rows[2].dx_type == "histo" and rows[0].dx_type == "follow_up"
    assert len(manifest.tables) == 2


def test_isic2018_test_set_beside_the_training_set(isic):
    manifest = layouts.collect(isic, "isic2018_test")
    assert [(row.image_id, row.dx) for row, _ in manifest.items] == [("ISIC_0034524", "df"), ("ISIC_0034525", "vasc")]
    assert manifest.unlisted == []  # HAM10000 images and masks are not 'unlisted' test images


def test_image_found_anywhere_below(tmp_path):
    _write_images(tmp_path / "a" / "b" / "c", IDS[:2])
    _write_images(tmp_path / "x", IDS[2:])
    (tmp_path / "meta").mkdir()
    (tmp_path / "meta" / "HAM10000_metadata.csv").write_text(_ham_csv(ROWS))
    assert len(layouts.collect(tmp_path).items) == 4


@pytest.mark.real_data
def test_shared_real_copy_layout(real_data_dir):
    manifest = layouts.collect(real_data_dir)
    assert len(manifest.items) == 10015
    assert manifest.missing == [] and manifest.unlisted == []
    assert manifest.items[0][1].path.parent.name == "images_200x150"


# ---- bad input ---------------------------------------------------------------------------


def test_missing_manual_dir_explains_the_download(tmp_path):
    with pytest.raises(ManualDirError, match="does not exist") as err:
        layouts.collect(tmp_path / "nowhere")
    assert "kaggle" in str(err.value).lower() and "HAM10000_metadata.csv" in str(err.value)


def test_missing_metadata_explains_the_download(tmp_path):
    _write_images(tmp_path / "HAM10000_images_part_1", IDS)
    with pytest.raises(ManualDirError, match="no metadata table") as err:
        layouts.collect(tmp_path)
    assert "Dataverse" in str(err.value)


def test_row_without_image_is_named_or_skipped_with_a_count(kaggle):
    for folder in ("HAM10000_images_part_2", "ham10000_images_part_1"):
        for path in (kaggle / folder).glob("*.jpg"):
            if path.stem == "ISIC_0000003":
                path.unlink()
    with pytest.raises(MetadataError, match="ISIC_0000003") as err:
        layouts.collect(kaggle)
    assert "1 metadata row" in str(err.value) and "skip_missing" in str(err.value)
    manifest = layouts.collect(kaggle, skip_missing=True)
    assert manifest.missing == ["ISIC_0000003"] and len(manifest.items) == 3


def test_image_without_row_is_named_or_skipped_with_a_count(kaggle):
    _write_images(kaggle / "HAM10000_images_part_2", ["ISIC_0000099"])
    with pytest.raises(MetadataError, match="ISIC_0000099") as err:
        layouts.collect(kaggle)
    assert "skip_unlisted" in str(err.value)
    manifest = layouts.collect(kaggle, skip_unlisted=True)
    assert manifest.unlisted == ["ISIC_0000099"] and len(manifest.items) == 4


def test_unknown_dx_names_the_row(kaggle):
    rows = ROWS[:2] + [("HAM_9", "ISIC_0000003", "lentigo", "histo", "50.0", "male", "back")] + ROWS[3:]
    (kaggle / "HAM10000_metadata.csv").write_text(_ham_csv(rows))
    with pytest.raises(MetadataError, match=r"HAM10000_metadata.csv:4: image ISIC_0000003 has unknown dx 'lentigo'"):
        layouts.collect(kaggle)


def test_duplicate_image_id_is_an_error(kaggle):
    (kaggle / "HAM10000_metadata.csv").write_text(_ham_csv(ROWS + [ROWS[1]]))
    with pytest.raises(MetadataError, match=r"duplicate image_id.*ISIC_0000002 \(HAM10000_metadata.csv:3 and "):
        layouts.collect(kaggle)


def test_one_hot_row_with_no_class_is_an_error():
    text = _isic_csv([("ISIC_1", "mel")]).replace("1.0", "0.0")
    with pytest.raises(MetadataError, match="ISIC_1 has 0 classes set"):
        metadata.parse_table(text, "gt.csv")


def test_unrecognised_header_and_ragged_rows_are_errors():
    with pytest.raises(MetadataError, match="unrecognised header"):
        metadata.parse_table("name,label\na,b\n", "x.csv")
    with pytest.raises(MetadataError, match=r"x.csv:2: 3 fields"):
        metadata.parse_table("image_id,dx\na,nv,extra\n", "x.csv")
    with pytest.raises(MetadataError, match="age 'old'"):
        metadata.parse_table("image_id,dx,age\na,nv,old\n", "x.csv")
