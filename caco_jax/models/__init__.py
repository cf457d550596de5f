"""Flax NNX MobileNetV3 family with a pluggable attention slot."""
from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from flax import nnx

from caco_jax.models.attention import ATTENTION_INITS, ATTENTIONS
from caco_jax.models.mobilenetv3 import ARCHS, MobileNetV3, count_params

DTYPES = {"float32": None, "bfloat16": jnp.bfloat16}

__all__ = ["ARCHS", "ATTENTION_INITS", "ATTENTIONS", "DTYPES", "MobileNetV3", "count_params", "create_model"]


def create_model(
    *,
    arch: str = "small",
    num_classes: int = 7,
    attention: str = "caco",
    ca_activation: str = "swish",
    attention_init: str = "preserve",
    dropout: float = 0.2,
    bn_momentum: float = 0.01,
    depthwise: str = "auto",
    dtype: str = "float32",
    seed: int = 0,
) -> MobileNetV3:
    """Builds and initialises a MobileNetV3 under ``nnx.jit`` (eager init is slow on CPU)."""
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {sorted(DTYPES)}")

    @nnx.jit
    def init() -> MobileNetV3:
        return MobileNetV3(
            arch=arch,
            num_classes=num_classes,
            attention=attention,
            ca_activation=ca_activation,
            attention_init=attention_init,
            dropout=dropout,
            bn_momentum=bn_momentum,
            depthwise=depthwise,
            dtype=DTYPES[dtype],
            rngs=nnx.Rngs(seed),
        )

    return init()


def model_from_config(cfg: Any, *, num_classes: int, seed: int = 0) -> MobileNetV3:
    """``create_model`` from a config's ``model`` section (arch, attention, ...)."""
    return create_model(
        arch=cfg.arch,
        num_classes=num_classes,
        attention=cfg.attention,
        ca_activation=cfg.ca_activation,
        attention_init=cfg.attention_init,
        dropout=cfg.dropout,
        bn_momentum=cfg.bn_momentum,
        depthwise=cfg.depthwise,
        dtype=cfg.dtype,
        seed=seed,
    )
