"""grain input pipelines over the Sources of a TFDS build (``caco_jax.data.records``): the endless
training stream and one-pass evaluation.

The CPU side only reads, decodes and resizes to a fixed uint8 size, and batches;
augmentation and normalisation run on the accelerator inside the jitted step
(`caco_jax.data.augment`), where they are far cheaper than on CPU workers
(measured in tools/bench_input.py).

    sources = records.split_source(records.open_source(builder))   # {'train', 'validation', 'test'}
    it = train_iterator(sources["train"], batch_size=128, load_size=256, seed=0)
    batch = next(it)                                # image uint8 [128,256,256,3], label int32
    state = it.get_state(); ...; it.set_state(state)  # exact resume
    for batch in eval_iterator(sources["test"], batch_size=128, image_size=224): ...
"""

from __future__ import annotations

from collections.abc import Sequence

import grain
import numpy as np

from caco_jax.data.recompress import Recompression
from caco_jax.data.records import Size, Source, _hw, decode_all, stored_size


def steps_per_epoch(source: Source, batch_size: int) -> int:
    """Full training batches per epoch (the remainder is dropped)."""
    steps = len(source) // batch_size
    if steps < 1:
        raise ValueError(f"{source!r} has fewer examples than one batch of {batch_size}")
    return steps


def _load(
    source: Source, positions: Sequence[int] | np.ndarray, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    positions = list(positions)
    image = source.decode(positions, size) if positions else np.zeros((0, *size, 3), np.uint8)
    return image, source.labels[positions].astype(np.int32)


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
    `recompression`: JPEG re-compression of the batch's images (`caco_jax.data.recompress`).
    """

    def __init__(
        self,
        source: Source,
        batch_size: int,
        size: tuple[int, int],
        seed: int,
        decoded: np.ndarray | None = None,
        process_index: int = 0,
        process_count: int = 1,
        sampling: str = "uniform",
        recompression: Recompression | None = None,
    ):
        self.source, self.batch_size, self.size, self.seed = source, batch_size, size, seed
        self.recompression = recompression
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
        positions = self.permutation(epoch)[step * self.batch_size : (step + 1) * self.batch_size][self.rows]
        if self.decoded is not None:
            image, label = self.decoded[positions], self.source.labels[positions].astype(np.int32)
        else:
            image, label = _load(self.source, positions, self.size)
        if self.recompression is not None:
            image = self.recompression.apply(
                image, seed=self.seed, batch=index, rows=range(self.rows.start, self.rows.stop)
            )
        return {"image": image, "label": label}


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
    recompression: Recompression | None = None,
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
    recompression: JPEG re-compression of the training images (`AugmentConfig.recompression`), seeded
    by (seed, batch index, row), so that resuming stays exact.
    """
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    if cache and num_workers > 0:
        raise ValueError("cache=True serves batches from memory in this process: use num_workers=0")
    size = stored_size(source) if load_size is None else _hw(load_size)
    decoded = decode_all(source, size, num_threads=num_threads) if cache else None
    batches = _TrainBatch(
        source, batch_size, size, seed, decoded, process_index, process_count, sampling, recompression
    )
    ds = grain.MapDataset.range(batches.steps).repeat().map_with_index(batches)
    ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=1 if cache else num_threads, prefetch_buffer_size=prefetch))
    if num_workers > 0:
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers, per_worker_buffer_size=prefetch))
    return iter(ds)


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
            image[:n], label[:n], mask[:n] = (
                self.images[positions.start : positions.stop],
                self.labels[positions.start : positions.stop],
                True,
            )
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
        _EvalBatch(source, batch_size, _hw(image_size), rows)
    )
    ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch))
    if num_workers > 0:
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers, per_worker_buffer_size=prefetch))
    return iter(ds)
