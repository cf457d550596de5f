"""Running a jitted evaluation step over a whole split: logits gathered on the host, one sync; and a
trained model's own steps built for it (:func:`evaluate_trained`, caco-jax evaluate)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from caco_jax.data import pipeline, records
from caco_jax.data.constancy import ColorConstancy
from caco_jax.evaluation.metrics import EvalAccumulator
from caco_jax.evaluation.reports import evaluation_report
from caco_jax.training import parallel
from caco_jax.training.losses import make_loss
from caco_jax.training.steps import ModelDef, build_steps


def host_array(x: Any) -> np.ndarray:
    """A replicated (or single-process) jax.Array as numpy on this host."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return np.asarray(x.addressable_data(0))
    return np.asarray(x)


def collect(
    eval_step: Callable[..., dict[str, jax.Array]],
    params: Any,
    batch_stats: Any,
    batches: Iterable[Mapping[str, np.ndarray]],
    class_weights: np.ndarray | jax.Array,
    mesh: Mesh,
    class_names: Sequence[str],
) -> tuple[EvalAccumulator, float | None]:
    """Runs ``eval_step`` over every (process-local) batch: (the accumulated logits, mean loss).

    Padded rows are masked; one host sync at the end, not one per batch."""
    acc = EvalAccumulator(class_names)
    outputs = [eval_step(params, batch_stats, parallel.to_global(batch, mesh), class_weights) for batch in batches]
    loss_sum, n = 0.0, 0
    for out in outputs:
        mask = host_array(out["mask"])
        acc.update(host_array(out["logits"]), host_array(out["label"]), mask)
        count = int(mask.sum())
        if count:
            loss_sum += float(host_array(out["loss"])) * count
            n += count
    return acc, (loss_sum / n if n else None)


def run_eval(
    eval_step: Callable[..., dict[str, jax.Array]],
    params: Any,
    batch_stats: Any,
    batches: Iterable[Mapping[str, np.ndarray]],
    class_weights: np.ndarray | jax.Array,
    mesh: Mesh,
    class_names: Sequence[str],
    *,
    temperature: float | None = None,
) -> dict[str, Any]:
    """:func:`collect`, then :func:`evaluation_report`: the full report + loss and calibration."""
    acc, loss = collect(eval_step, params, batch_stats, batches, class_weights, mesh, class_names)
    return evaluation_report(acc, loss, temperature)


def evaluate_trained(
    config: Any,
    model: Any,
    meta: Mapping[str, Any],
    source: records.Source,
    *,
    batch_size: int,
    tta: bool = False,
) -> tuple[EvalAccumulator, float | None]:
    """A trained model (:func:`caco_jax.runs.loading.load_trained`: its run's ``config``, the weights'
    ``meta``) over every image of ``source``, in batches of ``batch_size`` on the run's devices, the 8
    dihedral views of each with ``tta``: (the accumulated logits, mean loss). The loss is the run's where
    the weights record the training split's class counts (LDAM margins need them), else cross-entropy."""
    mesh = parallel.make_mesh(config.num_devices or None)
    parallel.check_batch_size(batch_size, mesh, "batch_size")
    class_names = meta["class_names"]
    counts = meta.get("train_class_counts")
    loss_cfg = config.loss if counts else config.loss.copy_and_resolve_references()
    if not counts:
        loss_cfg.name, loss_cfg.drw_epoch = "ce", -1
    loss = make_loss(loss_cfg, counts, num_classes=len(class_names))
    model_def = ModelDef(model)
    steps = build_steps(model_def, mesh, loss=loss, color=ColorConstancy.from_config(config.data))
    repl = parallel.replicated(mesh)
    params, stats = jax.device_put((model_def.init_params, model_def.init_batch_stats), repl)
    batches = pipeline.eval_iterator(source, batch_size=batch_size, image_size=config.data.image_size)
    weights = jax.device_put(np.ones(len(class_names), np.float32), repl)
    evaluate = steps.eval_tta if tta else steps.eval
    assert evaluate is not None  # built with a loss
    return collect(evaluate, params, stats, batches, weights, mesh, class_names)
