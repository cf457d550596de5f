"""Measure the out-of-distribution guard's methods on a trained run (issue 28): docs/results_ood_cpu.md.

    python tools/measure_ood.py --workdir runs/recipe --out docs/results_ood_cpu [--data_dir data/tfds]

Out-of-distribution sets anyone can rebuild (nothing downloaded): far OOD from the sample images that
scikit-image and scikit-learn ship (natural photographs, faces, textures, documents, other medical
images), synthetic non-images (flat colours, noise, rendered text), and near OOD made from real
lesions (heavy blur, over- and under-exposure, a crop of the image border, a colour cast, grayscale).
Every image goes through the product's own decoding path (``Predictor.prepare`` of PNG bytes).

Each method (ood_score.METHODS, on the pooled and hidden features where it uses features) is fitted on
the training split with its threshold keeping 95 % of the validation images. The method is *chosen*
on the validation split (ID = validation images, near OOD made from validation lesions: the highest
mean AUROC over the OOD kinds); the *reported* figures use the test split (ID = test images, near OOD
made from test lesions): AUROC and the share of OOD images the validation threshold lets through
(FPR at 95 % of validation kept), with 95 % bootstrap intervals (ID images resampled by lesion, OOD
images by the picture they were made from), and the share of test images flagged (false alarms).
"""

from __future__ import annotations

import argparse
import io
import json
import pathlib
import sys
import time
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from caco_jax.evaluation import intervals, ood_score, reported  # noqa: E402

NEAR_PER_KIND = 200  # real lesions each near-OOD transform is applied to (a seeded sample)
RESAMPLES = 1000
VARIANTS = (
    ("max_logit", "pooled"),
    ("energy", "pooled"),
    ("mahalanobis", "pooled"),
    ("mahalanobis", "hidden"),
    ("knn", "pooled"),
    ("knn", "hidden"),
)


def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype == bool:
        image = image.astype(np.uint8) * 255
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    return np.asarray(image[..., :3], np.uint8)


def _crops(image: np.ndarray, rng: np.random.Generator, n: int = 3) -> list[np.ndarray]:
    """The whole picture and ``n`` random crops of half to three quarters of its shorter side."""
    h, w = image.shape[:2]
    out = [image]
    for _ in range(n):
        side = int(min(h, w) * rng.uniform(0.5, 0.75))
        y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        out.append(image[y : y + side, x : x + side])
    return out


def far_sets(seed: int = 0) -> dict[str, list[tuple[str, np.ndarray]]]:
    """{kind: [(picture it came from, uint8 RGB image)]} from the packages' bundled sample images."""
    import skimage.data as sk
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(seed)
    sets: dict[str, list[tuple[str, np.ndarray]]] = {}

    def add(kind: str, names: list[str], crops: int = 3) -> None:
        for name in names:
            image = _rgb(getattr(sk, name)())
            sets.setdefault(kind, []).extend((name, c) for c in _crops(image, rng, crops))

    add("natural photographs", ["astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "camera", "coins"])
    for i, image in enumerate(load_sample_images().images):
        sets["natural photographs"].extend((f"sklearn{i}", c) for c in _crops(image, rng))
    add("textures", ["brick", "grass", "gravel"])
    add("documents and text", ["text", "page"])
    add("other medical images", ["immunohistochemistry", "retina", "cell", "microaneurysms"])
    faces = np.load(pathlib.Path(sk.__file__).parent / "lfw_subset.npy")[:100]
    sets["faces (LFW)"] = [(f"face{i}", _rgb((f * 255).astype(np.uint8))) for i, f in enumerate(faces)]
    return sets


def synthetic_sets(seed: int = 0, n: int = 30) -> dict[str, list[tuple[str, np.ndarray]]]:
    rng = np.random.default_rng(seed)
    flat = [(f"flat{i}", np.full((150, 200, 3), rng.integers(0, 256, 3), np.uint8)) for i in range(n)]
    noise = []
    for i in range(n):
        kind = rng.integers(0, 2)
        image = rng.integers(0, 256, (150, 200, 3)) if kind else rng.normal(128, 60, (150, 200, 3))
        noise.append((f"noise{i}", np.clip(image, 0, 255).astype(np.uint8)))
    text = []
    font = ImageFont.load_default()
    words = "the quick brown fox jumps over a lazy dog lesion report invoice page".split()
    for i in range(n):
        canvas = Image.new("RGB", (200, 150), tuple(int(v) for v in rng.integers(200, 256, 3)))
        draw = ImageDraw.Draw(canvas)
        for line in range(8):
            draw.text((6, 4 + 18 * line), " ".join(rng.choice(words, 4)), fill=(0, 0, 0), font=font)
        text.append((f"text{i}", np.asarray(canvas)))
    return {"flat colour": flat, "noise": noise, "rendered text": text}


NEAR: dict[str, Callable[[Image.Image], Image.Image]] = {
    "heavy blur": lambda im: im.filter(ImageFilter.GaussianBlur(radius=max(im.size) / 25)),
    "over-exposed": lambda im: Image.fromarray(np.clip(np.asarray(im, np.float32) * 2.5, 0, 255).astype(np.uint8)),
    "under-exposed": lambda im: Image.fromarray((np.asarray(im, np.float32) * 0.25).astype(np.uint8)),
    "border skin crop": lambda im: im.crop((0, 0, im.size[0] // 4, im.size[1] // 4)),
    "colour cast": lambda im: Image.fromarray(
        np.clip(np.asarray(im, np.float32) * np.asarray([1.5, 1.0, 0.55]), 0, 255).astype(np.uint8)
    ),
    "grayscale": lambda im: im.convert("L").convert("RGB"),
}


def near_sets(source, seed: int = 0) -> dict[str, list[tuple[str, np.ndarray]]]:
    """Each transform of NEAR applied to a seeded sample of the split's images (stored size)."""
    from caco_jax.data.images import decode

    rng = np.random.default_rng(seed)
    rows = np.sort(rng.permutation(len(source))[:NEAR_PER_KIND])
    records = source.read(rows, ("image", "lesion_id", "image_id"))
    out: dict[str, list[tuple[str, np.ndarray]]] = {k: [] for k in NEAR}
    for record in records:
        with Image.open(io.BytesIO(record["image"])) as im:
            size = im.size
        image = Image.fromarray(decode(record["image"], (size[1], size[0])))
        for kind, transform in NEAR.items():
            out[kind].append((record["lesion_id"] or record["image_id"], np.asarray(transform(image))))
    return out


def _embed_images(predictor, images: list[np.ndarray]) -> dict[str, np.ndarray]:
    prepared = np.stack([predictor.prepare(_png(image)) for image in images])
    return predictor.embed(prepared)


def _auroc_samples(id_scores, id_groups, ood_scores, ood_groups, resamples: int, seed: int) -> np.ndarray:
    """[R] AUROC of OOD (positive) against ID under cluster-bootstrap weights (row 0: no resampling)."""
    w_id = intervals.lesion_weights(id_groups, resamples, seed)
    w_ood = intervals.lesion_weights(ood_groups, resamples, seed + 1)
    scores = np.concatenate([id_scores, ood_scores])
    positive = np.concatenate([np.zeros(len(id_scores), bool), np.ones(len(ood_scores), bool)])
    weights = np.concatenate([np.ones((1, len(scores))), np.concatenate([w_id, w_ood], axis=1)])
    return reported.weighted_auc(scores, positive, weights)


def _share_samples(flags: np.ndarray, groups: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    w = np.concatenate([np.ones((1, len(flags))), intervals.lesion_weights(groups, resamples, seed)])
    return (w * flags).sum(1) / w.sum(1)


def _figure(samples: np.ndarray) -> dict:
    return {"value": float(samples[0]), "interval": intervals.interval(samples[1:])}


def evaluate(guard, id_emb, id_groups, sets_emb, sets_groups, resamples: int) -> dict:
    """Per OOD kind: AUROC and the share let through by the threshold; and the ID false alarms."""
    layer = guard.layer
    id_scores, id_flags = guard.unlike(id_emb["logits"], id_emb[layer])
    out = {"false_alarms": _figure(_share_samples(id_flags, id_groups, resamples, 7)), "kinds": {}}
    for kind, emb in sets_emb.items():
        scores, flags = guard.unlike(emb["logits"], emb[layer])
        out["kinds"][kind] = {
            "images": int(len(scores)),
            "pictures": int(len(set(sets_groups[kind]))),
            "auroc": _figure(_auroc_samples(id_scores, id_groups, scores, sets_groups[kind], resamples, 11)),
            "let_through": _figure(_share_samples(~flags, sets_groups[kind], resamples, 13)),
        }
    aurocs = [k["auroc"]["value"] for k in out["kinds"].values()]
    out["mean_auroc"] = float(np.mean(aurocs))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", type=pathlib.Path, help="the run (required unless --from_json)")
    p.add_argument("--out", default="docs/results_ood_cpu", help="writes OUT.md and OUT.json")
    p.add_argument("--data_dir", default="", help="the TFDS data_dir of the run's build (default: the run's)")
    p.add_argument("--resamples", type=int, default=RESAMPLES)
    p.add_argument("--save", action="store_true", help="save the chosen guard beside the run's best weights")
    p.add_argument("--from_json", type=pathlib.Path, help="only rewrite OUT.md from an earlier OUT.json")
    args = p.parse_args(argv)
    if args.from_json:
        pathlib.Path(args.out).with_suffix(".md").write_text(markdown(json.loads(args.from_json.read_text())))
        return 0
    from caco_jax.data import records, registry
    from caco_jax.runs.loading import load_trained
    from caco_jax.serving.predictor import Predictor
    from caco_jax.training import guard as guard_lib

    t0 = time.time()
    config, _, meta, weights_dir = load_trained(args.workdir, None)
    if args.data_dir:
        config.data.data_dir = args.data_dir
    config.data.manual_dir = ""
    splits = registry.open_data(config, args.workdir.resolve())
    predictor = Predictor(args.workdir, batch_size=64)
    size = (predictor.image_size, predictor.image_size)
    emb = {name: predictor.embed(records.decode_all(splits[name], size)) for name in ("train", "validation", "test")}
    for name in emb:
        emb[name]["labels"] = np.asarray(splits[name].labels)
    print(f"embedded the splits in {time.time() - t0:.0f} s", flush=True)
    far = far_sets() | synthetic_sets()
    sets = {
        split: far | near_sets(splits[split], seed=1 if split == "validation" else 2)
        for split in ("validation", "test")
    }
    sets_emb = {
        split: {k: _embed_images(predictor, [im for _, im in v]) for k, v in s.items()} for split, s in sets.items()
    }
    groups = {split: {k: np.asarray([g for g, _ in v]) for k, v in s.items()} for split, s in sets.items()}
    print(f"embedded the OOD sets in {time.time() - t0:.0f} s", flush=True)
    results = {}
    for method, layer in VARIANTS:
        guard = guard_lib.fit(emb["train"], emb["validation"], len(predictor.class_names), method=method, layer=layer)
        name = f"{method}/{layer}" if method in ("mahalanobis", "knn") else method
        results[name] = {
            "method": method,
            "layer": layer,
            "threshold": guard.threshold,
            "choice": evaluate(
                guard,
                emb["validation"],
                np.asarray(splits["validation"].lesion_ids),
                sets_emb["validation"],
                groups["validation"],
                args.resamples,
            ),
            "report": evaluate(
                guard,
                emb["test"],
                np.asarray(splits["test"].lesion_ids),
                sets_emb["test"],
                groups["test"],
                args.resamples,
            ),
            "guard": guard,
        }
        print(f"{name}: mean AUROC validation {results[name]['choice']['mean_auroc']:.3f}", flush=True)
    chosen = max(results, key=lambda k: results[k]["choice"]["mean_auroc"])
    if args.save:
        ood_score.save(weights_dir, results[chosen]["guard"])
    payload = {
        "workdir": str(args.workdir),
        "weights": str(weights_dir),
        "class_names": list(meta["class_names"]),
        "chosen": chosen,
        "rule": "highest mean AUROC over the OOD kinds on the validation split",
        "seconds": time.time() - t0,
        "variants": {k: {kk: vv for kk, vv in v.items() if kk != "guard"} for k, v in results.items()},
    }
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(payload, indent=2, default=float))
    out.with_suffix(".md").write_text(markdown(payload))
    print(f"chosen: {chosen}; wrote {out.with_suffix('.md')}")
    return 0


def _pct(fig: dict, pictures: int | None = None) -> str:
    """'value [lo, hi]' in percent; at 0 (none let through) the bootstrap collapses, so the exact 95 %
    upper bound of a share seen 0 times in ``pictures`` independent pictures is given instead (†)."""
    iv = fig["interval"]
    if pictures and fig["value"] == 0:
        return f"0.0 [0.0, {100 * (1 - 0.025 ** (1 / pictures)):.1f}]†"
    return f"{100 * fig['value']:.1f}" + (f" [{100 * iv[0]:.1f}, {100 * iv[1]:.1f}]" if iv else "")


def _auc(fig: dict) -> str:
    iv = fig["interval"]
    return f"{fig['value']:.3f}" + (f" [{iv[0]:.3f}, {iv[1]:.3f}]" if iv else "")


def markdown(payload: dict) -> str:
    variants = payload["variants"]
    names = list(variants)
    kinds = list(next(iter(variants.values()))["report"]["kinds"])
    lines = [
        "# Out-of-distribution guard: measured",
        "",
        "Generated by `python tools/measure_ood.py` (its docstring says how each set is made); the discussion is "
        "in [results_ood_cpu_discussion.md](results_ood_cpu_discussion.md) when present.",
        "",
        f"Run: `{payload['workdir']}`. Chosen method: **{payload['chosen']}** ({payload['rule']}).",
        "",
        "## Choice (validation split as in-distribution; near OOD made from validation lesions)",
        "",
        "| method | mean AUROC over the OOD kinds |",
        "|---|---:|",
    ]
    lines += [f"| {n} | {variants[n]['choice']['mean_auroc']:.3f} |" for n in names]
    lines += [
        "",
        "## AUROC on the test split (OOD against test images; 95 % bootstrap intervals)",
        "",
        "| OOD kind | images (pictures) | " + " | ".join(names) + " |",
        "|---|---:|" + "---:|" * len(names),
    ]
    for kind in kinds:
        first = variants[names[0]]["report"]["kinds"][kind]
        cells = [_auc(variants[n]["report"]["kinds"][kind]["auroc"]) for n in names]
        lines.append(f"| {kind} | {first['images']} ({first['pictures']}) | " + " | ".join(cells) + " |")
    few = {k: v["pictures"] for k, v in variants[names[0]]["report"]["kinds"].items() if v["pictures"] < 10}
    if few:
        lines += [
            "",
            f"Read the kinds made from few source pictures ({', '.join(few)}: {min(few.values())}-"
            f"{max(few.values())} pictures each, every image of a kind a crop or variant of them) with care: the "
            "same pictures served the choice above and this table, so the chosen method's figures on them are "
            "not independent of its choice; one run, one seed.",
        ]
    lines += [
        "",
        "## Share of OOD images let through at the validation threshold (FPR at 95 % of validation kept), %",
        "",
        "| OOD kind | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    for kind in kinds:
        found = [variants[n]["report"]["kinds"][kind] for n in names]
        cells = [_pct(k["let_through"], k["pictures"]) for k in found]
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    lines.append(
        "| *in-distribution: test images flagged (false alarms)* | "
        + " | ".join(_pct(variants[n]["report"]["false_alarms"]) for n in names)
        + " |"
    )
    lines += [
        "",
        "Intervals: 95 % bootstrap, in-distribution images resampled by lesion and OOD images by the picture "
        "they were made from. †: none let through, where the bootstrap collapses to [0, 0]: the bound given is "
        "the exact (Clopper-Pearson) 95 % upper bound of a share seen 0 times in that many independent pictures.",
        "",
        f"Measured in {payload['seconds'] / 60:.0f} min.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
