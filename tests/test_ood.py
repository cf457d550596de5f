"""The out-of-distribution guard's scores against independent computations (SciPy, scikit-learn), its
threshold, and its files."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.spatial.distance import mahalanobis
from scipy.special import logsumexp
from sklearn.neighbors import NearestNeighbors

from caco_jax.evaluation import ood_score


def _data(seed: int = 0, n: int = 300, f: int = 12, c: int = 3):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, c, n)
    centres = 3.0 * rng.normal(size=(c, f))
    features = centres[labels] + rng.normal(size=(n, f)) @ rng.normal(size=(f, f)) * 0.5
    logits = features[:, :c] + rng.normal(size=(n, c))
    return {"logits": logits, "pooled": features, "hidden": features[:, ::-1].copy(), "labels": labels}


def test_logit_scores_are_the_published_formulas():
    d = _data()
    np.testing.assert_allclose(ood_score.score("max_logit", {}, d["logits"], None), -d["logits"].max(1))
    np.testing.assert_allclose(ood_score.score("energy", {}, d["logits"], None), -logsumexp(d["logits"], axis=1))


def test_mahalanobis_is_the_smallest_class_distance_under_the_shared_covariance():
    train, test = _data(0), _data(1, n=20)
    arrays = ood_score.fit_arrays("mahalanobis", train["pooled"], train["labels"], 3)
    got = ood_score.score("mahalanobis", arrays, test["logits"], test["pooled"])
    f, y = train["pooled"], train["labels"]
    means = np.stack([f[y == k].mean(0) for k in range(3)])
    cov = sum(np.cov(f[y == k].T, bias=True) * np.sum(y == k) for k in range(3)) / (len(f) - 3)
    inv = np.linalg.inv(cov + 1e-6 * np.trace(cov) / len(cov) * np.eye(len(cov)))
    want = [min(mahalanobis(x, m, inv) ** 2 for m in means) for x in test["pooled"]]
    np.testing.assert_allclose(got, want, rtol=2e-4)  # the guard stores float32 arrays


def test_knn_is_the_distance_to_the_kth_nearest_normalised_training_image():
    train, test = _data(0), _data(2, n=25)
    arrays = ood_score.fit_arrays("knn", train["pooled"], train["labels"], 3)
    got = ood_score.score("knn", arrays, test["logits"], test["pooled"])
    bank = train["pooled"] / np.linalg.norm(train["pooled"], axis=1, keepdims=True)  # n < KNN_BANK: all kept
    query = test["pooled"] / np.linalg.norm(test["pooled"], axis=1, keepdims=True)
    dist, _ = NearestNeighbors(n_neighbors=ood_score.KNN_K).fit(bank).kneighbors(query)
    np.testing.assert_allclose(got, dist[:, -1], atol=1e-5)  # the bank is float32


@pytest.mark.parametrize("method", ood_score.METHODS)
def test_the_threshold_lets_the_validation_share_through_and_flags_far_images(method, tmp_path):
    train, val = _data(0), _data(3)
    guard = ood_score.fit(method, "pooled", train, val, 3)
    _, flagged = guard.unlike(val["logits"], val["pooled"])
    assert flagged.mean() == pytest.approx(1 - ood_score.KEEP, abs=1 / len(flagged))
    # far: tiny logits and, for the feature methods, a direction no training image has (knn ignores length)
    direction = np.linalg.svd(train["pooled"] - train["pooled"].mean(0))[2][-1]
    far = {"logits": np.full((5, 3), -8.0), "pooled": 40.0 * np.tile(direction, (5, 1)) - 4 * train["pooled"].mean(0)}
    assert guard.unlike(far["logits"], far["pooled"])[1].all()
    ood_score.save(tmp_path, guard)
    again = ood_score.load(tmp_path)
    assert again is not None and (again.method, again.layer) == (method, "pooled")
    np.testing.assert_allclose(again.score(val["logits"], val["pooled"]), guard.score(val["logits"], val["pooled"]))
    assert json.loads((tmp_path / "ood.json").read_text())["threshold"] == pytest.approx(guard.threshold)


def test_a_run_without_a_guard_and_a_guard_without_its_arrays(tmp_path):
    assert ood_score.load(tmp_path) is None
    (tmp_path / "ood.json").write_text(json.dumps({"method": "knn", "layer": "pooled", "threshold": 1.0}))
    with pytest.raises(FileNotFoundError, match="ood.npz is missing: the knn guard"):
        ood_score.load(tmp_path)
    with pytest.raises(ValueError, match="needs the features"):
        ood_score.score("knn", {}, np.zeros((1, 3)), None)


def test_the_far_part_separates_nonsense_from_dermoscopy_taken_elsewhere(tmp_path):
    """Features of training images (one cluster per class) and of their shifted copies (moved along a few
    directions) fit the far Gaussian; shifted images then count as dermoscopy unlike the training images,
    points far from both as not dermoscopy, never both; the far score is scipy's Mahalanobis distance."""
    rng = np.random.default_rng(0)
    means = rng.normal(0, 3, (3, 8))
    labels = rng.integers(0, 3, 600)
    train = means[labels] + rng.normal(0, 1, (600, 8))
    shift = np.zeros(8)
    shift[:2] = 6.0
    shifted_train = train + shift + rng.normal(0, 1, (600, 8))
    val_labels = rng.integers(0, 3, 300)
    validation = means[val_labels] + rng.normal(0, 1, (300, 8))
    shifted_val = means[val_labels] + shift + rng.normal(0, 1.4, (300, 8))
    logits = np.zeros((300, 3))
    guard = ood_score.fit("mahalanobis", "pooled", {"logits": np.zeros((600, 3)), "pooled": train, "labels": labels},
                          {"logits": logits, "pooled": validation}, 3)  # fmt: skip
    guard = ood_score.with_far_part(guard, np.concatenate([train, shifted_train]), shifted_val)
    both = np.concatenate([train, shifted_train])
    cov = np.cov(both.T)
    cov += 1e-6 * np.trace(cov) / 8 * np.eye(8)
    point = rng.normal(0, 1, 8)
    expected = mahalanobis(point, both.mean(0), np.linalg.inv(cov)) ** 2
    assert guard.far_score(point[None])[0] == pytest.approx(expected, rel=1e-4)
    elsewhere = means[rng.integers(0, 3, 200)] + shift + rng.normal(0, 1, (200, 8))
    nonsense = rng.normal(0, 1, (200, 8)) + 25.0
    s_else = guard.screen(np.zeros((200, 3)), elsewhere)
    s_far = guard.screen(np.zeros((200, 3)), nonsense)
    assert s_else.unlike_training.mean() > 0.9 and s_else.not_dermoscopy.mean() < 0.05
    assert s_far.not_dermoscopy.all() and not s_far.unlike_training.any()
    ood_score.save(tmp_path, guard)
    again = ood_score.load(tmp_path)
    assert again.far_threshold == pytest.approx(guard.far_threshold)
    np.testing.assert_array_equal(again.screen(np.zeros((200, 3)), nonsense).not_dermoscopy, s_far.not_dermoscopy)
