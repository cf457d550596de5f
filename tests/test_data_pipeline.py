"""grain pipelines: splits at load time, training stream, evaluation pass, exact resume."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from absl import flags
from PIL import Image

from caco_jax.data import ham10000, pipeline, records, synthetic
from caco_jax.data.classes import CLASS_NAMES, NUM_CLASSES
from caco_jax.data.errors import DataNotBuiltError

NUM = 150
SIZE = 16  # stored and loaded size of the coded images


def _code(index: int, label: int) -> np.ndarray:
    """A flat colour that encodes the example: R = class, (G, B) = a unique number."""
    return np.asarray([20 + 30 * label, 8 + 16 * (index // 16), 8 + 16 * (index % 16)], np.uint8)


def _decode(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(class, number) of each uint8 [..., H, W, 3] image, from its mean colour."""
    mean = images.reshape(*images.shape[:-3], -1, 3).mean(-2)
    label = np.rint((mean[..., 0] - 20) / 30).astype(int)
    number = np.rint((mean[..., 1] - 8) / 16).astype(int) * 16 + np.rint((mean[..., 2] - 8) / 16).astype(int)
    return label, number


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A build whose every image is a flat colour coding its class and its image number."""
    manual = tmp_path_factory.mktemp("coded")
    (manual / "images").mkdir()
    rng = np.random.default_rng(0)
    lesion_labels = np.concatenate([np.arange(NUM_CLASSES).repeat(4), rng.choice([5, 5, 5, 4, 2], NUM // 2 - 28)])
    labels = lesion_labels.repeat(2)  # every lesion: two images of one class
    with open(manual / "HAM10000_metadata.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(synthetic.METADATA_COLUMNS)
        for i, label in enumerate(labels):
            image_id = f"ISIC_{i:07d}"
            writer.writerow(
                [f"HAM_{i // 2:07d}", image_id, CLASS_NAMES[label], "histo", "50.0", "male", "back", "rosendahl"]
            )
            Image.fromarray(np.broadcast_to(_code(i, label), (SIZE, SIZE + 4, 3)).copy()).save(
                manual / "images" / f"{image_id}.jpg", quality=95
            )
    out = tmp_path_factory.mktemp("tfds")
    ham10000.prepare(manual, out, image_size=SIZE, progress=False)
    return out


@pytest.fixture(scope="module")
def sources(data_dir):
    return ham10000.open_splits(data_dir, image_size=SIZE, seed=0)


def _numbers(source):
    return {int(i.split("_")[1]) for i in source.image_ids}


def test_coding_round_trips(sources):
    images = next(pipeline.eval_iterator(sources["train"], batch_size=8, image_size=SIZE))
    label, number = _decode(images["image"])
    assert np.array_equal(label, images["label"])
    assert number.tolist() == [int(i.split("_")[1]) for i in sources["train"].image_ids[:8]]


def test_open_splits_partition_and_counts(sources):
    assert list(sources) == ["train", "validation", "test"]
    ids = [set(s.image_ids) for s in sources.values()]
    assert sum(len(i) for i in ids) == NUM and len(set.union(*ids)) == NUM
    lesions = [set(s.lesion_ids) for s in sources.values()]
    assert not lesions[0] & lesions[1] and not lesions[0] & lesions[2] and not lesions[1] & lesions[2]
    counts = records.class_counts(sources["train"])
    assert counts.dtype == np.int64 and counts.shape == (NUM_CLASSES,) and counts.sum() == len(sources["train"])
    assert np.all(counts > 0)
    assert abs(len(sources["train"]) / NUM - 0.8) < 0.05


def test_image_split_option(data_dir, sources):
    by_image = ham10000.open_splits(data_dir, image_size=SIZE, split_by="image", seed=0)
    assert sum(len(s) for s in by_image.values()) == NUM
    assert set(by_image["test"].image_ids) != set(sources["test"].image_ids)


def test_stored_size(sources):
    assert records.stored_size(sources["validation"]) == (SIZE, SIZE + 4)
    it = pipeline.train_iterator(sources["train"], batch_size=4, load_size=None, seed=0)
    assert next(it)["image"].shape == (4, SIZE, SIZE + 4, 3)


def test_train_batches_shapes_and_alignment(sources):
    it = pipeline.train_iterator(sources["train"], batch_size=8, load_size=(12, 10), seed=0)
    batch = next(it)
    assert set(batch) == {"image", "label"}
    assert batch["image"].shape == (8, 12, 10, 3) and batch["image"].dtype == np.uint8
    assert batch["label"].shape == (8,) and batch["label"].dtype == np.int32
    for _ in range(5):
        label, number = _decode(batch["image"])
        assert np.array_equal(label, batch["label"])  # every image carries its own label
        assert set(number) <= _numbers(sources["train"])
        batch = next(it)


def _epoch_numbers(it, steps):
    return [n for _ in range(steps) for n in _decode(next(it)["image"])[1]]


def test_epochs_are_reshuffled_permutations_dropping_the_remainder(sources):
    train = sources["train"]
    steps = pipeline.steps_per_epoch(train, 16)
    assert steps == len(train) // 16
    it = pipeline.train_iterator(train, batch_size=16, load_size=SIZE, seed=0)
    first, second = _epoch_numbers(it, steps), _epoch_numbers(it, steps)
    for epoch in (first, second):
        assert len(epoch) == len(set(epoch)) == steps * 16  # no repeats within an epoch
        assert set(epoch) <= _numbers(train)
    assert first != second


def test_same_seed_same_stream_other_seed_differs(sources):
    def stream(seed):
        it = pipeline.train_iterator(sources["train"], batch_size=8, load_size=SIZE, seed=seed)
        return np.stack([next(it)["image"] for _ in range(4)])

    np.testing.assert_array_equal(stream(3), stream(3))
    assert not np.array_equal(stream(3), stream(4))


def test_cached_stream_is_identical_and_resumes(sources):
    plain = pipeline.train_iterator(sources["train"], batch_size=8, load_size=(12, 10), seed=5)
    cached = pipeline.train_iterator(sources["train"], batch_size=8, load_size=(12, 10), seed=5, cache=True)
    for _ in range(20):  # past an epoch boundary
        want, got = next(plain), next(cached)
        np.testing.assert_array_equal(got["image"], want["image"])
        np.testing.assert_array_equal(got["label"], want["label"])
        assert got["label"].dtype == np.int32
    state = cached.get_state()
    want = next(cached)
    again = pipeline.train_iterator(sources["train"], batch_size=8, load_size=(12, 10), seed=5, cache=True)
    again.set_state(state)
    np.testing.assert_array_equal(next(again)["image"], want["image"])
    with pytest.raises(ValueError, match="num_workers=0"):
        pipeline.train_iterator(sources["train"], batch_size=8, load_size=8, seed=0, cache=True, num_workers=1)


@pytest.mark.parametrize("skip", [3, 17])  # mid-epoch, and past an epoch boundary
def test_exact_resume_from_saved_state(sources, skip):
    it = pipeline.train_iterator(sources["train"], batch_size=8, load_size=SIZE, seed=1)
    for _ in range(skip):
        next(it)
    state = json.loads(json.dumps(it.get_state()))  # what a checkpoint would store
    expected = [next(it) for _ in range(4)]
    fresh = pipeline.train_iterator(sources["train"], batch_size=8, load_size=SIZE, seed=1)
    fresh.set_state(state)
    for want in expected:
        got = next(fresh)
        np.testing.assert_array_equal(got["image"], want["image"])
        np.testing.assert_array_equal(got["label"], want["label"])


def test_eval_every_example_exactly_once_with_padding_mask(sources):
    test = sources["test"]
    batches = list(pipeline.eval_iterator(test, batch_size=4, image_size=8))
    assert len(batches) == pipeline.eval_batches(test, 4) == -(-len(test) // 4)
    image = np.concatenate([b["image"] for b in batches])
    mask = np.concatenate([b["mask"] for b in batches])
    label = np.concatenate([b["label"] for b in batches])
    assert image.shape[1:] == (8, 8, 3) and image.dtype == np.uint8
    assert label.dtype == np.int32 and mask.dtype == bool
    assert mask.sum() == len(test) and np.all(mask[: len(test)])
    assert np.all(image[~mask] == 0) and np.all(label[~mask] == 0)
    decoded_label, number = _decode(image[mask])
    assert sorted(number) == sorted(_numbers(test)) and len(set(number)) == len(test)
    assert np.array_equal(label[mask], test.labels) and np.array_equal(decoded_label, test.labels)


def test_not_built_error_says_how_to_build(tmp_path, data_dir):
    with pytest.raises(DataNotBuiltError) as err:
        ham10000.open_splits(tmp_path)
    text = str(err.value)
    assert "caco-jax prepare-data --manual_dir" in text and "caco-jax train --config demo" in text
    assert f"--config.data.data_dir={tmp_path}" in text  # a real config field
    with pytest.raises(DataNotBuiltError, match=f"Complete builds in {data_dir}: ham10000_{SIZE}px"):
        ham10000.open_splits(data_dir)  # default size was not built there


def test_steps_per_epoch_needs_a_full_batch(sources):
    with pytest.raises(ValueError, match="fewer examples than one batch"):
        pipeline.steps_per_epoch(sources["test"], 10_000)


@pytest.mark.slow
def test_worker_processes_give_the_same_stream_and_resume(sources):
    flags.FLAGS.mark_as_parsed()
    reference = pipeline.train_iterator(sources["train"], batch_size=8, load_size=SIZE, seed=2)
    want = [next(reference)["image"] for _ in range(6)]
    it = pipeline.train_iterator(sources["train"], batch_size=8, load_size=SIZE, seed=2, num_workers=2)
    try:
        got = [next(it)["image"] for _ in range(3)]
        state = it.get_state()
        np.testing.assert_array_equal(np.stack(got), np.stack(want[:3]))
    finally:
        it.close()
    resumed = pipeline.train_iterator(sources["train"], batch_size=8, load_size=SIZE, seed=2, num_workers=2)
    try:
        resumed.set_state(state)
        np.testing.assert_array_equal(np.stack([next(resumed)["image"] for _ in range(3)]), np.stack(want[3:]))
    finally:
        resumed.close()


# --------------------------------------------------------------------------- offline copies, leaks, sampling
def test_offline_copies_balance_classes_and_leak_only_across_an_image_split(data_dir):
    from caco_jax.data import leakage, offline

    copies = offline.OfflineCopies("balance", target=30)
    whole = ham10000.open_source(data_dir, image_size=SIZE).with_copies(copies)
    counts = np.bincount(whole.labels, minlength=NUM_CLASSES)
    originals = np.bincount(ham10000.open_source(data_dir, image_size=SIZE).labels, minlength=NUM_CLASSES)
    assert np.array_equal(counts, np.maximum(originals, 30))
    assert len(set(whole.image_ids)) == len(whole)  # copies are images of their own
    is_copy = whole.copies > 0
    assert all("#copy" in i for i in whole.image_ids[is_copy])
    assert np.array_equal(np.char.partition(whole.image_ids.astype(str), "#")[:, 0], whole.source_ids)

    by_image = ham10000.open_splits(data_dir, image_size=SIZE, split_by="image", copies=copies)
    by_lesion = ham10000.open_splits(data_dir, image_size=SIZE, split_by="lesion", copies=copies)
    leaky = leakage.summary(by_image["train"], by_image["test"])
    clean = leakage.summary(by_lesion["train"], by_lesion["test"])
    assert clean["same_lesion"] == 0 and clean["same_source"] == 0
    assert leaky["same_source"] > 0.3 and leaky["same_lesion"] >= leaky["same_source"]
    # an image-level split of the originals leaks lesions (two images each) but no photograph
    plain = ham10000.open_splits(data_dir, image_size=SIZE, split_by="image")
    flags = leakage.flags(plain["train"], plain["test"])
    assert flags["same_lesion"].mean() > 0.5 and not flags["same_source"].any()
    lines = leakage.table({"image": leakage.summary(plain["train"], plain["test"])}, CLASS_NAMES)
    assert lines[2].startswith("| image |") and " / 0.0 |" in lines[2]


def test_offline_copies_and_the_split_depend_on_ids_not_on_row_order(data_dir):
    """The same images in another row order get the same copies and land in the same splits."""
    from caco_jax.data import offline

    copies = offline.OfflineCopies("balance", target=30, seed=4)
    whole = ham10000.open_source(data_dir, image_size=SIZE)
    shuffled = whole.subset(np.random.default_rng(0).permutation(len(whole)), "shuffled")
    for split_by in ("image", "lesion"):
        a = records.split_source(whole, split_by=split_by, copies=copies)
        b = records.split_source(shuffled, split_by=split_by, copies=copies)
        for name in a:
            assert sorted(a[name].image_ids) == sorted(b[name].image_ids), (split_by, name)
    labels, ids = whole.labels, whole.image_ids
    order = np.random.default_rng(1).permutation(len(labels))
    plan_a = offline.plan(labels, copies, ids)
    plan_b = offline.plan(labels[order], copies, ids[order])
    made = {(str(ids[p]), int(k)) for p, k in zip(*plan_a, strict=True)}
    assert made == {(str(ids[order][p]), int(k)) for p, k in zip(*plan_b, strict=True)}


def test_offline_copies_decode_transformed_and_deterministic(data_dir):
    from caco_jax.data import offline

    whole = ham10000.open_source(data_dir, image_size=SIZE).with_copies(offline.OfflineCopies("multiple", multiple=2))
    n = len(whole) // 3
    first, again = whole.decode([0, n, 2 * n], (SIZE, SIZE + 4)), whole.decode([0, n, 2 * n], (SIZE, SIZE + 4))
    assert np.array_equal(first, again)
    assert whole.copies[[0, n, 2 * n]].tolist() == [0, 1, 2]
    assert whole.source_ids[n] == whole.source_ids[0] == whole.image_ids[0]
    assert not np.array_equal(first[0], first[1]) and not np.array_equal(first[1], first[2])


def test_offline_transform_is_a_flip_or_rotation_per_copy():
    from caco_jax.data import offline

    image = np.zeros((30, 40, 3), np.uint8)
    image[:5, :8] = 255  # a bright corner: where it goes tells the flip / rotation
    corners = set()
    for copy in range(1, 8):
        out = offline.transform(image, "ISIC_1", copy)
        assert out.shape == image.shape and out.dtype == np.uint8
        h, w = out.shape[:2]
        quadrant = np.asarray(
            [
                out[: h // 2, : w // 2].mean(),
                out[: h // 2, w // 2 :].mean(),
                out[h // 2 :, : w // 2].mean(),
                out[h // 2 :, w // 2 :].mean(),
            ]
        )
        corners.add(int(quadrant.argmax()))
    assert {1, 2, 3} <= corners  # the 7 copies move the corner to every other quadrant
    assert np.array_equal(offline.transform(image, "ISIC_1", 0), image)
    with pytest.raises(ValueError, match="target >= 1"):
        offline.OfflineCopies("balance", target=0)
    with pytest.raises(ValueError, match="unknown data.offline key"):
        offline.OfflineCopies.from_config({"mode": "none", "copies": 3})


def test_sampling_draws_classes_in_the_configured_proportions(sources):
    train = sources["train"]
    counts = np.bincount(train.labels, minlength=NUM_CLASSES)
    for sampling, share in (("balanced", np.where(counts > 0, 1.0, 0.0)), ("sqrt", np.sqrt(counts))):
        p = pipeline.sampling_probabilities(train.labels, sampling)
        per_class = np.bincount(train.labels, weights=p, minlength=NUM_CLASSES)
        assert np.allclose(per_class, share / share.sum())
    assert pipeline.sampling_probabilities(train.labels, "uniform") is None
    with pytest.raises(ValueError, match="data.sampling must be one of"):
        pipeline.sampling_probabilities(train.labels, "oversample")
    it = pipeline.train_iterator(train, batch_size=8, load_size=SIZE, seed=0, sampling="balanced")
    labels = np.concatenate([next(it)["label"] for _ in range(60)])
    drawn = np.bincount(labels, minlength=NUM_CLASSES)[counts > 0] / len(labels)
    assert np.all(np.abs(drawn - 1 / np.sum(counts > 0)) < 0.07)


def test_jpeg_recompression_is_seeded_per_image_and_resumes_exactly(sources):
    """The training stream re-compresses the images its seeded draws pick (caco_jax.data.recompress), the
    same with the split cached in memory, and a resumed stream re-compresses as the uninterrupted one."""
    from caco_jax.data.recompress import Recompression, round_trip

    jpeg = Recompression(0.5, (10, 40))
    plain = pipeline.train_iterator(sources["train"], batch_size=8, load_size=SIZE, seed=2)
    stream = pipeline.train_iterator(sources["train"], batch_size=8, load_size=SIZE, seed=2, recompression=jpeg)
    cached = pipeline.train_iterator(
        sources["train"], batch_size=8, load_size=SIZE, seed=2, recompression=jpeg, cache=True
    )
    changed = 0
    for index in range(6):
        want, got = next(plain), next(stream)
        np.testing.assert_array_equal(next(cached)["image"], got["image"])
        np.testing.assert_array_equal(got["label"], want["label"])
        for row in range(8):
            quality = jpeg.draw(2, index, row)
            expected = want["image"][row] if quality is None else round_trip(want["image"][row], quality)
            np.testing.assert_array_equal(got["image"][row], expected)
            changed += quality is not None
    assert 12 <= changed <= 36
    state = stream.get_state()
    following = [next(stream)["image"] for _ in range(3)]
    resumed = pipeline.train_iterator(sources["train"], batch_size=8, load_size=SIZE, seed=2, recompression=jpeg)
    resumed.set_state(state)
    for want_image in following:
        np.testing.assert_array_equal(next(resumed)["image"], want_image)


def test_the_field_of_view_crop_travels_with_the_splits(sources):
    cropped = sources["test"].with_fov_crop(True)
    assert cropped.fov_crop and not sources["test"].fov_crop and len(cropped) == len(sources["test"])
    assert cropped.subset(np.arange(3), "few").fov_crop
    # these images have no dark border: decoded alike
    np.testing.assert_array_equal(cropped.decode(range(4), (8, 8)), sources["test"].decode(range(4), (8, 8)))
