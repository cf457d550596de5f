"""A toy attention block and its PyTorch twin: SE followed by a learned per-channel scale.

``y = SE(x) * (1 + g * (a - 1))`` with ``a`` the scale (its own parameter, drawn from U(0.2, 2.5)) and ``g``
the gain of the preserving inits (zero at first, so the block starts as the SE block it replaces;
the plain init has no gain: ``y = SE(x) * a``). It declares everything a block may declare (an SE
MLP, new parts, gains, starting as SE), so every test derived from a declaration includes it.
"""

from __future__ import annotations

from typing import ClassVar

import jax
import jax.numpy as jnp
import torch
from flax import nnx

from caco_jax.interop import torch_reference
from caco_jax.models.attention import AttentionOptions, SqueezeExcitation, register

NAME = "toy_scaled_se"


@register(NAME)
class ToyScaledSE(nnx.Module):
    se_mlp_path: ClassVar[tuple[str, ...] | None] = ("se", "mlp")
    new_parts: ClassVar[dict[str, str]] = {
        "scale": "the toy's per-channel scale has no ImageNet counterpart",
        "gain": "the toy's gain has no ImageNet counterpart",
    }
    starts_as_se: ClassVar[bool] = True

    def __init__(self, channels: int, squeeze: int, options: AttentionOptions, *, rngs: nnx.Rngs):
        self.se = SqueezeExcitation(channels, squeeze, options, rngs=rngs)
        self.scale = nnx.Param(jax.random.uniform(rngs.params(), (channels,), jnp.float32, 0.2, 2.5))
        self.gain = nnx.Param(jnp.zeros((channels,), jnp.float32)) if options.gain_gated_output else None

    def __call__(self, x):
        a = self.scale[...].astype(x.dtype)
        y = self.se(x)
        return y * a if self.gain is None else y * (1.0 + self.gain[...].astype(x.dtype) * (a - 1.0))


@torch_reference.twin(NAME)
class ToyScaledSETwin(torch.nn.Module):
    def __init__(self, channels: int, squeeze: int, options: AttentionOptions | None = None):
        super().__init__()
        options = options or AttentionOptions()
        self.se = torch_reference.SqueezeExcitation(channels, squeeze)
        self.scale = torch.nn.Parameter(torch.empty(channels).uniform_(0.2, 2.5))
        self.gain = torch.nn.Parameter(torch.zeros(channels)) if options.gain_gated_output else None

    def forward(self, x):
        a = self.scale.view(1, -1, 1, 1)
        y = self.se(x)
        return y * a if self.gain is None else y * (1 + self.gain.view(1, -1, 1, 1) * (a - 1))
