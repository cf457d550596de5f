"""Grad-CAM heat maps (Selvaraju et al., ICCV 2017) over the last conv block, and their overlays.

For a class c and the last conv block's activations A (B, h, w, K), the map is
ReLU(sum_k a_k A[..., k]) with a_k = mean over positions of ds_c / dA[..., k]. The score
s_c is the centred logit y_c - mean_j y_j: the softmax ignores whatever moves every logit
alike, so that is no evidence for c. MobileNetV3's head sees A only through its global
average, so a_k is exactly ds_c / d(pooled feature k) / (h w): each position's term is
its share of the linearised score. The map is upsampled to the input (bilinear) and
scaled to [0, 1] per image (min to max), so it shows where the evidence is relative to
the rest of that image, not how strong it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib import colormaps
from PIL import Image

Array = jax.Array


def grad_cam(model: Any, x: Array, target: Array) -> tuple[Array, Array, Array]:
    """(logits [B, C], explained class [B], map [B, H, W] in [0, 1]) of a model in eval mode.

    ``x``: normalised images (B, H, W, 3); ``target`` int32 [B]: the class to explain,
    or -1 for the predicted one. Examples are independent (BatchNorm in eval mode), so
    one backward pass serves the whole batch.
    """
    fmap = model.feature_map(x)
    logits, backward = jax.vjp(lambda a: model.classify(jnp.mean(a, axis=(1, 2))), fmap)
    cls = jnp.where(target < 0, jnp.argmax(logits, axis=-1), target).astype(jnp.int32)
    num_classes = logits.shape[-1]
    # d(y_c - mean_j y_j): the centred logit, blind to what moves every logit alike.
    (grads,) = backward(jax.nn.one_hot(cls, num_classes, dtype=logits.dtype) - 1.0 / num_classes)
    weights = jnp.mean(grads, axis=(1, 2))  # (B, K)
    cam = jax.nn.relu(jnp.einsum("bhwk,bk->bhw", fmap, weights))
    cam = jax.image.resize(cam, (x.shape[0], x.shape[1], x.shape[2]), method="bilinear")
    low = jnp.min(cam, axis=(1, 2), keepdims=True)
    span = jnp.max(cam, axis=(1, 2), keepdims=True) - low
    return logits, cls, jnp.where(span > 0, (cam - low) / jnp.where(span > 0, span, 1.0), 0.0)


def overlay(image: np.ndarray, cam: np.ndarray, *, alpha: float = 0.45, colormap: str = "jet") -> np.ndarray:
    """The heat map blended over ``image`` (uint8 [H, W, 3]); ``cam`` [h, w] in [0, 1] is
    resized to the image (bilinear), so a map of the square network input fits the original."""
    image = np.asarray(image, np.uint8)
    height, width = image.shape[:2]
    cam = np.asarray(cam, np.float32)
    if cam.shape != (height, width):
        cam = np.asarray(Image.fromarray(cam).resize((width, height), Image.Resampling.BILINEAR))
    heat = colormaps[colormap](np.clip(cam, 0.0, 1.0))[..., :3] * 255.0
    weight = alpha * np.clip(cam, 0.0, 1.0)[..., None] ** 0.5  # cold regions stay close to the image
    return np.clip(image * (1 - weight) + heat * weight, 0, 255).astype(np.uint8)


GALLERY_KINDS: tuple[str, ...] = (
    "most confident correct",
    "least confident correct",
    "most confident wrong",
    "least confident wrong",
)


def select_gallery(probs: np.ndarray, labels: np.ndarray) -> list[list[int | None]]:
    """For each true class, the example indices of ``GALLERY_KINDS`` (None where there is none).

    Confidence is the top-1 probability; an example appears at most once per class (a
    class with one correct prediction shows it as most confident only).
    """
    probs = np.asarray(probs)
    labels = np.asarray(labels)
    preds = probs.argmax(axis=1)
    confidence = probs.max(axis=1)
    rows = []
    for c in range(probs.shape[1]):
        row: list[int | None] = []
        for correct in (True, False):
            idx = np.flatnonzero((labels == c) & ((preds == labels) == correct))
            order = idx[np.argsort(-confidence[idx], kind="stable")]
            most = int(order[0]) if len(order) else None
            least = int(order[-1]) if len(order) > 1 else None
            row += [most, least]
        rows.append(row)
    return rows


def gallery_indices(rows: Sequence[Sequence[int | None]]) -> list[int]:
    """The distinct indices a gallery shows, in first-seen order."""
    seen: dict[int, None] = {}
    for row in rows:
        for i in row:
            if i is not None:
                seen[i] = None
    return list(seen)
