"""Image files and folders classified by a trained run or an exported model (``caco-jax predict``):
one row per readable image (its answer under the decision rule, the top classes, the guard's verdict,
whether the answer is reliable), every file that could not be read with the reason, and Grad-CAM
overlays on request.

Folders are searched recursively for image files; a file that is not an image, is damaged or too
large is listed with a plain reason and the others are classified all the same. With an exported
model (``model=``) neither JAX nor torch is imported (:mod:`caco_jax.serving.portable`).
"""

from __future__ import annotations

import pathlib
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from caco_jax.data.images import SUFFIXES, UnreadableImage, decode
from caco_jax.errors import UsageError

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
    guarded = predictor.screen(images)
    threshold = predictor.confidence_threshold(tta)
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
        far = None if guarded is None or np.isnan(guarded.far_scores[i]) else float(guarded.far_scores[i])
        not_dermoscopy = guarded is not None and bool(guarded.not_dermoscopy[i])
        # an image that is not dermoscopy has no reliable answer, however confident the model is
        row["reliable"] = None if threshold is None else bool(confidence >= threshold) and not not_dermoscopy
        row["not_dermoscopy"] = None if far is None else not_dermoscopy
        row["unlike_training"] = None if guarded is None else bool(guarded.unlike_training[i])
        row["ood_score"] = None if guarded is None else float(guarded.scores[i])
        row["far_score"] = far
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
        Image.fromarray(overlay(decode(f.read_bytes(), fov_crop=predictor.fov_crop), cam)).save(out)
        row["cam"] = {"file": str(out), "class": name}
