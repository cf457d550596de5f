"""Attention blocks (caco_jax.models.attention) against their PyTorch twins (caco_jax.interop.torch_reference).

The PyTorch blocks are written in NCHW from the descriptions in attention.py's docstring
and the papers (SE: torchvision's own module; CBAM: Woo et al. 2018; coordinate
attention: Hou et al. 2021, following the official code's layout; ECA: Wang et al.
2020), sharing no computation with the JAX side. Every parameter and BatchNorm
statistic of the NNX block is randomised (so BN and the gains of the preserving inits
matter), the block is exported with caco_jax.interop.convert.export_block and loaded into the
PyTorch block with ``strict=True``, and outputs must agree in evaluation mode and in
training mode (where the updated BN running statistics must agree too), plus input and
parameter gradients. Every attention init is covered (gains present or not).

BatchNorm uses the project's constants (eps 1e-3, torch momentum 0.01) everywhere,
including inside CBAM's spatial half and coordinate attention (the official CA code
uses torch's defaults 1e-5 / 0.1; ours are one setting for the whole network).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import variants
from caco_jax.interop.convert import export_block
from caco_jax.interop.key_maps import attention_keys
from caco_jax.models.attention import (
    ATTENTION_BLOCKS,
    ECA,
    AttentionOptions,
    CoordinateAttention,
    layout,
    make_attention,
)
from caco_jax.models.layers import make_divisible

torch = pytest.importorskip("torch")
reference = pytest.importorskip("caco_jax.interop.torch_reference")

# Measured worst cases over the cases below (fp32, CPU, values O(1)): outputs 8.3e-7
# (eval) and 1.7e-6 (train), running statistics 3.7e-9, input gradients 6.8e-7 and
# parameter gradients 1.7e-6 relative to the block's largest gradient entry. Bound:
# 1e-5 (absolute for outputs, relative for gradients), ~6x headroom; 1e-6 for the
# statistics (a biased instead of unbiased variance moves them by only
# momentum * var / (n - 1), ~1e-5 here, so the looser bound would miss it).
ATOL = 1e-5
STATS_ATOL = 1e-6

# (id, attention, ca_activation, C, init): every registered block, each of its parameter layouts
# (which gains exist), both widths and both CA activations (tests/variants.py).
CASES = variants.block_cases()
CASE_IDS = [case[0] for case in CASES]


# --------------------------------------------------------------------------- the PyTorch twin


@torch.no_grad()
def to_torch(block, attention: str, options: AttentionOptions, c: int, s: int):
    """The PyTorch block with ``block``'s weights (strict load), and torch name -> (NNX path, transform)."""
    ref = reference.make_block(attention, c, s, options)
    ref.load_state_dict({k: torch.from_numpy(v) for k, v in export_block(block).items()}, strict=True)
    return ref, attention_keys(block, "", ())


def randomise(block, seed: int) -> None:
    """Every parameter and BN statistic random (biases, BN and gains included, so they matter)."""
    rng = np.random.default_rng(seed)
    state = nnx.state(block, (nnx.Param, nnx.BatchStat))

    def draw(path, x):
        name = str(path[-1].key)
        if name == "var":
            v = rng.uniform(0.5, 2.0, x.shape)
        elif name in ("scale", "gain", "max_gain"):
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


def _get(tree, path):
    for k in path:
        tree = tree[k]
    return np.asarray(tree)


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


def _make(attention: str, act: str, c: int, seed: int, init: str = "plain"):
    s = make_divisible(c // 4, 8)
    options = AttentionOptions(ca_activation=act, init=init)
    block = make_attention(attention, c, s, options, rngs=nnx.Rngs(seed))
    randomise(block, seed)
    return block, s, options


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
@pytest.mark.parametrize(("case", "attention", "act", "c", "init"), CASES, ids=CASE_IDS)
def test_eval_mode_matches_torch(case, attention, act, c, init):
    block, s, options = _make(attention, act, c, seed=c, init=init)
    ref, _ = to_torch(block, attention, options, c, s)
    ref.eval()
    block.eval()
    x = _input(c, 0)
    ours = np.asarray(_apply(block, x))
    with torch.no_grad():
        theirs = _nhwc(ref(_nchw(x)))
    assert np.abs(ours - x).max() > 1e-2, "the block does nothing: the comparison would be vacuous"
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=ATOL)


@pytest.mark.torch
@pytest.mark.parametrize(("case", "attention", "act", "c", "init"), CASES, ids=CASE_IDS)
def test_train_mode_matches_torch_outputs_stats_and_grads(case, attention, act, c, init):
    block, s, options = _make(attention, act, c, seed=c + 1, init=init)
    ref, keys = to_torch(block, attention, options, c, s)
    ref.train()
    block.train()
    x = _input(c, 1)
    r = np.random.default_rng(7).normal(size=x.shape).astype(np.float32)

    # Outputs and running statistics after one training-mode forward.
    before = nnx.to_pure_dict(nnx.state(block, nnx.BatchStat))
    ours_y = np.asarray(_apply(block, x))
    with torch.no_grad():
        theirs_y = _nhwc(ref(_nchw(x)))
    np.testing.assert_allclose(ours_y, theirs_y, rtol=0, atol=ATOL)
    after = nnx.to_pure_dict(nnx.state(block, nnx.BatchStat))
    buffers = dict(ref.named_buffers())
    stat_keys = [k for k in keys if k.endswith(("running_mean", "running_var"))]
    assert len(stat_keys) == 2 * sum(isinstance(m, torch.nn.BatchNorm2d) for m in ref.modules())
    for key in stat_keys:
        path, _ = keys[key]
        assert not np.allclose(_get(after, path), _get(before, path)), f"{key} did not move"
        np.testing.assert_allclose(_get(after, path), buffers[key].numpy(), rtol=0, atol=STATS_ATOL, err_msg=key)

    # Gradients of sum(y * r) (training mode: they do not depend on the running statistics).
    g_block, g_x = _grads(nnx.clone(block), x, r)
    g_block = nnx.to_pure_dict(g_block)
    xt = _nchw(x).requires_grad_(True)
    (ref(xt) * _nchw(r)).sum().backward()
    np.testing.assert_allclose(np.asarray(g_x), _nhwc(xt.grad), rtol=0, atol=ATOL * np.abs(g_x).max())
    named = dict(ref.named_parameters())
    assert len(named) == len(jax.tree.leaves(nnx.state(block, nnx.Param)))  # every NNX parameter is compared
    # The twin has exactly the gains this init gives the block, and the plain init none.
    gains = {p for p in layout(attention, init) if p.endswith("gain")}
    assert {"/".join(map(str, keys[k][0])) for k in named if k.endswith("gain")} == gains
    assert not (init == "plain" and gains)
    # One scale for the block: in training mode the bias of the conv before coordinate
    # attention's BN has an exactly-zero gradient (BN removes it), so both sides are
    # rounding noise there and only an absolute, block-wide bound makes sense.
    scale = max(float(np.abs(g).max()) for g in jax.tree.leaves(g_block))
    assert scale > 0
    for name, param in named.items():
        path, fn = keys[name]
        np.testing.assert_allclose(fn(param.grad.numpy()), _get(g_block, path), rtol=0, atol=ATOL * scale, err_msg=name)


@pytest.mark.parametrize("attention", variants.blocks())
def test_blocks_keep_the_input_shape(attention):
    c = 40
    block = make_attention(attention, c, make_divisible(c // 4, 8), rngs=nnx.Rngs(0))
    if ATTENTION_BLOCKS[attention] is None:
        assert block is None
        return
    out = nnx.eval_shape(lambda b, x: b(x), block, jax.ShapeDtypeStruct((2, 5, 9, c), jnp.float32))
    assert out.shape == (2, 5, 9, c)
    assert type(block) is ATTENTION_BLOCKS[attention] and block.name == attention


def test_every_block_has_a_pytorch_twin():
    assert set(reference.TORCH_BLOCKS) == set(ATTENTION_BLOCKS)


def test_unknown_attention_raises_naming_it_and_the_choices():
    from caco_jax.errors import ConfigError

    with pytest.raises(ConfigError, match=r"unknown model.attention 'squeezy'; choices: none, se, .*caco"):
        make_attention("squeezy", 16, 8, rngs=nnx.Rngs(0))
    with pytest.raises(ConfigError, match=r"unknown PyTorch twin 'squeezy'; choices: .*caco"):
        reference.make_block("squeezy", 16, 8)


def test_coordinate_attention_widths_and_eca_kernel():
    def coord(c):
        return nnx.eval_shape(lambda: CoordinateAttention(c, AttentionOptions(), rngs=nnx.Rngs(0)))

    assert coord(64).mip == 8 and coord(64).conv1.kernel.shape == (64, 8)  # max(8, 2)
    assert coord(576).mip == 18 and coord(576).conv_h.kernel.shape == (18, 576)
    # k = |(log2 C + 1) / 2| made odd (ECA-Net, gamma 2, b 1)
    ks = [
        nnx.eval_shape(lambda c=c: ECA(c, 8, AttentionOptions(), rngs=nnx.Rngs(0))).kernel_size
        for c in (16, 64, 256, 576, 1024)
    ]
    assert ks == [3, 3, 5, 5, 5]


def test_caco_channel_half_is_se_when_max_equals_mean():
    # With a spatially constant input, max- and average-pooling coincide, so the channel
    # half gives hardsigmoid(2 * MLP(avg)), i.e. SE applied to a doubled MLP output.
    c = 16
    block, _, _ = _make("caco", "swish", c, seed=3)
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


def _gains(block) -> list[str]:
    """Paths of the block's gain parameters ('channel/max_gain', 'coord/gain', ...)."""
    graph = nnx.iter_graph(block)
    return ["/".join(map(str, p)) for p, v in graph if isinstance(v, nnx.Param) and "gain" in str(p[-1])]


def _node(block, path):
    for part in path:
        block = getattr(block, part)
    return block


@pytest.mark.parametrize("attention", variants.starts_as_se())
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_preserve_init_starts_as_the_se_block_it_replaces(attention, mode):
    """Gains at their initial 0 (every block declaring ``starts_as_se``: CaCo, SeCo): the block computes
    exactly SE with the same MLP weights (at its ``se_mlp_path``)."""
    c, s = 24, 8
    se = make_attention("se", c, s, rngs=nnx.Rngs(0))
    randomise(se, 5)
    block = make_attention(attention, c, s, AttentionOptions(init="preserve"), rngs=nnx.Rngs(1))
    randomise(block, 6)  # the new parts and BN statistics random, so they would matter
    assert _gains(block)
    for path in _gains(block):
        _set(block, path, 0.0)
    _copy_se_weights(_node(block, ATTENTION_BLOCKS[attention].se_mlp_path), se.mlp)
    getattr(block, mode)()
    se.eval()
    x = _input(c, 2)
    np.testing.assert_array_equal(np.asarray(_apply(block, x)), np.asarray(_apply(se, x)))


@pytest.mark.parametrize("attention", variants.gained())
def test_preserve_init_with_unit_gains_is_the_plain_block(attention):
    """The gains only rescale the new parts: at g = 1 the formulas are the paper's."""
    c, s = 24, 8
    plain = make_attention(attention, c, s, AttentionOptions(init="plain"), rngs=nnx.Rngs(0))
    randomise(plain, 7)
    gained = make_attention(attention, c, s, AttentionOptions(init="preserve"), rngs=nnx.Rngs(0))
    nnx.update(gained, nnx.state(plain))  # same weights; the gains are extra state
    gains = _gains(gained)
    assert set(gains) == layout(attention, "preserve") - layout(attention, "plain")  # the only extra state
    for path in gains:
        _set(gained, path, 1.0)
    plain.eval()
    gained.eval()
    x = _input(c, 3)
    np.testing.assert_allclose(np.asarray(_apply(gained, x)), np.asarray(_apply(plain, x)), rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("init", "expected"),
    [
        ("plain", set()),
        ("preserve", {"channel/max_gain", "coord/gain"}),
        ("preserve_channel", {"channel/max_gain"}),
        ("preserve_coord", {"coord/gain"}),
    ],
)
def test_init_modes_choose_which_gains_exist(init, expected):
    block = make_attention("caco", 16, 8, AttentionOptions(init=init), rngs=nnx.Rngs(0))
    found = set(_gains(block))
    assert found == expected
    for path in found:
        node = block
        for part in path.split("/"):
            node = getattr(node, part)
        assert np.all(np.asarray(node[...]) == 0.0)


def test_unknown_attention_init_raises_naming_it():
    with pytest.raises(ValueError, match="sideways"):
        AttentionOptions(init="sideways")
