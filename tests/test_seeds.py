"""Seeds-and-test intervals (two-level bootstrap, Student / Welch t) against exact enumeration and SciPy,
and tables rebuilt from run records when the runs are not on this machine."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
from scipy import stats

from caco_jax.experiments import run_records, seeds, summary, tables
from caco_jax.experiments.presets import Cell, Comparison, Preset


def test_the_seed_level_is_the_exact_bootstrap_of_the_mean_rescaled():
    values = [0.50, 0.58, 0.71]
    got = seeds.cell(values, [[0.6, 0.6]] * 3, resamples=20000)  # no test-sampling spread
    mean, scale = np.mean(values), math.sqrt(3 / 2)
    exact = sorted(mean + scale * (np.mean(draw) - mean) for draw in itertools.product(values, repeat=3))
    lo, hi = np.quantile(exact, [0.025, 0.975], method="inverted_cdf")  # 27 equally likely draws
    assert got["interval"] == pytest.approx((lo, hi), abs=1e-12)
    half = stats.t.ppf(0.975, 2) * np.std(values, ddof=1) / math.sqrt(3)
    assert got["t_interval"] == pytest.approx((mean - half, mean + half))


def test_the_test_level_alone_is_the_runs_lesion_bootstrap_spread():
    se = 0.03
    got = seeds.cell([0.6, 0.6, 0.6], [[0.6 - 1.96 * se, 0.6 + 1.96 * se]] * 3, resamples=40000)
    assert got["interval"] == pytest.approx((0.6 - seeds.Z * se, 0.6 + seeds.Z * se), abs=0.002)
    assert got["covers"] == "seeds and test sampling"


def test_a_mean_of_differences_keeps_its_negative_t_bound():
    """Per-seed differences (leaked - clean, one view - another) range over [-1, 1]: clipping them to a
    metric's [0, 1] would cut the t interval at zero (a page once printed "t: [+0.0, +42.4]")."""
    diffs = [0.102, 0.162, 0.032]
    got = seeds.cell(diffs, [[d - 0.13, d + 0.13] for d in diffs], bounds=(-1.0, 1.0))
    half = stats.t.ppf(0.975, 2) * math.hypot(np.std(diffs, ddof=1) / math.sqrt(3), 0.13 / seeds.Z)
    assert got["t_interval"] == pytest.approx((np.mean(diffs) - half, np.mean(diffs) + half))
    assert got["t_interval"][0] < 0
    assert seeds.cell(diffs, [[d - 0.13, d + 0.13] for d in diffs])["t_interval"][0] == 0.0  # a metric's range


def test_one_seed_leaves_the_seed_part_unknown():
    got = seeds.cell([0.6], [[0.5, 0.7]])
    assert got["interval"] is None and got["why"] == "one seed: the seed part is unknown"
    assert seeds.difference([0.6, 0.7], [0.5], [0.0, 0.2])["interval"] is None
    assert seeds.cell([0.6, 0.7], [[0.5, 0.7], None])["why"] == "runs without a test-sampling interval"


def test_a_difference_without_test_spread_gives_welchs_interval():
    a, b = [0.69, 0.72, 0.66], [0.50, 0.58, 0.56]
    got = seeds.difference(a, b, [0.0, 0.0])
    welch = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert got["t_interval"] == pytest.approx((welch.low, welch.high))
    assert got["difference"] == pytest.approx(np.mean(a) - np.mean(b))
    lo, hi = got["interval"]
    assert lo < got["difference"] < hi and hi - lo < welch.high - welch.low  # the bootstrap is the narrower


def _record(bacc: float, half: float = 0.04) -> dict:
    figure = {
        "accuracy": bacc + 0.2,
        "bacc": bacc,
        "macro_auc": 0.9,
        "ci": {k: [v - half, v + half] for k, v in (("accuracy", bacc + 0.2), ("bacc", bacc), ("macro_auc", 0.9))},
    }
    return {
        "accuracy": bacc + 0.2,
        "bacc": bacc,
        "paper_bacc": 0.7,
        "macro_auc": 0.9,
        "mel_sensitivity": 0.4,
        "params": 10,
        "train_seconds": 60.0,
        "epochs": 2,
        "best_epoch": 1,
        "final_train_accuracy": 0.9,
        "leakage": None,
        "figures": {
            "plain": {"argmax": figure, "balanced": figure},
            "tta": None,
            "parts": {
                p: {"num_examples": 10, "accuracy": 0.5, "bacc": 0.4} for p in ("clean", "same_lesion", "same_source")
            },
        },
    }


def test_tables_rebuilt_from_the_record_of_runs_not_on_this_machine(tmp_path):
    """A cell that gains a seed keeps its recorded runs; the comparison's test part keeps its half-widths."""
    preset = Preset(
        "toy",
        "a toy preset",
        {},
        (Cell("a", {}, (0, 1, 2)), Cell("b", {}, (0, 1))),
        (Comparison("a", "b", "a against b"),),
    )
    before = {
        "rows": [
            {"cell": "a", "seeds": [0, 1], "runs": {"0": _record(0.60), "1": _record(0.64)}, "views": {}},
            {"cell": "b", "seeds": [0, 1], "runs": {"0": _record(0.50), "1": _record(0.56)}, "views": {}},
        ],
        "comparisons": [
            {
                "a": "a",
                "b": "b",
                "a_rule": "argmax",
                "b_rule": "argmax",
                "a_tta": False,
                "b_tta": False,
                "available": True,
                "seeds": [2, 2],
                **{m: {"difference": 0.09, "interval": [0.06, 0.13]} for m in run_records.METRICS},
            }
        ],
    }
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "results_toy.json").write_text(json.dumps(before))
    previous = run_records.previous(tmp_path / "docs", "toy")
    rows = summary.aggregate(preset, tmp_path / "runs", previous=previous)
    a = rows[0]
    assert a["seeds"] == [0, 1] and a["recorded_seeds"] == [0, 1]
    assert a["bacc"][0] == pytest.approx(0.62) and a["views"]["argmax"]["bacc"]["interval"] == pytest.approx(
        [0.62 - 0.04, 0.62 + 0.04]
    )
    assert a["seed_intervals"]["argmax"]["bacc"]["interval"] is not None
    # seed 2 of cell a arrives as a record (as if trained elsewhere)
    before["rows"][0]["runs"]["2"] = _record(0.71)
    (tmp_path / "docs" / "results_toy.json").write_text(json.dumps(before))
    previous = run_records.previous(tmp_path / "docs", "toy")
    rows = summary.aggregate(preset, tmp_path / "runs", previous=previous)
    c = summary.compare(preset, tmp_path / "runs", preset.comparisons[0], rows=rows, previous=previous)
    d = np.mean([0.60, 0.64, 0.71]) - np.mean([0.50, 0.56])
    assert c["available"] and c["seeds"] == [3, 2]
    assert c["bacc"]["difference"] == pytest.approx(d) and c["bacc"]["interval"] == pytest.approx([d - 0.03, d + 0.04])
    assert "test part from the comparison of 2 vs 2 seeds" in c["bacc"]["approx"]
    assert c["with_seeds"]["bacc"]["seeds"] == [3, 2] and c["with_seeds"]["bacc"]["interval"] is not None
    paths = tables.write_results(preset, rows, tmp_path / "docs", "caco-jax reproduce --preset toy", comparisons=[c])
    text = paths["md"].read_text()
    assert "## Seeds and test sampling" in text and "| a | argmax | 3 (3 from the record) |" in text
    assert "(≈)" in text and "1,000 bootstrap resamples" in text
