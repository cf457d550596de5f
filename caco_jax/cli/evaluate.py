"""Evaluate a trained run's best weights on any split of its data, or on an ISIC 2018 set, and write a report.

    caco-jax evaluate --workdir runs/caco [--split test]
    caco-jax evaluate --workdir runs/caco --data_dir data/tfds          # the run's data, built elsewhere
    caco-jax evaluate --workdir runs/caco --dataset isic2018_test \\
        --manual_dir /path/to/ISIC2018 --data_dir data/tfds            # the external ISIC 2018 test set

Writes report_<dataset>_<split>.{md,json}, a confusion-matrix PNG and a reliability diagram (to --out,
default the workdir). The temperature saved with the weights (calibration.json) divides the logits unless
--no_calibration; the report gives ECE before and after it. --tta averages the probabilities over the 8
flips / 90-degree rotations and reports BACC with and without. Every report gives 95 % intervals that
resample lesions, and, when the weights carry a balanced decision rule (decision.json), the figures
under both rules.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from typing import Any

from caco_jax.cli import common
from caco_jax.errors import UsageError

NAME = "evaluate"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from caco_jax.data import registry

    p.add_argument("--workdir", type=pathlib.Path, required=True, help="a training run (caco-jax train --workdir)")
    p.add_argument("--weights", type=pathlib.Path, help="weights directory (default: WORKDIR/best)")
    p.add_argument(
        "--dataset",
        default="own",
        choices=("own", *registry.external_names()),
        help="own: the run's dataset with its own split rule (default); or an ISIC 2018 Task 3 set",
    )
    p.add_argument(
        "--split",
        default="test",
        choices=("train", "validation", "test"),
        help="split of the run's own dataset (default: test); ignored for the ISIC 2018 sets",
    )
    p.add_argument("--data_dir", type=pathlib.Path, help="TFDS data_dir (default: the run's)")
    p.add_argument("--manual_dir", type=pathlib.Path, help="raw files to build --dataset from first")
    p.add_argument("--batch_size", type=int, default=0, help="default: the run's eval_batch_size")
    p.add_argument("--out", type=pathlib.Path, help="report directory (default: WORKDIR)")
    common.add_switch(p, "tta", False, "test-time augmentation: average over the 8 flips / rotations")
    common.add_switch(p, "calibration", True, "divide the logits by the temperature saved with the weights")
    common.add_switch(
        p,
        "save_predictions",
        False,
        "also write predictions_<split>[_tta].npz (per-image logits, ids, metadata; leak flags against the "
        "run's training split, all False on an external set) to --out",
    )
    common.add_common(p)


def _source(args: argparse.Namespace, config: Any, data_dir: pathlib.Path) -> tuple[Any, Any, str, str]:
    """(the split to evaluate, the run's training split or None, the dataset's name in file names, the split's)."""
    from caco_jax.data import registry

    if args.dataset != "own":
        source, split = registry.open_external(config, args.dataset, data_dir, args.manual_dir)
        return source, None, args.dataset, split
    if args.manual_dir:
        config.data.manual_dir = str(args.manual_dir)
    config.data.data_dir = str(data_dir)
    splits = registry.open_data(config, args.workdir.resolve())
    return splits[args.split], splits["train"], config.data.name, args.split


def run(args: argparse.Namespace) -> int:
    from caco_jax.data import registry
    from caco_jax.evaluation import calibration, predictions, selective, side_files
    from caco_jax.evaluation.reports import evaluation_report, write_report
    from caco_jax.models import count_params
    from caco_jax.runs.loading import load_trained
    from caco_jax.training import compile_cache
    from caco_jax.training.evaluate import evaluate_trained

    if args.batch_size < 0:
        raise UsageError(f"--batch_size must be >= 1 (0: the run's), got {args.batch_size}")
    compile_cache.enable(args.compile_cache)
    config, model, meta, weights_dir = load_trained(args.workdir, args.weights)
    data_dir = args.data_dir or registry.data_location(config, args.workdir.resolve())[0]
    source, train, dataset, split = _source(args, config, data_dir)
    batch_size = args.batch_size or config.eval_batch_size
    acc, loss_value = evaluate_trained(config, model, meta, source, batch_size=batch_size, tta=args.tta)
    temperature = side_files.temperature(weights_dir) if args.calibration else None
    out = args.out or args.workdir
    if args.save_predictions:
        out.mkdir(parents=True, exist_ok=True)
        predictions.save(predictions.path(out, split, args.tta), *acc.logits(), source, train)
    fitted = side_files.threshold(weights_dir) if args.calibration else None
    report = evaluation_report(
        acc,
        loss_value,
        temperature,
        source=source,
        dataset=config.data.name,
        rule=side_files.rule(weights_dir),
        answer_rule=config.evaluation.decision,
        threshold=selective.threshold_for(fitted, args.tta),
        split=split,
    )
    temperature_source = f"from {weights_dir / calibration.CALIBRATION_FILE}" if temperature is not None else ""
    paths = write_report(
        out,
        report,
        history=[],
        config=config,
        num_params=count_params(model),
        split=split,
        checkpoint=str(weights_dir),
        class_names=meta["class_names"],
        prefix=f"report_{dataset}_{split}",
        temperature_source=temperature_source,
    )
    _print_summary(f"{dataset}/{split}", report, temperature)
    print(f"report: {paths['md']}")
    return 0


def _print_summary(name: str, report: dict, temperature: float | None) -> None:
    print(
        f"{name}: {report['num_examples']} images, accuracy {report['accuracy']:.4f}, "
        f"BACC {report['bacc']:.4f}, paper BACC {report['paper_bacc']:.4f}"
    )
    cal = report["calibration"]
    print(
        f"ECE {100 * cal['uncalibrated']['ece']:.2f} % uncalibrated"
        + (
            f", {100 * cal['calibrated']['ece']:.2f} % with T = {temperature:.3f}"
            if temperature
            else " (no temperature for these weights)"
        )
    )
    if report.get("tta"):
        tta = report["tta"]
        print(f"TTA ({tta['views']} views): BACC {tta['without']['bacc']:.4f} -> {tta['with']['bacc']:.4f}")
    balanced = report.get("balanced")
    if balanced:
        print(
            f"balanced decision rule ({balanced['fit']}): accuracy {balanced['accuracy']:.4f}, "
            f"BACC {balanced['bacc']:.4f}"
        )


def main(argv: list[str] | None = None) -> int:
    return common.main(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
