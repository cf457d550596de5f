"""Run by tests/test_train.py in a subprocess with 8 emulated CPU devices.

Trains a few steps of the tiny model on the same batches over a mesh of 8 devices
and over a mesh of 1, and prints JSON with the largest parameter / BatchNorm-statistic
differences, plus the error message for a batch that does not split over 8 devices.
"""

from __future__ import annotations

import json
import pathlib
import sys

import jax
import numpy as np
import optax

from caco_jax.data.augment import AugmentConfig
from caco_jax.models import create_model
from caco_jax.training import parallel
from caco_jax.training.losses import make_loss
from caco_jax.training.steps import ModelDef, build_steps, init_state

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from caco_jax.configs import default


def train(num_devices: int, batches: list[dict[str, np.ndarray]]) -> tuple[dict, dict, list[float]]:
    mesh = parallel.make_mesh(num_devices)
    model_def = ModelDef(create_model(arch="tiny", attention="caco", bn_momentum=0.1, seed=0))
    # SGD, not AdamW: Adam divides each gradient by its own running magnitude, which turns
    # the float noise of analytically-zero gradients (a conv bias right before a BatchNorm)
    # into parameter differences of up to the learning rate. The property under test is
    # the gradient and the BatchNorm statistics, which SGD passes through unscaled.
    tx = optax.sgd(0.1)
    loss = make_loss(default.get_config().loss, np.array([5, 8, 10, 3, 10, 60, 4]))
    repl = parallel.replicated(mesh)
    state = jax.device_put(init_state(model_def, tx, 0), repl)
    step = build_steps(model_def, mesh, tx=tx, loss=loss, aug=AugmentConfig(), image_size=32).train
    weights = jax.device_put(loss.class_weights(0), repl)
    losses = []
    for b in batches:
        state, metrics = step(state, parallel.to_global(b, mesh), weights)
        losses.append(float(metrics.compute()["loss"]))
    return jax.device_get(state.params), jax.device_get(state.batch_stats), losses


def main() -> None:
    assert jax.device_count() == 8, jax.devices()
    rng = np.random.default_rng(0)
    batches = [
        {
            "image": rng.integers(0, 256, (16, 40, 40, 3), dtype=np.uint8),
            "label": rng.integers(0, 7, (16,)).astype(np.int32),
        }
        for _ in range(3)
    ]
    p8, s8, l8 = train(8, batches)
    p1, s1, l1 = train(1, batches)

    def diff(a, b) -> float:
        return max(float(np.max(np.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))

    moved = max(
        float(np.max(np.abs(x - y)))
        for x, y in zip(
            jax.tree.leaves(p1),
            jax.tree.leaves(ModelDef(create_model(arch="tiny", attention="caco", seed=0)).init_params),
            strict=True,
        )
    )
    try:
        parallel.check_batch_size(12, parallel.make_mesh(8))
        error = None
    except ValueError as e:
        error = str(e)
    json.dump(
        {
            "params": diff(p8, p1),
            "batch_stats": diff(s8, s1),
            "moved": moved,
            "error": error,
            "loss": float(np.max(np.abs(np.subtract(l8, l1)))),
        },
        sys.stdout,
    )


if __name__ == "__main__":
    main()
