"""Per-call cost of the jit wrapper: ``nnx.jit``, ``nnx.cached_partial(nnx.jit)`` and our split-once step."""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from caco_jax.benchmark.jax_steps import JaxSetup, build_jax, make_model, synthetic_batch
from caco_jax.benchmark.options import Options
from caco_jax.benchmark.timing import timed
from caco_jax.data.augment import augment_batch
from caco_jax.training import parallel

OURS = "jax.jit, split once (ours)"


def per_call(calls: dict[str, Callable[[], Any]], opts: Options, n: int) -> dict[str, dict[str, float]]:
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
        first[name] = timed(functools.partial(run, call, 1))[1]
        run(call, opts.warmup)
    issue: dict[str, list[float]] = {name: [] for name in calls}
    total: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(opts.windows):
        for name, call in calls.items():
            t0 = time.perf_counter()
            issue[name].append(run(call, n))
            total[name].append(time.perf_counter() - t0)
    return {
        name: {
            "compile_s": first[name],
            "ms": 1e3 * statistics.median(total[name]) / n,
            "ms_min": 1e3 * min(total[name]) / n,
            "issue_ms": 1e3 * statistics.median(issue[name]) / n,
        }
        for name in calls
    }


def measure_dispatch_overhead(
    config: ml_collections.ConfigDict, opts: Options, mesh: Any, variant: str
) -> dict[str, Any]:
    """Per-call cost of nnx.jit, nnx.cached_partial(nnx.jit) and our split-once jax.jit step.

    Same model (``variant``, float32), optimiser, loss and augmentation, two ways:

    * ``step``: the whole training step on a tiny input (batch ``overhead_batch``,
      ``overhead_image_size`` px), so that host overhead is a visible part of it; ours is
      the trainer's step from ``build_steps``, the nnx ones the same computation written
      against the module (``nnx.value_and_grad``, ``nnx.Optimizer``);
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
    setup = build_jax(
        config, variant, "float32", batch_size=b, image_size=size, load_size=size, mesh=mesh, seed=opts.seed
    )
    batch = synthetic_batch(b, size, mesh, seed=opts.seed)
    # A model of its own: the state our step donates may share buffers with the model it was split from.
    model = make_model(config, variant, "float32", setup.depthwise, opts.seed)
    model.train()
    optimizer = nnx.Optimizer(model, setup.tx, wrt=nnx.Param)
    wrappers = _wrappers(setup, batch, model, optimizer, mesh, jax.random.key(opts.seed), size)
    results = _per_call_with_overheads(wrappers, opts)
    return {
        "variant": variant,
        "arch": config.model.arch,
        "depthwise": setup.depthwise,
        "batch_size": b,
        "image_size": size,
        "num_param_arrays": len(jax.tree.leaves(setup.state.params)),
        "num_state_arrays": len(jax.tree.leaves(setup.state)),
        "wrappers": results,
    }


def _nnx_functions(setup: JaxSetup, size: int) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """``nnx.jit`` functions of (model, optimizer, images, labels, class_weights, key): the trainer's step
    written against the module, and a no-op that computes nothing."""
    from flax import nnx

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

    return nnx_step, nnx_noop


def _jax_noop(mesh: Any) -> Callable[..., Any]:
    """Our path with no computation: the trainer step's signature, shardings and donation (pure wrapper overhead
    is what is compared)."""
    repl = parallel.replicated(mesh)
    return jax.jit(
        lambda state, batch, class_weights: (state, jnp.zeros((), jnp.float32)),
        in_shardings=(repl, parallel.data_sharding(mesh), repl),
        out_shardings=(repl, repl),
        donate_argnums=(0,),
    )


def _wrappers(
    setup: JaxSetup, batch: dict[str, Any], model: Any, optimizer: Any, mesh: Any, key: Any, size: int
) -> dict[str, dict[str, Callable[[], Any]]]:
    """Wrapper name -> {"step": call, "noop": call}, each call taking no arguments."""
    from flax import nnx

    nnx_step, nnx_noop = _nnx_functions(setup, size)
    jax_noop = _jax_noop(mesh)
    images, labels, w = batch["image"], batch["label"], setup.weights
    cached_step = nnx.cached_partial(nnx_step, model, optimizer)
    cached_noop = nnx.cached_partial(nnx_noop, model, optimizer)

    def ours(fn: Callable[..., Any]) -> Callable[[], Any]:
        def call() -> Any:
            setup.state, out = fn(setup.state, batch, w)
            return out

        return call

    assert setup.steps.train is not None, "build_jax builds the steps with an optimiser"
    return {
        OURS: {"step": ours(setup.steps.train), "noop": ours(jax_noop)},
        "nnx.jit": {
            "step": lambda: nnx_step(model, optimizer, images, labels, w, key),
            "noop": lambda: nnx_noop(model, optimizer, images, labels, w, key),
        },
        "nnx.cached_partial(nnx.jit)": {
            "step": lambda: cached_step(images, labels, w, key),
            "noop": lambda: cached_noop(images, labels, w, key),
        },
    }


def _per_call_with_overheads(
    wrappers: dict[str, dict[str, Callable[[], Any]]], opts: Options
) -> dict[str, dict[str, Any]]:
    """:func:`per_call` of every wrapper's step and no-op, each with its overhead (ms) over ours."""
    steps = per_call({name: w["step"] for name, w in wrappers.items()}, opts, opts.steps)
    noops = per_call({name: w["noop"] for name, w in wrappers.items()}, opts, max(opts.steps, 50))
    results: dict[str, dict[str, Any]] = {name: {"step": steps[name], "noop": noops[name]} for name in wrappers}
    base = results[OURS]
    for r in results.values():
        r["step_overhead_ms"] = r["step"]["ms"] - base["step"]["ms"]
        r["noop_overhead_ms"] = r["noop"]["ms"] - base["noop"]["ms"]
    return results
