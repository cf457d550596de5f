"""The end of a training run: the best-validation weights on the validation and test splits, a
temperature and a balanced decision rule fitted on validation (saved beside the weights), the
per-image predictions, and the report with its Grad-CAM gallery."""

from __future__ import annotations

import pathlib
from typing import Any

import jax
import numpy as np

from caco_jax.data import leakage, pipeline, records
from caco_jax.evaluation import (
    calibration,
    decision,
    ood_score,
    plots,
    predictions,
    saliency,
    selective,
    side_files,
)
from caco_jax.evaluation.reports import evaluation_report, write_report
from caco_jax.runs.loading import read_weights
from caco_jax.runs.weights import WeightsWriter
from caco_jax.training import guard, parallel
from caco_jax.training.evaluate import collect, host_array
from caco_jax.training.run import Run
from caco_jax.training.steps import TrainState
from caco_jax.trees import unflatten


def fit_calibration(run: Run, logits: np.ndarray, labels: np.ndarray, weights_dir: pathlib.Path | None) -> float:
    """Fits the temperature on the validation split's logits; saved beside the weights it belongs to."""
    temperature = calibration.fit_temperature(logits, labels)
    before = calibration.summary(logits, labels, temperature)
    info: dict[str, Any] = {
        "fitted_on": "validation",
        "num_examples": int(len(labels)),
        "nll": {"uncalibrated": before["uncalibrated"]["nll"], "calibrated": before["calibrated"]["nll"]},
        "ece": {"uncalibrated": before["uncalibrated"]["ece"], "calibrated": before["calibrated"]["ece"]},
    }
    if weights_dir is not None and jax.process_index() == 0:
        calibration.save(weights_dir, temperature, **info)
    run.runlog.info(
        f"temperature {temperature:.3f} fitted on the validation split ({len(labels)} images): ECE "
        f"{100 * info['ece']['uncalibrated']:.2f} % -> {100 * info['ece']['calibrated']:.2f} %"
    )
    return temperature


def fit_decision(
    run: Run, logits: np.ndarray, labels: np.ndarray, temperature: float, weights_dir: pathlib.Path | None
) -> decision.DecisionRule:
    """The balanced decision rule fitted on the validation split; saved beside the weights."""
    rule = decision.fit(logits, labels, run.counts, temperature=temperature, how=run.config.evaluation.decision_fit)
    if weights_dir is not None and jax.process_index() == 0:
        decision.save(weights_dir, rule)
    val = rule.info["val_bacc"]
    run.runlog.info(
        f"balanced decision rule ({rule.fit}"
        + (f", tau {rule.tau:.2f}" if rule.tau is not None else "")
        + f") fitted on the validation split: BACC {100 * val['argmax']:.2f} % (argmax) -> "
        f"{100 * val['balanced']:.2f} %"
    )
    return rule


def fit_selective(
    run: Run,
    logits: np.ndarray,
    labels: np.ndarray,
    temperature: float,
    rule: decision.DecisionRule,
    weights_dir: pathlib.Path | None,
    tta_logits: np.ndarray | None = None,
) -> float | None:
    """The confidence below which the run's answers are unreliable, fitted on the validation split
    (``selective.fit_threshold``) under the rule the run answers with; with ``tta_logits`` (the validation
    views, [N, V, C]) a second threshold for answers averaged over the views, fitted on those confidences
    (what ``--tta`` answers are compared with). Saved beside the weights."""

    def fit(z: np.ndarray) -> dict:
        probs = calibration.probabilities(z, temperature)
        balanced = run.config.evaluation.decision == "balanced"
        return selective.fit_threshold(probs, labels, rule.predict(z, temperature) if balanced else probs.argmax(-1))

    fitted = fit(logits)
    fitted["rule"] = run.config.evaluation.decision
    if tta_logits is not None:
        fitted["tta"] = fit(tta_logits)
    if weights_dir is not None and jax.process_index() == 0:
        selective.save(weights_dir, fitted)
    if fitted["threshold"] is None:
        run.runlog.info(f"no confidence makes the validation answers {selective.TARGET:.0%} accurate")
    else:
        run.runlog.info(
            f"answers below confidence {fitted['threshold']:.3f} are marked unreliable (validation: "
            f"{selective.TARGET:.0%} accurate above it, {fitted['coverage']:.1%} of images)"
        )
    return fitted["threshold"]


def fit_guard(
    run: Run, params: Any, stats: Any, validation: pipeline.EvalSet, weights_dir: pathlib.Path | None
) -> tuple[ood_score.Guard, dict[str, Any]]:
    """The out-of-distribution guard (``training.guard``): arrays from the training split, threshold
    from validation, saved beside the weights; and the share of test images it flags (false alarms)."""
    assert run.steps.embed is not None
    embedded = {
        name: guard.embed(run.steps.embed, params, stats, run.local_batches(source), run.mesh)
        for name, source in (("train", run.splits["train"]), ("validation", validation), ("test", run.splits["test"]))
    }
    fitted = guard.fit(embedded["train"], embedded["validation"], len(run.class_names))
    if jax.process_count() == 1:  # the far part embeds host-made copies: one process holds every row
        source = validation.source if isinstance(validation, pipeline.EvalSet) else validation
        images = guard.far_images(run.splits["train"], source, run.config.data.image_size)
        fitted = guard.add_far_part(fitted, lambda x: _embed_images(run, params, stats, x), images)
    test = embedded["test"]
    screen = fitted.screen(test["logits"], test[fitted.layer])
    flagged = screen.unlike_training | screen.not_dermoscopy
    fitted.info["test_flagged"] = float(flagged.mean()) if len(flagged) else None
    fitted.info["test_not_dermoscopy"] = float(screen.not_dermoscopy.mean()) if len(flagged) else None
    if weights_dir is not None and jax.process_index() == 0:
        ood_score.save(weights_dir, fitted)
    run.runlog.info(
        f"out-of-distribution guard ({fitted.method} on the {fitted.layer} features) fitted: it lets "
        f"{ood_score.KEEP:.0%} of validation images through and flags {fitted.info['test_flagged']:.1%} of test images"
        + (f" ({fitted.info['test_not_dermoscopy']:.1%} as not dermoscopy)" if fitted.far_threshold is not None else "")
    )
    summary = {"method": fitted.method, "layer": fitted.layer, "threshold": fitted.threshold}
    return fitted, summary | {"test_flagged": fitted.info["test_flagged"], "keep": ood_score.KEEP}


def _embed_images(run: Run, params: Any, stats: Any, images: np.ndarray) -> dict[str, np.ndarray]:
    """{'logits', 'pooled', 'hidden'} of uint8 images (one process), in eval batches padded to size."""
    assert run.steps.embed is not None
    size = run.config.eval_batch_size
    parts: dict[str, list[np.ndarray]] = {"logits": [], "pooled": [], "hidden": []}
    for start in range(0, len(images), size):
        chunk = images[start : start + size]
        padded = np.zeros((size, *images.shape[1:]), np.uint8)
        padded[: len(chunk)] = chunk
        batch = {"image": padded, "label": np.zeros(size, np.int32), "mask": np.arange(size) < len(chunk)}
        out = run.steps.embed(params, stats, parallel.to_global(batch, run.mesh))
        for key in parts:
            parts[key].append(np.asarray(out[key])[: len(chunk)])
    return {k: np.concatenate(v) for k, v in parts.items()}


def cam_gallery(
    run: Run, params: Any, stats: Any, probs: np.ndarray, labels: np.ndarray, temperature: float
) -> pathlib.Path | None:
    """A PNG of Grad-CAM overlays of test images: per true class, the most and least confident
    correct and wrong predictions (``saliency.select_gallery``). One small batch through the cam step."""
    if jax.process_count() > 1 or len(labels) == 0:
        return None  # single-process only: the chosen rows live in one process's reads
    rows = saliency.select_gallery(probs, labels)
    chosen = saliency.gallery_indices(rows)
    size = run.config.data.image_size
    images = records.decode_all(run.splits["test"].subset(np.asarray(chosen), "gallery"), (size, size))
    n_dev = run.mesh.devices.size
    batch = -(-(4 * len(run.class_names)) // n_dev) * n_dev  # one fixed shape per model: one compilation
    padded = np.zeros((batch, size, size, 3), np.uint8)
    padded[: len(chosen)] = images
    inputs = parallel.to_global({"image": padded, "target": np.full((batch,), -1, np.int32)}, run.mesh)
    out = run.steps.cam(params, stats, inputs["image"], inputs["target"], np.float32(temperature))
    cams = np.asarray(host_array(out["cam"]))
    where = {i: k for k, i in enumerate(chosen)}
    cells = []
    for row in rows:
        cells.append(
            [
                None
                if i is None
                else (
                    np.concatenate([images[where[i]], saliency.overlay(images[where[i]], cams[where[i]])], axis=1),
                    f"{run.class_names[int(probs[i].argmax())]} {probs[i].max():.0%}",
                )
                for i in row
            ]
        )
    return plots.plot_gallery(
        cells,
        run.class_names,
        saliency.GALLERY_KINDS,
        run.workdir / "report_gradcam_test.png",
        title="test split: Grad-CAM for the predicted class (image | heat map)",
    )


def final_test(
    run: Run, state: TrainState, best: WeightsWriter, history: list[dict[str, Any]], validation: pipeline.EvalSet
) -> tuple[dict, dict]:
    """The best-validation weights (else the final state) on the test split, with a temperature
    fitted on the validation split and a Grad-CAM gallery; writes the report."""
    best.wait()
    if jax.process_count() > 1:  # the first process wrote them: everyone reads them only once they are there
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("caco_jax: best weights written")
    weights_dir = run.workdir / "best" if (run.workdir / "best" / "weights").is_dir() else None
    if weights_dir is not None:
        flat, _ = read_weights(weights_dir)
        params = unflatten(flat, run.model_def.init_params, source=str(weights_dir))
        stats = unflatten(flat, run.model_def.init_batch_stats, source=str(weights_dir))
        params, stats = jax.device_put((params, stats), parallel.replicated(run.mesh))
    else:
        params, stats = state.eval_weights()
    weights = run.class_weights(run.config.num_epochs - 1)
    evaluate, evaluate_tta = run.steps.eval, run.steps.eval_tta
    assert evaluate is not None and evaluate_tta is not None  # setup builds the steps with a loss
    val_acc, _ = collect(evaluate, params, stats, run.local_batches(validation), weights, run.mesh, run.class_names)
    temperature = fit_calibration(run, *val_acc.logits(), weights_dir)
    rule = fit_decision(run, *val_acc.logits(), temperature, weights_dir)
    test = run.splits["test"]
    views = {}  # every process takes part in the collectives; the first writes
    if run.config.evaluation.tta:
        for name, source in (("validation", validation), ("test", test)):
            views[name] = collect(
                evaluate_tta, params, stats, run.local_batches(source), weights, run.mesh, run.class_names
            )[0]
    tta_val = views["validation"].logits()[0] if "validation" in views else None
    threshold = fit_selective(run, *val_acc.logits(), temperature, rule, weights_dir, tta_val)
    acc, loss = collect(evaluate, params, stats, run.local_batches(test), weights, run.mesh, run.class_names)
    report = evaluation_report(
        acc,
        loss,
        temperature,
        source=test,
        dataset=run.config.data.name,
        rule=rule,
        answer_rule=run.config.evaluation.decision,
        threshold=threshold,
    )
    report["leakage"] = leakage.summary(run.splits["train"], test)
    _, report["ood"] = fit_guard(run, params, stats, validation, weights_dir)
    if weights_dir is not None and jax.process_index() == 0:
        side_files.record(weights_dir)  # their checksums, verified whenever they are read
    if not run.runlog.files:  # multi-host: the first process writes the report
        return report, {}
    train = run.splits["train"]
    predictions.save(predictions.path(run.workdir, "validation"), *val_acc.logits(), validation.source, train)
    predictions.save(predictions.path(run.workdir, "test"), *acc.logits(), test, train)
    for name, source in (("validation", validation.source), ("test", test)):
        if name in views:
            predictions.save(predictions.path(run.workdir, name, tta=True), *views[name].logits(), source, train)
    probs, labels, _ = acc.arrays(temperature)
    gallery = cam_gallery(run, params, stats, probs, labels, temperature)
    paths = write_report(
        run.workdir,
        report,
        history=history,
        config=run.config,
        num_params=run.num_params,
        split="test",
        checkpoint=str(weights_dir or "final state"),
        class_names=run.class_names,
        temperature_source="fitted on the validation split",
        gallery=gallery,
    )
    return report, paths
