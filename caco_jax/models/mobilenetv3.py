"""MobileNetV3 (Howard et al., ICCV 2019) as torchvision builds it, with a pluggable
attention slot: the paper's MobileNetV3-CaCo is ``MobileNetV3(attention='caco')``.

The architecture is the explicit block table below, read row by row like the
paper's table and torchvision's ``_mobilenet_v3_conf``. ``attention`` in a row
marks the blocks where torchvision places squeeze-excitation; the model's
``attention`` argument decides what goes there (see ``attention.py``).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx

from caco_jax.models.attention import ATTENTION_BLOCKS, AttentionOptions, make_attention
from caco_jax.models.layers import BN_MOMENTUM, Array, BatchNorm, ConvBNAct, Dtype, hard_swish, make_divisible


@dataclasses.dataclass(frozen=True)
class BlockSpec:
    """One inverted-residual block (torchvision's InvertedResidualConfig)."""

    kernel: int
    expanded: int
    out: int
    attention: bool
    activation: Literal["relu", "hardswish"]
    stride: int


@dataclasses.dataclass(frozen=True)
class ArchSpec:
    stem: int
    blocks: tuple[BlockSpec, ...]
    last_conv: int  # the 1x1 conv after the blocks (6 x the last block's width)
    last_channel: int  # hidden width of the classifier


# The paper's Table 2 (small) and Table 1 (large), row by row: kernel = the depthwise kernel, expanded =
# "exp size", out = "#out", attention = "SE", activation = "NL" (RE / HS), stride = "s".
_SMALL = (
    BlockSpec(kernel=3, expanded=16, out=16, attention=True, activation="relu", stride=2),
    BlockSpec(kernel=3, expanded=72, out=24, attention=False, activation="relu", stride=2),
    BlockSpec(kernel=3, expanded=88, out=24, attention=False, activation="relu", stride=1),
    BlockSpec(kernel=5, expanded=96, out=40, attention=True, activation="hardswish", stride=2),
    BlockSpec(kernel=5, expanded=240, out=40, attention=True, activation="hardswish", stride=1),
    BlockSpec(kernel=5, expanded=240, out=40, attention=True, activation="hardswish", stride=1),
    BlockSpec(kernel=5, expanded=120, out=48, attention=True, activation="hardswish", stride=1),
    BlockSpec(kernel=5, expanded=144, out=48, attention=True, activation="hardswish", stride=1),
    BlockSpec(kernel=5, expanded=288, out=96, attention=True, activation="hardswish", stride=2),
    BlockSpec(kernel=5, expanded=576, out=96, attention=True, activation="hardswish", stride=1),
    BlockSpec(kernel=5, expanded=576, out=96, attention=True, activation="hardswish", stride=1),
)
_LARGE = (
    BlockSpec(kernel=3, expanded=16, out=16, attention=False, activation="relu", stride=1),
    BlockSpec(kernel=3, expanded=64, out=24, attention=False, activation="relu", stride=2),
    BlockSpec(kernel=3, expanded=72, out=24, attention=False, activation="relu", stride=1),
    BlockSpec(kernel=5, expanded=72, out=40, attention=True, activation="relu", stride=2),
    BlockSpec(kernel=5, expanded=120, out=40, attention=True, activation="relu", stride=1),
    BlockSpec(kernel=5, expanded=120, out=40, attention=True, activation="relu", stride=1),
    BlockSpec(kernel=3, expanded=240, out=80, attention=False, activation="hardswish", stride=2),
    BlockSpec(kernel=3, expanded=200, out=80, attention=False, activation="hardswish", stride=1),
    BlockSpec(kernel=3, expanded=184, out=80, attention=False, activation="hardswish", stride=1),
    BlockSpec(kernel=3, expanded=184, out=80, attention=False, activation="hardswish", stride=1),
    BlockSpec(kernel=3, expanded=480, out=112, attention=True, activation="hardswish", stride=1),
    BlockSpec(kernel=3, expanded=672, out=112, attention=True, activation="hardswish", stride=1),
    BlockSpec(kernel=5, expanded=672, out=160, attention=True, activation="hardswish", stride=2),
    BlockSpec(kernel=5, expanded=960, out=160, attention=True, activation="hardswish", stride=1),
    BlockSpec(kernel=5, expanded=960, out=160, attention=True, activation="hardswish", stride=1),
)
# A few-block model with every kind of block, for fast tests only.
_TINY = (
    BlockSpec(kernel=3, expanded=8, out=8, attention=True, activation="relu", stride=2),
    BlockSpec(kernel=3, expanded=24, out=16, attention=False, activation="relu", stride=2),
    BlockSpec(kernel=5, expanded=48, out=16, attention=True, activation="hardswish", stride=1),
)

ARCHS: dict[str, ArchSpec] = {
    "small": ArchSpec(stem=16, blocks=_SMALL, last_conv=576, last_channel=1024),
    "large": ArchSpec(stem=16, blocks=_LARGE, last_conv=960, last_channel=1280),
    "tiny": ArchSpec(stem=8, blocks=_TINY, last_conv=32, last_channel=32),
}


class InvertedResidual(nnx.Module):
    """expand 1x1 -> depthwise kxk -> attention slot -> project 1x1 (+ residual)."""

    def __init__(
        self,
        in_features: int,
        spec: BlockSpec,
        *,
        attention: str,
        options: AttentionOptions,
        depthwise: str = "auto",
        rngs: nnx.Rngs,
    ):
        e = spec.expanded
        dtype = options.dtype
        self.expand = (
            ConvBNAct(in_features, e, 1, act=spec.activation, dtype=dtype, rngs=rngs) if e != in_features else None
        )
        self.depthwise = ConvBNAct(
            e,
            e,
            spec.kernel,
            stride=spec.stride,
            groups=e,
            act=spec.activation,
            depthwise=depthwise,
            dtype=dtype,
            rngs=rngs,
        )
        self.attention = (
            make_attention(attention, e, make_divisible(e // 4, 8), options, rngs=rngs) if spec.attention else None
        )
        self.project = ConvBNAct(e, spec.out, 1, dtype=dtype, rngs=rngs)
        self.use_residual = spec.stride == 1 and in_features == spec.out

    def __call__(self, x: Array) -> Array:
        y = x if self.expand is None else self.expand(x)
        y = self.depthwise(y)
        if self.attention is not None:
            y = self.attention(y)
        y = self.project(y)
        return x + y if self.use_residual else y


class MobileNetV3(nnx.Module):
    """torchvision's MobileNetV3 in Flax NNX (NHWC), with a chosen attention block.

    Args:
      arch: 'small' (the paper's backbone), 'large', or 'tiny' (tests only).
      num_classes: width of the last layer (7 for HAM10000).
      attention: a name in ``ATTENTION_BLOCKS``; replaces torchvision's SE where it has one.
      ca_activation: activation inside coordinate attention ('swish' as the paper,
        'hardswish' as the official CA code).
      attention_init: how the attention parts SE lacks start ('preserve': as the SE
        they replace, 'plain': random; see ``caco_jax.models.attention``).
      dropout: classifier dropout rate (torchvision: 0.2).
      bn_momentum: BatchNorm running-average momentum in torch's convention
        (torchvision's MobileNetV3: 0.01; short runs such as the CPU demo need a
        larger value or the running statistics stay near their initialisation).
      depthwise: how depthwise convolutions are computed ('auto', 'conv', 'shifts',
        'shifts_vjp'; see ``caco_jax.models.depthwise``); the parameters are the same.
      dtype: compute dtype (e.g. jnp.bfloat16); parameters and BatchNorm statistics
        stay float32 and logits are returned in float32.
    """

    def __init__(
        self,
        *,
        arch: str = "small",
        num_classes: int = 7,
        attention: str = "caco",
        ca_activation: str = "swish",
        attention_init: str = "preserve",
        dropout: float = 0.2,
        bn_momentum: float = BN_MOMENTUM,
        depthwise: str = "auto",
        dtype: Dtype | None = None,
        rngs: nnx.Rngs,
    ):
        if arch not in ARCHS:
            raise ValueError(f"unknown arch {arch!r}; expected one of {sorted(ARCHS)}")
        ATTENTION_BLOCKS[attention]  # validates the name early
        options = AttentionOptions(ca_activation=ca_activation, init=attention_init, conv_impl=depthwise, dtype=dtype)
        spec = ARCHS[arch]
        self.arch, self.attention_name, self.num_classes = arch, attention, num_classes
        # Recorded so that exports (caco_jax.interop.convert, caco_jax.interop.torch_reference) can rebuild the model.
        self.attention_init, self.ca_activation, self.bn_momentum = attention_init, ca_activation, bn_momentum
        self.dtype = dtype
        self.stem = ConvBNAct(3, spec.stem, 3, stride=2, act="hardswish", depthwise=depthwise, dtype=dtype, rngs=rngs)
        blocks, width = [], spec.stem
        for b in spec.blocks:
            blocks.append(
                InvertedResidual(
                    width,
                    b,
                    attention=attention,
                    options=options,
                    depthwise=depthwise,
                    rngs=rngs,
                )
            )
            width = b.out
        self.blocks = nnx.List(blocks)
        self.last_conv = ConvBNAct(width, spec.last_conv, 1, act="hardswish", dtype=dtype, rngs=rngs)
        linear_init = nnx.initializers.normal(0.01)
        self.head = nnx.Linear(spec.last_conv, spec.last_channel, kernel_init=linear_init, dtype=dtype, rngs=rngs)
        self.dropout = nnx.Dropout(dropout)
        self.classifier = nnx.Linear(spec.last_channel, num_classes, kernel_init=linear_init, dtype=dtype, rngs=rngs)
        if not 0.0 < bn_momentum <= 1.0:
            raise ValueError(f"bn_momentum must be in (0, 1], got {bn_momentum}")
        for _, module in nnx.iter_modules(self):
            if isinstance(module, BatchNorm):
                module.momentum = bn_momentum

    @property
    def num_features(self) -> int:
        return self.last_conv.bn.num_features

    def feature_map(self, x: Array) -> Array:
        """Activations of the last conv block (``last_conv``), (B, H', W', last_conv) in float32.

        H', W' are the input size over the network stride (32 for 'small' and 'large').
        """
        if self.dtype is not None:
            x = x.astype(self.dtype)
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return self.last_conv(x).astype(jnp.float32)

    def features(self, x: Array) -> Array:
        """Globally average-pooled backbone features, (B, last_conv) in float32."""
        return jnp.mean(self.feature_map(x), axis=(1, 2))

    def hidden(self, features: Array) -> Array:
        """The classifier's hidden activation (B, last_channel) from pooled ``features`` (before dropout)."""
        if self.dtype is not None:
            features = features.astype(self.dtype)
        return hard_swish(self.head(features))

    def classify(self, features: Array, *, rngs: nnx.Rngs | None = None) -> Array:
        """Logits (B, num_classes) in float32 from pooled ``features`` (the classifier head)."""
        return self.classifier(self.dropout(self.hidden(features), rngs=rngs)).astype(jnp.float32)

    def __call__(self, x: Array, *, rngs: nnx.Rngs | None = None) -> Array:
        """Logits (B, num_classes) in float32 for images (B, H, W, 3).

        ``rngs`` supplies the dropout key in training mode (``model.train()``).
        """
        return self.classify(self.features(x), rngs=rngs)


def count_params(model: nnx.Module) -> int:
    """Number of trainable parameters (nnx.Param leaves), BatchNorm statistics excluded."""
    return sum(int(p.size) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
