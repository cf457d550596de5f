"""Attention blocks for the MobileNetV3 attention slot (where torchvision puts SE).

All blocks map an NHWC tensor ``x`` of shape (B, H, W, C) to the same shape.

* ``se``   torchvision's SqueezeExcitation: avg-pool, 1x1 conv C->S, ReLU, 1x1 conv
           S->C, hard-sigmoid gate. S = make_divisible(C // 4, 8).
* ``caco`` the paper's CaCo: channel attention, then coordinate attention.
           The paper does not print the channel half (its figure 3 is an image).
           Our choice, following the issue and CBAM (Woo et al. 2018): the *same*
           squeeze MLP as that block's SE (so ImageNet SE weights initialise it),
           applied to the average- and the max-pooled descriptor, the two outputs
           summed, then SE's hard-sigmoid gate (kept so converted SE weights stay
           calibrated: with the max branch zeroed this *is* SE).
* ``cbam`` CBAM: the same channel attention but with a sigmoid gate (as Woo et al.),
           then spatial attention: [max_c, mean_c] -> 7x7 conv (no bias) -> BN ->
           sigmoid. The MLP width is SE's S (CBAM used C/16; S lets SE weights
           initialise it and keeps the ablation about the attention, not the width).
* ``seco`` torchvision's SE followed by coordinate attention (paper Table 5).
* ``eca``  ECA-Net (Wang et al. 2020): avg-pool, 1-D conv across channels with an
           adaptive odd kernel k = |(log2 C + 1) / 2|, no bias, sigmoid gate.
* ``none`` no attention.

Coordinate attention (Hou et al. 2021), with the paper's symbols:
z^h = mean over width (B, H, C), z^w = mean over height (B, W, C); concatenated along
the spatial axis; 1x1 conv C -> mip (bias), BatchNorm, activation; split into f^h, f^w;
a^h = sigmoid(conv_h(f^h)), a^w = sigmoid(conv_w(f^w)) (1x1 convs with bias back to C);
y = x * a^h * a^w. mip = max(8, C // 32) as in the official code. The activation is
Swish as the paper writes (the official code uses h-swish; ``ca_activation`` picks).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from caco_jax.models.layers import Array, BatchNorm, Dtype, PointwiseMLP, activation, conv, hard_sigmoid

ATTENTIONS: tuple[str, ...] = ("se", "caco", "cbam", "seco", "eca", "none")


def _avg_pool(x: Array) -> Array:
    return jnp.mean(x, axis=(1, 2))


def _max(x: Array, axis: int) -> Array:
    """Max along ``axis`` whose gradient goes to one element (the first maximum), as torch's
    max pooling does. ``jnp.max`` splits the gradient among ties, which after a ReLU (many
    zeros) both differs from torch and, at XLA's CPU optimisation level 0, produced NaNs."""
    idx = jnp.expand_dims(jnp.argmax(x, axis=axis), axis)
    return jnp.squeeze(jnp.take_along_axis(x, idx, axis=axis), axis)


def _max_pool(x: Array) -> Array:
    b, h, w, c = x.shape
    return _max(x.reshape(b, h * w, c), axis=1)


class SqueezeExcitation(nnx.Module):
    """torchvision.ops.SqueezeExcitation with a hard-sigmoid gate (MobileNetV3's SE)."""

    def __init__(self, channels: int, squeeze: int, *, dtype: Dtype | None = None, rngs: nnx.Rngs):
        self.mlp = PointwiseMLP(channels, squeeze, dtype=dtype, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        s = hard_sigmoid(self.mlp(_avg_pool(x)))
        return x * s[:, None, None, :]


class ChannelAttention(nnx.Module):
    """CBAM-style channel attention: gate(MLP(avg(x)) + MLP(max(x))), shared MLP."""

    def __init__(
        self, channels: int, squeeze: int, *, gate: str, dtype: Dtype | None = None, rngs: nnx.Rngs
    ):
        self.mlp = PointwiseMLP(channels, squeeze, dtype=dtype, rngs=rngs)
        self.gate = gate

    def __call__(self, x: Array) -> Array:
        s = activation(self.gate)(self.mlp(_avg_pool(x)) + self.mlp(_max_pool(x)))
        return x * s[:, None, None, :]


class SpatialAttention(nnx.Module):
    """CBAM's spatial half: sigmoid(BN(conv7x7([max_c x, mean_c x]))) * x."""

    def __init__(self, kernel_size: int = 7, *, dtype: Dtype | None = None, rngs: nnx.Rngs):
        self.conv = conv(2, 1, kernel_size, dtype=dtype, rngs=rngs)
        self.bn = BatchNorm(1, dtype=dtype)

    def __call__(self, x: Array) -> Array:
        pooled = jnp.concatenate(
            [_max(x, axis=-1)[..., None], jnp.mean(x, axis=-1, keepdims=True)], axis=-1
        )
        return x * jax.nn.sigmoid(self.bn(self.conv(pooled)))


class CoordinateAttention(nnx.Module):
    """Coordinate attention (Hou et al., CVPR 2021); see the module docstring."""

    def __init__(
        self,
        channels: int,
        *,
        mip: int | None = None,
        act: str = "swish",
        dtype: Dtype | None = None,
        rngs: nnx.Rngs,
    ):
        self.mip = max(8, channels // 32) if mip is None else mip
        init = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")
        self.conv1 = nnx.Linear(channels, self.mip, kernel_init=init, dtype=dtype, rngs=rngs)
        self.bn1 = BatchNorm(self.mip, dtype=dtype)
        self.conv_h = nnx.Linear(self.mip, channels, kernel_init=init, dtype=dtype, rngs=rngs)
        self.conv_w = nnx.Linear(self.mip, channels, kernel_init=init, dtype=dtype, rngs=rngs)
        self.act = act

    def __call__(self, x: Array) -> Array:
        h = x.shape[1]
        z_h = jnp.mean(x, axis=2)  # (B, H, C): pooled along the width
        z_w = jnp.mean(x, axis=1)  # (B, W, C): pooled along the height
        f = activation(self.act)(self.bn1(self.conv1(jnp.concatenate([z_h, z_w], axis=1))))
        f_h, f_w = f[:, :h], f[:, h:]
        a_h = jax.nn.sigmoid(self.conv_h(f_h))
        a_w = jax.nn.sigmoid(self.conv_w(f_w))
        return x * a_h[:, :, None, :] * a_w[:, None, :, :]


class ECA(nnx.Module):
    """Efficient channel attention: 1-D conv over the pooled channel vector, sigmoid gate."""

    def __init__(self, channels: int, *, gamma: int = 2, b: int = 1, rngs: nnx.Rngs):
        k = int(abs((math.log2(channels) + b) / gamma))
        self.kernel_size = k if k % 2 else k + 1
        bound = 1.0 / math.sqrt(self.kernel_size)  # torch Conv1d default (kaiming_uniform a=sqrt(5))
        self.kernel = nnx.Param(
            jax.random.uniform(rngs.params(), (self.kernel_size,), jnp.float32, -bound, bound)
        )

    def __call__(self, x: Array) -> Array:
        y = _avg_pool(x)
        c, k = y.shape[-1], self.kernel_size
        pad = (k - 1) // 2
        y_pad = jnp.pad(y, ((0, 0), (pad, pad)))
        w = self.kernel[...].astype(y.dtype)
        s = sum(w[i] * y_pad[:, i : i + c] for i in range(k))  # cross-correlation, as torch
        return x * jax.nn.sigmoid(s)[:, None, None, :]


class CaCo(nnx.Module):
    """The paper's CaCo: channel attention, then coordinate attention."""

    def __init__(
        self, channels: int, squeeze: int, *, ca_activation: str, dtype: Dtype | None, rngs: nnx.Rngs
    ):
        self.channel = ChannelAttention(channels, squeeze, gate="hardsigmoid", dtype=dtype, rngs=rngs)
        self.coord = CoordinateAttention(channels, act=ca_activation, dtype=dtype, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        return self.coord(self.channel(x))


class CBAM(nnx.Module):
    """CBAM: channel attention (sigmoid gate), then spatial attention."""

    def __init__(self, channels: int, squeeze: int, *, dtype: Dtype | None, rngs: nnx.Rngs):
        self.channel = ChannelAttention(channels, squeeze, gate="sigmoid", dtype=dtype, rngs=rngs)
        self.spatial = SpatialAttention(dtype=dtype, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        return self.spatial(self.channel(x))


class SeCo(nnx.Module):
    """torchvision's SE followed by coordinate attention (the paper's SeCo ablation)."""

    def __init__(
        self, channels: int, squeeze: int, *, ca_activation: str, dtype: Dtype | None, rngs: nnx.Rngs
    ):
        self.se = SqueezeExcitation(channels, squeeze, dtype=dtype, rngs=rngs)
        self.coord = CoordinateAttention(channels, act=ca_activation, dtype=dtype, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        return self.coord(self.se(x))


def make_attention(
    name: str,
    channels: int,
    squeeze: int,
    *,
    ca_activation: str = "swish",
    dtype: Dtype | None = None,
    rngs: nnx.Rngs,
) -> nnx.Module | None:
    """Builds the attention block named ``name`` for ``channels`` (None for 'none')."""
    if name == "se":
        return SqueezeExcitation(channels, squeeze, dtype=dtype, rngs=rngs)
    if name == "caco":
        return CaCo(channels, squeeze, ca_activation=ca_activation, dtype=dtype, rngs=rngs)
    if name == "cbam":
        return CBAM(channels, squeeze, dtype=dtype, rngs=rngs)
    if name == "seco":
        return SeCo(channels, squeeze, ca_activation=ca_activation, dtype=dtype, rngs=rngs)
    if name == "eca":
        return ECA(channels, rngs=rngs)
    if name == "none":
        return None
    raise ValueError(f"unknown attention {name!r}; expected one of {ATTENTIONS}")
