"""``train_and_evaluate(config, workdir)``: the whole training run.

Data-parallel over every device of a ('data',) mesh (see ``parallel.py``), one
jit-compiled step with the state donated, orbax checkpoints holding model,
optimiser, step, RNG and data-iterator position, automatic resume from the same
workdir, SIGTERM -> checkpoint and clean exit, and a report on the test split at the end.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import pathlib
import signal
import time
from typing import Any

import jax
import ml_collections
from clu import parameter_overview
from tqdm import tqdm

from caco_jax import parallel
from caco_jax.checkpoints import Checkpointer
from caco_jax.classes import CLASS_NAMES
from caco_jax.data import pipeline
from caco_jax.data.augment import AugmentConfig
from caco_jax.evaluate import run_eval, write_report
from caco_jax.losses import make_loss
from caco_jax.metrics import TrainMetrics
from caco_jax.models import count_params, model_from_config
from caco_jax.run_log import RunLog
from caco_jax.steps import ModelDef, TrainState, all_finite, init_state, make_eval_step, make_optimizer, make_train_step
from caco_jax.weights import assign_weights, load_pretrained, read_weights, save_weights
from caco_jax.workspace import open_data, save_config

log = logging.getLogger("caco_jax.train")

# Config fields a resumed run must share with the run that wrote the checkpoint.
_RESUME_KEYS = ("model.arch", "model.attention", "model.ca_activation", "model.attention_init", "data.split_by", "data.split_seed",
                "data.image_size", "batch_size", "seed")


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


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> dict[str, Any]:
    """Trains (resuming from ``workdir`` if it holds checkpoints), then reports on the test split.

    Returns a summary dict: ``status`` ('finished' or 'interrupted'), ``step``,
    ``history`` and, when finished, the test ``report`` and the written ``paths``.
    """
    workdir = pathlib.Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    parallel.initialize_distributed(config.distributed)
    _check_resume_config(workdir, config)
    save_config(config, workdir)

    mesh = parallel.make_mesh(config.num_devices or None)
    parallel.check_batch_size(config.batch_size, mesh)
    parallel.check_batch_size(config.eval_batch_size, mesh, "eval_batch_size")

    splits = open_data(config, workdir)
    counts = pipeline.class_counts(splits["train"])
    steps_per_epoch = pipeline.steps_per_epoch(splits["train"], config.batch_size)
    if steps_per_epoch < 1:
        raise ValueError(
            f"the training split has {len(splits['train'])} images, fewer than one batch of "
            f"{config.batch_size}; lower --config.batch_size"
        )
    total_steps = steps_per_epoch * config.num_epochs
    loss = make_loss(config.loss, counts)
    aug = AugmentConfig.from_config(config.data.augment)

    model = model_from_config(config.model, num_classes=len(CLASS_NAMES), seed=config.seed)
    num_params = count_params(model)
    runlog = RunLog(workdir)
    if config.model.pretrained:
        runlog.info(load_pretrained(model, config.model.pretrained))
    runlog.info(f"model: MobileNetV3-{config.model.attention} ({config.model.arch}), {num_params:,} parameters")
    model_def = ModelDef(model)
    (workdir / "parameters.txt").write_text(
        parameter_overview.get_parameter_overview(model_def.init_params, include_stats=False) + "\n")
    tx = make_optimizer(config.optimizer, model_def.init_params, steps_per_epoch, config.num_epochs)

    repl, data_sh = parallel.replicated(mesh), parallel.data_sharding(mesh)
    state = jax.device_put(init_state(model_def, tx, config.seed), repl)
    train_step = jax.jit(
        make_train_step(model_def, tx, loss, aug, config.data.image_size),
        in_shardings=(repl, data_sh, repl),
        out_shardings=(repl, repl),
        donate_argnums=(0,),
    )
    eval_step = jax.jit(make_eval_step(model_def, loss), in_shardings=(repl, repl, data_sh, repl), out_shardings=repl)

    train_iter = pipeline.train_iterator(
        splits["train"], batch_size=config.batch_size, load_size=config.data.load_size or None,
        seed=config.seed, num_workers=config.data.num_workers, cache=config.data.cache,
    )
    ckpt = Checkpointer(workdir / "checkpoints", keep=config.checkpoint.keep)
    history: list[dict[str, Any]] = []
    best = -math.inf
    start = ckpt.latest_step()
    if start is not None:
        state, data_state, meta = ckpt.restore(start, state)
        train_iter.set_state(data_state)
        history, best = meta["history"], meta["best_bacc"]
        runlog.info(f"resumed from {ckpt.directory}/{start} (epoch {start // steps_per_epoch})")
    step = int(start or 0)

    pending: list[TrainMetrics] = []
    last_good = start
    status = "finished"

    def flush(epoch: int) -> dict[str, float]:
        """Host sync: averages the pending step metrics; stops on a non-finite loss."""
        if not pending:
            return {}
        merged = pending[0]
        for m in pending[1:]:
            merged = merged.merge(m)
        pending.clear()
        values = {k: float(v) for k, v in merged.compute().items()}
        if not math.isfinite(values["loss"]):
            where = (f"the last good checkpoint ({ckpt.directory}/{last_good}) is intact" if last_good is not None
                     else "no checkpoint had been written yet")
            raise NonFiniteLossError(
                f"training loss is {values['loss']} at step {step} (epoch {epoch}); stopped. {where}: lower "
                "--config.optimizer.learning_rate, use --config.model.dtype=float32, or check the data, then "
                "rerun the same command"
            )
        return values

    def save(epoch: int) -> None:
        nonlocal last_good
        if last_good == step:  # e.g. an every_steps save that fell on an epoch end
            return
        if not bool(all_finite(state.params)):
            raise NonFiniteLossError(
                f"parameters became non-finite by step {step} (epoch {epoch}); not saved, so the last good "
                f"checkpoint ({ckpt.directory}/{last_good}) stays the newest: lower "
                "--config.optimizer.learning_rate and rerun the same command")
        ckpt.save(step, state, train_iter.get_state(), {"history": history, "best_bacc": best, "epoch": epoch})
        last_good = step

    bar = tqdm(total=total_steps, initial=step, unit="step", dynamic_ncols=True, disable=not config.progress_bar,
               desc="train")
    try:
        with _Stop() as stop:
            while step < total_steps:
                epoch = step // steps_per_epoch
                weights = jax.device_put(loss.class_weights(epoch), repl)
                epoch_total: TrainMetrics | None = None
                t0, n0 = time.perf_counter(), step
                while step < (epoch + 1) * steps_per_epoch:
                    batch = parallel.to_global(next(train_iter), mesh)
                    state, metrics = train_step(state, batch, weights)
                    pending.append(metrics)
                    epoch_total = metrics if epoch_total is None else epoch_total.merge(metrics)
                    step += 1
                    bar.update(1)
                    if step % config.log_every_steps == 0:
                        values = flush(epoch)
                        rate = (step - n0) * config.batch_size / (time.perf_counter() - t0)
                        runlog.scalars(step, {f"train/{k}": v for k, v in values.items()} | {"train/images_per_sec": rate})
                        bar.set_postfix(loss=f"{values['loss']:.4f}", img_s=f"{rate:.0f}")
                    if config.checkpoint.every_steps and step % config.checkpoint.every_steps == 0:
                        flush(epoch)
                        save(epoch)
                    if stop.signal is not None:
                        flush(epoch)
                        save(epoch)
                        ckpt.wait()
                        runlog.info(f"stopped by signal {stop.signal} at step {step}; checkpoint saved in "
                                    f"{ckpt.directory}; rerun the same command to resume")
                        status = "interrupted"
                        return {"status": status, "step": step, "history": history}
                flush(epoch)
                train_values = {k: float(v) for k, v in epoch_total.compute().items()}
                seconds = time.perf_counter() - t0
                val = run_eval(eval_step, state.params, state.batch_stats,
                               pipeline.eval_iterator(splits["validation"], batch_size=config.eval_batch_size,
                                                      image_size=config.data.image_size),
                               loss.class_weights(epoch), mesh)
                row = _epoch_row(epoch, step, train_values, val, seconds, (step - n0) * config.batch_size)
                history.append(row)
                runlog.scalars(step, {k: v for k, v in row.items() if k not in ("epoch", "step")}, kind="epoch")
                runlog.info(
                    f"epoch {epoch + 1}/{config.num_epochs}: train loss {row['train_loss']:.4f} acc "
                    f"{row['train_accuracy']:.4f} | val loss {row['val_loss']:.4f} acc {row['val_accuracy']:.4f} "
                    f"BACC {row['val_bacc']:.4f} | {row['images_per_sec']:.0f} img/s"
                )
                if row["val_bacc"] > best:
                    best = row["val_bacc"]
                    save_weights(_as_model(model, state), workdir / "best", metadata={
                        "epoch": epoch + 1, "step": step, "val_bacc": best, "train_class_counts": counts.tolist(), "val_accuracy": row["val_accuracy"],
                        "source": f"best validation BACC of {workdir}"})
                if (epoch + 1) % config.checkpoint.every_epochs == 0 or step == total_steps:
                    save(epoch)
    finally:
        bar.close()
        ckpt.close()

    runlog.info("training finished; evaluating the best checkpoint on the test split")
    weights_dir = workdir / "best" if (workdir / "best" / "weights").is_dir() else None
    if weights_dir is not None:
        flat, _ = read_weights(weights_dir)
        assign_weights(model, flat, source=str(weights_dir))
        best_def = ModelDef(model)
        params, stats = jax.device_put((best_def.init_params, best_def.init_batch_stats), repl)
    else:
        params, stats = state.params, state.batch_stats
    report = run_eval(eval_step, params, stats,
                      pipeline.eval_iterator(splits["test"], batch_size=config.eval_batch_size,
                                             image_size=config.data.image_size),
                      loss.class_weights(config.num_epochs - 1), mesh)
    paths = write_report(workdir, report, history=history, config=config, num_params=num_params, split="test",
                         checkpoint=str(weights_dir or "final state"))
    runlog.info(f"test: accuracy {report['accuracy']:.4f}, BACC {report['bacc']:.4f}; report: {paths['md']}")
    runlog.close()
    return {"status": status, "step": step, "history": history, "report": report, "paths": paths}


def _epoch_row(epoch: int, step: int, train: dict[str, float], val: dict[str, Any], seconds: float,
               images: int) -> dict[str, Any]:
    return {
        "epoch": epoch + 1,
        "step": step,
        "train_loss": train["loss"],
        "train_accuracy": train["accuracy"],
        "val_loss": val["loss"],
        "val_accuracy": val["accuracy"],
        "val_bacc": val["bacc"],
        "val_paper_bacc": val["paper_bacc"],
        "val_macro_auc": val.get("macro_auc"),
        "epoch_seconds": seconds,
        "images_per_sec": images / seconds if seconds > 0 else 0.0,
    }


def _as_model(model: Any, state: TrainState) -> Any:
    """Writes the train state's weights into ``model`` (for saving in the weights format)."""
    from flax import nnx

    gdef, p, b = nnx.split(model, nnx.Param, nnx.BatchStat)
    host = jax.device_get((state.params, state.batch_stats))
    nnx.replace_by_pure_dict(p, host[0])
    nnx.replace_by_pure_dict(b, host[1])
    nnx.update(model, p, b)
    return model


