"""The three depthwise-conv forms and the dense-conv kernel gradient (caco_jax.models.depthwise, layers).

XLA's grouped convolution (``conv``) is the reference: ``shifts`` and ``shifts_vjp`` must
give its outputs, input gradients and kernel gradients for every kernel size and stride
the model uses, on odd, non-square inputs (where an off-by-one in the padding or the
stride-dilated input gradient would show). Whole-model parity with torchvision for each
form is in test_parity.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from caco_jax.models.depthwise import DEPTHWISE_IMPLS, depthwise_conv, resolve
from caco_jax.models.layers import Conv2d, dense_conv

CASES = [(3, 1), (3, 2), (5, 1), (5, 2), (7, 2)]


def _data(k: int, stride: int, shape=(3, 13, 10, 6), seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=shape).astype(np.float32)
    kernel = rng.normal(size=(k, k, 1, shape[-1])).astype(np.float32)
    out = jax.eval_shape(lambda a, b: depthwise_conv(a, b, stride=stride, impl="conv"), x, kernel)
    r = rng.normal(size=out.shape).astype(np.float32)
    return x, kernel, r


def _value_and_grads(impl: str, stride: int):
    def loss(x, kernel, r):
        return jnp.sum(depthwise_conv(x, kernel, stride=stride, impl=impl) * r)

    return jax.jit(
        lambda x, k, r: (depthwise_conv(x, k, stride=stride, impl=impl), jax.grad(loss, argnums=(0, 1))(x, k, r))
    )


@pytest.mark.parametrize(("k", "stride"), CASES)
@pytest.mark.parametrize("impl", ["shifts", "shifts_vjp"])
def test_tap_sums_match_xla_grouped_conv(impl, k, stride):
    x, kernel, r = _data(k, stride)
    y_ref, (gx_ref, gk_ref) = _value_and_grads("conv", stride)(x, kernel, r)
    y, (gx, gk) = _value_and_grads(impl, stride)(x, kernel, r)
    assert y.shape == y_ref.shape == (3, -(-13 // stride), -(-10 // stride), 6)
    np.testing.assert_allclose(y, y_ref, rtol=0, atol=1e-5)
    np.testing.assert_allclose(gx, gx_ref, rtol=0, atol=1e-5 * float(jnp.abs(gx_ref).max()))
    np.testing.assert_allclose(gk, gk_ref, rtol=0, atol=1e-5 * float(jnp.abs(gk_ref).max()))


def test_kernel_gradient_scans_over_batch_chunks():
    # A batch large enough that the kernel-gradient scan runs several iterations.
    x, kernel, r = _data(5, 2, shape=(64, 40, 40, 8), seed=1)
    _, (_, gk_ref) = _value_and_grads("conv", 2)(x, kernel, r)
    _, (_, gk) = _value_and_grads("shifts_vjp", 2)(x, kernel, r)
    np.testing.assert_allclose(gk, gk_ref, rtol=0, atol=1e-5 * float(jnp.abs(gk_ref).max()))


def test_bfloat16_inputs_keep_their_dtype_and_accumulate_the_kernel_gradient_in_float32():
    x, kernel, r = _data(5, 1, seed=2)
    xb, kb, rb = (jnp.asarray(a, jnp.bfloat16) for a in (x, kernel, r))
    y, (gx, gk) = _value_and_grads("shifts_vjp", 1)(xb, kb, rb)
    assert y.dtype == gx.dtype == gk.dtype == jnp.bfloat16
    _, (_, gk32) = _value_and_grads("conv", 1)(x, kernel, r)
    np.testing.assert_allclose(np.asarray(gk, np.float32), gk32, rtol=0.05, atol=0.05 * float(jnp.abs(gk32).max()))


@pytest.mark.parametrize("stride", [1, 2])
def test_dense_conv_kernel_gradient_matches_xla(stride):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(4, 15, 12, 3)).astype(np.float32)
    kernel = rng.normal(size=(3, 3, 3, 8)).astype(np.float32)

    def loss(fn, x, kernel):
        y = fn(x, kernel)
        return jnp.sum(y * jnp.cos(jnp.arange(y.size, dtype=jnp.float32).reshape(y.shape)))

    def xla(x, kernel):
        return jax.lax.conv_general_dilated(
            x, kernel, (stride, stride), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")
        )

    ours = jax.jit(jax.grad(lambda x, k: loss(lambda a, b: dense_conv(a, b, stride), x, k), argnums=(0, 1)))(x, kernel)
    ref = jax.jit(jax.grad(lambda x, k: loss(xla, x, k), argnums=(0, 1)))(x, kernel)
    for a, b in zip(ours, ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * float(jnp.abs(b).max()))


def test_auto_resolves_per_backend_and_bad_names_fail():
    assert resolve("auto", "cpu") == "shifts_vjp"
    assert resolve("auto", "gpu") == "conv" and resolve("auto", "tpu") == "conv"
    assert resolve("shifts", "gpu") == "shifts"
    assert set(DEPTHWISE_IMPLS) == {"auto", "conv", "shifts", "shifts_vjp"}
    with pytest.raises(ValueError, match="winograd"):
        resolve("winograd")
    with pytest.raises(ValueError, match=r"\(k, k, 1, 6\)"):
        depthwise_conv(jnp.zeros((1, 4, 4, 6)), jnp.zeros((3, 3, 2, 6)))


def test_conv2d_keeps_nnx_conv_parameter_layout_and_rejects_other_groupings():
    dw = Conv2d(16, 16, 5, groups=16, rngs=nnx.Rngs(0))
    dense = Conv2d(3, 16, 3, stride=2, rngs=nnx.Rngs(0))
    assert dw.kernel.shape == (5, 5, 1, 16) and dense.kernel.shape == (3, 3, 3, 16)
    with pytest.raises(ValueError, match="groups"):
        Conv2d(16, 32, 3, groups=4, rngs=nnx.Rngs(0))


def test_pointwise_kernel_gradient_summed_over_batch_slices_matches_the_plain_product():
    """The 1x1 conv's custom gradient (a scan over cache-sized batch slices) equals autodiff of x @ W,
    for a batch large enough that the scan runs several slices, and in bfloat16 keeps its dtype."""
    from caco_jax.models.depthwise import batch_chunk
    from caco_jax.models.layers import pointwise

    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.normal(size=(48, 20, 20, 16)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(16, 24)), jnp.float32)
    assert batch_chunk(x) < x.shape[0]

    def loss(fn, x, k):
        y = fn(x, k)
        return jnp.sum(y * jnp.cos(jnp.arange(y.size, dtype=jnp.float32).reshape(y.shape)))

    ours = jax.jit(jax.grad(lambda x, k: loss(pointwise, x, k), argnums=(0, 1)))(x, kernel)
    ref = jax.jit(jax.grad(lambda x, k: loss(jnp.dot, x, k), argnums=(0, 1)))(x, kernel)
    for a, b in zip(ours, ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * float(jnp.abs(b).max()))
    gx, gk = jax.grad(lambda x, k: loss(pointwise, x, k).astype(jnp.float32), argnums=(0, 1))(
        x.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16)
    )
    assert gx.dtype == gk.dtype == jnp.bfloat16
