"""Leaked against clean on the classes both parts have, from a run record, by hand."""

from __future__ import annotations

import math

import pytest

from caco_jax.experiments import leak_parts, seeds


def _record(clean: dict, leaked: dict, counts: dict, shares: dict, half: float = 0.1) -> dict:
    def part(recall: dict, n: int) -> dict:
        ci = {c: (None if r is None else [r - half, r + half]) for c, r in recall.items()}
        return {"num_examples": n, "recall": recall, "ci": {"recall": ci}}

    return {
        "leakage": {"per_class": {c: {"num_test": counts[c], "same_lesion": shares[c]} for c in counts}},
        "figures": {"parts": {"clean": part(clean, 50), "same_lesion": part(leaked, 40)}},
    }


def test_the_common_classes_their_bacc_and_the_clean_mix():
    record = _record(
        clean={"a": 0.5, "b": 0.9, "c": None},
        leaked={"a": 0.8, "b": 0.7, "c": 1.0},
        counts={"a": 40, "b": 60, "c": 10},
        shares={"a": 0.5, "b": 0.5, "c": 1.0},  # class c only leaked: not compared
    )
    d = leak_parts.run_difference(record)
    assert d["classes"] == ["a", "b"]
    assert d["bacc"]["clean"] == pytest.approx(0.7) and d["bacc"]["leaked"] == pytest.approx(0.75)
    # the clean mix: a 20, b 30 images -> weights 0.4, 0.6
    assert d["accuracy_at_clean_mix"]["clean"] == pytest.approx(0.4 * 0.5 + 0.6 * 0.9)
    assert d["accuracy_at_clean_mix"]["leaked"] == pytest.approx(0.4 * 0.8 + 0.6 * 0.7)
    se_part = math.sqrt(2 * (0.1 / seeds.Z) ** 2) / 2  # two classes, each recall's SE from its interval
    half = seeds.Z * math.hypot(se_part, se_part)
    assert d["difference_interval"] == pytest.approx([0.05 - half, 0.05 + half])
    # accuracy at the clean mix: each part's SE is the weighted recall SEs in quadrature
    se_accuracy = math.sqrt((0.4 * 0.1 / seeds.Z) ** 2 + (0.6 * 0.1 / seeds.Z) ** 2)
    d_accuracy = (0.4 * 0.8 + 0.6 * 0.7) - (0.4 * 0.5 + 0.6 * 0.9)
    half_accuracy = seeds.Z * math.hypot(se_accuracy, se_accuracy)
    assert d["accuracy_interval"] == pytest.approx([d_accuracy - half_accuracy, d_accuracy + half_accuracy])


def test_the_cell_means_both_differences_over_seeds():
    records = {
        str(s): _record(
            clean={"a": 0.5, "b": 0.9},
            leaked={"a": 0.8 - 0.1 * s, "b": 0.7},
            counts={"a": 40, "b": 60},
            shares={"a": 0.5, "b": 0.5},
        )
        for s in range(3)
    }
    found = leak_parts.cell({"cell": "image", "runs": records})
    accuracy = [found["runs"][str(s)]["accuracy_at_clean_mix"]["difference"] for s in range(3)]
    assert found["accuracy_mean"]["mean"] == pytest.approx(sum(accuracy) / 3)
    assert found["accuracy_mean"]["covers"] == "seeds and test sampling"
    lo, hi = found["accuracy_mean"]["interval"]
    assert lo < min(accuracy) and hi > max(accuracy)


def test_a_cell_without_a_leaked_part_has_no_row():
    record = _record({"a": 0.5}, {"a": None}, {"a": 10}, {"a": 0.0})
    record["figures"]["parts"]["same_lesion"]["num_examples"] = 0
    assert leak_parts.cell({"cell": "lesion", "runs": {"0": record}}) is None
