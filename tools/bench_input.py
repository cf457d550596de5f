"""Input-pipeline throughput on this machine: CPU decode per worker count, and augmentation.

Builds (or reuses) the HAM10000 TFDS build of --manual_dir (default: the shared
real copy), then prints markdown tables:

1. single-thread decode rate (PIL, no grain): the per-core ceiling;
2. the training pipeline (read + decode + resize to a fixed uint8 size + batch)
   in images/s for each worker-process count and decoding threads per process,
   and served from the in-memory decoded cache (cache=True);
3. `augment_batch` (crop + resize to --out_size, flips, rot90, jitter,
   normalise) jitted on the default JAX backend, images/s, and its XLA flop count.

    python tools/bench_input.py
    python tools/bench_input.py --workers 0,1,2,4 --threads 1,2 --batches 40
"""

from __future__ import annotations

import os
import platform
import time

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string(
    "manual_dir",
    os.environ.get("CACO_HAM10000_DIR", "../shared/data/ham10000_real"),
    "Downloaded HAM10000 (any layout) to build from, if data_dir has no build.",
)
flags.DEFINE_string("data_dir", "data/tfds", "TFDS data_dir (built here when missing).")
flags.DEFINE_integer("image_size", 225, "Stored image size (shorter side) of the build.")
flags.DEFINE_list("workers", ["0", "1", "2"], "grain worker-process counts to time.")
flags.DEFINE_list("threads", ["1", "2"], "Decoding threads per process to time.")
flags.DEFINE_list(
    "load_sizes", ["stored", "256"], "Sizes the workers decode to: 'stored' (no resize), N (N x N) or HxW."
)
flags.DEFINE_integer("batch_size", 128, "Batch size.")
flags.DEFINE_integer("batches", 30, "Timed batches per configuration.")
flags.DEFINE_integer("warmup", 3, "Untimed batches first (worker start-up, buffers).")
flags.DEFINE_bool("cache", True, "Also time the in-memory decoded cache (train_iterator(cache=True)).")
flags.DEFINE_bool("augment", True, "Also time augment_batch on the default JAX backend.")
flags.DEFINE_integer("out_size", 224, "augment_batch output size.")


def _machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"{cpu}, {os.cpu_count()} logical cores, Python {platform.python_version()}, load average {load}"


def _size(text: str, stored: tuple[int, int]) -> tuple[int, int]:
    if text == "stored":
        return stored
    if "x" in text:
        h, w = text.split("x")
        return int(h), int(w)
    return int(text), int(text)


def _decode_rate(source, size, n=500) -> tuple[float, float]:
    """(images/s wall clock, CPU microseconds per image) of one thread decoding."""
    from caco_jax.data import images  # pylint: disable=import-outside-toplevel

    data = [r["image"] for r in source.read(range(n), ("image",))]
    start, cpu = time.perf_counter(), time.thread_time()
    for d in data:
        images.decode(d, size)
    return n / (time.perf_counter() - start), (time.thread_time() - cpu) / n * 1e6


def _pipeline_rate(source, size, workers, threads, cache=False) -> float:
    from caco_jax.data import pipeline  # pylint: disable=import-outside-toplevel

    it = pipeline.train_iterator(
        source,
        batch_size=FLAGS.batch_size,
        load_size=size,
        seed=0,
        num_workers=workers,
        num_threads=threads,
        cache=cache,
    )
    try:
        for _ in range(FLAGS.warmup):
            next(it)
        start = time.perf_counter()
        for _ in range(FLAGS.batches):
            batch = next(it)
        elapsed = time.perf_counter() - start
        assert batch["image"].shape == (FLAGS.batch_size, *size, 3)
    finally:
        if hasattr(it, "close"):
            it.close()
    return FLAGS.batches * FLAGS.batch_size / elapsed


def _augment_rate(stored) -> tuple[float, float, str]:
    import jax  # pylint: disable=import-outside-toplevel
    import numpy as np  # pylint: disable=import-outside-toplevel

    from caco_jax.data import augment  # pylint: disable=import-outside-toplevel

    cfg = augment.AugmentConfig()
    fn = jax.jit(augment.augment_batch, static_argnames=("out_size", "cfg"))
    x = jax.device_put(np.random.default_rng(0).integers(0, 256, (FLAGS.batch_size, *stored, 3), np.uint8))
    compiled = fn.lower(jax.random.key(0), x, out_size=FLAGS.out_size, cfg=cfg).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost.get("flops", float("nan"))) / FLAGS.batch_size if cost else float("nan")
    fn(jax.random.key(0), x, out_size=FLAGS.out_size, cfg=cfg).block_until_ready()
    n = max(3, FLAGS.batches // 5)
    start = time.perf_counter()
    for i in range(n):
        out = fn(jax.random.key(i), x, out_size=FLAGS.out_size, cfg=cfg)
    out.block_until_ready()
    rate = n * FLAGS.batch_size / (time.perf_counter() - start)
    return rate, flops, str(jax.devices()[0].device_kind)


def main(argv):
    del argv
    from caco_jax.data import ham10000, images  # pylint: disable=import-outside-toplevel

    ham10000.prepare(FLAGS.manual_dir, FLAGS.data_dir, image_size=FLAGS.image_size)
    train = ham10000.open_splits(FLAGS.data_dir, image_size=FLAGS.image_size)["train"]
    first = images.decode(train[0]["image"])
    stored = first.shape[:2]
    print(f"\nmachine: {_machine()}")
    print(
        f"data: {FLAGS.data_dir} (train split: {len(train)} images stored at {stored[0]}x{stored[1]}), "
        f"batch {FLAGS.batch_size}, {FLAGS.batches} timed batches after {FLAGS.warmup} warm-up\n"
    )

    sizes = [_size(s, stored) for s in FLAGS.load_sizes]
    print("| decode to (h x w) | one thread, no grain: images/s | CPU time per image |")
    print("|---|---|---|")
    for size in sizes:
        rate, cpu_us = _decode_rate(train, size)
        print(f"| {size[0]}x{size[1]} | {rate:,.0f} | {cpu_us:,.0f} us |")

    print("\n| decode to (h x w) | worker processes | threads per process | images/s |")
    print("|---|---|---|---|")
    for size in sizes:
        for workers in map(int, FLAGS.workers):
            for threads in map(int, FLAGS.threads):
                rate = _pipeline_rate(train, size, workers, threads)
                print(f"| {size[0]}x{size[1]} | {workers} | {threads} | {rate:,.0f} |", flush=True)
        if FLAGS.cache:
            threads = max(map(int, FLAGS.threads))
            start = time.perf_counter()
            rate = _pipeline_rate(train, size, 0, threads, cache=True)
            print(
                f"| {size[0]}x{size[1]} | 0, cache=True (decode once: {time.perf_counter() - start:.1f} s "
                f"incl. timing) | {threads} | {rate:,.0f} |",
                flush=True,
            )

    print(f"\nload average after the pipeline runs: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    if FLAGS.augment:
        rate, flops, device = _augment_rate(stored)
        print(
            f"\n| augment_batch {stored[0]}x{stored[1]} -> {FLAGS.out_size}x{FLAGS.out_size} | images/s | "
            "XLA flops per image |"
        )
        print("|---|---|---|")
        print(f"| jit on {device} | {rate:,.0f} | {flops / 1e6:,.0f} M |")


if __name__ == "__main__":
    app.run(main)
