"""Coverage of seeds-and-test intervals under the normal model, for the interval caco-jax uses and the ones
it retired (caco_jax/experiments/seeds.py says which and why; docs/results.md quotes this JSON).

A cell of n seeds: run i's figure is ``mu + sigma_seed * z_i + e`` with ``e ~ N(0, se^2)`` shared by the
cell's runs (one test split), ``se`` known (the runs' lesion bootstrap). A difference of two cells (n seeds
each, the same seed SD) has one paired test error. For each seed-to-test ratio ``sigma_seed / se`` the
experiment is simulated ``--experiments`` times and each method's 95 % interval checked. Methods:
``satterthwaite`` (caco_jax.experiments.seeds, in use); ``pivot`` (a generalized pivotal interval);
``bootstrap`` (seeds drawn with replacement, deviations rescaled, plus a normal test deviation: the
two-level bootstrap used until December 2026); ``t_n-1`` (Student t with n - 1 degrees of freedom times
sqrt(s^2 / n + se^2): the t interval used until then; for a difference, Welch's degrees of freedom of the
seed part times the whole standard error).

    python tools/interval_coverage.py --out docs/interval_coverage.json
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys

import numpy as np
from scipy import stats

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from caco_jax.experiments import seeds

RATIOS = (0.0, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0)


def _bootstrap(rng: np.random.Generator, v: np.ndarray, draws: int = 2000) -> np.ndarray:
    n, m = len(v), float(v.mean())
    return m + math.sqrt(n / (n - 1)) * (v[rng.integers(0, n, size=(draws, n))].mean(axis=1) - m)


def _pivot(rng: np.random.Generator, groups: list[tuple[float, int]], draws: int = 4000) -> np.ndarray:
    var = np.ones(draws)
    for s2, n in groups:
        var = var + s2 * (n - 1) / (n * rng.chisquare(n - 1, draws))
    return rng.standard_normal(draws) * np.sqrt(var)


def simulate(kind: str, n: int, ratio: float, experiments: int, seed: int) -> dict[str, float]:
    """Coverage of each method for a cell's mean or a difference of two cells (se = 1)."""
    rng = np.random.default_rng([seed, n, int(ratio * 100), kind == "difference"])
    a = ratio * rng.standard_normal((experiments, n)) + rng.standard_normal((experiments, 1))
    b = ratio * rng.standard_normal((experiments, n))
    hits = dict.fromkeys(("satterthwaite", "pivot", "bootstrap", "t_n-1"), 0)
    tq = stats.t.ppf(0.975, n - 1)
    for i in range(experiments):
        if kind == "cell":
            v = a[i]
            est = float(v.mean())
            lo, hi = seeds.cell(list(v), [[-seeds.Z, seeds.Z]] * n, bounds=(-math.inf, math.inf))["interval"]
            groups = [(float(v.var(ddof=1)), n)]
            boot = _bootstrap(rng, v) + rng.standard_normal(2000)
            half = tq * math.sqrt(v.var(ddof=1) / n + 1)
        else:
            est = float(a[i].mean() - b[i].mean())
            unbounded = (-math.inf, math.inf)
            lo, hi = seeds.difference(list(a[i]), list(b[i]), [-seeds.Z, seeds.Z], bounds=unbounded)["interval"]
            groups = [(float(a[i].var(ddof=1)), n), (float(b[i].var(ddof=1)), n)]
            boot = _bootstrap(rng, a[i]) - _bootstrap(rng, b[i]) + rng.standard_normal(2000)
            va, vb = groups[0][0] / n, groups[1][0] / n
            dof = (va + vb) ** 2 / (va**2 / (n - 1) + vb**2 / (n - 1)) if va + vb > 0 else 1e9
            half = stats.t.ppf(0.975, dof) * math.sqrt(va + vb + 1)
        hits["satterthwaite"] += lo <= 0 <= hi
        p_lo, p_hi = np.quantile(est - _pivot(rng, groups), [0.025, 0.975])
        hits["pivot"] += p_lo <= 0 <= p_hi
        b_lo, b_hi = np.quantile(boot, [0.025, 0.975])
        hits["bootstrap"] += b_lo <= 0 <= b_hi
        hits["t_n-1"] += abs(est) <= half
    return {k: h / experiments for k, h in hits.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="2,3,5")
    p.add_argument("--experiments", type=int, default=10000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="")
    args = p.parse_args()
    rows = []
    for kind in ("difference", "cell"):
        for n in map(int, args.seeds.split(",")):
            for ratio in RATIOS:
                cov = simulate(kind, n, ratio, args.experiments, args.seed)
                rows.append({"kind": kind, "seeds": n, "seed_sd_over_test_se": ratio, "coverage": cov})
                print(kind, n, ratio, {k: round(v, 3) for k, v in cov.items()}, flush=True)
    result = {
        "what": "coverage of 95 % seeds-and-test intervals under the normal model (tools/interval_coverage.py)",
        "in_use": "satterthwaite",
        "experiments": args.experiments,
        "monte_carlo_se_at_95": math.sqrt(0.95 * 0.05 / args.experiments),
        "rows": rows,
    }
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
