"""Measure a run's deployment exports side by side: size, batch-1 latency, test figures against JAX float32.

    python tools/measure_exports.py --workdir RUN --out docs/deploy_measured.json [--data_dir DIR]

For JAX float32 (the run's own predictor), ONNX float32 / int8 and LiteRT float32 / int8 (when the
litert extra is installed): the file size; the median batch-1 latency over ``--calls`` calls with 1
thread and with all threads (JAX's 1-thread figure from a child process with XLA's CPU threading off);
and on the run's test split, answered as ``caco-jax predict`` answers (the run's decision rule and
test-time augmentation, through ``caco_jax.serving.portable`` for the exports), accuracy, BACC and
macro AUC, each format's paired difference to JAX float32 with its 95 % lesion-bootstrap interval
(``caco_jax.evaluation.intervals.paired``), and the share of test images whose class changes.
When an int8 export loses more than one BACC point, the remedies are measured too (per-tensor weights,
more calibration images, the attention gates left in float). The run is only read; exports go to a
temporary folder (or ``--exports``).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _dir_size(path: pathlib.Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size


def _median_ms(call, x: np.ndarray, calls: int, warmup: int = 5) -> float:
    for _ in range(warmup):
        call(x)
    ms = []
    for _ in range(calls):
        start = time.perf_counter()
        call(x)
        ms.append(1e3 * (time.perf_counter() - start))
    return statistics.median(ms)


def jax_latency(workdir: pathlib.Path, calls: int) -> float:
    """Batch-1 latency of the run's JAX predictor (threads: as this process's XLA flags say)."""
    from caco_jax.serving.predictor import Predictor

    predictor = Predictor(workdir, batch_size=1)
    x = np.zeros((1, predictor.image_size, predictor.image_size, 3), np.uint8)
    return _median_ms(lambda im: predictor.probabilities(im), x, calls)


def jax_latency_one_thread(workdir: pathlib.Path, calls: int) -> float:
    env = dict(os.environ, XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); from tools.measure_exports import jax_latency; "
        "import pathlib; print(jax_latency(pathlib.Path(sys.argv[2]), int(sys.argv[3])))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(ROOT), str(workdir), str(calls)], env=env, capture_output=True, text=True
    )
    if out.returncode:
        raise RuntimeError(out.stderr[-2000:])
    return float(out.stdout.strip().splitlines()[-1])


def test_split(config: Any, workdir: pathlib.Path, data_dir: pathlib.Path | None) -> dict[str, Any]:
    """The run's test images (uint8, at its input size), labels and lesion ids."""
    from caco_jax.data import records, registry

    if data_dir is not None:
        config.data.data_dir, config.data.manual_dir = str(data_dir), ""
    splits = registry.open_data(config, workdir)
    test = splits["test"]
    size = int(config.data.image_size)
    return {
        "images": records.decode_all(test, size),
        "labels": np.asarray(test.labels),
        "groups": np.asarray(test.lesion_ids),
        "splits": splits,
    }


def marks(predictor: Any, answer: Any, images: np.ndarray, tta: bool) -> dict[str, Any]:
    """The shares of test images the run's guard flags (either answer; "not dermoscopy" alone) and of
    answers marked reliable (calibrated confidence at or above the run's threshold), as predict gives them."""
    from caco_jax.evaluation import selective

    out: dict[str, Any] = {"guard_flagged": None, "not_dermoscopy": None, "reliable": None}
    screen = predictor.screen(images)
    if screen is not None:
        out["guard_flagged"] = float(np.mean(screen.unlike_training | screen.not_dermoscopy))
        out["not_dermoscopy"] = float(np.mean(screen.not_dermoscopy))
    threshold = predictor.confidence_threshold(tta)
    if threshold is not None:
        conf = selective.confidence(answer.model_probabilities, answer.classes)
        out["reliable"] = float(np.mean(conf >= threshold))
    return out


def figures(answer: Any, labels: np.ndarray, groups: np.ndarray, reference: Any | None) -> dict[str, Any]:
    from caco_jax.evaluation import intervals

    ones = np.ones((1, len(labels)))
    point = intervals.metric_samples(answer.model_probabilities, labels, ones, answer.classes)
    out: dict[str, Any] = {k: float(point[k][0]) for k in ("accuracy", "bacc", "macro_auc")}
    if reference is not None:
        a = {"probs": answer.model_probabilities, "labels": labels, "predicted": answer.classes}
        b = {"probs": reference.model_probabilities, "labels": labels, "predicted": reference.classes}
        out["vs_jax"] = {k: v for k, v in intervals.paired(a, b, groups).items() if k != "method"}
        out["class_changed"] = float(np.mean(answer.classes != reference.classes))
    return out


def measure_export(path: pathlib.Path, data: dict, reference: Any, args: argparse.Namespace) -> dict[str, Any]:
    from caco_jax.serving.portable import PortablePredictor

    row: dict[str, Any] = {"file": path.name, "size_mb": path.stat().st_size / 1e6}
    one = PortablePredictor(path, threads=1)
    every = PortablePredictor(path, threads=os.cpu_count() or 1)
    x = one.normalise(data["images"][:1])
    row["latency_ms_1_thread"] = _median_ms(one.run, x, args.calls)
    row["latency_ms_all_threads"] = _median_ms(every.run, x, args.calls)
    row["quantization"] = one.meta.get("quantization")
    answer = every.decide(data["images"], tta=args.tta)
    row.update(figures(answer, data["labels"], data["groups"], reference))
    return row | marks(every, answer, data["images"], args.tta)


def export_all(model: Any, run: dict, out: pathlib.Path, calibration: np.ndarray, litert: bool) -> dict[str, Any]:
    from caco_jax.interop import deploy

    written = deploy.export_models(
        model,
        run,
        onnx=out / "model.onnx",
        tflite=out / "model.tflite" if litert else None,
        calibration=calibration,
        calibration_source=f"{len(calibration)} validation images",
    )
    return {p.name: p for p in written}


def remedies(model: Any, run: dict, out: pathlib.Path, data: dict, reference: Any, args, litert: bool) -> list:
    """The usual remedies for an int8 export that loses more than a BACC point, each measured."""
    from caco_jax.interop import artifact, deploy
    from caco_jax.interop.export_onnx import INPUT_NAME
    from caco_jax.interop.quantize_onnx import quantize_onnx

    rows = []
    more = deploy.calibration_images(args.config, args.workdir, size=tuple(run["image_size"]), count=1024)
    few = more[: args.calibration_images]
    trials = [
        ("onnx int8, per-tensor weights", "onnx", {"per_channel": False}, few),
        ("onnx int8, 1024 calibration images", "onnx", {}, more),
        ("onnx int8, attention gates in float", "onnx", {"float_ops": ("Sigmoid", "HardSigmoid", "Mul")}, few),
        ("onnx int8, entropy calibration", "onnx", {"method": "entropy"}, few),
        ("onnx int8 weights, int16 activations", "onnx", {"activations": "int16"}, few),
    ]
    if litert:
        trials += [
            ("litert int8, per-tensor weights", "litert", {"per_channel": False}, few),
            ("litert int8, 1024 calibration images", "litert", {}, more),
        ]
    for name, fmt, options, calibration in trials:
        target = out / f"remedy_{len(rows)}{'.onnx' if fmt == 'onnx' else '.tflite'}"
        if fmt == "onnx":
            settings = quantize_onnx(out / "model.onnx", target, calibration, **options)
            artifact.write(target, run, layout="NCHW", input_name=INPUT_NAME, precision="int8", quantization=settings)
        else:
            from caco_jax.interop.export_litert import export_litert_int8

            size = tuple(run["image_size"])
            key, settings = export_litert_int8(model, target, calibration, image_size=size, **options)
            artifact.write(target, run, layout="NHWC", input_name=key, precision="int8", quantization=settings)
        rows.append({"remedy": name, **measure_export(target, data, reference, args)})
        print(json.dumps(rows[-1], default=float), flush=True)
    return rows


def eight_bit(model: Any, run: dict, out: pathlib.Path, calibration: np.ndarray, data: dict, reference: Any, args,
              litert: bool) -> list[dict]:  # fmt: skip
    """The int8 files as they were before issue 40's remedies, beside the defaults: the ONNX one with every
    activation in 8 bits; the LiteRT one with every activation in 8 bits and the attention's squeeze MLPs
    shared by both branches (so float32)."""
    from caco_jax.interop import artifact
    from caco_jax.interop.export_onnx import INPUT_NAME
    from caco_jax.interop.quantize_onnx import quantize_onnx

    target = out / "eight_bit.onnx"
    settings = quantize_onnx(out / "model.onnx", target, calibration, wide_ratio=None)
    artifact.write(target, run, layout="NCHW", input_name=INPUT_NAME, precision="int8", quantization=settings)
    rows = [{"remedy": "onnx int8, every activation in 8 bits (the default before)",
             **measure_export(target, data, reference, args)}]  # fmt: skip
    if litert:
        from caco_jax.interop.export_litert import export_litert_int8

        target = out / "eight_bit.tflite"
        key, settings = export_litert_int8(
            model, target, calibration, image_size=tuple(run["image_size"]), wide_ratio=None, unshared=False
        )
        artifact.write(target, run, layout="NHWC", input_name=key, precision="int8", quantization=settings)
        rows.append({"remedy": "litert int8, every activation in 8 bits, shared squeeze MLPs (the default before)",
                     **measure_export(target, data, reference, args)})  # fmt: skip
    for row in rows:
        print(json.dumps(row, default=float), flush=True)
    return rows


def _diff(row: dict, key: str, scale: float = 100.0, digits: int = 1) -> str:
    if "vs_jax" not in row:
        return "-"
    d = row["vs_jax"][key]
    lo, hi = d["interval"]
    return f"{scale * d['difference']:+.{digits}f} [{scale * lo:+.{digits}f}, {scale * hi:+.{digits}f}]"


def markdown(rows: list[dict], label: str = "format") -> str:
    """The measured table: size, latency, test figures and the paired differences to JAX float32."""
    lines = [
        f"| {label} | size MB | batch-1 ms, 1 thread | all threads | accuracy | BACC | macro AUC "
        "| accuracy vs JAX, points | BACC vs JAX, points | AUC vs JAX, x100 | class changed |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        changed = f"{100 * r['class_changed']:.1f} %" if "class_changed" in r else "-"
        lines.append(
            f"| {r.get(label, r.get('format', r.get('remedy')))} | {r['size_mb']:.1f} | {r['latency_ms_1_thread']:.2f} "
            f"| {r['latency_ms_all_threads']:.2f} | {100 * r['accuracy']:.1f} % | {100 * r['bacc']:.1f} % "
            f"| {r['macro_auc']:.3f} | {_diff(r, 'accuracy')} | {_diff(r, 'bacc')} | {_diff(r, 'macro_auc', 100, 1)} "
            f"| {changed} |"
        )
    return "\n".join(lines)


def marks_table(rows: list[dict], label: str = "format") -> str:
    """What predict adds to each answer, per file: the shares of test images the guard flags (and calls
    "not dermoscopy") and of answers marked reliable."""

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.1f} %"

    lines = [f"| {label} | guard flags | called 'not dermoscopy' | marked reliable |", "|---|---|---|---|"]
    for r in rows:
        name = r.get(label, r.get("format", r.get("remedy")))
        lines.append(f"| {name} | {pct(r['guard_flagged'])} | {pct(r['not_dermoscopy'])} | {pct(r['reliable'])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", type=pathlib.Path, required=True)
    p.add_argument("--out", type=pathlib.Path, required=True, help="JSON of every figure")
    p.add_argument("--data_dir", type=pathlib.Path, help="TFDS data_dir holding the run's build (default: its own)")
    p.add_argument("--exports", type=pathlib.Path, help="where to write the exports (default: a temporary folder)")
    p.add_argument("--calls", type=int, default=200, help="timed batch-1 calls per format and thread setting")
    p.add_argument("--calibration_images", type=int, default=256)
    p.add_argument("--no_tta", dest="tta", action="store_false", help="answer without test-time augmentation")
    p.add_argument("--no_remedies", dest="remedies", action="store_false")
    args = p.parse_args(argv)
    from caco_jax.interop import artifact, deploy
    from caco_jax.runs.loading import load_trained
    from caco_jax.serving.predictor import Predictor

    config, model, meta, weights = load_trained(args.workdir)
    args.config = config
    args.tta = args.tta and bool(config.evaluation.tta)
    size = (int(config.data.image_size),) * 2
    data = test_split(config, args.workdir, args.data_dir)
    run = artifact.describe_run(
        weights,
        class_names=meta["class_names"],
        image_size=size,
        default_decision=config.evaluation.decision,
        tta=args.tta,
        model={"arch": model.arch, "attention": model.attention_name, "num_classes": model.num_classes},
    )
    try:
        import litert_torch  # noqa: F401

        litert = True
    except ImportError:
        litert = False
    jax_predictor = Predictor(args.workdir)
    reference = jax_predictor.decide(data["images"], tta=args.tta)
    rows = [
        {
            "format": "JAX float32",
            "file": "best/weights (orbax)",
            "size_mb": _dir_size(weights / "weights") / 1e6,
            "latency_ms_1_thread": jax_latency_one_thread(args.workdir, args.calls),
            "latency_ms_all_threads": jax_latency(args.workdir, args.calls),
            **figures(reference, data["labels"], data["groups"], None),
            **marks(jax_predictor, reference, data["images"], args.tta),
        }
    ]
    print(json.dumps(rows[-1], default=float), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        out = args.exports or pathlib.Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        calibration = deploy.calibration_images(config, args.workdir, size=size, count=args.calibration_images)
        files = export_all(model, run, out, calibration, litert)
        names = {"model.onnx": "ONNX float32", "model_int8.onnx": "ONNX int8"}
        names |= {"model.tflite": "LiteRT float32", "model_int8.tflite": "LiteRT int8"}
        for name, label in names.items():
            if name in files:
                rows.append({"format": label, **measure_export(files[name], data, reference, args)})
                print(json.dumps(rows[-1], default=float), flush=True)
        worst = min(r["vs_jax"]["bacc"]["difference"] for r in rows if "int8" in r["format"])
        tried = remedies(model, run, out, data, reference, args, litert) if args.remedies and worst < -0.01 else []
        tried = eight_bit(model, run, out, calibration, data, reference, args, litert) + tried
    result = {
        "workdir": str(args.workdir),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs ({platform.platform()})",
        "image_size": size,
        "test_images": int(len(data["labels"])),
        "decision": reference.rule,
        "tta": args.tta,
        "calls": args.calls,
        "calibration": f"{args.calibration_images} validation images",
        "litert": litert,
        "rows": rows,
        "remedies": tried,
    }
    args.out.write_text(json.dumps(result, indent=2, default=float))
    print(markdown(rows))
    if tried:
        print(markdown(tried, "remedy"))
    print(marks_table(rows + tried))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
