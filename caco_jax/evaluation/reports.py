"""Evaluation reports: the classification report of accumulated logits (with calibration and
test-time augmentation) and its markdown + JSON + plots beside the paper's figures."""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from caco_jax import files
from caco_jax.data import paper, registry
from caco_jax.evaluation import calibration, decision, intervals, plots, selective, subgroups, trust_plots
from caco_jax.evaluation.metrics import EvalAccumulator, report_from_probabilities

if TYPE_CHECKING:  # records imports TFDS; a report only reads a Source's columns
    from caco_jax.data.records import Source


def evaluation_report(
    acc: EvalAccumulator,
    loss: float | None,
    temperature: float | None = None,
    *,
    source: Source | None = None,
    dataset: str | None = None,
    rule: decision.DecisionRule | None = None,
    resamples: int = intervals.DEFAULT_RESAMPLES,
    answer_rule: str = "argmax",
    threshold: float | None = None,
    split: str = "test",
) -> dict[str, Any]:
    """The classification report of the accumulated logits, divided by ``temperature`` when given,
    averaged over the views when they are test-time-augmentation views ([N, V, C]), with:

    ``calibration``: ECE (15 bins), NLL and reliability bins without and with the temperature;
    ``tta`` (views only): accuracy and BACC of the plain image (view 0) against the average;
    ``intervals`` (with ``source``, the images the logits are of: their lesion ids): 95 %
    lesion-bootstrap intervals of accuracy, BACC, macro AUC and per-class recall;
    ``balanced`` (with a decision ``rule``): accuracy, BACC and per-class recall of the rule's
    predictions, with their intervals;
    ``subgroups`` and ``selective`` (with ``source``): the figures by subgroup of the images' metadata
    (those ``dataset``'s registry entry names) and the risk-coverage curve of the answers under
    ``answer_rule`` ('argmax', or 'balanced' given a ``rule``), at the validation-fitted ``threshold``.
    """
    groups = None if source is None else source.lesion_ids
    entry = registry.known(dataset) if dataset is not None else None
    logits, labels = acc.logits()
    report = acc.report(temperature or 1.0)
    report["loss"] = loss
    report["temperature"] = temperature
    report["calibration"] = calibration.summary(logits, labels, temperature) if len(labels) else None
    if logits.ndim == 3:
        plain = report_from_probabilities(
            calibration.probabilities(logits[:, 0], temperature or 1.0), labels, acc.class_names
        )
        report["tta"] = {
            "views": int(logits.shape[1]),
            "without": {"accuracy": plain["accuracy"], "bacc": plain["bacc"]},
            "with": {"accuracy": report["accuracy"], "bacc": report["bacc"]},
        }
    probs = calibration.probabilities(logits, temperature or 1.0)
    if groups is not None and len(labels):
        report["intervals"] = intervals.bootstrap(probs, labels, groups, acc.class_names, num_resamples=resamples)
    if rule is not None and len(labels):
        predicted = rule.predict(logits, temperature or 1.0)
        names = acc.class_names
        recall = {
            n: (float(np.mean(predicted[labels == k] == k)) if np.any(labels == k) else None)
            for k, n in enumerate(names)
        }
        report["balanced"] = {
            "fit": rule.fit,
            "tau": rule.tau,
            "accuracy": float(np.mean(predicted == labels)),
            "bacc": decision.balanced_accuracy(predicted, labels, len(names)),
            "recall": recall,
            "intervals": intervals.bootstrap(probs, labels, groups, names, predicted=predicted, num_resamples=resamples)
            if groups is not None
            else None,
        }
    if groups is not None and len(labels):
        answers = rule.predict(logits, temperature or 1.0) if (rule is not None and answer_rule == "balanced") else None
        used = "balanced" if answers is not None else "argmax"
        answers = probs.argmax(axis=-1) if answers is None else answers
        report["subgroups"] = subgroups.breakdown(
            probs,
            labels,
            answers,
            groups,
            source.meta if source is not None else {},
            acc.class_names,
            rule=used,
            resamples=min(resamples, 1000),
            dimensions=entry.subgroups if entry is not None else None,
        )
        report["selective"] = selective.curve(probs, labels, answers, groups, split=split, threshold=threshold)
        report["selective"]["rule"] = used
    return report


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
        "",
        "## Test-time augmentation",
        "",
        f"Class probabilities averaged over the {tta['views']} dihedral views of each image (rotations by "
        "0/90/180/270 degrees, each with and without a left-right flip).",
        "",
        "| | accuracy % | BACC % |",
        "|---|---:|---:|",
        f"| plain image | {_pct(without['accuracy'])} | {_pct(without['bacc'])} |",
        f"| {tta['views']}-view average | {_pct(with_['accuracy'])} | {_pct(with_['bacc'])} |",
        f"| change (points) | {change('accuracy')} | {change('bacc')} |",
    ]


def _calibration_lines(report: Mapping[str, Any], source: str, figure: pathlib.Path | None) -> list[str]:
    cal = report.get("calibration")
    if not cal:
        return []
    t = cal["temperature"]
    text = (
        f"Expected calibration error (ECE: {cal['num_bins']} equal-width bins of the top-1 probability, the gap "
        "between accuracy and mean confidence weighted by each bin's share of the images) and negative "
        "log-likelihood" + (", both of the test-time-augmentation average" if report.get("tta") else "") + ". "
    )
    if t is None:
        text += "No temperature for these weights: the probabilities are the plain softmax."
    else:
        text += f"Temperature scaling divides the logits by T = {t:.3f}" + (f" ({source})" if source else "") + "."
        if t in calibration.T_RANGE:
            text += (
                f" T is at an end of the searched range {calibration.T_RANGE}: the best value lies beyond it "
                "(typically a model barely trained)."
            )
    lines = ["", "## Calibration", "", text]
    lines += ["", "| | ECE % | NLL |", "|---|---:|---:|"]
    for name, label in (
        ("uncalibrated", "uncalibrated (T = 1)"),
        ("calibrated", f"temperature-scaled (T = {t or 1:.3f})"),
    ):
        if cal.get(name):
            lines.append(f"| {label} | {100 * cal[name]['ece']:.2f} | {cal[name]['nll']:.4f} |")
    if figure is not None:
        lines += ["", f"![reliability diagram]({figure.name})"]
    return lines


def _ci(report: Mapping[str, Any], key: str, cls: str | None = None) -> str:
    """' [lo, hi]' (percent) of a metric's lesion-bootstrap interval, or ''."""
    iv = report.get("intervals")
    if not iv:
        return ""
    value = iv["recall"].get(cls) if cls else iv.get(key)
    return "" if not value else f" [{100 * value[0]:.1f}, {100 * value[1]:.1f}]"


def _plots(
    workdir: pathlib.Path,
    report: Mapping[str, Any],
    history: Sequence[Mapping[str, Any]],
    split: str,
    class_names: Sequence[str],
    prefix: str,
    gallery: pathlib.Path | None,
) -> dict[str, pathlib.Path]:
    paths = {
        "json": workdir / f"{prefix}.json",
        "md": workdir / f"{prefix}.md",
        "confusion": plots.plot_confusion_matrix(
            np.asarray(report["confusion"]),
            class_names,
            workdir / f"{prefix}_confusion_{split}.png",
            title=f"{split} split ({report['num_examples']} images)",
        ),
    }
    if history:
        paths["curves"] = plots.plot_curves(list(history), workdir / "curves.png")
    if report.get("calibration"):
        paths["reliability"] = plots.plot_reliability(
            report["calibration"], workdir / f"{prefix}_reliability_{split}.png", title=f"{split} split"
        )
    if report.get("subgroups"):
        paths["subgroups"] = trust_plots.plot_subgroups(
            report["subgroups"], workdir / f"{prefix}_subgroups_{split}.png"
        )
    if report.get("selective"):
        paths["risk_coverage"] = trust_plots.plot_risk_coverage(
            report["selective"], workdir / f"{prefix}_risk_coverage_{split}.png"
        )
    if gallery is not None:
        paths["gallery"] = pathlib.Path(gallery)
    return paths


def _summary_lines(
    report: Mapping[str, Any], config: Any, num_params: int, figures: paper.PaperRow | None
) -> list[str]:
    auc = report.get("macro_auc")
    auc_ci = report.get("intervals", {}).get("macro_auc") if report.get("intervals") else None
    auc_text = "-" if auc is None else f"{auc:.4f}" + (f" [{auc_ci[0]:.3f}, {auc_ci[1]:.3f}]" if auc_ci else "")
    lines = [
        "| | accuracy % | BACC % (mean recall) | paper BACC % ((sens+spec)/2) | macro AUC | params |",
        "|---|---:|---:|---:|---:|---:|",
        f"| caco-jax (this run) | {_pct(report['accuracy'])}{_ci(report, 'accuracy')} | "
        f"{_pct(report['bacc'])}{_ci(report, 'bacc')} | {_pct(report['paper_bacc'])} | {auc_text} | "
        f"{num_params / 1e6:.3f} M |",
    ]
    if config.data.synthetic_images > 0:
        lines.append("| paper | not comparable: this run used synthetic data | | | | |")
    elif not (dataset := registry.known(config.data.name)) or not dataset.paper_results:
        lines.append(f"| paper | not comparable: the paper reports nothing on dataset {config.data.name!r} | | | | |")
    elif figures is not None:
        lines.append(
            f"| paper ({figures.table}) | {figures.accuracy:.2f} | {figures.bacc:.2f} (definition "
            f"unclear) | - | - | {figures.params_m:.2f} M |"
        )
    else:
        lines.append("| paper | no matching row for this configuration | | | | |")
    lines += [
        "",
        "BACC here is the ISIC definition (mean per-class recall, as scikit-learn). The paper writes "
        "BACC = (sensitivity + specificity) / 2; that number is reported separately as *paper BACC*.",
    ]
    if report.get("intervals"):
        method = report["intervals"]["method"]
        lines += [
            "",
            f"In brackets: 95 % bootstrap intervals ({method['resamples']} resamples of the split's "
            f"{method['num_units']} lesions, all photographs of a drawn lesion together).",
        ]
    return lines


def _class_lines(report: Mapping[str, Any], class_names: Sequence[str]) -> list[str]:
    lines = [
        "",
        "| class | support | sensitivity (recall) | specificity | precision | F1 | AUC |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in class_names:
        row = report["per_class"][name]
        auc = row.get("auc")
        lines.append(
            f"| {name} | {row['support']} | {_pct(row['sensitivity'])}{_ci(report, '', name)} | "
            f"{_pct(row['specificity'])} | {_pct(row['precision'])} | {_pct(row['f1'])} | "
            f"{'-' if auc is None else f'{auc:.4f}'} |"
        )
    if report.get("absent_classes"):
        lines += [
            "",
            f"Classes absent from this split (excluded from the means): {', '.join(report['absent_classes'])}.",
        ]
    return lines


def _balanced_lines(report: Mapping[str, Any], class_names: Sequence[str]) -> list[str]:
    balanced = report.get("balanced")
    if not balanced:
        return []
    how = (
        f"logit adjustment, tau = {balanced['tau']:.2f}"
        if balanced["fit"] == "logit_adjustment"
        else "per-class offsets"
    )
    iv = balanced.get("intervals") or {}

    def ci(value: tuple[float, float] | None) -> str:
        return "" if not value else f" [{100 * value[0]:.1f}, {100 * value[1]:.1f}]"

    lines = [
        "",
        "## Decision rules",
        "",
        f"The balanced rule ({how}; fitted on the validation split to maximise its BACC) adds a per-class "
        "offset to the log-probabilities before the argmax: it trades accuracy on the common classes for "
        "recall on the rare ones. `--decision balanced` makes evaluate, predict and the web page use it.",
        "",
        "| rule | accuracy % | BACC % | " + " | ".join(f"{n} recall %" for n in class_names) + " |",
        "|---|---:|---:|" + "---:|" * len(class_names),
        f"| argmax | {_pct(report['accuracy'])}{_ci(report, 'accuracy')} | {_pct(report['bacc'])}"
        f"{_ci(report, 'bacc')} | "
        + " | ".join(_pct(report["per_class"][n]["sensitivity"]) for n in class_names)
        + " |",
        f"| balanced | {_pct(balanced['accuracy'])}{ci(iv.get('accuracy'))} | {_pct(balanced['bacc'])}"
        f"{ci(iv.get('bacc'))} | " + " | ".join(_pct(balanced["recall"][n]) for n in class_names) + " |",
    ]
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
    paths = _plots(workdir, report, history, split, class_names, prefix, gallery)
    attention, loss = config.model.attention, config.loss.name
    pretrained = bool(config.model.pretrained)
    dataset = registry.known(config.data.name)
    figures = dataset.paper_row(attention, loss, pretrained) if dataset else None
    payload = {
        "split": split,
        "checkpoint": checkpoint,
        "model": {"arch": config.model.arch, "attention": attention, "params": num_params, "pretrained": pretrained},
        "loss": loss,
        "metrics": dict(report),
        "paper": None if figures is None else dataclasses.asdict(figures),
        "temperature_source": temperature_source or None,
    }
    files.write_atomic(paths["json"], json.dumps(payload, indent=2, default=float), "the report")
    lines = [
        f"# caco-jax report: MobileNetV3-{attention} ({config.model.arch}), loss {loss}",
        "",
        f"Split **{split}** ({report['num_examples']} images), weights `{checkpoint}`. {_prediction_note(report)}",
        "",
    ]
    lines += _summary_lines(report, config, num_params, figures)
    lines += _class_lines(report, class_names)
    lines += ["", f"![confusion matrix]({paths['confusion'].name})"]
    lines += _balanced_lines(report, class_names)
    lines += _tta_lines(report)
    lines += _calibration_lines(report, temperature_source, paths.get("reliability"))
    if report.get("selective"):
        lines += selective.markdown(report["selective"], paths["risk_coverage"].name)
    if report.get("subgroups"):
        lines += subgroups.markdown(report["subgroups"], paths["subgroups"].name)
    if "gallery" in paths:
        lines += [
            "",
            "## Where the model looked (Grad-CAM)",
            "",
            "Test images of each true class (rows): the most and least confident correct and wrong "
            "predictions, each shown as the network input and its Grad-CAM heat map for the predicted "
            "class (red: evidence for it). Empty cells: no such image.",
            "",
            f"![Grad-CAM gallery]({paths['gallery'].name})",
        ]
    if "curves" in paths:
        lines += ["", f"![training curves]({paths['curves'].name})"]
    files.write_atomic(paths["md"], "\n".join(lines) + "\n", "the report")
    return paths
