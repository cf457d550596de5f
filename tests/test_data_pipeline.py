"""grain pipelines: splits at load time, training stream, evaluation pass, exact resume."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from absl import flags
from PIL import Image

from caco_jax.classes import CLASS_NAMES, NUM_CLASSES
from caco_jax.data import ham10000, pipeline, synthetic
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
            writer.writerow([f"HAM_{i // 2:07d}", image_id, CLASS_NAMES[label], "histo", "50.0", "male", "back"])
            Image.fromarray(np.broadcast_to(_code(i, label), (SIZE, SIZE + 4, 3)).copy()).save(
                manual / "images" / f"{image_id}.jpg", quality=95)
    out = tmp_path_factory.mktemp("tfds")
    ham10000.prepare(manual, out, image_size=SIZE, progress=False)
    return out


@pytest.fixture(scope="module")
def sources(data_dir):
    return pipeline.open_splits(data_dir, image_size=SIZE, seed=0)


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
    counts = pipeline.class_counts(sources["train"])
    assert counts.dtype == np.int64 and counts.shape == (NUM_CLASSES,) and counts.sum() == len(sources["train"])
    assert np.all(counts > 0)
    assert abs(len(sources["train"]) / NUM - 0.8) < 0.05


def test_image_split_option(data_dir, sources):
    by_image = pipeline.open_splits(data_dir, image_size=SIZE, split_by="image", seed=0)
    assert sum(len(s) for s in by_image.values()) == NUM
    assert set(by_image["test"].image_ids) != set(sources["test"].image_ids)


def test_stored_size(sources):
    assert pipeline.stored_size(sources["validation"]) == (SIZE, SIZE + 4)
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
        pipeline.open_splits(tmp_path)
    text = str(err.value)
    assert "scripts/prepare_data.py --manual_dir" in text and "configs/demo.py" in text
    with pytest.raises(DataNotBuiltError, match=f"Complete builds in {data_dir}: ham10000_{SIZE}px"):
        pipeline.open_splits(data_dir)  # default size was not built there


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
