"""Adapting a run to a new clinic: the EM prior against a known mixture, the bias-corrected temperature
against known posteriors."""

from __future__ import annotations

import numpy as np
import pytest

from caco_jax.evaluation import prior_shift

MEANS = np.array([[0.0, 0.0], [2.0, 0.5], [0.5, 2.5]])


def _mixture(pi: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Points of three unit-variance Gaussian classes drawn with prior ``pi``, and their labels."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(len(pi), size=n, p=pi)
    return MEANS[labels] + rng.standard_normal((n, 2)), labels


def _log_posteriors(x: np.ndarray, pi: np.ndarray) -> np.ndarray:
    """The exact log p(y | x) under prior ``pi`` (the classes' Gaussian densities, written out here)."""
    log_lik = -0.5 * ((x[:, None, :] - MEANS[None]) ** 2).sum(-1)
    z = log_lik + np.log(pi)
    return z - np.logaddexp.reduce(z, axis=1, keepdims=True)


def test_em_recovers_a_known_target_prior():
    pi_s, pi_t = np.array([0.6, 0.3, 0.1]), np.array([0.2, 0.3, 0.5])
    x, labels = _mixture(pi_t, 20000, seed=0)
    found = prior_shift.estimate_prior(_log_posteriors(x, pi_s), pi_s)
    assert found.converged
    assert np.asarray(found.prior) == pytest.approx(np.bincount(labels) / len(labels), abs=0.015)
    # the adjusted posteriors are the exact posteriors under the target prior
    adjusted = prior_shift.adjusted_probabilities(_log_posteriors(x, pi_s), found)
    assert adjusted == pytest.approx(np.exp(_log_posteriors(x, np.asarray(found.prior))), abs=1e-9)


def test_em_keeps_the_prior_of_images_drawn_like_the_source():
    pi_s = np.array([0.6, 0.3, 0.1])
    x, _ = _mixture(pi_s, 20000, seed=1)
    found = prior_shift.estimate_prior(_log_posteriors(x, pi_s), pi_s)
    assert np.asarray(found.prior) == pytest.approx(pi_s, abs=0.015)
    assert np.abs(found.log_ratio).max() < 0.1


def test_the_bias_corrected_temperature_recovers_calibrated_posteriors():
    pi_s = np.array([0.6, 0.3, 0.1])
    x, labels = _mixture(pi_s, 20000, seed=2)
    exact = _log_posteriors(x, pi_s)
    logits = 2.5 * (exact + np.array([0.0, -1.0, 0.7]))  # overconfident and biased, as a trained net might be
    fitted = prior_shift.fit_bias_temperature(logits, labels, 3)
    assert fitted.temperature == pytest.approx(2.5, rel=0.05)
    assert np.asarray(fitted.prior) == pytest.approx(np.bincount(labels) / len(labels))
    assert np.exp(fitted.log_posteriors(logits)) == pytest.approx(np.exp(exact), abs=0.03)


def test_biases_need_every_class():
    with pytest.raises(ValueError, match="every class needs images"):
        prior_shift.fit_bias_temperature(np.zeros((4, 3)), np.array([0, 1, 1, 0]), 3)


@pytest.fixture(scope="module")
def tiny_weights():
    from caco_jax.adaptation import batchnorm
    from caco_jax.models import create_model
    from caco_jax.runs.weights import model_weights

    config = {"arch": "tiny", "attention": "caco"}
    flat = model_weights(create_model(num_classes=7, seed=0, **config))
    return batchnorm.StatsPass(config, 7), flat


def _stem_statistics(images: np.ndarray, kernel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The stem convolution (3x3, stride 2, padding 1, no bias) of the normalised images, written in numpy,
    and its per-channel mean and population variance over images and pixels."""
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    x = (images / 255.0 - mean) / std
    x = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    out_h, out_w = (images.shape[1] - 1) // 2 + 1, (images.shape[2] - 1) // 2 + 1
    y = np.zeros((len(images), out_h, out_w, kernel.shape[-1]))
    for dy in range(3):
        for dx in range(3):
            patch = x[:, dy : dy + 2 * out_h : 2, dx : dx + 2 * out_w : 2, :]
            y += np.einsum("nhwc,co->nhwo", patch, kernel[dy, dx])
    return y.mean(axis=(0, 1, 2)), y.var(axis=(0, 1, 2))


def test_adabn_statistics_are_the_target_images_own(tiny_weights):
    from caco_jax.adaptation import batchnorm

    stats_pass, flat = tiny_weights
    images = np.random.default_rng(3).integers(0, 256, size=(6, 32, 32, 3), dtype=np.uint8)
    adapted, info = batchnorm.reestimate(stats_pass, flat, batchnorm.iterate_batches(images, 4))  # 4 + 2 images
    mean, var = _stem_statistics(images.astype(np.float64), np.asarray(flat["stem/conv/kernel"], np.float64))
    assert adapted["stem/bn/mean"] == pytest.approx(mean, rel=1e-4, abs=1e-5)
    assert adapted["stem/bn/var"] == pytest.approx(var, rel=2e-3)  # batches' unbiased variances, pooled
    assert info["images"] == 6 and info["layers"] == info["of_layers"]
    assert all(np.array_equal(adapted[k], flat[k]) for k in flat if not k.endswith(("/mean", "/var")))


def test_adabn_depth_and_alpha_limit_what_changes(tiny_weights):
    from caco_jax.adaptation import batchnorm

    stats_pass, flat = tiny_weights
    images = np.random.default_rng(4).integers(0, 256, size=(4, 32, 32, 3), dtype=np.uint8)
    full, _ = batchnorm.reestimate(stats_pass, flat, [images])
    stem_only, info = batchnorm.reestimate(stats_pass, flat, [images], depth=0, alpha=0.25)
    assert info["layers"] == 1
    assert stem_only["stem/bn/mean"] == pytest.approx(0.75 * flat["stem/bn/mean"] + 0.25 * full["stem/bn/mean"])
    assert np.array_equal(stem_only["blocks/0/project/bn/mean"], flat["blocks/0/project/bn/mean"])
    with pytest.raises(ValueError, match="alpha"):
        batchnorm.reestimate(stats_pass, flat, [images], alpha=1.5)
