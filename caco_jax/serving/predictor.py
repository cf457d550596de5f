"""A trained run, ready to classify and explain images: used by ``caco-jax predict`` and the web page.

The one place a decision rule turns probabilities into an answer: ``argmax`` (the most probable
class under the training data's class frequencies) or ``balanced`` (the rule fitted on the
validation split at the end of training and saved as ``decision.json`` beside the weights; it
shifts the log-probabilities per class, trading some accuracy for recall on rare classes).
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence

import jax
import numpy as np

from caco_jax.data.constancy import ColorConstancy
from caco_jax.data.images import MAX_PIXELS, decode
from caco_jax.errors import UsageError
from caco_jax.evaluation import decision, ood_score, prior_shift, selective, side_files
from caco_jax.evaluation.decision import RULE_TEXT, Decision
from caco_jax.runs.loading import load_trained
from caco_jax.training import parallel
from caco_jax.training.steps import ModelDef, build_steps

__all__ = ["RULE_TEXT", "Decision", "Predictor"]  # RULE_TEXT and Decision live in evaluation.decision


class Predictor:
    """Class probabilities (optionally test-time augmented), decisions and Grad-CAM maps of a run's weights.

    Images are uint8 [N, S, S, 3] at the run's input size S (:meth:`prepare` decodes and
    resizes file bytes through the one decoding path, as evaluation does, cropped to the field of view
    where the run's ``data.fov_crop`` says so; the steps apply the run's colour constancy). Batches are padded
    to ``batch_size`` so each step compiles once. The temperature saved with the weights
    (``calibration.json``) divides the logits unless ``calibrate`` is False. ``decision`` is the
    default rule of :meth:`decide` (None: the run's ``evaluation.decision``); 'balanced' needs the
    weights' ``decision.json``.
    """

    def __init__(
        self,
        workdir: str | pathlib.Path,
        weights: str | pathlib.Path | None = None,
        *,
        calibrate: bool = True,
        batch_size: int = 32,
        decision: str | None = None,
    ):
        config, model, meta, self.weights_dir = load_trained(workdir, weights)
        self.class_names: tuple[str, ...] = tuple(meta["class_names"])
        self.image_size: int = int(config.data.image_size)
        # How the run treats every image (runs saved before these options had neither).
        self.color = ColorConstancy.from_config(config.data)
        self.fov_crop = bool(config.data.get("fov_crop", False))
        # The files fitted beside the weights, verified (a damaged one: its feature off, one warning line).
        self.temperature: float | None = side_files.temperature(self.weights_dir) if calibrate else None
        self.balanced_rule = side_files.rule(self.weights_dir)
        self.clinic = _clinic_rule(self.weights_dir)  # an adapted run's prior (caco-jax adapt), else None
        self.decision = self._check_rule(decision or self._default_rule(config.evaluation.decision))
        self.batch_size = batch_size
        model_def = ModelDef(model)
        self.mesh = parallel.make_mesh(1)
        self.steps = build_steps(model_def, self.mesh, color=self.color)
        self._params, self._stats = jax.device_put(
            (model_def.init_params, model_def.init_batch_stats), parallel.replicated(self.mesh)
        )
        # Runs trained before these existed have neither: no guard, no reliability threshold.
        self.guard: ood_score.Guard | None = side_files.guard(self.weights_dir)
        self.selective: dict | None = side_files.threshold(self.weights_dir)

    @property
    def rules(self) -> tuple[str, ...]:
        """The decision rules these weights support."""
        have = {"argmax": True, "balanced": self.balanced_rule is not None, "clinic": self.clinic is not None}
        return tuple(rule for rule in decision.RULES if have[rule])

    def _default_rule(self, rule: str) -> str:
        """The run's rule, or argmax where its file is there but damaged (its warning line said so)."""
        name = {"balanced": decision.DECISION_FILE, "clinic": decision.CLINIC_FILE}.get(rule)
        have = {"balanced": self.balanced_rule, "clinic": self.clinic}.get(rule)
        return "argmax" if name is not None and have is None and (self.weights_dir / name).is_file() else rule

    def _check_rule(self, rule: str) -> str:
        if rule not in decision.RULES:
            raise UsageError(f"unknown decision rule {rule!r}; choose one of: {', '.join(decision.RULES)}")
        if rule == "clinic" and self.clinic is None:
            raise UsageError(
                f"the clinic rule needs {self.weights_dir / decision.CLINIC_FILE}: it belongs to a run adapted to a "
                "clinic's images (caco-jax adapt --workdir RUN --images FOLDER --out NEW_RUN)"
            )
        if rule == "balanced" and self.balanced_rule is None:
            raise UsageError(
                f"the balanced decision rule needs {self.weights_dir / decision.DECISION_FILE}, which these weights "
                "lack: it is fitted on the validation split at the end of training by this version of caco-jax "
                "(train the run again, or rerun its training command to finish it), or use --decision argmax"
            )
        return rule

    @property
    def _t(self) -> np.float32:
        return np.float32(self.temperature or 1.0)

    def prepare(self, data: bytes, *, max_pixels: int = MAX_PIXELS) -> np.ndarray:
        """Encoded image bytes -> uint8 [S, S, 3], upright, cropped to the field of view if the run does so
        (raises ``UnreadableImage`` with the reason)."""
        return decode(data, (self.image_size, self.image_size), max_pixels=max_pixels, fov_crop=self.fov_crop)

    def _chunks(self, images: np.ndarray):
        images = np.asarray(images, np.uint8)
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            padded = np.zeros((self.batch_size, *images.shape[1:]), np.uint8)
            padded[: len(chunk)] = chunk
            yield start, len(chunk), padded

    def probabilities(self, images: np.ndarray, *, tta: bool = False, temperature: float | None = None) -> np.ndarray:
        """float [N, C] softmax(logits / T) (T: ``temperature``, else the saved one, else 1); with ``tta``
        the mean over the 8 dihedral views."""
        step = self.steps.predict_tta if tta else self.steps.predict
        t = self._t if temperature is None else np.float32(temperature)
        out = [np.asarray(step(self._params, self._stats, padded, t))[:n] for _, n, padded in self._chunks(images)]
        return np.concatenate(out) if out else np.zeros((0, len(self.class_names)))

    def confidence_threshold(self, tta: bool = False) -> float | None:
        """The confidence below which answers (with or without ``tta``) are marked unreliable, or None."""
        return selective.threshold_for(self.selective, tta)

    def embed(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """{'logits' [N, C], 'pooled' [N, F], 'hidden' [N, H]} of the plain images (what the guard scores)."""
        assert self.steps.embed is not None
        parts: dict[str, list[np.ndarray]] = {"logits": [], "pooled": [], "hidden": []}
        for _, n, padded in self._chunks(images):
            batch = {"image": padded, "label": np.zeros(len(padded), np.int32), "mask": np.ones(len(padded), bool)}
            out = self.steps.embed(self._params, self._stats, batch)
            for key in parts:
                parts[key].append(np.asarray(out[key])[:n])
        return {k: np.concatenate(v) if v else np.zeros((0, 0), np.float32) for k, v in parts.items()}

    def screen(self, images: np.ndarray) -> ood_score.Screen | None:
        """The guard's two answers (not dermoscopy; dermoscopy unlike the training images), or None when
        the run has no guard."""
        if self.guard is None:
            return None
        out = self.embed(images)
        return self.guard.screen(out["logits"], out[self.guard.layer])

    def decide(self, images: np.ndarray, *, tta: bool = False, rule: str | None = None) -> Decision:
        """The classes ``rule`` (default: :attr:`decision`) assigns to ``images``.

        The balanced rule acts on log softmax(logits / T_fit) at the temperature it was fitted
        with, whether or not the shown probabilities are calibrated; with ``tta`` on the log of
        the views' mean probability (as ``decision.log_scores`` treats [N, V, C] logits)."""
        rule = self._check_rule(rule or self.decision)
        model = self.probabilities(images, tta=tta)
        if rule == "argmax":
            return decision.answer(rule, model, model, None)
        if rule == "clinic":
            assert self.clinic is not None
            raw = np.log(np.maximum(self.probabilities(images, tta=tta, temperature=1.0), 1e-300))
            classes, adjusted = prior_shift.clinic_answer(self.clinic, raw)
            return decision.Decision(rule, classes, adjusted, model)
        fitted = self.balanced_rule
        assert fitted is not None  # _check_rule accepts 'balanced' only when there is one
        t_fit = float(fitted.info.get("temperature") or 1.0)
        at_fit = model if np.isclose(t_fit, float(self._t)) else self.probabilities(images, tta=tta, temperature=t_fit)
        return decision.answer(rule, model, at_fit, fitted)

    def explain(
        self, images: np.ndarray, target: Sequence[int] | np.ndarray | int | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(probabilities [N, C] of the plain image, explained class [N], Grad-CAM [N, S, S] in [0, 1]).

        ``target``: the class to explain (an index, one per image, or None for the most probable one)."""
        n_images = len(images)
        if target is None:
            target = -1
        targets = np.broadcast_to(np.asarray(target, np.int32), (n_images,))
        probs, classes, cams = [], [], []
        for start, n, padded in self._chunks(images):
            t = np.full((self.batch_size,), -1, np.int32)
            t[:n] = targets[start : start + n]
            out = self.steps.cam(self._params, self._stats, padded, t, self._t)
            probs.append(np.asarray(out["probs"])[:n])
            classes.append(np.asarray(out["class"])[:n])
            cams.append(np.asarray(out["cam"])[:n])
        if not probs:
            s = self.image_size
            return np.zeros((0, len(self.class_names))), np.zeros((0,), np.int32), np.zeros((0, s, s), np.float32)
        return np.concatenate(probs), np.concatenate(classes), np.concatenate(cams)

    def class_index(self, name: str) -> int:
        """The index of a class name (UsageError listing the names if unknown)."""
        try:
            return self.class_names.index(name)
        except ValueError:
            raise UsageError(f"unknown class {name!r}; this run's classes: {', '.join(self.class_names)}") from None


def _clinic_rule(
    weights_dir: pathlib.Path,
) -> tuple[prior_shift.BiasTemperature, prior_shift.PriorEstimate] | None:
    prior = side_files.clinic(weights_dir)
    return None if prior is None else prior_shift.clinic_rule(prior)
