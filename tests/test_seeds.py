"""Seeds-and-test intervals (Satterthwaite t): against Student t, Welch and the normal interval, their coverage
in simulation, and tables rebuilt from run records when the runs are not on this machine."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats

from caco_jax.experiments import run_records, seeds, summary, tables
from caco_jax.experiments.presets import Cell, Comparison, Preset


def test_without_test_error_the_interval_is_students_t():
    values = [0.50, 0.58, 0.71]
    got = seeds.cell(values, [[0.6, 0.6]] * 3)  # no test-sampling spread
    mean, half = np.mean(values), stats.t.ppf(0.975, 2) * np.std(values, ddof=1) / math.sqrt(3)
    assert got["interval"] == pytest.approx((mean - half, mean + half))
    assert got["covers"] == "seeds and test sampling"


def test_without_seed_spread_the_interval_is_the_test_errors_normal_interval():
    se = 0.03
    got = seeds.cell([0.6, 0.6, 0.6], [[0.6 - seeds.Z * se, 0.6 + seeds.Z * se]] * 3)
    assert got["interval"] == pytest.approx((0.6 - seeds.Z * se, 0.6 + seeds.Z * se))


def test_a_difference_without_test_spread_is_welchs_interval():
    a, b = [0.69, 0.72, 0.66], [0.50, 0.58, 0.56]
    got = seeds.difference(a, b, [0.0, 0.0])
    welch = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert got["interval"] == pytest.approx((welch.low, welch.high))
    assert got["difference"] == pytest.approx(np.mean(a) - np.mean(b))


def test_the_degrees_of_freedom_are_satterthwaites():
    a, b, se = [0.69, 0.72, 0.66], [0.50, 0.58, 0.56], 0.02
    va, vb = np.var(a, ddof=1) / 3, np.var(b, ddof=1) / 3
    dof = (va + vb + se**2) ** 2 / (va**2 / 2 + vb**2 / 2)
    got = seeds.difference(a, b, [-seeds.Z * se, seeds.Z * se])
    half = stats.t.ppf(0.975, dof) * math.sqrt(va + vb + se**2)
    assert got["dof"] == pytest.approx(dof)
    assert got["interval"] == pytest.approx((got["difference"] - half, got["difference"] + half))


def _coverage(kind: str, n: int, ratio: float, experiments: int = 3000) -> float:
    """Share of simulated experiments whose interval holds the true value 0: a cell of n seeds (seed SD =
    ratio x test SE, one test error shared by its runs), or the difference of two such cells (one paired
    test error)."""
    rng = np.random.default_rng([7, n, int(10 * ratio), kind == "cell"])
    a = ratio * rng.standard_normal((experiments, n)) + rng.standard_normal((experiments, 1))
    b = ratio * rng.standard_normal((experiments, n))
    unbounded, test = (-math.inf, math.inf), [-seeds.Z, seeds.Z]
    hits = 0
    for i in range(experiments):
        if kind == "cell":
            lo, hi = seeds.cell(list(a[i]), [test] * n, bounds=unbounded)["interval"]
        else:
            lo, hi = seeds.difference(list(a[i]), list(b[i]), test, bounds=unbounded)["interval"]
        hits += lo <= 0 <= hi
    return hits / experiments


# Stated tolerances (3,000 experiments: Monte Carlo error 0.4 points). A difference of two cells, what every
# headline quotes: 92.5-97.5 % at 2, 3 and 5 seeds. A cell's mean: 91-97.5 % at 3 and 5 seeds; with two
# seeds it can fall to 87 % when the seed spread dominates (docs/interval_coverage.json), which the pages say.
TOLERANCE = {("difference", 2): (0.925, 0.975), ("difference", 3): (0.925, 0.975), ("difference", 5): (0.925, 0.975),
             ("cell", 2): (0.85, 0.97), ("cell", 3): (0.91, 0.975), ("cell", 5): (0.925, 0.975)}  # fmt: skip


@pytest.mark.parametrize("kind,n", sorted(TOLERANCE))
def test_the_interval_has_the_coverage_it_claims(kind, n):
    """The property the retired intervals lacked: the two-level bootstrap covered 66-88 % with two seeds
    when the seed spread dominated, and Student's t with the test error times t(n - 1) covered 97-100 %."""
    lo, hi = TOLERANCE[(kind, n)]
    for ratio in (0.0, 0.5, 1.0, 3.0, 10.0):
        coverage = _coverage(kind, n, ratio)
        assert lo <= coverage <= hi, (kind, n, ratio, coverage)


def test_a_mean_of_differences_keeps_its_negative_bound():
    """Per-seed differences (leaked - clean, one view - another) range over [-1, 1]: clipping them to a
    metric's [0, 1] would cut the interval at zero (a page once printed "t: [+0.0, +42.4]")."""
    diffs = [0.102, 0.162, 0.032]
    got = seeds.cell(diffs, [[d - 0.13, d + 0.13] for d in diffs], bounds=(-1.0, 1.0))
    assert got["interval"][0] < 0 < got["interval"][1]
    assert seeds.cell(diffs, [[d - 0.13, d + 0.13] for d in diffs])["interval"][0] == 0.0  # a metric's range


def test_one_seed_leaves_the_seed_part_unknown():
    got = seeds.cell([0.6], [[0.5, 0.7]])
    assert got["interval"] is None and got["why"] == "one seed: the seed part is unknown"
    assert seeds.difference([0.6, 0.7], [0.5], [0.0, 0.2])["interval"] is None
    assert seeds.cell([0.6, 0.7], [[0.5, 0.7], None])["why"] == "runs without a test-sampling interval"


def test_a_difference_of_two_cells_widens_with_both_seed_spreads():
    a, b = [0.69, 0.72, 0.66], [0.50, 0.58, 0.56]
    one = seeds.difference(a, [0.55, 0.55, 0.55], [-0.02, 0.02])["interval"]
    two = seeds.difference(a, b, [-0.02, 0.02])["interval"]
    assert two[1] - two[0] > one[1] - one[0]


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
    previous = run_records.previous(tmp_path / "docs", preset.stem)
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
    previous = run_records.previous(tmp_path / "docs", preset.stem)
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


def test_the_coverage_the_pages_quote_is_the_simulations():
    """The coverage figures in seeds.py's reasons and on every results page come from docs/interval_coverage.json."""
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[1]
    rows = json.loads((root / "docs" / "interval_coverage.json").read_text())["rows"]

    def span(kind: str, n: int, method: str = "satterthwaite") -> str:
        values = [r["coverage"][method] for r in rows if (r["kind"], r["seeds"]) == (kind, n)]
        return f"{round(100 * min(values))}-{round(100 * max(values))} %"

    differences = {span("difference", n) for n in (2, 3, 5)}
    lowest = min(r["coverage"]["satterthwaite"] for r in rows if r["kind"] == "difference")
    highest = max(r["coverage"]["satterthwaite"] for r in rows if r["kind"] == "difference")
    quoted = f"{round(100 * lowest)}-{round(100 * highest)} %"
    note = " ".join(tables.SEED_INTERVAL_NOTE.split())
    doc = " ".join(seeds.__doc__.split())
    for text in (note, doc):
        assert quoted in text and "difference of two cells" in text, (quoted, differences)
        assert f"{span('cell', 3)} at 3" in text and f"{span('cell', 5)} at 5" in text and span("cell", 2) in text
    assert tables.TWO_SEED_COVERAGE == span("cell", 2)
