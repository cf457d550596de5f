"""``train_and_evaluate(config, workdir)``: the whole training run.

One flat loop over optimiser steps; periodic work (log, end-of-epoch validation,
checkpoint) happens when its step comes. Data-parallel over every device of a
('data',) mesh (``parallel.py``), one jit-compiled step with the state donated,
orbax checkpoints holding model, optimiser, step, RNG and data-iterator position,
automatic resume from the same workdir, SIGTERM -> checkpoint and clean exit, and at
the end a temperature fitted on the validation split and a report on the test split
(with calibration and a Grad-CAM gallery).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import pathlib
import signal
import time
from collections.abc import Iterator
from typing import Any, TypeVar

import jax
import ml_collections
from tqdm import tqdm

from caco_jax import files
from caco_jax.data import pipeline
from caco_jax.data.augment import AugmentConfig
from caco_jax.errors import RunDirError
from caco_jax.runs import faults, lock
from caco_jax.runs.weights import WeightsWriter, state_weights
from caco_jax.runs.workspace import save_config
from caco_jax.training import parallel
from caco_jax.training.checkpoints import Checkpointer
from caco_jax.training.finish import final_test
from caco_jax.training.resume import Progress, check_resume_config, restore_or_init
from caco_jax.training.run import Run, setup
from caco_jax.training.steps import TrainState, all_finite

log = logging.getLogger("caco_jax.training.loop")


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


class _Stop:
    """SIGTERM/SIGINT -> finish the current step, checkpoint, exit cleanly."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _Stop:
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum: int, _frame: Any) -> None:
        self.signal = signum

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _flush(run: Run, progress: Progress, step: int, *, keep: bool = False) -> dict[str, float]:
    """Host sync: averages the pending step metrics; stops on a non-finite loss. With ``keep`` (before a
    checkpoint, which carries them) the pending steps stay pending, merged into one, for the next log row."""
    if not progress.pending:
        return {}
    merged = progress.pending[0]
    for m in progress.pending[1:]:
        merged = merged.merge(m)
    progress.pending[:] = [merged] if keep else []
    values = {k: float(v) for k, v in merged.compute().items()}
    if not math.isfinite(values["loss"]):
        where = (
            f"the last good checkpoint ({run.workdir / 'checkpoints'}/{progress.last_saved}) is intact"
            if progress.last_saved is not None
            else "no checkpoint had been written yet"
        )
        raise NonFiniteLossError(
            f"training loss is {values['loss']} at step {step} (epoch {step // run.steps_per_epoch}); stopped. "
            f"{where}: lower --config.optimizer.learning_rate, use --config.model.dtype=float32, or check the data, "
            "then rerun the same command"
        )
    return values


def log_progress(run: Run, progress: Progress, step: int, bar: tqdm) -> None:
    values = _flush(run, progress, step)
    t0, n0 = progress.epoch_start
    rate = (step - n0) * run.config.batch_size / max(time.perf_counter() - t0, 1e-9)
    run.runlog.scalars(step, {f"train/{k}": v for k, v in values.items()} | {"train/images_per_sec": rate})
    bar.set_postfix(loss=f"{values['loss']:.4f}", img_s=f"{rate:.0f}")


def end_of_epoch(
    run: Run, state: TrainState, progress: Progress, step: int, validation: pipeline.EvalSet, best: WeightsWriter
) -> None:
    """Validation, the epoch's history row and logs, and (in the background) the best weights."""
    epoch = step // run.steps_per_epoch - 1
    _flush(run, progress, step)
    assert progress.epoch_metrics is not None  # an epoch has at least one step
    train = {k: float(v) for k, v in progress.epoch_metrics.compute().items()}
    t0, n0 = progress.epoch_start
    train_seconds = time.perf_counter() - t0
    tv = time.perf_counter()
    params, stats = state.eval_weights()
    val = run.evaluate(params, stats, validation, epoch)
    val_seconds = time.perf_counter() - tv
    row = {
        "epoch": epoch + 1,
        "step": step,
        "train_loss": train["loss"],
        "train_accuracy": train["accuracy"],
        "val_loss": val["loss"],
        "val_accuracy": val["accuracy"],
        "val_bacc": val["bacc"],
        "val_paper_bacc": val["paper_bacc"],
        "val_macro_auc": val.get("macro_auc"),
        "epoch_seconds": train_seconds,
        "val_seconds": val_seconds,
        "images_per_sec": (step - n0) * run.config.batch_size / train_seconds if train_seconds > 0 else 0.0,
    }
    ts = time.perf_counter()
    if row["val_bacc"] > progress.best_bacc:
        progress.best_bacc = row["val_bacc"]
        progress.best = {
            "epoch": epoch + 1,
            "step": step,
            "val_bacc": row["val_bacc"],
            "val_accuracy": row["val_accuracy"],
            "train_class_counts": run.counts.tolist(),
            "class_names": list(run.class_names),
            "source": f"best validation BACC of {run.workdir}",
        }
        progress.best_weights = state_weights(params, stats)  # host copies: every checkpoint holds them
        best.save(progress.best_weights, progress.best)
    row["save_seconds"] = time.perf_counter() - ts
    progress.history.append(row)
    run.runlog.scalars(step, {k: v for k, v in row.items() if k not in ("epoch", "step")}, kind="epoch")
    run.runlog.info(
        f"epoch {epoch + 1}/{run.config.num_epochs}: train loss {row['train_loss']:.4f} acc "
        f"{row['train_accuracy']:.4f} | val loss {row['val_loss']:.4f} acc {row['val_accuracy']:.4f} "
        f"BACC {row['val_bacc']:.4f} | {row['images_per_sec']:.0f} img/s | host: validation "
        f"{row['val_seconds']:.1f} s, best save {row['save_seconds']:.2f} s"
    )
    progress.epoch_metrics = None
    progress.epoch_start = (time.perf_counter(), step)


def committed(ckpt: Checkpointer, best: WeightsWriter, *, block: bool = False) -> None:
    """Once the pending checkpoint has committed (``block``: wait for it), the best weights it records
    move into ``best/``. A failed save raises ``CheckpointSaveError`` here, at the first step after it."""
    step = ckpt.poll(block=block)
    if step is not None:
        faults.point("checkpoint.committed")
        best.wait(upto=step)


def save_checkpoint(
    run: Run, ckpt: Checkpointer, best: WeightsWriter, state: TrainState, train_iter: Any, progress: Progress, step: int
) -> None:
    """A checkpoint of everything, the best weights so far included (asynchronous); never of
    non-finite parameters."""
    if progress.last_saved == step:
        return
    epoch = step // run.steps_per_epoch
    if not bool(all_finite(state.params)):
        raise NonFiniteLossError(
            f"parameters became non-finite by step {step} (epoch {epoch}); not saved, so the last good "
            f"checkpoint ({ckpt.directory}/{progress.last_saved}) stays the newest: lower "
            "--config.optimizer.learning_rate and rerun the same command"
        )
    committed(ckpt, best, block=True)
    ckpt.save(step, state, train_iter.get_state(), progress.meta(epoch), best=progress.best_weights)
    progress.last_saved = step


def train_loop(
    run: Run,
    ckpt: Checkpointer,
    best: WeightsWriter,
    state: TrainState,
    progress: Progress,
    train_iter: Any,
    validation: pipeline.EvalSet,
) -> tuple[TrainState, int, str]:
    """Steps until the end of training or a stop signal: (state, step, 'finished' | 'interrupted').

    The best weights of a new best epoch go to ``best.partial`` at once and into every later
    checkpoint; ``best/`` takes them once the checkpoint recording them has committed."""
    config = run.config
    step = int(progress.last_saved or 0)
    progress.epoch_start = (time.perf_counter(), step)
    class_weights = None
    train_step = run.steps.train
    assert train_step is not None  # setup builds the steps with an optimiser
    bar = tqdm(
        total=run.total_steps,
        initial=step,
        unit="step",
        dynamic_ncols=True,
        disable=not config.progress_bar,
        desc="train",
    )
    try:
        with _Stop() as stop:
            while step < run.total_steps:
                if class_weights is None or step % run.steps_per_epoch == 0:
                    class_weights = run.class_weights(step // run.steps_per_epoch)
                batch = parallel.to_global(next(train_iter), run.mesh)
                state, metrics = train_step(state, batch, class_weights)
                step += 1
                bar.update(1)
                progress.pending.append(metrics)
                progress.epoch_metrics = (
                    metrics if progress.epoch_metrics is None else progress.epoch_metrics.merge(metrics)
                )
                committed(ckpt, best)
                epoch_done = step % run.steps_per_epoch == 0
                if step % config.log_every_steps == 0:
                    log_progress(run, progress, step, bar)
                if epoch_done:  # before any checkpoint of this step, so a resumed run never skips it
                    end_of_epoch(run, state, progress, step, validation, best)
                due = (
                    (epoch_done and (step // run.steps_per_epoch) % config.checkpoint.every_epochs == 0)
                    or (config.checkpoint.every_steps and step % config.checkpoint.every_steps == 0)
                    or step == run.total_steps
                    or stop.signal is not None
                )
                if due:
                    _flush(run, progress, step, keep=True)  # a resumed run logs these steps' row alike
                    save_checkpoint(run, ckpt, best, state, train_iter, progress, step)
                if stop.signal is not None:
                    committed(ckpt, best, block=True)
                    best.wait()
                    run.runlog.info(
                        f"stopped by signal {stop.signal} at step {step}; checkpoint saved in "
                        f"{ckpt.directory}; rerun the same command to resume"
                    )
                    return state, step, "interrupted"
        committed(ckpt, best, block=True)
        best.wait()
        return state, step, "finished"
    finally:
        bar.close()


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> dict[str, Any]:
    """Trains (resuming from ``workdir`` if it holds checkpoints), then reports on the test split.

    Returns a summary dict: ``status`` ('finished' or 'interrupted'), ``step``,
    ``history`` and, when finished, the test ``report`` and the written ``paths``.
    """
    workdir = pathlib.Path(workdir).resolve()
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # under a regular file, on a read-only disk, without permission
        raise RunDirError(
            f"cannot create --workdir {workdir}: {faults.reason(err)}; give a folder that can be created"
        ) from err
    parallel.initialize_distributed(config.distributed, **config.cluster)
    with lock.held(workdir, active=jax.process_index() == 0):  # one writer: a second train is refused
        return _train_and_evaluate(config, workdir)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> dict[str, Any]:
    check_resume_config(workdir, config)
    run = setup(config, workdir)
    try:
        if jax.process_index() == 0:  # once the data is found: a start that failed leaves no config to resume
            save_config(config, workdir)
        where = {"process_index": jax.process_index(), "process_count": jax.process_count()}
        train_iter = pipeline.train_iterator(
            run.splits["train"],
            batch_size=config.batch_size,
            load_size=config.data.load_size or None,
            seed=config.seed,
            num_workers=config.data.num_workers,
            cache=config.data.cache,
            sampling=config.data.sampling,
            recompression=AugmentConfig.from_config(config.data.augment).recompression,
            **where,
        )
        with _closing(WeightsWriter(workdir / "best")) as best:
            with _closing(Checkpointer(workdir / "checkpoints", keep=config.checkpoint.keep)) as ckpt:
                state, progress = restore_or_init(run, ckpt, train_iter, best)
                t_val = time.perf_counter()
                validation = pipeline.EvalSet(run.splits["validation"], config.data.image_size)  # decoded once
                run.runlog.info(
                    f"validation split decoded once: {len(validation)} images in {time.perf_counter() - t_val:.1f} s"
                )
                state, step, status = train_loop(run, ckpt, best, state, progress, train_iter, validation)
            result = {"status": status, "step": step, "history": progress.history}
            if status == "finished":
                run.runlog.info("training finished; evaluating the best checkpoint on the test split")
                report, paths = _finished(run, state, best, progress.history, validation)
                run.runlog.info(
                    f"test: accuracy {report['accuracy']:.4f}, BACC {report['bacc']:.4f}; report: "
                    f"{paths.get('md', 'written by process 0')}"
                )
                result |= {"report": report, "paths": paths}
        return result
    finally:
        run.runlog.close()


def _finished(
    run: Run, state: TrainState, best: WeightsWriter, history: list[dict[str, Any]], validation: pipeline.EvalSet
) -> tuple[dict, dict]:
    """``final_test``; a write it cannot make (a full disk, no permission) is one error line. Its files
    go through ``caco_jax.files.write_atomic``: each is whole or absent, no ``.tmp`` is left."""
    try:
        return final_test(run, state, best, history, validation)
    except OSError as err:
        if err.errno not in _WRITE_ERRORS:
            raise
        where = pathlib.Path(err.filename) if err.filename else run.workdir
        raise files.FileWriteError(files.failure("the end-of-training results", where, err)) from err


_WRITE_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG)
_Resource = TypeVar("_Resource", Checkpointer, WeightsWriter)


@contextlib.contextmanager
def _closing(resource: _Resource) -> Iterator[_Resource]:
    """Closes ``resource`` (its last save committed, or its error raised) at the end of the block; on
    the way out of an error, quietly: that error is the one to report."""
    try:
        yield resource
    except BaseException:
        with contextlib.suppress(Exception):
            resource.close()
        raise
    resource.close()
