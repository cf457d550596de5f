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
import dataclasses
import json
import logging
import math
import pathlib
import signal
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from clu import parameter_overview
from tqdm import tqdm

from caco_jax.evaluation import calibration, decision, plots, predictions, saliency
from caco_jax.training import parallel
from caco_jax.training.checkpoints import Checkpointer
from caco_jax.data import leakage, pipeline
from caco_jax.data.augment import AugmentConfig
from caco_jax.training.evaluate import collect, host_array, run_eval
from caco_jax.evaluation.reports import evaluation_report, write_report
from caco_jax.training.losses import Loss, make_loss
from caco_jax.evaluation.metrics import TrainMetrics
from caco_jax.models import count_params, model_from_config
from caco_jax.training.run_log import RunLog
from caco_jax.training.steps import ModelDef, Steps, TrainState, all_finite, build_steps, init_state, make_optimizer
from caco_jax.trees import unflatten
from caco_jax.runs.weights import WeightsWriter, load_pretrained, read_weights, state_weights
from caco_jax.data.registry import open_data
from caco_jax.runs.workspace import save_config

log = logging.getLogger("caco_jax.training.loop")

# Config fields a resumed run must share with the run that wrote the checkpoint.
_RESUME_KEYS = ("model.arch", "model.attention", "model.ca_activation", "model.attention_init", "data.name",
                "data.split_by", "data.split_seed", "data.offline.mode", "data.offline.target",
                "data.offline.multiple", "data.offline.seed", "data.sampling", "data.image_size", "batch_size",
                "optimizer.ema_decay", "seed")


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


def _get(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = cfg[part]
    return cfg


def _check_resume_config(workdir: pathlib.Path, config: ml_collections.ConfigDict) -> None:
    saved = workdir / "config.json"
    if not saved.is_file():
        return
    old = ml_collections.ConfigDict(json.loads(saved.read_text()))
    diffs = []
    for key in _RESUME_KEYS:
        with contextlib.suppress(KeyError, AttributeError):
            if _get(old, key) != _get(config, key):
                diffs.append(f"{key}: checkpoint {_get(old, key)!r}, now {_get(config, key)!r}")
    if diffs:
        raise ValueError(
            f"{workdir} holds a run with a different setup ({'; '.join(diffs)}); resume with the original "
            "values or start a new --workdir"
        )


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


@dataclasses.dataclass
class Progress:
    """What the loop carries besides the train state (saved in every checkpoint's metadata)."""

    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    best_bacc: float = -math.inf
    last_saved: int | None = None  # step of the newest complete checkpoint
    pending: list[TrainMetrics] = dataclasses.field(default_factory=list)  # since the last log
    epoch_metrics: TrainMetrics | None = None
    epoch_start: tuple[float, int] = (0.0, 0)  # (time, step) the epoch began

    def meta(self, epoch: int) -> dict[str, Any]:
        return {"history": self.history, "best_bacc": self.best_bacc, "epoch": epoch}


@dataclasses.dataclass
class Run:
    """Everything a training run is built from (``setup``), read by the named phases below."""

    config: ml_collections.ConfigDict
    workdir: pathlib.Path
    mesh: Any
    splits: dict[str, pipeline.Source]
    class_names: tuple[str, ...]
    counts: np.ndarray
    loss: Loss
    model: Any
    model_def: ModelDef
    tx: Any
    steps: Steps
    steps_per_epoch: int
    total_steps: int
    num_params: int
    runlog: RunLog

    def local_batches(self, source: pipeline.Source | pipeline.EvalSet) -> Any:
        """One pass over ``source`` in eval batches (this process's rows)."""
        where = {"process_index": jax.process_index(), "process_count": jax.process_count()}
        if isinstance(source, pipeline.EvalSet):
            return source.batches(self.config.eval_batch_size, **where)
        return pipeline.eval_iterator(source, batch_size=self.config.eval_batch_size,
                                      image_size=self.config.data.image_size, **where)

    def evaluate(self, params: Any, batch_stats: Any, source: Any, epoch: int) -> dict[str, Any]:
        weights = jax.device_put(self.loss.class_weights(epoch), parallel.replicated(self.mesh))
        return run_eval(self.steps.eval, params, batch_stats, self.local_batches(source), weights, self.mesh,
                        self.class_names)


def setup(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> Run:
    """Data, model (pretrained if configured), loss, optimiser and jitted steps."""
    mesh = parallel.make_mesh(config.num_devices or None)
    parallel.check_batch_size(config.batch_size, mesh)
    parallel.check_batch_size(config.eval_batch_size, mesh, "eval_batch_size")
    splits = open_data(config, workdir)
    class_names = splits["train"].class_names
    counts = pipeline.class_counts(splits["train"])
    if len(splits["train"]) < config.batch_size:
        raise ValueError(f"the training split has {len(splits['train'])} images, fewer than one batch of "
                         f"{config.batch_size}; lower --config.batch_size")
    steps_per_epoch = pipeline.steps_per_epoch(splits["train"], config.batch_size)
    loss = make_loss(config.loss, counts)
    model = model_from_config(config.model, num_classes=len(class_names), seed=config.seed)
    runlog = RunLog(workdir, files=jax.process_index() == 0)
    if config.model.pretrained:
        runlog.info(load_pretrained(model, config.model.pretrained))
    num_params = count_params(model)
    runlog.info(f"model: MobileNetV3-{config.model.attention} ({config.model.arch}), {num_params:,} parameters, "
                f"{len(class_names)} classes")
    model_def = ModelDef(model)
    if runlog.files:
        (workdir / "parameters.txt").write_text(
            parameter_overview.get_parameter_overview(model_def.init_params, include_stats=False) + "\n")
    tx = make_optimizer(config.optimizer, model_def.init_params, steps_per_epoch, config.num_epochs)
    steps = build_steps(model_def, mesh, tx=tx, loss=loss, aug=AugmentConfig.from_config(config.data.augment),
                        image_size=config.data.image_size, ema_decay=config.optimizer.ema_decay)
    return Run(config, workdir, mesh, splits, class_names, counts, loss, model, model_def, tx, steps,
               steps_per_epoch, steps_per_epoch * config.num_epochs, num_params, runlog)


def restore_or_init(run: Run, ckpt: Checkpointer, train_iter: Any) -> tuple[TrainState, Progress]:
    """The newest checkpoint of the workdir (state, data position, history), or a fresh start."""
    progress = Progress()
    fresh = jax.device_put(init_state(run.model_def, run.tx, run.config.seed, ema=run.config.optimizer.ema_decay > 0),
                           parallel.replicated(run.mesh))
    start = ckpt.latest_step()
    if start is None:
        return fresh, progress
    state, data_state, meta = ckpt.restore(start, fresh)
    train_iter.set_state(data_state)
    run.runlog.forget_after(start)  # rows logged after the checkpoint are about to be logged again
    progress.history, progress.best_bacc, progress.last_saved = meta["history"], meta["best_bacc"], start
    run.runlog.info(f"resumed from {ckpt.directory}/{start} (epoch {start // run.steps_per_epoch})")
    return state, progress


def _flush(run: Run, progress: Progress, step: int) -> dict[str, float]:
    """Host sync: averages the pending step metrics; stops on a non-finite loss."""
    if not progress.pending:
        return {}
    merged = progress.pending[0]
    for m in progress.pending[1:]:
        merged = merged.merge(m)
    progress.pending.clear()
    values = {k: float(v) for k, v in merged.compute().items()}
    if not math.isfinite(values["loss"]):
        where = (f"the last good checkpoint ({run.workdir / 'checkpoints'}/{progress.last_saved}) is intact"
                 if progress.last_saved is not None else "no checkpoint had been written yet")
        raise NonFiniteLossError(
            f"training loss is {values['loss']} at step {step} (epoch {step // run.steps_per_epoch}); stopped. "
            f"{where}: lower --config.optimizer.learning_rate, use --config.model.dtype=float32, or check the data, "
            "then rerun the same command")
    return values


def log_progress(run: Run, progress: Progress, step: int, bar: tqdm) -> None:
    values = _flush(run, progress, step)
    t0, n0 = progress.epoch_start
    rate = (step - n0) * run.config.batch_size / max(time.perf_counter() - t0, 1e-9)
    run.runlog.scalars(step, {f"train/{k}": v for k, v in values.items()} | {"train/images_per_sec": rate})
    bar.set_postfix(loss=f"{values['loss']:.4f}", img_s=f"{rate:.0f}")


def end_of_epoch(run: Run, state: TrainState, progress: Progress, step: int, validation: pipeline.EvalSet,
                 best: WeightsWriter) -> None:
    """Validation, the epoch's history row and logs, and (in the background) the best weights."""
    epoch = step // run.steps_per_epoch - 1
    _flush(run, progress, step)
    train = {k: float(v) for k, v in progress.epoch_metrics.compute().items()}
    t0, n0 = progress.epoch_start
    train_seconds = time.perf_counter() - t0
    tv = time.perf_counter()
    params, stats = state.eval_weights()
    val = run.evaluate(params, stats, validation, epoch)
    val_seconds = time.perf_counter() - tv
    row = {
        "epoch": epoch + 1, "step": step, "train_loss": train["loss"], "train_accuracy": train["accuracy"],
        "val_loss": val["loss"], "val_accuracy": val["accuracy"], "val_bacc": val["bacc"],
        "val_paper_bacc": val["paper_bacc"], "val_macro_auc": val.get("macro_auc"),
        "epoch_seconds": train_seconds, "val_seconds": val_seconds,
        "images_per_sec": (step - n0) * run.config.batch_size / train_seconds if train_seconds > 0 else 0.0,
    }
    ts = time.perf_counter()
    if row["val_bacc"] > progress.best_bacc:
        progress.best_bacc = row["val_bacc"]
        best.save(state_weights(params, stats), {
            "epoch": epoch + 1, "step": step, "val_bacc": row["val_bacc"], "val_accuracy": row["val_accuracy"],
            "train_class_counts": run.counts.tolist(), "class_names": list(run.class_names),
            "source": f"best validation BACC of {run.workdir}"})
    row["save_seconds"] = time.perf_counter() - ts
    progress.history.append(row)
    run.runlog.scalars(step, {k: v for k, v in row.items() if k not in ("epoch", "step")}, kind="epoch")
    run.runlog.info(
        f"epoch {epoch + 1}/{run.config.num_epochs}: train loss {row['train_loss']:.4f} acc "
        f"{row['train_accuracy']:.4f} | val loss {row['val_loss']:.4f} acc {row['val_accuracy']:.4f} "
        f"BACC {row['val_bacc']:.4f} | {row['images_per_sec']:.0f} img/s | host: validation "
        f"{row['val_seconds']:.1f} s, best save {row['save_seconds']:.2f} s")
    progress.epoch_metrics = None
    progress.epoch_start = (time.perf_counter(), step)


def save_checkpoint(run: Run, ckpt: Checkpointer, state: TrainState, train_iter: Any, progress: Progress,
                    step: int) -> None:
    """A checkpoint of everything (asynchronous); never of non-finite parameters."""
    if progress.last_saved == step:
        return
    epoch = step // run.steps_per_epoch
    if not bool(all_finite(state.params)):
        raise NonFiniteLossError(
            f"parameters became non-finite by step {step} (epoch {epoch}); not saved, so the last good "
            f"checkpoint ({ckpt.directory}/{progress.last_saved}) stays the newest: lower "
            "--config.optimizer.learning_rate and rerun the same command")
    ckpt.save(step, state, train_iter.get_state(), progress.meta(epoch))
    progress.last_saved = step


def fit_calibration(run: Run, logits: np.ndarray, labels: np.ndarray, weights_dir: pathlib.Path | None) -> float:
    """Fits the temperature on the validation split's logits; saved beside the weights it belongs to."""
    temperature = calibration.fit_temperature(logits, labels)
    before = calibration.summary(logits, labels, temperature)
    info = {"fitted_on": "validation", "num_examples": int(len(labels)),
            "nll": {"uncalibrated": before["uncalibrated"]["nll"], "calibrated": before["calibrated"]["nll"]},
            "ece": {"uncalibrated": before["uncalibrated"]["ece"], "calibrated": before["calibrated"]["ece"]}}
    if weights_dir is not None and jax.process_index() == 0:
        calibration.save(weights_dir, temperature, **info)
    run.runlog.info(f"temperature {temperature:.3f} fitted on the validation split ({len(labels)} images): ECE "
                    f"{100 * info['ece']['uncalibrated']:.2f} % -> {100 * info['ece']['calibrated']:.2f} %")
    return temperature


def fit_decision(run: Run, logits: np.ndarray, labels: np.ndarray, temperature: float,
                 weights_dir: pathlib.Path | None) -> decision.DecisionRule:
    """The balanced decision rule fitted on the validation split; saved beside the weights."""
    rule = decision.fit(logits, labels, run.counts, temperature=temperature, how=run.config.evaluation.decision_fit)
    if weights_dir is not None and jax.process_index() == 0:
        decision.save(weights_dir, rule)
    val = rule.info["val_bacc"]
    run.runlog.info(f"balanced decision rule ({rule.fit}" + (f", tau {rule.tau:.2f}" if rule.tau is not None else "")
                    + f") fitted on the validation split: BACC {100 * val['argmax']:.2f} % (argmax) -> "
                    f"{100 * val['balanced']:.2f} %")
    return rule


def cam_gallery(run: Run, params: Any, stats: Any, probs: np.ndarray, labels: np.ndarray,
                temperature: float) -> pathlib.Path | None:
    """A PNG of Grad-CAM overlays of test images: per true class, the most and least confident
    correct and wrong predictions (``saliency.select_gallery``). One small batch through the cam step."""
    if jax.process_count() > 1 or len(labels) == 0:
        return None  # single-process only: the chosen rows live in one process's reads
    rows = saliency.select_gallery(probs, labels)
    chosen = saliency.gallery_indices(rows)
    size = run.config.data.image_size
    images = pipeline.decode_all(run.splits["test"].subset(np.asarray(chosen), "gallery"), (size, size))
    n_dev = run.mesh.devices.size
    batch = -(-(4 * len(run.class_names)) // n_dev) * n_dev  # one fixed shape per model: one compilation
    padded = np.zeros((batch, size, size, 3), np.uint8)
    padded[:len(chosen)] = images
    inputs = parallel.to_global({"image": padded, "target": np.full((batch,), -1, np.int32)}, run.mesh)
    out = run.steps.cam(params, stats, inputs["image"], inputs["target"], np.float32(temperature))
    cams = np.asarray(host_array(out["cam"]))
    where = {i: k for k, i in enumerate(chosen)}
    cells = []
    for row in rows:
        cells.append([None if i is None else (
            np.concatenate([images[where[i]], saliency.overlay(images[where[i]], cams[where[i]])], axis=1),
            f"{run.class_names[int(probs[i].argmax())]} {probs[i].max():.0%}") for i in row])
    return plots.plot_gallery(cells, run.class_names, saliency.GALLERY_KINDS, run.workdir / "report_gradcam_test.png",
                              title="test split: Grad-CAM for the predicted class (image | heat map)")


def final_test(run: Run, state: TrainState, best: WeightsWriter, history: list[dict[str, Any]],
               validation: pipeline.EvalSet) -> tuple[dict, dict]:
    """The best-validation weights (else the final state) on the test split, with a temperature
    fitted on the validation split and a Grad-CAM gallery; writes the report."""
    best.wait()
    if jax.process_count() > 1:  # the first process wrote them: everyone reads them only once they are there
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("caco_jax: best weights written")
    weights_dir = run.workdir / "best" if (run.workdir / "best" / "weights").is_dir() else None
    if weights_dir is not None:
        flat, _ = read_weights(weights_dir)
        params = unflatten(flat, run.model_def.init_params, source=str(weights_dir))
        stats = unflatten(flat, run.model_def.init_batch_stats, source=str(weights_dir))
        params, stats = jax.device_put((params, stats), parallel.replicated(run.mesh))
    else:
        params, stats = state.eval_weights()
    weights = jax.device_put(run.loss.class_weights(run.config.num_epochs - 1), parallel.replicated(run.mesh))
    val_acc, _ = collect(run.steps.eval, params, stats, run.local_batches(validation), weights, run.mesh,
                         run.class_names)
    temperature = fit_calibration(run, *val_acc.logits(), weights_dir)
    rule = fit_decision(run, *val_acc.logits(), temperature, weights_dir)
    test = run.splits["test"]
    acc, loss = collect(run.steps.eval, params, stats, run.local_batches(test), weights, run.mesh, run.class_names)
    report = evaluation_report(acc, loss, temperature, groups=test.lesion_ids, rule=rule)
    report["leakage"] = leakage.summary(run.splits["train"], test)
    views = {}  # every process takes part in the collectives; the first writes
    if run.config.evaluation.tta:
        for name, source in (("validation", validation), ("test", test)):
            views[name] = collect(run.steps.eval_tta, params, stats, run.local_batches(source), weights, run.mesh,
                                  run.class_names)[0]
    if not run.runlog.files:  # multi-host: the first process writes the report
        return report, {}
    train = run.splits["train"]
    predictions.save(predictions.path(run.workdir, "validation"), *val_acc.logits(), validation.source, train)
    predictions.save(predictions.path(run.workdir, "test"), *acc.logits(), test, train)
    for name, source in (("validation", validation.source), ("test", test)):
        if name in views:
            predictions.save(predictions.path(run.workdir, name, tta=True), *views[name].logits(), source, train)
    probs, labels, _ = acc.arrays(temperature)
    gallery = cam_gallery(run, params, stats, probs, labels, temperature)
    paths = write_report(run.workdir, report, history=history, config=run.config, num_params=run.num_params,
                         split="test", checkpoint=str(weights_dir or "final state"), class_names=run.class_names,
                         temperature_source="fitted on the validation split", gallery=gallery)
    return report, paths


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> dict[str, Any]:
    """Trains (resuming from ``workdir`` if it holds checkpoints), then reports on the test split.

    Returns a summary dict: ``status`` ('finished' or 'interrupted'), ``step``,
    ``history`` and, when finished, the test ``report`` and the written ``paths``.
    """
    workdir = pathlib.Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    parallel.initialize_distributed(config.distributed, **config.cluster)
    _check_resume_config(workdir, config)
    if jax.process_index() == 0:
        save_config(config, workdir)
    run = setup(config, workdir)
    where = {"process_index": jax.process_index(), "process_count": jax.process_count()}
    train_iter = pipeline.train_iterator(
        run.splits["train"], batch_size=config.batch_size, load_size=config.data.load_size or None,
        seed=config.seed, num_workers=config.data.num_workers, cache=config.data.cache,
        sampling=config.data.sampling, **where)
    ckpt = Checkpointer(workdir / "checkpoints", keep=config.checkpoint.keep)
    best = WeightsWriter(workdir / "best")
    state, progress = restore_or_init(run, ckpt, train_iter)
    step = int(progress.last_saved or 0)
    t_val = time.perf_counter()
    validation = pipeline.EvalSet(run.splits["validation"], config.data.image_size)  # decoded once per run
    run.runlog.info(f"validation split decoded once: {len(validation)} images in {time.perf_counter() - t_val:.1f} s")
    progress.epoch_start = (time.perf_counter(), step)
    replicated = parallel.replicated(run.mesh)
    class_weights = None
    bar = tqdm(total=run.total_steps, initial=step, unit="step", dynamic_ncols=True, disable=not config.progress_bar,
               desc="train")
    status = "finished"
    try:
        with _Stop() as stop:
            while step < run.total_steps:
                if class_weights is None or step % run.steps_per_epoch == 0:
                    class_weights = jax.device_put(run.loss.class_weights(step // run.steps_per_epoch), replicated)
                batch = parallel.to_global(next(train_iter), run.mesh)
                state, metrics = run.steps.train(state, batch, class_weights)
                step += 1
                bar.update(1)
                progress.pending.append(metrics)
                progress.epoch_metrics = metrics if progress.epoch_metrics is None else progress.epoch_metrics.merge(
                    metrics)
                epoch_done = step % run.steps_per_epoch == 0
                if step % config.log_every_steps == 0:
                    log_progress(run, progress, step, bar)
                if epoch_done:  # before any checkpoint of this step, so a resumed run never skips it
                    end_of_epoch(run, state, progress, step, validation, best)
                due = ((epoch_done and (step // run.steps_per_epoch) % config.checkpoint.every_epochs == 0)
                       or (config.checkpoint.every_steps and step % config.checkpoint.every_steps == 0)
                       or step == run.total_steps or stop.signal is not None)
                if due:
                    _flush(run, progress, step)
                    save_checkpoint(run, ckpt, state, train_iter, progress, step)
                if stop.signal is not None:
                    ckpt.wait()
                    best.wait()
                    run.runlog.info(f"stopped by signal {stop.signal} at step {step}; checkpoint saved in "
                                    f"{ckpt.directory}; rerun the same command to resume")
                    status = "interrupted"
                    break
    finally:
        bar.close()
        ckpt.close()
    if status == "interrupted":
        best.close()
        run.runlog.close()
        return {"status": status, "step": step, "history": progress.history}
    run.runlog.info("training finished; evaluating the best checkpoint on the test split")
    report, paths = final_test(run, state, best, progress.history, validation)
    best.close()
    run.runlog.info(f"test: accuracy {report['accuracy']:.4f}, BACC {report['bacc']:.4f}; report: "
                    f"{paths.get('md', 'written by process 0')}")
    run.runlog.close()
    return {"status": status, "step": step, "history": progress.history, "report": report, "paths": paths}
