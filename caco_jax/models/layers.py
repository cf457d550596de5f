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

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from caco_jax.models.depthwise import batch_chunk, depthwise_conv, resolve

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


def _moments(x: Array) -> tuple[Array, Array]:
    """Per-channel mean and biased variance of float32 ``x`` in one pass over it.

    Sums of (x - K) and (x - K)^2 with K the first pixel of each channel, a shift that
    keeps E[d^2] - E[d]^2 free of cancellation when the mean is large against the spread.
    """
    axes = tuple(range(x.ndim - 1))
    shift = jax.lax.stop_gradient(x.reshape(-1, x.shape[-1])[0])
    d = x - shift
    m1, m2 = jnp.mean(d, axis=axes), jnp.mean(jnp.square(d), axis=axes)
    return shift + m1, jnp.maximum(m2 - jnp.square(m1), 0.0)


@jax.custom_vjp
def batch_norm_train(x: Array, scale: Array, bias: Array, eps: float) -> tuple[Array, Array, Array]:
    """Training-mode BatchNorm of float32 ``x`` over all but the last axis: (y, mean, biased var).

    A hand-written backward pass: two per-channel sums and one elementwise pass, where
    autodiff of the forward formula makes several more passes over the activations.
    """
    mean, var = _moments(x)
    return (x - mean) * (jax.lax.rsqrt(var + eps) * scale) + bias, mean, var


def _batch_norm_fwd(x: Array, scale: Array, bias: Array, eps: float):
    mean, var = _moments(x)
    inv = jax.lax.rsqrt(var + eps)
    return ((x - mean) * (inv * scale) + bias, mean, var), (x, mean, inv, scale)


def _batch_norm_bwd(res, cts):
    x, mean, inv, scale = res
    g, g_mean, g_var = cts
    axes = tuple(range(x.ndim - 1))
    n = x.size // x.shape[-1]
    xhat = (x - mean) * inv
    g_bias = jnp.sum(g, axis=axes)
    g_scale = jnp.sum(g * xhat, axis=axes)
    # Through the normalisation, plus the (usually zero) cotangents of the returned statistics.
    g_x = (scale * inv / n) * (n * g - g_bias - xhat * g_scale) + (g_mean + 2.0 * g_var * (x - mean)) / n
    return g_x, g_scale, g_bias, None


batch_norm_train.defvjp(_batch_norm_fwd, _batch_norm_bwd)


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
            inv = jax.lax.rsqrt(self.var[...] + self.eps) * self.scale[...]
            return ((x32 - self.mean[...]) * inv + self.bias[...]).astype(out_dtype)
        y, mean, var = batch_norm_train(x32, self.scale[...], self.bias[...], self.eps)  # var: biased
        n = x32.size // x32.shape[-1]
        unbiased = var * (n / max(n - 1, 1))
        m = self.momentum
        self.mean[...] = (1.0 - m) * self.mean[...] + m * jax.lax.stop_gradient(mean)
        self.var[...] = (1.0 - m) * self.var[...] + m * jax.lax.stop_gradient(unbiased)
        return y.astype(out_dtype)


class Conv2d(nnx.Module):
    """A bias-free 2-D conv with torch's symmetric padding (k-1)//2 and torchvision's init.

    The parameter is ``kernel``, HWIO ``(k, k, in / groups, out)``, exactly as ``nnx.Conv``
    stores it; ``groups`` is 1 (dense) or the channel count (depthwise). How it is computed:

    * 1x1: a matrix product over the pixels (XLA's CPU backend runs the kernel gradient of
      a 1x1 *convolution* as a convolution with a whole-image window, ~20x slower);
    * depthwise: ``caco_jax.models.depthwise`` with ``impl``;
    * dense k x k (the stem, CBAM's spatial conv): ``lax.conv_general_dilated``; unless
      ``impl`` resolves to ``conv``, its kernel gradient is a matrix product of the input's
      patches with the output gradient (:func:`dense_conv`).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: int,
        *,
        stride: int = 1,
        groups: int = 1,
        impl: str = "auto",
        dtype: Dtype | None = None,
        rngs: nnx.Rngs,
    ):
        if groups not in (1, in_features) or (groups > 1 and out_features != in_features):
            raise ValueError(
                f"groups must be 1 or in_features == out_features (depthwise), got groups={groups} "
                f"for {in_features} -> {out_features}"
            )
        shape = (kernel_size, kernel_size, in_features // groups, out_features)
        self.kernel = nnx.Param(torch_conv_init(rngs.params(), shape))
        self.stride = stride
        self.depthwise = groups > 1
        self.impl = resolve(impl)
        self.dtype = dtype

    def __call__(self, x: Array) -> Array:
        dtype = self.dtype or x.dtype
        x, kernel = x.astype(dtype), self.kernel[...].astype(dtype)
        k, s = kernel.shape[0], self.stride
        if self.depthwise:
            return depthwise_conv(x, kernel, stride=s, impl=self.impl)
        if k == 1:
            x = x[:, ::s, ::s, :]
            return pointwise(x, kernel[0, 0]) if self.impl != "conv" else jnp.dot(x, kernel[0, 0])
        if self.impl == "conv":
            return _xla_conv(x, kernel, s)
        return dense_conv(x, kernel, s)


@jax.custom_vjp
def pointwise(x: Array, kernel: Array) -> Array:
    """A 1x1 conv as a matrix product over the pixels, ``x @ kernel``, whose kernel gradient is summed
    over cache-sized slices of the batch (XLA's CPU backend otherwise transposes the whole
    [pixels, channels] gradient through memory to contract over the pixels)."""
    return jnp.dot(x, kernel)


def _pointwise_fwd(x: Array, kernel: Array) -> tuple[Array, tuple[Array, Array]]:
    return jnp.dot(x, kernel), (x, kernel)


def _pointwise_bwd(res: tuple[Array, Array], g: Array) -> tuple[Array, Array]:
    x, kernel = res
    g_x = jnp.dot(g, kernel.T)
    chunk = batch_chunk(x)
    xs = x.reshape(x.shape[0] // chunk, -1, x.shape[-1])
    gs = g.reshape(g.shape[0] // chunk, -1, g.shape[-1])

    def body(acc: Array, xg: tuple[Array, Array]) -> tuple[Array, None]:
        return acc + jnp.dot(xg[0].T, xg[1], preferred_element_type=jnp.float32), None

    g_kernel, _ = jax.lax.scan(body, jnp.zeros(kernel.shape, jnp.float32), (xs, gs))
    return g_x, g_kernel.astype(kernel.dtype)


pointwise.defvjp(_pointwise_fwd, _pointwise_bwd)


def _xla_conv(x: Array, kernel: Array, stride: int) -> Array:
    p = (kernel.shape[0] - 1) // 2
    return jax.lax.conv_general_dilated(
        x, kernel, (stride, stride), ((p, p), (p, p)), dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def dense_conv(x: Array, kernel: Array, stride: int) -> Array:
    """A dense k x k conv (padding (k-1)//2): XLA's convolution forward, kernel gradient as one
    matrix product of the input's patches with the output gradient (XLA's CPU backend runs
    the convolution-shaped kernel gradient tens of times slower)."""
    return _xla_conv(x, kernel, stride)


def _dense_conv_fwd(x: Array, kernel: Array, stride: int) -> tuple[Array, tuple[Array, Array]]:
    return _xla_conv(x, kernel, stride), (x, kernel)


def _dense_conv_bwd(stride: int, res: tuple[Array, Array], g: Array) -> tuple[Array, Array]:
    x, kernel = res
    _, input_vjp = jax.vjp(lambda inp: _xla_conv(inp, kernel, stride), x)  # dropped by XLA when unused
    (g_x,) = input_vjp(g)
    k = kernel.shape[0]
    chunk = batch_chunk(x)
    # A scan over slices of the batch: x enters as a loop input, so XLA materialises it
    # once instead of fusing its producer (e.g. the augmentation) into all k*k slices.
    xs = x.reshape(x.shape[0] // chunk, chunk, *x.shape[1:])
    gs = g.reshape(g.shape[0] // chunk, chunk, *g.shape[1:])

    def body(acc: Array, xg: tuple[Array, Array]) -> tuple[Array, None]:
        cols = patches(xg[0], k, stride)
        return acc + jnp.dot(
            cols.reshape(-1, cols.shape[-1]).T, xg[1].reshape(-1, g.shape[-1]), preferred_element_type=jnp.float32
        ), None

    g_kernel, _ = jax.lax.scan(body, jnp.zeros((k * k * x.shape[-1], g.shape[-1]), jnp.float32), (xs, gs))
    return g_x, g_kernel.reshape(kernel.shape).astype(kernel.dtype)


dense_conv.defvjp(_dense_conv_fwd, _dense_conv_bwd)


def patches(x: Array, kernel_size: int, stride: int) -> Array:
    """(B, Ho, Wo, k*k*C) windows of NHWC ``x`` (padding (k-1)//2), ordered as an HWIO kernel's rows."""
    k, p = kernel_size, (kernel_size - 1) // 2
    b, h, w, c = x.shape
    out_h, out_w = (h + 2 * p - k) // stride + 1, (w + 2 * p - k) // stride + 1
    xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    taps = [
        jax.lax.slice(
            xp, (0, i, j, 0), (b, i + stride * (out_h - 1) + 1, j + stride * (out_w - 1) + 1, c), (1, stride, stride, 1)
        )
        for i in range(k)
        for j in range(k)
    ]
    return jnp.concatenate(taps, axis=-1)


class ConvBNAct(nnx.Module):
    """torchvision's Conv2dNormActivation: conv (no bias) -> BatchNorm -> activation.

    ``groups == in_features == out_features`` makes the conv depthwise; ``depthwise``
    picks how convolutions are computed (see :class:`Conv2d`).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: int,
        *,
        stride: int = 1,
        groups: int = 1,
        act: str = "identity",
        depthwise: str = "auto",
        dtype: Dtype | None = None,
        rngs: nnx.Rngs,
    ):
        self.conv = Conv2d(
            in_features, out_features, kernel_size, stride=stride, groups=groups, impl=depthwise, dtype=dtype, rngs=rngs
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
