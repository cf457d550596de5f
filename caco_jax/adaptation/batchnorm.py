"""BatchNorm statistics re-estimated on a new clinic's images (AdaBN, Li et al., Pattern Recognition 80, 2018).

The network runs in training mode over the target images (no gradients, no parameter changes), so every
BatchNorm layer normalises with the statistics of the batch in front of it and records them; the
statistics of all batches are pooled exactly (weighted by their sizes: mean of the means, and the mean
of the variances plus the spread of the means). ``depth`` limits the re-estimation to the stem and the
first ``depth`` inverted-residual blocks (the early, class-agnostic layers; the later ones keep the
training statistics), and ``alpha`` mixes: ``(1 - alpha) * training + alpha * target``. Which depth and
alpha to use is caco_jax.adaptation.run's choice (measured: docs/results_adaptation_cpu.md).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import numpy as np

from caco_jax.data.augment import normalize
from caco_jax.trees import flatten, unflatten

Preprocess = Callable[[jax.Array], jax.Array]  # uint8 [N, S, S, 3] -> the network's float input


def layer_names(flat: Mapping[str, Any]) -> list[str]:
    """The BatchNorm layers of a flat weights dict, as '<path>' of '<path>/mean', in network order."""
    names = sorted({k[: -len("/mean")] for k in flat if k.endswith("/mean")})

    def order(name: str) -> tuple[int, int, str]:
        head = name.split("/")
        if head[0] == "stem":
            return (0, 0, name)
        if head[0] == "blocks":
            return (1, int(head[1]), name)
        return (2, 0, name)

    return sorted(names, key=order)


def selected(name: str, depth: int | None) -> bool:
    """Whether layer ``name`` is re-estimated at ``depth`` (None: every layer)."""
    if depth is None:
        return True
    head = name.split("/")
    return head[0] == "stem" or (head[0] == "blocks" and int(head[1]) < depth)


class StatsPass:
    """The jitted pass that returns one batch's BatchNorm statistics: the model built with momentum 1
    (a training-mode call then leaves exactly the batch's mean and unbiased variance in its statistics)."""

    def __init__(self, model_config: Any, num_classes: int, preprocess: Preprocess = normalize):
        from caco_jax.models import model_from_config
        from caco_jax.training.steps import ModelDef

        cfg = dict(model_config) | {"bn_momentum": 1.0, "dropout": 0.0}
        self.model_def = ModelDef(model_from_config(cfg, num_classes=num_classes))

        def batch_stats(params: Any, stats: Any, images: jax.Array) -> Any:
            _, new = self.model_def.apply(params, stats, preprocess(images), train=True, rng=jax.random.key(0))
            return new

        self._fn = jax.jit(batch_stats)

    def __call__(self, flat: Mapping[str, np.ndarray], images: np.ndarray) -> dict[str, np.ndarray]:
        params = unflatten(dict(flat), self.model_def.init_params, source="weights")
        stats = unflatten(dict(flat), self.model_def.init_batch_stats, source="weights")
        return {
            k: np.asarray(v, np.float64) for k, v in flatten(jax.device_get(self._fn(params, stats, images))).items()
        }


def reestimate(
    stats_pass: StatsPass,
    flat: Mapping[str, np.ndarray],
    batches: Iterable[np.ndarray],
    *,
    depth: int | None = None,
    alpha: float = 1.0,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(the weights with re-estimated statistics, what was done): ``batches`` of uint8 images [B, S, S, 3]
    as the network sees them (decoded, resized); every batch counts by its size."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha mixes training and target statistics: it must be in [0, 1], got {alpha}")
    sums: dict[str, np.ndarray] = {}
    total = 0
    for images in batches:
        n = len(images)
        if n == 0:
            continue
        got = stats_pass(flat, np.asarray(images, np.uint8))
        for name in layer_names(got):
            m, v = got[f"{name}/mean"], got[f"{name}/var"]
            sums[f"{name}/m"] = sums.get(f"{name}/m", 0.0) + n * m
            sums[f"{name}/s"] = sums.get(f"{name}/s", 0.0) + n * (v + m * m)
        total += n
    if total == 0:
        raise ValueError("no images to re-estimate the BatchNorm statistics on")
    out = {k: np.asarray(v) for k, v in flat.items()}
    changed = []
    for name in layer_names(flat):
        if not selected(name, depth):
            continue
        mean = sums[f"{name}/m"] / total
        var = np.maximum(sums[f"{name}/s"] / total - mean * mean, 0.0)
        old_mean, old_var = np.asarray(flat[f"{name}/mean"], np.float64), np.asarray(flat[f"{name}/var"], np.float64)
        out[f"{name}/mean"] = ((1 - alpha) * old_mean + alpha * mean).astype(np.float32)
        out[f"{name}/var"] = ((1 - alpha) * old_var + alpha * var).astype(np.float32)
        changed.append(name)
    return out, {
        "images": total,
        "layers": len(changed),
        "of_layers": len(layer_names(flat)),
        "depth": depth,
        "alpha": alpha,
    }


def iterate_batches(images: np.ndarray, batch_size: int) -> Iterable[np.ndarray]:
    """Consecutive batches of ``images`` (the last one may be smaller: it is never padded, since padding
    would enter the statistics)."""
    for start in range(0, len(images), batch_size):
        yield images[start : start + batch_size]
