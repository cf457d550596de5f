"""Intervals that cover the seed as well as the test split's sampling, over the run records of a cell (or
of two cells, for a paired comparison): Student's t with Satterthwaite's degrees of freedom.

The model: a run's figure is ``mu + seed effect + test error``. The seed effects are normal with an
unknown variance, estimated from the seeds' spread with n - 1 degrees of freedom; the seeds of a cell
share one test split, so the test error is one deviation shared by the cell's runs, with the standard
error of the runs' own lesion bootstrap, taken as known. The mean's variance is then
``s^2 / n + se^2`` and the interval ``mean +- t(dof) * sqrt(s^2 / n + se^2)`` with the
Welch-Satterthwaite degrees of freedom of that sum, the known test part counting as infinitely many:

    dof = (s^2 / n + se^2)^2 / ((s^2 / n)^2 / (n - 1))

For a difference of two cells the two seed variances add (each with its own n - 1) and the test part is
the paired lesion-bootstrap error of the difference. With no test error this is Welch's interval; with no
seed spread, the normal interval of the test error.

Why this one: ``tools/interval_coverage.py`` simulates this model at 2, 3 and 5 seeds over seed-to-test
ratios from 0 to 30 (``docs/interval_coverage.json``; tests/test_seeds.py runs a smaller version). A
difference of two cells, the figure every headline comparison quotes, is covered 93-97 % of the time at
2, 3 and 5 seeds. A single cell's mean is covered 94-95 % at 5 seeds and 91-95 % at 3, but only 86-95 % at
2 seeds, the least when the seeds disagree much more than the test sampling explains (the degrees of
freedom grow when two seeds happen to agree): a two-seed cell's interval says so on the pages. Retired:
the two-level bootstrap over seeds (64-95 % for a two-seed cell), Student's t with the test error
multiplied by t(n - 1) (97-100 % for a two-seed cell), and a generalized pivotal interval (97-100 % for
differences at 2 and 3 seeds: too wide). A cell with one seed has no such interval: its seed part is unknown.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats

LEVEL = 0.95
Z = 1.959963984540054  # the normal quantile of a 95 % interval
METHOD = "Student t with Satterthwaite's degrees of freedom (seeds estimated, each run's test error known)"


def standard_error(interval: Sequence[float] | None) -> float | None:
    """The standard error a 95 % interval implies (its width over 2 x 1.96)."""
    if not interval or interval[0] is None or interval[1] is None:
        return None
    return (float(interval[1]) - float(interval[0])) / (2 * Z)


def half_width(seed_parts: Sequence[tuple[float, int]], se_test: float, level: float = LEVEL) -> tuple[float, float]:
    """(half-width, degrees of freedom) for seed parts [(s^2, n), ...] (one for a cell, two for a difference)
    and a known test standard error."""
    parts = [(s2 / n, n) for s2, n in seed_parts]
    seed_var = sum(v for v, _ in parts)
    total = seed_var + se_test**2
    denominator = sum(v * v / (n - 1) for v, n in parts)
    dof = total**2 / denominator if denominator > 0 else math.inf
    q = stats.norm.ppf((1 + level) / 2) if math.isinf(dof) else stats.t.ppf((1 + level) / 2, dof)
    return float(q * math.sqrt(total)), dof


def cell(
    values: Sequence[float],
    test_intervals: Sequence[Sequence[float] | None],
    *,
    level: float = LEVEL,
    bounds: tuple[float, float] = (0.0, 1.0),
) -> dict[str, Any]:
    """The mean over seeds with its seeds-and-test interval; ``interval`` None with ``why`` when a part is
    unknown (one seed, or runs without a test interval).

    ``bounds``: the range the interval is clipped to: a metric's (0, 1), or (-1, 1) when the values are
    per-seed differences of metrics."""
    v = np.asarray(values, np.float64)
    ses = [standard_error(iv) for iv in test_intervals]
    out: dict[str, Any] = {"mean": float(v.mean()) if len(v) else None, "seeds": int(len(v))}
    if len(v) < 2:
        return out | {"interval": None, "why": "one seed: the seed part is unknown"}
    if any(se is None for se in ses):
        return out | {"interval": None, "why": "runs without a test-sampling interval"}
    se = float(np.mean([s for s in ses if s is not None]))
    half, dof = half_width([(float(v.var(ddof=1)), len(v))], se, level)
    mean = float(v.mean())
    return out | {
        "interval": (max(mean - half, bounds[0]), min(mean + half, bounds[1])),
        "dof": dof,
        "covers": "seeds and test sampling",
    }


def difference(
    a: Sequence[float],
    b: Sequence[float],
    paired_interval: Sequence[float] | None,
    *,
    level: float = LEVEL,
    bounds: tuple[float, float] = (-1.0, 1.0),
) -> dict[str, Any]:
    """mean(a) - mean(b) over each cell's seeds, with the seeds-and-test interval: each cell's seed variance
    with its own n - 1 degrees of freedom, the test part from the paired lesion-bootstrap ``paired_interval``
    of the difference (the two cells share the test images). A cell with one seed leaves the seed part
    unknown (``interval`` None)."""
    va, vb = np.asarray(a, np.float64), np.asarray(b, np.float64)
    out: dict[str, Any] = {"difference": float(va.mean() - vb.mean()), "seeds": [int(len(va)), int(len(vb))]}
    se_test = standard_error(paired_interval)
    if len(va) < 2 or len(vb) < 2:
        return out | {"interval": None, "why": "a cell with one seed: the seed part is unknown"}
    if se_test is None:
        return out | {"interval": None, "why": "no paired test-sampling interval"}
    half, dof = half_width([(float(va.var(ddof=1)), len(va)), (float(vb.var(ddof=1)), len(vb))], se_test, level)
    d = out["difference"]
    return out | {
        "interval": (max(d - half, bounds[0]), min(d + half, bounds[1])),
        "dof": dof,
        "covers": "seeds and test sampling",
    }
