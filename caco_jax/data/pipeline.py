"""grain input pipelines over a TFDS build (any dataset of ``caco_jax.data.registry``): splits,
training and evaluation.

The CPU side only reads, decodes and resizes to a fixed uint8 size, and batches;
augmentation and normalisation run on the accelerator inside the jitted step
(`caco_jax.data.augment`), where they are far cheaper than on CPU workers
(measured in scripts/bench_input.py).

    sources = split_source(open_source(builder))    # {'train', 'validation', 'test'}
    it = train_iterator(sources["train"], batch_size=128, load_size=256, seed=0)
    batch = next(it)                                # image uint8 [128,256,256,3], label int32
    state = it.get_state(); ...; it.set_state(state)  # exact resume
    for batch in eval_iterator(sources["test"], batch_size=128, image_size=224): ...
"""
from __future__ import annotations

import concurrent.futures
from collections.abc import Sequence

import grain
import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.proto import tf_example_pb2

from caco_jax.data import images, offline, splits
from caco_jax.data.errors import DataNotBuiltError

Size = int | tuple[int, int]


_TEXT_FEATURES = ("image_id", "lesion_id", "dx_type", "sex", "localization")


FIELDS = ("image", "label", "age", *_TEXT_FEATURES)


def parse_record(raw: bytes, fields: Sequence[str] = FIELDS) -> dict:
    """A serialized TFDS example -> {'image': JPEG bytes, 'label': int, 'age': float, text: str}.

    Reads the tf.train.Example directly (upb protobuf, a few us a field); TFDS's
    own NumPy decoding costs ~250 us a record in Python, as much as decoding the
    JPEG. `open_source` checks the two agree once. `fields` picks what to read.
    """
    feature = tf_example_pb2.Example.FromString(raw).features.feature
    out = {}
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
    'localization': str}. `labels`, `image_ids` and `lesion_ids` hold this
    split's columns, in order, without reading records.
    """

    def __init__(self, base, indices: np.ndarray, *, labels: np.ndarray, image_ids: np.ndarray,
                 lesion_ids: np.ndarray, name: str, class_names: Sequence[str],
                 image_shapes: dict[str, int] | None = None, copies: np.ndarray | None = None,
                 source_ids: np.ndarray | None = None, copy_seed: int = 0):
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
        """uint8 [len(positions), h, w, 3]: the images at `positions`, decoded, resized, and
        transformed where they are offline copies."""
        records = self.read(positions, ("image",))
        out = np.empty((len(records), *size, 3), np.uint8)
        for i, (position, record) in enumerate(zip(positions, records)):
            image = images.decode(record["image"], size)
            copy = int(self.copies[position])
            out[i] = offline.transform(image, str(self.source_ids[position]), copy, self.copy_seed) if copy else image
        return out

    def subset(self, positions: np.ndarray, name: str) -> "Source":
        """The examples at `positions` (of this source), as a new Source."""
        positions = np.asarray(positions, np.int64)
        return Source(self._base, self.indices[positions], labels=self.labels[positions],
                      image_ids=self.image_ids[positions], lesion_ids=self.lesion_ids[positions],
                      name=name, class_names=self.class_names, image_shapes=self.image_shapes,
                      copies=self.copies[positions], source_ids=self.source_ids[positions],
                      copy_seed=self.copy_seed)

    def with_copies(self, copies: offline.OfflineCopies) -> "Source":
        """This source plus its offline copies (`offline.plan`); the copies keep their source's
        label and lesion_id and get image_ids `<image_id>#copy<k>`."""
        positions, numbers = offline.plan(self.labels, copies)
        ids = np.asarray([offline.copy_id(str(self.image_ids[p]), int(k)) for p, k in zip(positions, numbers)])
        return Source(self._base, self.indices[positions], labels=self.labels[positions], image_ids=ids,
                      lesion_ids=self.lesion_ids[positions], name=f"{self.name}+{copies.mode}",
                      class_names=self.class_names, image_shapes=self.image_shapes, copies=numbers,
                      source_ids=self.source_ids[positions], copy_seed=copies.seed)

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
    full = Source(base, np.arange(len(base)), labels=np.zeros(len(base)), image_ids=np.zeros(len(base)),
                  lesion_ids=np.zeros(len(base)), name=f"{builder.builder_config.name}/{split}",
                  class_names=class_names)
    columns = ("label", "image_id", "lesion_id")
    records = [r for start in range(0, len(full), 1024)
               for r in full.read(range(start, min(start + 1024, len(full))), columns)]
    reference = builder.as_data_source(split, decoders={"image": tfds.decode.SkipDecoding()})[0]
    first = full[0]
    if (first["image"] != reference["image"] or first["label"] != reference["label"]
            or first["image_id"] != reference["image_id"].decode()):
        raise RuntimeError("parse_record disagrees with TFDS's decoding: has the feature layout changed?")
    return Source(base, np.arange(len(base)), labels=np.asarray([r["label"] for r in records]),
                  image_ids=np.asarray([r["image_id"] for r in records]),
                  lesion_ids=np.asarray([r["lesion_id"] for r in records]), name=full.name,
                  class_names=class_names, image_shapes=dict(builder.info.metadata.get("image_shapes", {})))


def split_source(
    source: Source,
    *,
    split_by: str = "lesion",
    seed: int = 0,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    copies: offline.OfflineCopies | None = None,
) -> dict[str, Source]:
    """{'train', 'validation', 'test'} Sources of a whole build, split at load time.

    split_by: 'lesion' (default; no lesion in two splits) or 'image' (each image on its own,
    which leaks lesions photographed more than once); both stratified by class and
    determined by `seed` (see caco_jax.data.splits). copies: offline copies added
    before the split (`caco_jax.data.offline`; with split_by='image' they leak too).
    """
    if copies is not None and copies.enabled:
        source = source.with_copies(copies)
    parts = splits.split(source.labels, source.lesion_ids, source.image_ids,
                         by=split_by, fractions=fractions, seed=seed)
    return {name: source.subset(idx, f"{source.name}:{name}") for name, idx in parts.items()}


def class_counts(source: Source) -> np.ndarray:
    """Examples per class, int64 [C] in the dataset's label order."""
    return np.bincount(np.asarray(source.labels, np.int64), minlength=len(source.class_names)).astype(np.int64)


def stored_size(source: Source) -> tuple[int, int]:
    """(h, w) most images of the build are stored at: the cheapest `load_size`.

    Loading at the stored size skips the CPU resize (decode only, several times
    faster: scripts/bench_input.py); the random resized crop on the accelerator
    then does the only resampling.
    """
    if not source.image_shapes:
        raise ValueError(f"{source!r} does not record its stored image sizes")
    shape = max(source.image_shapes, key=source.image_shapes.get)
    height, width = shape.split("x")
    return int(height), int(width)


def steps_per_epoch(source: Source, batch_size: int) -> int:
    """Full training batches per epoch (the remainder is dropped)."""
    steps = len(source) // batch_size
    if steps < 1:
        raise ValueError(f"{source!r} has fewer examples than one batch of {batch_size}")
    return steps


def _hw(size: Size) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        return int(size), int(size)
    height, width = size
    return int(height), int(width)


def _load(source: Source, positions: Sequence[int], size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    positions = list(positions)
    image = source.decode(positions, size) if positions else None
    return image, source.labels[positions].astype(np.int32)


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


SAMPLING = ("uniform", "balanced", "sqrt")


def sampling_probabilities(labels: np.ndarray, sampling: str) -> np.ndarray | None:
    """Per-image draw probabilities of an epoch: None for 'uniform' (a permutation); 'balanced'
    gives every class the same total, 'sqrt' a total proportional to sqrt(class count)."""
    if sampling not in SAMPLING:
        raise ValueError(f"data.sampling must be one of {SAMPLING}, got {sampling!r}")
    if sampling == "uniform":
        return None
    labels = np.asarray(labels, np.int64)
    counts = np.bincount(labels).astype(np.float64)
    share = np.where(counts > 0, 1.0 if sampling == "balanced" else np.sqrt(counts), 0.0)
    weights = (share / np.maximum(counts, 1))[labels]
    return weights / weights.sum()


class _TrainBatch:
    """Batch `index` of an endless epoch-by-epoch stream: epoch = index // steps.

    Every epoch is a fresh permutation of the split drawn from (seed, epoch); its
    last len % batch_size examples are dropped, so batches never span epochs.
    With `decoded` (from `decode_all`) batches are gathered from memory instead.
    """

    def __init__(self, source: Source, batch_size: int, size: tuple[int, int], seed: int,
                 decoded: np.ndarray | None = None, process_index: int = 0, process_count: int = 1,
                 sampling: str = "uniform"):
        self.source, self.batch_size, self.size, self.seed = source, batch_size, size, seed
        self.steps = steps_per_epoch(source, batch_size)
        self.decoded = decoded
        self.rows = process_rows(batch_size, process_index, process_count)
        self.probabilities = sampling_probabilities(source.labels, sampling)
        self._permutations: dict[int, np.ndarray] = {}

    def permutation(self, epoch: int) -> np.ndarray:
        perm = self._permutations.get(epoch)
        if perm is None:
            rng = np.random.default_rng([self.seed, epoch])
            n = len(self.source)
            perm = rng.permutation(n) if self.probabilities is None else rng.choice(n, n, p=self.probabilities)
            self._permutations = {epoch: perm, **{k: v for k, v in self._permutations.items() if k > epoch - 2}}
        return perm

    def __call__(self, index: int, _) -> dict[str, np.ndarray]:
        epoch, step = divmod(index, self.steps)
        positions = self.permutation(epoch)[step * self.batch_size:(step + 1) * self.batch_size][self.rows]
        if self.decoded is not None:
            return {"image": self.decoded[positions], "label": self.source.labels[positions].astype(np.int32)}
        image, label = _load(self.source, positions, self.size)
        return {"image": image, "label": label}


def train_dataset(
    source: Source,
    *,
    batch_size: int,
    load_size: Size | None,
    seed: int,
    num_workers: int = 0,
    num_threads: int = 2,
    prefetch: int = 4,
    cache: bool = False,
    process_index: int = 0,
    process_count: int = 1,
    sampling: str = "uniform",
) -> grain.IterDataset:
    """The endless training stream as a grain IterDataset (see `train_iterator`)."""
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    if cache and num_workers > 0:
        raise ValueError("cache=True serves batches from memory in this process: use num_workers=0")
    size = stored_size(source) if load_size is None else _hw(load_size)
    decoded = decode_all(source, size, num_threads=num_threads) if cache else None
    batches = _TrainBatch(source, batch_size, size, seed, decoded, process_index, process_count, sampling)
    ds = grain.MapDataset.range(batches.steps).repeat().map_with_index(batches)
    ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=1 if cache else num_threads, prefetch_buffer_size=prefetch))
    if num_workers > 0:
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers,
                                                         per_worker_buffer_size=prefetch))
    return ds


def train_iterator(
    source: Source,
    *,
    batch_size: int,
    load_size: Size | None,
    seed: int,
    num_workers: int = 0,
    num_threads: int = 2,
    prefetch: int = 4,
    cache: bool = False,
    process_index: int = 0,
    process_count: int = 1,
    sampling: str = "uniform",
) -> grain.DatasetIterator:
    """Endless training batches {'image': uint8 [B, h, w, 3], 'label': int32 [B]}.

    load_size: h = w = load_size, or (h, w); images are decoded and resized to it
    (no augmentation here: `augment.augment_batch` runs in the jitted step).
    None: `stored_size(source)`, the cheapest choice (decode only, no CPU resize:
    ~150-300 us of CPU an image, against ~700-1000 us when resizing to 256x256).
    Epoch after epoch, each a permutation of the split seeded by (seed, epoch) (or, with
    `sampling` 'balanced' / 'sqrt', as many draws with replacement weighted by class),
    len(source) // batch_size batches per epoch (`steps_per_epoch`).
    num_workers: grain worker processes (0: none); num_threads: decoding threads
    per process; prefetch: batches buffered per process.
    cache: decode the whole split once into memory (len * h * w * 3 bytes: 0.7 GB
    for HAM10000's train split at 150x200) and serve batches by gathering from it,
    tens of thousands of images/s from one process (needs num_workers=0); the
    stream is identical to the uncached one.
    `get_state()` / `set_state()` resume exactly (with the same num_workers).
    process_index / process_count (multi-host): every process walks the same global
    stream of batch_size-example batches but reads and decodes only its own
    batch_size / process_count rows of each (`process_rows`).
    Scripts that use num_workers > 0 need a `__main__` guard and parsed absl flags.
    """
    return iter(train_dataset(source, batch_size=batch_size, load_size=load_size, seed=seed,
                              num_workers=num_workers, num_threads=num_threads, prefetch=prefetch,
                              cache=cache, process_index=process_index, process_count=process_count,
                              sampling=sampling))


def process_rows(batch_size: int, process_index: int = 0, process_count: int = 1) -> slice:
    """The rows of every global batch that process ``process_index`` of ``process_count`` reads."""
    if batch_size % process_count:
        raise ValueError(f"batch size {batch_size} does not split over {process_count} processes")
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} outside [0, {process_count})")
    per = batch_size // process_count
    return slice(process_index * per, (process_index + 1) * per)


def _eval_rows(index: int, batch_size: int, total: int, rows: slice) -> tuple[range, int]:
    """(positions of the split this process reads for eval batch ``index``, local batch size)."""
    lo = index * batch_size
    start, stop = lo + rows.start, lo + rows.stop
    return range(min(start, total), min(stop, total)), rows.stop - rows.start


class _EvalBatch:
    """This process's rows of batch `index` of one pass over the split, zero-padded, with a mask."""

    def __init__(self, source: Source, batch_size: int, size: tuple[int, int], rows: slice):
        self.source, self.batch_size, self.size, self.rows = source, batch_size, size, rows

    def __call__(self, index: int) -> dict[str, np.ndarray]:
        positions, local = _eval_rows(index, self.batch_size, len(self.source), self.rows)
        n = len(positions)
        image = np.zeros((local, *self.size, 3), np.uint8)
        label = np.zeros((local,), np.int32)
        mask = np.zeros((local,), bool)
        if n:
            image[:n], label[:n] = _load(self.source, list(positions), self.size)
            mask[:n] = True
        return {"image": image, "label": label, "mask": mask}


class EvalSet:
    """A split decoded once at ``image_size`` x ``image_size`` and kept in memory (uint8), so
    evaluating it every epoch costs no decoding: ``batches()`` gives exactly what
    `eval_iterator` gives."""

    def __init__(self, source: Source, image_size: Size, *, num_threads: int = 2):
        if len(source) == 0:
            raise ValueError(f"{source!r} is empty")
        self.source = source
        self.images = decode_all(source, _hw(image_size), num_threads=num_threads)
        self.labels = np.asarray(source.labels, np.int32)

    def __len__(self) -> int:
        return len(self.labels)

    def batches(self, batch_size: int, *, process_index: int = 0, process_count: int = 1):
        rows = process_rows(batch_size, process_index, process_count)
        for index in range(eval_batches(self.source, batch_size)):
            positions, local = _eval_rows(index, batch_size, len(self), rows)
            n = len(positions)
            image = np.zeros((local, *self.images.shape[1:]), np.uint8)
            label = np.zeros((local,), np.int32)
            mask = np.zeros((local,), bool)
            image[:n], label[:n], mask[:n] = self.images[positions.start:positions.stop], \
                self.labels[positions.start:positions.stop], True
            yield {"image": image, "label": label, "mask": mask}


def eval_batches(source: Source, batch_size: int) -> int:
    """Number of batches `eval_iterator` yields (the last one padded)."""
    return -(-len(source) // batch_size)


def eval_iterator(
    source: Source,
    *,
    batch_size: int,
    image_size: Size,
    num_workers: int = 0,
    num_threads: int = 2,
    prefetch: int = 4,
    process_index: int = 0,
    process_count: int = 1,
) -> grain.DatasetIterator:
    """One pass, in order: {'image': uint8 [B, S, S, 3], 'label': int32 [B], 'mask': bool [B]}.

    Every example exactly once; the whole stored image is resized to S x S (the
    same squashed framing a full-image training crop has); the last batch is
    zero-padded and `mask` marks the real examples. Normalise with `augment.normalize`.
    Multi-host: each process gets its B / process_count rows of every batch.
    """
    if len(source) == 0:
        raise ValueError(f"{source!r} is empty")
    rows = process_rows(batch_size, process_index, process_count)
    ds = grain.MapDataset.range(eval_batches(source, batch_size)).map(
        _EvalBatch(source, batch_size, _hw(image_size), rows))
    ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch))
    if num_workers > 0:
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers,
                                                         per_worker_buffer_size=prefetch))
    return iter(ds)
