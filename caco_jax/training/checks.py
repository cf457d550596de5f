"""Every check of a training config, in one place, before any data is read or anything compiles.

:func:`check_config` collects every problem (a name that no registry knows, a number out of
range, a path that does not exist) and raises one :class:`~caco_jax.errors.ConfigError` that
lists them as the ``--config.KEY=VALUE`` flags to fix.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable
from typing import Any

from caco_jax.errors import ConfigError


def _get(config: Any, key: str) -> Any:
    node = config
    for part in key.split("."):
        node = node[part]
    return node


def _choice(options: Any) -> Callable[[Any], str | None]:
    names = sorted(options)
    return lambda v: None if v in options else f"must be one of {', '.join(map(str, names))}"


def _range(
    lo: float | None = None,
    hi: float | None = None,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
    integer: bool = False,
) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        if isinstance(v, bool) or not isinstance(v, int | float) or (integer and not isinstance(v, int)):
            return f"must be {'an integer' if integer else 'a number'}"
        if lo is not None and (v <= lo if lo_open else v < lo):
            return f"must be {'>' if lo_open else '>='} {lo}"
        if hi is not None and (v >= hi if hi_open else v > hi):
            return f"must be {'<' if hi_open else '<='} {hi}"
        return None

    return check


def _flag(v: Any) -> str | None:
    return None if isinstance(v, bool) else "must be True or False"


def _rules() -> dict[str, Callable[[Any], str | None]]:
    from caco_jax.data import registry
    from caco_jax.data.constancy import METHODS as COLOR_CONSTANCY
    from caco_jax.data.pipeline import SAMPLING
    from caco_jax.data.splits import SPLIT_BY
    from caco_jax.evaluation.decision import FITS, RULES
    from caco_jax.models import ARCHS, ATTENTION_INITS, CA_ACTIVATIONS, DTYPES
    from caco_jax.models.attention import ATTENTION_BLOCKS
    from caco_jax.models.depthwise import DEPTHWISE_IMPLS
    from caco_jax.training.losses import LOSSES
    from caco_jax.training.steps import SCHEDULES, WEIGHT_DECAY_MASKS

    count, positive = _range(1, integer=True), _range(0, lo_open=True)
    unit = _range(0.0, 1.0, hi_open=True)
    return {
        "model.arch": _choice(ARCHS),
        "model.attention": _choice(ATTENTION_BLOCKS),
        "model.ca_activation": _choice(CA_ACTIVATIONS),
        "model.attention_init": _choice(ATTENTION_INITS),
        "model.dropout": unit,
        "model.bn_momentum": _range(0, 1, lo_open=True),
        "model.dtype": _choice(DTYPES),
        "model.depthwise": _choice(DEPTHWISE_IMPLS),
        "data.name": _choice(registry.DATASETS),
        "data.build_size": count,
        "data.synthetic_images": _range(0, integer=True),
        "data.split_by": _choice(SPLIT_BY),
        "data.split_seed": _range(0, integer=True),
        "data.image_size": _range(8, integer=True),
        "data.load_size": _range(0, integer=True),
        "data.num_workers": _range(0, integer=True),
        "data.sampling": _choice(SAMPLING),
        "data.color_constancy": _choice(COLOR_CONSTANCY),
        "data.color_constancy_p": _range(1),
        "data.fov_crop": _flag,
        "loss.name": _choice(LOSSES),
        "loss.label_smoothing": unit,
        "loss.focal_gamma": _range(0),
        "loss.ldam_max_m": positive,
        "loss.ldam_s": positive,
        "loss.joint_a": _range(0, 1),
        "loss.drw_epoch": _range(-1, integer=True),
        "loss.drw_beta": unit,
        "optimizer.learning_rate": positive,
        "optimizer.weight_decay": _range(0),
        "optimizer.weight_decay_mask": _choice(WEIGHT_DECAY_MASKS),
        "optimizer.b1": unit,
        "optimizer.b2": unit,
        "optimizer.eps": positive,
        "optimizer.schedule": _choice(SCHEDULES),
        "optimizer.warmup_epochs": _range(0),
        "optimizer.ema_decay": unit,
        "batch_size": count,
        "eval_batch_size": count,
        "num_epochs": count,
        "num_devices": _range(0, integer=True),
        "checkpoint.every_epochs": count,
        "checkpoint.every_steps": _range(0, integer=True),
        "checkpoint.keep": count,
        "log_every_steps": count,
        "evaluation.decision_fit": _choice(FITS),
        "evaluation.decision": _choice(RULES),
    }


def _cross_checks(config: Any) -> list[str]:
    """Problems that involve several fields, or the file system."""
    from caco_jax.data import registry
    from caco_jax.data.augment import AugmentConfig
    from caco_jax.data.offline import OfflineCopies

    problems = []
    for key, build in (("data.augment", AugmentConfig.from_config), ("data.offline", OfflineCopies.from_config)):
        try:
            build(_get(config, key))
        except (ValueError, TypeError) as err:
            problems.append(f"--config.{key}.*: {err}")
    holdout = config.data.holdout_source
    if holdout and OfflineCopies.from_config(config.data.offline).enabled:
        problems.append(
            f"--config.data.holdout_source={holdout}: a held-out source and offline copies "
            f"(data.offline.mode={config.data.offline.mode}) cannot be combined; set one of them off"
        )
    if config.data.cache and config.data.num_workers > 0:
        problems.append(
            "--config.data.cache=True serves batches from memory in this process: set --config.data.num_workers=0"
        )
    if config.optimizer.warmup_epochs >= config.num_epochs:
        problems.append(
            f"--config.optimizer.warmup_epochs={config.optimizer.warmup_epochs}: must be below "
            f"num_epochs ({config.num_epochs})"
        )
    if config.loss.drw_epoch >= config.num_epochs:
        problems.append(
            f"--config.loss.drw_epoch={config.loss.drw_epoch}: deferred re-weighting would never "
            f"start (num_epochs {config.num_epochs}); use -1 to switch it off"
        )
    pretrained = config.model.pretrained
    if pretrained == "imagenet" and config.model.arch not in ("small", "large"):
        problems.append(
            f"--config.model.pretrained=imagenet: torchvision has ImageNet weights for the small and "
            f"large MobileNetV3 only, not arch {config.model.arch!r}"
        )
    if pretrained and pretrained != "imagenet":
        why = _pretrained_problem(pathlib.Path(pretrained).expanduser())
        if why:
            problems.append(
                f"--config.model.pretrained={pretrained}: {why}; give a torchvision mobilenet_v3 .pth, a "
                "directory from caco-jax convert, 'imagenet' (fetched once and checked) or '' (from scratch)"
            )
    manual = config.data.manual_dir
    if manual and config.data.synthetic_images == 0 and not pathlib.Path(manual).expanduser().exists():
        problems.append(
            f"--config.data.manual_dir={manual}: no such folder (the downloaded HAM10000 files, or "
            "your class folders for data.name=folder)"
        )
    data_dir = pathlib.Path(config.data.data_dir).expanduser()
    dataset = registry.known(config.data.name)
    if dataset and dataset.prebuilt and not manual and config.data.synthetic_images == 0 and not data_dir.is_dir():
        problems.append(
            f"--config.data.data_dir={config.data.data_dir}: no such folder, and no data.manual_dir to build "
            f"the data from: build it once (caco-jax prepare-data --manual_dir /path/to/HAM10000 --data_dir "
            f"{data_dir}), give --config.data.manual_dir=/path/to/HAM10000 (training builds it first), or "
            "try --config demo (synthetic data, no download)"
        )
    return problems


def _pretrained_problem(path: pathlib.Path) -> str | None:
    """Why ``path`` cannot initialise a model, from its directory entries and zip index alone."""
    from caco_jax.interop.torch_io import pth_problem

    if path.is_dir():
        return None if (path / "weights").is_dir() else "a folder without weights/ inside, not caco-jax weights"
    if not path.exists():
        return "no such file or directory"
    return pth_problem(path)


def check_config(config: Any) -> None:
    """Raises a ConfigError listing every problem of a training config (nothing if it is sound)."""
    problems = []
    for key, rule in _rules().items():
        try:
            value = _get(config, key)
        except (KeyError, AttributeError):
            problems.append(f"--config.{key}: missing (is this config built on caco_jax.configs.default?)")
            continue
        why = rule(value)
        if why:
            problems.append(f"--config.{key}={value!r}: {why}")
    try:
        problems += _cross_checks(config)
    except (TypeError, KeyError, AttributeError):
        pass  # a field these checks read is already reported above
    if problems:
        raise ConfigError(
            "the config has "
            + (f"{len(problems)} problems" if len(problems) > 1 else "a problem")
            + ":\n  "
            + "\n  ".join(problems)
        )
