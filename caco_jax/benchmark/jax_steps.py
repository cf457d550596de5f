"""caco-jax rows: the trainer's own jitted steps (``caco_jax.training.steps.build_steps``) on synthetic on-device input.

Per attention variant x compute dtype x depthwise implementation: training (on-device
augmentation from uint8, forward, backward, AdamW, BatchNorm updates), evaluation at the
batch size (the evaluation step) and batch-1 latency (the predict step). This module
compiles and warms up; the timed rounds are :func:`timing.time_rows`'s.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np

from caco_jax.benchmark.options import Options
from caco_jax.benchmark.timing import Timed, timed
from caco_jax.data.augment import AugmentConfig
from caco_jax.data.classes import HAM10000_COUNTS, NUM_CLASSES
from caco_jax.models import count_params, model_from_config
from caco_jax.models.depthwise import resolve as resolve_depthwise
from caco_jax.training import parallel
from caco_jax.training.losses import make_loss
from caco_jax.training.steps import ModelDef, Steps, build_steps, init_state, make_optimizer


@dataclasses.dataclass
class JaxSetup:
    """One model variant/dtype/depthwise with the trainer's jitted steps and a live (donated) state."""

    variant: str
    dtype: str
    depthwise: str
    model_def: ModelDef
    tx: Any
    loss: Any
    aug: AugmentConfig
    steps: Steps
    state: Any
    weights: jax.Array
    mesh: Any
    batch_size: int
    image_size: int
    load_size: int
    num_params: int


def model_config(
    config: ml_collections.ConfigDict, *, variant: str, dtype: str, depthwise: str
) -> ml_collections.ConfigDict:
    """The config's ``model`` section with the benchmarked variant, dtype and depthwise implementation."""
    cfg = config.model.copy_and_resolve_references()
    with cfg.unlocked():
        cfg.attention, cfg.dtype, cfg.depthwise = variant, dtype, depthwise
    return cfg


def make_model(config: ml_collections.ConfigDict, variant: str, dtype: str, depthwise: str, seed: int = 0) -> Any:
    """The NNX model ``caco_jax.training.loop`` would build for this variant, dtype and depthwise implementation."""
    return model_from_config(
        model_config(config, variant=variant, dtype=dtype, depthwise=depthwise), num_classes=NUM_CLASSES, seed=seed
    )


def build_jax(
    config: ml_collections.ConfigDict,
    variant: str,
    dtype: str,
    *,
    batch_size: int,
    image_size: int,
    load_size: int,
    mesh: Any,
    seed: int = 0,
    depthwise: str | None = None,
    augment: bool = True,
) -> JaxSetup:
    """Model, optimiser, loss and the steps, built as ``caco_jax.training.loop`` builds them (``build_steps``)."""
    dw = resolve_depthwise(depthwise or config.model.depthwise)
    model = make_model(config, variant, dtype, dw, seed)
    model_def = ModelDef(model)
    tx = make_optimizer(config.optimizer, model_def.init_params, steps_per_epoch=1, num_epochs=1)
    loss = make_loss(config.loss, np.asarray(HAM10000_COUNTS))
    aug = AugmentConfig.from_config(config.data.augment) if augment else AugmentConfig.none()
    steps = build_steps(model_def, mesh, tx=tx, loss=loss, aug=aug, image_size=image_size)
    repl = parallel.replicated(mesh)
    state = jax.device_put(init_state(model_def, tx, seed), repl)
    weights = jax.device_put(loss.class_weights(0), repl)
    return JaxSetup(
        variant,
        dtype,
        dw,
        model_def,
        tx,
        loss,
        aug,
        steps,
        state,
        weights,
        mesh,
        batch_size,
        image_size,
        load_size,
        count_params(model),
    )


def synthetic_batch(
    batch_size: int,
    size: int | tuple[int, int],
    mesh: Any,
    *,
    seed: int = 0,
    mask: bool = False,
    leading: tuple[int, ...] = (),
) -> dict[str, jax.Array]:
    """Random uint8 images and labels, already on the device(s) (sharded as the trainer's batches).

    ``leading``: extra leading axes (K stacked batches for several steps per dispatch).
    """
    from jax.sharding import NamedSharding, PartitionSpec as P

    rng = np.random.default_rng(seed)
    shape = (*leading, batch_size)
    h, w = (size, size) if isinstance(size, int) else size
    batch: dict[str, np.ndarray] = {
        "image": rng.integers(0, 256, (*shape, h, w, 3), dtype=np.uint8),
        "label": rng.integers(0, NUM_CLASSES, shape, dtype=np.int32),
    }
    if mask:
        batch["mask"] = np.ones(shape, bool)
    if not leading:
        return parallel.to_global(batch, mesh)
    return jax.device_put(batch, NamedSharding(mesh, P(*([None] * len(leading)), parallel.AXIS)))


def multi_step(train_step: Callable[..., Any]) -> Callable[..., Any]:
    """K steps in one dispatch: ``lax.scan`` of the trainer's jitted step over batches [K, B, ...].

    The inner step keeps its own shardings (a nested jit); the outer jit only donates the state.
    """

    def run(state: Any, batches: dict[str, jax.Array], class_weights: jax.Array):
        return jax.lax.scan(lambda s, b: train_step(s, b, class_weights), state, batches)

    return jax.jit(run, donate_argnums=(0,))


def train_window(
    setup: JaxSetup, step: Callable[..., Any], batch: dict[str, jax.Array], calls: int
) -> Callable[[], None]:
    """``calls`` calls of ``step`` chaining the (donated) state, then a synchronisation."""

    def window() -> None:
        state, metrics = setup.state, None
        for _ in range(calls):
            state, metrics = step(state, batch, setup.weights)
        setup.state = state
        jax.block_until_ready((state, metrics))

    return window


def eval_window(setup: JaxSetup, batch: dict[str, jax.Array], calls: int) -> Callable[[], None]:
    evaluate = setup.steps.eval
    assert evaluate is not None, "build_jax builds the steps with a loss"

    def window() -> None:
        out = None
        for _ in range(calls):
            out = evaluate(setup.state.params, setup.state.batch_stats, batch, setup.weights)
        jax.block_until_ready(out)

    return window


def predict_call(setup: JaxSetup, images: jax.Array) -> Callable[[], None]:
    def call() -> None:
        jax.block_until_ready(setup.steps.predict(setup.state.params, setup.state.batch_stats, images, np.float32(1.0)))

    return call


def prepare_jax(
    config: ml_collections.ConfigDict, opts: Options, mesh: Any, log: Callable[[str], None] = print
) -> tuple[dict[tuple, Timed], dict[tuple[str, str, str], JaxSetup]]:
    """Builds, compiles (first call = compile time) and warms up every caco-jax configuration.

    Returns the entries for the timed rounds, keyed ("caco-jax", variant, dtype, depthwise,
    steps per dispatch), and the live setups keyed (variant, dtype, depthwise).
    """
    load_size, b, k = opts.resolved_load_size(), opts.batch_size, opts.steps_per_dispatch
    batch = synthetic_batch(b, load_size, mesh, seed=opts.seed)
    stacked = synthetic_batch(b, load_size, mesh, seed=opts.seed, leading=(k,)) if k > 1 else None
    big = synthetic_batch(b, opts.image_size, mesh, seed=opts.seed, mask=True) if opts.eval else None
    one = synthetic_batch(1, opts.image_size, mesh, seed=opts.seed)["image"] if opts.eval else None
    entries: dict[tuple, Timed] = {}
    setups: dict[tuple[str, str, str], JaxSetup] = {}
    for variant in opts.variants:
        for dtype in opts.dtypes:
            for impl in dict.fromkeys(resolve_depthwise(i) for i in opts.depthwise):
                log(f"caco-jax {variant} {dtype} depthwise={impl}: building and compiling the steps ...")
                setup = build_jax(
                    config,
                    variant,
                    dtype,
                    batch_size=b,
                    image_size=opts.image_size,
                    load_size=load_size,
                    mesh=mesh,
                    seed=opts.seed,
                    depthwise=impl,
                    augment=opts.augment,
                )
                setups[(variant, dtype, impl)] = setup
                train = setup.steps.train
                assert train is not None, "build_jax builds the steps with an optimiser"
                head = {
                    "framework": "caco-jax",
                    "model": f"mobilenetv3_{config.model.arch}-{variant}",
                    "variant": variant,
                    "dtype": dtype,
                    "depthwise": impl,
                    "num_params": setup.num_params,
                }
                row = head | {"mode": f"{dtype}, depthwise {impl}", "steps_per_dispatch": 1}
                _, row["compile_s"] = timed(train_window(setup, train, batch, 1))
                train_window(setup, train, batch, opts.warmup)()
                entry = Timed(row, train=(train_window(setup, train, batch, opts.steps), opts.steps * b), batch_size=b)
                log(f"  train step compiled in {row['compile_s']:.1f} s")
                if opts.eval:
                    assert big is not None and one is not None
                    _, row["eval_compile_s"] = timed(eval_window(setup, big, 1))
                    eval_window(setup, big, opts.warmup)()
                    _, row["latency_compile_s"] = timed(predict_call(setup, one))
                    for _ in range(opts.warmup):
                        predict_call(setup, one)()
                    entry.eval = (eval_window(setup, big, opts.steps), opts.steps * b)
                    entry.latency = predict_call(setup, one)
                entries[("caco-jax", variant, dtype, impl, 1)] = entry
                if k > 1:
                    assert stacked is not None
                    multi = multi_step(train)
                    calls = max(1, opts.steps // k)
                    multi_row = head | {
                        "mode": f"{dtype}, depthwise {impl}, {k} steps/dispatch",
                        "steps_per_dispatch": k,
                    }
                    _, multi_row["compile_s"] = timed(train_window(setup, multi, stacked, 1))
                    train_window(setup, multi, stacked, max(1, opts.warmup // k))()
                    entries[("caco-jax", variant, dtype, impl, k)] = Timed(
                        multi_row, train=(train_window(setup, multi, stacked, calls), calls * k * b), batch_size=b
                    )
    return entries, setups
