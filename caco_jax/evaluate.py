"""Evaluation over a whole split and the report (markdown + JSON + plots) beside the paper's figures."""
from __future__ import annotations

import json
import pathlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from caco_jax import parallel, plots
from caco_jax.classes import CLASS_NAMES
from caco_jax.metrics import EvalAccumulator
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


def run_eval(
    eval_step: Callable[..., dict[str, jax.Array]],
    params: Any,
    batch_stats: Any,
    batches: Iterable[Mapping[str, np.ndarray]],
    class_weights: np.ndarray,
    mesh: Mesh,
    class_names: Sequence[str],
) -> dict[str, Any]:
    """Runs ``eval_step`` over every (process-local) batch, padded rows masked; the full report + loss."""
    acc = EvalAccumulator(class_names)
    outputs = [eval_step(params, batch_stats, parallel.to_global(batch, mesh), class_weights) for batch in batches]
    loss_sum, n = 0.0, 0
    for out in outputs:  # one host sync at the end, not one per batch
        mask = host_array(out["mask"])
        acc.update(host_array(out["logits"]), host_array(out["label"]), mask)
        count = int(mask.sum())
        if count:
            loss_sum += float(host_array(out["loss"])) * count
            n += count
    report = acc.report()
    report["loss"] = loss_sum / n if n else None
    report["num_examples"] = n
    return report


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


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
) -> dict[str, pathlib.Path]:
    """Writes ``{prefix}.json``, ``{prefix}.md``, a confusion-matrix PNG and (with history) curves."""
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
    }
    paths["json"].write_text(json.dumps(payload, indent=2, default=float))

    lines = [
        f"# caco-jax report: MobileNetV3-{attention} ({config.model.arch}), loss {loss}",
        "",
        f"Split **{split}** ({report['num_examples']} images), weights `{checkpoint}`.",
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
    if "curves" in paths:
        lines += ["", f"![training curves]({paths['curves'].name})"]
    paths["md"].write_text("\n".join(lines) + "\n")
    return paths
