"""Balanced decision rules: Bayes' rule under a uniform prior, fitting on validation, saving."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score

from caco_jax.evaluation import decision

PRIOR = np.asarray([0.7, 0.2, 0.1])
MEANS = np.asarray([[0.0, 0.0], [1.2, 0.0], [0.0, 1.2]])


def _sample(n, seed):
    """Three Gaussian classes (unit variance) with the imbalanced PRIOR; logits = exact log posteriors."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(3, size=n, p=PRIOR)
    x = MEANS[labels] + rng.normal(size=(n, 2))
    loglik = -0.5 * ((x[:, None, :] - MEANS[None]) ** 2).sum(-1)
    return loglik + np.log(PRIOR), labels, loglik


def test_logit_adjustment_with_tau_one_is_bayes_rule_for_a_uniform_prior():
    logits, _, loglik = _sample(500, 0)
    rule = decision.DecisionRule("logit_adjustment", tuple(-np.log(PRIOR)), tau=1.0)
    assert np.array_equal(rule.predict(logits), loglik.argmax(1))


def test_fitted_rule_raises_balanced_accuracy_on_held_out_data():
    val_logits, val_labels, _ = _sample(3000, 1)
    test_logits, test_labels, loglik = _sample(3000, 2)
    rule = decision.fit(val_logits, val_labels, PRIOR)
    assert 0.5 <= rule.tau <= 1.5  # the optimum for exact posteriors is near 1
    plain = balanced_accuracy_score(test_labels, test_logits.argmax(1))
    balanced = balanced_accuracy_score(test_labels, rule.predict(test_logits))
    assert balanced > plain + 0.05
    assert rule.info["val_bacc"]["balanced"] >= rule.info["val_bacc"]["argmax"]
    offsets = decision.fit(val_logits, val_labels, PRIOR, how="offsets")
    assert offsets.info["val_bacc"]["balanced"] >= rule.info["val_bacc"]["balanced"] - 1e-12


def test_balanced_accuracy_matches_sklearn():
    rng = np.random.default_rng(0)
    y, p = rng.integers(0, 4, 200), rng.integers(0, 4, 200)
    assert decision.balanced_accuracy(p, y, 4) == pytest.approx(balanced_accuracy_score(y, p))


def test_tta_views_are_averaged_as_probabilities_and_temperature_divides():
    rng = np.random.default_rng(0)
    views = rng.normal(size=(5, 8, 3))
    probs = np.exp(views) / np.exp(views).sum(-1, keepdims=True)
    assert np.allclose(np.exp(decision.log_scores(views)), probs.mean(1))
    z = rng.normal(size=(5, 3))
    assert np.allclose(decision.log_scores(z, 2.0), decision.log_scores(z / 2.0))


def test_save_load_round_trip_and_damaged_file(tmp_path):
    logits, labels, _ = _sample(500, 3)
    rule = decision.fit(logits, labels, PRIOR, temperature=1.3)
    decision.save(tmp_path, rule)
    back = decision.load(tmp_path)
    assert back == rule and back.info["temperature"] == 1.3
    assert np.allclose(back.balanced_probabilities(logits, 1.3).sum(1), 1)
    assert decision.load(tmp_path / "nowhere") is None
    (tmp_path / decision.DECISION_FILE).write_text(json.dumps({"offsets": [1]}))
    with pytest.raises(ValueError, match="decision.json is not a decision rule"):
        decision.load(tmp_path)
    with pytest.raises(ValueError, match="unknown decision fit"):
        decision.fit(logits, labels, PRIOR, how="magic")
