"""Evaluation over a whole split and the report (markdown + JSON + plots) beside the paper's figures."""
from __future__ import annotations

import json
import pathlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from caco_jax import calibration, parallel, plots
from caco_jax.classes import CLASS_NAMES
from caco_jax.metrics import EvalAccumulator, report_from_probabilities
from caco_jax.models import MobileNetV3, model_from_config
from caco_jax.weights import assign_weights, read_weights
from caco_jax.workspace import load_config

# The paper's HAM10000 test results: (attention, loss, pretrained) -> (accuracy %, BACC %, params M).
PAPER_RESULTS: dict[tuple[str, str, bool], tuple[float, float, float]] = {
    ("se", "ce", False): (87.17, 73.71, 2.18),
    ("se", "ce", True): (90.88, 83.44, 2.18),
    ("caco", "ce", True): (91.78, 85.70, 2.29),
    ("caco", "focal", True): (91.98, 85.74, 2.29),
    ("caco", "ldam", True): (91.78, 86.31, 2.29),
    ("caco", "joint", True): (93.39, 86.35, 2.29),
    ("cbam", "ce", True): (91.48, 85.72, 2.20),
    ("seco", "ce", True): (89.68, 78.70, 2.64),
    ("eca", "ce", True): (90.98, 82.64, 2.08),
}


def paper_row(attention: str, loss: str, pretrained: bool) -> tuple[float, float, float] | None:
    """The paper's figures for this configuration (Table 5 ablations are taken as CE-trained)."""
    return PAPER_RESULTS.get((attention, loss, pretrained))


def load_trained(
    workdir: str | pathlib.Path, weights: str | pathlib.Path | None = None
) -> tuple[Any, MobileNetV3, dict[str, Any], pathlib.Path]:
    """(config, model in eval mode, weights metadata, weights dir) of a training run.

    ``weights`` defaults to ``workdir/best`` (the best validation BACC), written by
    scripts/train.py; any directory in that format works (e.g. a conversion output of
    the same architecture and class count). ``metadata['class_names']`` names the classes.
    """
    workdir = pathlib.Path(workdir)
    config = load_config(workdir)
    weights_dir = pathlib.Path(weights) if weights else workdir / "best"
    flat, meta = read_weights(weights_dir)
    meta.setdefault("class_names", list(CLASS_NAMES) if config.data.name == "ham10000" else None)
    if not meta["class_names"]:
        raise ValueError(f"{weights_dir} does not record its class names (caco_jax_weights.json: class_names)")
    model = model_from_config(config.model, num_classes=len(meta["class_names"]), seed=config.seed)
    assign_weights(model, flat, source=str(weights_dir))
    model.eval()
    return config, model, meta, weights_dir


def host_array(x: Any) -> np.ndarray:
    """A replicated (or single-process) jax.Array as numpy on this host."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return np.asarray(x.addressable_data(0))
    return np.asarray(x)


def collect(
    eval_step: Callable[..., dict[str, jax.Array]],
    params: Any,
    batch_stats: Any,
    batches: Iterable[Mapping[str, np.ndarray]],
    class_weights: np.ndarray,
    mesh: Mesh,
    class_names: Sequence[str],
) -> tuple[EvalAccumulator, float | None]:
    """Runs ``eval_step`` over every (process-local) batch: (the accumulated logits, mean loss).

    Padded rows are masked; one host sync at the end, not one per batch."""
    acc = EvalAccumulator(class_names)
    outputs = [eval_step(params, batch_stats, parallel.to_global(batch, mesh), class_weights) for batch in batches]
    loss_sum, n = 0.0, 0
    for out in outputs:
        mask = host_array(out["mask"])
        acc.update(host_array(out["logits"]), host_array(out["label"]), mask)
        count = int(mask.sum())
        if count:
            loss_sum += float(host_array(out["loss"])) * count
            n += count
    return acc, (loss_sum / n if n else None)


def evaluation_report(acc: EvalAccumulator, loss: float | None, temperature: float | None = None) -> dict[str, Any]:
    """The classification report of the accumulated logits, divided by ``temperature`` when given,
    averaged over the views when they are test-time-augmentation views ([N, V, C]), with:

    ``calibration``: ECE (15 bins), NLL and reliability bins without and with the temperature;
    ``tta`` (views only): accuracy and BACC of the plain image (view 0) against the average.
    """
    logits, labels = acc.logits()
    report = acc.report(temperature or 1.0)
    report["loss"] = loss
    report["temperature"] = temperature
    report["calibration"] = calibration.summary(logits, labels, temperature) if len(labels) else None
    if logits.ndim == 3:
        plain = report_from_probabilities(calibration.probabilities(logits[:, 0], temperature or 1.0), labels,
                                          acc.class_names)
        report["tta"] = {"views": int(logits.shape[1]),
                         "without": {"accuracy": plain["accuracy"], "bacc": plain["bacc"]},
                         "with": {"accuracy": report["accuracy"], "bacc": report["bacc"]}}
    return report


def run_eval(
    eval_step: Callable[..., dict[str, jax.Array]],
    params: Any,
    batch_stats: Any,
    batches: Iterable[Mapping[str, np.ndarray]],
    class_weights: np.ndarray,
    mesh: Mesh,
    class_names: Sequence[str],
    *,
    temperature: float | None = None,
) -> dict[str, Any]:
    """:func:`collect`, then :func:`evaluation_report`: the full report + loss and calibration."""
    acc, loss = collect(eval_step, params, batch_stats, batches, class_weights, mesh, class_names)
    return evaluation_report(acc, loss, temperature)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def _prediction_note(report: Mapping[str, Any]) -> str:
    tta = report.get("tta")
    t = report.get("temperature")
    parts = []
    if tta:
        parts.append(f"probabilities averaged over {tta['views']} test-time-augmentation views")
    if t is not None:
        parts.append(f"logits divided by the temperature {t:.3f}")
    return ("Predictions: " + "; ".join(parts) + ".") if parts else "Predictions: the plain image, no temperature."


def _tta_lines(report: Mapping[str, Any]) -> list[str]:
    tta = report.get("tta")
    if not tta:
        return []
    without, with_ = tta["without"], tta["with"]

    def change(key: str) -> str:
        if with_[key] is None or without[key] is None:
            return "-"
        return f"{100 * (with_[key] - without[key]):+.2f}"

    return [
        "", "## Test-time augmentation", "",
        f"Class probabilities averaged over the {tta['views']} dihedral views of each image (rotations by "
        "0/90/180/270 degrees, each with and without a left-right flip).", "",
        "| | accuracy % | BACC % |", "|---|---:|---:|",
        f"| plain image | {_pct(without['accuracy'])} | {_pct(without['bacc'])} |",
        f"| {tta['views']}-view average | {_pct(with_['accuracy'])} | {_pct(with_['bacc'])} |",
        f"| change (points) | {change('accuracy')} | {change('bacc')} |",
    ]


def _calibration_lines(report: Mapping[str, Any], source: str, figure: pathlib.Path | None) -> list[str]:
    cal = report.get("calibration")
    if not cal:
        return []
    t = cal["temperature"]
    text = (f"Expected calibration error (ECE: {cal['num_bins']} equal-width bins of the top-1 probability, the gap "
            "between accuracy and mean confidence weighted by each bin's share of the images) and negative "
            "log-likelihood" + (", both of the test-time-augmentation average" if report.get("tta") else "") + ". ")
    if t is None:
        text += "No temperature for these weights: the probabilities are the plain softmax."
    else:
        text += f"Temperature scaling divides the logits by T = {t:.3f}" + (f" ({source})" if source else "") + "."
        if t in calibration.T_RANGE:
            text += (f" T is at an end of the searched range {calibration.T_RANGE}: the best value lies beyond it "
                     "(typically a model barely trained).")
    lines = ["", "## Calibration", "", text]
    lines += ["", "| | ECE % | NLL |", "|---|---:|---:|"]
    for name, label in (("uncalibrated", "uncalibrated (T = 1)"), ("calibrated", f"temperature-scaled (T = {t or 1:.3f})")):
        if cal.get(name):
            lines.append(f"| {label} | {100 * cal[name]['ece']:.2f} | {cal[name]['nll']:.4f} |")
    if figure is not None:
        lines += ["", f"![reliability diagram]({figure.name})"]
    return lines


def write_report(
    workdir: str | pathlib.Path,
    report: Mapping[str, Any],
    *,
    history: Sequence[Mapping[str, Any]],
    config: Any,
    num_params: int,
    split: str,
    checkpoint: str,
    class_names: Sequence[str],
    prefix: str = "report",
    temperature_source: str = "",
    gallery: pathlib.Path | None = None,
) -> dict[str, pathlib.Path]:
    """Writes ``{prefix}.json``, ``{prefix}.md``, a confusion-matrix PNG, a reliability diagram
    (when the report has ``calibration``) and (with history) curves; ``gallery``: a Grad-CAM
    gallery PNG already written, linked from the markdown."""
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": workdir / f"{prefix}.json",
        "md": workdir / f"{prefix}.md",
        "confusion": plots.plot_confusion_matrix(
            np.asarray(report["confusion"]), class_names, workdir / f"{prefix}_confusion_{split}.png",
            title=f"{split} split ({report['num_examples']} images)",
        ),
    }
    if history:
        paths["curves"] = plots.plot_curves(list(history), workdir / "curves.png")
    if report.get("calibration"):
        paths["reliability"] = plots.plot_reliability(report["calibration"], workdir / f"{prefix}_reliability_{split}.png",
                                                      title=f"{split} split")
    if gallery is not None:
        paths["gallery"] = pathlib.Path(gallery)
    attention, loss = config.model.attention, config.loss.name
    pretrained = bool(config.model.pretrained)
    paper = paper_row(attention, loss, pretrained) if config.data.name == "ham10000" else None
    payload = {
        "split": split,
        "checkpoint": checkpoint,
        "model": {"arch": config.model.arch, "attention": attention, "params": num_params, "pretrained": pretrained},
        "loss": loss,
        "metrics": dict(report),
        "paper": None if paper is None else {"accuracy": paper[0], "bacc": paper[1], "params_m": paper[2]},
        "temperature_source": temperature_source or None,
    }
    paths["json"].write_text(json.dumps(payload, indent=2, default=float))

    lines = [
        f"# caco-jax report: MobileNetV3-{attention} ({config.model.arch}), loss {loss}",
        "",
        f"Split **{split}** ({report['num_examples']} images), weights `{checkpoint}`. "
        f"{_prediction_note(report)}",
        "",
        "| | accuracy % | BACC % (mean recall) | paper BACC % ((sens+spec)/2) | macro AUC | params |",
        "|---|---:|---:|---:|---:|---:|",
        f"| caco-jax (this run) | {_pct(report['accuracy'])} | {_pct(report['bacc'])} | "
        f"{_pct(report['paper_bacc'])} | {report.get('macro_auc') or 0:.4f} | {num_params / 1e6:.3f} M |",
    ]
    if config.data.synthetic_images > 0:
        lines.append("| paper | not comparable: this run used synthetic data | | | | |")
    elif config.data.name != "ham10000":
        lines.append(f"| paper | not comparable: dataset {config.data.name!r}, not HAM10000 | | | | |")
    elif paper is not None:
        lines.append(f"| paper (its Tables 2-5) | {paper[0]:.2f} | {paper[1]:.2f} (definition unclear) | - | - | {paper[2]:.2f} M |")
    else:
        lines.append("| paper | no matching row for this configuration | | | | |")
    lines += [
        "",
        "BACC here is the ISIC definition (mean per-class recall, as scikit-learn). The paper writes "
        "BACC = (sensitivity + specificity) / 2; that number is reported separately as *paper BACC*.",
        "",
        "| class | support | sensitivity | specificity | precision | F1 | AUC |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in class_names:
        row = report["per_class"][name]
        auc = row.get("auc")
        lines.append(
            f"| {name} | {row['support']} | {_pct(row['sensitivity'])} | {_pct(row['specificity'])} | "
            f"{_pct(row['precision'])} | {_pct(row['f1'])} | {'-' if auc is None else f'{auc:.4f}'} |"
        )
    if report.get("absent_classes"):
        lines += ["", f"Classes absent from this split (excluded from the means): {', '.join(report['absent_classes'])}."]
    lines += ["", f"![confusion matrix]({paths['confusion'].name})"]
    lines += _tta_lines(report)
    lines += _calibration_lines(report, temperature_source, paths.get("reliability"))
    if "gallery" in paths:
        lines += ["", "## Where the model looked (Grad-CAM)", "",
                  "Test images of each true class (rows): the most and least confident correct and wrong "
                  "predictions, each shown as the network input and its Grad-CAM heat map for the predicted "
                  "class (red: evidence for it). Empty cells: no such image.", "",
                  f"![Grad-CAM gallery]({paths['gallery'].name})"]
    if "curves" in paths:
        lines += ["", f"![training curves]({paths['curves'].name})"]
    paths["md"].write_text("\n".join(lines) + "\n")
    return paths
