"""Attention blocks (caco_jax.models.attention) against independent PyTorch versions.

The PyTorch blocks below are written here from the descriptions in attention.py's
docstring and the papers (SE: Hu et al.; CBAM: Woo et al. 2018; coordinate attention:
Hou et al. 2021, following the official code's layout; ECA: Wang et al. 2020), in
NCHW, sharing no code with the JAX side. Weights are copied across from the NNX
module after randomising every parameter and BatchNorm statistic (so BN matters),
and outputs must agree in evaluation mode and in training mode (where the updated
BN running statistics must agree too), plus input and parameter gradients.

BatchNorm uses the project's constants (eps 1e-3, torch momentum 0.01) everywhere,
including inside CBAM's spatial half and coordinate attention (the official CA code
uses torch's defaults 1e-5 / 0.1; ours are one setting for the whole network).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from caco_jax.models.attention import (
    ATTENTIONS,
    CBAM,
    AttentionOptions,
    ECA,
    CaCo,
    CoordinateAttention,
    SeCo,
    SqueezeExcitation,
    make_attention,
)
from caco_jax.models.layers import BatchNorm, make_divisible

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

EPS, MOMENTUM = 1e-3, 0.01
# Measured worst cases over the cases below (fp32, CPU, values O(1)): outputs 5.4e-7
# (eval) and 1.1e-6 (train), running statistics 3.0e-8, input gradients 6.0e-7 and
# parameter gradients 1.7e-6 relative to the block's largest gradient entry. Bound:
# 1e-5 (absolute for outputs, relative for gradients), ~6x headroom; 1e-6 for the
# statistics (a biased instead of unbiased variance moves them by only
# momentum * var / (n - 1), ~1e-5 here, so the looser bound would miss it).
ATOL = 1e-5
STATS_ATOL = 1e-6

# --------------------------------------------------------------------------- PyTorch references


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=EPS, momentum=MOMENTUM)


class TorchMLP(nn.Module):
    """The SE squeeze MLP: 1x1 conv C->S, ReLU, 1x1 conv S->C (with biases)."""

    def __init__(self, c: int, s: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(c, s, 1), nn.Conv2d(s, c, 1)

    def forward(self, v):
        return self.fc2(F.relu(self.fc1(v)))


class TorchSE(nn.Module):
    """MobileNetV3's SE: x * hardsigmoid(MLP(avgpool(x)))."""

    def __init__(self, c: int, s: int):
        super().__init__()
        self.mlp = TorchMLP(c, s)

    def forward(self, x):
        return x * F.hardsigmoid(self.mlp(F.adaptive_avg_pool2d(x, 1)))


class TorchChannel(nn.Module):
    """CBAM channel attention: x * gate(MLP(avgpool x) + MLP(maxpool x)), one shared MLP."""

    def __init__(self, c: int, s: int, gate):
        super().__init__()
        self.mlp, self.gate = TorchMLP(c, s), gate

    def forward(self, x):
        avg = F.adaptive_avg_pool2d(x, 1)
        mx = F.adaptive_max_pool2d(x, 1)
        return x * self.gate(self.mlp(avg) + self.mlp(mx))


class TorchSpatial(nn.Module):
    """CBAM spatial attention: x * sigmoid(BN(conv7x7([max over C, mean over C])))."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, 7, padding=3, bias=False)
        self.bn = _bn(1)

    def forward(self, x):
        pooled = torch.cat([x.amax(dim=1, keepdim=True), x.mean(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.bn(self.conv(pooled)))


class TorchCoord(nn.Module):
    """Coordinate attention, laid out as the official CoordAtt code (Hou et al.)."""

    def __init__(self, c: int, act):
        super().__init__()
        mip = max(8, c // 32)
        self.conv1 = nn.Conv2d(c, mip, 1)
        self.bn1 = _bn(mip)
        self.act = act
        self.conv_h = nn.Conv2d(mip, c, 1)
        self.conv_w = nn.Conv2d(mip, c, 1)

    def forward(self, x):
        _, _, h, w = x.shape
        x_h = F.adaptive_avg_pool2d(x, (h, 1))  # z^h: (n, c, h, 1)
        x_w = F.adaptive_avg_pool2d(x, (1, w)).permute(0, 1, 3, 2)  # z^w: (n, c, w, 1)
        y = self.act(self.bn1(self.conv1(torch.cat([x_h, x_w], dim=2))))
        f_h, f_w = torch.split(y, [h, w], dim=2)
        a_h = torch.sigmoid(self.conv_h(f_h))  # (n, c, h, 1)
        a_w = torch.sigmoid(self.conv_w(f_w.permute(0, 1, 3, 2)))  # (n, c, 1, w)
        return x * a_h * a_w


class TorchECA(nn.Module):
    """ECA: x * sigmoid(conv1d_k(avgpool(x) along channels)), no bias, k adaptive and odd."""

    def __init__(self, c: int, gamma: int = 2, b: int = 1):
        super().__init__()
        t = int(abs((math.log2(c) + b) / gamma))
        k = t if t % 2 else t + 1
        self.conv = nn.Conv1d(1, 1, k, padding=(k - 1) // 2, bias=False)

    def forward(self, x):
        y = F.adaptive_avg_pool2d(x, 1)  # (n, c, 1, 1)
        y = self.conv(y.squeeze(-1).transpose(-1, -2)).transpose(-1, -2).unsqueeze(-1)
        return x * torch.sigmoid(y)


class Seq(nn.Module):
    def __init__(self, first, second):
        super().__init__()
        self.first, self.second = first, second

    def forward(self, x):
        return self.second(self.first(x))


ACTS = {"swish": F.silu, "hardswish": F.hardswish}

# (id, attention, ca_activation, C). C = 24 gives mip 8 (the floor), SE squeeze 8, ECA
# k = 3; C = 288 gives mip 9 (C // 32), squeeze 72, k = 5. Both CA activations and both
# widths are covered for the blocks with coordinate attention.
CASES = [
    ("se-24", "se", "swish", 24),
    ("se-288", "se", "swish", 288),
    ("caco-swish-288", "caco", "swish", 288),
    ("caco-hardswish-24", "caco", "hardswish", 24),
    ("cbam-24", "cbam", "swish", 24),
    ("cbam-288", "cbam", "swish", 288),
    ("seco-swish-24", "seco", "swish", 24),
    ("seco-hardswish-288", "seco", "hardswish", 288),
    ("eca-24", "eca", "swish", 24),
    ("eca-288", "eca", "swish", 288),
]
CASE_IDS = [case[0] for case in CASES]


# --------------------------------------------------------------------------- weight copying
# Each copy records (torch parameter, NNX variable, NNX layout -> torch layout), so the
# gradients can be compared parameter by parameter afterwards.


def _t(a) -> torch.Tensor:
    return torch.from_numpy(np.array(a, dtype=np.float32))


def _dense_to_1x1(k: np.ndarray) -> np.ndarray:  # (in, out) -> (out, in, 1, 1)
    return np.asarray(k).T[:, :, None, None]


def _hwio_to_oihw(k: np.ndarray) -> np.ndarray:
    return np.transpose(np.asarray(k), (3, 2, 0, 1))


def _same(v: np.ndarray) -> np.ndarray:
    return np.asarray(v)


def _put(pairs: list, dst: torch.Tensor, var: nnx.Variable, fn) -> None:
    dst.copy_(_t(fn(var[...])))
    if isinstance(dst, nn.Parameter):
        pairs.append((dst, var, fn))


def _copy_mlp(pairs: list, dst: TorchMLP, src) -> None:
    for fc in ("fc1", "fc2"):
        _put(pairs, getattr(dst, fc).weight, getattr(src, fc).kernel, _dense_to_1x1)
        _put(pairs, getattr(dst, fc).bias, getattr(src, fc).bias, _same)


def _copy_bn(pairs: list, dst: nn.BatchNorm2d, src: BatchNorm) -> None:
    _put(pairs, dst.weight, src.scale, _same)
    _put(pairs, dst.bias, src.bias, _same)
    _put(pairs, dst.running_mean, src.mean, _same)
    _put(pairs, dst.running_var, src.var, _same)


def _coord_to_torch(pairs: list, src: CoordinateAttention, act: str) -> TorchCoord:
    c = src.conv1.in_features
    ref = TorchCoord(c, ACTS[act])
    assert ref.conv1.out_channels == src.mip
    for name in ("conv1", "conv_h", "conv_w"):
        _put(pairs, getattr(ref, name).weight, getattr(src, name).kernel, _dense_to_1x1)
        _put(pairs, getattr(ref, name).bias, getattr(src, name).bias, _same)
    _copy_bn(pairs, ref.bn1, src.bn1)
    return ref


@torch.no_grad()
def to_torch(block, attention: str, act: str, c: int, s: int) -> tuple[nn.Module, list]:
    """The independent PyTorch block with ``block``'s weights, and the parameter pairs."""
    pairs: list = []
    if attention == "se":
        ref = TorchSE(c, s)
        _copy_mlp(pairs, ref.mlp, block.mlp)
    elif attention in ("caco", "cbam"):
        gate = F.hardsigmoid if attention == "caco" else torch.sigmoid
        channel = TorchChannel(c, s, gate)
        _copy_mlp(pairs, channel.mlp, block.channel.mlp)
        if attention == "caco":
            ref = Seq(channel, _coord_to_torch(pairs, block.coord, act))
        else:
            spatial = TorchSpatial()
            _put(pairs, spatial.conv.weight, block.spatial.conv.kernel, _hwio_to_oihw)
            _copy_bn(pairs, spatial.bn, block.spatial.bn)
            ref = Seq(channel, spatial)
    elif attention == "seco":
        se = TorchSE(c, s)
        _copy_mlp(pairs, se.mlp, block.se.mlp)
        ref = Seq(se, _coord_to_torch(pairs, block.coord, act))
    elif attention == "eca":
        ref = TorchECA(c)
        assert ref.conv.kernel_size[0] == block.kernel_size
        _put(pairs, ref.conv.weight, block.kernel, lambda k: np.asarray(k)[None, None, :])
    else:
        raise AssertionError(attention)
    # Every torch parameter got a value from the NNX block (none left at torch's init).
    assert {id(p) for p, _, _ in pairs} == {id(p) for p in ref.parameters()}
    return ref, pairs


def randomise(block, seed: int) -> None:
    """Every parameter and BN statistic random (biases and BN included, so they matter)."""
    rng = np.random.default_rng(seed)
    state = nnx.state(block, (nnx.Param, nnx.BatchStat))

    def draw(path, x):
        name = str(path[-1].key)
        if name == "var":
            v = rng.uniform(0.5, 2.0, x.shape)
        elif name == "scale":
            v = rng.uniform(0.5, 1.5, x.shape)
        elif name == "kernel":  # unit-variance pre-activations: gates neither saturate nor vanish
            fan_in = int(np.prod(x.shape[:-1])) if len(x.shape) > 1 else x.shape[0]
            v = rng.normal(0.0, 1.0, x.shape) / np.sqrt(fan_in)
        else:  # biases and running means
            v = rng.normal(0.0, 0.3, x.shape)
        return jnp.asarray(v, jnp.float32)

    pure = jax.tree_util.tree_map_with_path(draw, nnx.to_pure_dict(state))
    nnx.replace_by_pure_dict(state, pure)
    nnx.update(block, state)


def _torch_bns(ref: nn.Module) -> list[nn.BatchNorm2d]:
    return [m for m in ref.modules() if isinstance(m, nn.BatchNorm2d)]


def _our_bns(block) -> list[BatchNorm]:
    # Same order as the torch module tree: channel/SE half first, then CA or spatial.
    return [m for _, m in nnx.iter_modules(block) if isinstance(m, BatchNorm)]


# --------------------------------------------------------------------------- jitted calls


@nnx.jit
def _apply(block, x):
    return block(x)


@nnx.jit
def _grads(block, x, r):
    def loss(block, x):
        return jnp.sum(block(x) * r)

    return nnx.grad(loss, argnums=(0, 1))(block, x)


# --------------------------------------------------------------------------- tests


def _make(attention: str, act: str, c: int, seed: int):
    s = make_divisible(c // 4, 8)
    block = make_attention(attention, c, s, AttentionOptions(ca_activation=act, init="plain"), rngs=nnx.Rngs(seed))
    randomise(block, seed)
    return block, s


def _input(c: int, seed: int) -> np.ndarray:
    # Non-square (H != W) so a swapped pooling axis or split in coordinate attention fails;
    # a positive offset so max- and average-pooling differ clearly.
    rng = np.random.default_rng(100 + seed)
    return (rng.normal(size=(3, 7, 10, c)) + 0.3).astype(np.float32)


def _nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def _nhwc(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy().transpose(0, 2, 3, 1)


@pytest.mark.torch
@pytest.mark.parametrize(("case", "attention", "act", "c"), CASES, ids=CASE_IDS)
def test_eval_mode_matches_torch(case, attention, act, c):
    block, s = _make(attention, act, c, seed=c)
    ref, _ = to_torch(block, attention, act, c, s)
    ref.eval()
    block.eval()
    x = _input(c, 0)
    ours = np.asarray(_apply(block, x))
    with torch.no_grad():
        theirs = _nhwc(ref(_nchw(x)))
    assert np.abs(ours - x).max() > 1e-2, "the block does nothing: the comparison would be vacuous"
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=ATOL)


@pytest.mark.torch
@pytest.mark.parametrize(("case", "attention", "act", "c"), CASES, ids=CASE_IDS)
def test_train_mode_matches_torch_outputs_stats_and_grads(case, attention, act, c):
    block, s = _make(attention, act, c, seed=c + 1)
    ref, pairs = to_torch(block, attention, act, c, s)
    ref.train()
    block.train()
    x = _input(c, 1)
    r = np.random.default_rng(7).normal(size=x.shape).astype(np.float32)

    # Outputs and running statistics after one training-mode forward.
    mean0 = [np.asarray(b.mean[...]) for b in _our_bns(block)]
    var0 = [np.asarray(b.var[...]) for b in _our_bns(block)]
    ours_y = np.asarray(_apply(block, x))
    with torch.no_grad():
        theirs_y = _nhwc(ref(_nchw(x)))
    np.testing.assert_allclose(ours_y, theirs_y, rtol=0, atol=ATOL)
    bns, tbns = _our_bns(block), _torch_bns(ref)
    assert len(bns) == len(tbns) == {"se": 0, "eca": 0, "cbam": 1}.get(attention, 1)
    for ours_bn, torch_bn, m0, v0 in zip(bns, tbns, mean0, var0, strict=True):
        assert not np.allclose(np.asarray(ours_bn.mean[...]), m0), "running mean did not move"
        assert not np.allclose(np.asarray(ours_bn.var[...]), v0), "running var did not move"
        np.testing.assert_allclose(np.asarray(ours_bn.mean[...]), torch_bn.running_mean.numpy(), rtol=0,
                                   atol=STATS_ATOL)
        np.testing.assert_allclose(np.asarray(ours_bn.var[...]), torch_bn.running_var.numpy(), rtol=0,
                                   atol=STATS_ATOL)

    # Gradients of sum(y * r) (training mode: they do not depend on the running statistics).
    paths = {id(v): p for p, v in nnx.iter_graph(block) if isinstance(v, nnx.Variable)}
    g_block, g_x = _grads(nnx.clone(block), x, r)
    g_block = nnx.to_pure_dict(g_block)
    xt = _nchw(x).requires_grad_(True)
    (ref(xt) * _nchw(r)).sum().backward()
    np.testing.assert_allclose(np.asarray(g_x), _nhwc(xt.grad), rtol=0, atol=ATOL * np.abs(g_x).max())
    n_params = len(jax.tree.leaves(nnx.state(block, nnx.Param)))
    assert len(pairs) == n_params  # every NNX parameter is compared
    # One scale for the block: in training mode the bias of the conv before coordinate
    # attention's BN has an exactly-zero gradient (BN removes it), so both sides are
    # rounding noise there and only an absolute, block-wide bound makes sense.
    scale = max(float(np.abs(g).max()) for g in jax.tree.leaves(g_block))
    assert scale > 0
    for torch_param, var, fn in pairs:
        g = g_block
        for k in paths[id(var)]:
            g = g[k]
        np.testing.assert_allclose(fn(g), torch_param.grad.numpy(), rtol=0, atol=ATOL * scale,
                                   err_msg=str(paths[id(var)]))


@pytest.mark.parametrize("attention", ATTENTIONS)
def test_blocks_keep_the_input_shape(attention):
    c = 40
    block = make_attention(attention, c, make_divisible(c // 4, 8), rngs=nnx.Rngs(0))
    if attention == "none":
        assert block is None
        return
    out = nnx.eval_shape(lambda b, x: b(x), block, jax.ShapeDtypeStruct((2, 5, 9, c), jnp.float32))
    assert out.shape == (2, 5, 9, c)
    expected = {"se": SqueezeExcitation, "caco": CaCo, "cbam": CBAM, "seco": SeCo, "eca": ECA}[attention]
    assert type(block) is expected


def test_unknown_attention_raises_naming_it():
    with pytest.raises(ValueError, match="squeezy"):
        make_attention("squeezy", 16, 8, rngs=nnx.Rngs(0))


def test_coordinate_attention_widths_and_eca_kernel():
    def coord(c):
        return nnx.eval_shape(lambda: CoordinateAttention(c, AttentionOptions(), rngs=nnx.Rngs(0)))

    assert coord(64).mip == 8 and coord(64).conv1.kernel.shape == (64, 8)  # max(8, 2)
    assert coord(576).mip == 18 and coord(576).conv_h.kernel.shape == (18, 576)
    # k = |(log2 C + 1) / 2| made odd (ECA-Net, gamma 2, b 1)
    ks = [nnx.eval_shape(lambda c=c: ECA(c, 8, AttentionOptions(), rngs=nnx.Rngs(0))).kernel_size
          for c in (16, 64, 256, 576, 1024)]
    assert ks == [3, 3, 5, 5, 5]


def test_caco_channel_half_is_se_when_max_equals_mean():
    # With a spatially constant input, max- and average-pooling coincide, so the channel
    # half gives hardsigmoid(2 * MLP(avg)), i.e. SE applied to a doubled MLP output.
    c = 16
    block, _ = _make("caco", "swish", c, seed=3)
    v = np.random.default_rng(0).normal(size=(2, 1, 1, c)).astype(np.float32)
    x = np.broadcast_to(v, (2, 4, 6, c)).copy()
    half = np.asarray(block.channel(jnp.asarray(x)))
    mlp = np.asarray(block.channel.mlp(jnp.asarray(v[:, 0, 0])))
    expected = x * np.clip(2 * mlp + 3, 0, 6)[:, None, None, :] / 6
    np.testing.assert_allclose(half, expected, rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------- function-preserving init


def _set(block, path: str, value) -> None:
    node = block
    for part in path.split("/"):
        node = getattr(node, part)
    node[...] = jnp.full(node.shape, value, jnp.float32)


def _copy_se_weights(dst_mlp, src_mlp) -> None:
    for fc in ("fc1", "fc2"):
        for name in ("kernel", "bias"):
            getattr(getattr(dst_mlp, fc), name)[...] = getattr(getattr(src_mlp, fc), name)[...]


@pytest.mark.parametrize("attention", ["caco", "seco"])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_preserve_init_starts_as_the_se_block_it_replaces(attention, mode):
    """Gains at their initial 0: CaCo / SeCo compute exactly SE with the same MLP weights."""
    c, s = 24, 8
    se = make_attention("se", c, s, rngs=nnx.Rngs(0))
    randomise(se, 5)
    block = make_attention(attention, c, s, AttentionOptions(init="preserve"), rngs=nnx.Rngs(1))
    randomise(block, 6)  # coordinate attention and BN statistics random, so they would matter
    for path in ("channel/max_gain", "coord/gain"):
        if attention == "caco" or path.startswith("coord"):
            _set(block, path, 0.0)
    _copy_se_weights(block.channel.mlp if attention == "caco" else block.se.mlp, se.mlp)
    getattr(block, mode)()
    se.eval()
    x = _input(c, 2)
    np.testing.assert_array_equal(np.asarray(_apply(block, x)), np.asarray(_apply(se, x)))


@pytest.mark.parametrize("attention", ["caco", "cbam", "seco"])
def test_preserve_init_with_unit_gains_is_the_plain_block(attention):
    """The gains only rescale the new parts: at g = 1 the formulas are the paper's."""
    c, s = 24, 8
    plain = make_attention(attention, c, s, AttentionOptions(init="plain"), rngs=nnx.Rngs(0))
    randomise(plain, 7)
    gained = make_attention(attention, c, s, AttentionOptions(init="preserve"), rngs=nnx.Rngs(0))
    nnx.update(gained, nnx.state(plain))  # same weights; the gains are extra state
    gains = [p for p, v in nnx.iter_graph(gained) if isinstance(v, nnx.Param) and "gain" in str(p[-1])]
    assert len(gains) == {"caco": 2, "cbam": 2, "seco": 1}[attention]
    for path in gains:
        _set(gained, "/".join(map(str, path)), 1.0)
    plain.eval()
    gained.eval()
    x = _input(c, 3)
    np.testing.assert_allclose(np.asarray(_apply(gained, x)), np.asarray(_apply(plain, x)), rtol=0, atol=1e-6)


@pytest.mark.parametrize(("init", "expected"), [("plain", set()), ("preserve", {"channel/max_gain", "coord/gain"}),
                                                ("preserve_channel", {"channel/max_gain"}),
                                                ("preserve_coord", {"coord/gain"})])
def test_init_modes_choose_which_gains_exist(init, expected):
    block = make_attention("caco", 16, 8, AttentionOptions(init=init), rngs=nnx.Rngs(0))
    found = {"/".join(map(str, p)) for p, v in nnx.iter_graph(block) if isinstance(v, nnx.Param) and "gain" in str(p[-1])}
    assert found == expected
    for path in found:
        node = block
        for part in path.split("/"):
            node = getattr(node, part)
        assert np.all(np.asarray(node[...]) == 0.0)


def test_unknown_attention_init_raises_naming_it():
    with pytest.raises(ValueError, match="sideways"):
        AttentionOptions(init="sideways")
