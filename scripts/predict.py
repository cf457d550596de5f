"""Classify dermoscopy images with a trained run: top-k classes with probabilities.

    python scripts/predict.py --workdir runs/caco IMAGE_OR_FOLDER... [--top_k 3] \\
        [--csv predictions.csv] [--json predictions.json]

Folders are searched recursively for .jpg/.jpeg/.png/.bmp. Unreadable files are
reported and skipped; the exit status is 1 only if no image could be read.
"""
from __future__ import annotations

import argparse
import csv
import json
import pathlib
import sys

import jax
import numpy as np

from caco_jax import compile_cache, parallel
from caco_jax.data.images import UnreadableImage, decode
from caco_jax.evaluate import load_trained
from caco_jax.steps import ModelDef, build_steps

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


def predict(workdir: pathlib.Path, paths: list[pathlib.Path], *, top_k: int = 3, batch_size: int = 32,
            weights: pathlib.Path | None = None) -> tuple[list[dict], list[tuple[str, str]]]:
    """Predictions (one dict per readable image) and problems (path, reason)."""
    config, model, meta, _ = load_trained(workdir, weights)
    class_names = meta["class_names"]
    model_def = ModelDef(model)
    size = config.data.image_size
    mesh = parallel.make_mesh(1)
    steps = build_steps(model_def, mesh)
    params, stats = jax.device_put((model_def.init_params, model_def.init_batch_stats), parallel.replicated(mesh))

    files, problems = find_images(paths)
    loaded: list[tuple[pathlib.Path, np.ndarray]] = []
    for f in files:
        try:
            loaded.append((f, decode(f.read_bytes(), (size, size))))
        except (UnreadableImage, OSError, ValueError) as err:
            problems.append((str(f), f"not a readable image ({err})"))
    rows = []
    for start in range(0, len(loaded), batch_size):
        chunk = loaded[start : start + batch_size]
        images = np.zeros((batch_size, size, size, 3), np.uint8)  # fixed shape: one compilation
        images[: len(chunk)] = np.stack([im for _, im in chunk])
        probs = np.asarray(steps.predict(params, stats, images))[: len(chunk)]
        for (f, _), p in zip(chunk, probs):
            order = np.argsort(-p)[:min(top_k, len(class_names))]
            rows.append({"file": str(f), "top": [{"class": class_names[i], "probability": float(p[i])} for i in order],
                         "probabilities": {c: float(v) for c, v in zip(class_names, p)}})
    return rows, problems


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", type=pathlib.Path, required=True)
    p.add_argument("--weights", type=pathlib.Path, help="weights directory (default: WORKDIR/best)")
    p.add_argument("--top_k", type=int, default=3)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--csv", type=pathlib.Path)
    p.add_argument("--json", type=pathlib.Path)
    p.add_argument("inputs", nargs="+", type=pathlib.Path, help="image files or folders")
    p.add_argument("--compile_cache", help="persistent XLA compilation cache directory, or 'off' "
                   f"(default: ${compile_cache.ENV} or {compile_cache.default_dir()})")
    args = p.parse_args(argv)
    compile_cache.enable(args.compile_cache)
    if args.top_k < 1:
        p.error("--top_k must be at least 1")
    rows, problems = predict(args.workdir, args.inputs, top_k=args.top_k, batch_size=args.batch_size,
                             weights=args.weights)
    width = max([len(r["file"]) for r in rows] + [4])
    print(f"{'file':<{width}}  " + "  ".join(f"top{i + 1:<13}" for i in range(args.top_k)))
    for r in rows:
        print(f"{r['file']:<{width}}  " + "  ".join(f"{t['class']:>5} {t['probability']:6.1%}     " for t in r["top"]))
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
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
