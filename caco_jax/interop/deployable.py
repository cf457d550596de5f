"""The PyTorch module every deployment export traces (``torch`` extra): the reference of a caco-jax model
with the three outputs an exported model carries, in the input layout its runtime expects.

Outputs, in this order: ``logits`` [N, classes]; ``pooled`` [N, F], the pooled backbone features the
head reads (576 for small); ``hidden`` [N, H], the head's hidden activation (hardswish; the input of
the last Linear layer, 1024 for small; dropout is the identity at inference). ``pooled`` and
``hidden`` are the two feature layers the out-of-distribution guard can score
(``caco_jax.evaluation.ood_score.LAYERS``), so an exported model can run the run's guard.

:func:`exported_program` is ``torch.export`` of that module, with the one rewrite a converter needs:
the channel attention's global max pooling (``adaptive_max_pool2d`` to 1 x 1, which LiteRT's
PyTorch converter cannot lower) becomes ``amax`` over the spatial axes, the same values.

A run trained with colour constancy (``data.color_constancy``) has it in the graph: the module takes
the ImageNet-normalised images every export takes, returns them to [0, 1], applies Shades of Gray
(written here in PyTorch, apart from the JAX and NumPy versions of ``caco_jax.data.constancy``, and
tested against them) and normalises again, so that ONNX and LiteRT runtimes compute it themselves.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from caco_jax.data.classes import IMAGENET_MEAN, IMAGENET_STD
from caco_jax.data.constancy import EPS, OFF, ColorConstancy
from caco_jax.interop.torch_reference import to_torch

OUTPUTS = ("logits", "pooled", "hidden")
LAYOUTS = ("NCHW", "NHWC")


class Deployable(nn.Module):
    """A caco-jax model's PyTorch reference (eval mode) returning {logits, pooled, hidden}.

    ``layout`` is the input's: 'NCHW' (ONNX's convention) or 'NHWC' (LiteRT's, and caco-jax's);
    the images are ImageNet-normalised float32 RGB either way. ``color``: the run's colour constancy,
    computed in the graph."""

    mean: torch.Tensor  # buffers, [1, 3, 1, 1], registered only with colour constancy
    std: torch.Tensor

    def __init__(self, model: Any, layout: str = "NCHW", color: ColorConstancy = OFF):
        super().__init__()
        if layout not in LAYOUTS:
            raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")
        self.layout = layout
        self.color = color
        self.ref = to_torch(model)
        if color.enabled:  # without it the graph is exactly the model's
            self.register_buffer("mean", torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor(IMAGENET_STD, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = images.permute(0, 3, 1, 2) if self.layout == "NHWC" else images
        if self.color.enabled:
            rgb = torch.clamp(x * self.std + self.mean, 0.0, 1.0)  # the decoded image, up to rounding
            x = (shades_of_gray(rgb, self.color.p) - self.mean) / self.std
        pooled = torch.flatten(self.ref.avgpool(self.ref.features(x)), 1)
        hidden = self.ref.classifier[:-1](pooled)  # Linear, hardswish, dropout (identity in eval mode)
        return {"logits": self.ref.classifier[-1](hidden), "pooled": pooled, "hidden": hidden}


def unshare(module: nn.Module) -> nn.Module:
    """Gives each channel attention of ``module`` a copy of its squeeze MLP for the max-pooled branch (the
    same values): PT2E quantises a weight read by two convolutions nowhere, so without it those MLPs,
    half of a LiteRT int8 file, stay float32. For int8 exports only (the float files would grow)."""
    import copy

    from caco_jax.interop.torch_reference import ChannelAttention

    for m in module.modules():
        if isinstance(m, ChannelAttention) and m.mlp_max is None:
            m.mlp_max = copy.deepcopy(m.mlp)
    return module


def shades_of_gray(rgb: torch.Tensor, p: float) -> torch.Tensor:
    """Shades of Gray colour constancy of NCHW images in [0, 1] (``caco_jax.data.constancy``)."""
    illuminant = torch.pow(torch.mean(torch.pow(rgb, p), dim=(2, 3), keepdim=True), 1.0 / p)
    gain = torch.mean(illuminant, dim=1, keepdim=True) / torch.clamp(illuminant, min=EPS)
    return torch.clamp(rgb * gain, 0.0, 1.0)


def _global_max(x: torch.Tensor, output_size: Any) -> tuple[torch.Tensor, torch.Tensor]:
    if tuple(output_size) != (1, 1):
        raise NotImplementedError(f"adaptive max pooling to {tuple(output_size)} (only 1 x 1 is rewritten)")
    values = torch.amax(x, dim=(2, 3), keepdim=True)
    return values, torch.zeros_like(values, dtype=torch.int64)  # the indices are never used at inference


def exported_program(module: nn.Module, example: torch.Tensor) -> torch.export.ExportedProgram:
    """``torch.export`` of ``module`` at ``example``'s shape, global max pooling as ``amax``."""
    program = torch.export.export(module.eval(), (example,), strict=False)
    return program.run_decompositions({torch.ops.aten.adaptive_max_pool2d.default: _global_max})
