"""The result's context (device, versions), ratios, the issues' targets, and the markdown tables."""

from __future__ import annotations

import math
import os
import platform
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from caco_jax.benchmark.timing import paired_ratio

# GPU targets (set for one H100; reported on any GPU).
TARGET_JAX_OVER_TORCH = 1.25  # caco-jax training rate / best torchvision configuration
TARGET_CACO_OVER_SE = 0.75  # caco training rate / se training rate ("within 25%")
TARGET_E2E_OVER_SYNTHETIC = 0.90  # grain-fed rate / synthetic-input rate
# CPU targets: float32, against torchvision eager at the same thread count.
TARGET_CPU_TRAIN = 1.0  # caco-jax training rate / torch eager
TARGET_CPU_EVAL = 2.0  # caco-jax evaluation rate / torch eager
TARGET_CPU_LATENCY = 0.5  # caco-jax batch-1 latency / torch eager (lower is better)


def device_info() -> dict[str, Any]:
    d = jax.devices()[0]
    info = {
        "platform": d.platform,
        "device_kind": d.device_kind,
        "num_devices": jax.device_count(),
        "host_cpus": os.cpu_count(),
        "hostname": platform.node(),
        "processor": platform.processor(),
    }
    if d.platform == "cpu":
        # XLA's CPU intra-op thread pool has one thread per core this process may run on.
        info["jax_cpu_threads"] = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return info


def versions() -> dict[str, str]:
    """Versions of Python and the installed packages that matter here."""
    from importlib import metadata

    out = {"python": platform.python_version()}
    for name in ("jax", "jaxlib", "jax-cuda12-plugin", "jax-cuda13-plugin", "flax", "optax", "grain", "numpy"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def load_average() -> float | None:
    """The host's 1-minute load average (None where the OS has none)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def _measured(row: dict[str, Any]) -> bool:
    return "skipped" not in row


def ratio(a: dict[str, Any], b: dict[str, Any], field: str) -> dict[str, Any] | None:
    """``a[field] / b[field]`` round by round (both timed in the same rounds), or None if either lacks it.

    Rates compare window by window, latencies by each round's median call."""
    if field not in a or field not in b:
        return None
    per_round = "rounds" if field == "latency_ms" else "windows"
    x, y = a[field].get(per_round), b[field].get(per_round)
    if x and y and len(x) == len(y):
        return paired_ratio(x, y)
    r = a[field]["median"] / b[field]["median"]  # not side by side: ratio of medians
    return {"median": r, "min": r, "max": r}


def torch_eager(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    return next(
        (
            r
            for r in rows
            if r["framework"] == "torchvision"
            and r["mode"] == "eager"
            and r["dtype"] == "float32"
            and _measured(r)
            and "images_per_s" in r
        ),
        None,
    )


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Each measured row not torchvision's (caco-jax, and any other framework's) gets ``vs_torch_eager``:
    the train, eval and latency ratios to torch eager float32 it has fields for."""
    eager = torch_eager(rows)
    if eager is None:
        return
    for r in rows:
        if r["framework"] != "torchvision" and _measured(r):
            pairs = {"train": "images_per_s", "eval": "eval_images_per_s", "latency": "latency_ms"}
            r["vs_torch_eager"] = {k: v for k, f in pairs.items() if (v := ratio(r, eager, f)) is not None}


def same_threads(result: dict[str, Any]) -> bool | None:
    jax_threads, torch_threads = result["device"].get("jax_cpu_threads"), result.get("torch", {}).get("torch_threads")
    return None if jax_threads is None or torch_threads is None else jax_threads == torch_threads


def targets(result: dict[str, Any]) -> dict[str, Any]:
    """The issues' targets from the measured rows (ratios taken round by round).

    GPU (set for one H100): caco-jax training >= 1.25x the best torchvision configuration,
    caco within 25 % of se, grain-fed >= 90 % of synthetic input. CPU (float32, against
    torchvision eager at the same thread count): training >= 1x, evaluation >= 2x,
    batch-1 latency <= 0.5x.
    """
    ok = [r for r in result["rows"] if _measured(r) and r.get("steps_per_dispatch", 1) == 1]
    jax_rows = [r for r in ok if r["framework"] == "caco-jax"]
    torch_rows = [r for r in ok if r["framework"] == "torchvision"]
    out: dict[str, Any] = {}

    def best(rows: list[dict[str, Any]], field: str = "images_per_s") -> dict[str, Any] | None:
        rows = [r for r in rows if field in r]
        return max(rows, key=lambda r: r[field]["median"]) if rows else None

    def target(stats: dict[str, Any], goal: float, higher_is_better: bool = True, **extra: Any) -> dict[str, Any]:
        met = stats["median"] >= goal if higher_is_better else stats["median"] <= goal
        return {
            "ratio": stats["median"],
            "ratio_min": stats["min"],
            "ratio_max": stats["max"],
            "target": goal,
            "met": met,
            "lower_is_better": not higher_is_better,
            **extra,
        }

    cpu = result["device"]["platform"] == "cpu"
    for variant in sorted({r["variant"] for r in jax_rows}):
        mine = [r for r in jax_rows if r["variant"] == variant]
        if cpu:
            threads = {
                "threads": f"jax {result['device'].get('jax_cpu_threads')}, "
                f"torch {result.get('torch', {}).get('torch_threads')}",
                "same_threads": same_threads(result),
            }
            for kind, goal, higher in (
                ("train", TARGET_CPU_TRAIN, True),
                ("eval", TARGET_CPU_EVAL, True),
                ("latency", TARGET_CPU_LATENCY, False),
            ):
                cands = [r for r in mine if r["dtype"] == "float32" and kind in r.get("vs_torch_eager", {})]
                if not cands:
                    continue
                pick = (max if higher else min)(cands, key=lambda r: r["vs_torch_eager"][kind]["median"])
                out[f"{variant}_{kind}_over_torch_eager"] = target(
                    pick["vs_torch_eager"][kind], goal, higher, jax=pick["mode"], torch="eager float32", **threads
                )
        else:
            top, top_torch = best(mine), best(torch_rows)
            if top and top_torch and (over := ratio(top, top_torch, "images_per_s")) is not None:
                out[f"{variant}_over_best_torch"] = target(
                    over,
                    TARGET_JAX_OVER_TORCH,
                    jax=top["mode"],
                    torch=f"{top_torch['mode']} {top_torch['dtype']}",
                )
    for dtype in sorted({r["dtype"] for r in jax_rows}):
        se = best([r for r in jax_rows if r["variant"] == "se" and r["dtype"] == dtype])
        caco = best([r for r in jax_rows if r["variant"] == "caco" and r["dtype"] == dtype])
        if se and caco and (over := ratio(caco, se, "images_per_s")) is not None:
            out[f"caco_over_se_{dtype}"] = target(over, TARGET_CACO_OVER_SE)
    for p in result.get("pipeline", []):
        if "skipped" not in p:
            r = p["e2e_over_synthetic"]
            out[f"e2e_over_synthetic_{p['variant']}_{p['dtype']}"] = target(
                {"median": r, "min": r, "max": r}, TARGET_E2E_OVER_SYNTHETIC
            )
    return out


def _fmt_rate(stats: dict[str, float] | None) -> str:
    if not stats:
        return "-"
    return f"{stats['median']:.1f} ({stats['min']:.1f}-{stats['max']:.1f})"


def _fmt_ratio(stats: dict[str, float] | None) -> str:
    if not stats:
        return "-"
    return f"{stats['median']:.3g} ({stats['min']:.3g}-{stats['max']:.3g})"


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def format_table(result: dict[str, Any]) -> str:
    """Markdown tables: throughput rows with their ratios to torch eager, the grain pipeline, the
    jit-wrapper overhead, and the targets."""
    loads = _loads(result)
    lines = _header_lines(result, loads)
    lines += [_row_line(r) for r in result["rows"]]
    lines += _onnx_lines(result.get("onnx") or {})
    lines += _pipeline_lines(result.get("pipeline", []))
    lines += _overhead_lines(result.get("dispatch_overhead"))
    lines += _target_lines(result, loads)
    return "\n".join(lines)


def _loads(result: dict[str, Any]) -> list[float]:
    """The host's load averages recorded before and after the timed rounds (those known)."""
    load = result.get("load_average") or {}
    return [x for x in (load.get("before"), load.get("after")) if x is not None]


def _host_note(dev: dict[str, Any], torch_info: dict[str, Any], loads: list[float]) -> str:
    """The device line's tail: CPU thread counts (on a CPU) and the host's load average."""
    note = ""
    if dev["platform"] == "cpu":
        note = (
            f"; CPU threads: jax {dev.get('jax_cpu_threads', '?')} (XLA, one per core), "
            f"torch {torch_info.get('torch_threads', 'n/a')}"
        )
    if loads:
        note += (
            f"; host load average {' -> '.join(f'{x:.1f}' for x in loads)} (1 min, before -> after the timed rounds)"
        )
    return note


def _header_lines(result: dict[str, Any], loads: list[float]) -> list[str]:
    """The device and configuration lines, then the main table's header."""
    cfg, dev = result["config"], result["device"]
    torch_info = result.get("torch", {})
    return [
        f"Device: {dev['device_kind']} ({dev['platform']}, {dev['num_devices']} device(s), {dev['host_cpus']} host "
        f"CPUs); torch: {torch_info.get('torch_device', 'n/a')}{_host_note(dev, torch_info, loads)}",
        f"Batch {cfg['batch_size']}, {cfg['image_size']}x{cfg['image_size']} (caco-jax trains from uint8 "
        f"{cfg['load_size']}x{cfg['load_size']}, "
        + ("augmented on device" if cfg.get("augment", True) else "not augmented: normalised only, as torch's input")
        + f"), arch {cfg['arch']}; "
        f"median of {cfg['windows']} windows x {cfg['steps']} steps (min-max), after {cfg['warmup']} warm-up steps; "
        "every row's windows interleaved in the same rounds"
        + (
            "; ratios to torch eager float32 taken round by round (median, min-max)"
            if torch_eager(result["rows"])
            else ""
        ),
        "",
        "| framework | model | mode | train img/s median (min-max) | train step ms | compile s | "
        f"eval img/s (B={cfg['batch_size']}) | batch-1 ms | train / eager | eval / eager | batch-1 / eager | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]


def _row_line(r: dict[str, Any]) -> str:
    """One row of the main table: a measured configuration, or a skipped one with the reason."""
    if "skipped" in r:
        mode = r["mode"] if r["mode"] == r["dtype"] else f"{r['mode']}, {r['dtype']}"
        return f"| {r['framework']} | {r['model']} | {mode} | - | - | - | - | - | - | - | - | skipped: {r['skipped']} |"
    mode = r["mode"] if r["framework"] == "caco-jax" else f"{r['mode']}, {r['dtype']}"
    vs = r.get("vs_torch_eager", {})
    if r["framework"] == "torchvision" and r["mode"] == "eager" and r["dtype"] == "float32":
        cells = ["1 (ref)"] * 3
    else:
        cells = [_fmt_ratio(vs.get(k)) for k in ("train", "eval", "latency")]
    return (
        f"| {r['framework']} | {r['model']} | {mode} | {_fmt_rate(r.get('images_per_s'))} | "
        f"{_fmt(r.get('step_ms'), 2)} | {_fmt(r.get('compile_s'))} | {_fmt_rate(r.get('eval_images_per_s'))} | "
        f"{_fmt(r['latency_ms']['median'], 2) if 'latency_ms' in r else '-'} | {' | '.join(cells)} | |"
    )


def _onnx_lines(onnx: dict[str, Any]) -> list[str]:
    """Why ONNX Runtime was skipped, if it was (its row, when measured, is in the main table)."""
    if onnx.get("present") and "skipped" in onnx:
        return ["", f"ONNX Runtime batch-1 latency: skipped ({onnx['skipped']})"]
    return []


def _pipeline_lines(pipeline: list[dict[str, Any]]) -> list[str]:
    """The grain-pipeline table (its header even when it has no rows)."""
    lines = [
        "",
        "End to end with the grain pipeline (same step, batches from a built HAM10000):",
        "",
        "| variant | dtype | workers | synthetic img/s | grain-fed img/s median (min-max) | ratio | "
        "pipeline alone img/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in pipeline:
        if "skipped" in p:
            lines.append(
                f"| {p.get('variant', '-')} | {p.get('dtype', '-')} | - | - | - | - | skipped: {p['skipped']} |"
            )
        else:
            lines.append(
                f"| {p['variant']} | {p['dtype']} | {p['num_workers']} | {_fmt_rate(p['synthetic_images_per_s'])} | "
                f"{_fmt_rate(p['e2e_images_per_s'])} | {p['e2e_over_synthetic']:.2f} | "
                f"{_fmt_rate(p['pipeline_only_images_per_s'])} |"
            )
    return lines


def _overhead_lines(ov: dict[str, Any] | None) -> list[str]:
    """The jit-wrapper overhead table, or why it was skipped (nothing when it is absent)."""
    if not ov:
        return []
    if "skipped" in ov:
        return ["", f"nnx.jit overhead: skipped ({ov['skipped']})"]
    lines = [
        "",
        f"Per-call cost of the jit wrapper ({ov['arch']}-{ov['variant']}, float32; "
        f"{ov['num_state_arrays']} state arrays). Train step at batch {ov['batch_size']}, "
        f"{ov['image_size']}px; no-op: same arguments, no computation (pure wrapper overhead):",
        "",
        "| wrapper | train step ms (synced) | host ms to issue | no-op call ms | "
        "overhead vs ours: step ms | no-op ms |",
        "|---|---|---|---|---|---|",
    ]
    for name, w in ov["wrappers"].items():
        lines.append(
            f"| {name} | {w['step']['ms']:.2f} | {w['step']['issue_ms']:.2f} | {w['noop']['ms']:.3f} | "
            f"{w['step_overhead_ms']:+.2f} | {w['noop_overhead_ms']:+.3f} |"
        )
    return lines


def _target_lines(result: dict[str, Any], loads: list[float]) -> list[str]:
    """The targets, one line each, after a caveat when the host was oversubscribed while timing."""
    if not result.get("targets"):
        return []
    host_cpus = result["device"]["host_cpus"]
    lines = ["", "Targets:", ""]
    if loads and max(loads) > host_cpus:
        lines += [
            f"(The host was oversubscribed -- load average {max(loads):.1f} on {host_cpus} CPUs: "
            "multi-threaded rates suffer unevenly under load, so these ratios need not hold on a quiet "
            "machine.)",
            "",
        ]
    return lines + [_target_line(name, t) for name, t in result["targets"].items()]


def _target_line(name: str, t: dict[str, Any]) -> str:
    """One target: its ratio (with the rounds' spread), the goal, met or not, and what was compared."""
    extra = f" ({t['jax']} vs torch {t['torch']})" if "jax" in t else ""
    if t.get("same_threads") is False:
        extra += f"; threads differ ({t['threads']}): not the target's comparison"
    elif "threads" in t:
        extra += f"; threads {t['threads']}"
    spread = "" if t["ratio_min"] == t["ratio_max"] else f", rounds {t['ratio_min']:.3g}-{t['ratio_max']:.3g}"
    sign = "<=" if t.get("lower_is_better") else ">="
    return (
        f"- {name}: {t['ratio']:.3g} (target {sign} {t['target']}{spread}): {'met' if t['met'] else 'NOT met'}{extra}"
    )


def jsonable(obj: Any) -> Any:
    """numpy / jax scalars -> Python numbers, recursively."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (np.generic, jnp.ndarray)):
        return np.asarray(obj).item()
    return obj
