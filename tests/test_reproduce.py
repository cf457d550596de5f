"""caco-jax reproduce on a tiny grid of synthetic data: train, skip, resume, tables, figure, external columns."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess

import pytest

from caco_jax.cli import reproduce
from caco_jax.data import ham10000, synthetic
from caco_jax.errors import CacoError, UsageError
from caco_jax.experiments import grid, presets, summary, tables

ROOT = pathlib.Path(__file__).resolve().parents[1]

TINY = {
    "model.arch": "tiny",
    "data.synthetic_images": 0,
    "data.build_size": 48,
    "batch_size": 16,
    "eval_batch_size": 32,
    "log_every_steps": 2,
}
PRESET = presets.Preset(
    "tiny",
    "A test grid.",
    {"data.image_size": 32, "num_epochs": 1},
    (
        presets.Cell("se_ce", {"model.attention": "se", "loss.name": "ce"}, (0, 1), "two seeds"),
        presets.Cell("caco_joint", {"model.attention": "caco", "loss.name": "joint"}, (0,), "the paper's model"),
    ),
)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        JAX_PLATFORMS="cpu",
        XLA_FLAGS="--xla_backend_optimization_level=0",
        PYTHONPATH=str(ROOT),
        CACO_JAX_COMPILE_CACHE=str(ROOT / ".cache" / "jax"),
    )
    return env


def _runner(calls: list[list[str]]):
    def run(cmd: list[str], log_file: pathlib.Path) -> int:
        calls.append(cmd)
        log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(log_file, "a") as fh:
            return subprocess.call(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT, env=_env())

    return run


def _isic_test_dir(manual: pathlib.Path, out: pathlib.Path, n: int = 20) -> pathlib.Path:
    """Synthetic lesions laid out as the ISIC 2018 Task 3 test files."""
    (out / "ISIC2018_Task3_Test_Input").mkdir(parents=True)
    columns = ["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]
    rows = ["image," + ",".join(columns)]
    for line in (manual / "HAM10000_metadata.csv").read_text().splitlines()[1 : n + 1]:
        _, image_id, dx = line.split(",")[:3]
        src = next(manual.rglob(f"{image_id}.jpg"))
        shutil.copy(src, out / "ISIC2018_Task3_Test_Input" / src.name)
        rows.append(image_id + "," + ",".join("1.0" if c.lower() == dx else "0.0" for c in columns))
    (out / "ISIC2018_Task3_Test_GroundTruth.csv").write_text("\n".join(rows) + "\n")
    return out


@pytest.mark.slow
def test_tiny_grid_trains_skips_resumes_and_writes_the_tables(tmp_path):
    manual = synthetic.write_manual_dir(tmp_path / "raw", num_images=200, image_size=(64, 48), seed=2)
    ham10000.prepare(manual, tmp_path / "tfds", image_size=48, progress=False)
    isic = _isic_test_dir(manual, tmp_path / "isic")
    kw = dict(
        pretrained="",
        data_dir=str(tmp_path / "tfds"),
        manual_dir="",
        isic_dir=str(isic),
        extra=TINY,
        config="demo",
        log=lambda _: None,
    )
    out = tmp_path / "runs"

    # A run interrupted after its checkpoint, before its report: the grid resumes it, not restarts it.
    calls: list[list[str]] = []
    grid.run_grid(PRESET, out, cells=["caco_joint"], runner=_runner(calls), **kw)
    caco = out / "tiny" / "caco_joint_s0"
    assert (caco / "report.json").is_file() and (caco / "report_isic2018_test_test.json").is_file()
    (caco / "report.json").unlink()
    assert (
        grid.status(
            caco, grid.overrides(PRESET, PRESET.cells[1], 0, pretrained="", data_dir="", manual_dir="", extra=TINY)
        )
        == "partial"
    )

    calls.clear()
    grid.run_grid(PRESET, out, runner=_runner(calls), **kw)
    trained = [c for c in calls if c[3] == "train"]
    assert len(trained) == 3  # se_ce seeds 0 and 1, and the resumed caco_joint
    assert "resumed from" in (caco / "train.log").read_text()

    calls.clear()
    grid.run_grid(PRESET, out, runner=_runner(calls), **kw)
    assert calls == []  # everything finished: nothing runs twice

    rows = summary.aggregate(PRESET, out)
    se = rows[0]
    assert se["seeds"] == [0, 1] and se["bacc"][0] is not None and se["bacc"][1] is not None
    assert se["paper"] == (90.88, 83.44) and rows[1]["paper"] == (93.39, 86.35)
    assert rows[1]["isic_bacc"][0] is not None and rows[1]["params"] > 0
    paths = tables.write_results(PRESET, rows, tmp_path / "docs", "python scripts/reproduce.py --preset tiny")
    text = paths["md"].read_text()
    assert "| se_ce | 0,1 |" in text and "ISIC BACC %" in text and "python scripts/reproduce.py --preset tiny" in text
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(paths["json"].read_text())["rows"][0]["cell"] == "se_ce"


def test_a_workdir_of_another_setup_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model": {"attention": "se"}, "loss": {"name": "ce"}}))
    with pytest.raises(CacoError, match="model.attention='se'"):
        grid.status(tmp_path, {"model.attention": "caco", "loss.name": "ce"})
    with pytest.raises(UsageError, match="unknown cell"):
        grid.run_grid(PRESET, tmp_path, pretrained="", data_dir="", manual_dir="", cells=["nope"])


def test_presets_cover_the_issue_grids():
    cpu = {c.name: c for c in presets.PRESETS["cpu"].cells}
    assert {"se_ce", "caco_ce", "caco_joint", "se_joint", "caco_joint_s30", "caco_joint_plain"} <= set(cpu)
    assert cpu["se_ce"].seeds == (0, 1) and cpu["caco_joint"].seeds == (0, 1)
    assert cpu["caco_joint_s30"].overrides["loss.ldam_s"] == 30.0
    assert presets.PRESETS["cpu"].base["data.image_size"] == 112
    paper = {c.name: c for c in presets.PRESETS["paper"].cells}
    assert all(len(c.seeds) == 3 for c in paper.values())
    assert {
        "cbam_joint",
        "seco_joint",
        "eca_joint",
        "caco_focal",
        "caco_ldam",
        "se_ce_scratch",
        "caco_joint_imagesplit",
    } <= set(paper)
    assert {"cbam_ce", "seco_ce", "eca_ce"} <= set(paper)  # Table 5 is cross-entropy
    assert "ours" in paper["cbam_joint"].note and paper["cbam_ce"].paper() == (91.48, 85.72)
    leak = {c.name: c for c in presets.PRESETS["leakage_cpu"].cells}
    assert leak["augment_caco_joint"].overrides["data.split_by"] == "image" and len(leak["image_caco_joint"].seeds) == 3
    recipe = {c.name: c for c in presets.PRESETS["recipe_cpu"].cells}
    assert recipe["recipe"].config == "recipe" and recipe["paper"].config == "default"


def test_seeds_and_set_choose_the_runs_and_reach_every_command(tmp_path, capsys):
    pth = tmp_path / "backbone.pth"
    pth.write_bytes(b"")
    rc = reproduce.main(
        [
            "--preset",
            "paper",
            "--cells",
            "caco_joint,se_ce",
            "--seeds",
            "0",
            "--set",
            "data.cache=True",
            "--set",
            "data.num_workers=0",
            "--pretrained",
            str(pth),
            "--out",
            str(tmp_path / "runs"),
            "--dry_run",
        ]
    )
    assert rc == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[new]")]
    assert len(lines) == 2  # seed 0 of each chosen cell, not the three planned seeds
    assert all("se_ce_s0" in line or "caco_joint_s0" in line for line in lines)
    assert all("--config.data.cache=True" in line and "--config.data.num_workers=0" in line for line in lines)
    for bad in (["--set", "data.cache"], ["--seeds", "zero"], ["--seeds", "7"]):
        assert reproduce.main([*bad, "--pretrained", str(pth), "--dry_run"]) == 2
    err = capsys.readouterr().err
    assert "planned in none of the chosen cells" in err and "expected KEY=VALUE" in err and "--seeds 'zero'" in err


def test_tables_name_the_machine_that_trained(tmp_path):
    rows = summary.aggregate(PRESET, tmp_path)  # nothing finished: empty rows
    paths = tables.write_results(PRESET, rows, tmp_path / "docs", "cmd", trained_on="1 x NVIDIA H200")
    text = paths["md"].read_text()
    assert "- runs trained on: 1 x NVIDIA H200" in text and "- tables written on:" in text
    assert json.loads(paths["json"].read_text())["trained_on"] == "1 x NVIDIA H200"


def test_each_page_has_one_writer():
    """No two presets write the same docs page, and none writes a page a measurement tool owns (the adaptation
    preset's runs once overwrote tools/measure_adaptation.py's results_adaptation_cpu.json, which read it back)."""
    from caco_jax.experiments.presets import PRESETS

    stems = [p.stem for p in PRESETS.values()]
    assert len(set(stems)) == len(stems)
    owned_by_tools = {"results_adaptation_cpu", "results_ood_cpu"}  # measure_adaptation.py, measure_ood.py
    assert not owned_by_tools & set(stems)
    assert PRESETS["sources_cpu"].stem == "results_sources_cpu"  # the default: results_<name>
