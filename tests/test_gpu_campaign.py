"""tools/gpu_campaign.py: the plan (priority, pending runs, what fits), the archive (caps, parts, resume and
merge), the dry run, and on the CPU a whole tiny campaign twice: phases in order within the budget, training
stopped cleanly at the end, resumed from the archive, merged into runs and docs."""

from __future__ import annotations

import json
import os
import pathlib
import random
import subprocess
import sys
import tarfile
import time

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tools"))

from caco_jax.experiments.presets import Cell, Preset
from campaign import archive, figures, plan

ROOT = pathlib.Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "gpu_campaign.py"
P1 = Preset(
    "p1",
    "first",
    {"num_epochs": 4},
    (Cell("a", {"model.attention": "se"}, (0, 1)), Cell("b", {"model.attention": "caco"}, (0,))),
)
P2 = Preset("p2", "second", {"num_epochs": 6}, (Cell("c", {"model.attention": "eca"}, (0, 1)),))


def _plan(root: pathlib.Path, **kw) -> list[plan.RunSpec]:
    return plan.plan_runs([P1, P2], root, pretrained="", data_dir="d", log=lambda _: None, **kw)


def test_plan_orders_partial_first_then_seed_preset_cell_and_skips_finished(tmp_path):
    done = tmp_path / "p1" / "a_s0"
    done.mkdir(parents=True)
    (done / "report.json").write_text("{}")
    (tmp_path / "p2" / "c_s1" / "checkpoints").mkdir(parents=True)
    specs = _plan(tmp_path)
    assert [s.key for s in plan.pending(specs)] == ["p2/c_s1", "p1/b_s0", "p2/c_s0", "p1/a_s1"]
    assert {s.key: s.state for s in specs}["p1/a_s0"] == "done" and specs[0].state == "partial"
    c_s1 = specs[0]
    assert c_s1.epochs == 6 and c_s1.workdir == tmp_path / "p2" / "c_s1"
    assert c_s1.command[1:4] == ("-m", "caco_jax", "train") and "--config.model.attention=eca" in c_s1.command
    assert "--config.seed=1" in c_s1.command and str(c_s1.workdir) in c_s1.command

    # Finished in an earlier slot (named in its archive's done.json), or a folder of another setup: not pending.
    (tmp_path / "p1" / "b_s0").mkdir()
    (tmp_path / "p1" / "b_s0" / "config.json").write_text(json.dumps({"model": {"attention": "cbam"}}))
    skipped: list[str] = []
    specs = plan.plan_runs([P1, P2], tmp_path, pretrained="", data_dir="d", known_done={"p2/c_s0"}, log=skipped.append)
    assert [s.key for s in plan.pending(specs)] == ["p2/c_s1", "p1/a_s1"]
    assert "p1/b_s0" in skipped[0] and "model.attention='cbam'" in skipped[0]


def test_probe_pace_and_what_fits(tmp_path):
    rows = [
        {"kind": "epoch", "time": 100.0 + t, "epoch_seconds": 9.0, "val_seconds": 1.0, "images_per_sec": r}
        for t, r in ((30.0, 500.0), (40.0, 1000.0), (50.0, 1200.0))
    ]
    probe = figures.probe_figures(rows, started=100.0, epochs=50)
    assert probe["epoch_s"] == 10.0 and probe["startup_s"] == 20.0 and probe["train_images_per_s"] == 1100.0
    assert probe["projected_100_epochs_s"] == 20.0 + 100 * 10.0 and probe["projected_s"] == 520.0
    pace = figures.pace_of(probe)
    run = tmp_path / "p1" / "a_s0"
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:1]) + '{"kind": "train"}\n')
    spec = plan.RunSpec("p1", "a", 0, run, (), "partial", epochs=11)
    assert plan.epochs_left(spec) == 10
    assert plan.fits(spec, pace, 121, [], running=0) and not plan.fits(spec, pace, 119, [], running=0)
    assert not plan.fits(spec, pace, 200, [], running=1)  # beside one run, no gain assumed: 20 + 10 * 20 s
    assert plan.fits(spec, pace, 200, [8.0], running=1)  # the running one's epochs: 8 s, 16 s with one more
    assert not plan.fits(spec, pace, 200, [12.0], running=1)
    assert plan.fits(spec, None, 0, [], running=3)  # nothing measured: start it

    long = plan.RunSpec("p1", "b", 0, tmp_path / "none", (), "new", epochs=100)
    queue = [long, spec]
    assert plan.choose(queue, pace, 150, [], 0, "fits") is spec  # the first that fits, out of order
    assert plan.choose(queue, pace, 50, [], 0, "fits") is long  # none fits and the card is idle: the first
    assert plan.choose(queue, pace, 50, [], 1, "fits") is None and plan.choose(queue, pace, 50, [], 0, "strict") is None
    assert plan.choose(queue, pace, 50, [], 3, "always") is long and plan.choose([], None, 50, [], 0) is None


def _noise(n: int) -> bytes:
    """Incompressible bytes, the same on every run."""
    return random.Random(n).randbytes(n)


def _run_dir(root: pathlib.Path, key: str, *, finished: bool, weights: int, steps: tuple[int, ...] = ()) -> None:
    d = root / key
    (d / "best" / "weights").mkdir(parents=True)
    (d / "best" / "weights" / "w").write_bytes(_noise(weights))  # weights hardly compress
    (d / "best" / "caco_jax_weights.json").write_text("{}")
    (d / "metrics.jsonl").write_text("")
    (d / "synthetic").mkdir()
    (d / "synthetic" / "x.jpg").write_bytes(b"x" * 5000)
    for step in steps:
        (d / "checkpoints" / str(step)).mkdir(parents=True)
        (d / "checkpoints" / str(step) / "state").write_bytes(_noise(3000))
    if finished:
        (d / "report.json").write_text("{}")


def test_archive_caps_parts_resume_and_merge_semantics(tmp_path):
    runs = tmp_path / "runs"
    _run_dir(runs, "p/done_s0", finished=True, weights=2000, steps=(4,))
    _run_dir(runs, "p/part_s0", finished=False, weights=2000, steps=(2, 6))
    _run_dir(runs, "p/tiny_s0", finished=False, weights=100, steps=(1,))
    keys = ["p/done_s0", "p/part_s0", "p/tiny_s0"]
    files, manifest = archive.select({k: runs / k for k in keys}, cap_bytes=7100)
    names = {a for _, a in files}
    assert "runs/p/done_s0/best/weights/w" in names and not any("done_s0/checkpoints" in n for n in names)
    assert not any("synthetic" in n for n in names)  # a demo run's images never travel
    assert "runs/p/part_s0/checkpoints/6/state" in names and not any("checkpoints/2" in n for n in names)
    assert "runs/p/part_s0/best/weights/w" in names  # a resumed run needs its best weights with its checkpoint
    assert manifest["left_out"] == [{"run": "p/tiny_s0", "kind": "checkpoint", "bytes": 3100}]
    (runs / "p" / "tiny_s0" / "checkpoints" / "1" / "best").mkdir()  # checkpoints that store the best weights
    tiny = runs / "p" / "tiny_s0"
    assert archive.run_groups(tiny)["checkpoint"] == [tiny / "checkpoints" / "1" / "state"]  # no best/ copy

    parts = archive.write(tmp_path / "out", files, {"campaign.json": {"probe": None}}, ["p/done_s0"], part_bytes=700)
    assert len(parts) > 1 and all(p.stat().st_size <= 700 for p in parts) and parts[0].name.endswith(".00")
    with archive.open_archive(tmp_path / "out" / archive.NAME, tmp_path) as tar:
        assert archive.read_json(tar, "done.json") == ["p/done_s0"]
        fresh = tmp_path / "fresh"
        (fresh / "p" / "part_s0").mkdir(parents=True)
        logged: list[str] = []
        assert archive.extract_runs(tar, fresh, replace=False, log=logged.append) == ["p/done_s0"]
        assert any("tiny_s0: unfinished and packed without its checkpoint" in m for m in logged)
        assert (fresh / "p" / "done_s0" / "best" / "weights" / "w").is_file()
        assert not (fresh / "p" / "part_s0" / "metrics.jsonl").exists()  # resuming keeps what is here
        assert archive.extract_runs(tar, fresh, replace=True, log=logged.append) == ["p/done_s0", "p/part_s0"]
        assert (fresh / "p" / "part_s0" / "checkpoints" / "6" / "state").is_file()


def test_dry_run_prints_the_phases_and_the_queue_without_running(tmp_path):
    module = tmp_path / "presets.py"
    module.write_text(
        "from caco_jax.experiments.presets import Cell, Preset\n"
        "PRESETS = {'t': Preset('t', 'test', {'num_epochs': 2}, "
        "(Cell('se_ce', {'model.attention': 'se'}, (0, 1)), Cell('caco_joint', {}, (0,))))}\n"
    )
    out = subprocess.run(
        [
            sys.executable,
            str(TOOL),
            "--out",
            str(tmp_path / "o"),
            "--dry_run",
            "--presets",
            "t",
            "--preset_module",
            str(module),
            "--probe_cell",
            "t/caco_joint",
            "--bench_extras",
            "b256",
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout
    heads = [line.split("]")[0].strip() + "]" for line in out.splitlines() if line.strip().startswith("[")]
    assert heads == ["[env]", "[bench]", "[probe]", "[grid]", "[new]", "[new]", "[new]", "[pack]"]
    assert "benchmark_b256:" in out and "--batch_size 256 --out" in out
    assert "[probe] at most 108 s, 3 epochs: t/caco_joint_s0" in out
    queue = out[out.index("[grid]") :]
    assert queue.index("t/se_ce_s0:") < queue.index("t/caco_joint_s0:") < queue.index("t/se_ce_s1:")
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------- the whole campaign, twice
TINY = [
    "model.arch=tiny",
    "data.synthetic_images=0",
    "data.build_size=48",
    "batch_size=16",
    "eval_batch_size=32",
    "log_every_steps=2",
]
PRESET_MODULE = """from caco_jax.experiments.presets import Cell, Preset
PRESETS = {"tiny": Preset("tiny", "A test grid.", {"data.image_size": 32, "num_epochs": 1}, (
    Cell("caco_joint", {"model.attention": "caco", "loss.name": "joint", "num_epochs": 200}, (0,), "long"),
    Cell("se_ce", {"model.attention": "se", "loss.name": "ce"}, (0,), "one epoch")))}
"""
BENCH = (
    "--arch tiny --variants caco --dtypes float32 --depthwise shifts_vjp --batch_size 4 --image_size 32 "
    "--windows 1 --steps 1 --warmup 0 --latency_calls 2 --no_torch --no_overhead --no_onnx"
)


def _campaign(tmp_path: pathlib.Path, name: str, budget: float, *extra: str) -> tuple[str, float]:
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        XLA_FLAGS="--xla_backend_optimization_level=0",
        CACO_JAX_COMPILE_CACHE=str(ROOT / ".cache" / "jax"),
    )
    cmd = [
        sys.executable,
        str(TOOL),
        "--budget",
        str(budget),
        "--out",
        str(tmp_path / name),
        "--presets",
        "tiny",
        "--preset_module",
        str(tmp_path / "presets.py"),
        "--config",
        "demo",
        "--pretrained",
        "",
        "--data_dir",
        str(tmp_path / "tfds"),
        "--probe_cell",
        "tiny/caco_joint",
        "--probe_epochs",
        "1",
        "--parallel",
        "2",
        "--start_policy",
        "always",
        "--grace",
        "15",
        "--pack_s",
        "8",
        "--poll",
        "0.5",
        *[f"--set={s}" for s in TINY],
        *extra,
    ]
    t0 = time.monotonic()
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True)
    return (tmp_path / name / "campaign.log").read_text(), time.monotonic() - t0


@pytest.mark.slow
@pytest.mark.heavy  # two budgeted slots of 100-120 s by design; its parts have fast tests above
def test_a_tiny_campaign_runs_its_phases_in_budget_stops_resumes_and_merges(tmp_path):
    from caco_jax.data import ham10000, synthetic

    manual = synthetic.write_manual_dir(tmp_path / "raw", num_images=200, image_size=(64, 48), seed=2)
    ham10000.prepare(manual, tmp_path / "tfds", image_size=48, progress=False)
    (tmp_path / "presets.py").write_text(PRESET_MODULE)

    # Slot 1: every phase; the probe (the long run, alone) is stopped after its epoch, resumed in the grid.
    log, wall = _campaign(
        tmp_path,
        "slot1",
        100,
        "--bench_flags",
        BENCH,
        "--bench_extras",
        "",
        "--bench_share",
        "0.2",
        "--probe_share",
        "0.4",
        "--parallel",
        "1",
    )
    assert wall < 100 + 10, log
    marks = [log.index(f"=== {p} ===") for p in ("phase env", "phase bench", "phase probe", "phase grid", "pack")]
    assert marks == sorted(marks), log
    assert json.loads((tmp_path / "slot1" / "env.json").read_text())["versions"]["jax"]
    bench = json.loads((tmp_path / "slot1" / "benchmark.json").read_text())
    assert bench.get("rows") or bench.get("partial"), bench  # finished, or what it printed before its deadline
    assert "probe: exit 75" in log, log  # stopped after its epoch: checkpoint saved, exit 75
    with tarfile.open(tmp_path / "slot1" / archive.NAME) as tar:
        names = tar.getnames()
        summary = json.load(tar.extractfile("meta/campaign.json"))
    assert any(n.startswith("runs/tiny/caco_joint_s0/checkpoints/") for n in names)
    assert "meta/env.json" in names and "meta/benchmark.json" in names and "meta/campaign.log" in names
    assert summary["probe"]["epochs_measured"] >= 1 and summary["probe"]["projected_100_epochs_s"] > 0

    # Slot 2, on a bare work folder: the long run resumes from the archive and is stopped at the end; the
    # short one finishes beside it.
    log2, wall2 = _campaign(
        tmp_path, "slot2", 120, "--phases", "env,grid", "--resume_from", str(tmp_path / "slot1" / archive.NAME)
    )
    assert wall2 < 120 + 10, log2
    assert "resume: " in log2 and "tiny/caco_joint_s0: started (partial" in log2, log2
    assert "tiny/se_ce_s0: exit 0" in log2 and "tiny/caco_joint_s0: exit 75" in log2, log2
    with tarfile.open(tmp_path / "slot2" / archive.NAME) as tar:
        train_log = tar.extractfile("runs/tiny/caco_joint_s0/train.log").read().decode()
        assert json.load(tar.extractfile("done.json")) == ["tiny/se_ce_s0"]
    assert "resumed from" in train_log

    docs, runs = tmp_path / "docs", tmp_path / "merged"
    for slot in ("slot1", "slot2"):
        subprocess.run(
            [
                sys.executable,
                str(TOOL),
                "merge",
                str(tmp_path / slot / archive.NAME),
                "--runs",
                str(runs),
                "--docs",
                str(docs),
                "--preset_module",
                str(tmp_path / "presets.py"),
            ],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
    assert (runs / "tiny" / "se_ce_s0" / "report.json").is_file()
    assert not (runs / "tiny" / "se_ce_s0" / "checkpoints").exists()
    assert (runs / "tiny" / "caco_joint_s0" / "checkpoints").is_dir()
    text = (docs / "results_tiny.md").read_text()
    assert "| se_ce | 0 |" in text and "runs trained on: 1 x cpu" in text
    assert "command: `caco-jax reproduce --preset tiny --report_only --out" in text
    assert (docs / "benchmark_cpu.json").is_file()


def test_pack_fills_the_carried_folders_and_checks_the_device_limit(tmp_path, monkeypatch):
    from campaign import carry

    repo = tmp_path / "repo"
    (repo / "data" / "tfds" / "ham10000" / "ham10000" / "1.0.0").mkdir(parents=True)
    (repo / "data" / "tfds" / "ham10000" / "ham10000" / "1.0.0" / "dataset_info.json").write_text("{}")
    (repo / ".gitignore").write_text("/.whl/\n/weights/\n/data/\n/.campaign/\n")
    (repo / "code.py").write_text("x = 1\n")
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "a-1.0-py3-none-any.whl").write_bytes(_noise(1000))
    pth = tmp_path / carry.PRETRAINED
    pth.write_bytes(_noise(500))
    runs = tmp_path / "runs"
    _run_dir(runs, "paper/done_s0", finished=True, weights=100)
    _run_dir(runs, "paper/part_s0", finished=False, weights=100, steps=(3,))
    logged: list[str] = []
    result = carry.prepare(
        repo, wheels=wheels, pretrained=pth, data_dir=repo / "data" / "tfds", runs_root=runs, log=logged.append
    )
    assert (repo / ".whl" / "a-1.0-py3-none-any.whl").is_file() and (repo / "weights" / carry.PRETRAINED).is_file()
    assert result["carry"] == [".whl", "weights", "data/tfds", ".campaign"]
    assert result["sizes"]["tree"] == len("x = 1\n") + len((repo / ".gitignore").read_text())  # ignored ones: no
    assert result["sizes"][".whl"] == 1000 and result["total"] == sum(result["sizes"].values())
    with tarfile.open(result["resume"]) as tar:
        assert json.load(tar.extractfile("done.json")) == ["paper/done_s0"]
        assert "runs/paper/part_s0/checkpoints/3/state" in tar.getnames()
        assert not any(n.startswith("runs/paper/done_s0") for n in tar.getnames())  # named, not carried
    monkeypatch.setattr(carry, "LIMIT", 1200)  # under the wheel and the backbone alone
    with pytest.raises(ValueError, match="over the device tool's"):
        carry.prepare(
            repo, wheels=wheels, pretrained=pth, data_dir=repo / "data" / "tfds", runs_root=runs, log=logged.append
        )
    assert any("part_s0 left out" in m for m in logged)  # no room left for its checkpoint
