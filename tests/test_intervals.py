"""Lesion-level bootstrap intervals and paired comparisons, against scikit-learn on explicit resamples."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from caco_jax.evaluation import intervals, reported

CLASSES = ("a", "b", "c")


def _data(n=120, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.choice(3, size=n, p=[0.6, 0.3, 0.1])
    logits = rng.normal(size=(n, 3)) + 1.5 * np.eye(3)[labels]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    lesions = np.asarray([f"L{i // 2}" for i in range(n)])  # two images per lesion
    return probs, labels, lesions


def test_metric_samples_match_sklearn_with_resample_weights():
    probs, labels, lesions = _data()
    weights = intervals.lesion_weights(lesions, num_resamples=5, seed=3)
    samples = intervals.metric_samples(probs, labels, weights)
    pred = probs.argmax(1)
    for r in range(5):
        w = weights[r]
        keep = w > 0
        assert samples["accuracy"][r] == pytest.approx(np.average(pred == labels, weights=w))
        present = [k for k in range(3) if np.any(labels[keep] == k)]
        if len(present) == 3:
            assert samples["bacc"][r] == pytest.approx(
                balanced_accuracy_score(labels[keep], pred[keep], sample_weight=w[keep])
            )
            aucs = [roc_auc_score(labels[keep] == k, probs[keep, k], sample_weight=w[keep]) for k in range(3)]
            assert samples["macro_auc"][r] == pytest.approx(np.mean(aucs))


def test_auc_counts_ties_as_half():
    scores = np.asarray([0.1, 0.5, 0.5, 0.9])
    positive = np.asarray([False, True, False, True])
    auc = reported.weighted_auc(scores, positive, np.ones((1, 4)))[0]
    assert auc == pytest.approx(roc_auc_score(positive, scores))


def test_lesion_bootstrap_ignores_duplicated_photographs():
    """Copying every image of a lesion does not narrow a lesion-level interval; an image-level one narrows."""
    probs, labels, lesions = _data()
    base = intervals.bootstrap(probs, labels, lesions, CLASSES, num_resamples=400, seed=1)
    rep = np.repeat(np.arange(len(labels)), 3)
    tripled = intervals.bootstrap(probs[rep], labels[rep], lesions[rep], CLASSES, num_resamples=400, seed=1)
    assert tripled["bacc"] == pytest.approx(base["bacc"])
    assert tripled["accuracy"] == pytest.approx(base["accuracy"])
    per_image = intervals.bootstrap(
        probs[rep], labels[rep], [str(i) for i in range(len(rep))], CLASSES, num_resamples=400, seed=1
    )

    def width(iv):
        return iv[1] - iv[0]

    assert width(per_image["accuracy"]) < 0.75 * width(base["accuracy"])
    assert base["method"]["num_units"] == len(set(lesions))


def test_interval_covers_the_point_estimate_and_has_sensible_width():
    probs, labels, lesions = _data(n=400)
    out = intervals.bootstrap(probs, labels, lesions, CLASSES, num_resamples=1000)
    acc = np.mean(probs.argmax(1) == labels)
    lo, hi = out["accuracy"]
    assert lo < acc < hi
    # binomial standard error with 200 independent lesion pairs: about +-1.96 * sqrt(p(1-p)/200)
    assert 0.5 < (hi - lo) / (2 * 1.96 * np.sqrt(acc * (1 - acc) / 200)) < 1.6
    assert set(out["recall"]) == set(CLASSES)


def test_paired_difference_of_a_run_with_itself_is_zero_and_detects_a_better_run():
    probs, labels, lesions = _data(n=300)
    run = {"probs": probs, "labels": labels}
    same = intervals.paired(run, run, lesions, num_resamples=300)
    assert same["bacc"]["difference"] == 0 and same["bacc"]["interval"] == (0.0, 0.0)
    better = probs + 0.8 * np.eye(3)[labels]  # more mass on the true class
    out = intervals.paired({"probs": better, "labels": labels}, run, lesions, num_resamples=300)
    assert out["accuracy"]["difference"] > 0 and out["accuracy"]["interval"][0] > 0
    assert out["accuracy"]["share_above_zero"] == 1.0


def test_align_refuses_different_images():
    with pytest.raises(ValueError, match="not on the same images"):
        intervals.align(["a", "b"], ["a", "c"])
    assert intervals.align(["b", "a"], ["a", "b"]).tolist() == [1, 0]


def test_images_without_a_lesion_id_are_lesions_of_their_own():
    weights = intervals.lesion_weights(["", "", "L1", "L1"], num_resamples=200, seed=0)
    assert np.array_equal(weights[:, 2], weights[:, 3])  # one lesion: drawn together
    assert not np.array_equal(weights[:, 0], weights[:, 1])  # no lesion id: drawn on their own


def test_images_without_a_lesion_id_are_units_of_their_own():
    probs, labels, lesions = _data(n=60)
    groups = np.asarray(lesions, dtype=object)
    groups[:20] = ""  # e.g. an external test set: no lesion ids
    out = intervals.bootstrap(probs, labels, groups.astype(str), CLASSES, num_resamples=50)
    assert out["method"]["num_units"] == 20 + len(set(groups[20:]))


def test_a_declared_metric_reaches_the_intervals_and_the_paired_comparison(monkeypatch):
    """One Metric added to reported.REPORTED is computed, bootstrapped and compared with no other edit."""
    share_nv = reported.Metric(
        "share_nv", "share called nv", lambda x: (x.weights * (x.predicted == 1)).sum(1) / x.weights.sum(1)
    )
    monkeypatch.setattr(reported, "REPORTED", (*reported.REPORTED, share_nv))
    monkeypatch.setattr(reported, "NAMES", (*reported.NAMES, "share_nv"))
    probs, labels, lesions = _data(n=120)
    out = intervals.bootstrap(probs, labels, lesions, CLASSES, num_resamples=50)
    lo, hi = out["share_nv"]
    assert lo <= np.mean(probs.argmax(1) == 1) <= hi
    a = {"probs": probs, "labels": labels}
    diff = intervals.paired(a, a, lesions, num_resamples=20)
    assert diff["share_nv"]["difference"] == 0.0
