"""An exported model (ONNX or LiteRT) ready to classify images as its run does, without JAX or torch.

``caco-jax predict --model m.onnx|m.tflite`` uses it. Needs only NumPy, Pillow and the model's
runtime: onnxruntime for ``.onnx``, the LiteRT interpreter (``ai-edge-litert``) for ``.tflite``.
Everything else comes from the metadata beside the model (``caco_jax.interop.artifact``): the same
decoding (``caco_jax.data.images.decode``, with the run's field-of-view crop) and normalisation (the
run's colour constancy, if any, is in the graph), the temperature, the decision rules
(``caco_jax.evaluation.decision``), the 8-view test-time augmentation, the reliability threshold and
the out-of-distribution guard (``caco_jax.evaluation.ood_score``) as :class:`~caco_jax.serving.predictor.Predictor`.
Importing this module imports none of jax, flax, optax or tensorflow_datasets (tests check).
"""

from __future__ import annotations

import pathlib
from typing import Any

import numpy as np

from caco_jax.data.images import MAX_PIXELS, decode
from caco_jax.errors import UsageError
from caco_jax.evaluation import calibration, decision, ood_score, prior_shift, selective
from caco_jax.evaluation.decision import Decision
from caco_jax.interop import artifact
from caco_jax.interop.runtimes import Runner, litert_runner, onnx_runner

__all__ = ["PortablePredictor", "Runner", "dihedral_views", "litert_runner", "onnx_runner"]


def dihedral_views(images: np.ndarray) -> np.ndarray:
    """[V=8, N, S, S, C]: rot90 by k = 0..3, each as is and flipped left-right (as the JAX step's views)."""
    if images.shape[1] != images.shape[2]:
        raise UsageError(f"test-time augmentation needs square images, got {images.shape[1]}x{images.shape[2]}")
    views = []
    for k in range(4):
        rotated = np.rot90(images, k, axes=(1, 2))
        views += [rotated, rotated[:, :, ::-1]]
    return np.stack(views)


class PortablePredictor:
    """Probabilities, decisions and the guard's verdict of an exported model; the interface of
    :class:`~caco_jax.serving.predictor.Predictor` that ``predict`` uses (no Grad-CAM: no gradients)."""

    def __init__(
        self,
        model_path: str | pathlib.Path,
        *,
        calibrate: bool = True,
        decision: str | None = None,
        threads: int = 0,
        batch_size: int = 32,
    ):
        self.path = pathlib.Path(model_path)
        self.meta = artifact.read(self.path)
        self.class_names: tuple[str, ...] = tuple(self.meta["class_names"])
        height, width = self.meta["image_size"]
        self.image_size: tuple[int, int] = (int(height), int(width))
        pre = self.meta["preprocessing"]
        self._scale = np.float32(pre["scale"])
        self._mean, self._std = np.asarray(pre["mean"], np.float32), np.asarray(pre["std"], np.float32)
        self.color = artifact.color_constancy(self.meta)  # computed by the graph itself
        self.fov_crop = artifact.fov_crop(self.meta)
        self.temperature: float | None = self.meta["temperature"] if calibrate else None
        balanced = self.meta["decision"]["balanced"]
        self.balanced_rule = None if balanced is None else decision_rule(balanced)
        clinic = self.meta["decision"].get("clinic")
        self.clinic = None if clinic is None else prior_shift.clinic_rule(clinic)
        self.decision = self._check_rule(decision or self.meta["decision"]["default"])
        self.guard = artifact.guard_from(self.path, self.meta)
        self.selective: dict | None = self.meta.get("selective")
        if self.meta["format"] == "onnx":
            self.run = onnx_runner(self.path, self.meta, threads=threads, batch_size=batch_size)
        else:
            self.run = litert_runner(self.path, self.meta, threads=threads)

    def confidence_threshold(self, tta: bool = False) -> float | None:
        """The confidence below which answers (with or without ``tta``) are marked unreliable, or None."""
        return selective.threshold_for(self.selective, tta)

    def _check_rule(self, rule: str) -> str:
        if rule not in decision.RULES:
            raise UsageError(f"unknown decision rule {rule!r}; choose one of: {', '.join(decision.RULES)}")
        if rule == "clinic" and self.clinic is None:
            raise UsageError(f"{artifact.metadata_path(self.path)} has no clinic prior (its run was not adapted)")
        if rule == "balanced" and self.balanced_rule is None:
            raise UsageError(
                f"{artifact.metadata_path(self.path)} has no balanced decision rule (its run had no "
                f"{decision.DECISION_FILE}): use --decision argmax"
            )
        return rule

    def prepare(self, data: bytes, *, max_pixels: int = MAX_PIXELS) -> np.ndarray:
        """Encoded image bytes -> uint8 [H, W, 3], upright, cropped to the field of view if the run does so
        (raises ``UnreadableImage`` with the reason)."""
        return decode(data, self.image_size, max_pixels=max_pixels, fov_crop=self.fov_crop)

    def normalise(self, images: np.ndarray) -> np.ndarray:
        """uint8 [N, H, W, 3] -> the model's float32 input (NHWC; the runner transposes for NCHW)."""
        return ((np.asarray(images, np.float32) * self._scale - self._mean) / self._std).astype(np.float32)

    def outputs(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """{'logits' [N, C], 'pooled' [N, F], 'hidden' [N, H]} of uint8 images."""
        return self.run(self.normalise(images))

    def logits(self, images: np.ndarray, *, tta: bool = False) -> np.ndarray:
        """[N, C] logits, or [N, 8, C] with ``tta`` (the dihedral views)."""
        if not tta:
            return self.outputs(images)["logits"]
        views = dihedral_views(np.asarray(images))
        per_view = self.outputs(views.reshape(-1, *views.shape[2:]))["logits"]
        return per_view.reshape(len(views), len(images), -1).transpose(1, 0, 2)

    def decide(self, images: np.ndarray, *, tta: bool = False, rule: str | None = None) -> Decision:
        """The classes ``rule`` (default: :attr:`decision`) assigns, as ``Predictor.decide`` does."""
        rule = self._check_rule(rule or self.decision)
        logits = self.logits(images, tta=tta)
        model = calibration.probabilities(logits, self.temperature or 1.0)
        if rule == "clinic":
            assert self.clinic is not None
            raw = np.log(np.maximum(calibration.probabilities(logits, 1.0), 1e-300))
            classes, adjusted = prior_shift.clinic_answer(self.clinic, raw)
            return Decision(rule, classes, adjusted, model)
        fitted = self.balanced_rule if rule == "balanced" else None
        t_fit = float(fitted.info.get("temperature") or 1.0) if fitted is not None else 1.0
        at_fit = model if fitted is None else calibration.probabilities(logits, t_fit)
        return decision.answer(rule, model, at_fit, fitted)

    def class_index(self, name: str) -> int:
        """The index of a class name (UsageError listing the names if unknown)."""
        if name not in self.class_names:
            raise UsageError(f"unknown class {name!r}; this model's classes: {', '.join(self.class_names)}")
        return self.class_names.index(name)

    def screen(self, images: np.ndarray) -> ood_score.Screen | None:
        """The guard's two answers, as :meth:`caco_jax.serving.predictor.Predictor.screen`."""
        if self.guard is None:
            return None
        out = self.outputs(images)
        return self.guard.screen(out["logits"], out[self.guard.layer])


def decision_rule(data: dict[str, Any]) -> decision.DecisionRule:
    """The balanced rule stored in the metadata."""
    try:
        return decision.from_json(data)
    except (KeyError, TypeError, ValueError) as err:
        raise UsageError(f"the metadata's balanced decision rule is damaged ({err}); export the model again") from None
