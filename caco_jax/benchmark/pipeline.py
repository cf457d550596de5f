"""The grain pipeline end to end: the trainer's train step fed by ``pipeline.train_iterator`` vs synthetic input."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from typing import Any

import jax

from caco_jax.benchmark.jax_steps import JaxSetup, synthetic_batch, train_window
from caco_jax.benchmark.options import Options
from caco_jax.benchmark.timing import rate_stats, time_windows, timed
from caco_jax.training import parallel


def resolve_dataset(opts: Options, log: Callable[[str], None] = print) -> tuple[str | None, str | None, str | None]:
    """(data_dir to read, temporary dir to delete afterwards, or a reason to skip the pipeline rows)."""
    from caco_jax.data import ham10000

    if not opts.data_dir and not opts.manual_dir:
        return None, None, "no dataset: pass --data_dir (a built HAM10000) or --manual_dir (raw files to build)"
    temp = None
    data_dir = opts.data_dir
    if not data_dir:
        temp = data_dir = tempfile.mkdtemp(prefix="caco_bench_tfds_")
    if opts.manual_dir:
        log(f"building HAM10000 from {opts.manual_dir} into {data_dir} (shorter side {opts.build_size} px) ...")
        ham10000.prepare(opts.manual_dir, data_dir, image_size=opts.build_size, progress=False)
    elif not ham10000.builder(data_dir, image_size=opts.build_size).is_prepared():
        return (
            None,
            None,
            (
                f"no complete HAM10000 build at {data_dir} with --build_size {opts.build_size}; "
                "build it (caco-jax prepare-data) or pass --manual_dir"
            ),
        )
    return data_dir, temp, None


def measure_pipeline(setup: JaxSetup, data_dir: str, opts: Options) -> dict[str, Any]:
    """Training images/s with the grain pipeline feeding the step (as the trainer's loop) vs synthetic input.

    Fed and synthetic windows alternate (so machine-load drift hits both); before every
    fed window, untimed fed steps drain the prefetch buffers that refilled meanwhile,
    so a slow pipeline cannot hide behind them. Also measured: the pipeline alone.
    """
    from caco_jax.data import ham10000, pipeline, records

    splits = ham10000.open_splits(data_dir, image_size=opts.build_size)
    workers = opts.resolved_workers()
    prefetch = 4
    # As the trainer: --load_size 0 loads at the stored size (decode only, no CPU resize).
    load = records.stored_size(splits["train"]) if not opts.load_size else setup.load_size
    it = pipeline.train_iterator(
        splits["train"],
        batch_size=setup.batch_size,
        load_size=None if not opts.load_size else load,
        seed=opts.seed,
        num_workers=workers,
        prefetch=prefetch,
    )
    # Batches grain can hold ready: the main process's read-ahead buffer, plus each
    # worker's read-ahead and output buffers.
    drain = prefetch * (1 + 2 * workers)
    items = opts.steps * setup.batch_size
    step = setup.steps.train
    assert step is not None, "build_jax builds the steps with an optimiser"

    def host_only(n: int) -> None:
        for _ in range(n):
            next(it)

    _, first_s = timed(lambda: host_only(1))
    host_only(opts.warmup + drain)
    host = rate_stats(time_windows(host_only, windows=opts.windows, steps=opts.steps), items)

    def fed(n: int) -> None:
        state, metrics = setup.state, None
        for _ in range(n):
            batch = parallel.to_global(next(it), setup.mesh)
            state, metrics = step(state, batch, setup.weights)
        setup.state = state
        jax.block_until_ready((state, metrics))

    synthetic = train_window(
        setup, step, synthetic_batch(setup.batch_size, load, setup.mesh, seed=opts.seed), opts.steps
    )
    seconds: dict[str, list[float]] = {"fed": [], "synthetic": []}
    for _ in range(opts.windows):
        fed(drain)
        seconds["fed"].append(timed(lambda: fed(opts.steps))[1])
        seconds["synthetic"].append(timed(synthetic)[1])
    e2e, syn = rate_stats(seconds["fed"], items), rate_stats(seconds["synthetic"], items)
    return {
        "variant": setup.variant,
        "dtype": setup.dtype,
        "depthwise": setup.depthwise,
        "num_workers": workers,
        "data_dir": data_dir,
        "build_size": opts.build_size,
        "load_size": list(load) if isinstance(load, tuple) else load,
        "train_examples": len(splits["train"]),
        "first_batch_s": first_s,
        "drain_steps": drain,
        "pipeline_only_images_per_s": host,
        "e2e_images_per_s": e2e,
        "synthetic_images_per_s": syn,
        "e2e_over_synthetic": e2e["median"] / syn["median"],
    }
