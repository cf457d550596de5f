"""Every figure the docs state is its JSON's: each results page is exactly what its JSON rebuilds, and
the headline sentences of the README, the results overview and the model card quote the figures the
JSON holds (a number that drifted from its JSON fails here)."""

from __future__ import annotations

import json
import pathlib
import shutil

import pytest

from caco_jax.experiments import sources
from caco_jax.experiments.presets import PRESETS
from caco_jax.experiments.tables import write_results

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
HEADER = ("- written:", "- machine:", "- tables written on:", "- versions", "- runs trained on:", "- command:")


def _body(text: str) -> list[str]:
    return [line for line in text.splitlines() if not line.startswith(HEADER)]


PAGES = sorted(p for p in DOCS.glob("results_*.json") if "preset" in json.loads(p.read_text()))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.stem)
def test_each_results_page_is_what_its_json_rebuilds(page, tmp_path):
    """A reproduction page (caco-jax reproduce) is exactly its JSON's tables and its discussion."""
    payload = json.loads(page.read_text())
    preset = PRESETS[payload["preset"]]
    discussion = DOCS / f"{page.stem}_discussion.md"
    if discussion.is_file():
        shutil.copy(discussion, tmp_path)
    extra = {}
    if "sources" in payload:
        found = payload["sources"]
        extra["sources"] = (sources.markdown(found["comparisons"], found["subgroups"]), found)
    paths = write_results(
        preset, payload["rows"], tmp_path, payload["command"], "", payload["comparisons"], extra or None
    )
    assert _body(paths["md"].read_text()) == _body(page.with_suffix(".md").read_text())


def _load(name: str) -> dict:
    return json.loads((DOCS / f"results_{name}.json").read_text())


def _comparison(payload: dict, a: str, b: str, a_rule: str, a_tta: bool) -> dict:
    return next(
        c
        for c in payload["comparisons"]
        if (c["a"], c["b"], c["a_rule"], c["a_tta"]) == (a, b, a_rule, a_tta) and c["available"]
    )


def _pts(x: float) -> str:
    return f"{100 * x:+.1f}"


def _iv(iv: list[float]) -> str:
    return f"[{_pts(iv[0])}, {_pts(iv[1])}]"


def recipe_claims() -> list[str]:
    """The recipe's BACC gain as shipped (its rule and TTA) and like with like (both argmax, no TTA)."""
    payload = _load("recipe_cpu")
    shipped = _comparison(payload, "recipe", "paper", "balanced", True)
    alike = _comparison(payload, "recipe", "paper", "argmax", False)
    return [
        f"{_pts(shipped['bacc']['difference'])} points",
        _iv(shipped["bacc"]["interval"]),
        _iv(shipped["with_seeds"]["bacc"]["interval"]),
        f"{_pts(alike['bacc']['difference'])} points {_iv(alike['with_seeds']['bacc']['interval'])}",
    ]


def range_claims() -> list[str]:
    """The default-initialisation range of the cpu and paper presets, and the paper recipe's seed span."""
    cells = [
        r
        for name in ("cpu", "paper")
        for r in _load(name)["rows"]
        if r["seeds"] and "model.attention_init" not in r["overrides"]
    ]
    acc = [r["accuracy"][0] for r in cells]
    bacc = [r["bacc"][0] for r in cells]
    paper = next(r for r in _load("recipe_cpu")["rows"] if r["cell"] == "paper")
    per_seed = [run["bacc"] for run in paper["runs"].values()]
    return [
        f"{100 * min(acc):.1f}-{100 * max(acc):.1f} %",
        f"{100 * min(bacc):.1f}-{100 * max(bacc):.1f} %",
        f"{100 * min(per_seed):.1f}-{100 * max(per_seed):.1f} %",
    ]


def paper_recipe_claims(digits: int) -> list[str]:
    paper = next(r for r in _load("recipe_cpu")["rows"] if r["cell"] == "paper")
    mean, std = paper["bacc"]
    return [f"{100 * mean:.{digits}f} ± {100 * std:.{digits}f}"]


def ood_claims() -> list[str]:
    payload = json.loads((DOCS / "results_ood_cpu.json").read_text())
    alarms = payload["variants"][payload["chosen"]]["report"]["false_alarms"]
    lo, hi = alarms["interval"]
    return [f"{100 * alarms['value']:.1f} % [{100 * lo:.1f}, {100 * hi:.1f}]"]


def source_claims(metrics: tuple[str, ...]) -> list[str]:
    """Each held-out source's paired difference (trained without it - with it, same images) and interval."""
    out = []
    for comparison in _load("sources_cpu")["sources"]["comparisons"]:
        diff = comparison["same_images"]["difference"]
        out += [f"{_pts(diff[m]['difference'])} {_iv(diff[m]['interval'])}" for m in metrics]
    return out


def _subgroups() -> dict:
    return _load("sources_cpu")["sources"]["subgroups"]


def _group(dimension: str, group: str) -> dict:
    return next(r for r in _subgroups()["dimensions"][dimension] if r["group"] == group)


def _figure(row: dict, metric: str) -> str:
    """'**v** 58.9 [53.4, 64.1]' (the mark when the interval lies wholly below the overall figure), or '-'."""
    if row.get(metric) is None:
        return "-"
    mark = "**v** " if metric in (row.get("below_overall") or []) else ""
    lo, hi = row[f"{metric}_ci"]
    return f"{mark}{100 * row[metric]:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"


SUBGROUP_ROWS = (
    ("acquisition source", "vidir_molemax"),
    ("acquisition source", "vidir_modern"),
    ("acquisition source", "rosendahl"),
    ("diagnosis confirmation", "follow_up"),
    ("diagnosis confirmation", "histo"),
    ("age", "60+"),
    ("age", "40-59"),
)


def subgroup_table_claims() -> list[str]:
    """The model card's subgroup table: each row's cells, and the overall figures above it."""
    out = []
    for dimension, group in SUBGROUP_ROWS:
        r = _group(dimension, group)
        out.append(f"| {r['images']} | {len(r['classes'])} | {_figure(r, 'accuracy')} | {_figure(r, 'bacc')} |")
    m, f = _group("sex", "male"), _group("sex", "female")
    out.append(
        f"| {m['images']} / {f['images']} | {len(m['classes'])} / {len(f['classes'])} "
        f"| {100 * m['accuracy']:.1f} / {100 * f['accuracy']:.1f} | {100 * m['bacc']:.1f} / {100 * f['bacc']:.1f} |"
    )
    overall = _subgroups()["overall"]
    return out + [f"accuracy {_figure(overall, 'accuracy')} %, BACC {_figure(overall, 'bacc')} %"]


def subgroup_sentence_claims() -> list[str]:
    """The README's sentence on who the model serves worst."""
    overall = _subgroups()["overall"]
    rows = [_group(d, g) for d, g in (("diagnosis confirmation", "follow_up"), ("diagnosis confirmation", "histo"))]
    rows += [_group("age", "60+"), _group("acquisition source", "rosendahl")]
    out = [f"accuracy {100 * overall['accuracy']:.1f} %, BACC {100 * overall['bacc']:.1f} %"]
    out += [f"{100 * r['accuracy']:.1f} %" for r in rows]
    return out + [f"BACC {100 * _group('acquisition source', 'rosendahl')['bacc']:.1f} %"]


def leakage_claims() -> list[str]:
    """The augment-then-split cell's BACC in the paper's formula and its accuracy, mean ± std over seeds."""
    row = next(r for r in _load("leakage_cpu")["rows"] if r["cell"] == "augment_caco_joint")
    return [f"{100 * row[m][0]:.1f} ± {100 * row[m][1]:.1f}" for m in ("paper_bacc", "accuracy")]


CLAIMS = {
    "README.md": lambda: recipe_claims() + range_claims() + source_claims(("accuracy",)) + subgroup_sentence_claims(),
    "docs/results.md": lambda: recipe_claims() + range_claims() + paper_recipe_claims(2) + leakage_claims(),
    "docs/model_card.md": lambda: (
        recipe_claims()
        + range_claims()[:2]
        + paper_recipe_claims(1)
        + ood_claims()
        + source_claims(("accuracy", "bacc"))
        + subgroup_table_claims()
    ),
}


@pytest.mark.parametrize("doc", sorted(CLAIMS))
def test_headline_sentences_quote_the_json(doc):
    text = " ".join((ROOT / doc).read_text().split())  # line breaks inside a sentence do not matter
    for claim in CLAIMS[doc]():
        assert claim in text, f"{doc} does not say {claim!r}, which its JSON holds"


def test_the_ood_page_is_what_its_json_rebuilds(tmp_path):
    import sys

    sys.path.insert(0, str(ROOT / "tools"))
    from measure_ood import markdown

    payload = json.loads((DOCS / "results_ood_cpu.json").read_text())
    assert markdown(payload) == (DOCS / "results_ood_cpu.md").read_text()
    chosen = payload["variants"][payload["chosen"]]
    assert payload["chosen"] == max(payload["variants"], key=lambda k: payload["variants"][k]["choice"]["mean_auroc"])
    from caco_jax.training import guard

    assert (chosen["method"], chosen["layer"]) == (guard.DEFAULT_METHOD, guard.DEFAULT_LAYER)  # what training fits


def test_the_allocator_tables_and_ratios_are_the_measurements():
    """docs/performance.md's allocator section: its tables are tools/measure_allocators.py's rendering of
    docs/allocators_cpu.json, and the ratios its prose quotes are those medians'."""
    import statistics
    import sys

    sys.path.insert(0, str(ROOT / "tools"))
    from measure_allocators import table

    data = json.loads((DOCS / "allocators_cpu.json").read_text())
    text = (DOCS / "performance.md").read_text()
    assert table(data).strip() in text
    prose = " ".join(text.split())

    def median(size: str, allocator: str, framework: str, key: str) -> float:
        return statistics.median(
            r["result"]["rows"][framework][key]
            for r in data["runs"]
            if r["kind"] == "benchmark" and r["size"] == size and r["allocator"] == allocator
        )

    for size, words in (("128x112", "at batch 128 / 112 px"), ("16x64", "at batch 16 / 64 px")):
        for key, verb in (("train_img_s", "trains"), ("eval_img_s", "evaluates")):
            ours, theirs = (median(size, "tcmalloc_minimal", fw, key) for fw in ("caco_jax", "torch_eager"))
            ratio = ours / theirs
            assert f"{ratio:.2f}x" in prose, (size, key, ratio, words, verb)


def test_the_int8_tables_are_the_measurement():
    """docs/deploy.md's tables of the int8 files since issue 40 are tools/measure_exports.py's rendering of
    docs/deploy_int8.json, and the figures its prose quotes are that JSON's."""
    import sys

    sys.path.insert(0, str(ROOT / "tools"))
    from measure_exports import _diff, markdown, marks_table

    data = json.loads((DOCS / "deploy_int8.json").read_text())
    text = (DOCS / "deploy.md").read_text()
    assert markdown(data["rows"]) in text and markdown(data["remedies"], "remedy") in text
    assert marks_table(data["rows"] + data["remedies"]) in text
    prose = " ".join(text.split())
    rows = {r["format"]: r for r in data["rows"]}
    for name in ("LiteRT int8", "ONNX int8"):
        r = rows[name]
        assert f"{name}: BACC {_diff(r, 'bacc')}" in prose, name
        assert f"{100 * r['quantization']['calibration_agreement']:.1f} %" in prose, name
    litert = rows["LiteRT int8"]
    assert f"{len(litert['quantization']['float32_units'])} units (" in prose
    float_ms = rows["LiteRT float32"]["latency_ms_1_thread"]
    ms = f"at {litert['latency_ms_1_thread']:.2f} ms per image against {float_ms:.2f} ms"
    assert ms in prose, ms
    assert f"{len(rows['ONNX int8']['quantization']['uint16_activations'])} of its activations" in prose


def test_the_int8_sensitivity_table_is_the_analysis():
    """docs/deploy.md's sensitivity table is tools/int8_sensitivity.py's rendering of docs/int8_sensitivity.json,
    its plot is beside it, and the BACC its prose quotes with the worst tensors in float is that JSON's."""
    import sys

    sys.path.insert(0, str(ROOT / "tools"))
    from int8_sensitivity import markdown

    data = json.loads((DOCS / "int8_sensitivity.json").read_text())
    text = (DOCS / "deploy.md").read_text()
    assert markdown(data) in text and (DOCS / "int8_sensitivity.png").is_file()
    kept = {k["float_tensors"]: k for k in data["worst_kept_in_float"]}
    prose = " ".join(text.split())
    assert f"With those two in float BACC is {100 * kept[2]['bacc']:.1f} %" in prose
    assert f"with the 4 worst in float {100 * kept[4]['bacc']:.1f} % ({100 * kept[4]['agreement']:.1f} %" in prose


def test_the_adaptation_page_is_what_its_json_rebuilds():
    """docs/results_adaptation_cpu.md is tools/measure_adaptation.py's rendering of its JSON, and what
    `caco-jax adapt` ships (which BatchNorm layers, how far) is what that measurement chose on validation."""
    import sys

    sys.path.insert(0, str(ROOT / "tools"))
    from caco_jax.adaptation import run as adaptation
    from measure_adaptation import markdown

    payload = json.loads((DOCS / "results_adaptation_cpu.json").read_text())
    assert markdown(payload) == (DOCS / "results_adaptation_cpu.md").read_text()
    chosen = [e["adabn_choice"] for e in payload["by_seed"].values() if "from_seed" not in e["adabn_choice"]]
    assert chosen and all((c["depth"], c["alpha"]) == (adaptation.DEPTH, adaptation.ALPHA) for c in chosen)
    for c in chosen:  # the choice is the validation grid's best, not the held-out images'
        best = max((k for k in c["validation_bacc"] if k != "none"), key=c["validation_bacc"].get)
        assert best == f"{c['depth']}|{c['alpha']}"
