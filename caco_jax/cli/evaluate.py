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

from caco_jax.cli import common
from caco_jax.errors import UsageError

NAME = "evaluate"
EXTERNAL = ("isic2018_test", "isic2018_validation")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workdir", type=pathlib.Path, required=True, help="a training run (caco-jax train --workdir)")
    p.add_argument("--weights", type=pathlib.Path, help="weights directory (default: WORKDIR/best)")
    p.add_argument(
        "--dataset",
        default="own",
        choices=("own", *EXTERNAL),
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


def _source(args: argparse.Namespace, config, data_dir: pathlib.Path):
    """(the split to evaluate, the run's training split or None, the dataset's name in file names)."""
    from caco_jax.data import ham10000, registry

    if args.dataset in EXTERNAL:
        if args.manual_dir:
            ham10000.prepare(args.manual_dir, data_dir, config=args.dataset, image_size=config.data.build_size)
        return (
            ham10000.open_source(data_dir, config=args.dataset, image_size=config.data.build_size),
            None,
            args.dataset,
            ham10000.TFDS_SPLIT[args.dataset],
        )
    if args.manual_dir:
        config.data.manual_dir = str(args.manual_dir)
    config.data.data_dir = str(data_dir)
    splits = registry.open_data(config, args.workdir.resolve())
    return splits[args.split], splits["train"], config.data.name, args.split


def run(args: argparse.Namespace) -> int:
    import jax
    import numpy as np

    from caco_jax.data import pipeline, registry
    from caco_jax.evaluation import calibration, predictions, selective
    from caco_jax.evaluation.reports import evaluation_report, write_report
    from caco_jax.models import count_params
    from caco_jax.runs.loading import load_trained
    from caco_jax.training import compile_cache, parallel
    from caco_jax.training.evaluate import collect
    from caco_jax.training.losses import make_loss
    from caco_jax.training.steps import ModelDef, build_steps

    if args.batch_size < 0:
        raise UsageError(f"--batch_size must be >= 1 (0: the run's), got {args.batch_size}")
    compile_cache.enable(args.compile_cache)
    config, model, meta, weights_dir = load_trained(args.workdir, args.weights)
    data_dir = args.data_dir or registry.data_location(config, args.workdir.resolve())[0]
    source, train, dataset, split = _source(args, config, data_dir)

    mesh = parallel.make_mesh(config.num_devices or None)
    batch_size = args.batch_size or config.eval_batch_size
    parallel.check_batch_size(batch_size, mesh, "batch_size")
    class_names = meta["class_names"]
    # The reported loss only: LDAM margins need the training counts; without them, cross-entropy.
    counts = meta.get("train_class_counts")
    loss_cfg = config.loss if counts else config.loss.copy_and_resolve_references()
    if not counts:
        loss_cfg.name, loss_cfg.drw_epoch = "ce", -1
    loss = make_loss(loss_cfg, counts, num_classes=len(class_names))
    model_def = ModelDef(model)
    steps = build_steps(model_def, mesh, loss=loss)
    repl = parallel.replicated(mesh)
    params, stats = jax.device_put((model_def.init_params, model_def.init_batch_stats), repl)
    batches = pipeline.eval_iterator(source, batch_size=batch_size, image_size=config.data.image_size)
    weights = jax.device_put(np.ones(len(class_names), np.float32), repl)
    temperature = calibration.load(weights_dir) if args.calibration else None
    evaluate = steps.eval_tta if args.tta else steps.eval
    assert evaluate is not None  # built with a loss
    acc, loss_value = collect(evaluate, params, stats, batches, weights, mesh, class_names)
    out = args.out or args.workdir
    if args.save_predictions:
        out.mkdir(parents=True, exist_ok=True)
        predictions.save(predictions.path(out, split, args.tta), *acc.logits(), source, train)
    fitted = selective.load(weights_dir) if args.calibration else None
    report = evaluation_report(
        acc,
        loss_value,
        temperature,
        groups=source.lesion_ids,
        rule=_decision(weights_dir),
        meta=source.meta,
        answer_rule=config.evaluation.get("decision", "argmax"),
        threshold=fitted["threshold"] if fitted else None,
        split=split,
        dimensions=entry.subgroups if (entry := registry.known(config.data.name)) is not None else None,
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
        class_names=class_names,
        prefix=f"report_{dataset}_{split}",
        temperature_source=temperature_source,
    )
    _print_summary(f"{dataset}/{split}", report, temperature)
    print(f"report: {paths['md']}")
    return 0


def _decision(weights_dir: pathlib.Path):
    from caco_jax.evaluation import decision

    return decision.load(weights_dir)


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
