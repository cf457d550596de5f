"""Timing primitives shared by every measurement: windows, rounds, rate and latency statistics.

Rules: compile / first calls and warm-up steps are excluded; each window runs ``steps``
steps and ends with a device synchronisation (``jax.block_until_ready`` /
``torch.cuda.synchronize``); the reported rate is the median window (min and max are
kept too), because shared machines are noisy. Configurations that are compared -- the
caco-jax rows and the torchvision rows included -- are timed in rounds (A B C, A B C,
...), so load drift hits them alike, and their ratios are taken round by round.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

Window = Callable[[], object]  # one synchronised window of work (what it returns is not used)


def rate_stats(window_seconds: Sequence[float], items_per_window: int) -> dict[str, Any]:
    """images/s of each window -> median, min, max (and the window rates, in round order)."""
    rates = [items_per_window / s for s in window_seconds]
    return {"median": statistics.median(rates), "min": min(rates), "max": max(rates), "windows": rates}


def latency_stats(seconds: Sequence[float], rounds: Sequence[float] | None = None) -> dict[str, Any]:
    """Milliseconds of single calls -> median, min, max (and, if given, each round's median in ms)."""
    ms = [1e3 * s for s in seconds]
    out: dict[str, Any] = {"median": statistics.median(ms), "min": min(ms), "max": max(ms)}
    if rounds is not None:
        out["rounds"] = [1e3 * s for s in rounds]
    return out


def paired_ratio(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """a[r] / b[r] for each round r (values measured side by side) -> median, min, max, per round."""
    if len(a) != len(b) or not a:
        raise ValueError(f"paired ratio needs rounds of equal count, got {len(a)} and {len(b)}")
    ratios = [x / y for x, y in zip(a, b, strict=True)]
    return {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios), "rounds": ratios}


def time_windows(run: Callable[[int], None], *, windows: int, steps: int) -> list[float]:
    """Seconds of each of ``windows`` calls ``run(steps)`` (``run`` must end synchronised)."""
    out = []
    for _ in range(windows):
        t0 = time.perf_counter()
        run(steps)
        out.append(time.perf_counter() - t0)
    return out


def interleaved_windows(runs: dict[Any, tuple[Window, int]], windows: int) -> dict[Any, dict[str, Any]]:
    """Rate stats of several runs, timed in rounds (A B C, A B C, ...).

    ``runs`` maps a key to (one synchronised window, items it processes). Rounds make
    load drift on a shared machine hit every run alike, so ratios stay meaningful.
    """
    seconds: dict[Any, list[float]] = {k: [] for k in runs}
    for _ in range(windows):
        for key, (window, _) in runs.items():
            t0 = time.perf_counter()
            window()
            seconds[key].append(time.perf_counter() - t0)
    return {key: rate_stats(seconds[key], items) for key, (_, items) in runs.items()}


def time_calls(call: Window, n: int) -> list[float]:
    """Seconds of each of ``n`` synchronised calls (latency)."""
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        call()
        out.append(time.perf_counter() - t0)
    return out


def interleaved_latency(calls: dict[Any, Window], rounds: int, total_calls: int) -> dict[Any, dict[str, Any]]:
    """Latency stats of several synchronised calls, ``ceil(total_calls / rounds)`` of each per round, in rounds."""
    per_round = max(1, -(-total_calls // rounds))
    seconds: dict[Any, list[float]] = {k: [] for k in calls}
    medians: dict[Any, list[float]] = {k: [] for k in calls}
    for _ in range(rounds):
        for key, call in calls.items():
            s = time_calls(call, per_round)
            seconds[key] += s
            medians[key].append(statistics.median(s))
    return {key: latency_stats(seconds[key], medians[key]) for key in calls}


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


@dataclasses.dataclass
class Timed:
    """One compiled, warmed-up configuration (a row of the table), ready for the timed rounds.

    ``train`` / ``eval``: (one synchronised window, images it processes); ``latency``: one
    synchronised batch-1 call. Absent ones are not measured. :func:`time_rows` fills
    ``row`` in place: ``images_per_s``, ``step_ms``, ``eval_images_per_s``, ``latency_ms``.
    """

    row: dict[str, Any]
    train: tuple[Window, int] | None = None
    eval: tuple[Window, int] | None = None
    latency: Window | None = None
    batch_size: int = 0


def time_rows(
    entries: dict[Any, Timed], *, windows: int, latency_calls: int, log: Callable[[str], None] = print
) -> None:
    """Every entry's training, then evaluation windows, then batch-1 calls, each in shared rounds.

    All frameworks' entries run in the same rounds, so the ratio of two rows can be taken
    round by round (:func:`paired_ratio`).
    """
    train = {k: e.train for k, e in entries.items() if e.train is not None}
    if train:
        log(f"timing training: {windows} rounds x {len(train)} configurations ...")
        for key, stats in interleaved_windows(train, windows).items():
            row = entries[key].row
            row["images_per_s"] = stats
            row["step_ms"] = 1e3 * entries[key].batch_size / stats["median"] if entries[key].batch_size else None
            log(f"  {row['framework']} {row['model']} {row['mode']}: {stats['median']:.1f} img/s")
    evals = {k: e.eval for k, e in entries.items() if e.eval is not None}
    if evals:
        log(f"timing evaluation: {windows} rounds x {len(evals)} configurations ...")
        for key, stats in interleaved_windows(evals, windows).items():
            entries[key].row["eval_images_per_s"] = stats
    calls = {k: e.latency for k, e in entries.items() if e.latency is not None}
    if calls:
        log(f"timing batch-1 latency: {windows} rounds x {len(calls)} configurations ...")
        for key, stats in interleaved_latency(calls, windows, latency_calls).items():
            entries[key].row["latency_ms"] = stats
