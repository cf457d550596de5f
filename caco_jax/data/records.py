"""Random access to the examples of a TFDS build: :class:`Source` (one split's records, labels and
ids, offline copies included), opening a build and splitting it at load time, decoding images."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.proto import tf_example_pb2

from caco_jax.data import images, offline, splits
from caco_jax.data.classes import META_FIELDS
from caco_jax.data.errors import DataNotBuiltError
from caco_jax.errors import ConfigError

Size = int | tuple[int, int]


_TEXT_FEATURES = ("image_id", "lesion_id", "dx_type", "sex", "localization", "source")


FIELDS = ("image", "label", "age", *_TEXT_FEATURES)


def parse_record(raw: bytes, fields: Sequence[str] = FIELDS) -> dict:
    """A serialized TFDS example -> {'image': JPEG bytes, 'label': int, 'age': float, text: str}.

    Reads the tf.train.Example directly (upb protobuf, a few us a field); TFDS's
    own NumPy decoding costs ~250 us a record in Python, as much as decoding the
    JPEG. `open_source` checks the two agree once. `fields` picks what to read.
    """
    feature = tf_example_pb2.Example.FromString(raw).features.feature
    out: dict[str, Any] = {}
    for name in fields:
        if name == "label":
            out[name] = int(feature[name].int64_list.value[0])
        elif name == "age":
            out[name] = float(feature[name].float_list.value[0])
        else:
            values = feature[name].bytes_list.value
            value = values[0] if values else b""
            out[name] = value if name == "image" else value.decode()
    return out


class Source:
    """Random access to the records of one split (a grain RandomAccessDataSource).

    A record is {'image': JPEG bytes, 'label': int, 'image_id': str, 'lesion_id':
    str, 'dx_type': str, 'age': float (NaN if unknown), 'sex': str,
    'localization': str, 'source': str (acquisition source; '' if unknown)}.
    `labels`, `image_ids`, `lesion_ids` and `meta` hold this split's columns, in
    order, without reading records.
    """

    def __init__(
        self,
        base,
        indices: np.ndarray,
        *,
        labels: np.ndarray,
        image_ids: np.ndarray,
        lesion_ids: np.ndarray,
        name: str,
        class_names: Sequence[str],
        image_shapes: dict[str, int] | None = None,
        copies: np.ndarray | None = None,
        source_ids: np.ndarray | None = None,
        copy_seed: int = 0,
        meta: dict[str, np.ndarray] | None = None,
        fov_crop: bool = False,
    ):
        self._base = base  # TFDS array_record source returning raw serialized examples
        self.class_names = tuple(class_names)  # the dataset's label vocabulary, in label order
        self.indices = np.asarray(indices, np.int64)
        self.labels = np.asarray(labels, np.int64)
        self.image_ids = np.asarray(image_ids)
        self.lesion_ids = np.asarray(lesion_ids)
        self.name = name
        self.image_shapes = dict(image_shapes or {})  # stored "HxW" -> count, whole build
        # Offline copies (caco_jax.data.offline): 0 = the stored image, k > 0 = its k-th copy,
        # made from the photograph source_ids names.
        self.copies = np.zeros(len(self.indices), np.int64) if copies is None else np.asarray(copies, np.int64)
        self.source_ids = self.image_ids if source_ids is None else np.asarray(source_ids)
        self.copy_seed = copy_seed
        # What is known of each image beyond its label (META_FIELDS: dx_type, age, sex, localization,
        # acquisition source), in row order; '' / NaN where unknown.
        self.meta = {k: np.asarray(v) for k, v in (meta or {}).items()}
        self.fov_crop = fov_crop  # crop every image to its field of view when decoding (data.fov_crop)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> dict:
        return parse_record(self._base[int(self.indices[index])])

    def __getitems__(self, indices: Sequence[int]) -> list[dict]:
        return self.read(indices)

    def read(self, indices: Sequence[int], fields: Sequence[str] = FIELDS) -> list[dict]:
        """Records at `indices`, with only `fields` parsed."""
        raw = self._base.__getitems__([int(self.indices[i]) for i in indices])
        return [parse_record(r, fields) for r in raw]

    def decode(self, positions: Sequence[int], size: tuple[int, int]) -> np.ndarray:
        """uint8 [len(positions), h, w, 3]: the images at `positions`, decoded (cropped to their field of
        view with `fov_crop`), resized, and transformed where they are offline copies."""
        records = self.read(positions, ("image",))
        out = np.empty((len(records), *size, 3), np.uint8)
        for i, (position, record) in enumerate(zip(positions, records, strict=True)):
            image = images.decode(record["image"], size, fov_crop=self.fov_crop)
            copy = int(self.copies[position])
            out[i] = offline.transform(image, str(self.source_ids[position]), copy, self.copy_seed) if copy else image
        return out

    def subset(self, positions: np.ndarray, name: str) -> Source:
        """The examples at `positions` (of this source), as a new Source."""
        positions = np.asarray(positions, np.int64)
        return Source(
            self._base,
            self.indices[positions],
            labels=self.labels[positions],
            image_ids=self.image_ids[positions],
            lesion_ids=self.lesion_ids[positions],
            name=name,
            class_names=self.class_names,
            image_shapes=self.image_shapes,
            copies=self.copies[positions],
            source_ids=self.source_ids[positions],
            copy_seed=self.copy_seed,
            meta={k: v[positions] for k, v in self.meta.items()},
            fov_crop=self.fov_crop,
        )

    def with_copies(self, copies: offline.OfflineCopies) -> Source:
        """This source plus its offline copies (`offline.plan`); the copies keep their source's
        label and lesion_id and get image_ids `<image_id>#copy<k>`."""
        positions, numbers = offline.plan(self.labels, copies, self.image_ids)
        ids = np.asarray(
            [offline.copy_id(str(self.image_ids[p]), int(k)) for p, k in zip(positions, numbers, strict=True)]
        )
        return Source(
            self._base,
            self.indices[positions],
            labels=self.labels[positions],
            image_ids=ids,
            lesion_ids=self.lesion_ids[positions],
            name=f"{self.name}+{copies.mode}",
            class_names=self.class_names,
            image_shapes=self.image_shapes,
            copies=numbers,
            source_ids=self.source_ids[positions],
            copy_seed=copies.seed,
            meta={k: v[positions] for k, v in self.meta.items()},
            fov_crop=self.fov_crop,
        )

    def with_fov_crop(self, fov_crop: bool) -> Source:
        """This source, its images cropped to their field of view when decoded (or not)."""
        out = self.subset(np.arange(len(self)), self.name)
        out.fov_crop = bool(fov_crop)
        return out

    def __repr__(self) -> str:
        return f"Source({self.name!r}, {len(self)} examples)"


def open_source(builder, *, not_built: Exception | None = None) -> Source:
    """Every example of a prepared TFDS build (its one split) as one Source.

    not_built: the error to raise when the build is not complete (a dataset's own message,
    saying how to build it); a generic one otherwise.
    """
    if not builder.is_prepared():
        raise not_built or DataNotBuiltError(f"no complete build at {builder.data_path}; build it first")
    split = next(iter(builder.info.splits))
    class_names = tuple(builder.info.features["label"].names)
    base = builder.as_data_source(split, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
    full = Source(
        base,
        np.arange(len(base)),
        labels=np.zeros(len(base)),
        image_ids=np.zeros(len(base)),
        lesion_ids=np.zeros(len(base)),
        name=f"{builder.builder_config.name}/{split}",
        class_names=class_names,
    )
    columns = ("label", "image_id", "lesion_id", *META_FIELDS)
    records = [
        r for start in range(0, len(full), 1024) for r in full.read(range(start, min(start + 1024, len(full))), columns)
    ]
    reference = builder.as_data_source(split, decoders={"image": tfds.decode.SkipDecoding()})[0]
    first = full[0]
    if (
        first["image"] != reference["image"]
        or first["label"] != reference["label"]
        or first["image_id"] != reference["image_id"].decode()
    ):
        raise RuntimeError("parse_record disagrees with TFDS's decoding: has the feature layout changed?")
    return Source(
        base,
        np.arange(len(base)),
        labels=np.asarray([r["label"] for r in records]),
        image_ids=np.asarray([r["image_id"] for r in records]),
        lesion_ids=np.asarray([r["lesion_id"] for r in records]),
        name=full.name,
        class_names=class_names,
        image_shapes=dict(builder.info.metadata.get("image_shapes", {})),
        meta={
            k: np.asarray([r[k] for r in records], np.float32 if k == "age" else str) if records else np.zeros(0)
            for k in META_FIELDS
        },
    )


def split_source(
    source: Source,
    *,
    split_by: str = "lesion",
    seed: int = 0,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    copies: offline.OfflineCopies | None = None,
    holdout_source: str = "",
) -> dict[str, Source]:
    """{'train', 'validation', 'test'} Sources of a whole build, split at load time.

    split_by: 'lesion' (default; no lesion in two splits) or 'image' (each image on its own,
    which leaks lesions photographed more than once); both stratified by class and
    determined by `seed` (see caco_jax.data.splits). copies: offline copies added
    before the split (`caco_jax.data.offline`; with split_by='image' they leak too).
    holdout_source: an acquisition source whose images are all the test split (leave one source
    out); the other sources are split into train and validation by the same rule, in the ratio of
    the first two fractions, leaving out any lesion that also has an image in the held-out source.
    """
    if copies is not None and copies.enabled:
        if holdout_source:
            raise ConfigError("offline copies and a held-out source cannot be combined")
        source = source.with_copies(copies)
    if holdout_source:
        return _leave_source_out(source, holdout_source, split_by=split_by, seed=seed, fractions=fractions)
    parts = splits.split(
        source.labels, source.lesion_ids, source.image_ids, by=split_by, fractions=fractions, seed=seed
    )
    return {name: source.subset(idx, f"{source.name}:{name}") for name, idx in parts.items()}


def _leave_source_out(
    source: Source, holdout: str, *, split_by: str, seed: int, fractions: Sequence[float]
) -> dict[str, Source]:
    sources = source.meta.get("source", np.full(len(source), "", dtype=str))
    held = sources == holdout
    if not held.any():
        known = sorted({str(s) for s in sources if s})
        raise ConfigError(
            f"--config.data.holdout_source={holdout}: no image of {source.name} has that acquisition source; "
            + (f"its sources: {', '.join(known)}" if known else "its build records none (rebuild it: prepare-data)")
        )
    held_lesions = {str(lesion) for lesion in source.lesion_ids[held] if lesion}
    rest = np.flatnonzero(~held & ~np.isin(source.lesion_ids.astype(str), list(held_lesions)))
    train, val = float(fractions[0]), float(fractions[1])
    parts = splits.split(
        source.labels[rest],
        source.lesion_ids[rest],
        source.image_ids[rest],
        by=split_by,
        fractions=(train / (train + val), val / (train + val), 0.0),
        seed=seed,
    )
    out = {name: source.subset(rest[parts[name]], f"{source.name}:{name}") for name in ("train", "validation")}
    out["test"] = source.subset(np.flatnonzero(held), f"{source.name}:test[{holdout}]")
    return out


def class_counts(source: Source) -> np.ndarray:
    """Examples per class, int64 [C] in the dataset's label order."""
    return np.bincount(np.asarray(source.labels, np.int64), minlength=len(source.class_names)).astype(np.int64)


def stored_size(source: Source) -> tuple[int, int]:
    """(h, w) most images of the build are stored at: the cheapest `load_size`.

    Loading at the stored size skips the CPU resize (decode only, several times
    faster: tools/bench_input.py); the random resized crop on the accelerator
    then does the only resampling.
    """
    if not source.image_shapes:
        raise ValueError(f"{source!r} does not record its stored image sizes")
    shape = max(source.image_shapes, key=lambda s: source.image_shapes[s])
    height, width = shape.split("x")
    return int(height), int(width)


def _hw(size: Size) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        return int(size), int(size)
    height, width = size
    return int(height), int(width)


def decode_all(source: Source, size: Size, *, num_threads: int = 2) -> np.ndarray:
    """Every image of `source` decoded to uint8 [len, h, w, 3] (threads; PIL releases the GIL)."""
    size = _hw(size)
    out = np.empty((len(source), *size, 3), np.uint8)

    def work(start: int) -> None:
        stop = min(start + 256, len(source))
        out[start:stop] = source.decode(range(start, stop), size)

    with concurrent.futures.ThreadPoolExecutor(max(1, num_threads)) as pool:
        list(pool.map(work, range(0, len(source), 256)))
    return out
