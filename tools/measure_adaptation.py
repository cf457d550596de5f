"""A new clinic's images: each remedy of issue 37 measured on the leave-one-source-out protocol and on
acquisition-shifted copies of the test split (docs/results_adaptation_cpu.{md,json}).

    python tools/measure_adaptation.py --runs runs/reproduce --data_dir data/tfds --seeds 0,1 \\
        --out docs/results_adaptation_cpu

Runs: ``sources_cpu/{lesion_recipe,loso_rosendahl,loso_vidir_modern}_s<seed>`` (caco-jax reproduce --preset
sources_cpu) and, when present, the trained remedies ``adaptation_cpu/<cell>_{cc,aug,cc_aug}_s<seed>``.

For a held-out source S: *E* are S's images in the ordinary lesion split's test set (the images the
sources page compares on), *A* the rest of S (lesion-disjoint from E: the ordinary split is by lesion).
The test-time remedies adapt on A only and are scored on E, so no evaluated image was used to adapt.
Every variant answers as the recipe ships (the balanced rule fitted on its source run's TTA validation
predictions, with TTA) and under argmax without TTA; each is paired against the held-out model without
remedies on the same images (lesion-bootstrap intervals), and the drop it recovers is read against the
model trained on every source. What is chosen (AdaBN's depth and weight) is chosen on acquisition-shifted
copies of the held-out run's own validation split, before any E image is scored.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from caco_jax import files  # noqa: E402
from caco_jax.data.shifts import SHIFTS, shifted  # noqa: E402
from caco_jax.evaluation import intervals  # noqa: E402

SOURCES = ("rosendahl", "vidir_modern")
REMEDIES = ("cc", "aug", "cc_aug")
DEPTHS: tuple[int | None, ...] = (3, 6, None)  # stem + first k blocks; None: every layer
ALPHAS = (0.5, 1.0)
COUNTS = (8, 32, 128, 512)
IN_SPLIT_SHIFTS = ("both",)  # the field of view with zoom-out and another illuminant together
SHIFT_SEED = 20261207  # the acquisition-shifted copies: fixed before any figure was looked at
RESAMPLES = 1000
GRID: dict[str, Any] = {
    "depths": [str(d) for d in DEPTHS],
    "alphas": list(ALPHAS),
    "counts": list(COUNTS),
    "resamples": RESAMPLES,
}


class Model:
    """A run's weights (or an adapted copy) answering images as the recipe ships and under argmax."""

    def __init__(self, workdir: pathlib.Path, rule_from: pathlib.Path | None = None):
        from caco_jax.evaluation import calibration, run_figures
        from caco_jax.serving.predictor import Predictor

        self.workdir = workdir
        self.predictor = Predictor(workdir, batch_size=64, decision="argmax")
        source = rule_from or workdir  # an adapted copy keeps its source run's rule
        temperature = calibration.load(source / "best") or 1.0
        self.offsets = np.asarray(run_figures.fitted_rules(source, True, temperature)["balanced"].offsets)
        self.class_names = list(self.predictor.class_names)

    def answers(self, images: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
        plain = self.predictor.probabilities(images)
        tta = self.predictor.probabilities(images, tta=True)
        shipped = np.argmax(np.log(np.maximum(tta, 1e-300)) + self.offsets, axis=1)
        return {
            "shipped": {"probs": tta, "predicted": shipped},
            "argmax": {"probs": plain, "predicted": plain.argmax(1)},
        }


def guard_rates(model: Model, images: np.ndarray) -> dict[str, Any] | None:
    """The guard's two answers on ``images``: the share called "not dermoscopy" and the share called "a
    dermoscopy image unlike the training images" (None when the run has no guard)."""
    screen = model.predictor.screen(images)
    if screen is None:
        return None
    guard = model.predictor.guard
    return {
        "images": int(len(images)),
        "not_dermoscopy": float(np.mean(screen.not_dermoscopy)),
        "unlike_training": float(np.mean(screen.unlike_training)),
        "far_part": guard is not None and guard.far_threshold is not None,
    }


def far_kinds(model: Model, test_images: np.ndarray) -> dict[str, Any]:
    """The guard on the far-OOD kinds of docs/results_ood_cpu.md (tools/measure_ood.py builds them): the share
    of each called "not dermoscopy", and the AUROC of the far score against the test lesions."""
    import measure_ood

    guard = model.predictor.guard
    tested = model.predictor.screen(test_images)
    if guard is None or guard.far_threshold is None or tested is None:
        return {}
    size = model.predictor.image_size
    out = {}
    for kind, items in (measure_ood.far_sets() | measure_ood.synthetic_sets()).items():
        screen = model.predictor.screen(_as_input(np.asarray([], object), size, pictures=[im for _, im in items]))
        assert screen is not None
        ood, ind = screen.far_scores[:, None], tested.far_scores[None, :]
        out[kind] = {
            "images": len(items),
            "pictures": len({g for g, _ in items}),
            "not_dermoscopy": float(np.mean(screen.not_dermoscopy)),
            "unlike_training": float(np.mean(screen.unlike_training)),
            "far_auroc": float(np.mean(ood > ind) + 0.5 * np.mean(ood == ind)),
        }
    return out


def _plain_figures(model: Model, images: np.ndarray, labels: np.ndarray, groups: np.ndarray, names: list) -> dict:
    """Figures of the plain images under argmax (no TTA)."""
    probs = model.predictor.probabilities(images)
    return figures({"probs": probs, "predicted": probs.argmax(1)}, labels, groups, names)


def figures(answer: dict[str, np.ndarray], labels: np.ndarray, groups: np.ndarray, names: list[str]) -> dict:
    """Accuracy, BACC over the classes present, per-class recall, melanoma sensitivity, with intervals."""
    predicted = answer["predicted"]
    present = sorted({int(k) for k in labels})
    recall = {names[k]: float(np.mean(predicted[labels == k] == k)) for k in present}
    ci = intervals.bootstrap(answer["probs"], labels, groups, names, predicted=predicted, num_resamples=RESAMPLES)
    return {
        "images": int(len(labels)),
        "accuracy": float(np.mean(predicted == labels)),
        "bacc": float(np.mean(list(recall.values()))),
        "recall": recall,
        "support": {names[k]: int(np.sum(labels == k)) for k in present},
        "ci": {k: ci[k] for k in ("accuracy", "bacc")},
    }


def paired(a: dict, b: dict, labels: np.ndarray, groups: np.ndarray) -> dict[str, Any]:
    """a - b on the same images (lesion bootstrap), accuracy and BACC."""
    out = intervals.paired({**a, "labels": labels}, {**b, "labels": labels}, groups, num_resamples=RESAMPLES)
    return {k: out[k] for k in ("accuracy", "bacc")}


def _split(workdir: pathlib.Path, data_dir: pathlib.Path, split: str) -> Any:
    from caco_jax.data import registry
    from caco_jax.runs.workspace import load_config

    config = load_config(workdir)
    config.data.data_dir, config.data.manual_dir = str(data_dir), ""
    return registry.open_data(config, workdir)[split]


def _decode(source: Any, rows: np.ndarray, size: int, fov_crop: bool = False) -> np.ndarray:
    return source.with_fov_crop(fov_crop).decode([int(r) for r in rows], (size, size))


def _adapted(workdir: pathlib.Path, images: np.ndarray, tmp: pathlib.Path, **options: Any) -> Model:
    from caco_jax.adaptation import run as adaptation

    out = pathlib.Path(tempfile.mkdtemp(dir=tmp))
    adaptation.adapt(workdir, images, out / "run", estimate_prior=False, min_images=1, **options)
    return Model(out / "run", rule_from=workdir)


def _lesion_halves(groups: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    lesions = np.unique(groups)
    first = set(np.random.default_rng(seed).permutation(lesions)[: len(lesions) // 2].tolist())
    mask = np.asarray([g in first for g in groups])
    return np.flatnonzero(mask), np.flatnonzero(~mask)


def _a_set(whole: Any, a_rows: np.ndarray, a_images: np.ndarray, names: Any) -> tuple:
    """(images, labels, lesion ids, class names) of A, the held-out source's images outside E."""
    return a_images, np.asarray(whole.labels)[a_rows], np.asarray(whole.lesion_ids)[a_rows], names


def count_curve(loso_dir: pathlib.Path, a_set: tuple, seed: int, tmp: pathlib.Path, choice: dict) -> dict:
    """How many images AdaBN needs, measured on A (never on E, the test images): adapted on n images drawn
    from one half of A's lesions (one seeded draw per n), scored on the other half (shipped view)."""
    images, labels, groups, names = a_set
    pool, scored = _lesion_halves(groups, SHIFT_SEED)
    curve: dict[Any, Any] = {"adapt_pool": int(len(pool)), "scored": int(len(scored))}
    for n in [c for c in COUNTS if c < len(pool)]:
        pick = pool[np.sort(np.random.default_rng([seed, n]).permutation(len(pool))[:n])]
        few = _adapted(loso_dir, images[pick], tmp, depth=choice["depth"], alpha=choice["alpha"])
        curve[n] = figures(few.answers(images[scored])["shipped"], labels[scored], groups[scored], names)
    return curve


def counts_only(runs: Callable, result: dict, seed: int, data_dir: pathlib.Path, tmp: pathlib.Path, log) -> None:
    """Recomputes each held-out row's count curve (:func:`count_curve`) in ``result``, with the seed's
    recorded AdaBN choice; the rest of the entry is kept."""
    entry = result["by_seed"][str(seed)]
    ref_dir = runs("sources_cpu", "lesion_recipe", seed)
    in_test = set(map(str, _split(ref_dir, data_dir, "test").image_ids))
    for row in entry["held_out"]:
        loso_dir = runs("sources_cpu", f"loso_{row['source']}", seed)
        whole = _split(loso_dir, data_dir, "test")
        a_rows = np.asarray([i for i, x in enumerate(whole.image_ids) if str(x) not in in_test])
        model = Model(loso_dir)
        a_set = _a_set(whole, a_rows, _decode(whole, a_rows, model.predictor.image_size), model.class_names)
        curve = count_curve(loso_dir, a_set, seed, tmp, entry["adabn_choice"])
        row["adabn_by_count"] = curve
        said = ", ".join(f"{k}: {100 * v['accuracy']:.1f}" for k, v in curve.items() if isinstance(v, dict))
        log(f"seed {seed} {row['source']}: count curve on A, accuracy {said}")


def choose_adabn(loso_dirs: list[pathlib.Path], data_dir: pathlib.Path, tmp: pathlib.Path, log: Callable) -> dict:
    """(depth, alpha) with the best mean BACC (shipped view) on acquisition-shifted copies of each held-out
    run's validation split, adapting on one half of its lesions and scoring the other."""
    scores: dict[str, list[float]] = {}
    for workdir in loso_dirs:
        validation = _split(workdir, data_dir, "validation")
        model = Model(workdir)
        size = model.predictor.image_size
        images = _as_input(shifted(_stored(validation), "both", 2 * size, SHIFT_SEED), size)
        labels, groups = np.asarray(validation.labels), np.asarray(validation.lesion_ids)
        adapt_rows, score_rows = _lesion_halves(groups, SHIFT_SEED)
        base = figures(model.answers(images[score_rows])["shipped"], labels[score_rows], groups[score_rows],
                       model.class_names)["bacc"]  # fmt: skip
        scores.setdefault("none", []).append(base)
        for depth in DEPTHS:
            for alpha in ALPHAS:
                adapted = _adapted(workdir, images[adapt_rows], tmp, depth=depth, alpha=alpha)
                bacc = figures(adapted.answers(images[score_rows])["shipped"], labels[score_rows],
                               groups[score_rows], model.class_names)["bacc"]  # fmt: skip
                scores.setdefault(f"{depth}|{alpha}", []).append(bacc)
        log(f"AdaBN choice, {workdir.name}: none {base:.3f}, " + ", ".join(
            f"{k} {v[-1]:.3f}" for k, v in scores.items() if k != "none"))  # fmt: skip
    means = {k: float(np.mean(v)) for k, v in scores.items()}
    best = max((k for k in means if k != "none"), key=lambda k: means[k])
    depth, alpha = best.split("|")
    return {
        "depth": None if depth == "None" else int(depth),
        "alpha": float(alpha),
        "validation_bacc": means,
        "runs": [d.name for d in loso_dirs],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=pathlib.Path, required=True)
    p.add_argument("--data_dir", type=pathlib.Path, required=True)
    p.add_argument("--seeds", default="1,2")
    p.add_argument("--out", type=pathlib.Path, required=True, help="the JSON and page, without suffix")
    p.add_argument("--page_only", action="store_true", help="only rewrite the page from the JSON")
    p.add_argument("--held_out_only", action="store_true", help="skip the ordinary split and its shifted copies")
    p.add_argument("--adabn_from", type=int, default=None, help="reuse the AdaBN choice made for this seed")
    p.add_argument("--counts_only", action="store_true", help="recompute only the count curves of measured seeds")
    args = p.parse_args(argv)
    t0 = time.time()
    out_json, out_md = args.out.with_suffix(".json"), args.out.with_suffix(".md")
    if args.page_only:
        out_md.write_text(markdown(json.loads(out_json.read_text())))
        return 0
    from caco_jax.training import compile_cache

    compile_cache.enable()  # every adapted copy builds its own steps: the same programs, compiled once

    def log(message: str) -> None:
        print(f"[{(time.time() - t0) / 60:5.1f} min] {message}", flush=True)

    runs = args.runs.resolve()

    def run(preset: str, cell: str, seed: int) -> pathlib.Path | None:
        d = runs / preset / f"{cell}_s{seed}"
        return d if (d / "report.json").is_file() else None

    # seeds measured earlier (another invocation) are kept: each seed is measured on its own
    earlier = json.loads(out_json.read_text()) if out_json.is_file() else {}
    result: dict[str, Any] = {k: earlier[k] for k in ("seeds", "by_seed") if k in earlier}
    result |= {"shift_seed": SHIFT_SEED, "shifts": {k: SHIFTS[k] for k in IN_SPLIT_SHIFTS}, "grid": GRID}
    for seed in [int(s) for s in args.seeds.split(",")]:
        with tempfile.TemporaryDirectory() as tmp_name:
            tmp = pathlib.Path(tmp_name)
            if args.counts_only:
                if str(seed) not in result.get("by_seed", {}):
                    raise SystemExit(f"error: --counts_only: seed {seed} is not in {out_json}; measure it first")
                counts_only(run, result, seed, args.data_dir, tmp, log)
                files.write_atomic(out_json, json.dumps(result, indent=1, default=float) + "\n", "the measurement")
                out_md.write_text(markdown(json.loads(out_json.read_text())))
                continue
            loso_dirs = [d for src in SOURCES if (d := run("sources_cpu", f"loso_{src}", seed))]
            if not loso_dirs:
                log(f"seed {seed}: no sources_cpu runs under {runs}")
                continue
            if args.adabn_from is not None:
                choice = {**result["by_seed"][str(args.adabn_from)]["adabn_choice"], "from_seed": args.adabn_from}
            else:
                choice = choose_adabn(loso_dirs, args.data_dir, tmp, log)
            log(f"seed {seed}: AdaBN chosen: depth {choice['depth']}, alpha {choice['alpha']}")
            entry = {
                "seed": seed,
                "adabn_choice": choice,
                "held_out": held_out(runs, run, [seed], args.data_dir, tmp, choice, log),
                "in_split": [] if args.held_out_only else in_split(run, [seed], args.data_dir, tmp, choice, log),
                "minutes": (time.time() - t0) / 60,
            }
        result["seeds"] = sorted({*result.get("seeds", []), seed})
        result["by_seed"] = {**result.get("by_seed", {}), str(seed): entry}
        files.write_atomic(out_json, json.dumps(result, indent=1, default=float) + "\n", "the measurement")
        out_md.write_text(markdown(json.loads(out_json.read_text())))  # as the page is rebuilt: keys are strings
        log(f"seed {seed}: wrote {out_json} and {out_md}")
    return 0


def held_out(runs, run, seeds, data_dir, tmp, choice, log) -> list[dict[str, Any]]:
    """Per seed and held-out source: every remedy on E, paired against the held-out model."""
    from caco_jax.evaluation import predictions, prior_shift

    rows = []
    for seed in seeds:
        ref_dir = run("sources_cpu", "lesion_recipe", seed)
        for source in SOURCES:
            loso_dir = run("sources_cpu", f"loso_{source}", seed)
            if ref_dir is None or loso_dir is None:
                continue
            ordinary = _split(ref_dir, data_dir, "test")
            whole = _split(loso_dir, data_dir, "test")
            in_test = set(map(str, ordinary.image_ids))
            e_rows = np.asarray([i for i, x in enumerate(whole.image_ids) if str(x) in in_test])
            a_rows = np.asarray([i for i, x in enumerate(whole.image_ids) if str(x) not in in_test])
            ref, loso = Model(ref_dir), Model(loso_dir)
            size, names = loso.predictor.image_size, loso.class_names
            e_images, a_images = _decode(whole, e_rows, size), _decode(whole, a_rows, size)
            labels, groups = np.asarray(whole.labels)[e_rows], np.asarray(whole.lesion_ids)[e_rows]
            assert not set(groups) & set(np.asarray(whole.lesion_ids)[a_rows]), "E and A share a lesion"
            variants: dict[str, dict] = {
                "trained on every source": ref.answers(e_images),
                "held out": loso.answers(e_images),
            }
            variants["field-of-view crop"] = loso.answers(_decode(whole, e_rows, size, fov_crop=True))
            adapted = _adapted(loso_dir, a_images, tmp, depth=choice["depth"], alpha=choice["alpha"])
            variants["AdaBN"] = adapted.answers(e_images)
            # EM prior from A (plain posteriors of the held-out model and of the adapted one), argmax under it
            val = predictions.load(predictions.path(loso_dir, "validation"))
            bct = prior_shift.fit_bias_temperature(val.logits, val.labels, len(names))
            for name, model, base in (("EM prior", loso, "held out"), ("AdaBN + EM prior", adapted, "AdaBN")):
                logp_a = np.log(np.maximum(model.predictor.probabilities(a_images, temperature=1.0), 1e-300))
                logp_e = np.log(np.maximum(model.predictor.probabilities(e_images, temperature=1.0), 1e-300))
                est = prior_shift.estimate_prior(bct.log_posteriors(logp_a), np.asarray(bct.prior))
                q = prior_shift.adjusted_probabilities(bct.log_posteriors(logp_e), est)
                variants[name] = {
                    "shipped": variants[base]["shipped"],
                    "argmax": {"probs": q, "predicted": q.argmax(1)},
                }
                variants[name]["prior"] = est.to_json()  # type: ignore[assignment]
            # the trained remedies chosen on A (lesion-disjoint from E): a validation the reported E does not use
            a_set = _a_set(whole, a_rows, a_images, names)
            validation_a = {"held out": _plain_figures(loso, *a_set)}
            for remedy in REMEDIES:
                d = run("adaptation_cpu", f"loso_{source}_{remedy}", seed)
                if d is not None:
                    trained = Model(d)
                    validation_a[f"trained: {remedy}"] = _plain_figures(trained, *a_set)
                    variants[f"trained: {remedy}"] = trained.answers(e_images)
                    if remedy == "cc_aug":
                        variants["trained: cc_aug + AdaBN"] = _adapted(
                            d, a_images, tmp, depth=choice["depth"], alpha=choice["alpha"]
                        ).answers(e_images)
            counts = count_curve(loso_dir, a_set, seed, tmp, choice)
            row = {"seed": seed, "source": source, "e_images": int(len(e_rows)), "a_images": int(len(a_rows)),
                   "variants": {}, "adabn_by_count": counts}  # fmt: skip
            row["validation_a"] = validation_a
            row["guard"] = {
                "trained on every source": guard_rates(ref, e_images),
                "held out": guard_rates(loso, e_images),
                "AdaBN": guard_rates(adapted, e_images),
            }
            for name, ans in variants.items():
                entry: dict[str, Any] = {}
                for view in ("shipped", "argmax"):
                    entry[view] = figures(ans[view], labels, groups, names)
                    if name != "held out":
                        entry[view]["vs_held_out"] = paired(ans[view], variants["held out"][view], labels, groups)
                if "prior" in ans:
                    entry["prior"] = ans["prior"]
                row["variants"][name] = entry
            rows.append(row)
            v = row["variants"]
            log(f"seed {seed} {source}: E {len(e_rows)}, A {len(a_rows)}; shipped acc " + ", ".join(
                f"{k} {100 * x['shipped']['accuracy']:.1f}" for k, x in v.items()))  # fmt: skip
    return rows


def in_split(run, seeds, data_dir, tmp, choice, log) -> list[dict[str, Any]]:
    """What each remedy costs on the ordinary test split, and what it does on acquisition-shifted copies."""
    rows = []
    for seed in seeds:
        ref_dir = run("sources_cpu", "lesion_recipe", seed)
        if ref_dir is None:
            continue
        test, validation = _split(ref_dir, data_dir, "test"), _split(ref_dir, data_dir, "validation")
        ref = Model(ref_dir)
        size, names = ref.predictor.image_size, ref.class_names
        images = _decode(test, np.arange(len(test)), size)
        val_images = _decode(validation, np.arange(len(validation)), size)
        labels, groups = np.asarray(test.labels), np.asarray(test.lesion_ids)
        trained = {r: Model(d) for r in REMEDIES if (d := run("adaptation_cpu", f"lesion_recipe_{r}", seed))}
        cropped = _decode(test, np.arange(len(test)), size, fov_crop=True)
        sets = {"ordinary test": (images, val_images, cropped)}
        raw_test, raw_val = _stored(test), _stored(validation)
        for kind in IN_SPLIT_SHIFTS:
            acquired = shifted(raw_test, kind, 2 * size, SHIFT_SEED)  # as another camera took them
            sets[f"shifted: {kind}"] = (
                _as_input(acquired, size),
                _as_input(shifted(raw_val, kind, 2 * size, SHIFT_SEED + 1), size),
                _as_input(acquired, size, fov_crop=True),
            )
        out: dict[str, Any] = {"seed": seed, "sets": {}, "guard": {}, "validation": {}}
        val_labels, val_groups = np.asarray(validation.labels), np.asarray(validation.lesion_ids)
        for name, model in (("recipe", ref), *((f"trained: {r}", m) for r, m in trained.items())):
            out["validation"][name] = figures(model.answers(val_images)["shipped"], val_labels, val_groups, names)
        for set_name, (x, x_val, x_cropped) in sets.items():
            out["guard"][set_name] = guard_rates(ref, x)
            if set_name == "ordinary test":
                out["far_kinds"] = far_kinds(ref, x)
            variants: dict[str, dict] = {"recipe": ref.answers(x)}
            variants["field-of-view crop"] = ref.answers(x_cropped)
            variants["AdaBN (on validation images)"] = _adapted(
                ref_dir, x_val, tmp, depth=choice["depth"], alpha=choice["alpha"]
            ).answers(x)
            for r, model in trained.items():
                variants[f"trained: {r}"] = model.answers(x)
            entry = {}
            for name, ans in variants.items():
                e: dict[str, Any] = {}
                for view in ("shipped", "argmax"):
                    e[view] = figures(ans[view], labels, groups, names)
                    if name != "recipe":
                        e[view]["vs_recipe"] = paired(ans[view], variants["recipe"][view], labels, groups)
                entry[name] = e
            out["sets"][set_name] = entry
            log(f"seed {seed} {set_name}: shipped BACC " + ", ".join(
                f"{k} {100 * v['shipped']['bacc']:.1f}" for k, v in entry.items()))  # fmt: skip
        rows.append(out)
    return rows


def _stored(source: Any) -> np.ndarray:
    """Every image of ``source`` at its stored size (as acquired: 150 x 200 for HAM10000)."""
    from caco_jax.data.records import stored_size

    return source.decode(list(range(len(source))), stored_size(source))


def _as_input(images: np.ndarray, size: int, fov_crop: bool = False, pictures: list | None = None) -> np.ndarray:
    """Images (or ``pictures`` of any sizes) as the product's decoding makes them: cropped to the field of view
    if asked, then resized (PNG bytes through caco_jax.data.images.decode, the one decoder)."""
    import io

    from PIL import Image

    from caco_jax.data.images import decode

    out = []
    for image in pictures if pictures is not None else images:
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="PNG")
        out.append(decode(buf.getvalue(), (size, size), fov_crop=fov_crop))
    return np.stack(out)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _diff(d: dict | None) -> str:
    """'+3.1 [-0.4, +6.9]' in points from a paired difference, or '-'."""
    if not d:
        return "-"
    lo, hi = d["interval"]
    return f"{100 * d['difference']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"


def _recovered(variant: dict, held: dict, every: dict) -> str:
    """The share of the leave-one-source-out accuracy drop a variant wins back (same images)."""
    drop = every["accuracy"] - held["accuracy"]
    return "-" if abs(drop) < 1e-9 else f"{100 * (variant['accuracy'] - held['accuracy']) / drop:+.0f} %"


def _held_out_lines(entry: dict, view: str) -> list[str]:
    lines = []
    for row in entry["held_out"]:
        v = row["variants"]
        every, held = v["trained on every source"][view], v["held out"][view]
        lines += [
            "",
            f"**{row['source']} held out, seed {row['seed']}** ({row['e_images']} evaluated images E, "
            f"{row['a_images']} adaptation images A, lesion-disjoint):",
            "",
            "| variant | accuracy % | BACC % | melanoma sensitivity % | accuracy vs held out | BACC vs held out "
            "| drop recovered |",
            "|---|---:|---:|---:|---|---|---:|",
        ]
        for name, figs in v.items():
            if view == "shipped" and "EM prior" in name:
                continue  # the prior's clinic rule replaces the balanced rule: its answers are the argmax view's
            f = figs[view]
            mel, vs = f["recall"].get("mel"), f.get("vs_held_out") or {}
            recovered = "" if name in ("held out", "trained on every source") else _recovered(f, held, every)
            lines.append(
                f"| {name} | {_pct(f['accuracy'])} | {_pct(f['bacc'])} | {_pct(mel)} | "
                f"{_diff(vs.get('accuracy'))} | {_diff(vs.get('bacc'))} | {recovered} |"
            )
    return lines


def markdown(result: dict) -> str:
    """docs/results_adaptation_cpu.md from the measurement's JSON."""
    seeds = [str(s) for s in result.get("seeds", [])]
    lines = [
        "# A new clinic's images: remedies measured (CPU protocol)",
        "",
        "Generated by `python tools/measure_adaptation.py` from "
        "[results_adaptation_cpu.json](results_adaptation_cpu.json) (its docstring says how each set is made); "
        "the discussion is in [results_adaptation_cpu_discussion.md](results_adaptation_cpu_discussion.md).",
        "",
        f"Seeds: {', '.join(seeds)}. Runs: `caco-jax reproduce --preset sources_cpu` (configs/recipe.py, 112 px, "
        "10 epochs, lesion split; trained on every source, or with rosendahl or vidir_modern held out) and, where "
        "trained, `--preset adaptation_cpu` (the same with colour constancy and acquisition augmentation: `cc_aug`). "
        "E: the held-out source's images in the ordinary split's test set (what the sources page compares on); "
        "A: the rest of that source, lesion-disjoint from E. AdaBN and the EM prior are estimated on A only and "
        "scored on E: no evaluated image was used to adapt. Intervals: 95 % lesion bootstrap of E (test sampling "
        "only, one seed per table). 'Drop recovered': the share of the accuracy lost by holding the source out "
        "(trained on every source - held out, same images) that the variant wins back. The EM prior's rows are in "
        "the argmax view only: its rule (`predict --decision clinic`) is argmax under the estimated class mix, "
        "without TTA, in place of the balanced rule.",
    ]
    for seed in seeds:
        entry = result["by_seed"][seed]
        c = entry["adabn_choice"]
        lines += [
            "",
            f"## Seed {seed}",
            "",
            "AdaBN's depth and weight, chosen on acquisition-shifted copies of the held-out runs' own validation "
            "splits (adapt on half of the lesions, score the other half; shipped-view BACC, mean of the runs"
            + (f"; the choice made for seed {c['from_seed']}, reused" if "from_seed" in c else "")
            + f"): **depth {c['depth'] if c['depth'] is not None else 'every layer'}, alpha {c['alpha']}**.",
            "",
            "| BatchNorm layers re-estimated | alpha | validation BACC % (shifted copies) |",
            "|---|---:|---:|",
        ]
        for key, value in c["validation_bacc"].items():
            depth, _, alpha = key.partition("|")
            layers = {"none": "none (not adapted)", "None": "every layer"}.get(depth, f"stem + first {depth} blocks")
            lines.append(f"| {layers} | {alpha or '-'} | {_pct(value)} |")
        for view, title in (("shipped", "as the recipe ships (balanced rule, TTA)"), ("argmax", "argmax, no TTA")):
            lines += ["", f"### Held-out sources, {title}"]
            lines += _held_out_lines(entry, view)
        lines += ["", "### Choosing the trained remedies on A (argmax without TTA; A is not E)", "",
                  "| source | model | accuracy % | BACC % |", "|---|---|---:|---:|"]  # fmt: skip
        for row in entry["held_out"]:
            for name, f in row.get("validation_a", {}).items():
                lines.append(f"| {row['source']} | {name} | {_pct(f['accuracy'])} | {_pct(f['bacc'])} |")
        lines += ["", "### How many images AdaBN needs (shipped view; adapted on n images of one half of A's "
                  "lesions, scored on the other half: not E)", "",
                  "| source | " + " | ".join(f"{n} images" for n in GRID["counts"]) + " |",
                  "|---|" + "---:|" * len(GRID["counts"])]  # fmt: skip
        for row in entry["held_out"]:
            cells = [
                f"{_pct(row['adabn_by_count'][str(n)]['accuracy'])} / {_pct(row['adabn_by_count'][str(n)]['bacc'])}"
                if str(n) in row["adabn_by_count"]
                else "-"
                for n in GRID["counts"]
            ]
            sizes = row["adabn_by_count"]
            where = f"; adapted from {sizes['adapt_pool']}, scored on {sizes['scored']}" if "scored" in sizes else ""
            lines.append(f"| {row['source']} (accuracy / BACC %{where}) | " + " | ".join(cells) + " |")
        lines += ["", "### The guard's two answers (share of images, %)", "",
                  "| images | model | not dermoscopy | dermoscopy unlike the training images | far part |",
                  "|---|---|---:|---:|---|"]  # fmt: skip
        rates = [(f"{r['source']} held out: E", name, g) for r in entry["held_out"] for name, g in r["guard"].items()]
        rates += [(set_name, "trained on every source", g) for split in entry["in_split"]
                  for set_name, g in split["guard"].items()]  # fmt: skip
        for where, name, g in rates:
            if g is not None:
                far = "yes" if g["far_part"] else "no (run fitted before it)"
                lines.append(
                    f"| {where} | {name} | {_pct(g['not_dermoscopy'])} | {_pct(g['unlike_training'])} | {far} |"
                )
        for split in entry["in_split"]:
            if split.get("validation"):
                lines += ["", "### Choosing the trained remedies on the ordinary validation split (shipped view)", "",
                          "| model | accuracy % | BACC % |", "|---|---:|---:|"]  # fmt: skip
                for name, f in split["validation"].items():
                    lines.append(f"| {name} | {_pct(f['accuracy'])} | {_pct(f['bacc'])} |")
            if split.get("far_kinds"):
                lines += ["", "### Far out of distribution: what the guard calls 'not dermoscopy' (every source)",
                          "", "| kind | images (pictures) | not dermoscopy % | unlike the training images % "
                          "| far-score AUROC against the test lesions |", "|---|---:|---:|---:|---:|"]  # fmt: skip
                for kind, k in split["far_kinds"].items():
                    lines.append(
                        f"| {kind} | {k['images']} ({k['pictures']}) | {_pct(k['not_dermoscopy'])} | "
                        f"{_pct(k['unlike_training'])} | {k['far_auroc']:.3f} |"
                    )
        for split in entry["in_split"]:
            lines += ["", "### The ordinary test split and acquisition-shifted copies of it (trained on every source)"]
            lines += ["", "| set | variant | accuracy % | BACC % | accuracy vs recipe | BACC vs recipe |",
                      "|---|---|---:|---:|---|---|"]  # fmt: skip
            for set_name, variants in split["sets"].items():
                for name, figs in variants.items():
                    f = figs["shipped"]
                    vs = f.get("vs_recipe") or {}
                    lines.append(
                        f"| {set_name} | {name} | {_pct(f['accuracy'])} | {_pct(f['bacc'])} | "
                        f"{_diff(vs.get('accuracy'))} | {_diff(vs.get('bacc'))} |"
                    )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
