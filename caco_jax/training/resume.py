"""Resuming a run: the config fields it must share with the checkpoint, what the loop carries
besides the train state (:class:`Progress`), and restoring both from the newest good checkpoint
(the best weights going back into ``best/``)."""

from __future__ import annotations

import dataclasses
import math
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from caco_jax.errors import ConfigError
from caco_jax.evaluation.metrics import TrainMetrics
from caco_jax.runs.weights import WeightsWriter, state_weights
from caco_jax.runs.workspace import load_config
from caco_jax.training import parallel
from caco_jax.training.checkpoints import Checkpointer
from caco_jax.training.run import Run
from caco_jax.training.steps import TrainState, init_state

# Config fields a resumed run must share with the run that wrote the checkpoint.
_RESUME_KEYS = (
    "model.arch",
    "model.attention",
    "model.ca_activation",
    "model.attention_init",
    "data.name",
    "data.split_by",
    "data.split_seed",
    "data.offline.mode",
    "data.offline.target",
    "data.offline.multiple",
    "data.offline.seed",
    "data.sampling",
    "data.image_size",
    "data.color_constancy",
    "data.color_constancy_p",
    "data.fov_crop",
    "batch_size",
    "optimizer.ema_decay",
    "seed",
)


def _get(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = cfg[part]
    return cfg


def check_resume_config(workdir: pathlib.Path, config: ml_collections.ConfigDict) -> None:
    """A ConfigError when ``workdir`` holds checkpoints written with another setup (a workdir without
    checkpoints has nothing to resume: any config may start there)."""
    checkpoints = workdir / "checkpoints"
    if not (workdir / "config.json").is_file() or not (
        checkpoints.is_dir() and any(p.name.isdigit() for p in checkpoints.iterdir())
    ):
        return
    old = load_config(workdir)
    diffs = [
        f"{key}: checkpoint {_get(old, key)!r}, now {_get(config, key)!r}"
        for key in _RESUME_KEYS
        if _get(old, key) != _get(config, key)
    ]
    if diffs:
        raise ConfigError(
            f"{workdir} holds a run with a different setup ({'; '.join(diffs)}); resume with the original "
            "values or start a new --workdir"
        )


@dataclasses.dataclass
class Progress:
    """What the loop carries besides the train state (saved in every checkpoint's metadata)."""

    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    best_bacc: float = -math.inf
    best: dict[str, Any] | None = None  # metadata of the best weights so far (epoch, step, val_bacc, ...)
    best_weights: dict[str, Any] | None = None  # those weights (host arrays), saved in every checkpoint
    last_saved: int | None = None  # step of the newest complete checkpoint
    pending: list[TrainMetrics] = dataclasses.field(default_factory=list)  # since the last log
    epoch_metrics: TrainMetrics | None = None
    epoch_start: tuple[float, int] = (0.0, 0)  # (time, step) the epoch began

    def meta(self, epoch: int) -> dict[str, Any]:
        """What a checkpoint records besides the state: mid-epoch, the sums of the epoch's training
        metrics so far, so that a resumed epoch reports all of its steps; between two log rows, the sums
        of the steps since the last row, so that the next row is the uninterrupted run's."""
        sums = None if self.epoch_metrics is None else metric_sums(self.epoch_metrics)
        assert len(self.pending) <= 1, "merge the pending steps before a checkpoint"
        pending = metric_sums(self.pending[0]) if self.pending else None
        return {"history": self.history, "best_bacc": self.best_bacc, "epoch": epoch, "best": self.best} | {
            "epoch_metrics": sums,
            "pending_metrics": pending,
        }


def metric_sums(metrics: TrainMetrics) -> dict[str, dict[str, list[Any]]]:
    """The totals and counts that make up ``metrics`` as JSON ([value, dtype]; float32 values are exact)."""
    out = {}
    for field in dataclasses.fields(metrics):
        part = getattr(metrics, field.name)
        values = {f.name: np.asarray(getattr(part, f.name)) for f in dataclasses.fields(part)}
        out[field.name] = {k: [v.item(), str(v.dtype)] for k, v in values.items()}
    return out


def metrics_from_sums(sums: dict[str, dict[str, list[Any]]]) -> TrainMetrics:
    """The inverse of :func:`metric_sums`: merging on from it gives what merging on from the original gives."""
    empty = TrainMetrics.empty()
    parts = {
        name: getattr(empty, name).replace(**{k: jnp.asarray(v, dtype) for k, (v, dtype) in values.items()})
        for name, values in sums.items()
    }
    return empty.replace(**parts)


def restore_or_init(run: Run, ckpt: Checkpointer, train_iter: Any, best: WeightsWriter) -> tuple[TrainState, Progress]:
    """The newest checkpoint of the workdir that restores (state, data position, history, best
    weights, which go back into ``best/``), or a fresh start. Damaged checkpoints are skipped."""
    progress = Progress()
    fresh = jax.device_put(
        init_state(run.model_def, run.tx, run.config.seed, ema=run.config.optimizer.ema_decay > 0),
        parallel.replicated(run.mesh),
    )
    template = state_weights(*fresh.eval_weights())
    restored = ckpt.restore_newest(fresh, template, accept=lambda r: train_iter.set_state(r.data), log=run.runlog.info)
    if restored is None:
        return fresh, progress
    start, meta = restored.step, restored.meta
    run.runlog.forget_after(start)  # rows logged after the checkpoint are about to be logged again
    progress.history, progress.best_bacc, progress.last_saved = meta["history"], meta["best_bacc"], start
    if meta.get("epoch_metrics"):  # stopped mid-epoch: the epoch's metrics go on from its steps so far
        progress.epoch_metrics = metrics_from_sums(meta["epoch_metrics"])
    if meta.get("pending_metrics"):  # stopped between two log rows: the next row covers those steps too
        progress.pending = [metrics_from_sums(meta["pending_metrics"])]
    progress.best, progress.best_weights = meta["best"], restored.best
    done = best.reconcile(progress.best, progress.best_weights, f"checkpoint {start}", start)
    if done:
        run.runlog.info(done)
    run.runlog.info(
        f"resumed from {ckpt.directory}/{start} ({where(start, run.steps_per_epoch, run.config.num_epochs)})"
    )
    return restored.state, progress


def where(step: int, steps_per_epoch: int, num_epochs: int) -> str:
    """A step counted as the epoch log lines count (epoch k/N is the k-th, from 1): 'after epoch 2/8'
    or 'step 10/20 of epoch 3/8'."""
    done, into = divmod(step, steps_per_epoch)
    if into == 0:
        return f"after epoch {done}/{num_epochs}"
    return f"step {into}/{steps_per_epoch} of epoch {done + 1}/{num_epochs}"
