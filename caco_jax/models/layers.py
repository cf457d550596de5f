"""Building blocks shared by the MobileNetV3 family: activations, BatchNorm, conv-BN-act.

Everything is NHWC. Numerics follow torchvision so that converted checkpoints give
the same outputs:

* ``hard_sigmoid(x) = relu6(x + 3) / 6`` and ``hard_swish(x) = x * hard_sigmoid(x)``
  (torch.nn.Hardsigmoid / Hardswish);
* BatchNorm with eps 1e-3 and torch momentum 0.01 (i.e. the running average keeps
  99 % of the old value), normalising with the *biased* batch variance but storing
  the *unbiased* one in ``var``, exactly as torch.nn.BatchNorm2d does;
* explicit symmetric padding ``(k - 1) // 2`` (never ``'SAME'``, which pads
  asymmetrically for stride 2 and breaks parity).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

Array = jax.Array
Dtype = Any

BN_EPS = 1e-3
BN_MOMENTUM = 0.01  # torch convention: new = (1 - m) * old + m * batch


def hard_sigmoid(x: Array) -> Array:
    """torch.nn.Hardsigmoid: relu6(x + 3) / 6."""
    return jnp.clip(x + 3.0, 0.0, 6.0) / 6.0


def hard_swish(x: Array) -> Array:
    """torch.nn.Hardswish: x * relu6(x + 3) / 6."""
    return x * hard_sigmoid(x)


def identity(x: Array) -> Array:
    return x


ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "relu": jax.nn.relu,
    "hardswish": hard_swish,
    "swish": jax.nn.swish,
    "hardsigmoid": hard_sigmoid,
    "sigmoid": jax.nn.sigmoid,
    "identity": identity,
}


def activation(name: str) -> Callable[[Array], Array]:
    """Looks an activation up by name; the error lists the known names."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; expected one of {sorted(ACTIVATIONS)}") from None


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Rounds channel counts as torchvision does (never more than 10 % down)."""
    min_value = divisor if min_value is None else min_value
    new = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new < 0.9 * value:
        new += divisor
    return new


def torch_conv_init(key: Array, shape: tuple[int, ...], dtype: Dtype = jnp.float32) -> Array:
    """kaiming_normal_(mode='fan_out') for an HWIO kernel, as torchvision initialises convs.

    torch's fan_out for a grouped conv is out_channels * kh * kw (the group size does
    not enter), which for HWIO ``(kh, kw, in/groups, out)`` is ``kh * kw * out``.
    """
    kh, kw, _, out = shape
    std = (2.0 / (kh * kw * out)) ** 0.5
    return std * jax.random.normal(key, shape, dtype)


class BatchNorm(nnx.Module):
    """BatchNorm over the last axis with torch.nn.BatchNorm2d semantics.

    ``use_running_average`` follows NNX's convention, so ``model.train()`` and
    ``model.eval()`` switch it. Statistics are computed in float32 whatever the
    compute dtype. Under ``jax.jit`` with a batch sharded over devices the means are
    global (XLA inserts the all-reduce), so this is synchronised BatchNorm for free.
    """

    def __init__(
        self,
        num_features: int,
        *,
        eps: float = BN_EPS,
        momentum: float = BN_MOMENTUM,
        dtype: Dtype | None = None,
        use_running_average: bool = False,
    ):
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.dtype = dtype
        self.use_running_average = use_running_average
        self.scale = nnx.Param(jnp.ones((num_features,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((num_features,), jnp.float32))
        self.mean = nnx.BatchStat(jnp.zeros((num_features,), jnp.float32))
        self.var = nnx.BatchStat(jnp.ones((num_features,), jnp.float32))

    def __call__(self, x: Array) -> Array:
        out_dtype = self.dtype or x.dtype
        x32 = x.astype(jnp.float32)
        if self.use_running_average:
            mean, var = self.mean[...], self.var[...]
        else:
            axes = tuple(range(x.ndim - 1))
            mean = jnp.mean(x32, axis=axes)
            var = jnp.mean(jnp.square(x32 - mean), axis=axes)  # biased, used to normalise
            n = x32.size // x32.shape[-1]
            unbiased = var * (n / max(n - 1, 1))
            m = self.momentum
            self.mean[...] = (1.0 - m) * self.mean[...] + m * jax.lax.stop_gradient(mean)
            self.var[...] = (1.0 - m) * self.var[...] + m * jax.lax.stop_gradient(unbiased)
        inv = jax.lax.rsqrt(var + self.eps) * self.scale[...]
        y = (x32 - mean) * inv + self.bias[...]
        return y.astype(out_dtype)


def conv(
    in_features: int,
    out_features: int,
    kernel_size: int,
    *,
    stride: int = 1,
    groups: int = 1,
    use_bias: bool = False,
    dtype: Dtype | None = None,
    rngs: nnx.Rngs,
) -> nnx.Conv:
    """A 2-D conv with torch's symmetric padding and torchvision's initialisation."""
    pad = (kernel_size - 1) // 2
    return nnx.Conv(
        in_features,
        out_features,
        (kernel_size, kernel_size),
        strides=(stride, stride),
        padding=((pad, pad), (pad, pad)),
        feature_group_count=groups,
        use_bias=use_bias,
        kernel_init=torch_conv_init,
        dtype=dtype,
        rngs=rngs,
    )


class ConvBNAct(nnx.Module):
    """torchvision's Conv2dNormActivation: conv (no bias) -> BatchNorm -> activation."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: int,
        *,
        stride: int = 1,
        groups: int = 1,
        act: str = "identity",
        dtype: Dtype | None = None,
        rngs: nnx.Rngs,
    ):
        self.conv = conv(
            in_features, out_features, kernel_size, stride=stride, groups=groups, dtype=dtype, rngs=rngs
        )
        self.bn = BatchNorm(out_features, dtype=dtype)
        self.act_name = act

    def __call__(self, x: Array) -> Array:
        return activation(self.act_name)(self.bn(self.conv(x)))


class PointwiseMLP(nnx.Module):
    """Two 1x1 convs with bias on a pooled (B, C) descriptor: C -> hidden -> C.

    This is the squeeze-excitation MLP (torchvision names the layers fc1/fc2). On a
    pooled vector a 1x1 conv is a dense layer, so it is stored as one (kernel (C, hidden)).
    """

    def __init__(self, channels: int, hidden: int, *, dtype: Dtype | None = None, rngs: nnx.Rngs):
        init = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")
        self.fc1 = nnx.Linear(channels, hidden, kernel_init=init, dtype=dtype, rngs=rngs)
        self.fc2 = nnx.Linear(hidden, channels, kernel_init=init, dtype=dtype, rngs=rngs)

    def __call__(self, s: Array) -> Array:
        return self.fc2(jax.nn.relu(self.fc1(s)))
