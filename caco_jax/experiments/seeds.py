"""Intervals that cover the seed as well as the test split's sampling: a two-level bootstrap over the
run records of a cell (or of two cells, for a paired comparison).

Each replicate draws the cell's seeds with replacement (the seed level; deviations from the cell mean
scaled by sqrt(n / (n - 1)) so that the drawn spread is the unbiased seed variance) and, in the same
draw, one test-sampling deviation shared by the drawn seeds, with each run's own lesion-bootstrap
standard error (the test level: the seeds of a cell share one test split, so their test-sampling
errors move together). A cell with one seed has no seed level: its seed part is unknown and no such
interval is given. With two or three seeds a bootstrap cannot show how uncertain the seed spread
itself is; ``t_interval`` (Student t over seeds, test sampling added in quadrature, clipped to the
metric's range) is reported beside it as the more cautious figure.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats

LEVEL = 0.95
RESAMPLES = 4000
Z = 1.959963984540054  # the normal quantile of a 95 % interval


def standard_error(interval: Sequence[float] | None) -> float | None:
    """The standard error a 95 % interval implies (its width over 2 x 1.96)."""
    if not interval or interval[0] is None or interval[1] is None:
        return None
    return (float(interval[1]) - float(interval[0])) / (2 * Z)


def _seed_draws(values: np.ndarray, rng: np.random.Generator, resamples: int) -> np.ndarray:
    """[R] means of seeds drawn with replacement, deviations rescaled to the unbiased variance."""
    n = len(values)
    mean = values.mean()
    scale = math.sqrt(n / (n - 1))
    draws = values[rng.integers(0, n, size=(resamples, n))]
    return mean + scale * (draws.mean(axis=1) - mean)


def _clip(lo: float, hi: float, low: float, high: float) -> tuple[float, float]:
    """A t interval kept inside the metric's range (a share cannot pass 100 %)."""
    return max(lo, low), min(hi, high)


def _quantiles(samples: np.ndarray, level: float) -> tuple[float, float]:
    lo, hi = np.quantile(samples, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def cell(
    values: Sequence[float],
    test_intervals: Sequence[Sequence[float] | None],
    *,
    resamples: int = RESAMPLES,
    seed: int = 0,
    level: float = LEVEL,
    bounds: tuple[float, float] = (0.0, 1.0),
) -> dict[str, Any]:
    """The mean over seeds with its seeds-and-test interval (two-level bootstrap) and its t interval;
    ``interval`` None with ``why`` when a level is unknown (one seed, or runs without a test interval).

    ``bounds``: the range the t interval is clipped to: a metric's (0, 1), or (-1, 1) when the
    values are per-seed differences of metrics."""
    v = np.asarray(values, np.float64)
    ses = [standard_error(iv) for iv in test_intervals]
    out: dict[str, Any] = {"mean": float(v.mean()) if len(v) else None, "seeds": int(len(v))}
    if len(v) < 2:
        return out | {"interval": None, "t_interval": None, "why": "one seed: the seed part is unknown"}
    if any(se is None for se in ses):
        return out | {"interval": None, "t_interval": None, "why": "runs without a test-sampling interval"}
    rng = np.random.default_rng(seed)
    se = np.asarray(ses, np.float64)
    seed_level = _seed_draws(v, rng, resamples)
    test_level = rng.standard_normal(resamples) * float(se.mean())
    half = stats.t.ppf((1 + level) / 2, len(v) - 1) * math.hypot(v.std(ddof=1) / math.sqrt(len(v)), se.mean())
    return out | {
        "interval": _quantiles(seed_level + test_level, level),
        "t_interval": _clip(float(v.mean() - half), float(v.mean() + half), *bounds),
        "covers": "seeds and test sampling",
    }


def difference(
    a: Sequence[float],
    b: Sequence[float],
    paired_interval: Sequence[float] | None,
    *,
    resamples: int = RESAMPLES,
    seed: int = 0,
    level: float = LEVEL,
) -> dict[str, Any]:
    """mean(a) - mean(b) over each cell's seeds, with the seeds-and-test interval: each cell's seeds
    drawn on their own, the test level from the paired lesion-bootstrap ``paired_interval`` of the
    difference (the two cells share the test images); and the Welch t interval. A cell with one seed
    leaves the seed part unknown (``interval`` None)."""
    va, vb = np.asarray(a, np.float64), np.asarray(b, np.float64)
    out: dict[str, Any] = {"difference": float(va.mean() - vb.mean()), "seeds": [int(len(va)), int(len(vb))]}
    se_test = standard_error(paired_interval)
    if len(va) < 2 or len(vb) < 2:
        return out | {"interval": None, "t_interval": None, "why": "a cell with one seed: the seed part is unknown"}
    if se_test is None:
        return out | {"interval": None, "t_interval": None, "why": "no paired test-sampling interval"}
    rng = np.random.default_rng(seed)
    draws = _seed_draws(va, rng, resamples) - _seed_draws(vb, rng, resamples)
    draws = draws + rng.standard_normal(resamples) * se_test
    var_a, var_b = va.var(ddof=1) / len(va), vb.var(ddof=1) / len(vb)
    # Welch-Satterthwaite degrees of freedom of the seed part
    dof = (var_a + var_b) ** 2 / (var_a**2 / (len(va) - 1) + var_b**2 / (len(vb) - 1)) if var_a + var_b > 0 else 1e9
    half = stats.t.ppf((1 + level) / 2, dof) * math.sqrt(var_a + var_b + se_test**2)
    d = out["difference"]
    return out | {
        "interval": _quantiles(draws, level),
        "t_interval": _clip(d - half, d + half, -1.0, 1.0),
        "share_above_zero": float(np.mean(draws > 0)),
        "covers": "seeds and test sampling",
    }
