"""Where 8 bits break the int8 ONNX export of a run: every quantised activation alone, and kept in float.

    python tools/int8_sensitivity.py --workdir RUN --out docs/int8_sensitivity [--data_dir DIR]

The run's float ONNX export and its int8 QDQ twin (onnxruntime's quantiser with the export's settings,
calibrated on validation images) are built in a temporary folder; everything is scored on the run's
validation split (never its test split): BACC under argmax, agreement of the answered class with float,
and the relative logit error ||z - z_float|| / ||z_float|| (median over images). Then:

1. every quantised activation tensor alone int8 (``only``), screened on a seeded sample of validation
   images by its logit error;
2. the worst of the screen on the whole validation split, alone int8 and as the only one left in float
   (``all_but``);
3. the int8 model with the 1, 2, 4, ... worst tensors kept in float: how many it takes.

The int8 weights alone (activations float) are scored too, and each tensor's float range on the
calibration images (min, max, 0.01 / 99.99 percentiles) says why. Writes ``<out>.json`` and ``<out>.png``
(caco_jax.interop.quant_analysis builds the variants).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile
import time
from typing import Any

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _bacc(pred: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean([np.mean(pred[labels == k] == k) for k in np.unique(labels)]))


def score(model: Any, nchw: np.ndarray, labels: np.ndarray, reference: np.ndarray | None) -> dict[str, float]:
    """BACC (argmax), and against the float logits: class agreement and median relative logit error."""
    from caco_jax.interop.quant_analysis import session_of

    session = session_of(model)
    name = session.get_inputs()[0].name
    logits = np.concatenate(
        [session.run(["logits"], {name: nchw[i : i + 64]})[0] for i in range(0, len(nchw), 64)]
    ).astype(np.float64)
    out = {"bacc": _bacc(logits.argmax(1), labels), "accuracy": float(np.mean(logits.argmax(1) == labels))}
    if reference is not None:
        err = np.linalg.norm(logits - reference, axis=1) / np.maximum(np.linalg.norm(reference, axis=1), 1e-12)
        out["agreement"] = float(np.mean(logits.argmax(1) == reference.argmax(1)))
        out["logit_error"] = float(np.median(err))
    out["_logits"] = logits  # type: ignore[assignment]
    return out


def _public(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if not k.startswith("_")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", type=pathlib.Path, required=True)
    p.add_argument("--out", type=pathlib.Path, required=True, help="<out>.json and <out>.png")
    p.add_argument("--data_dir", type=pathlib.Path, default=None)
    p.add_argument("--calibration_images", type=int, default=256)
    p.add_argument("--limit", type=int, default=0, help="only the first N tensors (a quick look)")
    p.add_argument("--screen_images", type=int, default=256, help="validation images of the one-by-one screen")
    p.add_argument("--worst", type=int, default=12, help="tensors scored on the whole validation split")
    p.add_argument("--worst_float", type=int, default=64, help="up to this many worst tensors kept in float")
    args = p.parse_args(argv)

    import onnx

    from caco_jax.data import registry
    from caco_jax.interop import deploy, quant_analysis
    from caco_jax.interop.export_onnx import export_onnx
    from caco_jax.interop.quantize_onnx import quantize_onnx
    from caco_jax.runs.loading import load_trained

    t0 = time.time()
    config, model, meta, _ = load_trained(args.workdir)
    if args.data_dir is not None:
        config.data.data_dir, config.data.manual_dir = str(args.data_dir), ""
    size = (int(config.data.image_size), int(config.data.image_size))
    calibration = deploy.calibration_images(config, args.workdir, size=size, count=args.calibration_images)
    validation = registry.open_data(config, args.workdir)["validation"]
    images = deploy.normalise(validation.decode(list(range(len(validation))), size))
    nchw = np.ascontiguousarray(images.transpose(0, 3, 1, 2))
    labels = np.asarray(validation.labels)
    with tempfile.TemporaryDirectory() as tmp:
        float_path, prepared, int8 = (pathlib.Path(tmp) / n for n in ("float.onnx", "prepared.onnx", "int8.onnx"))
        export_onnx(model, float_path, image_size=size)
        # every activation in 8 bits (no wide tensor kept in 16): the analysis asks where 8 bits break
        settings = quantize_onnx(float_path, int8, calibration, prepared_path=prepared, wide_ratio=None)
        float_model, int8_model = onnx.load(str(prepared)), onnx.load(str(int8))
    tensors = quant_analysis.quantised_activations(int8_model)
    relus = quant_analysis.folded_relus(float_model, int8_model)
    if args.limit:
        tensors = tensors[: args.limit]
    reference = score(float_model, nchw, labels, None)
    ref_logits = reference["_logits"]
    whole = {
        "float": reference,
        "int8": score(int8_model, nchw, labels, ref_logits),
        "int8_weights_only": score(quant_analysis.weights_only(int8_model, relus), nchw, labels, ref_logits),
    }
    print({k: {m: round(v, 4) for m, v in _public(r).items()} for k, r in whole.items()}, flush=True)
    cal_nchw = np.ascontiguousarray(calibration.transpose(0, 3, 1, 2))
    ranges = quant_analysis.ranges(float_model, cal_nchw, [t.float_name for t in tensors])
    # 1. every tensor alone, screened on a seeded sample of validation images (logit error, agreement)
    sample = np.sort(np.random.default_rng(0).permutation(len(labels))[: args.screen_images])
    screen_ref = ref_logits[sample]
    rows = []
    for i, t in enumerate(tensors):
        scale, zero = quant_analysis.pair_parameters(int8_model, t)
        only = _public(score(quant_analysis.only(float_model, int8_model, t), nchw[sample], labels[sample], screen_ref))
        rows.append(
            {
                "tensor": t.float_name,
                "producer": t.producer,
                "consumers": list(t.consumers),
                "scale": float(np.ravel(scale)[0]),
                "zero_point": int(np.ravel(zero)[0]),
                "zero_point_type": str(zero.dtype),
                "relu_folded": t.name in relus,
                "range": ranges[t.float_name],
                "screen": only,
            }
        )
        if (i + 1) % 25 == 0 or i + 1 == len(tensors):
            print(f"screened {i + 1}/{len(tensors)} in {(time.time() - t0) / 60:.1f} min", flush=True)
    order = sorted(range(len(rows)), key=lambda k: -rows[k]["screen"]["logit_error"])
    # 2. the worst on the whole validation split: alone int8, and every other one int8
    for k in order[: args.worst]:
        t = tensors[k]
        rows[k]["only"] = _public(score(quant_analysis.only(float_model, int8_model, t), nchw, labels, ref_logits))
        rows[k]["all_but"] = _public(score(quant_analysis.all_but(int8_model, t, relus), nchw, labels, ref_logits))
        print(
            f"{t.float_name}: only {rows[k]['only']['bacc']:.3f}, all but {rows[k]['all_but']['bacc']:.3f}", flush=True
        )
    # 3. the int8 model with the n worst (by the screen) kept in float, n = 1, 2, 4, ...
    kept = []
    n = 1
    while n <= min(args.worst_float, len(order)):
        model_n = int8_model
        for k in order[:n]:
            model_n = quant_analysis.all_but(model_n, tensors[k], relus)
        kept.append({"float_tensors": n, **_public(score(model_n, nchw, labels, ref_logits))})
        print(f"{n} worst in float: BACC {kept[-1]['bacc']:.3f}, agreement {kept[-1]['agreement']:.3f}", flush=True)
        n *= 2
    result = {
        "workdir": str(args.workdir),
        "quantisation": settings,
        "validation_images": int(len(labels)),
        "calibration_images": int(len(calibration)),
        "whole": {k: _public(v) for k, v in whole.items()},
        "screen_images": int(len(sample)),
        "tensors": rows,
        "worst_kept_in_float": kept,
        "minutes": (time.time() - t0) / 60,
    }
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    plot(result, args.out.with_suffix(".png"))
    print(markdown(result))
    return 0


def worst(result: dict[str, Any], n: int = 10) -> list[dict[str, Any]]:
    """The ``n`` tensors whose quantisation alone moves the logits most (the screen), scored on the whole
    validation split."""
    scored = [r for r in result["tensors"] if "only" in r]
    return sorted(scored, key=lambda r: -r["screen"]["logit_error"])[:n]


def markdown(result: dict[str, Any], n: int = 10) -> str:
    whole = result["whole"]
    lines = [
        "| tensor | made by | read by | range min / max | 0.01-99.99 % | BACC, it alone int8 | logit error | "
        "BACC, all int8 but it |",
        "|---|---|---|---|---|---:|---:|---:|",
    ]
    for r in worst(result, n):
        g = r["range"]
        lines.append(
            f"| `{r['tensor']}` | {r['producer']} | {', '.join(sorted(set(r['consumers'])))} | "
            f"{g['min']:.2f} / {g['max']:.2f} | {g['p0.01']:.2f} / {g['p99.99']:.2f} | "
            f"{100 * r['only']['bacc']:.1f} % | {r['only']['logit_error']:.3f} | {100 * r['all_but']['bacc']:.1f} % |"
        )
    kept = " ".join(f"{r['float_tensors']}: {100 * r['bacc']:.1f} %;" for r in result.get("worst_kept_in_float", []))
    head = (
        f"Validation BACC (argmax): float {100 * whole['float']['bacc']:.1f} %, "
        f"int8 {100 * whole['int8']['bacc']:.1f} %, "
        f"int8 weights with float activations {100 * whole['int8_weights_only']['bacc']:.1f} %; "
        f"{len(result['tensors'])} quantised activation tensors. With the n worst kept in float, n = {kept}"
    )
    return head + "\n\n" + "\n".join(lines)


def plot(result: dict[str, Any], path: pathlib.Path, n: int = 10) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = worst(result, n)
    whole = result["whole"]
    fig, ax = plt.subplots(figsize=(9, 0.45 * n + 1.5))
    names = [r["tensor"][-40:] for r in rows][::-1]
    ax.barh(names, [100 * r["only"]["bacc"] for r in rows][::-1], color="tab:red", label="only this tensor int8")
    ax.barh(names, [100 * r["all_but"]["bacc"] for r in rows][::-1], color="tab:blue", alpha=0.5,
            label="all int8 but this tensor")  # fmt: skip
    ax.axvline(100 * whole["float"]["bacc"], color="k", ls="--", label="float")
    ax.axvline(100 * whole["int8"]["bacc"], color="tab:gray", ls=":", label="all int8")
    ax.set_xlabel("validation BACC %")
    ax.set_title("int8 ONNX: the activation tensors whose quantisation costs most")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
