"""Flax NNX MobileNetV3 family with a pluggable attention slot."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from flax import nnx

from caco_jax.models.attention import ATTENTION_BLOCKS, ATTENTION_INITS, CA_ACTIVATIONS
from caco_jax.models.mobilenetv3 import ARCHS, MobileNetV3, count_params

DTYPES = {"float32": None, "bfloat16": jnp.bfloat16}

__all__ = [
    "ARCHS",
    "ATTENTION_BLOCKS",
    "ATTENTION_INITS",
    "CA_ACTIVATIONS",
    "DTYPES",
    "MobileNetV3",
    "count_params",
    "create_model",
]


# config.model fields that are not MobileNetV3 arguments.
_NOT_MODEL_ARGS = ("pretrained",)


def create_model(*, num_classes: int = 7, seed: int = 0, dtype: str = "float32", **options: Any) -> MobileNetV3:
    """A MobileNetV3, initialised under ``nnx.jit`` (eager init is slow on CPU). ``options`` are
    :class:`MobileNetV3`'s keyword arguments (arch, attention, ca_activation, attention_init, dropout,
    bn_momentum, depthwise), whose defaults are the paper's model; ``dtype`` is a name of ``DTYPES``."""
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {sorted(DTYPES)}")

    @nnx.jit
    def init() -> MobileNetV3:
        return MobileNetV3(num_classes=num_classes, dtype=DTYPES[dtype], rngs=nnx.Rngs(seed), **options)

    return init()


def model_from_config(cfg: Any, *, num_classes: int, seed: int = 0) -> MobileNetV3:
    """``create_model(**cfg)`` for a config's ``model`` section (its ``pretrained`` path aside)."""
    options = {k: v for k, v in cfg.items() if k not in _NOT_MODEL_ARGS}
    return create_model(num_classes=num_classes, seed=seed, **options)
