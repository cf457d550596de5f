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
the exit status is 1 only if no image could be read. Images are decoded as an image viewer
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
the end of training): ``unlike_training`` says whether it looks unlike the dermoscopy images the
model was trained on (its ``ood_score`` above the guard's threshold; the answer is still given,
marked), and ``reliable`` whether the answer's calibrated confidence reaches the level at which the
run's validation answers were 90 % accurate (best/selective.json). Runs trained before these
existed are said to have none, once; ``caco-jax guard`` fits them.
"""

from __future__ import annotations

import argparse
import csv
import json
import pathlib
import sys
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from caco_jax.cli import common
from caco_jax.data.images import SUFFIXES, UnreadableImage, decode
from caco_jax.errors import UsageError
from caco_jax.evaluation.decision import RULE_TEXT, RULES

if TYPE_CHECKING:  # imported where used: --model must not import JAX
    from caco_jax.serving.portable import PortablePredictor
    from caco_jax.serving.predictor import Predictor

IMAGE_SUFFIXES = set(SUFFIXES)


def find_images(paths: list[pathlib.Path]) -> tuple[list[pathlib.Path], list[tuple[str, str]]]:
    """(image files, [(path, reason skipped)]) for files and folders given on the command line: a
    folder's files without an image suffix are listed as skipped, never dropped silently. A file
    reached twice (given directly and inside a folder, or two overlapping folders) is listed once."""
    files, problems = [], []
    suffixes = "/".join(sorted(IMAGE_SUFFIXES))
    seen: set[pathlib.Path] = set()

    def first(p: pathlib.Path) -> bool:
        key = p.resolve()
        if key in seen:
            return False
        seen.add(key)
        return True

    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file())
            if not found:
                problems.append((str(path), "the folder holds no files"))
            for p in filter(first, found):
                if p.suffix.lower() in IMAGE_SUFFIXES:
                    files.append(p)
                else:
                    problems.append((str(p), f"not an image file (suffix {p.suffix or 'none'}; images are {suffixes})"))
        elif path.is_file():
            if first(path):
                files.append(path)
        else:
            problems.append((str(path), "no such file or folder"))
    return files, problems


def _cam_name(path: pathlib.Path, class_name: str, taken: set[str]) -> str:
    name, n = f"{path.stem}_gradcam_{class_name}.png", 1
    while name in taken:
        n += 1
        name = f"{path.stem}-{n}_gradcam_{class_name}.png"
    taken.add(name)
    return name


def load_images(
    predictor: Predictor | PortablePredictor, files: list[pathlib.Path]
) -> tuple[list[tuple[pathlib.Path, np.ndarray]], list[tuple[str, str]]]:
    """(decoded images, [(path, reason)]): one file's failure never stops the others."""
    loaded, problems = [], []
    for f in files:
        try:
            loaded.append((f, predictor.prepare(f.read_bytes())))
        except UnreadableImage as err:
            problems.append((str(f), str(err)))
        except OSError as err:
            problems.append((str(f), f"cannot be read ({err.strerror or err})"))
        except MemoryError:
            problems.append((str(f), "too large to decode in this machine's memory"))
    return loaded, problems


def predict(
    workdir: pathlib.Path | None,
    paths: list[pathlib.Path],
    *,
    top_k: int = 3,
    batch_size: int = 32,
    weights: pathlib.Path | None = None,
    tta: bool = False,
    calibrate: bool = True,
    cam_dir: pathlib.Path | None = None,
    cam_class: str | None = None,
    decision: str | None = None,
    model: pathlib.Path | None = None,
) -> tuple[list[dict], list[tuple[str, str]]]:
    """Predictions (one dict per readable image) and problems (path, reason), from the run in ``workdir``
    or, with ``model``, from an exported model (no Grad-CAM then).

    Each row names its ``decision`` rule and ``prediction``; ``top`` and ``probabilities`` are
    what the rule reads the answer from (``model_probabilities`` beside them under the balanced
    rule). With ``cam_dir``, a Grad-CAM overlay of each image is written there (``cam`` in its row)."""
    predictor: Predictor | PortablePredictor
    if model is not None:
        from caco_jax.serving.portable import PortablePredictor

        if cam_dir is not None:
            raise UsageError("--cam needs the run's weights (Grad-CAM takes gradients): use --workdir, not --model")
        predictor = PortablePredictor(model, calibrate=calibrate, decision=decision, batch_size=batch_size)
    else:
        from caco_jax.serving.predictor import Predictor

        assert workdir is not None  # one of --workdir / --model is required
        predictor = Predictor(workdir, weights, calibrate=calibrate, batch_size=batch_size, decision=decision)
    class_names = predictor.class_names
    target = None if cam_class is None else predictor.class_index(cam_class)
    files, problems = find_images(paths)
    loaded, unreadable = load_images(predictor, files)
    problems += unreadable
    if not loaded:
        return [], problems
    images = np.stack([im for _, im in loaded])
    answer = predictor.decide(images, tta=tta)
    guarded = predictor.unlike(images)
    threshold = predictor.confidence_threshold
    rows = []
    for i, (f, _) in enumerate(loaded):
        p = answer.probabilities[i]
        confidence = float(answer.model_probabilities[i, int(answer.classes[i])])
        order = np.argsort(-p)[: min(top_k, len(class_names))]
        row = {
            "file": str(f),
            "decision": answer.rule,
            "prediction": class_names[int(answer.classes[i])],
            "top": [{"class": class_names[k], "probability": float(p[k])} for k in order],
            "probabilities": {c: float(v) for c, v in zip(class_names, p, strict=True)},
            "temperature": predictor.temperature,
            "tta": tta,
            "confidence": confidence,
        }
        row["reliable"] = None if threshold is None else bool(confidence >= threshold)
        row["unlike_training"] = None if guarded is None else bool(guarded[1][i])
        row["ood_score"] = None if guarded is None else float(guarded[0][i])
        if answer.rule != "argmax":
            row["model_probabilities"] = {
                c: float(v) for c, v in zip(class_names, answer.model_probabilities[i], strict=True)
            }
        rows.append(row)
    if cam_dir is not None:
        assert isinstance(predictor, Predictor)
        write_cams(predictor, loaded, rows, cam_dir, answer.classes if target is None else target)
    return rows, problems


def write_cams(
    predictor: Predictor,
    loaded: list[tuple[pathlib.Path, np.ndarray]],
    rows: list[dict],
    cam_dir: pathlib.Path,
    target: np.ndarray | int,
) -> None:
    """A Grad-CAM overlay of each image (at its own resolution, upright) for ``target``."""
    from caco_jax.evaluation.saliency import overlay

    cam_dir.mkdir(parents=True, exist_ok=True)
    _, classes, cams = predictor.explain(np.stack([im for _, im in loaded]), target)
    taken: set[str] = set()
    for row, (f, _), cls, cam in zip(rows, loaded, classes, cams, strict=True):
        name = predictor.class_names[int(cls)]
        out = cam_dir / _cam_name(f, name, taken)
        Image.fromarray(overlay(decode(f.read_bytes()), cam)).save(out)
        row["cam"] = {"file": str(out), "class": name}


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
    if row["unlike_training"]:
        return "UNLIKE THE TRAINING IMAGES"
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
    if any(r["unlike_training"] for r in rows):
        print(
            "UNLIKE THE TRAINING IMAGES: the image does not look like the dermoscopy images the model was trained "
            "on; its answer is shown but means little."
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
        w.writerow(["file", "prediction", "decision", "unlike_training", "ood_score", "confidence", "reliable", *names])
        for r in rows:
            guard = ["" if r[k] is None else r[k] for k in ("unlike_training", "ood_score")]
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
    return 0 if rows else 1


def main(argv: list[str] | None = None) -> int:
    return common.main(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
