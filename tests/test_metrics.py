"""Tests for caco_jax.evaluation.metrics against scikit-learn, with absent classes and padding."""

from __future__ import annotations

import json
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn import metrics as skm

from caco_jax.data.classes import CLASS_NAMES, NUM_CLASSES
from caco_jax.evaluation import metrics

C = NUM_CLASSES


def _random_case(seed, n=200, absent=()):
    """Informative random logits (so AUCs are not ~0.5), labels avoiding `absent`."""
    rng = np.random.default_rng(seed)
    present = [k for k in range(C) if k not in absent]
    labels = rng.choice(present, size=n, p=np.linspace(1, 3, len(present)) / np.linspace(1, 3, len(present)).sum())
    logits = rng.normal(size=(n, C)) * 1.5
    logits[np.arange(n), labels] += rng.uniform(0, 2.5, size=n)
    return logits.astype(np.float32), labels.astype(np.int32)


def _softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _sklearn_reference(logits, labels):
    preds = logits.argmax(1)
    ks = list(range(C))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = {
            "accuracy": skm.accuracy_score(labels, preds),
            "bacc": skm.balanced_accuracy_score(labels, preds),
            "recall": skm.recall_score(labels, preds, labels=ks, average=None, zero_division=np.nan),
            "precision": skm.precision_score(labels, preds, labels=ks, average=None, zero_division=np.nan),
            "f1": skm.f1_score(labels, preds, labels=ks, average=None, zero_division=np.nan),
        }
    mcm = skm.multilabel_confusion_matrix(labels, preds, labels=ks)  # [[tn, fp], [fn, tp]]
    ref["specificity"] = mcm[:, 0, 0] / (mcm[:, 0, 0] + mcm[:, 0, 1])
    probs = _softmax(logits.astype(np.float64))
    ref["auc"] = [skm.roc_auc_score(labels == k, probs[:, k]) if (labels == k).any() else np.nan for k in ks]
    ref["confusion"] = skm.confusion_matrix(labels, preds, labels=ks)
    return ref, probs


def _none_to_nan(values):
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


@pytest.mark.parametrize("seed,absent", [(0, ()), (1, ()), (2, (3,)), (3, (0, 6))])
def test_report_matches_sklearn(seed, absent):
    logits, labels = _random_case(seed, absent=absent)
    ref, probs = _sklearn_reference(logits, labels)
    cm = ref["confusion"]

    rep = metrics.classification_report(cm, probs=probs, labels=labels, class_names=CLASS_NAMES)
    json.dumps(rep, allow_nan=False)  # strictly JSON-serialisable
    assert rep["accuracy"] == pytest.approx(ref["accuracy"], abs=1e-12)
    assert rep["bacc"] == pytest.approx(ref["bacc"], abs=1e-12)
    per = rep["per_class"]
    for key, sk_key in [
        ("sensitivity", "recall"),
        ("precision", "precision"),
        ("f1", "f1"),
        ("specificity", "specificity"),
        ("auc", "auc"),
    ]:
        got = _none_to_nan([per[n][key] for n in CLASS_NAMES])
        np.testing.assert_allclose(got, np.asarray(ref[sk_key], np.float64), atol=1e-12, err_msg=key)
    assert [per[n]["support"] for n in CLASS_NAMES] == np.bincount(labels, minlength=C).tolist()
    assert rep["absent_classes"] == [CLASS_NAMES[k] for k in absent]
    present = [k for k in range(C) if k not in absent]
    assert rep["macro_auc"] == pytest.approx(np.mean([ref["auc"][k] for k in present]), abs=1e-12)
    sens, spec = np.asarray(ref["recall"]), np.asarray(ref["specificity"])
    assert rep["paper_bacc"] == pytest.approx(np.mean((sens[present] + spec[present]) / 2), abs=1e-12)
    assert rep["macro_f1"] == pytest.approx(np.mean(np.asarray(ref["f1"])[present]), abs=1e-12)
    if not absent:
        sk_macro = skm.roc_auc_score(labels, probs, multi_class="ovr", average="macro")
        assert rep["macro_auc"] == pytest.approx(sk_macro, abs=1e-12)
        assert rep["macro_f1"] == pytest.approx(skm.f1_score(labels, logits.argmax(1), average="macro"), abs=1e-12)
    else:
        for k in absent:
            entry = per[CLASS_NAMES[k]]
            assert entry["sensitivity"] is None and entry["auc"] is None and entry["support"] == 0
            assert entry["specificity"] is not None  # still defined: all examples are negatives


def test_paper_bacc_hand_computed_and_distinct():
    # 3 classes; rows true, columns predicted.
    cm = np.array([[5, 0, 0], [2, 1, 1], [0, 0, 1]])
    rep = metrics.classification_report(cm, class_names=("a", "b", "c"))
    # N = 10. a: tp 5, fn 0, fp 2, tn 3; b: tp 1, fn 3, fp 0, tn 6; c: tp 1, fn 0, fp 1, tn 8.
    sens = [5 / 5, 1 / 4, 1 / 1]
    spec = [3 / 5, 6 / 6, 8 / 9]
    assert rep["per_class"]["a"]["specificity"] == pytest.approx(spec[0])
    assert rep["per_class"]["b"]["specificity"] == pytest.approx(spec[1])
    assert rep["per_class"]["c"]["specificity"] == pytest.approx(spec[2])
    assert rep["bacc"] == pytest.approx(np.mean(sens))
    assert rep["paper_bacc"] == pytest.approx(np.mean((np.array(sens) + np.array(spec)) / 2))
    assert rep["bacc"] == pytest.approx(0.75) and rep["paper_bacc"] == pytest.approx(0.7898148148)
    assert rep["accuracy"] == pytest.approx(7 / 10)
    assert rep["macro_auc"] is None  # no probabilities given


def test_degenerate_reports_do_not_crash():
    empty = metrics.classification_report(np.zeros((C, C), int), class_names=CLASS_NAMES)
    assert empty["accuracy"] is None and empty["bacc"] is None and empty["paper_bacc"] is None
    assert empty["absent_classes"] == list(CLASS_NAMES)
    json.dumps(empty, allow_nan=False)
    # A single class present: recall defined, specificity undefined for it.
    one = np.zeros((C, C), int)
    one[2, 2], one[2, 5] = 3, 1
    rep = metrics.classification_report(one, class_names=CLASS_NAMES)
    assert rep["bacc"] == pytest.approx(0.75)
    assert rep["per_class"]["bkl"]["specificity"] is None
    assert rep["paper_bacc"] is None  # no class with both terms defined
    assert rep["per_class"]["nv"]["precision"] == 0.0 and rep["per_class"]["nv"]["f1"] == 0.0
    assert rep["per_class"]["df"]["precision"] is None and rep["per_class"]["df"]["f1"] is None
    with pytest.raises(ValueError):
        metrics.classification_report(np.zeros((3, 3), int), class_names=CLASS_NAMES)


def test_binary_auc_ties_and_undefined():
    rng = np.random.default_rng(5)
    scores = rng.integers(0, 4, size=60).astype(float)  # heavy ties
    positive = rng.uniform(size=60) < 0.4
    assert metrics.binary_auc(scores, positive) == pytest.approx(skm.roc_auc_score(positive, scores), abs=1e-12)
    assert metrics.binary_auc(scores, np.zeros(60, bool)) is None
    assert metrics.binary_auc(scores, np.ones(60, bool)) is None


def _batches(seed, n_batches=4, batch=32, absent=(3,)):
    logits, labels = _random_case(seed, n=n_batches * batch, absent=absent)
    rng = np.random.default_rng(seed + 100)
    mask = (rng.uniform(size=n_batches * batch) > 0.25).astype(np.float32)
    mask[-7:] = 0  # a padded tail
    garbage_logits, garbage_labels = logits.copy(), labels.copy()
    garbage_logits[mask == 0] = rng.normal(size=((mask == 0).sum(), C)) * 10  # padding has junk
    garbage_labels[mask == 0] = -1

    def split(a):
        return np.split(a, n_batches)

    return logits, labels, mask, list(zip(split(garbage_logits), split(garbage_labels), split(mask), strict=True))


def test_train_metrics_accumulate_over_masked_batches():
    logits, labels, mask, batches = _batches(7)
    keep = mask > 0

    @jax.jit
    def step(acc, z, y, m):
        per_example = -jax.nn.log_softmax(z)[jnp.arange(y.shape[0]), jnp.maximum(y, 0)]
        loss = jnp.sum(per_example * m) / jnp.maximum(m.sum(), 1)
        return acc.merge(metrics.TrainMetrics.single_from_model_output(loss=loss, logits=z, labels=y, mask=m))

    train = metrics.TrainMetrics.empty()
    for z, y, m in batches:
        train = step(train, z, y, m)
    out = train.compute()
    ref_loss = np.mean(-np.log(_softmax(logits.astype(np.float64))[np.arange(len(labels)), labels])[keep])
    ref_acc = np.mean(logits.argmax(1)[keep] == labels[keep])
    assert float(out["loss"]) == pytest.approx(ref_loss, rel=1e-5)
    assert float(out["accuracy"]) == pytest.approx(ref_acc, rel=1e-6)


def test_eval_accumulator_respects_mask_and_matches_report():
    logits, labels, mask, batches = _batches(11)
    keep = mask > 0
    acc = metrics.EvalAccumulator(CLASS_NAMES)
    for z, y, m in batches:
        acc.update(jnp.asarray(z), jnp.asarray(y), jnp.asarray(m))
    rep = acc.report()
    ref, probs = _sklearn_reference(logits[keep], labels[keep])
    direct = metrics.classification_report(ref["confusion"], probs=probs, labels=labels[keep], class_names=CLASS_NAMES)
    assert rep == direct
    assert rep["num_examples"] == int(keep.sum())
    assert rep["macro_auc"] is not None and rep["per_class"]["df"]["auc"] is None
    cm = skm.confusion_matrix(labels[keep], logits.argmax(1)[keep], labels=list(range(C)))
    assert rep["confusion"] == cm.tolist()
    acc.reset()
    assert acc.report()["num_examples"] == 0
