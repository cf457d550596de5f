"""Train state, optimiser and the jit-compiled train / eval steps.

The NNX model is split once (``nnx.split``) into a static graph and plain pytrees of
parameters and BatchNorm statistics; the steps are pure functions of those pytrees,
so ``jax.jit`` never walks the module graph at call time and the state can be donated.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from caco_jax.data.augment import AugmentConfig, augment_batch, mix_batch, preprocess
from caco_jax.data.constancy import OFF, ColorConstancy
from caco_jax.evaluation.metrics import TrainMetrics
from caco_jax.evaluation.saliency import grad_cam
from caco_jax.training.losses import Loss

PyTree = Any


@flax.struct.dataclass
class TrainState:
    """Everything training needs to continue: saved and restored as one unit."""

    step: jax.Array  # int32 scalar: optimiser steps taken
    params: PyTree
    batch_stats: PyTree
    opt_state: PyTree
    rng: jax.Array  # uint32[2] base key; per-step keys are fold_in(rng, step)
    # Exponential moving average {'params', 'batch_stats'} of the weights, or None (off).
    ema: PyTree = None

    def eval_weights(self) -> tuple[PyTree, PyTree]:
        """(params, batch_stats) to evaluate and keep: the moving average when there is one."""
        if self.ema is not None:
            return self.ema["params"], self.ema["batch_stats"]
        return self.params, self.batch_stats


class ModelDef:
    """The static half of an NNX model: train/eval graphs and ``apply``."""

    train_graph: nnx.GraphDef[nnx.Module]

    def __init__(self, model: nnx.Module):
        model.train()
        # flax types split() with two or more filters as a variadic tuple; two filters give exactly three parts
        self.train_graph, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)  # type: ignore[misc]
        model.eval()
        self.eval_graph = nnx.graphdef(model)
        self.init_params = nnx.to_pure_dict(params)
        self.init_batch_stats = nnx.to_pure_dict(batch_stats)

    def apply(
        self, params: PyTree, batch_stats: PyTree, images: jax.Array, *, train: bool, rng: jax.Array | None = None
    ) -> tuple[jax.Array, PyTree]:
        """Logits and (in training) the updated BatchNorm statistics."""
        graph = self.train_graph if train else self.eval_graph
        model = nnx.merge(graph, params, batch_stats)
        rngs = None
        if train:
            if rng is None:
                raise ValueError("apply(train=True) needs rng, the dropout key")
            rngs = nnx.Rngs(dropout=rng)
        logits = model(images, rngs=rngs)
        new_stats = nnx.to_pure_dict(nnx.state(model, nnx.BatchStat)) if train else batch_stats
        return logits, new_stats


WEIGHT_DECAY_MASKS = ("all", "exclude_norm_bias")  # optimizer.weight_decay_mask
SCHEDULES = ("constant", "cosine")  # optimizer.schedule


def _expected(names: tuple[str, ...]) -> str:
    return " or ".join(map(repr, names))


def decay_mask(params: PyTree, mode: str) -> PyTree | None:
    """Which parameters get weight decay: 'all' (torch AdamW) or 'exclude_norm_bias'."""
    if mode not in WEIGHT_DECAY_MASKS:
        raise ValueError(f"unknown optimizer.weight_decay_mask {mode!r}; expected {_expected(WEIGHT_DECAY_MASKS)}")
    if mode == "all":
        return None

    def keep(path: tuple, _: Any) -> bool:
        names = [getattr(p, "key", getattr(p, "name", None)) for p in path]
        return not (names[-1] == "bias" or "bn" in names or "bn1" in names)

    return jax.tree_util.tree_map_with_path(keep, params)


def learning_rate_schedule(cfg: Any, steps_per_epoch: int, num_epochs: int) -> optax.Schedule:
    """'constant' (the paper) or 'cosine' (linear warmup, then cosine decay to 0)."""
    lr = cfg.learning_rate
    if cfg.schedule == "constant":
        return optax.constant_schedule(lr)
    if cfg.schedule == "cosine":
        total = max(1, steps_per_epoch * num_epochs)
        warmup = min(total - 1, int(cfg.warmup_epochs * steps_per_epoch))
        return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, total, end_value=0.0)
    raise ValueError(f"unknown optimizer.schedule {cfg.schedule!r}; expected {_expected(SCHEDULES)}")


def make_optimizer(cfg: Any, params: PyTree, steps_per_epoch: int, num_epochs: int) -> optax.GradientTransformation:
    """AdamW with decoupled weight decay, as torch.optim.AdamW (lr scales the decay too)."""
    return optax.adamw(
        learning_rate_schedule(cfg, steps_per_epoch, num_epochs),
        b1=cfg.b1,
        b2=cfg.b2,
        eps=cfg.eps,
        weight_decay=cfg.weight_decay,
        mask=decay_mask(params, cfg.weight_decay_mask),
    )


def init_state(model_def: ModelDef, tx: optax.GradientTransformation, seed: int, *, ema: bool = False) -> TrainState:
    params = model_def.init_params
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=model_def.init_batch_stats,
        opt_state=tx.init(params),
        rng=jax.random.key_data(jax.random.key(seed)),
        # copies: the state is donated, and one buffer may not be donated twice
        ema=jax.tree.map(jnp.array, {"params": params, "batch_stats": model_def.init_batch_stats}) if ema else None,
    )


def ema_update(ema: PyTree, new: PyTree, step: jax.Array, decay: float) -> PyTree:
    """One step of the weights' moving average; the decay ramps up as min(decay, (1 + t) / (10 + t))
    so that early, random weights fade quickly in short runs."""
    t = step.astype(jnp.float32)
    d = jnp.minimum(decay, (1.0 + t) / (10.0 + t))
    return jax.tree.map(lambda e, x: d * e + (1.0 - d) * x, ema, new)


def make_train_step(
    model_def: ModelDef,
    tx: optax.GradientTransformation,
    loss: Loss,
    aug: AugmentConfig,
    image_size: int,
    ema_decay: float = 0.0,
    color: ColorConstancy = OFF,
) -> Callable[[TrainState, dict[str, jax.Array], jax.Array], tuple[TrainState, TrainMetrics]]:
    """One optimiser step on a uint8 batch: augment (and mix) on device, forward, backward, AdamW,
    and the weights' moving average when ``ema_decay`` > 0; ``color``: the run's colour constancy."""

    def train_step(state: TrainState, batch: dict[str, jax.Array], class_weights: jax.Array):
        key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        aug_key, dropout_key, mix_key = jax.random.split(key, 3)
        images = augment_batch(aug_key, batch["image"], out_size=image_size, cfg=aug, color=color)
        images, lam = mix_batch(mix_key, images, aug)
        labels = batch["label"]
        mixing = aug.mixup_alpha > 0 or aug.cutmix_alpha > 0

        def loss_fn(params):
            logits, stats = model_def.apply(params, state.batch_stats, images, train=True, rng=dropout_key)
            value = loss(logits, labels, class_weights)
            if mixing:
                value = lam * value + (1.0 - lam) * loss(logits, labels[::-1], class_weights)
            return value, (logits, stats)

        (value, (logits, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = TrainMetrics.single_from_model_output(loss=value, logits=logits, labels=labels)
        ema = state.ema
        if ema_decay > 0:
            if ema is None:
                raise ValueError("ema_decay > 0 needs a train state made with init_state(..., ema=True)")
            ema = ema_update(ema, {"params": params, "batch_stats": stats}, state.step, ema_decay)
        new_state = dataclasses.replace(
            state, step=state.step + 1, params=params, batch_stats=stats, opt_state=opt_state, ema=ema
        )
        return new_state, metrics

    return train_step


@jax.jit
def all_finite(tree: PyTree) -> jax.Array:
    """True when no leaf holds a NaN or an infinity."""
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


TTA_VIEWS = 8  # the dihedral group of the square: 4 rotations, each with and without a flip


def dihedral_views(images: jax.Array) -> jax.Array:
    """(V=8, B, S, S, C) views of square images (B, S, S, C): rot90 by k = 0..3 (counter-clockwise),
    each as is and flipped left-right. View 0 is the image itself."""
    if images.shape[1] != images.shape[2]:
        raise ValueError(f"test-time augmentation needs square images, got {images.shape[1]}x{images.shape[2]}")
    views = []
    for k in range(4):
        rotated = jnp.rot90(images, k, axes=(1, 2))
        views += [rotated, rotated[:, :, ::-1]]
    return jnp.stack(views)


def _view_logits(
    model_def: ModelDef, params: PyTree, batch_stats: PyTree, images: jax.Array, color: ColorConstancy
) -> jax.Array:
    """Logits (B, V, C) of every dihedral view; one view at a time (``lax.map``: one traced forward pass)."""
    views = dihedral_views(preprocess(images, color))
    logits = jax.lax.map(lambda x: model_def.apply(params, batch_stats, x, train=False)[0], views)
    return jnp.swapaxes(logits, 0, 1)


def make_eval_step(
    model_def: ModelDef, loss: Loss, *, tta: bool = False, color: ColorConstancy = OFF
) -> Callable[[PyTree, PyTree, dict[str, jax.Array], jax.Array], dict[str, jax.Array]]:
    """(params, batch_stats, batch, class_weights) -> {'logits', 'loss' (masked mean), 'label', 'mask'}.

    Labels and mask come back with the logits so that, replicated, every process holds
    the whole batch's rows (multi-host evaluation). With ``tta`` the logits are those of
    every dihedral view, (B, V, C), view 0 the plain image (the loss is view 0's). Images go through
    ``preprocess`` with the run's colour constancy ``color``, as in every step below."""

    def eval_step(params, batch_stats, batch, class_weights):
        if tta:
            logits = _view_logits(model_def, params, batch_stats, batch["image"], color)
            plain = logits[:, 0]
        else:
            logits, _ = model_def.apply(params, batch_stats, preprocess(batch["image"], color), train=False)
            plain = logits
        return {
            "logits": logits,
            "loss": loss(plain, batch["label"], class_weights, mask=batch["mask"]),
            "label": batch["label"],
            "mask": batch["mask"],
        }

    return eval_step


def make_predict_step(
    model_def: ModelDef, *, tta: bool = False, color: ColorConstancy = OFF
) -> Callable[..., jax.Array]:
    """(params, batch_stats, uint8 images, temperature) -> class probabilities softmax(logits / T)
    (evaluation mode); with ``tta``, the mean of the dihedral views' probabilities."""

    def predict_step(params, batch_stats, images, temperature):
        if tta:
            logits = _view_logits(model_def, params, batch_stats, images, color)
            return jnp.mean(jax.nn.softmax(logits / temperature, axis=-1), axis=1)
        logits, _ = model_def.apply(params, batch_stats, preprocess(images, color), train=False)
        return jax.nn.softmax(logits / temperature, axis=-1)

    return predict_step


def make_cam_step(model_def: ModelDef, *, color: ColorConstancy = OFF) -> Callable[..., dict[str, jax.Array]]:
    """(params, batch_stats, uint8 images, target int32 [B] (-1: the predicted class), temperature)
    -> {'probs' softmax(logits / T), 'class' explained, 'cam' [B, H, W] in [0, 1]} (Grad-CAM,
    ``caco_jax.evaluation.saliency``)."""

    def cam_step(params, batch_stats, images, target, temperature):
        model = nnx.merge(model_def.eval_graph, params, batch_stats)
        logits, cls, cam = grad_cam(model, preprocess(images, color), target)
        return {"probs": jax.nn.softmax(logits / temperature, axis=-1), "class": cls, "cam": cam}

    return cam_step


def make_embed_step(model_def: ModelDef, *, color: ColorConstancy = OFF) -> Callable[..., dict[str, jax.Array]]:
    """(params, batch_stats, batch {'image' uint8, 'label', 'mask'}) -> {'logits' [B, C], 'pooled' [B, F]
    (the pooled backbone features the head reads), 'hidden' [B, H] (the head's hidden activation),
    'label', 'mask'}, evaluation mode, float32: what the out-of-distribution guard scores
    (``caco_jax.evaluation.ood_score``)."""

    def embed_step(params, batch_stats, batch):
        model = nnx.merge(model_def.eval_graph, params, batch_stats)
        pooled = model.features(preprocess(batch["image"], color))
        hidden = model.hidden(pooled)
        logits = model.classifier(hidden).astype(jnp.float32)
        return {
            "logits": logits,
            "pooled": pooled,
            "hidden": hidden.astype(jnp.float32),
            "label": batch["label"],
            "mask": batch["mask"],
        }

    return embed_step


@dataclasses.dataclass(frozen=True)
class Steps:
    """The jitted steps of one model on one mesh: batches sharded along 'data', state replicated.

    ``train(state, batch, class_weights) -> (state, metrics)`` donates ``state``;
    ``eval(params, batch_stats, batch, class_weights) -> {logits, loss, label, mask}`` (replicated),
    ``eval_tta`` the same with the logits of the 8 dihedral views (B, 8, C);
    ``predict(params, batch_stats, images, temperature) -> probabilities``, ``predict_tta`` averaged
    over the views; ``cam(params, batch_stats, images, target, temperature) -> {probs, class, cam}``
    (Grad-CAM); ``embed(params, batch_stats, batch) -> {logits, pooled, hidden, label, mask}`` (the OOD
    guard's inputs). ``train``/``eval``/``eval_tta`` are None when built without an optimiser / loss.
    jax.jit compiles on first use, so a step never called costs nothing. Pass the temperature
    as a float32 scalar (``np.float32``) so every call shares one compilation.
    """

    train: Callable[..., Any] | None
    eval: Callable[..., Any] | None
    predict: Callable[..., Any]
    predict_tta: Callable[..., Any]
    cam: Callable[..., Any]
    eval_tta: Callable[..., Any] | None = None
    embed: Callable[..., Any] | None = None


def build_steps(
    model_def: ModelDef,
    mesh: Any,
    *,
    tx: optax.GradientTransformation | None = None,
    loss: Loss | None = None,
    aug: AugmentConfig | None = None,
    image_size: int | None = None,
    ema_decay: float = 0.0,
    color: ColorConstancy = OFF,
) -> Steps:
    """The one place the steps are jitted, with their shardings and donation (train, evaluate,
    predict, the web app and the benchmark all use it). ``color``: the run's colour constancy
    (``ColorConstancy.from_config(config.data)``), applied by every step alike."""
    from caco_jax.training import parallel

    repl, data = parallel.replicated(mesh), parallel.data_sharding(mesh)
    train = None
    if tx is not None:
        if loss is None or aug is None or image_size is None:
            raise ValueError("a train step needs loss, aug and image_size")
        train = jax.jit(
            make_train_step(model_def, tx, loss, aug, image_size, ema_decay, color),
            in_shardings=(repl, data, repl),
            out_shardings=(repl, repl),
            donate_argnums=(0,),
        )
    evaluate = evaluate_tta = None
    if loss is not None:
        evaluate, evaluate_tta = (
            jax.jit(
                make_eval_step(model_def, loss, tta=tta, color=color),
                in_shardings=(repl, repl, data, repl),
                out_shardings=repl,
            )
            for tta in (False, True)
        )
    predict, predict_tta = (
        jax.jit(
            make_predict_step(model_def, tta=tta, color=color),
            in_shardings=(repl, repl, data, repl),
            out_shardings=repl,
        )
        for tta in (False, True)
    )
    cam = jax.jit(
        make_cam_step(model_def, color=color), in_shardings=(repl, repl, data, data, repl), out_shardings=repl
    )
    embed = jax.jit(make_embed_step(model_def, color=color), in_shardings=(repl, repl, data), out_shardings=repl)
    return Steps(
        train=train,
        eval=evaluate,
        predict=predict,
        eval_tta=evaluate_tta,
        predict_tta=predict_tta,
        cam=cam,
        embed=embed,
    )
