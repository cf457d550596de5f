"""What the phases measured, as small JSON-ready dicts: the probe run's pace and projection, the benchmark's
rows (and the faster depthwise implementation per model and dtype), and the machine's name."""

from __future__ import annotations

import itertools
import re
import statistics
from collections.abc import Sequence
from typing import Any

from campaign.plan import Pace


def probe_figures(rows: Sequence[dict[str, Any]], started: float, epochs: int) -> dict[str, Any]:
    """The pace of a run alone from its epoch rows written since ``started`` (wall time): steady seconds
    per epoch (median gap between epoch rows, train + validation + saves), the start-up before that pace
    (data, compilation, the first epoch's extra), train images/s, and ``epochs`` projected."""
    if not rows:
        return {"epochs_measured": 0}
    times = [r["time"] for r in rows]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    first = rows[0].get("epoch_seconds", 0.0) + rows[0].get("val_seconds", 0.0)
    epoch_s = statistics.median(gaps) if gaps else first
    startup_s = max(0.0, times[0] - started - epoch_s)
    rates = [r.get("images_per_sec", 0.0) for r in (rows[1:] or rows)]
    return {
        "epochs_measured": len(rows),
        "startup_s": startup_s,
        "epoch_s": epoch_s,
        "first_epoch_s": times[0] - started,
        "train_images_per_s": statistics.median(rates),
        "projected_epochs": epochs,
        "projected_s": startup_s + epochs * epoch_s,
        "projected_100_epochs_s": startup_s + 100 * epoch_s,
        "note": "projection excludes the final test evaluation and report (seconds)",
    }


def pace_of(probe: dict[str, Any] | None) -> Pace | None:
    if not probe or not probe.get("epochs_measured"):
        return None
    return Pace(probe["startup_s"], probe["epoch_s"])


def _median(stats: Any) -> float | None:
    return stats.get("median") if isinstance(stats, dict) else None


def bench_rows(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One short row per measured benchmark row, over every invocation (``results``: tag -> JSON)."""
    out = []
    for tag, result in results.items():
        batch = result.get("config", {}).get("batch_size")
        for r in result.get("rows", []):
            if "skipped" in r:
                continue
            out.append(
                {
                    "run": tag,
                    "batch_size": batch,
                    "framework": r.get("framework"),
                    "model": r.get("model"),
                    "mode": r.get("mode"),
                    "variant": r.get("variant"),
                    "dtype": r.get("dtype"),
                    "depthwise": r.get("depthwise"),
                    "train_images_per_s": _median(r.get("images_per_s")),
                    "eval_images_per_s": _median(r.get("eval_images_per_s")),
                    "latency_ms": _median(r.get("latency_ms")),
                    "compile_s": r.get("compile_s"),
                    "vs_torch_eager_train": _median(r.get("vs_torch_eager", {}).get("train")),
                }
            )
    return out


def depthwise_choice(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per model, dtype and batch: training images/s of each depthwise implementation and the faster one
    (what ``model.depthwise=auto`` should pick on this GPU)."""
    table: dict[str, dict[str, float]] = {}
    for r in rows:
        if r["framework"] == "caco-jax" and r["train_images_per_s"]:
            table.setdefault(f"{r['variant']} {r['dtype']} batch {r['batch_size']}", {})[r["depthwise"]] = r[
                "train_images_per_s"
            ]
    return {k: v | {"faster": max(v, key=v.__getitem__)} for k, v in table.items() if len(v) > 1}


_BUILD = re.compile(r"(caco-jax \S+ \S+ depthwise=\S+|torchvision \S+ \S+)(?: on \S+)?: building")
_COMPILED = re.compile(r"(?:train step compiled in|first train call) ([0-9.]+) s")
_RATE = re.compile(r"^\s*\[\s*[0-9.]+ s\]\s+(\S+ \S+ .+): ([0-9.]+) img/s")


def salvage(log_text: str, reason: str) -> dict[str, Any]:
    """What a benchmark stopped before writing its JSON printed: compile seconds per configuration and
    any training rates already timed."""
    compile_s: dict[str, float] = {}
    rates: dict[str, float] = {}
    current = None
    for line in log_text.splitlines():
        if m := _BUILD.search(line):
            current = m.group(1)
        elif (m := _COMPILED.search(line)) and current:
            compile_s[current] = float(m.group(1))
        elif m := _RATE.match(line):
            rates[m.group(1)] = float(m.group(2))
    return {
        "partial": True,
        "reason": reason,
        "compile_s": compile_s,
        "train_images_per_s": rates,
        "log_tail": log_text.splitlines()[-40:],
    }


def gpu_name(env: dict[str, Any]) -> str:
    """The accelerator's name from env.json: nvidia-smi's, else JAX's device kind, else 'cpu' ('unknown'
    without an env.json)."""
    if not env:
        return "unknown"
    gpus = env.get("nvidia_smi") or []
    if gpus:
        return gpus[0].get("name", "gpu")
    jax_info = env.get("jax") or {}
    if jax_info.get("platform") not in (None, "cpu"):
        return jax_info.get("device_kind", jax_info["platform"])
    return "cpu"


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "unknown"


def trained_on(env: dict[str, Any], parallel: int | None) -> str:
    """The docs' "runs trained on" line: the card, the software, and how many runs shared it."""
    jax_info = env.get("jax") or {}
    count = max(1, len(env.get("nvidia_smi") or []) or jax_info.get("device_count", 1))
    v = env.get("versions", {})
    cuda = jax_info.get("cuda") or (env.get("torch", {}).get("cuda") if jax_info.get("platform") == "gpu" else None)
    soft = [
        f"jax {v['jax']}" if v.get("jax") else "",
        f"flax {v['flax']}" if v.get("flax") else "",
        f"CUDA {cuda}" if cuda else "",
    ]
    share = ""
    if parallel:
        share = f", up to {parallel} runs at a time" if parallel > 1 else ", one run at a time"
    return (
        f"{count} x {gpu_name(env)}"
        + (f" ({', '.join(x for x in soft if x)})" if any(soft) else "")
        + share
        + " (tools/gpu_campaign.py)"
    )
