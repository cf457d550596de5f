"""Steady-state throughput of the training and evaluation steps, with a torchvision baseline.

Used by ``scripts/benchmark.py``; every measurement is one function here:

* :func:`measure_jax` -- caco-jax training throughput with the trainer's own step
  (``steps.make_train_step`` under ``jax.jit`` with the trainer's shardings and
  donation: on-device augmentation from uint8, forward, backward, AdamW, BatchNorm
  updates), evaluation throughput and batch-1 latency, per attention variant and
  compute dtype, on synthetic input already on the device;
* :func:`measure_pipeline` -- the same step fed by the real grain pipeline from a
  built HAM10000 dataset (``pipeline.train_iterator`` + ``parallel.to_global``, as the
  trainer's loop), against the synthetic-input rate;
* :func:`measure_dispatch_overhead` -- per-call cost of ``nnx.jit`` (which walks the
  module graph on every call), ``nnx.cached_partial`` and our split-once ``jax.jit``
  step, on an input small enough that host overhead dominates;
* :func:`measure_torch` -- torchvision ``mobilenet_v3_small`` (7 classes): eager,
  channels_last + bf16 autocast, ``torch.compile`` default and "reduce-overhead"
  (CUDA graphs).

Timing rules: compile / first calls and ``warmup`` steps are excluded; each window
runs ``steps`` steps and ends with a device synchronisation
(``jax.block_until_ready`` / ``torch.cuda.synchronize``); the reported rate is the
median window (min and max are kept too), because shared machines are noisy. Windows
of configurations that are compared (se / caco / dtypes, grain-fed / synthetic, the
jit wrappers) run interleaved in rounds, so load drift hits them alike.
"""
from __future__ import annotations

import dataclasses
import datetime
import math
import os
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from caco_jax import parallel
from caco_jax.classes import HAM10000_COUNTS, NUM_CLASSES
from caco_jax.data.augment import AugmentConfig, augment_batch
from caco_jax.losses import make_loss
from caco_jax.models import count_params, create_model
from caco_jax.models.depthwise import resolve as resolve_depthwise
from caco_jax.steps import ModelDef, init_state, make_eval_step, make_optimizer, make_train_step

TORCH_MODES: tuple[str, ...] = ("eager", "channels_last_bf16", "compile", "compile_reduce_overhead")
DTYPES: tuple[str, ...] = ("float32", "bfloat16")

# Targets of the issue (checked on one H100; reported everywhere, meaningful on a GPU).
TARGET_JAX_OVER_TORCH = 1.25  # caco-jax training rate / best torchvision configuration
TARGET_CACO_OVER_SE = 0.75  # caco training rate / se training rate ("within 25%")
TARGET_E2E_OVER_SYNTHETIC = 0.90  # grain-fed rate / synthetic-input rate


@dataclasses.dataclass
class Options:
    """What to measure (the command-line flags of scripts/benchmark.py)."""

    batch_size: int = 128
    image_size: int = 224
    # uint8 size fed to the train step on synthetic input; 0: image_size * 256 / 224 (256 at 224, about the
    # pixel count of the trainer's default: HAM10000 loaded as stored, 225x300). The grain rows load as the
    # trainer does: at the stored size when 0, else resized to load_size.
    load_size: int = 0
    arch: str = "small"
    variants: tuple[str, ...] = ("se", "caco")
    dtypes: tuple[str, ...] = DTYPES
    depthwise: tuple[str, ...] = ("auto",)  # depthwise-conv implementations (caco_jax.models.depthwise)
    windows: int = 5
    steps: int = 20  # steps (calls) per window
    warmup: int = 3  # steady-state warm-up steps after the first (compiling) call
    latency_calls: int = 50
    onnx: bool = True  # onnxruntime batch-1 CPU latency of each variant's ONNX export (caco_jax.export_onnx)
    eval: bool = True
    torch: bool = True
    torch_modes: tuple[str, ...] = TORCH_MODES
    torch_threads: int = 0  # >0: torch.set_num_threads (CPU); 0: torch's default
    data_dir: str = ""
    manual_dir: str = ""
    build_size: int = 225
    num_workers: int = -1  # grain worker processes; -1: cpu_count - 2 (at most 16)
    pipeline_variant: str = "caco"
    overhead: bool = True
    overhead_batch: int = 2
    overhead_image_size: int = 32
    steps_per_dispatch: int = 1
    seed: int = 0

    def resolved_load_size(self) -> int:
        return self.load_size or round(self.image_size * 256 / 224)

    def resolved_workers(self) -> int:
        if self.num_workers >= 0:
            return self.num_workers
        return max(0, min(16, (os.cpu_count() or 1) - 2))


# --------------------------------------------------------------------------- timing
def rate_stats(window_seconds: Sequence[float], items_per_window: int) -> dict[str, Any]:
    """images/s of each window -> median, min, max (and the window rates)."""
    rates = [items_per_window / s for s in window_seconds]
    return {
        "median": statistics.median(rates),
        "min": min(rates),
        "max": max(rates),
        "windows": rates,
    }


def time_windows(run: Callable[[int], None], *, windows: int, steps: int) -> list[float]:
    """Seconds of each of ``windows`` calls ``run(steps)`` (``run`` must end synchronised)."""
    out = []
    for _ in range(windows):
        t0 = time.perf_counter()
        run(steps)
        out.append(time.perf_counter() - t0)
    return out


def interleaved_windows(runs: dict[Any, tuple[Callable[[], None], int]], windows: int) -> dict[Any, dict[str, Any]]:
    """Rate stats of several runs, timed in rounds (A B C, A B C, ...).

    ``runs`` maps a key to (one synchronised window, items it processes). Rounds make
    load drift on a shared machine hit every run alike, so ratios stay meaningful.
    """
    seconds: dict[Any, list[float]] = {k: [] for k in runs}
    for _ in range(windows):
        for key, (window, _) in runs.items():
            t0 = time.perf_counter()
            window()
            seconds[key].append(time.perf_counter() - t0)
    return {key: rate_stats(seconds[key], items) for key, (_, items) in runs.items()}


def time_calls(call: Callable[[], None], n: int) -> list[float]:
    """Seconds of each of ``n`` synchronised calls (latency)."""
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        call()
        out.append(time.perf_counter() - t0)
    return out


def latency_stats(seconds: Sequence[float]) -> dict[str, float]:
    ms = [1e3 * s for s in seconds]
    return {"median": statistics.median(ms), "min": min(ms), "max": max(ms)}


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


# --------------------------------------------------------------------------- caco-jax
@dataclasses.dataclass
class JaxSetup:
    """One model variant/dtype with the trainer's jitted train and eval steps and a live state."""

    variant: str
    dtype: str
    model_def: ModelDef
    tx: Any
    train_step: Callable[..., Any]
    eval_step: Callable[..., Any]
    state: Any
    weights: jax.Array
    mesh: Any
    batch_size: int
    image_size: int
    load_size: int
    aug: AugmentConfig
    loss: Any
    num_params: int


def build_jax(config: ml_collections.ConfigDict, variant: str, dtype: str, *, batch_size: int, image_size: int,
              load_size: int, mesh: Any, seed: int = 0, depthwise: str | None = None) -> JaxSetup:
    """Model, optimiser, loss and the train/eval steps, jitted exactly as ``caco_jax.train`` does."""
    model = create_model(arch=config.model.arch, num_classes=NUM_CLASSES, attention=variant,
                         ca_activation=config.model.ca_activation, attention_init=config.model.attention_init,
                         dropout=config.model.dropout,
                         bn_momentum=config.model.bn_momentum, depthwise=depthwise or config.model.depthwise,
                         dtype=dtype, seed=seed)
    num_params = count_params(model)
    model_def = ModelDef(model)
    tx = make_optimizer(config.optimizer, model_def.init_params, steps_per_epoch=1, num_epochs=1)
    loss = make_loss(config.loss, np.asarray(HAM10000_COUNTS))
    aug = AugmentConfig.from_config(config.data.augment)
    repl, data_sh = parallel.replicated(mesh), parallel.data_sharding(mesh)
    state = jax.device_put(init_state(model_def, tx, seed), repl)
    train_step = jax.jit(
        make_train_step(model_def, tx, loss, aug, image_size),
        in_shardings=(repl, data_sh, repl),
        out_shardings=(repl, repl),
        donate_argnums=(0,),
    )
    eval_step = jax.jit(make_eval_step(model_def, loss), in_shardings=(repl, repl, data_sh, repl), out_shardings=repl)
    weights = jax.device_put(loss.class_weights(0), repl)
    return JaxSetup(variant, dtype, model_def, tx, train_step, eval_step, state, weights, mesh, batch_size, image_size,
                    load_size, aug, loss, num_params)


def synthetic_batch(batch_size: int, size: int | tuple[int, int], mesh: Any, *, seed: int = 0, mask: bool = False,
                    leading: tuple[int, ...] = ()) -> dict[str, jax.Array]:
    """Random uint8 images and labels, already on the device(s) (sharded as the trainer's batches).

    ``leading``: extra leading axes (K stacked batches for several steps per dispatch).
    """
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    rng = np.random.default_rng(seed)
    shape = (*leading, batch_size)
    h, w = (size, size) if isinstance(size, int) else size
    batch = {
        "image": rng.integers(0, 256, (*shape, h, w, 3), dtype=np.uint8),
        "label": rng.integers(0, NUM_CLASSES, shape, dtype=np.int32),
    }
    if mask:
        batch["mask"] = np.ones(shape, bool)
    if not leading:
        return parallel.to_global(batch, mesh)
    return jax.device_put(batch, NamedSharding(mesh, P(*([None] * len(leading)), parallel.AXIS)))


def make_multi_step(train_step: Callable[..., Any]) -> Callable[..., Any]:
    """K train steps in one dispatch: ``jax.lax.scan`` of the trainer's step over batches [K, B, ...]."""

    def multi_step(state: Any, batches: dict[str, jax.Array], class_weights: jax.Array):
        def body(s, b):
            return train_step(s, b, class_weights)

        return jax.lax.scan(body, state, batches)

    return multi_step


def jit_multi_step(setup: JaxSetup) -> Callable[..., Any]:
    """The multi-step function jitted with the trainer's shardings and donation."""
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    repl = parallel.replicated(setup.mesh)
    return jax.jit(
        make_multi_step(make_train_step(setup.model_def, setup.tx, setup.loss, setup.aug, setup.image_size)),
        in_shardings=(repl, NamedSharding(setup.mesh, P(None, parallel.AXIS)), repl),
        out_shardings=(repl, repl), donate_argnums=(0,),
    )


def _train_window(setup: JaxSetup, step: Callable[..., Any], batch: dict[str, jax.Array], calls: int
                  ) -> Callable[[], None]:
    """``calls`` calls of ``step`` chaining the (donated) state, then a synchronisation."""

    def window() -> None:
        state, metrics = setup.state, None
        for _ in range(calls):
            state, metrics = step(state, batch, setup.weights)
        setup.state = state
        jax.block_until_ready((state, metrics))

    return window


def _eval_window(setup: JaxSetup, batch: dict[str, jax.Array], calls: int) -> Callable[[], None]:
    def window() -> None:
        out = None
        for _ in range(calls):
            out = setup.eval_step(setup.state.params, setup.state.batch_stats, batch, setup.weights)
        jax.block_until_ready(out)

    return window


def measure_jax(config: ml_collections.ConfigDict, opts: Options, mesh: Any,
                log: Callable[[str], None] = print) -> tuple[list[dict[str, Any]], dict[tuple[str, str], JaxSetup]]:
    """Train (and eval) rows for every variant x dtype; returns the rows and the live setups.

    Everything is compiled first (first-call time = compile time), then the timed
    windows of all configurations run interleaved (see :func:`interleaved_windows`).
    """
    load_size, b, k = opts.resolved_load_size(), opts.batch_size, opts.steps_per_dispatch
    batch = synthetic_batch(b, load_size, mesh, seed=opts.seed)
    stacked = synthetic_batch(b, load_size, mesh, seed=opts.seed, leading=(k,)) if k > 1 else None
    rows: dict[tuple[str, str, str, int], dict[str, Any]] = {}
    setups: dict[tuple[str, str, str], JaxSetup] = {}
    train_runs: dict[tuple[str, str, str, int], tuple[Callable[[], None], int]] = {}
    for variant in opts.variants:
        for dtype in opts.dtypes:
            for impl in opts.depthwise:
                dw = resolve_depthwise(impl)
                log(f"caco-jax {variant} {dtype} depthwise={dw}: building and compiling the train step ...")
                setup = build_jax(config, variant, dtype, batch_size=b, image_size=opts.image_size,
                                  load_size=load_size, mesh=mesh, seed=opts.seed, depthwise=dw)
                setups[(variant, dtype, dw)] = setup
                head = {"framework": "caco-jax", "model": f"mobilenetv3_{config.model.arch}-{variant}",
                        "variant": variant, "dtype": dtype, "depthwise": dw, "num_params": setup.num_params}
                _, compile_s = timed(_train_window(setup, setup.train_step, batch, 1))
                _train_window(setup, setup.train_step, batch, opts.warmup)()
                rows[(variant, dtype, dw, 1)] = head | {"mode": f"{dtype}, depthwise {dw}", "steps_per_dispatch": 1,
                                                        "compile_s": compile_s}
                train_runs[(variant, dtype, dw, 1)] = (_train_window(setup, setup.train_step, batch, opts.steps),
                                                       opts.steps * b)
                log(f"  compiled in {compile_s:.1f} s")
                if k > 1:
                    multi = jit_multi_step(setup)
                    calls = max(1, opts.steps // k)
                    _, compile_s = timed(_train_window(setup, multi, stacked, 1))
                    _train_window(setup, multi, stacked, max(1, opts.warmup // k))()
                    rows[(variant, dtype, dw, k)] = head | {"mode": f"{dtype}, depthwise {dw}, {k} steps/dispatch",
                                                            "steps_per_dispatch": k, "compile_s": compile_s}
                    train_runs[(variant, dtype, dw, k)] = (_train_window(setup, multi, stacked, calls), calls * k * b)
    log(f"timing training: {opts.windows} rounds x {len(train_runs)} configurations x {opts.steps} steps ...")
    for key, stats in interleaved_windows(train_runs, opts.windows).items():
        rows[key] |= {"images_per_s": stats, "step_ms": 1e3 * b / stats["median"]}
        log(f"  {' '.join(key[:3])}{'' if key[3] == 1 else f' x{key[3]}'}: {stats['median']:.1f} img/s")

    if opts.eval:
        log("caco-jax evaluation: compiling (batch and batch 1) ...")
        big = synthetic_batch(b, opts.image_size, mesh, seed=opts.seed, mask=True)
        one = synthetic_batch(1, opts.image_size, mesh, seed=opts.seed, mask=True)
        eval_runs, latency = {}, {}
        for key, setup in setups.items():
            row = rows[(*key, 1)]
            _, row["eval_compile_s"] = timed(_eval_window(setup, big, 1))
            _eval_window(setup, big, opts.warmup)()
            _, row["latency_compile_s"] = timed(_eval_window(setup, one, 1))
            _eval_window(setup, one, opts.warmup)()
            eval_runs[key] = (_eval_window(setup, big, opts.steps), opts.steps * b)
            latency[key] = []
        for key, stats in interleaved_windows(eval_runs, opts.windows).items():
            rows[(*key, 1)]["eval_images_per_s"] = stats
        per_round = max(1, -(-opts.latency_calls // opts.windows))
        for _ in range(opts.windows):
            for key, setup in setups.items():
                latency[key] += time_calls(_eval_window(setup, one, 1), per_round)
        for key, seconds in latency.items():
            rows[(*key, 1)]["latency_ms"] = latency_stats(seconds)
    return list(rows.values()), setups


# --------------------------------------------------------------------------- grain pipeline
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
        return None, None, (f"no complete HAM10000 build at {data_dir} with --build_size {opts.build_size}; "
                            "build it (scripts/prepare_data.py) or pass --manual_dir")
    return data_dir, temp, None


def measure_pipeline(setup: JaxSetup, data_dir: str, opts: Options) -> dict[str, Any]:
    """Training images/s with the grain pipeline feeding the step (as the trainer's loop) vs synthetic input.

    Fed and synthetic windows alternate (so machine-load drift hits both); before every
    fed window, untimed fed steps drain the prefetch buffers that refilled meanwhile,
    so a slow pipeline cannot hide behind them. Also measured: the pipeline alone.
    """
    from caco_jax.data import pipeline

    splits = pipeline.open_splits(data_dir, image_size=opts.build_size)
    workers = opts.resolved_workers()
    prefetch = 4
    # As the trainer: --load_size 0 loads at the stored size (decode only, no CPU resize).
    load = pipeline.stored_size(splits["train"]) if not opts.load_size else setup.load_size
    it = pipeline.train_iterator(splits["train"], batch_size=setup.batch_size,
                                 load_size=None if not opts.load_size else load,
                                 seed=opts.seed, num_workers=workers, prefetch=prefetch)
    # Batches grain can hold ready: the main process's read-ahead buffer, plus each
    # worker's read-ahead and output buffers.
    drain = prefetch * (1 + 2 * workers)
    items = opts.steps * setup.batch_size

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
            state, metrics = setup.train_step(state, batch, setup.weights)
        setup.state = state
        jax.block_until_ready((state, metrics))

    def fed_window() -> None:
        fed(opts.steps)

    synthetic = synthetic_batch(setup.batch_size, load, setup.mesh, seed=opts.seed)
    seconds: dict[str, list[float]] = {"fed": [], "synthetic": []}
    for _ in range(opts.windows):
        fed(drain)
        seconds["fed"].append(timed(fed_window)[1])
        seconds["synthetic"].append(timed(_train_window(setup, setup.train_step, synthetic, opts.steps))[1])
    e2e, syn = rate_stats(seconds["fed"], items), rate_stats(seconds["synthetic"], items)
    return {
        "variant": setup.variant, "dtype": setup.dtype, "num_workers": workers, "data_dir": data_dir,
        "build_size": opts.build_size, "load_size": list(load) if isinstance(load, tuple) else load, "train_examples": len(splits["train"]), "first_batch_s": first_s,
        "drain_steps": drain, "pipeline_only_images_per_s": host, "e2e_images_per_s": e2e,
        "synthetic_images_per_s": syn, "e2e_over_synthetic": e2e["median"] / syn["median"],
    }


# --------------------------------------------------------------------------- nnx.jit overhead
def _per_call(calls: dict[str, Callable[[], Any]], opts: Options, n: int) -> dict[str, dict[str, float]]:
    """First-call seconds of each, then (in interleaved rounds) ms per call, synchronised, and host ms to issue one."""

    def run(call: Callable[[], Any], k: int) -> float:
        # One executable's outputs become ready together: waiting for the last call's
        # output waits for its whole step, parameter updates included.
        t0 = time.perf_counter()
        out = None
        for _ in range(k):
            out = call()
        issued = time.perf_counter() - t0
        jax.block_until_ready(out)
        return issued

    first = {}
    for name, call in calls.items():
        first[name] = timed(lambda call=call: run(call, 1))[1]
        run(call, opts.warmup)
    issue: dict[str, list[float]] = {name: [] for name in calls}
    total: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(opts.windows):
        for name, call in calls.items():
            t0 = time.perf_counter()
            issue[name].append(run(call, n))
            total[name].append(time.perf_counter() - t0)
    return {name: {"compile_s": first[name], "ms": 1e3 * statistics.median(total[name]) / n,
                   "ms_min": 1e3 * min(total[name]) / n, "issue_ms": 1e3 * statistics.median(issue[name]) / n}
            for name in calls}


def measure_dispatch_overhead(config: ml_collections.ConfigDict, opts: Options, mesh: Any,
                              variant: str) -> dict[str, Any]:
    """Per-call cost of nnx.jit, nnx.cached_partial(nnx.jit) and our split-once jax.jit step.

    Same model (``variant``, float32), optimiser, loss and augmentation, two ways:

    * ``step``: the whole training step on a tiny input (batch ``overhead_batch``,
      ``overhead_image_size`` px), so that host overhead is a visible part of it;
    * ``noop``: a jitted function of the same arguments that computes nothing (nnx:
      takes model + optimizer, returns a scalar; ours: returns the donated state),
      which is the pure per-call cost of moving the state through the transform:
      nnx.jit walks (splits and merges) the module graph on every call, jax.jit only
      flattens a pytree in C++.

    ``ms`` is synchronised time per call, ``issue_ms`` the host time to issue one
    (dispatch is asynchronous: on a GPU host time hides behind device time until it
    exceeds it).
    """
    from flax import nnx

    b, size = opts.overhead_batch, opts.overhead_image_size
    setup = build_jax(config, variant, "float32", batch_size=b, image_size=size, load_size=size, mesh=mesh,
                      seed=opts.seed)
    batch = synthetic_batch(b, size, mesh, seed=opts.seed)

    model = create_model(arch=config.model.arch, num_classes=NUM_CLASSES, attention=variant,
                         ca_activation=config.model.ca_activation, dropout=config.model.dropout,
                         bn_momentum=config.model.bn_momentum, dtype="float32", seed=opts.seed)
    model.train()
    optimizer = nnx.Optimizer(model, setup.tx, wrt=nnx.Param)
    loss, aug = setup.loss, setup.aug

    @nnx.jit
    def nnx_step(model, optimizer, images, labels, class_weights, key):
        aug_key, dropout_key = jax.random.split(key)
        x = augment_batch(aug_key, images, out_size=size, cfg=aug)

        def loss_fn(m):
            return loss(m(x, rngs=nnx.Rngs(dropout=dropout_key)), labels, class_weights)

        value, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return value

    @nnx.jit
    def nnx_noop(model, optimizer, images, labels, class_weights, key):
        return jnp.zeros((), jnp.float32)

    repl = parallel.replicated(mesh)
    jax_noop = jax.jit(lambda state, batch, class_weights: (state, jnp.zeros((), jnp.float32)),
                       in_shardings=(repl, parallel.data_sharding(mesh), repl), out_shardings=(repl, repl),
                       donate_argnums=(0,))

    key = jax.random.key(opts.seed)
    images, labels, w = batch["image"], batch["label"], setup.weights
    cached_step = nnx.cached_partial(nnx_step, model, optimizer)
    cached_noop = nnx.cached_partial(nnx_noop, model, optimizer)

    def ours(fn: Callable[..., Any]) -> Callable[[], Any]:
        def call() -> Any:
            setup.state, out = fn(setup.state, batch, w)
            return out
        return call

    wrappers: dict[str, dict[str, Callable[[], Any]]] = {
        "jax.jit, split once (ours)": {"step": ours(setup.train_step), "noop": ours(jax_noop)},
        "nnx.jit": {"step": lambda: nnx_step(model, optimizer, images, labels, w, key),
                    "noop": lambda: nnx_noop(model, optimizer, images, labels, w, key)},
        "nnx.cached_partial(nnx.jit)": {"step": lambda: cached_step(images, labels, w, key),
                                        "noop": lambda: cached_noop(images, labels, w, key)},
    }
    steps = _per_call({name: w["step"] for name, w in wrappers.items()}, opts, opts.steps)
    noops = _per_call({name: w["noop"] for name, w in wrappers.items()}, opts, max(opts.steps, 50))
    results = {name: {"step": steps[name], "noop": noops[name]} for name in wrappers}
    base = results["jax.jit, split once (ours)"]
    for r in results.values():
        r["step_overhead_ms"] = r["step"]["ms"] - base["step"]["ms"]
        r["noop_overhead_ms"] = r["noop"]["ms"] - base["noop"]["ms"]
    return {"variant": variant, "arch": config.model.arch, "batch_size": b, "image_size": size,
            "num_param_arrays": len(jax.tree.leaves(setup.state.params)),
            "num_state_arrays": len(jax.tree.leaves(setup.state)), "wrappers": results}


# --------------------------------------------------------------------------- torchvision
def torch_configs(opts: Options) -> list[tuple[str, str]]:
    """(mode, dtype) pairs: eager is float32, channels_last_bf16 bfloat16; compile modes follow --dtypes."""
    out = []
    for mode in opts.torch_modes:
        if mode == "eager":
            out.append((mode, "float32"))
        elif mode == "channels_last_bf16":
            out.append((mode, "bfloat16"))
        elif mode in ("compile", "compile_reduce_overhead"):
            out.extend((mode, d) for d in opts.dtypes)
        else:
            raise ValueError(f"unknown torch mode {mode!r}; expected one of {TORCH_MODES}")
    return out


def _torch_skip_reason(mode: str, device: Any) -> str | None:
    import torch

    if mode == "compile_reduce_overhead" and device.type != "cuda":
        return "reduce-overhead uses CUDA graphs; needs a CUDA device"
    if mode.startswith("compile") and not hasattr(torch, "compile"):
        return "torch.compile unavailable"
    return None


def measure_torch_config(mode: str, dtype: str, opts: Options, device: Any) -> dict[str, Any]:
    """torchvision mobilenet_v3_small: train (AdamW, cross-entropy, BatchNorm updates), eval, batch-1 latency.

    The input is float, normalised and already on the device (no augmentation):
    less work than caco-jax's step, which augments uint8 batches on the device.
    bfloat16 means channels_last memory format + bf16 autocast (parameters stay float32).
    """
    import torch
    import torch.nn.functional as F
    import torchvision

    torch._dynamo.reset()  # a fresh compile cache per configuration (no cache-size-limit fallbacks)
    torch.manual_seed(opts.seed)
    cuda = device.type == "cuda"
    bf16 = dtype == "bfloat16"
    fmt = torch.channels_last if bf16 else torch.contiguous_format
    model = torchvision.models.mobilenet_v3_small(num_classes=NUM_CLASSES).to(device).to(memory_format=fmt)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=5e-2, fused=True if cuda else None)
    compile_mode = {"compile": "default", "compile_reduce_overhead": "reduce-overhead"}.get(mode)
    graphs = compile_mode == "reduce-overhead"

    def compiled(m: Any) -> Any:
        return torch.compile(m, mode=compile_mode, dynamic=False) if compile_mode else m

    train_fwd = compiled(model)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)

    b, s = opts.batch_size, opts.image_size
    x = torch.randn(b, 3, s, s, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, NUM_CLASSES, (b,), device=device)

    def train(n: int) -> None:
        model.train()
        for _ in range(n):
            if graphs:
                torch.compiler.cudagraph_mark_step_begin()
            with autocast():
                loss = F.cross_entropy(train_fwd(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sync()

    row: dict[str, Any] = {}
    _, row["compile_s"] = timed(lambda: train(1))
    train(opts.warmup)
    stats = rate_stats(time_windows(train, windows=opts.windows, steps=opts.steps), opts.steps * b)
    row |= {"images_per_s": stats, "step_ms": 1e3 * b / stats["median"]}
    if not opts.eval:
        return row

    eval_fwd, one_fwd = compiled(model), compiled(model)  # separate compiled graphs: no dynamic-shape recompiles
    one = torch.randn(1, 3, s, s, device=device).contiguous(memory_format=fmt)

    def infer(fwd: Any, inp: Any, n: int) -> None:
        model.eval()
        with torch.inference_mode(), autocast():
            for _ in range(n):
                if graphs:
                    torch.compiler.cudagraph_mark_step_begin()
                out = fwd(inp)
                if graphs:
                    out = out.clone()
        sync()

    _, row["eval_compile_s"] = timed(lambda: infer(eval_fwd, x, 1))
    infer(eval_fwd, x, opts.warmup)
    row["eval_images_per_s"] = rate_stats(
        time_windows(lambda n: infer(eval_fwd, x, n), windows=opts.windows, steps=opts.steps), opts.steps * b)
    _, row["latency_compile_s"] = timed(lambda: infer(one_fwd, one, 1))
    infer(one_fwd, one, opts.warmup)
    row["latency_ms"] = latency_stats(time_calls(lambda: infer(one_fwd, one, 1), opts.latency_calls))
    return row


def measure_torch(opts: Options, log: Callable[[str], None] = print) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Rows for every requested torch (mode, dtype); skipped ones carry the reason."""
    try:
        import torch
        import torchvision
    except ImportError as e:  # the torch extra is optional
        return [{"framework": "torchvision", "model": "mobilenet_v3_small", "mode": m, "dtype": d,
                 "skipped": f"torch not installed ({e})"} for m, d in torch_configs(opts)], {}
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if opts.torch_threads > 0:
        # On a CPU shared with other jobs, OpenMP with one thread per core collapses
        # (threads spin at barriers while one of them is descheduled): pin fewer.
        torch.set_num_threads(opts.torch_threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True  # as JAX's default precision on GPU
        torch.backends.cudnn.allow_tf32 = True
    info = {"torch": torch.__version__, "torchvision": torchvision.__version__, "torch_device": str(device),
            "torch_device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
            or platform.machine(), "torch_threads": torch.get_num_threads()}
    rows = []
    for mode, dtype in torch_configs(opts):
        row: dict[str, Any] = {"framework": "torchvision", "model": "mobilenet_v3_small", "variant": "se",
                               "mode": mode, "dtype": dtype}
        reason = _torch_skip_reason(mode, device)
        if reason:
            row["skipped"] = reason
            log(f"torchvision {mode} {dtype}: skipped ({reason})")
        else:
            log(f"torchvision {mode} {dtype} on {device} ...")
            try:
                row |= measure_torch_config(mode, dtype, opts, device)
                log(f"  train {row['images_per_s']['median']:.1f} img/s (first call {row['compile_s']:.1f} s)")
            except Exception as e:  # noqa: BLE001 -- a failing baseline mode must not lose the other rows
                row["skipped"] = f"failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
                log(f"  {row['skipped']}")
        rows.append(row)
    return rows, info


# --------------------------------------------------------------------------- report
def device_info() -> dict[str, Any]:
    d = jax.devices()[0]
    return {"platform": d.platform, "device_kind": d.device_kind, "num_devices": jax.device_count(),
            "host_cpus": os.cpu_count(), "hostname": platform.node(), "processor": platform.processor()}


def versions() -> dict[str, str]:
    """Versions of Python and the installed packages that matter here."""
    from importlib import metadata

    out = {"python": platform.python_version()}
    for name in ("jax", "jaxlib", "jax-cuda12-plugin", "jax-cuda13-plugin", "flax", "optax", "grain", "numpy"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def targets(result: dict[str, Any]) -> dict[str, Any]:
    """The issues' targets from the measured rows.

    GPU (set for one H100): caco-jax training >= 1.25x the best torchvision configuration,
    caco within 25 % of se, grain-fed >= 90 % of synthetic input. CPU (same threads, fp32,
    against torchvision eager): training >= 1x, evaluation >= 2x, batch-1 latency <= 0.5x.
    """
    ok = [r for r in result["rows"] if "skipped" not in r and r.get("steps_per_dispatch", 1) == 1]
    jax_rows = [r for r in ok if r["framework"] == "caco-jax"]
    torch_rows = [r for r in ok if r["framework"] == "torchvision"]
    out: dict[str, Any] = {}

    def best(rows: list[dict[str, Any]], field: str = "images_per_s") -> dict[str, Any] | None:
        rows = [r for r in rows if field in r]
        return max(rows, key=lambda r: r[field]["median"]) if rows else None

    def target(ratio: float, goal: float, higher_is_better: bool = True, **extra: Any) -> dict[str, Any]:
        met = ratio >= goal if higher_is_better else ratio <= goal
        return {"ratio": ratio, "target": goal, "met": met, "lower_is_better": not higher_is_better, **extra}

    cpu = result["device"]["platform"] == "cpu"
    eager = next((r for r in torch_rows if r["mode"] == "eager" and r["dtype"] == "float32"), None)
    for variant in sorted({r["variant"] for r in jax_rows}):
        mine = [r for r in jax_rows if r["variant"] == variant]
        if cpu:
            mine32 = [r for r in mine if r["dtype"] == "float32"]
            top = best(mine32)
            if eager is None or top is None:
                continue
            label = {"jax": top["mode"], "torch": "eager float32"}
            out[f"{variant}_train_over_torch_eager"] = target(
                top["images_per_s"]["median"] / eager["images_per_s"]["median"], 1.0, **label)
            top_eval = best(mine32, "eval_images_per_s")
            if top_eval and "eval_images_per_s" in eager:
                out[f"{variant}_eval_over_torch_eager"] = target(
                    top_eval["eval_images_per_s"]["median"] / eager["eval_images_per_s"]["median"], 2.0,
                    jax=top_eval["mode"], torch="eager float32")
            lat = [r for r in mine32 if "latency_ms" in r]
            if lat and "latency_ms" in eager:
                fastest = min(lat, key=lambda r: r["latency_ms"]["median"])
                out[f"{variant}_latency_over_torch_eager"] = target(
                    fastest["latency_ms"]["median"] / eager["latency_ms"]["median"], 0.5, higher_is_better=False,
                    jax=fastest["mode"], torch="eager float32")
        else:
            top, top_torch = best(mine), best(torch_rows)
            if top and top_torch:
                out[f"{variant}_over_best_torch"] = target(
                    top["images_per_s"]["median"] / top_torch["images_per_s"]["median"], TARGET_JAX_OVER_TORCH,
                    jax=top["mode"], torch=f"{top_torch['mode']} {top_torch['dtype']}")
    for dtype in sorted({r["dtype"] for r in jax_rows}):
        se = best([r for r in jax_rows if r["variant"] == "se" and r["dtype"] == dtype])
        caco = best([r for r in jax_rows if r["variant"] == "caco" and r["dtype"] == dtype])
        if se and caco:
            out[f"caco_over_se_{dtype}"] = target(caco["images_per_s"]["median"] / se["images_per_s"]["median"],
                                                  TARGET_CACO_OVER_SE)
    for p in result.get("pipeline", []):
        if "skipped" not in p:
            out[f"e2e_over_synthetic_{p['variant']}_{p['dtype']}"] = target(p["e2e_over_synthetic"],
                                                                           TARGET_E2E_OVER_SYNTHETIC)
    return out


def _fmt_rate(stats: dict[str, float] | None) -> str:
    if not stats:
        return "-"
    return f"{stats['median']:.1f} ({stats['min']:.1f}-{stats['max']:.1f})"


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def format_table(result: dict[str, Any]) -> str:
    """Markdown tables: throughput rows, the grain pipeline, nnx.jit overhead and the targets."""
    cfg, dev = result["config"], result["device"]
    lines = [
        f"Device: {dev['device_kind']} ({dev['platform']}, {dev['num_devices']} device(s), {dev['host_cpus']} host "
        f"CPUs); torch: {result.get('torch', {}).get('torch_device', 'n/a')}",
        f"Batch {cfg['batch_size']}, {cfg['image_size']}x{cfg['image_size']} (caco-jax trains from uint8 "
        f"{cfg['load_size']}x{cfg['load_size']}, augmented on device), arch {cfg['arch']}; "
        f"median of {cfg['windows']} windows x {cfg['steps']} steps (min-max), after {cfg['warmup']} warm-up steps",
        "",
        "| framework | model | mode | train img/s median (min-max) | train step ms | compile s | "
        f"eval img/s (B={cfg['batch_size']}) | batch-1 ms | note |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        if "skipped" in r:
            mode = r["mode"] if r["mode"] == r["dtype"] else f"{r['mode']}, {r['dtype']}"
            lines.append(f"| {r['framework']} | {r['model']} | {mode} | - | - | - | - | - | skipped: {r['skipped']} |")
            continue
        mode = r["mode"] if r["framework"] == "caco-jax" else f"{r['mode']}, {r['dtype']}"
        lines.append(
            f"| {r['framework']} | {r['model']} | {mode} | {_fmt_rate(r['images_per_s'])} | {_fmt(r['step_ms'], 2)} | "
            f"{_fmt(r['compile_s'])} | {_fmt_rate(r.get('eval_images_per_s'))} | "
            f"{_fmt(r['latency_ms']['median'], 2) if 'latency_ms' in r else '-'} | |")
    lines += ["", "End to end with the grain pipeline (same step, batches from a built HAM10000):", "",
              "| variant | dtype | workers | synthetic img/s | grain-fed img/s median (min-max) | ratio | "
              "pipeline alone img/s |", "|---|---|---|---|---|---|---|"]
    for p in result.get("pipeline", []):
        if "skipped" in p:
            lines.append(f"| {p.get('variant', '-')} | {p.get('dtype', '-')} | - | - | - | - | skipped: {p['skipped']} |")
        else:
            lines.append(
                f"| {p['variant']} | {p['dtype']} | {p['num_workers']} | {_fmt_rate(p['synthetic_images_per_s'])} | "
                f"{_fmt_rate(p['e2e_images_per_s'])} | {p['e2e_over_synthetic']:.2f} | "
                f"{_fmt_rate(p['pipeline_only_images_per_s'])} |")
    ov = result.get("dispatch_overhead")
    if ov and "skipped" not in ov:
        lines += ["", f"Per-call cost of the jit wrapper ({ov['arch']}-{ov['variant']}, float32; {ov['num_state_arrays']} "
                      f"state arrays). Train step at batch {ov['batch_size']}, {ov['image_size']}px; no-op: same "
                      "arguments, no computation (pure wrapper overhead):", "",
                  "| wrapper | train step ms (synced) | host ms to issue | no-op call ms | "
                  "overhead vs ours: step ms | no-op ms |", "|---|---|---|---|---|---|"]
        for name, w in ov["wrappers"].items():
            lines.append(f"| {name} | {w['step']['ms']:.2f} | {w['step']['issue_ms']:.2f} | {w['noop']['ms']:.3f} | "
                         f"{w['step_overhead_ms']:+.2f} | {w['noop_overhead_ms']:+.3f} |")
    elif ov:
        lines += ["", f"nnx.jit overhead: skipped ({ov['skipped']})"]
    if result.get("onnx"):
        from caco_jax.export_onnx import format_rows

        jax_ms = {r["variant"]: r["latency_ms"]["median"] for r in result["rows"]
                  if r["framework"] == "caco-jax" and r.get("dtype") == "float32" and "latency_ms" in r}
        lines += format_rows(result["onnx"], jax_ms)
    if result.get("targets"):
        lines += ["", "Targets:", ""]
        for name, t in result["targets"].items():
            extra = f" ({t['jax']} vs torch {t['torch']})" if "jax" in t else ""
            sign = "<=" if t.get("lower_is_better") else ">="
            lines.append(f"- {name}: {t['ratio']:.2f} (target {sign} {t['target']}): "
                         f"{'met' if t['met'] else 'NOT met'}{extra}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- driver
def run(config: ml_collections.ConfigDict, opts: Options, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Every measurement in order; returns the JSON-ready result (rows, pipeline, overhead, targets)."""
    for d in opts.dtypes:
        if d not in DTYPES:
            raise ValueError(f"unknown dtype {d!r}; expected some of {DTYPES}")
    for name in ("batch_size", "image_size", "windows", "steps", "steps_per_dispatch", "latency_calls"):
        if getattr(opts, name) < 1:
            raise ValueError(f"--{name} must be >= 1, got {getattr(opts, name)}")
    config = config.copy_and_resolve_references()
    with config.unlocked():
        config.model.arch = opts.arch
    mesh = parallel.make_mesh(1)  # one accelerator (the issue's measurement)
    result: dict[str, Any] = {
        "timestamp": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "device": device_info(),
        "versions": versions(),
        "config": dataclasses.asdict(opts) | {"load_size": opts.resolved_load_size(),
                                              "num_workers": opts.resolved_workers(),
                                              "loss": config.loss.name,
                                              "optimizer": "adamw", "jax_x64": bool(jax.config.jax_enable_x64),
                                              "xla_flags": os.environ.get("XLA_FLAGS", "")},
    }
    rows, setups = measure_jax(config, opts, mesh, log)

    pipeline_rows: list[dict[str, Any]] = []
    data_dir, temp, reason = resolve_dataset(opts, log)
    try:
        firsts = {key[:2]: key for key in reversed(list(setups))}  # one implementation per (variant, dtype)
        chosen = [key for key in firsts.values() if key[0] == opts.pipeline_variant] or list(firsts.values())[:1]
        for variant, dtype, dw in chosen:
            if reason:
                pipeline_rows.append({"variant": variant, "dtype": dtype, "skipped": reason})
                continue
            log(f"grain pipeline -> {variant} {dtype} step ({opts.resolved_workers()} workers) ...")
            p = measure_pipeline(setups[(variant, dtype, dw)], data_dir, opts)
            log(f"  {p['e2e_images_per_s']['median']:.1f} img/s = {p['e2e_over_synthetic']:.2f} x synthetic")
            pipeline_rows.append(p)
    finally:
        if temp:
            shutil.rmtree(temp, ignore_errors=True)
    result["pipeline"] = pipeline_rows
    setups.clear()

    if opts.overhead:
        variant = opts.pipeline_variant if opts.pipeline_variant in opts.variants else opts.variants[0]
        log(f"per-call overhead: nnx.jit vs split-once jax.jit ({variant}, batch {opts.overhead_batch}) ...")
        result["dispatch_overhead"] = measure_dispatch_overhead(config, opts, mesh, variant)
    else:
        result["dispatch_overhead"] = {"skipped": "--no-overhead"}

    if opts.torch:
        torch_rows, info = measure_torch(opts, log)
        rows += torch_rows
        result["torch"] = info
    result["rows"] = rows
    result["targets"] = targets(result)
    if opts.onnx:  # self-contained in caco_jax.export_onnx
        from caco_jax.export_onnx import ort_latency_rows

        result["onnx"] = ort_latency_rows(opts.arch, opts.variants, image_size=opts.image_size,
                                          calls=opts.latency_calls, threads=opts.torch_threads, log=log)
    return result


def jsonable(obj: Any) -> Any:
    """numpy / jax scalars -> Python numbers, recursively."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (np.generic, jnp.ndarray)):
        return np.asarray(obj).item()
    return obj
