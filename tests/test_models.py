"""Unit tests of the MobileNetV3 family (caco_jax.models): shapes, errors, numerics, counts.

Anything that runs uses arch='tiny' (a few blocks with every kind of block); the
full-size models are checked through ``nnx.eval_shape`` (no weights materialised).
Parity with torchvision itself lives in test_parity.py.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jitted
import variants
from caco_jax.models import ARCHS, MobileNetV3, count_params, create_model
from caco_jax.models.attention import AttentionOptions
from caco_jax.models.layers import (
    BatchNorm,
    activation,
    hard_sigmoid,
    hard_swish,
    make_divisible,
)

# torchvision's mobilenet_v3_small: the expanded widths of the blocks that carry SE,
# and the SE squeeze width torchvision gives each (_make_divisible(C // 4, 8)).
SMALL_SE_WIDTHS = (16, 96, 240, 240, 120, 144, 288, 576, 576)
TORCHVISION_SQUEEZE = {16: 8, 96: 24, 240: 64, 120: 32, 144: 40, 288: 72, 576: 144}


def _abstract(arch: str = "small", **kw) -> MobileNetV3:
    return nnx.eval_shape(lambda: MobileNetV3(arch=arch, rngs=nnx.Rngs(0), **kw))


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def tiny_models() -> dict[str, MobileNetV3]:
    return {att: create_model(arch="tiny", attention=att, num_classes=5, dropout=0.0) for att in variants.blocks()}


# --------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("attention", variants.blocks())
def test_tiny_forward_shapes_and_dtypes(tiny_models, images, attention):
    model = tiny_models[attention]
    model.eval()
    logits, feats = jitted.logits_and_features(model, images)
    assert logits.shape == (2, 5) and logits.dtype == jnp.float32
    assert feats.shape == (2, ARCHS["tiny"].last_conv) and feats.dtype == jnp.float32
    assert np.all(np.isfinite(np.asarray(logits)))
    assert model.num_features == ARCHS["tiny"].last_conv


@pytest.mark.parametrize("attention", variants.blocks())
@pytest.mark.parametrize(("arch", "num_classes", "width"), [("small", 7, 576), ("large", 1000, 960)])
def test_full_size_shapes(attention, arch, num_classes, width):
    model = _abstract(arch, attention=attention, num_classes=num_classes)
    model.eval()
    x = jax.ShapeDtypeStruct((3, 224, 224, 3), jnp.float32)
    logits = nnx.eval_shape(lambda m, x: m(x), model, x)
    feats = nnx.eval_shape(lambda m, x: m.features(x), model, x)
    assert logits.shape == (3, num_classes) and logits.dtype == jnp.float32
    assert feats.shape == (3, width)
    # Non-square input of the size used for HAM10000 (150x200): still (B, classes).
    rect = nnx.eval_shape(lambda m, x: m(x), model, jax.ShapeDtypeStruct((1, 150, 200, 3), jnp.float32))
    assert rect.shape == (1, num_classes)


def test_attention_sits_exactly_where_torchvision_puts_se():
    model = _abstract("small", attention="caco")
    has = [b.attention is not None for b in model.blocks]
    assert has == [spec.attention for spec in ARCHS["small"].blocks]
    widths = [spec.expanded for spec in ARCHS["small"].blocks if spec.attention]
    assert tuple(widths) == SMALL_SE_WIDTHS
    none = _abstract("small", attention="none")
    assert all(b.attention is None for b in none.blocks)


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"attention": "bogus_att"}, "bogus_att"),
        ({"arch": "bogus_arch"}, "bogus_arch"),
        ({"ca_activation": "bogus_act"}, "bogus_act"),
    ],
)
def test_unknown_names_raise_value_error_naming_them(kwargs, name):
    with pytest.raises(ValueError, match=name):
        MobileNetV3(rngs=nnx.Rngs(0), **kwargs)
    with pytest.raises(ValueError, match=name):
        create_model(**kwargs)


def test_unknown_dtype_and_activation_lookup():
    with pytest.raises(ValueError, match="float16x"):
        create_model(dtype="float16x")
    with pytest.raises(ValueError, match="nope"):
        activation("nope")


# --------------------------------------------------------------------------- numerics


def test_hard_activations_match_torch_definitions():
    torch = pytest.importorskip("torch")
    x = np.concatenate([np.linspace(-6, 6, 2401), [-3.0, 3.0, 0.0, -1e-3, 1e-3]]).astype(np.float32)
    t = torch.from_numpy(x)
    np.testing.assert_allclose(
        np.asarray(hard_sigmoid(jnp.asarray(x))), torch.nn.Hardsigmoid()(t).numpy(), rtol=0, atol=1e-7
    )
    np.testing.assert_allclose(
        np.asarray(hard_swish(jnp.asarray(x))), torch.nn.Hardswish()(t).numpy(), rtol=0, atol=1e-6
    )
    # The definitions themselves (not only agreement with torch): saturation and the kinks.
    hs = np.asarray(hard_sigmoid(jnp.asarray([-4.0, -3.0, 0.0, 3.0, 4.0])))
    np.testing.assert_array_equal(hs, [0.0, 0.0, 0.5, 1.0, 1.0])
    np.testing.assert_array_equal(np.asarray(hard_swish(jnp.asarray([-4.0, 4.0]))), [0.0, 4.0])


def test_make_divisible_matches_torchvision_se_widths():
    for c, s in TORCHVISION_SQUEEZE.items():
        assert make_divisible(c // 4, 8) == s


def test_batchnorm_running_stats_follow_numpy_formula():
    rng = np.random.default_rng(1)
    c = 5
    x = (rng.normal(size=(4, 3, 2, c)) * [1, 2, 3, 4, 5] + [0, 1, -2, 3, 10]).astype(np.float32)
    bn = BatchNorm(c)
    scale, bias = rng.uniform(0.5, 1.5, c).astype(np.float32), rng.normal(size=c).astype(np.float32)
    mean0, var0 = rng.normal(size=c).astype(np.float32), rng.uniform(0.5, 2, c).astype(np.float32)
    bn.scale[...], bn.bias[...], bn.mean[...], bn.var[...] = scale, bias, mean0, var0

    y = np.asarray(bn(jnp.asarray(x)))  # training mode: batch statistics
    n = x.size // c
    mu = x.reshape(-1, c).mean(0)
    biased = x.reshape(-1, c).var(0)
    unbiased = biased * n / (n - 1)
    np.testing.assert_allclose(np.asarray(bn.mean[...]), 0.99 * mean0 + 0.01 * mu, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(bn.var[...]), 0.99 * var0 + 0.01 * unbiased, rtol=1e-6, atol=1e-6)
    # Normalised with the *biased* batch variance, eps 1e-3.
    np.testing.assert_allclose(y, (x - mu) / np.sqrt(biased + 1e-3) * scale + bias, rtol=1e-5, atol=1e-5)
    # Stored unbiased and normalised biased really differ here (n = 24), so this can fail.
    assert not np.allclose(0.99 * var0 + 0.01 * biased, np.asarray(bn.var[...]), rtol=1e-7, atol=1e-7)

    # Evaluation mode: running statistics, no update.
    bn.use_running_average = True
    m1, v1 = np.asarray(bn.mean[...]), np.asarray(bn.var[...])
    y_eval = np.asarray(bn(jnp.asarray(x)))
    np.testing.assert_allclose(y_eval, (x - m1) / np.sqrt(v1 + 1e-3) * scale + bias, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(bn.mean[...]), m1)
    np.testing.assert_array_equal(np.asarray(bn.var[...]), v1)


def test_train_and_eval_switch_every_batchnorm():
    model = _abstract("tiny", attention="caco")
    bns = [m for _, m in nnx.iter_modules(model) if isinstance(m, BatchNorm)]
    assert len(bns) > 5
    model.eval()
    assert all(b.use_running_average for b in bns) and model.dropout.deterministic
    model.train()
    assert not any(b.use_running_average for b in bns) and not model.dropout.deterministic


def test_bfloat16_compute_keeps_float32_params_and_logits(images):
    # Measured (tiny; caco/se/cbam; seeds 0-2; 64x64 inputs), relative to the largest
    # fp32 value: features 2.7e-3 .. 1.0e-2, logits 4.3e-3 .. 1.9e-2 (bf16 keeps 8
    # mantissa bits, 2^-8 = 3.9e-3 per rounding, over ~20 layers; the logits are sums
    # with cancellation). Bounds 3e-2 / 5e-2 leave ~2.5x headroom.
    fp32 = create_model(arch="tiny", attention="caco", num_classes=5, seed=0, dropout=0.0)
    bf16 = create_model(arch="tiny", attention="caco", num_classes=5, seed=0, dropout=0.0, dtype="bfloat16")
    # Larger dense weights than the 0.01-std init (same values into both models), so the
    # logits are not dominated by the zero biases and the comparison means something.
    rng = np.random.default_rng(2)
    for name in ("head", "classifier"):
        shape = getattr(fp32, name).kernel.shape
        w = (rng.normal(size=shape) / np.sqrt(shape[0])).astype(np.float32)
        getattr(fp32, name).kernel[...] = w
        getattr(bf16, name).kernel[...] = w
    for model in (fp32, bf16):
        model.eval()
    p32, p16 = (jax.tree.leaves(nnx.state(m, (nnx.Param, nnx.BatchStat))) for m in (fp32, bf16))
    assert all(p.dtype == jnp.float32 for p in p16)
    for a, b in zip(p32, p16, strict=True):  # same seed: the same float32 initial values
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    (l32, f32), (l16, f16) = jitted.logits_and_features(fp32, images), jitted.logits_and_features(bf16, images)
    l32, f32, l16, f16 = map(np.asarray, (l32, f32, l16, f16))
    assert l16.dtype == np.float32 and f16.dtype == np.float32
    feat_err = np.abs(f16 - f32).max() / np.abs(f32).max()
    logit_err = np.abs(l16 - l32).max() / np.abs(l32).max()
    assert feat_err < 3e-2, feat_err
    assert logit_err < 5e-2, logit_err
    assert feat_err > 0, "bf16 model computed exactly the fp32 result: is dtype ignored?"

    # Training-mode BatchNorm statistics stay float32 under bf16 compute.
    bf16.train()
    jitted.logits_and_features(bf16, images)
    assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(nnx.state(bf16, nnx.BatchStat)))
    bf16.eval()


# --------------------------------------------------------------------------- counts


def _se(c: int, s: int) -> int:
    return c * s + s + s * c + c  # fc1 (weight + bias) + fc2 (weight + bias)


def _coord(c: int) -> int:
    mip = max(8, c // 32)
    return c * mip + mip + 2 * mip + 2 * (mip * c + c)  # conv1, BN scale/bias, conv_h + conv_w


def _eca(c: int) -> int:
    k = int(abs((math.log2(c) + 1) / 2))
    return k if k % 2 else k + 1


# The built-in blocks' counts from the papers' formulas (per block of C channels, squeeze S):
# with a preserving init every new part enters through a per-channel gain (C each).
HAND_COUNTS = {
    "se": lambda c, s, gains: _se(c, s),
    "caco": lambda c, s, gains: _se(c, s) + _coord(c) + 2 * gains * c,
    "cbam": lambda c, s, gains: _se(c, s) + 7 * 7 * 2 + 2 + 2 * gains * c,  # + spatial 7x7 conv (2 -> 1) and BN
    "seco": lambda c, s, gains: _se(c, s) + _coord(c) + gains * c,
    "eca": lambda c, s, gains: _eca(c),
}


def test_hand_counts_spot_values():
    # Spot values computed on paper, so a typo in the helpers above cannot hide.
    assert _coord(576) == 576 * 18 + 18 + 36 + 2 * (18 * 576 + 576)  # mip = 18
    assert _coord(96) == 96 * 8 + 8 + 16 + 2 * (8 * 96 + 96)  # mip = max(8, 3) = 8
    assert [_eca(c) for c in (16, 96, 240, 120, 144, 288, 576)] == [3, 3, 5, 3, 5, 5, 5]


def test_builtin_blocks_count_as_the_papers_formulas():
    for name, formula in HAND_COUNTS.items():
        for init in ("plain", "preserve"):
            for c in (16, 96, 576):
                block = nnx.eval_shape(
                    lambda name=name, c=c, init=init: variants.ATTENTION_BLOCKS[name](
                        c, make_divisible(c // 4, 8), AttentionOptions(init=init), rngs=nnx.Rngs(0)
                    )
                )
                assert count_params(block) == formula(c, make_divisible(c // 4, 8), init == "preserve"), (name, c)


@pytest.mark.parametrize("init", ["plain", "preserve"])
@pytest.mark.parametrize("attention", variants.blocks())
@pytest.mark.parametrize("arch", ["tiny", "small", "large"])
def test_count_params_matches_the_pytorch_twin(attention, arch, init):
    """Every block in every attention slot has its PyTorch twin's parameter count, and the model is the
    backbone plus its blocks."""
    reference = pytest.importorskip("caco_jax.interop.torch_reference")
    model = _abstract(arch, attention=attention, num_classes=7, attention_init=init)
    base = count_params(_abstract(arch, attention="none", num_classes=7))
    options = AttentionOptions(init=init)

    def twin_count(c: int) -> int:
        twin = reference.make_block(attention, c, make_divisible(c // 4, 8), options)
        return sum(p.numel() for p in twin.parameters())

    widths = [spec.expanded for spec in ARCHS[arch].blocks if spec.attention]
    for block, spec in zip(model.blocks, ARCHS[arch].blocks, strict=True):
        if spec.attention and variants.ATTENTION_BLOCKS[attention] is not None:
            assert count_params(block.attention) == twin_count(spec.expanded)
        else:
            assert block.attention is None
    assert count_params(model) == base + sum(twin_count(c) for c in widths)


def test_small_se_count_is_torchvision_count():
    # torchvision.models.mobilenet_v3_small(num_classes=7): 1,525,031 parameters
    # (test_parity.py checks this against torchvision's own count).
    assert count_params(_abstract("small", attention="se", num_classes=7)) == 1_525_031
    # Every SE block has torchvision's squeeze width.
    model = _abstract("small", attention="se")
    for block in model.blocks:
        if block.attention is not None:
            c = block.attention.mlp.fc1.in_features
            assert block.attention.mlp.fc1.out_features == TORCHVISION_SQUEEZE[c]


def test_bn_momentum_reaches_every_batchnorm_and_is_validated():
    model = _abstract("tiny", attention="caco", bn_momentum=0.1)
    bns = [m for _, m in nnx.iter_modules(model) if isinstance(m, BatchNorm)]
    assert bns and all(b.momentum == 0.1 for b in bns)
    assert all(b.momentum == 0.01 for _, b in nnx.iter_modules(_abstract("tiny")) if isinstance(b, BatchNorm))
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="bn_momentum"):
            _abstract("tiny", bn_momentum=bad)


# --------------------------------------------------------------------------- fine-tuning from an SE checkpoint


@pytest.fixture(scope="module")
def se_checkpoint():
    """A randomly initialised SE model (BatchNorm statistics randomised) exported as a torchvision state_dict."""
    from caco_jax.interop.convert import export_state_dict

    se = create_model(arch="small", attention="se", num_classes=7, dropout=0.0, seed=3)
    stats = nnx.state(se, nnx.BatchStat)
    rng = np.random.default_rng(0)
    pure = jax.tree.map(lambda v: jnp.asarray(rng.uniform(0.5, 1.5, v.shape), jnp.float32), nnx.to_pure_dict(stats))
    nnx.replace_by_pure_dict(stats, pure)
    nnx.update(se, stats)
    return se, export_state_dict(se)


@pytest.mark.parametrize("attention", variants.starts_as_se())
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_preserve_init_from_an_se_checkpoint_is_the_se_model_at_step_0(se_checkpoint, images, attention, mode):
    """What the paper's model lacked (issue: fine-tuning from ImageNet collapsed): converted from
    an SE checkpoint, the preserving init computes the SE model's logits; the plain one does not."""
    from caco_jax.interop.convert import load_torchvision

    se, sd = se_checkpoint
    x = images[:, :32, :32]
    outputs = {}
    for init in ("preserve", "plain"):
        model = create_model(arch="small", attention=attention, attention_init=init, num_classes=7, dropout=0.0)
        load_torchvision(model, sd)
        getattr(model, mode)()
        outputs[init] = np.asarray(jitted.logits(model, x))
    reference = nnx.clone(se)
    getattr(reference, mode)()
    expected = np.asarray(jitted.logits(reference, x))
    np.testing.assert_allclose(outputs["preserve"], expected, rtol=0, atol=1e-5)
    assert np.abs(outputs["plain"] - expected).max() > 1e-2  # the check can fail
