"""Evaluate a trained run's best checkpoint on any split or dataset and write a report.

    python scripts/evaluate.py --workdir runs/caco [--split test]
    python scripts/evaluate.py --workdir runs/caco --data_dir data/tfds          # another build location
    python scripts/evaluate.py --workdir runs/caco --dataset isic2018_test \\
        --manual_dir /path/to/ISIC2018 --data_dir data/tfds                    # external ISIC 2018 test set

Writes report_<dataset>_<split>.{md,json}, a confusion-matrix PNG and a reliability diagram (to --out,
default the workdir). The temperature saved with the weights (calibration.json) divides the logits unless
--no_calibration; the report gives ECE before and after it. --tta averages the probabilities over the
8 flips / 90-degree rotations and reports BACC with and without.
"""
from __future__ import annotations

import argparse
import pathlib
import sys

import jax
import numpy as np
from ml_collections import ConfigDict

from caco_jax import calibration, compile_cache, parallel
from caco_jax.data import ham10000, pipeline
from caco_jax.evaluate import load_trained, run_eval, write_report
from caco_jax.losses import make_loss
from caco_jax.models import count_params
from caco_jax.steps import ModelDef, build_steps
from caco_jax.workspace import data_location, split_options


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", type=pathlib.Path, required=True, help="a scripts/train.py run directory")
    p.add_argument("--weights", type=pathlib.Path, help="weights directory (default: WORKDIR/best)")
    p.add_argument("--dataset", default="ham10000", choices=sorted(ham10000.TFDS_SPLIT))
    p.add_argument("--split", default="test", choices=("train", "validation", "test"),
                   help="HAM10000 split (the run's own split settings); ignored for ISIC 2018 sets")
    p.add_argument("--data_dir", type=pathlib.Path, help="TFDS data_dir (default: the run's)")
    p.add_argument("--manual_dir", type=pathlib.Path, help="raw files to build --dataset from first")
    p.add_argument("--batch_size", type=int, default=0, help="default: the run's eval_batch_size")
    p.add_argument("--out", type=pathlib.Path, help="report directory (default: WORKDIR)")
    p.add_argument("--tta", action="store_true", help="test-time augmentation: average over the 8 flips / rotations")
    p.add_argument("--no_calibration", action="store_true",
                   help="ignore the temperature saved with the weights (plain softmax)")
    p.add_argument("--compile_cache", help="persistent XLA compilation cache directory, or 'off' "
                   f"(default: ${compile_cache.ENV} or {compile_cache.default_dir()})")
    args = p.parse_args(argv)
    compile_cache.enable(args.compile_cache)

    config, model, meta, weights_dir = load_trained(args.workdir, args.weights)
    default_dir, _ = data_location(config, args.workdir.resolve())
    data_dir = args.data_dir or default_dir
    build_size = config.data.build_size
    if args.manual_dir:
        ham10000.prepare(args.manual_dir, data_dir, config=args.dataset, image_size=build_size)
    if args.dataset == "ham10000":
        source = pipeline.open_splits(data_dir, image_size=build_size, **split_options(config))[args.split]
        split = args.split
    else:
        source = pipeline.open_source(data_dir, config=args.dataset, image_size=build_size)
        split = ham10000.TFDS_SPLIT[args.dataset]

    mesh = parallel.make_mesh(config.num_devices or None)
    batch_size = args.batch_size or config.eval_batch_size
    parallel.check_batch_size(batch_size, mesh, "batch_size")
    class_names = meta["class_names"]
    counts = meta.get("train_class_counts")  # LDAM margins need them (the reported loss only)
    loss_cfg = config.loss
    if not counts:
        loss_cfg = ConfigDict(config.loss.to_dict() | {"name": "ce", "drw_epoch": -1})
    loss = make_loss(loss_cfg, counts, num_classes=len(class_names))
    model_def = ModelDef(model)
    steps = build_steps(model_def, mesh, loss=loss)
    repl = parallel.replicated(mesh)
    params, stats = jax.device_put((model_def.init_params, model_def.init_batch_stats), repl)
    batches = pipeline.eval_iterator(source, batch_size=batch_size, image_size=config.data.image_size)
    weights = jax.device_put(np.ones(len(class_names), np.float32), repl)
    temperature = None if args.no_calibration else calibration.load(weights_dir)
    report = run_eval(steps.eval_tta if args.tta else steps.eval, params, stats, batches, weights, mesh, class_names,
                      temperature=temperature)
    out = args.out or args.workdir
    source = f"from {weights_dir / calibration.CALIBRATION_FILE}" if temperature is not None else ""
    paths = write_report(out, report, history=[], config=config, num_params=count_params(model), split=split,
                         checkpoint=str(weights_dir), class_names=class_names, prefix=f"report_{args.dataset}_{split}",
                         temperature_source=source)
    print(f"{args.dataset}/{split}: {report['num_examples']} images, accuracy {report['accuracy']:.4f}, "
          f"BACC {report['bacc']:.4f}, paper BACC {report['paper_bacc']:.4f}")
    cal = report["calibration"]
    print(f"ECE {100 * cal['uncalibrated']['ece']:.2f} % uncalibrated"
          + (f", {100 * cal['calibrated']['ece']:.2f} % with T = {temperature:.3f}" if temperature else
             " (no temperature for these weights)"))
    if report.get("tta"):
        tta = report["tta"]
        print(f"TTA ({tta['views']} views): BACC {tta['without']['bacc']:.4f} -> {tta['with']['bacc']:.4f}")
    print(f"report: {paths['md']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
