"""Depthwise convolution (one k x k filter per channel) in three interchangeable forms.

XLA's CPU backend runs a grouped convolution with ``feature_group_count == channels``
one to two orders of magnitude slower than PyTorch (docs/performance.md), and
MobileNetV3 is mostly depthwise convolutions. The forms, all with the same parameter (an
HWIO kernel ``(k, k, 1, C)``, exactly ``nnx.Conv``'s), so checkpoints do not care:

* ``conv``: ``lax.conv_general_dilated`` with ``feature_group_count = C`` (what cuDNN
  runs well on a GPU);
* ``shifts``: the sum over the k*k kernel taps of a strided slice of the padded input
  times that tap's per-channel weights; reverse-mode autodiff of that sum;
* ``shifts_vjp``: the same forward pass with a hand-written backward pass. The input
  gradient is again a tap sum (of the stride-dilated output gradient with the flipped
  kernel); the kernel gradient, k*k multiply-reductions over the whole batch, which
  autodiff runs as k*k passes over tensors far larger than the cache, is a ``lax.scan``
  over small slices of the batch, so each slice's k*k reductions run in cache.

``auto`` resolves per backend from the measurements in the README: ``shifts_vjp`` on
the CPU, ``conv`` elsewhere (on a GPU only compile times have been measured so far, not
step times, so cuDNN's grouped convolution stays the choice there).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array

DEPTHWISE_IMPLS: tuple[str, ...] = ("auto", "conv", "shifts", "shifts_vjp")
# Bytes of input per lax.scan iteration of the kernel gradient: the slice, its output
# gradient and the k*k partial sums stay in a core's L2 cache (measured on a 2 MiB L2).
_SCAN_BYTES = 512 * 1024


def resolve(impl: str, backend: str | None = None) -> str:
    """The concrete implementation ``impl`` stands for on ``backend`` (default: JAX's)."""
    if impl not in DEPTHWISE_IMPLS:
        raise ValueError(f"unknown depthwise implementation {impl!r}; expected one of {DEPTHWISE_IMPLS}")
    if impl != "auto":
        return impl
    return "shifts_vjp" if (backend or jax.default_backend()) == "cpu" else "conv"


def _out_size(n: int, k: int, stride: int) -> int:
    pad = (k - 1) // 2
    return (n + 2 * pad - k) // stride + 1


def _tap(xp: Array, i: int, j: int, stride: int, out_h: int, out_w: int) -> Array:
    """xp[:, i + stride*oh, j + stride*ow, :] for all (oh, ow): one tap's input window."""
    b, c = xp.shape[0], xp.shape[-1]
    return lax.slice(
        xp, (0, i, j, 0), (b, i + stride * (out_h - 1) + 1, j + stride * (out_w - 1) + 1, c), (1, stride, stride, 1)
    )


def _tap_sum(xp: Array, kernel: Array, stride: int, out_h: int, out_w: int) -> Array:
    """sum_{i,j} tap(i, j) * kernel[i, j, 0, :] over an already padded input."""
    k = kernel.shape[0]
    y = None
    for i in range(k):
        for j in range(k):
            t = _tap(xp, i, j, stride, out_h, out_w) * kernel[i, j, 0]
            y = t if y is None else y + t
    assert y is not None, "an empty kernel"
    return y


def _pad(x: Array, k: int) -> Array:
    p = (k - 1) // 2
    return jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))


def _shifts(x: Array, kernel: Array, stride: int) -> Array:
    k = kernel.shape[0]
    return _tap_sum(_pad(x, k), kernel, stride, _out_size(x.shape[1], k, stride), _out_size(x.shape[2], k, stride))


def _conv(x: Array, kernel: Array, stride: int) -> Array:
    p = (kernel.shape[0] - 1) // 2
    return lax.conv_general_dilated(
        x,
        kernel,
        (stride, stride),
        ((p, p), (p, p)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=x.shape[-1],
    )


def batch_chunk(x: Array) -> int:
    """Largest divisor of the batch whose slice of ``x`` fits ``_SCAN_BYTES``, at least 1."""
    per_example = x[0].size * x.dtype.itemsize
    best = 1
    for d in range(1, x.shape[0] + 1):
        if x.shape[0] % d == 0 and d * per_example <= _SCAN_BYTES:
            best = d
    return best


def _kernel_grad(xp: Array, g: Array, k: int, stride: int) -> Array:
    """dL/dkernel (k, k, 1, C) in float32: per tap, sum over batch and space of tap * g."""
    b = xp.shape[0]
    out_h, out_w = g.shape[1], g.shape[2]
    chunk = batch_chunk(xp)
    xs = xp.reshape(b // chunk, chunk, *xp.shape[1:])
    gs = g.reshape(b // chunk, chunk, *g.shape[1:])

    def body(acc: Array, xg: tuple[Array, Array]) -> tuple[Array, None]:
        xb, gb = xg
        gb = gb.astype(jnp.float32)
        taps = [
            jnp.sum(_tap(xb, i, j, stride, out_h, out_w).astype(jnp.float32) * gb, axis=(0, 1, 2))
            for i in range(k)
            for j in range(k)
        ]
        return acc + jnp.stack(taps), None

    total, _ = lax.scan(body, jnp.zeros((k * k, xp.shape[-1]), jnp.float32), (xs, gs))
    return total.reshape(k, k, 1, -1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _shifts_vjp(x: Array, kernel: Array, stride: int) -> Array:
    return _shifts(x, kernel, stride)


def _shifts_vjp_fwd(x: Array, kernel: Array, stride: int) -> tuple[Array, tuple[Array, Array]]:
    return _shifts(x, kernel, stride), (x, kernel)


def _shifts_vjp_bwd(stride: int, res: tuple[Array, Array], g: Array) -> tuple[Array, Array]:
    x, kernel = res
    k = kernel.shape[0]
    p = (k - 1) // 2
    h, w = x.shape[1], x.shape[2]
    out_h, out_w = g.shape[1], g.shape[2]
    # Input gradient: dilate g by the stride and pad it so that a stride-1 tap sum with the
    # flipped kernel lands every tap's contribution where the forward pass read it.
    zero = jnp.zeros((), g.dtype)
    gd = lax.pad(
        g,
        zero,
        (
            (0, 0, 0),
            (k - 1 - p, h + p - stride * (out_h - 1) - 1, stride - 1),
            (k - 1 - p, w + p - stride * (out_w - 1) - 1, stride - 1),
            (0, 0, 0),
        ),
    )
    dx = _tap_sum(gd, kernel[::-1, ::-1], 1, h, w)
    dk = _kernel_grad(_pad(x, k), g, k, stride)
    return dx.astype(x.dtype), dk.astype(kernel.dtype)


_shifts_vjp.defvjp(_shifts_vjp_fwd, _shifts_vjp_bwd)

_IMPLS: dict[str, Callable[[Array, Array, int], Array]] = {"conv": _conv, "shifts": _shifts, "shifts_vjp": _shifts_vjp}


def depthwise_conv(x: Array, kernel: Array, *, stride: int = 1, impl: str = "auto") -> Array:
    """Depthwise conv of NHWC ``x`` with an HWIO ``(k, k, 1, C)`` kernel, padding (k-1)//2 (torch's)."""
    if kernel.shape[2] != 1 or kernel.shape[3] != x.shape[-1]:
        raise ValueError(f"depthwise kernel must be (k, k, 1, {x.shape[-1]}), got {kernel.shape}")
    return _IMPLS[resolve(impl)](x, kernel, stride)
