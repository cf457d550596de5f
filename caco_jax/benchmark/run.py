"""The benchmark's driver: every measurement in order, the JSON result, the command line."""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import pathlib
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import ml_collections

from caco_jax.benchmark import options as options_lib
from caco_jax.benchmark.options import Options
from caco_jax.benchmark.timing import Timed


def prepare_onnx(
    config: ml_collections.ConfigDict, opts: Options, setups: dict, log: Callable[[str], None]
) -> tuple[dict[tuple, Timed], dict[str, Any]]:
    """ONNX Runtime batch-1 latency of each variant's ONNX export (``caco_jax/benchmark/onnx_latency.py``).

    Its entries join the shared rounds (so their ratio to torch eager is taken side by
    side) and the main table. Skipped with ``--no_onnx``, or when it fails (e.g.
    onnxruntime not installed): no rows, and the reason under ``onnx`` in the JSON.
    """
    if not opts.onnx:
        return {}, {"skipped": "--no_onnx", "present": True}
    try:
        from caco_jax.benchmark import onnx_latency

        log("onnxruntime: exporting and preparing the batch-1 models ...")
        entries = onnx_latency.prepare(config, opts, setups, log)
    except Exception as e:  # noqa: BLE001 -- e.g. onnxruntime not installed: the other rows must not be lost
        reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
        log(f"onnxruntime: skipped ({reason})")
        return {}, {"skipped": reason, "present": True}
    return entries, {"present": True}


def run(config: ml_collections.ConfigDict, opts: Options, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Every measurement in order; returns the JSON-ready result (rows, pipeline, overhead, targets).

    1. caco-jax (per variant x dtype x depthwise) and torchvision (per mode) are built,
       compiled and warmed up;
    2. their training windows, then evaluation windows, then batch-1 calls run in shared
       rounds (``timing.time_rows``), and every row gets its ratios to torch eager;
    3. the grain pipeline end to end, then the jit-wrapper overhead.
    """
    from caco_jax.benchmark import report
    from caco_jax.training import parallel

    config = config.copy_and_resolve_references()
    with config.unlocked():
        config.model.arch = opts.arch
    mesh = parallel.make_mesh(1)  # one accelerator (the measurement)
    result = _context(config, opts)
    rows, setups = _time_rows(config, opts, mesh, result, log)
    result["pipeline"] = _pipelines(opts, setups, log)
    setups.clear()
    result["dispatch_overhead"] = _dispatch_overhead(config, opts, mesh, log)
    result["rows"] = rows
    result["targets"] = report.targets(result)
    return result


def _context(config: ml_collections.ConfigDict, opts: Options) -> dict[str, Any]:
    """The result's opening entries: when, on what device, with which versions and configuration."""
    import jax

    from caco_jax.benchmark import report

    return {
        "timestamp": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "device": report.device_info(),
        "versions": report.versions(),
        "config": dataclasses.asdict(opts)
        | {
            "load_size": opts.resolved_load_size(),
            "num_workers": opts.resolved_workers(),
            "loss": config.loss.name,
            "optimizer": "adamw",
            "jax_x64": bool(jax.config.read("jax_enable_x64")),
            "xla_flags": os.environ.get("XLA_FLAGS", ""),
        },
    }


def _time_rows(
    config: ml_collections.ConfigDict, opts: Options, mesh: Any, result: dict[str, Any], log: Callable[[str], None]
) -> tuple[list[dict[str, Any]], dict]:
    """Builds and warms up every row (caco-jax, torchvision, onnxruntime), times them in shared rounds and adds
    their ratios to torch eager. Sets ``torch``, ``onnx`` and ``load_average`` in ``result``; returns the rows
    and the caco-jax setups (kept for the pipeline)."""
    from caco_jax.benchmark import report
    from caco_jax.benchmark.jax_steps import prepare_jax
    from caco_jax.benchmark.timing import time_rows
    from caco_jax.benchmark.torch_baseline import compiled_graphs, prepare_torch

    entries, setups = prepare_jax(config, opts, mesh, log)
    rows = [e.row for e in entries.values()]
    torch_rows: list[dict[str, Any]] = []
    if opts.torch:
        torch_entries, torch_rows, result["torch"] = prepare_torch(opts, log)
        entries |= torch_entries
    onnx_entries, result["onnx"] = prepare_onnx(config, opts, setups, log)
    entries |= onnx_entries

    graphs = compiled_graphs() if opts.torch else 0
    load = {"before": report.load_average()}
    time_rows(entries, windows=opts.windows, latency_calls=opts.latency_calls, log=log)
    result["load_average"] = load | {"after": report.load_average()}
    if opts.torch and compiled_graphs() != graphs:
        result["torch"]["recompiled_while_timing"] = compiled_graphs() - graphs
        log(f"warning: torch.compile compiled {compiled_graphs() - graphs} graph(s) during the timed rounds")
    rows += torch_rows + [e.row for e in onnx_entries.values()]
    report.add_ratios(rows)
    entries.clear()  # the torch models and compiled graphs go; the caco-jax setups stay for the pipeline
    return rows, setups


def _pipelines(opts: Options, setups: dict, log: Callable[[str], None]) -> list[dict[str, Any]]:
    """The grain pipeline end to end on one implementation per chosen (variant, dtype), or each skipped with
    the reason when there is no dataset."""
    from caco_jax.benchmark.pipeline import measure_pipeline, resolve_dataset

    pipeline_rows: list[dict[str, Any]] = []
    data_dir, temp, reason = resolve_dataset(opts, log)
    try:
        firsts = {key[:2]: key for key in reversed(list(setups))}  # one implementation per (variant, dtype)
        chosen = [key for key in firsts.values() if key[0] == opts.pipeline_variant] or list(firsts.values())[:1]
        for variant, dtype, dw in chosen:
            if reason:
                pipeline_rows.append({"variant": variant, "dtype": dtype, "skipped": reason})
                continue
            assert data_dir is not None  # resolve_dataset gives a data_dir or a reason
            log(f"grain pipeline -> {variant} {dtype} depthwise={dw} step ({opts.resolved_workers()} workers) ...")
            p = measure_pipeline(setups[(variant, dtype, dw)], data_dir, opts)
            log(f"  {p['e2e_images_per_s']['median']:.1f} img/s = {p['e2e_over_synthetic']:.2f} x synthetic")
            pipeline_rows.append(p)
    finally:
        if temp:
            shutil.rmtree(temp, ignore_errors=True)
    return pipeline_rows


def _dispatch_overhead(
    config: ml_collections.ConfigDict, opts: Options, mesh: Any, log: Callable[[str], None]
) -> dict[str, Any]:
    """The jit-wrapper overhead on the pipeline's variant (else the first), or skipped with ``--no_overhead``."""
    from caco_jax.benchmark.dispatch import measure_dispatch_overhead

    if not opts.overhead:
        return {"skipped": "--no_overhead"}
    variant = opts.pipeline_variant if opts.pipeline_variant in opts.variants else opts.variants[0]
    log(f"per-call overhead: nnx.jit vs split-once jax.jit ({variant}, batch {opts.overhead_batch}) ...")
    return measure_dispatch_overhead(config, opts, mesh, variant)


def main(argv: Sequence[str] | None = None, description: str | None = None) -> dict[str, Any]:
    """Parses the options, runs the benchmark, prints the tables, writes the JSON; returns the result."""
    return run_options(options_lib.parse(argv, description=description), argv)


def run_options(opts: Options, argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Runs the benchmark of ``opts``, prints the tables, writes the JSON; returns the result."""
    fractions = ("XLA_CLIENT_MEM_FRACTION", "XLA_PYTHON_CLIENT_MEM_FRACTION")  # new name, old name
    if opts.torch and not any(os.environ.get(k) for k in fractions):
        # JAX preallocates 75% of GPU memory by default; leave room for the torch baseline.
        # (Read when JAX creates its GPU client, which nothing has done yet; jaxlib refuses both names at once.)
        os.environ["XLA_PYTHON_CLIENT_MEM_FRACTION"] = "0.5"

    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()  # grain worker processes read absl flags

    from caco_jax.benchmark import report
    from caco_jax.configs import default
    from caco_jax.training import compile_cache

    compile_cache.enable("" if opts.compile_cache == "default" else opts.compile_cache)
    start = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - start:6.1f} s] {message}", flush=True)

    result = report.jsonable(run(default.get_config(), opts, log=log))
    result["argv"] = sys.argv[1:] if argv is None else list(argv)
    result["wall_s"] = time.perf_counter() - start
    print("\n" + report.format_table(result))
    out = pathlib.Path(opts.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {out}")
    return result
