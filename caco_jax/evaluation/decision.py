"""Decision rules: from (calibrated) logits to a predicted class.

``argmax`` predicts the most probable class under the training prior, which on
HAM10000 (nv 67 %, df 1 %) trades minority-class recall for accuracy. The balanced
rules add a per-class offset to the log-probabilities before the argmax, fitted on
the validation split to maximise balanced accuracy (mean recall):

* ``logit_adjustment``: offsets ``-tau * log(prior)`` with one parameter tau (Menon et
  al., 2021: tau = 1 is Bayes' rule for a uniform prior); tau is the centre of the
  widest best plateau of validation BACC over a grid.
* ``offsets``: one free offset per class (coordinate ascent from the logit-adjustment
  solution over a grid). More freedom, so more prone to fit the validation split's
  few dermatofibromas; the reproduction tables compare both on the test split.

A fitted rule is saved as ``decision.json`` beside the weights and the temperature.
The offsets act on ``logits / T``; ``balanced_probabilities`` is the softmax of the
shifted values: class probabilities under the prior the rule assumes.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from caco_jax import files
from caco_jax.evaluation import calibration

DECISION_FILE = "decision.json"
RULES = ("argmax", "balanced", "clinic")  # the plain argmax, the fitted balanced rule, an adapted run's clinic prior
FITS = ("logit_adjustment", "offsets")
RULE_TEXT = {
    "argmax": "argmax: the most probable class under the training data's class frequencies",
    "balanced": "balanced: the rule fitted on the validation split for equal recall across classes "
    "(probabilities re-weighted to the prior it assumes)",
    "clinic": "clinic: the most probable class under the class mix estimated on the clinic's images "
    "(an adapted run: caco-jax adapt)",
}
CLINIC_FILE = "clinic.json"  # beside an adapted run's weights: the clinic's prior (caco_jax.adaptation.run)
TAU_GRID = np.round(np.arange(0.0, 2.0001, 0.05), 4)
OFFSET_GRID = np.round(np.arange(-3.0, 3.0001, 0.1), 4)


def balanced_accuracy(predictions: np.ndarray, labels: np.ndarray, num_classes: int) -> float:
    """Mean recall over the classes present in ``labels``."""
    recalls = [np.mean(predictions[labels == k] == k) for k in range(num_classes) if np.any(labels == k)]
    return float(np.mean(recalls)) if recalls else float("nan")


def log_scores(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Log-probabilities the rules shift: log softmax(logits / T); for test-time-augmentation views
    [N, V, C], the log of the views' mean probability (``calibration.probabilities``)."""
    return np.log(np.maximum(calibration.probabilities(logits, temperature), 1e-300))


@dataclasses.dataclass(frozen=True)
class DecisionRule:
    """Per-class offsets added to log softmax(logits / T) before the argmax."""

    fit: str
    offsets: tuple[float, ...]
    tau: float | None = None
    prior: tuple[float, ...] | None = None
    info: dict[str, Any] = dataclasses.field(default_factory=dict, compare=False)

    def scores(self, logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
        return log_scores(logits, temperature) + np.asarray(self.offsets)

    def predict(self, logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
        return self.scores(logits, temperature).argmax(axis=-1)

    def balanced_probabilities(self, logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
        s = self.scores(logits, temperature)
        e = np.exp(s - s.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)

    def to_json(self) -> dict[str, Any]:
        return {
            "fit": self.fit,
            "offsets": list(self.offsets),
            "tau": self.tau,
            "prior": None if self.prior is None else list(self.prior),
            **self.info,
        }


@dataclasses.dataclass(frozen=True)
class Decision:
    """A decision rule's answer for a batch: ``classes`` [N]; ``probabilities`` [N, C], what the answer
    is read from (its argmax is ``classes``); ``model_probabilities`` [N, C], softmax(logits / T)
    (with test-time augmentation: the views' mean), the same as ``probabilities`` under argmax."""

    rule: str
    classes: np.ndarray
    probabilities: np.ndarray
    model_probabilities: np.ndarray


def answer(rule: str, model: np.ndarray, at_fit: np.ndarray, fitted: DecisionRule | None) -> Decision:
    """The answer of ``rule`` ('argmax' or 'balanced', whose fitted rule is ``fitted``) for images whose
    shown probabilities are ``model`` (softmax(logits / T)) and whose probabilities at the temperature
    the rule was fitted with are ``at_fit`` (with test-time augmentation: the views' means)."""
    if rule == "argmax":
        return Decision(rule, model.argmax(-1), model, model)
    if fitted is None:
        raise ValueError("the balanced rule needs its fitted offsets (decision.json)")
    # log p at T_fit equals log_scores(logits, T_fit): the rule's own input, up to float32 rounding
    scores = np.log(np.maximum(np.asarray(at_fit, np.float64), 1e-300))
    return Decision(rule, fitted.predict(scores, 1.0), fitted.balanced_probabilities(scores, 1.0), model)


def _plateau_centre(values: np.ndarray, grid: np.ndarray) -> float:
    """The grid point at the centre of the longest run of the best value."""
    best = values.max()
    runs, start = [], None
    for i, v in enumerate(np.append(values, -np.inf)):
        if v >= best - 1e-12 and start is None:
            start = i
        elif v < best - 1e-12 and start is not None:
            runs.append((i - start, start, i - 1))
            start = None
    _, lo, hi = max(runs)
    return float(grid[(lo + hi) // 2])


def fit_logit_adjustment(
    logp: np.ndarray, labels: np.ndarray, prior: Sequence[float] | np.ndarray, grid: np.ndarray = TAU_GRID
) -> DecisionRule:
    """tau maximising validation BACC of argmax(logp - tau * log prior)."""
    prior = np.asarray(prior, np.float64)
    if np.any(prior <= 0):
        raise ValueError(f"the prior must be positive for every class, got {prior.tolist()}")
    log_prior = np.log(prior / prior.sum())
    scores = [balanced_accuracy((logp - t * log_prior).argmax(-1), labels, len(prior)) for t in grid]
    tau = _plateau_centre(np.asarray(scores), grid)
    return DecisionRule(
        "logit_adjustment",
        tuple(float(x) for x in -tau * log_prior),
        tau=tau,
        prior=tuple(float(x) for x in prior / prior.sum()),
    )


def fit_offsets(
    logp: np.ndarray,
    labels: np.ndarray,
    prior: Sequence[float] | np.ndarray,
    *,
    passes: int = 3,
    grid: np.ndarray = OFFSET_GRID,
) -> DecisionRule:
    """Per-class offsets by coordinate ascent on validation BACC, from the logit-adjustment
    solution; each coordinate moves to the centre of its best plateau (relative to class 0's)."""
    start = fit_logit_adjustment(logp, labels, prior)
    offsets = np.asarray(start.offsets) - start.offsets[0]
    num_classes = logp.shape[1]
    for _ in range(passes):
        for k in range(1, num_classes):
            trial = np.repeat(offsets[None], len(grid), axis=0)
            trial[:, k] = grid
            values = np.asarray([balanced_accuracy((logp + t).argmax(-1), labels, num_classes) for t in trial])
            offsets[k] = _plateau_centre(values, grid)
    return DecisionRule("offsets", tuple(float(x) for x in offsets), tau=start.tau, prior=start.prior)


def fit(
    logits: np.ndarray,
    labels: np.ndarray,
    prior: Sequence[float] | np.ndarray,
    *,
    temperature: float = 1.0,
    how: str = "logit_adjustment",
) -> DecisionRule:
    """A balanced rule fitted on (validation) logits, with its validation BACC against argmax in ``info``."""
    if how not in FITS:
        raise ValueError(f"unknown decision fit {how!r}; expected one of {FITS}")
    labels = np.asarray(labels, np.int64)
    logp = log_scores(logits, temperature)
    rule = (fit_logit_adjustment if how == "logit_adjustment" else fit_offsets)(logp, labels, prior)
    num_classes = logp.shape[1]
    info = {
        "fitted_on": "validation",
        "num_examples": int(len(labels)),
        "temperature": temperature,
        "val_bacc": {
            "argmax": balanced_accuracy(logp.argmax(-1), labels, num_classes),
            "balanced": balanced_accuracy(rule.predict(logits, temperature), labels, num_classes),
        },
    }
    return dataclasses.replace(rule, info=info)


def save(directory: str | pathlib.Path, rule: DecisionRule) -> pathlib.Path:
    """Writes ``directory/decision.json`` (atomically: the previous rule or this one, never half)."""
    path = pathlib.Path(directory) / DECISION_FILE
    return files.write_atomic(path, json.dumps(rule.to_json(), indent=2), "the decision rule")


def from_json(data: dict[str, Any]) -> DecisionRule:
    """The rule :meth:`DecisionRule.to_json` wrote (KeyError, TypeError or ValueError if it is not one)."""
    info = {k: v for k, v in data.items() if k not in ("fit", "offsets", "tau", "prior")}
    return DecisionRule(
        data["fit"],
        tuple(float(x) for x in data["offsets"]),
        tau=data.get("tau"),
        prior=None if data.get("prior") is None else tuple(data["prior"]),
        info=info,
    )


def load(directory: str | pathlib.Path) -> DecisionRule | None:
    """The rule saved beside weights in ``directory``, or None when there is none."""
    path = pathlib.Path(directory) / DECISION_FILE
    if not path.is_file():
        return None
    try:
        return from_json(json.loads(path.read_text()))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise ValueError(
            f"{path} is not a decision rule ({err}); delete it or refit it by rerunning "
            "the training command on the finished run"
        ) from err
