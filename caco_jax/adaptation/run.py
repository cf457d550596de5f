"""An adapted run: a new run directory derived from a trained run, whose weights carry BatchNorm statistics
re-estimated on a clinic's unlabelled images and, when asked (``estimate_prior``), whose ``clinic`` decision
rule knows the clinic's class prior estimated by EM (``caco-jax adapt``; measured to mislead under
acquisition shift, hence off by default: docs/results_adaptation_cpu.md).

The new directory holds what every command reads: ``config.json`` (the source run's), ``best/`` (the
adapted weights, with the source's temperature, balanced rule, reliability threshold and guard beside
them, and with a prior ``clinic.json``, the clinic's estimated prior) and ``adaptation.json``, which says where
it came from: the source run and the checksum record of its weights, the folder, how many images, a hash
of their bytes, and what was re-estimated. It has no checkpoints: it is not trained further.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import json
import pathlib
import shutil
from collections.abc import Sequence
from typing import Any

import numpy as np

from caco_jax.adaptation import batchnorm
from caco_jax.errors import UsageError
from caco_jax.evaluation import prior_shift, side_files

# Which BatchNorm layers and how far towards the clinic's statistics (None = every layer): chosen by
# tools/measure_adaptation.py on acquisition-shifted copies of the held-out-source runs' validation splits
# (docs/results_adaptation_cpu.md; tests/test_docs_figures.py holds these to that choice).
DEPTH: int | None = None
ALPHA = 0.5
# How many images: measured on the held-out sources' images outside the test split (adapted on n images of
# one half of their lesions, scored on the other; one draw per count, two seeds; docs/results_adaptation_cpu.md).
# From 128 images on, accuracy and BACC were within 2.5 points of the 512-image figures on both sources and
# both seeds; from 32, accuracy within 4.3 but BACC up to 7.3 points away. Below MIN_IMAGES adapt refuses;
# below RECOMMENDED_IMAGES it adapts and says that the statistics may not have settled.
MIN_IMAGES = 32
RECOMMENDED_IMAGES = 128
FILE = "adaptation.json"
SIDE_FILES = ("calibration.json", "decision.json", "selective.json", "ood.json", "ood.npz")
BATCH = 64


def images_hash(files: Sequence[bytes]) -> str:
    """SHA-256 over the SHA-256 of each image's bytes, in sorted order (the folder's identity, not its names)."""
    digests = sorted(hashlib.sha256(data).hexdigest() for data in files)
    return hashlib.sha256("\n".join(digests).encode()).hexdigest()


def clinic_prior(workdir: pathlib.Path, log_probs: np.ndarray) -> dict[str, Any] | None:
    """The clinic's class prior by EM from the adapted model's log-probabilities on its images, after the
    bias-corrected temperature fitted on the source run's saved validation predictions; None when the run
    saved none."""
    from caco_jax.evaluation import predictions

    path = predictions.path(workdir, "validation")
    if not path.is_file():
        return None
    validation = predictions.load(path)
    num_classes = validation.logits.shape[-1]
    how = "bias-corrected temperature scaling on the validation split"
    try:
        calibrated = prior_shift.fit_bias_temperature(validation.logits, validation.labels, num_classes)
    except ValueError:  # a class the validation split lacks: its bias cannot be fitted
        from caco_jax.evaluation import calibration

        counts = np.bincount(validation.labels, minlength=num_classes) + 0.5
        t = calibration.fit_temperature(validation.logits, validation.labels)
        calibrated = prior_shift.BiasTemperature(
            t, (0.0,) * num_classes, tuple(float(c) for c in counts / counts.sum())
        )
        how = "temperature scaling only (a class is missing from the validation split; counts + 0.5)"
    estimate = prior_shift.estimate_prior(calibrated.log_posteriors(log_probs), np.asarray(calibrated.prior))
    return {"bias_temperature": calibrated.to_json(), "calibration": how, **estimate.to_json()}


def adapt(
    workdir: str | pathlib.Path,
    images: np.ndarray,
    out: str | pathlib.Path,
    *,
    folder: str = "",
    image_hash: str = "",
    depth: int | None = DEPTH,
    alpha: float = ALPHA,
    estimate_prior: bool = False,
    min_images: int = MIN_IMAGES,
) -> dict[str, Any]:
    """Writes the adapted run of ``workdir`` to ``out`` from ``images`` (uint8 [N, S, S, 3], decoded as the
    run decodes); returns what ``adaptation.json`` records. ``min_images``: the refusal's floor (lowered only
    by the measurement of how many images are enough)."""
    from caco_jax.data.augment import preprocess
    from caco_jax.data.constancy import ColorConstancy
    from caco_jax.runs.loading import load_trained, read_weights
    from caco_jax.runs.weights import WeightsWriter
    from caco_jax.runs.workspace import save_config

    workdir, out = pathlib.Path(workdir).resolve(), pathlib.Path(out).resolve()
    if len(images) < min_images:
        raise UsageError(
            f"{len(images)} readable images in {folder or 'the folder'}: re-estimating the statistics needs at "
            f"least {min_images}: give more of the clinic's images"
        )
    if out == workdir or (out.exists() and any(out.iterdir())):
        raise UsageError(f"--out {out} exists and is not empty: give a new folder for the adapted run")
    config, model, _, weights_dir = load_trained(workdir)
    flat, meta = read_weights(weights_dir)
    color = ColorConstancy.from_config(config.data)
    stats_pass = batchnorm.StatsPass(
        config.model, len(meta["class_names"]), preprocess=functools.partial(preprocess, color=color)
    )
    adapted, done = batchnorm.reestimate(
        stats_pass, flat, batchnorm.iterate_batches(images, BATCH), depth=depth, alpha=alpha
    )
    del model
    out.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {
        "source_run": str(workdir),
        "source_weights": {"step": meta.get("step"), "epoch": meta.get("epoch")},
        "folder": folder,
        "images": int(len(images)),
        "images_sha256": image_hash,
        "batchnorm": done,
        "written": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    save_config(config, out)
    writer = WeightsWriter(out / "best")
    writer.save(adapted, {**meta, "adapted_from": record})
    writer.close()
    for name in SIDE_FILES:
        if (weights_dir / name).is_file():
            shutil.copy2(weights_dir / name, out / "best" / name)
    if estimate_prior:
        from caco_jax.evaluation.decision import CLINIC_FILE
        from caco_jax.serving.predictor import Predictor

        log_probs = np.log(np.maximum(Predictor(out, calibrate=False).probabilities(images), 1e-300))
        record["prior"] = clinic_prior(workdir, log_probs)
        if record["prior"] is not None:
            (out / "best" / CLINIC_FILE).write_text(json.dumps(record["prior"], indent=2) + "\n")
    side_files.record(out / "best")
    (out / FILE).write_text(json.dumps(record, indent=2) + "\n")
    return record
