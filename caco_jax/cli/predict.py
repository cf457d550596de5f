"""Classify dermoscopy images with a trained run: top-k classes with probabilities.

    caco-jax predict --workdir runs/caco IMAGE_OR_FOLDER... [--top_k 3] \\
        [--csv predictions.csv] [--json predictions.json] [--tta] [--cam OUT_DIR [--cam_class mel]]

Folders are searched recursively for .jpg/.jpeg/.png/.bmp. Unreadable files are
reported and skipped; the exit status is 1 only if no image could be read.
Probabilities use the temperature saved with the weights (calibration.json, fitted on
the validation split at the end of training) unless --no_calibration; --tta averages
them over the 8 flips and 90-degree rotations; --cam writes a Grad-CAM overlay per image
(for the predicted class, or --cam_class) at the image's own resolution.
"""
from __future__ import annotations

import argparse
import csv
import json
import pathlib
import sys

import numpy as np
from PIL import Image

from caco_jax.cli import common
from caco_jax.errors import UsageError
from caco_jax.training import compile_cache
from caco_jax.data.images import UnreadableImage, decode
from caco_jax.serving.predictor import Predictor
from caco_jax.evaluation.saliency import overlay

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}


def find_images(paths: list[pathlib.Path]) -> tuple[list[pathlib.Path], list[tuple[str, str]]]:
    """(image files, [(path, problem)]) for files and folders given on the command line."""
    files, problems = [], []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not found:
                problems.append((str(path), "folder holds no .jpg/.jpeg/.png/.bmp files"))
            files += found
        elif path.is_file():
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


def predict(workdir: pathlib.Path, paths: list[pathlib.Path], *, top_k: int = 3, batch_size: int = 32,
            weights: pathlib.Path | None = None, tta: bool = False, calibrate: bool = True,
            cam_dir: pathlib.Path | None = None, cam_class: str | None = None
            ) -> tuple[list[dict], list[tuple[str, str]]]:
    """Predictions (one dict per readable image) and problems (path, reason).

    With ``cam_dir``, a Grad-CAM overlay of each image is written there (``cam`` in its row)."""
    predictor = Predictor(workdir, weights, calibrate=calibrate, batch_size=batch_size)
    class_names = predictor.class_names
    target = None if cam_class is None else predictor.class_index(cam_class)
    files, problems = find_images(paths)
    loaded: list[tuple[pathlib.Path, np.ndarray]] = []
    for f in files:
        try:
            loaded.append((f, predictor.prepare(f.read_bytes())))
        except (UnreadableImage, OSError, ValueError) as err:
            problems.append((str(f), f"not a readable image ({err})"))
    images = np.stack([im for _, im in loaded]) if loaded else np.zeros((0, 1, 1, 3), np.uint8)
    probs = predictor.probabilities(images, tta=tta) if loaded else np.zeros((0, len(class_names)))
    rows = []
    for (f, _), p in zip(loaded, probs):
        order = np.argsort(-p)[:min(top_k, len(class_names))]
        rows.append({"file": str(f), "top": [{"class": class_names[i], "probability": float(p[i])} for i in order],
                     "probabilities": {c: float(v) for c, v in zip(class_names, p)},
                     "temperature": predictor.temperature, "tta": tta})
    if cam_dir is not None and loaded:
        cam_dir.mkdir(parents=True, exist_ok=True)
        _, classes, cams = predictor.explain(images, target)
        taken: set[str] = set()
        for row, (f, _), cls, cam in zip(rows, loaded, classes, cams):
            original = decode(f.read_bytes())
            out = cam_dir / _cam_name(f, class_names[int(cls)], taken)
            Image.fromarray(overlay(original, cam)).save(out)
            row["cam"] = {"file": str(out), "class": class_names[int(cls)]}
    return rows, problems


NAME = "predict"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", type=pathlib.Path, metavar="IMAGE_OR_FOLDER",
                   help="image files, or folders searched recursively for .jpg/.jpeg/.png/.bmp")
    p.add_argument("--workdir", type=pathlib.Path, required=True, help="a training run (caco-jax train --workdir)")
    p.add_argument("--weights", type=pathlib.Path, help="weights directory (default: WORKDIR/best)")
    p.add_argument("--top_k", type=int, default=3, help="classes listed per image (default: 3)")
    p.add_argument("--batch_size", type=int, default=32, help="images per forward pass (default: 32)")
    p.add_argument("--csv", type=pathlib.Path, metavar="FILE", help="also write one row per image to FILE")
    p.add_argument("--json", type=pathlib.Path, metavar="FILE",
                   help="also write every prediction and every skipped file to FILE")
    common.add_switch(p, "tta", False, "average the probabilities over the 8 flips / 90-degree rotations")
    common.add_switch(p, "calibration", True, "divide the logits by the temperature saved with the weights")
    p.add_argument("--cam", type=pathlib.Path, metavar="DIR", help="write a Grad-CAM overlay of each image to DIR")
    p.add_argument("--cam_class", metavar="CLASS",
                   help="class the heat maps explain (default: each image's predicted class); needs --cam")
    common.add_common(p)


def run(args: argparse.Namespace) -> int:
    if args.top_k < 1:
        raise UsageError("--top_k must be at least 1")
    if args.batch_size < 1:
        raise UsageError("--batch_size must be at least 1")
    if args.cam_class and not args.cam:
        raise UsageError("--cam_class needs --cam DIR")
    compile_cache.enable(args.compile_cache)
    rows, problems = predict(args.workdir, args.inputs, top_k=args.top_k, batch_size=args.batch_size,
                             weights=args.weights, tta=args.tta, calibrate=args.calibration,
                             cam_dir=args.cam, cam_class=args.cam_class)
    if rows:
        t = rows[0]["temperature"]
        print(("temperature " + (f"{t:.3f}" if t else "none (plain softmax)"))
              + (", 8-view test-time augmentation" if args.tta else ""))
        width = max([len(r["file"]) for r in rows] + [4])
        print(f"{'file':<{width}}  " + "  ".join(f"top{i + 1:<13}" for i in range(args.top_k)))
        for r in rows:
            print(f"{r['file']:<{width}}  " + "  ".join(f"{t['class']:>5} {t['probability']:6.1%}     "
                                                      for t in r["top"]))
    if args.cam and rows:
        print(f"Grad-CAM overlays: {args.cam}")
    for path, why in problems:
        print(f"skipped {path}: {why}", file=sys.stderr)
    if args.csv:
        with open(args.csv, "w", newline="") as fh:
            w = csv.writer(fh)
            names = list(rows[0]["probabilities"]) if rows else []
            w.writerow(["file", "prediction", *names])
            for r in rows:
                w.writerow([r["file"], r["top"][0]["class"], *(f"{r['probabilities'][c]:.6f}" for c in names)])
    if args.json:
        args.json.write_text(json.dumps({"predictions": rows, "skipped": [{"file": f, "reason": w} for f, w in problems]},
                                        indent=2))
    if not rows:
        print("error: no image could be read", file=sys.stderr)
    return 0 if rows else 1


def main(argv: list[str] | None = None) -> int:
    return common.main(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
