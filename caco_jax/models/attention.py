"""Attention blocks for the MobileNetV3 attention slot (where torchvision puts SE).

All blocks map an NHWC tensor ``x`` of shape (B, H, W, C) to the same shape, share one
constructor signature ``Block(channels, squeeze, options, *, rngs)`` and are registered
by name in :data:`ATTENTION_BLOCKS` (``@register("name")``). Each declares what checkpoint
conversion and the tests need: ``se_mlp_path`` (where torchvision's SE ``fc1``/``fc2`` weights
go, or None), ``new_parts`` (its sub-modules with no ImageNet counterpart, and why) and
``starts_as_se`` (whether a preserving init starts it as the SE block it replaces). Adding a
block is one decorated class, anywhere in this file (plus its PyTorch twin in
``caco_jax/interop/torch_reference.py``, which the tests compare it with); the tests take
their cases from the registry.

PyTorch key names follow the module tree mechanically (``caco_jax.interop.convert``): a
sub-module keeps its attribute name (``channel.mlp.fc1``, ``coord.bn1``, ``spatial.conv``),
``nnx.Linear`` / ``Conv2d`` kernels become ``weight``, BatchNorm's ``scale`` / ``mean`` /
``var`` become ``weight`` / ``running_mean`` / ``running_var``, and a bare parameter keeps
its name (``max_gain``, ``gain``, ECA's ``kernel``). A module whose PyTorch counterpart
names a child differently says so in ``torch_names`` (child -> PyTorch name, '' for a
level PyTorch does not have): torchvision's SqueezeExcitation holds ``fc1`` / ``fc2``
directly, so our SE's ``mlp`` level disappears and the ``se`` model's keys are
torchvision's own.

* ``se``   torchvision's SqueezeExcitation: avg-pool, 1x1 conv C->S, ReLU, 1x1 conv
           S->C, hard-sigmoid gate. S = make_divisible(C // 4, 8).
* ``caco`` the paper's CaCo: channel attention, then coordinate attention.
           The paper does not print the channel half (its figure 3 is an image).
           Our choice, following CBAM (Woo et al. 2018): the *same* squeeze MLP as that
           block's SE (so ImageNet SE weights initialise it), applied to the average-
           and the max-pooled descriptor, the two outputs summed, then SE's hard-sigmoid
           gate.
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

Initialisation of the parts SE does not have (``AttentionOptions.init``):

* ``plain``: every new parameter at its usual random initialisation (the paper, most
  likely). Fine-tuning from ImageNet then starts from a different function than the
  pretrained SE model: the summed max branch changes every SE gate, and random
  coordinate gates (with BatchNorm running statistics still at (0, 1)) rescale
  every feature map.
* ``preserve`` (default): each new part enters through a per-channel gain that starts
  at zero (as ReZero / LayerScale): the channel gate is ``gate(mlp(avg) + g_max *
  mlp(max))`` and a gated output ``x * a`` becomes ``x * (1 + g * (a - 1))``. With
  converted SE weights the block then computes exactly the SE block it replaces at
  step 0 (CBAM: SE with its sigmoid gate), and the new parts grow in as training finds
  them useful. At g = 1 the formulas are the plain ones.
* ``preserve_channel`` / ``preserve_coord``: only the max-branch gain, or only the
  gains of the gated outputs (coordinate / spatial attention): the ablation that
  measures each cause on its own.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, ClassVar, Protocol

import jax
import jax.numpy as jnp
from flax import nnx

from caco_jax.models.layers import Array, BatchNorm, Conv2d, Dtype, PointwiseMLP, activation, hard_sigmoid
from caco_jax.registry import Registry, require

ATTENTION_INITS: tuple[str, ...] = ("preserve", "plain", "preserve_channel", "preserve_coord")
CA_ACTIVATIONS: tuple[str, ...] = ("swish", "hardswish")  # coordinate attention's: the paper's, the official code's


@dataclasses.dataclass(frozen=True)
class AttentionOptions:
    """Everything an attention block's constructor receives besides its sizes."""

    ca_activation: str = "swish"  # coordinate attention's activation: swish (paper) | hardswish (official)
    init: str = "preserve"  # one of ATTENTION_INITS
    conv_impl: str = "auto"  # how dense convs are computed (caco_jax.models.layers.Conv2d)
    dtype: Dtype | None = None

    def __post_init__(self) -> None:
        if self.init not in ATTENTION_INITS:
            raise ValueError(f"unknown attention init {self.init!r}; expected one of {ATTENTION_INITS}")
        activation(self.ca_activation)  # validates the name

    @property
    def gain_max_branch(self) -> bool:
        return self.init in ("preserve", "preserve_channel")

    @property
    def gain_gated_output(self) -> bool:
        return self.init in ("preserve", "preserve_coord")


class AttentionBlockClass(Protocol):
    """What :func:`register` asks of a block class: its constructor and the class attributes below."""

    se_mlp_path: tuple[str, ...] | None
    new_parts: dict[str, str]
    starts_as_se: bool

    def __call__(self, channels: int, squeeze: int, options: AttentionOptions, *, rngs: nnx.Rngs) -> nnx.Module: ...


# The attention slot's choices: name -> block class (None: no attention), filled by @register.
ATTENTION_BLOCKS: Registry[AttentionBlockClass | None] = Registry(
    "model.attention", require("attention block", "se_mlp_path", "new_parts", "starts_as_se")
)
ATTENTION_BLOCKS.register("none", None)  # no attention block at all


def register(name: str) -> Any:
    """Class decorator: makes a block selectable as ``model.attention = name``. The class needs the
    constructor ``Block(channels, squeeze, options, *, rngs)`` and the class attributes
    ``se_mlp_path`` (where torchvision's SE ``fc1``/``fc2`` go, or None), ``new_parts`` (its parts
    without an ImageNet counterpart, and why) and ``starts_as_se`` (True when, at a preserving init
    with its gains at zero and SE's MLP weights at ``se_mlp_path``, it computes exactly the SE block
    it replaces); its PyTorch twin is registered in ``caco_jax.interop.torch_reference`` under the
    same name."""

    def deco(cls: Any) -> Any:  # any class with the attributes above (checked when it is registered)
        ATTENTION_BLOCKS.register(name, cls)
        cls.name = name
        return cls

    return deco


def _avg_pool(x: Array) -> Array:
    return jnp.mean(x, axis=(1, 2))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _max(x: Array, axis: int) -> Array:
    """Max along ``axis`` whose gradient goes to one element (the first maximum), as torch's
    max pooling does. ``jnp.max``'s own gradient splits among ties, which after a ReLU (many
    zeros) both differs from torch and, at XLA's CPU optimisation level 0, produced NaNs;
    the argmax is only computed in the backward pass (a plain max reduction forward)."""
    return jnp.max(x, axis=axis)


def _max_fwd(x: Array, axis: int) -> tuple[Array, Array]:
    return jnp.max(x, axis=axis), x


def _max_bwd(axis: int, x: Array, g: Array) -> tuple[Array]:
    first = jax.nn.one_hot(jnp.argmax(x, axis=axis), x.shape[axis], axis=axis, dtype=g.dtype)
    return (first * jnp.expand_dims(g, axis),)


_max.defvjp(_max_fwd, _max_bwd)


def _max_pool(x: Array) -> Array:
    b, h, w, c = x.shape
    return _max(x.reshape(b, h * w, c), axis=1)


def _zero_gain(channels: int) -> nnx.Param:
    return nnx.Param(jnp.zeros((channels,), jnp.float32))


def _gated(x: Array, gate: Array, gain: nnx.Param | None) -> Array:
    """``x * gate``, or ``x * (1 + gain * (gate - 1))`` when the block has a gain."""
    if gain is None:
        return x * gate
    return x * (1.0 + gain[...].astype(x.dtype) * (gate - 1.0))


@register("se")
class SqueezeExcitation(nnx.Module):
    """torchvision.ops.SqueezeExcitation with a hard-sigmoid gate (MobileNetV3's SE)."""

    se_mlp_path: ClassVar[tuple[str, ...] | None] = ("mlp",)
    new_parts: ClassVar[dict[str, str]] = {}
    starts_as_se: ClassVar[bool] = False  # it is SE: nothing replaced
    torch_names: ClassVar[dict[str, str]] = {"mlp": ""}  # torchvision: features.i.block.j.fc1.weight

    def __init__(self, channels: int, squeeze: int, options: AttentionOptions, *, rngs: nnx.Rngs):
        self.mlp = PointwiseMLP(channels, squeeze, dtype=options.dtype, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        s = hard_sigmoid(self.mlp(_avg_pool(x)))
        return x * s[:, None, None, :]


class ChannelAttention(nnx.Module):
    """CBAM-style channel attention: gate(MLP(avg(x)) + g * MLP(max(x))), shared MLP.

    ``g`` (``max_gain``, per channel) exists only with a preserving init, starting at 0.
    """

    def __init__(self, channels: int, squeeze: int, options: AttentionOptions, *, gate: str, rngs: nnx.Rngs):
        self.mlp = PointwiseMLP(channels, squeeze, dtype=options.dtype, rngs=rngs)
        self.gate = gate
        self.max_gain = _zero_gain(channels) if options.gain_max_branch else None

    def __call__(self, x: Array) -> Array:
        from_max = self.mlp(_max_pool(x))
        if self.max_gain is not None:
            from_max = from_max * self.max_gain[...].astype(from_max.dtype)
        s = activation(self.gate)(self.mlp(_avg_pool(x)) + from_max)
        return x * s[:, None, None, :]


class SpatialAttention(nnx.Module):
    """CBAM's spatial half: sigmoid(BN(conv7x7([max_c x, mean_c x]))) * x (gain: see module doc)."""

    def __init__(self, channels: int, options: AttentionOptions, *, kernel_size: int = 7, rngs: nnx.Rngs):
        self.conv = Conv2d(2, 1, kernel_size, impl=options.conv_impl, dtype=options.dtype, rngs=rngs)
        self.bn = BatchNorm(1, dtype=options.dtype)
        self.gain = _zero_gain(channels) if options.gain_gated_output else None

    def __call__(self, x: Array) -> Array:
        pooled = jnp.concatenate([_max(x, axis=-1)[..., None], jnp.mean(x, axis=-1, keepdims=True)], axis=-1)
        return _gated(x, jax.nn.sigmoid(self.bn(self.conv(pooled))), self.gain)


class CoordinateAttention(nnx.Module):
    """Coordinate attention (Hou et al., CVPR 2021); see the module docstring."""

    def __init__(self, channels: int, options: AttentionOptions, *, mip: int | None = None, rngs: nnx.Rngs):
        self.mip = max(8, channels // 32) if mip is None else mip
        init = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")
        dtype = options.dtype
        self.conv1 = nnx.Linear(channels, self.mip, kernel_init=init, dtype=dtype, rngs=rngs)
        self.bn1 = BatchNorm(self.mip, dtype=dtype)
        self.conv_h = nnx.Linear(self.mip, channels, kernel_init=init, dtype=dtype, rngs=rngs)
        self.conv_w = nnx.Linear(self.mip, channels, kernel_init=init, dtype=dtype, rngs=rngs)
        self.act = options.ca_activation
        self.gain = _zero_gain(channels) if options.gain_gated_output else None

    def gates(self, x: Array) -> tuple[Array, Array]:
        """(a^h (B, H, C), a^w (B, W, C))."""
        h = x.shape[1]
        z_h = jnp.mean(x, axis=2)  # (B, H, C): pooled along the width
        z_w = jnp.mean(x, axis=1)  # (B, W, C): pooled along the height
        f = activation(self.act)(self.bn1(self.conv1(jnp.concatenate([z_h, z_w], axis=1))))
        f_h, f_w = f[:, :h], f[:, h:]
        return jax.nn.sigmoid(self.conv_h(f_h)), jax.nn.sigmoid(self.conv_w(f_w))

    def __call__(self, x: Array) -> Array:
        a_h, a_w = self.gates(x)
        return _gated(x, a_h[:, :, None, :] * a_w[:, None, :, :], self.gain)


@register("eca")
class ECA(nnx.Module):
    """Efficient channel attention: 1-D conv over the pooled channel vector, sigmoid gate.

    ECA replaces SE entirely (no SE weights to keep), so every init is plain.
    """

    se_mlp_path: ClassVar[tuple[str, ...] | None] = None
    new_parts: ClassVar[dict[str, str]] = {"kernel": "ECA's 1-D conv has no ImageNet counterpart"}
    starts_as_se: ClassVar[bool] = False

    def __init__(
        self, channels: int, squeeze: int, options: AttentionOptions, *, gamma: int = 2, b: int = 1, rngs: nnx.Rngs
    ):
        k = int(abs((math.log2(channels) + b) / gamma))
        self.kernel_size = k if k % 2 else k + 1
        bound = 1.0 / math.sqrt(self.kernel_size)  # torch Conv1d default (kaiming_uniform a=sqrt(5))
        self.kernel = nnx.Param(jax.random.uniform(rngs.params(), (self.kernel_size,), jnp.float32, -bound, bound))

    def __call__(self, x: Array) -> Array:
        y = _avg_pool(x)
        c, k = y.shape[-1], self.kernel_size
        pad = (k - 1) // 2
        y_pad = jnp.pad(y, ((0, 0), (pad, pad)))
        w = self.kernel[...].astype(y.dtype)
        s = sum(w[i] * y_pad[:, i : i + c] for i in range(k))  # cross-correlation, as torch
        return x * jax.nn.sigmoid(s)[:, None, None, :]


_MAX_GAIN = "gain of the max-pooled branch (new in this variant; 0 = SE's gate)"
_COORD = "coordinate attention is new in this variant (no ImageNet counterpart)"


@register("caco")
class CaCo(nnx.Module):
    """The paper's CaCo: channel attention, then coordinate attention."""

    se_mlp_path: ClassVar[tuple[str, ...] | None] = ("channel", "mlp")
    new_parts: ClassVar[dict[str, str]] = {"channel/max_gain": _MAX_GAIN, "coord": _COORD}
    starts_as_se: ClassVar[bool] = True

    def __init__(self, channels: int, squeeze: int, options: AttentionOptions, *, rngs: nnx.Rngs):
        self.channel = ChannelAttention(channels, squeeze, options, gate="hardsigmoid", rngs=rngs)
        self.coord = CoordinateAttention(channels, options, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        return self.coord(self.channel(x))


@register("cbam")
class CBAM(nnx.Module):
    """CBAM: channel attention (sigmoid gate), then spatial attention."""

    se_mlp_path: ClassVar[tuple[str, ...] | None] = ("channel", "mlp")
    new_parts: ClassVar[dict[str, str]] = {
        "channel/max_gain": _MAX_GAIN,
        "spatial": "CBAM spatial attention is new in this variant (no ImageNet counterpart)",
    }
    starts_as_se: ClassVar[bool] = False  # SE's MLP with a sigmoid gate: not SE

    def __init__(self, channels: int, squeeze: int, options: AttentionOptions, *, rngs: nnx.Rngs):
        self.channel = ChannelAttention(channels, squeeze, options, gate="sigmoid", rngs=rngs)
        self.spatial = SpatialAttention(channels, options, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        return self.spatial(self.channel(x))


@register("seco")
class SeCo(nnx.Module):
    """torchvision's SE followed by coordinate attention (the paper's SeCo ablation)."""

    se_mlp_path: ClassVar[tuple[str, ...] | None] = ("se", "mlp")
    new_parts: ClassVar[dict[str, str]] = {"coord": _COORD}
    starts_as_se: ClassVar[bool] = True

    def __init__(self, channels: int, squeeze: int, options: AttentionOptions, *, rngs: nnx.Rngs):
        self.se = SqueezeExcitation(channels, squeeze, options, rngs=rngs)
        self.coord = CoordinateAttention(channels, options, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        return self.coord(self.se(x))


def make_attention(
    name: str, channels: int, squeeze: int, options: AttentionOptions | None = None, *, rngs: nnx.Rngs
) -> nnx.Module | None:
    """Builds the attention block named ``name`` for ``channels`` (None for 'none')."""
    block = ATTENTION_BLOCKS[name]
    return None if block is None else block(channels, squeeze, options or AttentionOptions(), rngs=rngs)


def why_new(name: str, path: tuple[str, ...]) -> str | None:
    """Why the parameter at ``path`` (inside block ``name``) has no ImageNet counterpart, or None."""
    block = ATTENTION_BLOCKS[name]
    if block is None:
        return None
    joined = "/".join(path)
    for prefix, reason in block.new_parts.items():
        if joined == prefix or joined.startswith(prefix + "/"):
            return reason
    return None


@functools.cache
def layout(name: str, init: str) -> frozenset[str]:
    """Paths ('channel/mlp/fc1/kernel', ...) of every parameter and BatchNorm statistic of block
    ``name`` built with attention init ``init`` (from abstract shapes: nothing is computed)."""
    block = ATTENTION_BLOCKS[name]
    if block is None:
        return frozenset()
    options = AttentionOptions(init=init)
    abstract = nnx.eval_shape(lambda: block(16, 8, options, rngs=nnx.Rngs(0)))
    leaves = jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(nnx.state(abstract, (nnx.Param, nnx.BatchStat))))[0]
    return frozenset("/".join(str(getattr(k, "key", k)) for k in path) for path, _ in leaves)


def identify(paths: set[str] | frozenset[str]) -> tuple[str, str] | None:
    """(attention, init) of the registered block whose :func:`layout` is exactly ``paths`` (the
    first init in ``ATTENTION_INITS`` order when several inits lay out alike), or None."""
    for name in ATTENTION_BLOCKS:
        for init in ATTENTION_INITS:
            if layout(name, init) == frozenset(paths):
                return name, init
    return None
