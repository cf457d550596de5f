"""Classify dermoscopy images with a trained run or an exported model: top-k classes with probabilities.

    caco-jax predict --workdir runs/caco IMAGE_OR_FOLDER... [--top_k 3] [--decision argmax|balanced] \\
        [--csv predictions.csv] [--json predictions.json] [--tta] [--cam OUT_DIR [--cam_class mel]]
    caco-jax predict --model caco_int8.tflite IMAGE_OR_FOLDER...     # an export: no JAX needed

``--model`` takes a file from ``caco-jax export`` (.onnx or .tflite, its metadata JSON beside it) and
answers with the same preprocessing, temperature, decision rules, test-time augmentation, reliability
threshold and out-of-distribution guard, through onnxruntime or the LiteRT interpreter alone
(``caco_jax.serving.portable``; neither JAX nor torch is imported; no Grad-CAM).

Folders are searched recursively for .jpg/.jpeg/.png/.bmp/.gif/.tif/.tiff/.webp files. Every
file that is not classified is listed with a plain reason (not an image, damaged, too large,
an animation, another kind of file in a folder) and the others are classified all the same;
the exit status is 2 (bad input) only if no image could be read. Images are decoded as an image viewer
shows them (EXIF orientation applied, 16-bit and palette images converted).

Probabilities use the temperature saved with the weights (calibration.json, fitted on
the validation split at the end of training) unless --no_calibration; --tta averages
them over the 8 flips and 90-degree rotations. --decision picks the rule that names the
answer: argmax (the most probable class) or balanced (the rule fitted on the validation
split at the end of training, decision.json: equal recall across classes; its
probabilities are re-weighted to the prior it assumes); the default is the run's
``evaluation.decision`` (argmax for runs that predate it). The table's header, the CSV's
``decision`` column and the JSON's ``decision`` field say which rule answered. --cam writes
a Grad-CAM overlay per image (for the answered class, or --cam_class) at the image's own
resolution.

Each image is also checked against the run's out-of-distribution guard (best/ood.json, fitted at
the end of training), which gives two answers: ``not_dermoscopy`` (its ``far_score`` is beyond every
dermoscopy image the guard knows, acquisition-shifted copies included: a photograph, a document,
noise; its answer is void and never ``reliable``) and ``unlike_training`` (a dermoscopy image whose
acquisition differs from the training images, its ``ood_score`` above the guard's threshold: the
answer is given, marked, and ``caco-jax adapt`` can adapt the run to such a clinic's images).
``reliable`` says whether the answer's calibrated confidence reaches the level at which the run's
validation answers were 90 % accurate (best/selective.json). Runs trained before these existed are
said to have none, once; ``caco-jax guard`` fits them.
"""

from __future__ import annotations

import argparse
import csv
import json
import pathlib
import sys

from caco_jax.cli import common
from caco_jax.data.images import SUFFIXES
from caco_jax.errors import EXIT_USAGE, UsageError
from caco_jax.evaluation.decision import RULE_TEXT, RULES
from caco_jax.serving.classify import predict

NAME = "predict"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "inputs",
        nargs="+",
        type=pathlib.Path,
        metavar="IMAGE_OR_FOLDER",
        help=f"image files, or folders searched recursively for {'/'.join(SUFFIXES)} files",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--workdir", type=pathlib.Path, help="a training run (caco-jax train --workdir)")
    source.add_argument(
        "--model", type=pathlib.Path, metavar="FILE", help="an exported model (.onnx or .tflite from caco-jax export)"
    )
    p.add_argument("--weights", type=pathlib.Path, help="weights directory (default: WORKDIR/best)")
    p.add_argument("--top_k", type=int, default=3, help="classes listed per image (default: 3)")
    p.add_argument(
        "--decision",
        choices=RULES,
        default=None,
        help="the rule that names each answer: argmax (the most probable class) or balanced (fitted on "
        "the validation split at the end of training: equal recall across classes); default: the "
        "run's evaluation.decision, argmax for runs without one",
    )
    p.add_argument("--batch_size", type=int, default=32, help="images per forward pass (default: 32)")
    p.add_argument("--csv", type=pathlib.Path, metavar="FILE", help="also write one row per image to FILE")
    p.add_argument(
        "--json", type=pathlib.Path, metavar="FILE", help="also write every prediction and every skipped file to FILE"
    )
    common.add_switch(p, "tta", False, "average the probabilities over the 8 flips / 90-degree rotations")
    common.add_switch(p, "calibration", True, "divide the logits by the temperature saved with the weights")
    p.add_argument("--cam", type=pathlib.Path, metavar="DIR", help="write a Grad-CAM overlay of each image to DIR")
    p.add_argument(
        "--cam_class", metavar="CLASS", help="class the heat maps explain (default: each image's answer); needs --cam"
    )
    common.add_common(p)


def _note(row: dict) -> str:
    if row.get("not_dermoscopy"):
        return "NOT DERMOSCOPY: answer void"
    if row["unlike_training"]:
        return "ANOTHER ACQUISITION"
    return "low confidence" if row["reliable"] is False else ""


def print_table(rows: list[dict], top_k: int) -> None:
    """The header line (decision rule, temperature, TTA), one line per image (with a note when the
    image is unlike the training images or the answer unreliable), and what the notes mean."""
    first = rows[0]
    t = first["temperature"]
    print(
        f"decision rule {RULE_TEXT[first['decision']]}; temperature "
        + (f"{t:.3f}" if t else "none (plain softmax)")
        + ("; 8-view test-time augmentation" if first["tta"] else "")
    )
    width = max([len(r["file"]) for r in rows] + [4])
    print(f"{'file':<{width}}  " + "  ".join(f"top{i + 1:<13}" for i in range(top_k)))
    for r in rows:
        top = "  ".join(f"{t['class']:>5} {t['probability']:6.1%}     " for t in r["top"])
        print(f"{r['file']:<{width}}  {top}{_note(r)}")
    if any(r.get("not_dermoscopy") for r in rows):
        print(
            "NOT DERMOSCOPY: the image is far from every dermoscopy image the guard knows (a photograph, a "
            "document, noise ...); the model only knows skin lesions under a dermatoscope, so its answer is void."
        )
    if any(r["unlike_training"] for r in rows):
        print(
            "ANOTHER ACQUISITION: a dermoscopy image whose camera, light or field of view differs from the "
            "training images; the answer is given but is wrong more often there (docs/results_sources_cpu.md); "
            "caco-jax adapt --workdir RUN --images YOUR_IMAGES --out NEW_RUN adapts the run to a clinic's images."
        )
    if any(r["reliable"] is False and not r["unlike_training"] for r in rows):
        print("low confidence: below the confidence at which this run's validation answers were 90 % accurate.")
    if rows[0]["unlike_training"] is None:
        print(
            "(this run has no out-of-distribution guard: caco-jax guard --workdir RUN fits one; "
            "an exported model carries it once exported again)",
            file=sys.stderr,
        )


def write_csv(path: pathlib.Path, rows: list[dict]) -> None:
    """One row per image: file, prediction, decision rule, the guard's verdict and score, the answer's
    confidence and whether it reaches the run's reliable level, then the probabilities the rule read."""
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        names = list(rows[0]["probabilities"]) if rows else []
        guard_keys = ("not_dermoscopy", "far_score", "unlike_training", "ood_score")
        w.writerow(["file", "prediction", "decision", *guard_keys, "confidence", "reliable", *names])
        for r in rows:
            guard = ["" if r.get(k) is None else r[k] for k in guard_keys]
            w.writerow(
                [r["file"], r["prediction"], r["decision"], *guard, f"{r['confidence']:.6f}"]
                + ["" if r["reliable"] is None else r["reliable"]]
                + [f"{r['probabilities'][c]:.6f}" for c in names]
            )


def run(args: argparse.Namespace) -> int:
    if args.top_k < 1:
        raise UsageError("--top_k must be at least 1")
    if args.batch_size < 1:
        raise UsageError("--batch_size must be at least 1")
    if args.cam_class and not args.cam:
        raise UsageError("--cam_class needs --cam DIR")
    if args.model is not None and args.weights is not None:
        raise UsageError("--weights belongs to --workdir; an exported --model carries its weights")
    if args.model is None:
        from caco_jax.training import compile_cache

        compile_cache.enable(args.compile_cache)
    rows, problems = predict(
        args.workdir,
        args.inputs,
        top_k=args.top_k,
        batch_size=args.batch_size,
        weights=args.weights,
        tta=args.tta,
        calibrate=args.calibration,
        cam_dir=args.cam,
        cam_class=args.cam_class,
        decision=args.decision,
        model=args.model,
    )
    if rows:
        print_table(rows, args.top_k)
    if args.cam and rows:
        print(f"Grad-CAM overlays: {args.cam}")
    for path, why in problems:
        print(f"skipped {path}: {why}", file=sys.stderr)
    if args.csv:
        write_csv(args.csv, rows)
        print(f"CSV ({len(rows)} rows): {args.csv}")
    if args.json:
        args.json.write_text(
            json.dumps({"predictions": rows, "skipped": [{"file": f, "reason": w} for f, w in problems]}, indent=2)
        )
        print(f"JSON ({len(rows)} predictions, {len(problems)} skipped): {args.json}")
    if not rows:
        print("error: no image could be read", file=sys.stderr)
    return 0 if rows else EXIT_USAGE


def main(argv: list[str] | None = None) -> int:
    return common.main(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
