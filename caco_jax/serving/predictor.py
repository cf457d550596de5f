"""A trained run, ready to classify and explain images: used by scripts/predict.py and the web app."""
from __future__ import annotations

import pathlib
from collections.abc import Sequence

import jax
import numpy as np

from caco_jax.evaluation import calibration
from caco_jax.training import parallel
from caco_jax.data.images import decode
from caco_jax.runs.weights import load_trained
from caco_jax.training.steps import ModelDef, build_steps


class Predictor:
    """Class probabilities (optionally test-time augmented) and Grad-CAM maps of a run's weights.

    Images are uint8 [N, S, S, 3] at the run's input size S (:meth:`prepare` decodes and
    resizes file bytes, as evaluation does). Batches are padded to ``batch_size`` so each
    step compiles once. The temperature saved with the weights (``calibration.json``)
    divides the logits unless ``calibrate`` is False.
    """

    def __init__(self, workdir: str | pathlib.Path, weights: str | pathlib.Path | None = None, *,
                 calibrate: bool = True, batch_size: int = 32):
        config, model, meta, self.weights_dir = load_trained(workdir, weights)
        self.class_names: tuple[str, ...] = tuple(meta["class_names"])
        self.image_size: int = int(config.data.image_size)
        self.temperature: float | None = calibration.load(self.weights_dir) if calibrate else None
        self.batch_size = batch_size
        model_def = ModelDef(model)
        self.mesh = parallel.make_mesh(1)
        self.steps = build_steps(model_def, self.mesh)
        self._params, self._stats = jax.device_put((model_def.init_params, model_def.init_batch_stats),
                                                   parallel.replicated(self.mesh))

    @property
    def _t(self) -> np.float32:
        return np.float32(self.temperature or 1.0)

    def prepare(self, data: bytes) -> np.ndarray:
        """Encoded image bytes -> uint8 [S, S, 3] (raises ``UnreadableImage`` for a bad file)."""
        return decode(data, (self.image_size, self.image_size))

    def _chunks(self, images: np.ndarray):
        images = np.asarray(images, np.uint8)
        for start in range(0, len(images), self.batch_size):
            chunk = images[start:start + self.batch_size]
            padded = np.zeros((self.batch_size, *images.shape[1:]), np.uint8)
            padded[:len(chunk)] = chunk
            yield start, len(chunk), padded

    def probabilities(self, images: np.ndarray, *, tta: bool = False) -> np.ndarray:
        """float [N, C]; with ``tta`` averaged over the 8 dihedral views."""
        step = self.steps.predict_tta if tta else self.steps.predict
        out = [np.asarray(step(self._params, self._stats, padded, self._t))[:n] for _, n, padded in self._chunks(images)]
        return np.concatenate(out) if out else np.zeros((0, len(self.class_names)))

    def explain(self, images: np.ndarray, target: Sequence[int] | int | None = None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(probabilities [N, C] of the plain image, explained class [N], Grad-CAM [N, S, S] in [0, 1]).

        ``target``: the class to explain (an index, one per image, or None for the predicted one)."""
        n_images = len(images)
        if target is None:
            target = -1
        targets = np.broadcast_to(np.asarray(target, np.int32), (n_images,))
        probs, classes, cams = [], [], []
        for start, n, padded in self._chunks(images):
            t = np.full((self.batch_size,), -1, np.int32)
            t[:n] = targets[start:start + n]
            out = self.steps.cam(self._params, self._stats, padded, t, self._t)
            probs.append(np.asarray(out["probs"])[:n])
            classes.append(np.asarray(out["class"])[:n])
            cams.append(np.asarray(out["cam"])[:n])
        if not probs:
            s = self.image_size
            return np.zeros((0, len(self.class_names))), np.zeros((0,), np.int32), np.zeros((0, s, s), np.float32)
        return np.concatenate(probs), np.concatenate(classes), np.concatenate(cams)

    def class_index(self, name: str) -> int:
        """The index of a class name (ValueError listing the names if unknown)."""
        try:
            return self.class_names.index(name)
        except ValueError:
            raise ValueError(f"unknown class {name!r}; this run's classes: {', '.join(self.class_names)}") from None
