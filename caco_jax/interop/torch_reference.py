"""The PyTorch reference of every caco-jax model (needs the ``torch`` extra; import it explicitly).

:func:`reference_model` builds torchvision's ``mobilenet_v3_small`` / ``_large`` (its own
block table, ``torchvision.models.mobilenetv3._mobilenet_v3_conf``, and its own
``InvertedResidual``) with the squeeze-excitation slot filled by the block named
``attention``:

* ``se``: torchvision's ``SqueezeExcitation`` (hard-sigmoid gate), i.e. torchvision's
  model exactly, with torchvision's key names;
* ``caco``, ``cbam``, ``seco``, ``eca``: the PyTorch blocks below, written in NCHW from
  the formulas in ``caco_jax/models/attention.py`` and the papers (CBAM: Woo et al. 2018;
  coordinate attention: Hou et al. 2021, laid out as its official code; ECA: Wang et al.
  2020), with the same gains as the JAX blocks for the preserving inits;
* ``none``: ``nn.Identity`` (which keeps torchvision's layer indices).

Sub-modules and parameters are named as the JAX blocks' (``channel.mlp.fc1``,
``coord.conv1``, ``coord.bn1``, ``spatial.conv``, ``max_gain``, ``gain``), so
``caco_jax.interop.convert`` maps a caco-jax model onto this one key by key, both ways
(:func:`to_torch`; ``caco_jax.interop.convert.load_torchvision`` reads the state_dict back).

Also here: the losses written from the official formulas (the focal loss of Lin et al.;
``LDAMLoss`` and the deferred re-weighting of the LDAM-DRW code, Cao et al. 2019), which the
registered losses of ``caco_jax.training.losses`` name as their PyTorch formulas
(``torch_formula``). This module imports nothing from ``caco_jax.training``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torchvision.models import mobilenetv3 as tv_mobilenetv3
from torchvision.ops import SqueezeExcitation as TorchvisionSE

from caco_jax.models.attention import AttentionOptions
from caco_jax.models.layers import BN_EPS, BN_MOMENTUM
from caco_jax.registry import Registry

Tensor = torch.Tensor

_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": F.relu,
    "hardswish": F.hardswish,
    "swish": F.silu,
    "hardsigmoid": F.hardsigmoid,
    "sigmoid": torch.sigmoid,
    "identity": lambda x: x,
}


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


def _gain(channels: int, present: bool) -> nn.Parameter | None:
    return nn.Parameter(torch.zeros(channels)) if present else None


def _per_channel(v: Tensor) -> Tensor:
    return v.view(1, -1, 1, 1)


def _gated(x: Tensor, a: Tensor, gain: Tensor | None) -> Tensor:
    """``x * a`` (the papers), or ``x * (1 + gain * (a - 1))`` with a preserving init."""
    if gain is None:
        return x * a
    return x * (1 + _per_channel(gain) * (a - 1))


# --------------------------------------------------------------------------- attention blocks


# name -> constructor (channels, squeeze, options): the twin of each caco_jax.models.attention block,
# filled by @twin (tests check that every registered block has one).
TORCH_BLOCKS: Registry[Callable[..., nn.Module]] = Registry("PyTorch twin")


def twin(name: str) -> Callable[[Any], Any]:
    """Decorator: registers the PyTorch twin of attention block ``name``."""
    return TORCH_BLOCKS.register(name)


@twin("se")
def SqueezeExcitation(channels: int, squeeze: int, options: AttentionOptions | None = None) -> nn.Module:
    """MobileNetV3's SE: torchvision's own module (hard-sigmoid gate; keys fc1, fc2)."""
    return TorchvisionSE(channels, squeeze, scale_activation=nn.Hardsigmoid)


class PointwiseMLP(nn.Module):
    """SE's squeeze MLP: 1x1 conv C -> S, ReLU, 1x1 conv S -> C (with biases)."""

    def __init__(self, channels: int, squeeze: int):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)

    def forward(self, v: Tensor) -> Tensor:
        return self.fc2(F.relu(self.fc1(v)))


class ChannelAttention(nn.Module):
    """CBAM-style channel attention: x * gate(MLP(avgpool x) + g * MLP(maxpool x)), one MLP.

    ``max_gain`` (g, per channel, zeros) exists only with a preserving init. ``mlp_max``, None unless an
    int8 export sets it (``caco_jax.interop.deployable.unshare``): a copy of ``mlp`` for the max-pooled
    branch, so that a quantiser gives each branch its own weights and ranges."""

    mlp_max: nn.Module | None

    def __init__(self, channels: int, squeeze: int, options: AttentionOptions, *, gate: str):
        super().__init__()
        self.mlp = PointwiseMLP(channels, squeeze)
        self.mlp_max = None
        self.gate = gate
        self.max_gain = _gain(channels, options.gain_max_branch)

    def forward(self, x: Tensor) -> Tensor:
        from_max = (self.mlp if self.mlp_max is None else self.mlp_max)(F.adaptive_max_pool2d(x, 1))
        if self.max_gain is not None:
            from_max = from_max * _per_channel(self.max_gain)
        return x * _ACTIVATIONS[self.gate](self.mlp(F.adaptive_avg_pool2d(x, 1)) + from_max)


class SpatialAttention(nn.Module):
    """CBAM's spatial half: a = sigmoid(BN(conv7x7([max over C, mean over C]))), gated output."""

    def __init__(self, channels: int, options: AttentionOptions, *, kernel_size: int = 7):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=(kernel_size - 1) // 2, bias=False)
        self.bn = _bn(1)
        self.gain = _gain(channels, options.gain_gated_output)

    def forward(self, x: Tensor) -> Tensor:
        # torch.max over a dim (as CBAM's code), whose gradient goes to one element, not amax's split
        pooled = torch.cat([torch.max(x, dim=1, keepdim=True)[0], x.mean(dim=1, keepdim=True)], dim=1)
        return _gated(x, torch.sigmoid(self.bn(self.conv(pooled))), self.gain)


class CoordinateAttention(nn.Module):
    """Coordinate attention (Hou et al. 2021), laid out as the official CoordAtt code."""

    def __init__(self, channels: int, options: AttentionOptions):
        super().__init__()
        mip = max(8, channels // 32)
        self.conv1 = nn.Conv2d(channels, mip, 1)
        self.bn1 = _bn(mip)
        self.act = options.ca_activation
        self.conv_h = nn.Conv2d(mip, channels, 1)
        self.conv_w = nn.Conv2d(mip, channels, 1)
        self.gain = _gain(channels, options.gain_gated_output)

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[2], x.shape[3]
        x_h = F.adaptive_avg_pool2d(x, (h, 1))  # z^h: (n, c, h, 1)
        x_w = F.adaptive_avg_pool2d(x, (1, w)).permute(0, 1, 3, 2)  # z^w: (n, c, w, 1)
        y = _ACTIVATIONS[self.act](self.bn1(self.conv1(torch.cat([x_h, x_w], dim=2))))
        f_h, f_w = torch.split(y, [h, w], dim=2)
        a_h = torch.sigmoid(self.conv_h(f_h))  # (n, c, h, 1)
        a_w = torch.sigmoid(self.conv_w(f_w.permute(0, 1, 3, 2)))  # (n, c, 1, w)
        return _gated(x, a_h * a_w, self.gain)


@twin("eca")
class ECA(nn.Module):
    """ECA: x * sigmoid(conv1d_k(avgpool x) across channels), no bias, k = |(log2 C + 1) / 2| made odd.

    The 1-D kernel is the parameter ``kernel`` (k,), as in the JAX block."""

    def __init__(self, channels: int, squeeze: int, options: AttentionOptions, *, gamma: int = 2, b: int = 1):
        super().__init__()
        t = int(abs((math.log2(channels) + b) / gamma))
        k = t if t % 2 else t + 1
        bound = 1.0 / math.sqrt(k)  # torch Conv1d's default init
        self.kernel = nn.Parameter(torch.empty(k).uniform_(-bound, bound))

    def forward(self, x: Tensor) -> Tensor:
        n, c = x.shape[0], x.shape[1]
        k = self.kernel.shape[0]
        y = F.adaptive_avg_pool2d(x, 1).view(n, 1, c)
        y = F.conv1d(y, self.kernel.view(1, 1, k), padding=(k - 1) // 2)  # cross-correlation
        return x * torch.sigmoid(y).view(n, c, 1, 1)


@twin("caco")
class CaCo(nn.Module):
    """The paper's CaCo: channel attention (hard-sigmoid gate), then coordinate attention."""

    def __init__(self, channels: int, squeeze: int, options: AttentionOptions):
        super().__init__()
        self.channel = ChannelAttention(channels, squeeze, options, gate="hardsigmoid")
        self.coord = CoordinateAttention(channels, options)

    def forward(self, x: Tensor) -> Tensor:
        return self.coord(self.channel(x))


@twin("cbam")
class CBAM(nn.Module):
    """CBAM: channel attention (sigmoid gate), then spatial attention."""

    def __init__(self, channels: int, squeeze: int, options: AttentionOptions):
        super().__init__()
        self.channel = ChannelAttention(channels, squeeze, options, gate="sigmoid")
        self.spatial = SpatialAttention(channels, options)

    def forward(self, x: Tensor) -> Tensor:
        return self.spatial(self.channel(x))


@twin("seco")
class SeCo(nn.Module):
    """torchvision's SE, then coordinate attention."""

    def __init__(self, channels: int, squeeze: int, options: AttentionOptions):
        super().__init__()
        self.se = SqueezeExcitation(channels, squeeze)
        self.coord = CoordinateAttention(channels, options)

    def forward(self, x: Tensor) -> Tensor:
        return self.coord(self.se(x))


@twin("none")
def _no_attention(channels: int, squeeze: int, options: AttentionOptions | None = None) -> nn.Module:
    return nn.Identity()


def make_block(name: str, channels: int, squeeze: int, options: AttentionOptions | None = None) -> nn.Module:
    """The PyTorch block registered as ``name``."""
    return TORCH_BLOCKS[name](channels, squeeze, options or AttentionOptions())


# --------------------------------------------------------------------------- whole models


def reference_model(
    arch: str = "small",
    attention: str = "caco",
    *,
    num_classes: int = 7,
    attention_init: str = "preserve",
    ca_activation: str = "swish",
    dropout: float = 0.2,
    bn_momentum: float = BN_MOMENTUM,
) -> tv_mobilenetv3.MobileNetV3:
    """torchvision's ``mobilenet_v3_<arch>`` with the SE slot holding ``attention``.

    The arguments mean what they mean for ``caco_jax.models.create_model``; ``se`` gives
    torchvision's model exactly. Parameters are at torchvision's initialisation (gains at
    zero); load a caco-jax model's weights with :func:`to_torch` or
    ``load_state_dict(caco_jax.interop.convert.export_state_dict(model), strict=True)``.
    """
    if arch not in ("small", "large"):
        raise ValueError(f"torchvision has no mobilenet_v3_{arch}; expected 'small' or 'large'")
    options = AttentionOptions(ca_activation=ca_activation, init=attention_init)  # validates both
    constructor = TORCH_BLOCKS[attention]
    setting, last_channel = tv_mobilenetv3._mobilenet_v3_conf(f"mobilenet_v3_{arch}")
    block = None  # torchvision's InvertedResidual with its SqueezeExcitation
    if attention != "se":
        se_layer = partial(constructor, options=options)
        block = partial(tv_mobilenetv3.InvertedResidual, se_layer=se_layer)
    model = tv_mobilenetv3.MobileNetV3(setting, last_channel, num_classes=num_classes, block=block, dropout=dropout)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = bn_momentum
    return model


def to_torch(model: Any, *, dtype: torch.dtype = torch.float32) -> tv_mobilenetv3.MobileNetV3:
    """The PyTorch reference of a caco-jax ``MobileNetV3`` with its weights (``strict=True``), in eval mode."""
    from caco_jax.interop.convert import export_state_dict

    ref = reference_model(
        model.arch,
        model.attention_name,
        num_classes=model.num_classes,
        attention_init=model.attention_init,
        ca_activation=model.ca_activation,
        dropout=model.dropout.rate,
        bn_momentum=model.bn_momentum,
    )
    state = {k: torch.from_numpy(np.array(v)) for k, v in export_state_dict(model).items()}
    ref.load_state_dict(state, strict=True)
    return ref.to(dtype).eval()


# --------------------------------------------------------------------------- losses (official formulas)


def focal_loss(
    logits: Tensor, target: Tensor, gamma: float = 2.0, alpha: Any = None, weight: Tensor | None = None
) -> Tensor:
    """Softmax focal loss (Lin et al. 2017): -alpha_t (1 - p_t)^gamma log p_t, p_t the plain softmax
    probability of the true class; mean weighted by ``weight[target]`` (as torch's cross-entropy)."""
    logpt = F.log_softmax(logits, dim=1).gather(1, target[:, None])[:, 0]
    loss = -((1 - logpt.exp()) ** gamma) * logpt
    if alpha is not None:
        alpha = torch.as_tensor(alpha, dtype=logits.dtype)
        loss = loss * (alpha[target] if alpha.ndim == 1 else alpha)
    w = torch.ones(logits.shape[1], dtype=logits.dtype) if weight is None else weight.to(logits.dtype)
    return (w[target] * loss).sum() / w[target].sum()


class LDAMLoss(nn.Module):
    """LDAM (Cao et al. 2019), as the official LDAM-DRW code's ``LDAMLoss`` (device- and dtype-agnostic)."""

    def __init__(self, cls_num_list: Any, max_m: float = 0.5, weight: Tensor | None = None, s: float = 30):
        super().__init__()
        m_list = 1.0 / np.sqrt(np.sqrt(np.asarray(cls_num_list, np.float64)))
        m_list = m_list * (max_m / np.max(m_list))
        self.m_list = torch.tensor(m_list, dtype=torch.float64)
        assert s > 0
        self.s = s
        self.weight = weight

    def forward(self, x: Tensor, target: Tensor) -> Tensor:
        index = torch.zeros_like(x, dtype=torch.uint8)
        index.scatter_(1, target.data.view(-1, 1), 1)
        index_float = index.to(x.dtype)
        batch_m = torch.matmul(self.m_list.to(x.dtype)[None, :], index_float.transpose(0, 1))
        batch_m = batch_m.view((-1, 1))
        x_m = x - batch_m
        output = torch.where(index.bool(), x_m, x)
        weight = None if self.weight is None else self.weight.to(x.dtype)
        return F.cross_entropy(self.s * output, target, weight=weight)


def drw_weights(cls_num_list: Any, beta: float = 0.9999) -> np.ndarray:
    """Deferred re-weighting, as the LDAM-DRW code's train.py: (1-beta)/(1-beta^n), summing to C."""
    effective_num = 1.0 - np.power(beta, np.asarray(cls_num_list, np.float64))
    per_cls_weights = (1.0 - beta) / np.array(effective_num)
    return per_cls_weights / np.sum(per_cls_weights) * len(cls_num_list)


__all__ = [
    "CBAM",
    "ECA",
    "CaCo",
    "ChannelAttention",
    "CoordinateAttention",
    "LDAMLoss",
    "PointwiseMLP",
    "SeCo",
    "SpatialAttention",
    "SqueezeExcitation",
    "TORCH_BLOCKS",
    "drw_weights",
    "focal_loss",
    "make_block",
    "reference_model",
    "to_torch",
]
