"""Figures by subgroup and selective prediction, against independent computations (scikit-learn,
brute force) on small cases, and on the real HAM10000 metadata."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score

from caco_jax.evaluation import selective, subgroups

CLASSES = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")


def _case(n: int = 400, seed: int = 0):
    """Predictions that are good on source A and poor on source B; metadata for every dimension."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(7, size=n, p=[0.05, 0.08, 0.12, 0.03, 0.12, 0.55, 0.05])
    source = np.where(rng.random(n) < 0.5, "A", "B")
    source[:8] = "C"  # a group too small to score
    noise = np.where(source == "A", 0.6, 2.5)[:, None]
    logits = 3.0 * np.eye(7)[labels] + noise * rng.normal(size=(n, 7))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    meta = {
        "source": source,
        "dx_type": np.where(labels == 5, "follow_up", "histo"),
        "age": np.where(rng.random(n) < 0.05, np.nan, rng.integers(5, 90, n)).astype(np.float32),
        "sex": rng.choice(["male", "female", ""], size=n, p=[0.5, 0.45, 0.05]),
        "localization": rng.choice(["back", "face", "trunk", "scalp", "ear", "foot", "hand", "neck"], size=n),
    }
    groups = np.asarray([f"L{i // 2}" for i in range(n)])
    return probs, labels, probs.argmax(1), groups, meta


@pytest.fixture(scope="module")
def case():
    probs, labels, predicted, groups, meta = _case()
    sub = subgroups.breakdown(probs, labels, predicted, groups, meta, CLASSES, resamples=300)
    return probs, labels, predicted, groups, meta, sub


def test_each_scored_subgroup_matches_sklearn_on_its_images(case):
    _, labels, predicted, _, meta, sub = case
    rows = {r["group"]: r for r in sub["dimensions"]["acquisition source"]}
    for name in ("A", "B"):
        mask = meta["source"] == name
        row = rows[name]
        assert row["images"] == mask.sum() and row["scored"]
        assert row["accuracy"] == pytest.approx(np.mean(predicted[mask] == labels[mask]))
        assert row["bacc"] == pytest.approx(balanced_accuracy_score(labels[mask], predicted[mask]))
        assert row["classes"] == [CLASSES[k] for k in sorted(set(labels[mask]))]
        mel = labels[mask] == 4
        assert row["mel_sensitivity"] == pytest.approx(np.mean(predicted[mask][mel] == 4))
        lo, hi = row["accuracy_ci"]
        assert lo <= row["accuracy"] <= hi
    assert rows["C"]["scored"] is False and rows["C"]["images"] == 8  # listed, not scored
    assert "bacc" in rows["B"]["below_overall"] and not rows["A"]["below_overall"]


def test_age_bands_sites_and_the_biopsy_confirmed_line(case):
    probs, labels, predicted, groups, meta, sub = case
    ages = {r["group"]: r["images"] for r in sub["dimensions"]["age"]}
    a = meta["age"]
    assert ages == {
        "< 40": int(np.sum(a < 40)),
        "40-59": int(np.sum((a >= 40) & (a < 60))),
        "60+": int(np.sum(a >= 60)),
        "unknown": int(np.isnan(a).sum()),
    }
    sites = {r["group"]: r["images"] for r in sub["dimensions"]["body site"]}
    names, counts = np.unique(meta["localization"], return_counts=True)
    top = sorted(zip(-counts, names, strict=True))[: subgroups.TOP_SITES]
    assert {str(name) for _, name in top} | {"other sites"} == set(sites)
    assert sites["other sites"] == len(labels) - sum(-c for c, _ in top)
    assert {r["group"] for r in sub["dimensions"]["sex"]} == {"male", "female", "unknown"}
    confirmed = meta["dx_type"] == "histo"
    assert sub["biopsy_confirmed"]["images"] == confirmed.sum()
    assert sub["biopsy_confirmed"]["bacc"] == pytest.approx(
        balanced_accuracy_score(labels[confirmed], predicted[confirmed])
    )


def test_a_one_class_group_has_accuracy_but_no_bacc():
    probs, labels, predicted, groups, meta = _case()
    meta = dict(meta, dx_type=np.where(labels == 5, "follow_up", "histo"))
    sub = subgroups.breakdown(probs, labels, predicted, groups, meta, CLASSES, resamples=100)
    follow = next(r for r in sub["dimensions"]["diagnosis confirmation"] if r["group"] == "follow_up")
    assert follow["classes"] == ["nv"] and follow["bacc"] is None and "one class only" in follow["why"]


def test_no_metadata_no_section_and_the_markdown_names_every_group(case):
    probs, labels, predicted, groups, _, sub = case
    assert subgroups.breakdown(probs, labels, predicted, groups, {}, CLASSES) is None
    text = "\n".join(subgroups.markdown(sub))
    assert "### By acquisition source" in text and "Not scored: C (8 images)" in text
    assert "**v" in text  # source B's BACC is marked
    assert "Biopsy-confirmed (histopathology) images only" in text


def _brute_coverage(conf, correct, target):
    best = (None, None)
    for t in sorted(set(conf)):
        kept = conf >= t
        if correct[kept].mean() >= target:
            cov = kept.mean()
            if best[0] is None or cov > best[0]:
                best = (cov, t)
    return best


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_coverage_at_a_target_accuracy_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    conf = np.round(rng.random(300), 2)  # many ties
    correct = (rng.random(300) < 0.3 + 0.7 * conf).astype(float)
    for target in (0.8, 0.9, 0.95):
        got = selective.coverage_at(conf, correct, target)
        want = _brute_coverage(conf, correct, target)
        assert got[0] == pytest.approx(want[0]) and got[1] == pytest.approx(want[1])
    assert selective.coverage_at(np.ones(4), np.zeros(4), 0.5) == (None, None)


def test_risk_coverage_curve_ends_at_the_overall_figures_and_applies_a_threshold(case):
    probs, labels, predicted, groups, _, _ = case
    curve = selective.curve(probs, labels, predicted, groups, split="test", threshold=0.8, resamples=200)
    assert curve["coverage"][-1] == 1.0
    assert curve["accuracy"][-1] == pytest.approx(np.mean(predicted == labels))
    assert curve["bacc"][-1] == pytest.approx(balanced_accuracy_score(labels, predicted))
    conf = probs[np.arange(len(probs)), predicted]
    kept = conf >= 0.8
    at = curve["at_threshold"]
    assert at["coverage"] == pytest.approx(kept.mean())
    assert at["accuracy"] == pytest.approx(np.mean(predicted[kept] == labels[kept]))
    assert at["accuracy_below"] == pytest.approx(np.mean(predicted[~kept] == labels[~kept]))
    assert curve["accuracy"][0] >= curve["accuracy"][-1]  # the most confident are right more often here
    fitted = selective.fit_threshold(probs, labels, predicted)
    assert np.mean(predicted[conf >= fitted["threshold"]] == labels[conf >= fitted["threshold"]]) >= 0.9


def test_the_report_sentence_when_no_image_is_below_the_threshold(case):
    """Issue 39: 'the images below it are right - of the time' when every image is above it."""
    probs, labels, predicted, groups, _, _ = case
    curve = selective.curve(probs, labels, predicted, groups, split="test", threshold=0.0, resamples=20)
    assert curve["at_threshold"]["accuracy_below"] is None
    text = "\n".join(selective.markdown(curve))
    assert "no image of this split falls below it." in text and "right - of" not in text


@pytest.mark.real_data
def test_the_breakdown_on_real_metadata_counts_every_group(real_data_dir):
    """Every image of HAM10000 with a fixed pseudo-prediction: the group sizes are the metadata's."""
    with open(real_data_dir / "HAM10000_metadata.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    with open(real_data_dir / "HAM10000_sources.csv", newline="") as f:
        source = {r["image_id"]: r["dataset"] for r in csv.DictReader(f)}
    labels = np.asarray([CLASSES.index(r["dx"]) for r in rows])
    predicted = np.where(np.arange(len(rows)) % 3 == 0, 5, labels)  # every third image called a nevus
    probs = np.eye(7)[predicted] * 0.9 + 0.1 / 7
    meta = {
        "source": np.asarray([source[r["image_id"]] for r in rows]),
        "dx_type": np.asarray([r["dx_type"] for r in rows]),
        "age": np.asarray([float(r["age"]) if r["age"] else np.nan for r in rows], np.float32),
        "sex": np.asarray([r["sex"] for r in rows]),
        "localization": np.asarray([r["localization"] for r in rows]),
    }
    groups = np.asarray([r["lesion_id"] for r in rows])
    sub = subgroups.breakdown(probs, labels, predicted, groups, meta, CLASSES, resamples=50)
    sources = {r["group"]: r["images"] for r in sub["dimensions"]["acquisition source"]}
    assert sources == {"vidir_molemax": 3954, "vidir_modern": 3363, "rosendahl": 2259, "vienna_dias": 439}
    confirm = {r["group"]: r["images"] for r in sub["dimensions"]["diagnosis confirmation"]}
    assert confirm["histo"] == sub["biopsy_confirmed"]["images"] == sum(r["dx_type"] == "histo" for r in rows)
    molemax = next(r for r in sub["dimensions"]["acquisition source"] if r["group"] == "vidir_molemax")
    mask = meta["source"] == "vidir_molemax"
    assert molemax["bacc"] == pytest.approx(balanced_accuracy_score(labels[mask], predicted[mask]))
    assert len(molemax["classes"]) == 6  # no akiec at all in that source


def test_only_the_datasets_declared_dimensions_are_reported():
    probs, labels, predicted, groups, meta = _case()
    sub = subgroups.breakdown(probs, labels, predicted, groups, meta, CLASSES, resamples=20, dimensions=("sex", "age"))
    assert set(sub["dimensions"]) == {"sex", "age"}


def test_melanoma_sensitivity_needs_enough_melanomas():
    probs, labels, predicted, groups, meta = _case()
    few = np.flatnonzero(labels == 4)[: subgroups.MIN_MELANOMAS - 1]
    others = np.flatnonzero(labels != 4)[:30]
    sex = np.full(len(labels), "y", dtype=object)
    sex[np.concatenate([few, others])] = "x"  # group x: 34 images, fewer melanomas than the minimum
    meta = dict(meta, sex=sex.astype(str))
    sub = subgroups.breakdown(probs, labels, predicted, groups, meta, CLASSES, resamples=20, dimensions=("sex",))
    rows = {r["group"]: r for r in sub["dimensions"]["sex"]}
    assert rows["x"]["melanomas"] == subgroups.MIN_MELANOMAS - 1 and rows["x"]["mel_sensitivity"] is None
    assert rows["y"]["mel_sensitivity"] is not None
    assert f"| - ({subgroups.MIN_MELANOMAS - 1}) |" in "\n".join(subgroups.markdown(sub))
