"""No untraced number in the README's results section or the model card's evaluation sections.

Every number there must lie inside a *claim*: a string the test builds from the JSON the code wrote
(tests/test_docs_figures.py's CLAIMS and the ones below), or a phrase of the allow-list with its reason
(the paper's own figures, the protocol's settings, names that hold digits). A number typed into those
sections without either fails, whatever its value (shown by planting one).
"""

from __future__ import annotations

import json
import re

import pytest

import test_docs_figures as figures
from caco_jax.experiments import leak_parts

ROOT = figures.ROOT
SECTIONS = {
    "README.md": ("## Status and results", "## Install"),
    "docs/model_card.md": ("## Evaluation", "## Ethical considerations"),
}
NUMBER = re.compile(r"(?<![\w.])\d+(?:[.,]\d+)*(?!\w)")

# (phrase, why it needs no JSON): each covers every place the phrase occurs in the traced sections.
ALLOWED: dict[str, tuple[tuple[str, str], ...]] = {
    "both": (
        ("93.39", "the paper's figure (PAPER.md)"),
        ("86.35", "the paper's figure (PAPER.md)"),
        ("90.88 % / 83.44 %", "the paper's figures for MobileNetV3-Small (PAPER.md)"),
        ("the paper's 91-93 %", "the paper's accuracies (PAPER.md)"),
        ("(sensitivity + specificity) / 2", "the paper's BACC formula"),
        ("95 % lesion-bootstrap", "the intervals' level"),
        ("95 % interval", "the intervals' level"),
        ("95 % intervals", "the intervals' level"),
        ("224 px", "the paper protocol's input size (caco_jax/experiments/presets.py)"),
        ("112 px", "the CPU protocol's input size (presets.py)"),
        ("100 epochs", "the paper protocol's length (presets.py)"),
        ("10 epochs", "the CPU protocol's length (presets.py)"),
        ("2-core", "the machine"),
        ("seeds 0, 1 and 2", "seed labels"),
        ("seeds 0-2", "seed labels"),
        ("seed 0", "a seed label"),
        ("over 60", "an age band's name (caco_jax/evaluation/subgroups.py)"),
        ("age 60+", "an age band's name"),
        ("age 40-59", "an age band's name"),
    ),
    "README.md": (
        ("AdamW 5e-4 / 5e-2", "configs/caco.py's optimiser"),
        ("batch 128", "configs/caco.py's batch"),
    ),
    "docs/model_card.md": (
        ("8:1:1 split", "the split's proportions (configs/default.py)"),
        ("8,014 / 1,004 / 997 images", "the lesion split's sizes, checked on the real data by test_data_splits.py"),
        ("one H200", "the machine"),
        ("seeds 0 and 1", "seed labels"),
        ("| 0 |", "a seed label in the protocol table"),
        ("| 0, 1, 2 |", "seed labels in the protocol table"),
        ("needs 5 melanomas", "the subgroup rule's floor (caco_jax/evaluation/subgroups.py)"),
        ("keeping 95 % of validation images", "the guard's threshold rule (caco_jax/training/guard.py)"),
    ),
}


def _load(name: str) -> dict:
    return json.loads((figures.DOCS / name).read_text())


def _row(preset: str, cell: str) -> dict:
    return next(r for r in figures._load(preset)["rows"] if r["cell"] == cell)


def _pct(x: float, digits: int = 1) -> str:
    return f"{100 * x:.{digits}f}"


def _span(values: list[float]) -> float:
    return max(values) - min(values)


def paper_table_claims() -> list[str]:
    """The paper model's protocol table, the SE comparison below it and the plain-initialisation figures."""
    paper = _row("paper", "caco_joint")
    cpu = _row("recipe_cpu", "paper")
    metrics = ("accuracy", "bacc", "paper_bacc")
    out = [
        " | ".join(
            [*(_pct(paper[m][0]) for m in metrics), f"{paper['macro_auc'][0]:.3f}", _pct(paper["mel_sensitivity"][0])]
        ),  # fmt: skip
        " | ".join(
            [
                *(f"{_pct(cpu[m][0])} ± {_pct(cpu[m][1])}" for m in metrics),
                f"{cpu['macro_auc'][0]:.3f} ± {cpu['macro_auc'][1]:.3f}",
                f"{_pct(cpu['mel_sensitivity'][0])} ± {_pct(cpu['mel_sensitivity'][1])}",
            ]
        ),  # fmt: skip
    ]
    se224, se112 = _row("paper", "se_ce"), _row("cpu", "se_ce")
    out.append(f"{_pct(se224['accuracy'][0])} % accuracy and {_pct(se224['bacc'][0])} % BACC")
    out.append(f"{_pct(se112['accuracy'][0])} ± {_pct(se112['accuracy'][1])} % / "
               f"{_pct(se112['bacc'][0])} ± {_pct(se112['bacc'][1])} %")  # fmt: skip
    return out


def seed_spread_claims() -> list[str]:
    """The largest BACC span over the seeds of a three-seed recipe cell and of a two-seed cell."""
    three = max(_span([r["bacc"] for r in _row("recipe_cpu", c)["runs"].values()]) for c in ("paper", "recipe"))
    two = max(
        _span([run["bacc"] for run in r["runs"].values()]) for r in figures._load("cpu")["rows"] if len(r["seeds"]) == 2
    )
    return [
        f"{_pct(three)} points over three seeds",
        f"differs by {_pct(two)} points",
        f"and by {_pct(two)} in one",
        f"{_pct(two)} points in one",
    ]


def support_claims() -> list[str]:
    """How few test images the rare classes have (the lesion split's test support)."""
    support = _row("recipe_cpu", "recipe")["runs"]["0"]["leakage"]["per_class"]
    return [
        f"{support['df']['num_test']} dermatofibromas, {support['vasc']['num_test']} vascular lesions and "
        f"{support['akiec']['num_test']} actinic keratoses"
    ]


def se_claims() -> list[str]:
    """SE + CE against CaCo + joint: the cell means and the paired differences on the same test images."""
    out = [
        f"BACC {_pct(_row('cpu', 'se_ce')['bacc'][0])} against {_pct(_row('cpu', 'caco_joint')['bacc'][0])} %",
        f"{_pct(_row('paper', 'se_ce')['bacc'][0])} against {_pct(_row('paper', 'caco_joint')['bacc'][0])} %",
    ]
    paired = [
        f"{figures._pts(c['bacc']['difference'])} {figures._iv(c['bacc']['interval'])}"
        for c in figures._load("leakage_cpu")["comparisons"]
        if c["available"] and c["b"].endswith("se_ce")
    ]
    return out + [", ".join(paired[:-1]) + f" and {paired[-1]}"]


def leakage_sentence_claims() -> list[str]:
    """The README's leakage paragraph: the augment-then-split lift, the image split's gain, accuracy like with like."""
    lesion, image = _row("leakage_cpu", "lesion_caco_joint"), _row("leakage_cpu", "image_caco_joint")
    augment = [_row("leakage_cpu", c) for c in ("augment_caco_joint", "augment_se_ce")]
    accuracy = sorted(r["accuracy"][0] for r in augment)
    mean = leak_parts.cell(image)["accuracy_mean"]  # type: ignore[index]
    lo, hi = mean["interval"]
    return [
        f"from {_pct(lesion['paper_bacc'][0], 0)} % to {_pct(augment[0]['paper_bacc'][0], 0)} %",
        f"from {_pct(lesion['bacc'][0], 0)} % to {_pct(augment[0]['bacc'][0], 0)} %",
        f"accuracy reaches {_pct(accuracy[0], 0)}-{_pct(accuracy[1], 0)} %",
        f"adds {_pct(image['bacc'][0] - lesion['bacc'][0])} BACC points",
        f"{figures._pts(mean['mean'])} {figures._iv([lo, hi])} points",
    ]


def recipe_sentence_claims() -> list[str]:
    """The recipe's figures as shipped and the paper recipe's, with the rule-alone and accuracy comparisons."""
    payload = figures._load("recipe_cpu")
    recipe, paper = _row("recipe_cpu", "recipe"), _row("recipe_cpu", "paper")
    shipped = recipe["views"]["balanced_tta"]
    rule = figures._comparison(payload, "paper", "paper", "balanced", False)["with_seeds"]["bacc"]
    accuracy = figures._comparison(payload, "recipe", "paper", "balanced", True)
    mel = {s: r["mel_sensitivity"] for s, r in recipe["runs"].items()}
    mel_paper = [r["mel_sensitivity"] for r in paper["runs"].values()]
    tta_mel = [r["figures"]["tta"]["balanced"]["recall"]["mel"] for r in recipe["runs"].values()]
    return [
        f"({len(recipe['seeds'])} seeds, lesion split) it gives {_pct(shipped['bacc']['value'])} % BACC against the "
        f"paper recipe's {_pct(paper['bacc'][0])} %",
        f"{_pct(shipped['accuracy']['value'])} % accuracy and {_pct(shipped['bacc']['value'])} % BACC",
        f"against {_pct(paper['accuracy'][0])} % and {_pct(paper['bacc'][0])} %",
        f"{figures._pts(rule['difference'])} {figures._iv(rule['interval'])}",
        f"macro AUC ({shipped['macro_auc']['value']:.3f})",
        f"macro AUC {shipped['macro_auc']['value']:.3f} for both",
        f"accuracy as shipped {figures._pts(accuracy['accuracy']['difference'])} points "
        f"{figures._iv(accuracy['with_seeds']['accuracy']['interval'])}",
        f"about {_pct(sum(mel.values()) / len(mel), 0)} % under argmax ({_pct(sum(tta_mel) / len(tta_mel), 0)} %, "
        f"{_pct(min(tta_mel), 0)}-{_pct(max(tta_mel), 0)} % per seed",
        f"against {_pct(sum(mel_paper) / len(mel_paper), 0)} % ({_pct(min(mel_paper), 0)}-{_pct(max(mel_paper), 0)} %",
    ]


def ood_sentence_claims() -> list[str]:
    """The guard's far-OOD AUROC range, what it lets through of perturbed lesions, and its false alarms."""
    payload = _load("results_ood_cpu.json")
    report = payload["variants"][payload["chosen"]]["report"]
    kinds = report["kinds"]
    far = ("natural photographs", "textures", "documents and text", "other medical images", "faces (LFW)",
           "flat colour", "noise", "rendered text")  # fmt: skip
    auroc = [kinds[k]["auroc"]["value"] for k in far]
    through = [kinds[k]["let_through"]["value"] for k in ("heavy blur", "over-exposed", "under-exposed")]
    few = [v["pictures"] for v in kinds.values() if v["pictures"] < 10]
    return [
        f"AUROC {min(auroc):.3f}-{max(auroc):.3f}",
        f"({_pct(min(through))}-{_pct(max(through))} % let through) but passes "
        f"{_pct(kinds['colour cast']['let_through']['value'], 0)} % of colour-cast lesions and "
        f"{_pct(kinds['grayscale']['let_through']['value'])} % of grayscale copies",
        f"flagging {_pct(report['false_alarms']['value'])} % of real test images",
        f"rest on {min(few)}-{max(few)} source pictures",
    ]


def subgroup_prose_claims() -> list[str]:
    """The model card's sentence under its subgroup table."""
    biopsy = figures._group("diagnosis confirmation", "histo")
    rosendahl = figures._group("acquisition source", "rosendahl")
    return [f"right {_pct(biopsy['accuracy'])} % of the time, and on the Australian practice's images "
            f"{_pct(rosendahl['accuracy'])} %"]  # fmt: skip


def source_recall_claims() -> list[str]:
    """Per seed, a held-out source's characteristic class: recall trained with it -> without it."""
    out = []
    for source, label in (("rosendahl", "akiec"), ("vidir_modern", "nv")):
        parts = []
        for c in figures._load("sources_cpu")["sources"]["comparisons"]:
            if c["source"] == source:
                same = c["same_images"]
                before = same["trained_on_every_source"]["recall"][label]
                after = same["trained_without_it"]["recall"][label]
                parts.append(f"{_pct(before, 0)} % -> {_pct(after, 0)} %")
        out.append(", ".join(parts[:-1]) + f" and {parts[-1]}")
    return out


def _signed(d: dict) -> str:
    lo, hi = d["interval"]
    return f"{100 * d['difference']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"


def adaptation_claims() -> list[str]:
    """A new clinic's images (docs/results_adaptation_cpu.json): each remedy's figures the README and the model
    card quote; per seed in seed order where a figure has one per seed."""
    from caco_jax.adaptation import run as adaptation

    by_seed = _load("results_adaptation_cpu.json")["by_seed"]
    seeds = sorted(by_seed, key=int)
    held = {s: {r["source"]: r["variants"] for r in by_seed[s]["held_out"]} for s in seeds}
    splits = {s: by_seed[s]["in_split"][0] for s in seeds if by_seed[s]["in_split"]}  # ordinary split, cc_aug

    def vs(seed: str, source: str, name: str, view: str = "shipped") -> dict:
        return held[seed][source][name][view]["vs_held_out"]["accuracy"]

    def drop(seed: str, source: str) -> str:
        return f"{100 * vs(seed, source, 'trained on every source')['difference']:.1f}"

    def each(source: str, name: str) -> str:  # "+a [..] and +b [..] of S's x and y"
        gains = " and ".join(_signed(vs(s, source, name)) for s in seeds)
        return f"{gains} of {source}'s " + " and ".join(drop(s, source) for s in seeds)

    def split_vs(split: dict, set_name: str, name: str) -> dict:
        return split["sets"][set_name][name]["shipped"]["vs_recipe"]["accuracy"]

    def far(kind: str) -> str:
        return " and ".join(_pct(v["far_kinds"][kind]["not_dermoscopy"]) for v in splits.values())

    costs = " and ".join(_signed(split_vs(v, "ordinary test", "trained: cc_aug")) for v in splits.values())
    crops = " and ".join(
        f"{100 * split_vs(v, 'shifted: both', 'field-of-view crop')['difference']:+.1f}" for v in splits.values()
    )
    mel = [[held[s]["rosendahl"][k]["shipped"]["recall"]["mel"] for k in ("held out", "AdaBN")] for s in seeds]
    em = [100 * vs(s, src, "EM prior", "argmax")["difference"] for s in seeds for src in ("rosendahl", "vidir_modern")]
    rates = [r["guard"]["held out"]["not_dermoscopy"] for s in seeds for r in by_seed[s]["held_out"]]
    return [
        f"wins back {each('rosendahl', 'AdaBN')} points",
        f"and {each('vidir_modern', 'AdaBN')}",
        f"wins back {each('vidir_modern', 'trained: cc_aug')} points",
        f"split by {costs} (seeds {' and '.join(splits)})",
        "falls from " + " and ".join(f"{_pct(a)} % to {_pct(b)} %" for a, b in mel),
        f"from {min(em):+.1f} to {max(em):+.1f} accuracy points",
        f"({crops} accuracy",
        f"(at least {adaptation.RECOMMENDED_IMAGES} unlabelled images; it refuses fewer than {adaptation.MIN_IMAGES})",
        f"it takes {far('faces (LFW)')} % of faces and {far('flat colour')} % of flat-colour images",
        f"and {_pct(min(rates))}-{_pct(max(rates))} % of a held-out source's",
        "seeds " + " and ".join(seeds),  # the seeds measured, as labels
    ]


TRACED = {
    "README.md": lambda: (
        figures.CLAIMS["README.md"]()
        + [paper_table_claims()[-1]]
        + seed_spread_claims()[1:2]
        + se_claims()
        + leakage_sentence_claims()
        + recipe_sentence_claims()
        + ood_sentence_claims()
        + adaptation_claims()
        + [
            f"at 224 px, gives {_pct(_row('paper', 'caco_joint_plain')['accuracy'][0])} % and "
            f"{_pct(_row('paper', 'caco_joint_plain')['bacc'][0])} %"
        ]  # fmt: skip
    ),
    "docs/model_card.md": lambda: (
        figures.CLAIMS["docs/model_card.md"]()
        + figures.range_claims()[2:]
        + paper_table_claims()
        + seed_spread_claims()
        + support_claims()
        + recipe_sentence_claims()
        + ood_sentence_claims()
        + subgroup_prose_claims()
        + source_recall_claims()
        + adaptation_claims()
    ),
}


def section(doc: str, text: str | None = None) -> str:
    """The traced sections of ``doc``, whitespace-normalised, without inline code or link targets."""
    text = (ROOT / doc).read_text() if text is None else text
    start, end = SECTIONS[doc]
    text = text[text.index(start) : text.index(end)]
    text = re.sub(r"`[^`]*`", " ", text)
    text = re.sub(r"\]\([^)]*\)", "]", text)
    return " ".join(text.split())


def untraced(doc: str, text: str) -> list[str]:
    """Each number of ``text`` (a section) that no claim and no allowed phrase covers, with its context."""
    covered = [False] * len(text)
    phrases = TRACED[doc]() + [p for p, _ in ALLOWED["both"] + ALLOWED[doc]]
    for phrase in phrases:
        for m in re.finditer(re.escape(phrase), text):
            covered[m.start() : m.end()] = [True] * (m.end() - m.start())
    return [
        f"{m.group()!r} in '...{text[max(0, m.start() - 60) : m.end() + 20]}...'"
        for m in NUMBER.finditer(text)
        if not all(covered[m.start() : m.end()])
    ]


@pytest.mark.parametrize("doc", sorted(SECTIONS))
def test_every_number_in_the_results_sections_is_traced(doc):
    found = untraced(doc, section(doc))
    assert not found, f"{doc}: numbers that no JSON claim and no allowed phrase cover:\n" + "\n".join(found)


@pytest.mark.parametrize("doc", sorted(SECTIONS))
def test_a_planted_number_is_caught(doc):
    """A figure typed into the section (a plausible accuracy) fails, and so does each traced figure moved by 0.1."""
    text = section(doc)
    assert [f for f in untraced(doc, text + " It reaches 81.7 % on new clinics.") if f.startswith("'81.7'")]
    claims = [c for c in TRACED[doc]() if re.search(r"\d+\.\d", c) and c in text]
    assert len(claims) >= 10
    for claim in claims:
        number = re.search(r"\d+\.\d", claim).group()  # type: ignore[union-attr]
        drifted = claim.replace(number, f"{float(number) + 0.1:.1f}", 1)
        assert untraced(doc, text.replace(claim, drifted)), f"{claim!r} -> {drifted!r} went unnoticed"
