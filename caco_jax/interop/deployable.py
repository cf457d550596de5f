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
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from caco_jax.interop.torch_reference import to_torch

OUTPUTS = ("logits", "pooled", "hidden")
LAYOUTS = ("NCHW", "NHWC")


class Deployable(nn.Module):
    """A caco-jax model's PyTorch reference (eval mode) returning {logits, pooled, hidden}.

    ``layout`` is the input's: 'NCHW' (ONNX's convention) or 'NHWC' (LiteRT's, and caco-jax's);
    the images are ImageNet-normalised float32 RGB either way."""

    def __init__(self, model: Any, layout: str = "NCHW"):
        super().__init__()
        if layout not in LAYOUTS:
            raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")
        self.layout = layout
        self.ref = to_torch(model)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = images.permute(0, 3, 1, 2) if self.layout == "NHWC" else images
        pooled = torch.flatten(self.ref.avgpool(self.ref.features(x)), 1)
        hidden = self.ref.classifier[:-1](pooled)  # Linear, hardswish, dropout (identity in eval mode)
        return {"logits": self.ref.classifier[-1](hidden), "pooled": pooled, "hidden": hidden}


def _global_max(x: torch.Tensor, output_size: Any) -> tuple[torch.Tensor, torch.Tensor]:
    if tuple(output_size) != (1, 1):
        raise NotImplementedError(f"adaptive max pooling to {tuple(output_size)} (only 1 x 1 is rewritten)")
    values = torch.amax(x, dim=(2, 3), keepdim=True)
    return values, torch.zeros_like(values, dtype=torch.int64)  # the indices are never used at inference


def exported_program(module: nn.Module, example: torch.Tensor) -> torch.export.ExportedProgram:
    """``torch.export`` of ``module`` at ``example``'s shape, global max pooling as ``amax``."""
    program = torch.export.export(module.eval(), (example,), strict=False)
    return program.run_decompositions({torch.ops.aten.adaptive_max_pool2d.default: _global_max})
