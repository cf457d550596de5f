"""Fit a run's out-of-distribution guard and reliability threshold (for runs trained before they existed).

    caco-jax guard --workdir runs/recipe [--method mahalanobis --layer pooled] [--data_dir data/tfds]

Training fits both at its end; this command does the same for a finished run: the guard's arrays from
the training split, its threshold keeping 95 % of the validation images (``best/ood.json`` +
``ood.npz``), and the confidence below which answers are unreliable (``best/selective.json``, fitted
on the validation split under the run's decision rule). Nothing is chosen on the test split; the
share of test images the guard flags is printed.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

from caco_jax.cli import common
from caco_jax.errors import UsageError
from caco_jax.evaluation import ood_score

NAME = "guard"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workdir", required=True, type=pathlib.Path, help="the finished training run")
    p.add_argument("--method", choices=ood_score.METHODS, default=None, help="default: the one training fits")
    p.add_argument("--layer", choices=ood_score.LAYERS, default=None, help="features the method scores")
    p.add_argument("--data_dir", default="", help="the TFDS data_dir holding the run's build (default: the run's)")
    common.add_common(p)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from caco_jax.data import records, registry
    from caco_jax.evaluation import selective, side_files
    from caco_jax.runs.loading import load_trained
    from caco_jax.serving.predictor import Predictor
    from caco_jax.training import compile_cache, guard

    compile_cache.enable(args.compile_cache)
    config, _, _, weights_dir = load_trained(args.workdir, None)
    if args.data_dir:
        config.data.data_dir = args.data_dir
    config.data.manual_dir = ""  # read the existing build; never rebuild here
    splits = registry.open_data(config, args.workdir.resolve())
    predictor = Predictor(args.workdir, batch_size=64)
    size = (predictor.image_size, predictor.image_size)
    images = {name: records.decode_all(splits[name], size) for name in ("train", "validation", "test")}
    embedded = {name: predictor.embed(x) | {"labels": np.asarray(splits[name].labels)} for name, x in images.items()}
    fitted = guard.fit(
        embedded["train"],
        embedded["validation"],
        len(predictor.class_names),
        method=args.method or guard.DEFAULT_METHOD,
        layer=args.layer or guard.DEFAULT_LAYER,
    )
    validation = splits["validation"]
    fitted = guard.add_far_part(
        fitted, predictor.embed, guard.far_images(splits["train"], validation, predictor.image_size)
    )
    test = embedded["test"]
    screen = fitted.screen(test["logits"], test[fitted.layer])
    fitted.info["test_flagged"] = float((screen.unlike_training | screen.not_dermoscopy).mean())
    fitted.info["test_not_dermoscopy"] = float(screen.not_dermoscopy.mean())
    ood_score.save(weights_dir, fitted)
    if predictor.decision == "balanced" and predictor.balanced_rule is None:
        raise UsageError(f"{weights_dir} has no decision.json for the run's balanced rule")
    answer = predictor.decide(images["validation"])
    threshold = selective.fit_threshold(answer.model_probabilities, embedded["validation"]["labels"], answer.classes)
    threshold["rule"] = answer.rule
    selective.save(weights_dir, threshold)
    side_files.record(weights_dir)
    print(
        f"guard: {fitted.method} on the {fitted.layer} features, threshold {fitted.threshold:.4g} "
        f"({ood_score.KEEP:.0%} of validation kept; {fitted.info['test_flagged']:.1%} of test images flagged) "
        f"-> {weights_dir / ood_score.JSON_FILE}"
    )
    confidence = threshold["threshold"]
    print(
        "reliability: "
        + (
            f"answers below confidence {confidence:.3f} are marked unreliable"
            if confidence is not None
            else f"no confidence made the validation answers {selective.TARGET:.0%} accurate"
        )
        + f" -> {weights_dir / selective.FILE}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    return common.main(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
