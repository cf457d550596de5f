"""Running a jitted evaluation step over a whole split: logits gathered on the host, one sync."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from caco_jax.evaluation.metrics import EvalAccumulator
from caco_jax.evaluation.reports import evaluation_report
from caco_jax.training import parallel


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
