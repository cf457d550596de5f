"""Calibration (caco_jax.evaluation.calibration): ECE, reliability bins, temperature fitting, files, the diagram."""

from __future__ import annotations

import numpy as np
import pytest

from caco_jax.evaluation import calibration, plots


def _probs(confidence: np.ndarray, predicted: np.ndarray, num_classes: int = 3) -> np.ndarray:
    """Probability rows with the given top-1 confidence on the given class, the rest spread evenly."""
    p = np.repeat(((1 - confidence) / (num_classes - 1))[:, None], num_classes, axis=1)
    p[np.arange(len(p)), predicted] = confidence
    return p


def test_ece_of_hand_made_cases():
    labels = np.zeros(10, np.int64)
    assert calibration.expected_calibration_error(_probs(np.ones(10), labels), labels) == 0.0
    # Confidence 0.8 everywhere, half of the predictions right: |0.5 - 0.8| = 0.3.
    predicted = np.asarray([0] * 5 + [1] * 5)
    assert calibration.expected_calibration_error(_probs(np.full(10, 0.8), predicted), labels) == pytest.approx(0.3)
    # Two bins: 4 examples at 0.95 all right (gap 0.05), 6 at 0.55 with 3 right (gap 0.05).
    conf = np.asarray([0.95] * 4 + [0.55] * 6)
    predicted = np.asarray([0] * 4 + [0, 0, 0, 1, 1, 1])
    assert calibration.expected_calibration_error(_probs(conf, predicted), labels) == pytest.approx(0.05)


def test_reliability_bins_are_15_equal_width_with_1_in_the_last():
    labels = np.zeros(4, np.int64)
    bins = calibration.reliability_bins(_probs(np.asarray([1.0, 0.999, 0.4, 1 / 15]), np.zeros(4, int), 15), labels)
    assert len(bins) == 15 and bins[0]["lo"] == 0.0 and bins[-1]["hi"] == 1.0
    assert bins[-1]["count"] == 2 and bins[-1]["accuracy"] == 1.0
    assert bins[6]["count"] == 1  # 0.4 lies in [6/15, 7/15)
    assert bins[1]["count"] == 1  # 1/15 opens bin 1
    assert bins[3]["count"] == 0 and bins[3]["accuracy"] is None
    assert sum(b["count"] for b in bins) == 4


def test_fit_temperature_recovers_the_temperature_that_made_the_labels():
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 2.0, (20000, 7))
    p = np.exp(true_logits - true_logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    labels = (p.cumsum(1) > rng.random((len(p), 1))).argmax(1)
    overconfident = true_logits * 2.5  # a model 2.5 x too sure of itself
    t = calibration.fit_temperature(overconfident, labels)
    assert t == pytest.approx(2.5, rel=0.05)
    best = calibration.nll(overconfident, labels, t)
    for other in (1.0, 0.95 * t, 1.05 * t):
        assert best <= calibration.nll(overconfident, labels, other)
    before = calibration.expected_calibration_error(calibration.probabilities(overconfident), labels)
    after = calibration.expected_calibration_error(calibration.probabilities(overconfident, t), labels)
    assert after < 0.02 < before


def test_fit_temperature_at_the_ends_and_on_bad_input():
    labels = np.arange(6) % 3
    perfect = np.eye(3)[labels] * 10.0  # always right: sharper is always better
    assert calibration.fit_temperature(perfect, labels) == calibration.T_RANGE[0]
    wrong = np.eye(3)[(labels + 1) % 3] * 10.0  # always wrong: flatter is always better
    assert calibration.fit_temperature(wrong, labels) == calibration.T_RANGE[1]
    with pytest.raises(ValueError, match="logits"):
        calibration.fit_temperature(np.zeros((4, 3)), np.zeros(5, int))


def test_probabilities_average_views_after_the_temperature():
    z = np.asarray([[[2.0, 0.0], [0.0, 2.0]]])  # one image, two views that disagree
    p = calibration.probabilities(z, 2.0)
    one = calibration.probabilities(z[:, 0], 2.0)
    assert p.shape == (1, 2) and p[0] == pytest.approx([0.5, 0.5])
    assert one[0, 0] == pytest.approx(1 / (1 + np.exp(-1.0)))


def test_save_and_load(tmp_path):
    assert calibration.load(tmp_path) is None
    calibration.save(tmp_path, 1.7, fitted_on="validation")
    assert calibration.load(tmp_path) == 1.7
    (tmp_path / calibration.CALIBRATION_FILE).write_text('{"temperature": -1}')
    with pytest.raises(ValueError, match="positive"):
        calibration.load(tmp_path)


def test_summary_and_reliability_diagram(tmp_path):
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 3, (300, 4))
    labels = rng.integers(0, 4, 300)
    summary = calibration.summary(logits, labels, 3.0)
    assert summary["calibrated"]["ece"] < summary["uncalibrated"]["ece"]  # random labels: flatter is better
    path = plots.plot_reliability(summary, tmp_path / "rel.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    no_t = calibration.summary(logits, labels, None)
    assert no_t["calibrated"] is None
    assert plots.plot_reliability(no_t, tmp_path / "rel1.png").is_file()
