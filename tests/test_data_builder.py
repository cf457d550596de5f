"""The TFDS builder: synthetic and real builds, features, sizes, bad input, idempotence."""

from __future__ import annotations

import csv
import io
import math
import os
import shutil
import sys
import zipfile

import numpy as np
import pytest
from PIL import Image

from caco_jax.data import ham10000, layouts, metadata, records, synthetic
from caco_jax.data.classes import CLASS_NAMES, META_FIELDS
from caco_jax.data.errors import CorruptImageError, DataNotBuiltError, ManualDirError, MetadataError
from caco_jax.errors import ConfigError


def _rows(manual_dir):
    with open(manual_dir / "HAM10000_metadata.csv", newline="") as f:
        return {r["image_id"]: r for r in csv.DictReader(f)}


@pytest.fixture(scope="module")
def manual_dir(tmp_path_factory):
    return synthetic.write_manual_dir(tmp_path_factory.mktemp("manual"), num_images=120, image_size=(64, 48), seed=2)


@pytest.fixture(scope="module")
def built(manual_dir, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("tfds")
    return ham10000.prepare(manual_dir, data_dir, image_size=32, progress=False)


def test_build_needs_no_tensorflow(built):
    assert "tensorflow" not in sys.modules
    assert built.info.file_format.value == "array_record"


def test_features_and_label_order(built):
    features = built.info.features
    assert set(features) == {
        "image",
        "label",
        "image_id",
        "lesion_id",
        "dx_type",
        "age",
        "sex",
        "localization",
        "source",
    }
    assert str(built.version) == "1.1.0"
    assert tuple(features["label"].names) == CLASS_NAMES
    assert built.builder_config.name == "ham10000_32px"
    assert list(built.info.splits) == ["train"]


def test_every_row_built_once_with_its_metadata(built, manual_dir):
    rows = _rows(manual_dir)
    source = built.as_data_source("train")  # TFDS's own decoding
    assert len(source) == len(rows) == 120
    seen = set()
    for example in source:
        image_id = example["image_id"].decode()
        row = rows[image_id]
        seen.add(image_id)
        assert example["label"] == CLASS_NAMES.index(row["dx"])
        assert example["lesion_id"].decode() == row["lesion_id"]
        assert example["sex"].decode() == row["sex"]
        assert example["localization"].decode() == row["localization"]
        assert example["source"].decode() == row["dataset"] != ""
        assert math.isnan(example["age"]) if row["age"] == "" else example["age"] == float(row["age"])
        image = example["image"]
        assert image.dtype == np.uint8 and image.shape == (32, 43, 3)  # 64x48 shrunk, aspect kept
    assert seen == set(rows)
    assert built.info.metadata["image_shapes"] == {"32x43": 120}
    assert built.info.metadata["skipped_corrupt"] == []


def test_prepare_is_idempotent(built, manual_dir):
    info_file = os.path.join(os.fspath(built.data_path), "dataset_info.json")
    before = os.stat(info_file).st_mtime_ns
    again = ham10000.prepare(manual_dir, built.data_dir_root, image_size=32, progress=False)
    assert again.data_path == built.data_path
    assert os.stat(info_file).st_mtime_ns == before


def test_images_are_never_enlarged_and_kept_byte_for_byte(manual_dir, tmp_path):
    builder = ham10000.prepare(manual_dir, tmp_path, image_size=200, progress=False)
    source = ham10000.open_source(tmp_path, image_size=200)
    record = source[0]
    original = next(manual_dir.glob(f"*/{record['image_id']}.jpg")).read_bytes()
    assert record["image"] == original
    assert builder.info.metadata["image_shapes"] == {"48x64": 120}


def _copy_manual(manual_dir, tmp_path):
    dst = tmp_path / "manual"
    shutil.copytree(manual_dir, dst)
    return dst


def test_corrupt_jpeg_is_skipped_with_a_count(manual_dir, tmp_path):
    manual = _copy_manual(manual_dir, tmp_path)
    victims = sorted(manual.glob("HAM10000_images_part_1/*.jpg"))[:2]
    victims[0].write_bytes(victims[0].read_bytes()[:300])  # truncated
    victims[1].write_bytes(b"not a jpeg at all")
    builder = ham10000.prepare(manual, tmp_path / "tfds", image_size=32, progress=False)
    assert builder.info.splits["train"].num_examples == 118
    assert builder.info.metadata["skipped_corrupt"] == sorted(v.stem for v in victims)


def test_corrupt_jpeg_error_flag_leaves_no_complete_build(manual_dir, tmp_path):
    manual = _copy_manual(manual_dir, tmp_path)
    victim = sorted(manual.glob("HAM10000_images_part_2/*.jpg"))[3]
    victim.write_bytes(victim.read_bytes()[:200])
    data_dir = tmp_path / "tfds"
    with pytest.raises(CorruptImageError, match=victim.stem):
        ham10000.prepare(manual, data_dir, image_size=32, on_corrupt="error", progress=False)
    assert not ham10000.builder(data_dir, image_size=32).is_prepared()
    assert not list(data_dir.rglob("dataset_info.json"))
    with pytest.raises(DataNotBuiltError, match="caco-jax prepare-data"):
        ham10000.open_splits(data_dir, image_size=32)


def test_metadata_errors_stop_the_build_before_writing(manual_dir, tmp_path):
    manual = _copy_manual(manual_dir, tmp_path)
    text = (manual / "HAM10000_metadata.csv").read_text().replace(",nv,", ",naevus,", 1)
    (manual / "HAM10000_metadata.csv").write_text(text)
    with pytest.raises(MetadataError, match="unknown dx 'naevus'"):
        ham10000.prepare(manual, tmp_path / "tfds", image_size=32, progress=False)
    assert not list((tmp_path / "tfds").rglob("*.array_record*"))


def test_missing_manual_dir_gives_instructions(tmp_path):
    with pytest.raises(ManualDirError, match="Kaggle"):
        ham10000.prepare(tmp_path / "nowhere", tmp_path / "tfds", progress=False)


def test_build_from_zips(manual_dir, tmp_path):
    manual = tmp_path / "dataverse"
    manual.mkdir()
    for part in ("HAM10000_images_part_1", "HAM10000_images_part_2"):
        with zipfile.ZipFile(manual / f"{part}.zip", "w") as archive:
            for path in sorted((manual_dir / part).glob("*.jpg")):
                archive.write(path, path.name)
    shutil.copy(manual_dir / "HAM10000_metadata.csv", manual)
    builder = ham10000.prepare(manual, tmp_path / "tfds", image_size=32, progress=False)
    assert builder.info.splits["train"].num_examples == 120


def test_isic2018_test_config(tmp_path):
    manual = tmp_path / "isic"
    (manual / "ISIC2018_Task3_Test_Input").mkdir(parents=True)
    columns = ["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]
    lines = ["image," + ",".join(columns)]
    for i, column in enumerate(columns):
        image = Image.fromarray(np.full((30, 40, 3), 30 * i, np.uint8))
        image.save(manual / "ISIC2018_Task3_Test_Input" / f"ISIC_00345{i:02d}.jpg")
        lines.append(f"ISIC_00345{i:02d}," + ",".join("1.0" if c == column else "0.0" for c in columns))
    (manual / "ISIC2018_Task3_Test_GroundTruth.csv").write_text("\n".join(lines) + "\n")
    builder = ham10000.prepare(manual, tmp_path / "tfds", config="isic2018_test", progress=False)
    assert builder.builder_config.name == "isic2018_test" and list(builder.info.splits) == ["test"]
    source = ham10000.open_source(tmp_path / "tfds", config="isic2018_test")
    assert sorted(source.labels.tolist()) == list(range(7))
    assert source[0]["lesion_id"] == "" and math.isnan(source[0]["age"])
    by_id = dict(zip(source.image_ids, source.labels, strict=True))
    assert CLASS_NAMES[by_id["ISIC_0034500"]] == "mel" and CLASS_NAMES[by_id["ISIC_0034506"]] == "vasc"


@pytest.mark.real_data
def test_real_data_slice_builds(real_data_dir, tmp_path):
    with open(real_data_dir / "HAM10000_metadata.csv", newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        rows = [next(reader) for _ in range(100)]
    manual = tmp_path / "manual"
    (manual / "images").mkdir(parents=True)
    with open(manual / "HAM10000_metadata.csv", "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    for row in rows:
        shutil.copy(real_data_dir / "images_200x150" / f"{row[1]}.jpg", manual / "images")
    builder = ham10000.prepare(manual, tmp_path / "tfds", progress=False)
    assert builder.info.metadata["image_shapes"] == {"150x200": 100}
    source = ham10000.open_source(tmp_path / "tfds")
    assert len(source) == 100
    dx = {r[1]: r[2] for r in rows}
    for i in range(0, 100, 9):
        record = source[i]
        assert CLASS_NAMES[record["label"]] == dx[record["image_id"]]
        original = (real_data_dir / "images_200x150" / f"{record['image_id']}.jpg").read_bytes()
        assert record["image"] == original
        with Image.open(io.BytesIO(record["image"])) as image:
            assert image.size == (200, 150)


def test_a_build_older_than_sources_is_read_and_preparing_builds_the_current_one_beside_it(built, manual_dir, tmp_path):
    """A 1.0.0 build (before `source`) is found and read as it is; its records have no source. Preparing
    (what training does with a manual_dir) builds 1.1.0 beside it, which is read from then on."""
    old = tmp_path / "tfds" / "ham10000" / built.builder_config.name / "1.0.0"
    shutil.copytree(built.data_path, old)
    info = old / "dataset_info.json"
    info.write_text(info.read_text().replace('"version": "1.1.0"', '"version": "1.0.0"'))
    reader = ham10000.builder(tmp_path / "tfds", image_size=32)
    assert str(reader.version) == "1.0.0"
    prepared = ham10000.prepare(manual_dir, tmp_path / "tfds", image_size=32, progress=False)
    assert str(prepared.version) == "1.1.0" and old.is_dir()
    source = ham10000.open_source(tmp_path / "tfds", image_size=32)
    assert set(source.meta["source"]) == set(_rows(manual_dir)[i]["dataset"] for i in source.image_ids)
    # records written without the feature parse to '' (what an old build holds)
    from tensorflow_datasets.proto import tf_example_pb2

    example = tf_example_pb2.Example()
    example.features.feature["label"].int64_list.value.append(3)
    example.features.feature["image_id"].bytes_list.value.append(b"ISIC_1")
    parsed = records.parse_record(example.SerializeToString(), ("label", "image_id", "source"))
    assert parsed == {"label": 3, "image_id": "ISIC_1", "source": ""}


@pytest.mark.real_data
def test_real_sources_table_beside_an_old_metadata_table(real_data_dir, tmp_path):
    """Kaggle-style metadata (no `dataset` column) plus HAM10000_sources.csv: every image gets its source."""
    with open(real_data_dir / "HAM10000_metadata.csv", newline="") as f:
        rows = list(csv.reader(f))[:41]
    manual = tmp_path / "manual"
    (manual / "images").mkdir(parents=True)
    with open(manual / "HAM10000_metadata.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    shutil.copy(real_data_dir / "HAM10000_sources.csv", manual)
    for row in rows[1:]:
        shutil.copy(real_data_dir / "images_200x150" / f"{row[1]}.jpg", manual / "images")
    manifest = layouts.collect(manual)
    with open(real_data_dir / "HAM10000_sources.csv", newline="") as f:
        truth = {r["image_id"]: r["dataset"] for r in csv.DictReader(f)}
    assert {row.image_id: row.source for row, _ in manifest.items} == {r[1]: truth[r[1]] for r in rows[1:]}
    assert any(t.endswith("HAM10000_sources.csv") for t in manifest.tables)


def test_sources_table_that_contradicts_the_metadata_is_an_error(manual_dir, tmp_path):
    manual = tmp_path / "manual"
    shutil.copytree(manual_dir, manual)
    first = sorted(_rows(manual_dir).values(), key=lambda r: r["image_id"])[0]
    other = "rosendahl" if first["dataset"] != "rosendahl" else "vidir_modern"
    (manual / "HAM10000_sources.csv").write_text(f"image_id,dataset\n{first['image_id']},{other}\n")
    with pytest.raises(MetadataError, match=rf"{first['image_id']} has dataset .*HAM10000_sources.csv says '{other}'"):
        layouts.collect(manual)


def test_sources_table_with_the_wrong_columns_names_them(tmp_path):
    with pytest.raises(MetadataError, match=r"s.csv: expected columns image_id, dataset.*\['image', 'site'\]"):
        metadata.sources_table("image,site\nISIC_1,x\n", "s.csv")


@pytest.mark.slow
def test_command_line_scripts(tmp_path):
    import subprocess  # pylint: disable=import-outside-toplevel

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def run(script, *args, folder="scripts"):
        return subprocess.run(
            [sys.executable, os.path.join(root, folder, script), *args],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
        )

    made = run(
        "make_synthetic.py",
        "--out_dir",
        "manual",
        "--num_images",
        "70",
        "--width",
        "40",
        "--height",
        "30",
        folder="tools",
    )
    assert made.returncode == 0, made.stderr
    assert "wrote 70 images" in made.stdout
    built = run("prepare_data.py", "--manual_dir", "manual", "--data_dir", "tfds", "--image_size", "24")
    assert built.returncode == 0, built.stderr
    assert "ham10000_24px: 70 images" in built.stdout and "stored sizes (h x w): {'24x32': 70}" in built.stdout
    failed = run("prepare_data.py", "--manual_dir", "nowhere", "--data_dir", "tfds2")
    assert failed.returncode == 2 and "--manual_dir nowhere: no such folder" in failed.stderr
    assert "Traceback" not in failed.stderr and not (tmp_path / "tfds2").exists()


def test_prepare_data_refuses_a_folder_without_the_release_before_tfds_starts_and_leaves_nothing(tmp_path, capfd):
    """An empty download folder: our one error, not TFDS's 'Downloading and preparing dataset' (nor its
    notes on folders it looked in) before it, and no empty folders left in data_dir."""
    from caco_jax.cli.prepare_data import main as prepare_main

    (tmp_path / "empty").mkdir()
    other = tmp_path / "tfds_kept" / "ham10000" / "ham10000_96px" / "1.1.0"
    other.mkdir(parents=True)  # another release's build: kept as it is
    for data_dir in (tmp_path / "tfds", tmp_path / "tfds_kept"):
        code = prepare_main(
            ["--manual_dir", str(tmp_path / "empty"), "--data_dir", str(data_dir), "--image_size", "24"]
        )
        out, err = capfd.readouterr()
        assert code == 1 and err.startswith(f"error: no metadata table for ham10000 under {tmp_path / 'empty'}"), err
        assert "Downloading and preparing" not in out + err and "Variant folder" not in err and "Traceback" not in err
    assert not (tmp_path / "tfds").exists()
    assert sorted(p.relative_to(tmp_path).as_posix() for p in (tmp_path / "tfds_kept").rglob("*")) == [
        "tfds_kept/ham10000",
        "tfds_kept/ham10000/ham10000_96px",
        "tfds_kept/ham10000/ham10000_96px/1.1.0",
    ]


def test_source_metadata_travels_with_every_split(built, manual_dir):
    rows = _rows(manual_dir)
    parts = records.split_source(ham10000.open_source(built.data_dir_root, image_size=32), seed=0)
    for part in parts.values():
        for field in META_FIELDS:
            assert len(part.meta[field]) == len(part)
        for i in range(0, len(part), 7):
            row = rows[str(part.image_ids[i])]
            assert part.meta["source"][i] == row["dataset"] and part.meta["sex"][i] == row["sex"]
            assert part.meta["localization"][i] == row["localization"] and part.meta["dx_type"][i] == row["dx_type"]


def test_leave_one_source_out_split(built, manual_dir):
    rows = _rows(manual_dir)
    full = ham10000.open_source(built.data_dir_root, image_size=32)
    parts = records.split_source(full, seed=3, holdout_source="rosendahl")
    held = {i for i, r in rows.items() if r["dataset"] == "rosendahl"}
    assert set(parts["test"].image_ids) == held and held
    lesions = {rows[i]["lesion_id"] for i in held}
    for name in ("train", "validation"):
        assert not {rows[str(i)]["lesion_id"] for i in parts[name].image_ids} & lesions
        assert set(parts[name].meta["source"]) <= {"vidir_molemax", "vidir_modern", "vienna_dias"}
    assert len(parts["train"]) + len(parts["validation"]) == len(rows) - len(held)
    # 8:1 (the first two fractions), within what whole lesions of 1-4 images allow on 120 images
    assert 5 <= len(parts["train"]) / len(parts["validation"]) <= 15
    with pytest.raises(ConfigError, match=r"holdout_source=nowhere: .*its sources: rosendahl, vidir_modern"):
        records.split_source(full, holdout_source="nowhere")


def test_a_build_says_it_downloads_nothing(tmp_path, capfd):
    """The no-download demo's build: this project's line, not TFDS's 'Downloading and preparing dataset'."""
    manual = synthetic.write_manual_dir(tmp_path / "m", num_images=40, image_size=(64, 48), seed=3)
    ham10000.prepare(manual, tmp_path / "tfds", image_size=32, progress=False)
    out = capfd.readouterr().out
    assert "from local files into" in out and "(nothing is downloaded)" in out
    assert "Downloading" not in out and "downloaded and prepared" not in out
