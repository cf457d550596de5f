"""What a training run is built from: data, model (pretrained if configured), loss, optimiser and
jitted steps (:func:`setup`), read by the loop's phases and the end-of-run evaluation."""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

import jax
import ml_collections
import numpy as np
from clu import parameter_overview

from caco_jax import allocator
from caco_jax.data import pipeline, records
from caco_jax.data.augment import AugmentConfig
from caco_jax.data.constancy import ColorConstancy
from caco_jax.data.registry import open_data
from caco_jax.models import count_params, model_from_config
from caco_jax.runs.loading import load_pretrained
from caco_jax.training import parallel
from caco_jax.training.evaluate import run_eval
from caco_jax.training.losses import Loss, make_loss
from caco_jax.training.run_log import RunLog
from caco_jax.training.steps import ModelDef, Steps, build_steps, make_optimizer


@dataclasses.dataclass(kw_only=True)
class Run:
    """Everything a training run is built from (``setup``), read by the named phases below."""

    config: ml_collections.ConfigDict
    workdir: pathlib.Path
    mesh: Any
    splits: dict[str, records.Source]
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

    def local_batches(self, source: records.Source | pipeline.EvalSet) -> Any:
        """One pass over ``source`` in eval batches (this process's rows)."""
        where = {"process_index": jax.process_index(), "process_count": jax.process_count()}
        if isinstance(source, pipeline.EvalSet):
            return source.batches(self.config.eval_batch_size, **where)
        return pipeline.eval_iterator(
            source, batch_size=self.config.eval_batch_size, image_size=self.config.data.image_size, **where
        )

    def class_weights(self, epoch: int) -> jax.Array:
        """The loss's class weights for ``epoch`` (0-based), replicated over the mesh."""
        return jax.device_put(self.loss.class_weights(epoch), parallel.replicated(self.mesh))

    def evaluate(self, params: Any, batch_stats: Any, source: Any, epoch: int) -> dict[str, Any]:
        assert self.steps.eval is not None  # setup builds the steps with a loss
        return run_eval(
            self.steps.eval,
            params,
            batch_stats,
            self.local_batches(source),
            self.class_weights(epoch),
            self.mesh,
            self.class_names,
        )


def setup(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> Run:
    """Data, model (pretrained if configured), loss, optimiser and jitted steps."""
    mesh = parallel.make_mesh(config.num_devices or None)
    parallel.check_batch_size(config.batch_size, mesh)
    parallel.check_batch_size(config.eval_batch_size, mesh, "eval_batch_size")
    splits = open_data(config, workdir)
    class_names = splits["train"].class_names
    counts = records.class_counts(splits["train"])
    if len(splits["train"]) < config.batch_size:
        raise ValueError(
            f"the training split has {len(splits['train'])} images, fewer than one batch of "
            f"{config.batch_size}; lower --config.batch_size"
        )
    steps_per_epoch = pipeline.steps_per_epoch(splits["train"], config.batch_size)
    loss = make_loss(config.loss, counts)
    model = model_from_config(config.model, num_classes=len(class_names), seed=config.seed)
    runlog = RunLog(workdir, files=jax.process_index() == 0)
    if config.model.pretrained:
        runlog.info(load_pretrained(model, config.model.pretrained))
    num_params = count_params(model)
    runlog.info(
        f"model: MobileNetV3-{config.model.attention} ({config.model.arch}), {num_params:,} parameters, "
        f"{len(class_names)} classes"
    )
    runlog.info(allocator.describe())
    model_def = ModelDef(model)
    if runlog.files:
        (workdir / "parameters.txt").write_text(
            parameter_overview.get_parameter_overview(model_def.init_params, include_stats=False) + "\n"
        )
    tx = make_optimizer(config.optimizer, model_def.init_params, steps_per_epoch, config.num_epochs)
    steps = build_steps(
        model_def,
        mesh,
        tx=tx,
        loss=loss,
        aug=AugmentConfig.from_config(config.data.augment),
        image_size=config.data.image_size,
        ema_decay=config.optimizer.ema_decay,
        color=ColorConstancy.from_config(config.data),
    )
    return Run(
        config=config,
        workdir=workdir,
        mesh=mesh,
        splits=splits,
        class_names=class_names,
        counts=counts,
        loss=loss,
        model=model,
        model_def=model_def,
        tx=tx,
        steps=steps,
        steps_per_epoch=steps_per_epoch,
        total_steps=steps_per_epoch * config.num_epochs,
        num_params=num_params,
        runlog=runlog,
    )
