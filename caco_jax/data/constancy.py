"""Colour constancy: the ``data.color_constancy`` option (what it is, read from a run's config) and its
NumPy implementation.

Shades of Gray (Finlayson & Trezzi 2004): per image, the illuminant of channel c is estimated as the
Minkowski p-norm mean e_c = (mean over pixels of x_c ** p) ** (1 / p), x in [0, 1]; each channel is
then scaled by mean(e) / e_c, so that the estimated illuminant becomes neutral grey and the mean
brightness is kept, and clipped to [0, 1]. p = 1 is the grey-world assumption, p -> infinity max-RGB;
6 is the value Barata, Celebi & Marques (IEEE JBHI 2015) found best for dermoscopy.

A run applies it to every image that enters the network, in training (after the geometric and
acquisition augmentation, before the colour jitter) and at inference. Three implementations, written
separately and tested against each other: JAX (``caco_jax.data.augment.preprocess``, inside the jitted
steps), PyTorch (``caco_jax.interop.deployable``, inside the exported ONNX / LiteRT graph) and this one
(NumPy, no JAX: ``caco_jax.serving.portable`` may use it).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

METHODS = ("none", "shades_of_gray")
# An illuminant estimate below this (a channel black everywhere) gets no gain: the channel stays black.
EPS = 1e-6


@dataclasses.dataclass(frozen=True)
class ColorConstancy:
    """``data.color_constancy`` (none | shades_of_gray) and ``data.color_constancy_p`` (the norm, >= 1)."""

    method: str = "none"
    p: float = 6.0

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"data.color_constancy must be one of {METHODS}, got {self.method!r}")
        if isinstance(self.p, bool) or not isinstance(self.p, int | float) or not 1.0 <= self.p < np.inf:
            raise ValueError(f"data.color_constancy_p must be a number >= 1, got {self.p!r}")
        object.__setattr__(self, "p", float(self.p))

    @property
    def enabled(self) -> bool:
        return self.method != "none"

    @classmethod
    def from_config(cls, data: Any) -> ColorConstancy:
        """From a run's ``config.data`` (runs saved before the option existed have none: off)."""
        return cls(data.get("color_constancy", "none"), data.get("color_constancy_p", 6.0))

    def describe(self, where: str) -> dict[str, Any] | None:
        """What export metadata says about it (None when off); ``where`` it is computed."""
        return {"method": self.method, "p": self.p, "where": where} if self.enabled else None


OFF = ColorConstancy()  # the default: no colour constancy


def shades_of_gray(images: np.ndarray, p: float) -> np.ndarray:
    """Shades of Gray of float images [..., H, W, 3] in [0, 1] (each image on its own), float32."""
    x = np.asarray(images, np.float64)
    illuminant = np.mean(x**p, axis=(-3, -2), keepdims=True) ** (1.0 / p)  # [..., 1, 1, 3]
    gain = np.mean(illuminant, axis=-1, keepdims=True) / np.maximum(illuminant, EPS)
    return np.clip(x * gain, 0.0, 1.0).astype(np.float32)
