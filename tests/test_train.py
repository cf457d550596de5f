"""End-to-end training: the demo config, learning, resume, signals, errors, 8 devices, scripts."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import numpy as np
import orbax.checkpoint as ocp
import pytest

from caco_jax.data import ham10000, synthetic
from caco_jax.data.errors import DataNotBuiltError

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from caco_jax.configs import demo  # noqa: E402
from caco_jax.training.loop import NonFiniteLossError, _Stop as real_stop, train_and_evaluate  # noqa: E402

BUILD_SIZE = 48
# The tiny test model on 32 px synthetic images: seconds per run on a CPU.
TINY = {
    "model.arch": "tiny",
    "data.synthetic_images": 0,
    "data.build_size": BUILD_SIZE,
    "data.image_size": 32,
    "batch_size": 16,
    "eval_batch_size": 32,
    "num_epochs": 2,
    "log_every_steps": 2,
    "progress_bar": False,
}


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        JAX_PLATFORMS="cpu",
        XLA_FLAGS="--xla_backend_optimization_level=0",
        JAX_COMPILATION_CACHE_DIR=str(ROOT / ".cache" / "jax"),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5",
        PYTHONPATH=str(ROOT),
    )
    return env


@pytest.fixture(scope="session")
def synthetic_tfds(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """240 synthetic images built into a TFDS data_dir (shared by every test here)."""
    root = tmp_path_factory.mktemp("synthetic")
    synthetic.write_manual_dir(root / "manual", num_images=240, image_size=(64, 48), seed=1)
    ham10000.prepare(root / "manual", root / "tfds", image_size=BUILD_SIZE, progress=False)
    return root / "tfds"


def tiny_config(data_dir: pathlib.Path, **overrides):
    c = demo.get_config()
    for key, value in ({**TINY, "data.data_dir": str(data_dir)} | overrides).items():
        *parents, leaf = key.split(".")
        node = c
        for p in parents:
            node = node[p]
        node[leaf] = value
    return c


def cli_args(workdir: pathlib.Path, data_dir: pathlib.Path, **overrides) -> list[str]:
    items = {**TINY, "data.data_dir": str(data_dir)} | overrides
    return [
        sys.executable,
        str(ROOT / "scripts" / "train.py"),
        "--config",
        str(ROOT / "configs" / "demo.py"),
        "--workdir",
        str(workdir),
    ] + [f"--config.{k}={v}" for k, v in items.items()]


def final_state(workdir: pathlib.Path) -> dict[str, np.ndarray]:
    ckpts = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    with ocp.StandardCheckpointer() as c:
        return dict(c.restore(workdir / "checkpoints" / str(ckpts[-1]) / "state"))


@pytest.fixture(scope="module")
def trained(synthetic_tfds: pathlib.Path, tmp_path_factory: pytest.TempPathFactory):
    workdir = tmp_path_factory.mktemp("run")
    return workdir, train_and_evaluate(tiny_config(synthetic_tfds), workdir)


def test_demo_config_runs_end_to_end_and_writes_the_report(trained, synthetic_tfds):
    workdir, result = trained
    splits = ham10000.open_splits(synthetic_tfds, image_size=BUILD_SIZE)
    assert result["status"] == "finished" and result["step"] == 2 * (len(splits["train"]) // 16)
    assert [row["epoch"] for row in result["history"]] == [1, 2]
    payload = json.loads((workdir / "report.json").read_text())
    n_test = len(splits["test"])
    assert payload["split"] == "test" and payload["metrics"]["num_examples"] == n_test
    assert sum(map(sum, payload["metrics"]["confusion"])) == n_test
    assert payload["model"]["attention"] == "caco"
    for name in ("report.md", "curves.png", "report_confusion_test.png", "config.json", "parameters.txt"):
        assert (workdir / name).stat().st_size > 0, name
    assert (workdir / "report_confusion_test.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert sum(line["kind"] == "epoch" for line in lines) == 2
    assert any(f.name.startswith("events.out.tfevents") for f in (workdir / "tb").iterdir())
    assert (workdir / "best" / "weights").is_dir()
    from caco_jax.evaluation import predictions

    test = predictions.load(workdir / "predictions_test.npz")
    assert list(test.image_id) == list(splits["test"].image_ids) and test.logits.shape == (n_test, 7)
    assert np.mean(test.logits.argmax(1) == test.labels) == pytest.approx(payload["metrics"]["accuracy"])
    assert not test.same_lesion.any() and payload["metrics"]["leakage"]["same_lesion"] == 0  # lesion split
    for field in ("source", "dx_type", "sex", "localization"):  # what the build knows of each image, kept
        assert list(test.meta[field]) == list(splits["test"].meta[field]) and any(test.meta[field])
    np.testing.assert_array_equal(test.meta["age"], splits["test"].meta["age"])
    assert len(predictions.load(workdir / "predictions_validation.npz")) == len(splits["validation"])


def test_the_report_has_subgroups_and_selective_prediction(trained):
    workdir, result = trained
    payload = json.loads((workdir / "report.json").read_text())["metrics"]
    dims = payload["subgroups"]["dimensions"]
    assert {"acquisition source", "diagnosis confirmation", "age", "sex", "body site"} <= set(dims)
    assert sum(r["images"] for r in dims["acquisition source"]) == payload["num_examples"]
    fitted = json.loads((workdir / "best" / "selective.json").read_text())
    assert fitted["fitted_on"] == "validation" and fitted["target_accuracy"] == 0.9
    sel = payload["selective"]
    assert sel["coverage"][-1] == 1.0 and sel["accuracy"][-1] == pytest.approx(payload["accuracy"])
    text = (workdir / "report.md").read_text()
    assert "## Where the model does worse: figures by subgroup" in text and "## When the model is sure" in text
    for name in ("report_subgroups_test.png", "report_risk_coverage_test.png"):
        assert (workdir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_guard_fitted_at_the_end_has_both_answers(trained):
    """The far part ("not dermoscopy") is fitted beside the near one, on training images and shifted copies."""
    from caco_jax.evaluation import ood_score

    workdir, _ = trained
    guard = ood_score.load(workdir / "best")
    assert guard is not None and guard.far_threshold is not None and guard.far_threshold > 0
    far = guard.info["far"]
    assert far["num_train"] > 0 and far["num_train"] % 2 == 0 and far["num_validation"] > 0  # plain + shifted
    assert guard.arrays["far_precision"].shape == (guard.arrays["far_mean"].size,) * 2


def test_the_report_has_calibration_and_a_grad_cam_gallery(trained):
    workdir, result = trained
    saved = json.loads((workdir / "best" / "calibration.json").read_text())
    metrics = result["report"]
    assert metrics["temperature"] == pytest.approx(saved["temperature"]) and saved["fitted_on"] == "validation"
    assert saved["nll"]["calibrated"] <= saved["nll"]["uncalibrated"] + 1e-12  # the fit minimises validation NLL
    cal = json.loads((workdir / "report.json").read_text())["metrics"]["calibration"]
    assert cal["temperature"] == pytest.approx(saved["temperature"]) and len(cal["calibrated"]["bins"]) == 15
    assert 0 <= cal["uncalibrated"]["ece"] <= 1 and 0 <= cal["calibrated"]["ece"] <= 1
    md = (workdir / "report.md").read_text()
    assert "## Calibration" in md and "ECE" in md and "(report_reliability_test.png)" in md
    assert "(report_gradcam_test.png)" in md
    for name in ("report_reliability_test.png", "report_gradcam_test.png"):
        assert (workdir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


@pytest.mark.slow
def test_an_adapted_run_predicts_evaluates_serves_and_exports(trained, synthetic_tfds, tmp_path, capsys):
    """caco-jax adapt on a folder of images: a new run with re-estimated BatchNorm statistics, the source's
    side files, its provenance and the clinic's prior; every command reads it; bad input is one line."""
    import shutil

    from caco_jax.cli.adapt import main as adapt_main
    from caco_jax.cli.evaluate import main as evaluate_main
    from caco_jax.cli.predict import main as predict_main
    from caco_jax.interop import artifact
    from caco_jax.runs.loading import read_weights
    from caco_jax.serving import app
    from caco_jax.serving.predictor import Predictor

    workdir, _ = trained
    folder = tmp_path / "clinic"
    folder.mkdir()
    for image in sorted((synthetic_tfds.parent / "manual").rglob("*.jpg"))[:40]:
        shutil.copy(image, folder / image.name)
    out = tmp_path / "adapted"
    assert adapt_main(["--workdir", str(workdir), "--images", str(folder), "--out", str(out), "--prior"]) == 0
    captured = capsys.readouterr()
    printed = captured.out
    assert "warning: 40 images" in captured.err and "settled from 128 images on" in captured.err
    assert "BatchNorm statistics of" in printed and "estimated for these images" in printed
    record = json.loads((out / "adaptation.json").read_text())
    assert (
        record["images"] == 40 and record["source_run"] == str(workdir.resolve()) and len(record["images_sha256"]) == 64
    )
    assert record["prior"]["converged"] and sum(record["prior"]["prior"]) == pytest.approx(1.0)
    (new, _), (old, _) = read_weights(out / "best"), read_weights(workdir / "best")
    assert not np.array_equal(new["stem/bn/mean"], old["stem/bn/mean"])
    assert all(np.array_equal(new[k], old[k]) for k in old if not k.endswith(("/mean", "/var")))
    predictor = Predictor(out)
    assert predictor.rules == ("argmax", "balanced", "clinic") and predictor.guard is not None
    files = [str(p) for p in sorted(folder.iterdir())[:3]]
    answer = tmp_path / "p.json"
    assert predict_main(["--workdir", str(out), "--decision", "clinic", "--json", str(answer), *files]) == 0
    rows = json.loads(answer.read_text())["predictions"]
    assert [r["decision"] for r in rows] == ["clinic"] * 3 and all(r["unlike_training"] is not None for r in rows)
    assert evaluate_main(["--workdir", str(out), "--split", "test"]) == 0
    message = app.Analyser(predictor)(files[0])[3]  # an answer, or the guard's "not dermoscopy" for the tiny net
    assert (app.ANSWER in message or app.NOT_DERMOSCOPY in message) and "Analysis failed" not in message
    # what an export of it carries (the tiny test net has no ONNX twin; tests/test_deploy.py exports real ones)
    described = artifact.describe_run(out / "best", class_names=predictor.class_names, image_size=(32, 32))
    assert described["decision"]["clinic"]["prior"] == record["prior"]["prior"] and described["ood"] is not None
    # bad input: one line each, exit 2, nothing written
    capsys.readouterr()
    few = tmp_path / "few"
    few.mkdir()
    shutil.copy(files[0], few)
    assert adapt_main(["--workdir", str(workdir), "--images", str(few), "--out", str(tmp_path / "x")]) == 2
    assert adapt_main(["--workdir", str(workdir), "--images", str(folder), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert [line.startswith("error: ") for line in err if not line.startswith("memory")] == [True, True]
    assert "needs at least 32" in err[0] + err[1] and "exists and is not empty" in err[0] + err[1]
    assert not (tmp_path / "x").exists()


def test_evaluate_script_reproduces_the_best_validation_epoch(trained):
    from caco_jax.cli.evaluate import main as evaluate_main

    workdir, result = trained
    assert evaluate_main(["--workdir", str(workdir), "--split", "validation"]) == 0
    metrics = json.loads((workdir / "report_ham10000_validation.json").read_text())["metrics"]
    best = max(result["history"], key=lambda r: r["val_bacc"])
    assert metrics["bacc"] == pytest.approx(best["val_bacc"], abs=1e-9)
    assert metrics["accuracy"] == pytest.approx(best["val_accuracy"], abs=1e-9)


def test_evaluate_with_tta_reports_bacc_with_and_without(trained, tmp_path):
    from caco_jax.cli.evaluate import main as evaluate_main

    workdir, result = trained
    assert evaluate_main(["--workdir", str(workdir), "--split", "validation", "--tta", "--out", str(tmp_path)]) == 0
    metrics = json.loads((tmp_path / "report_ham10000_validation.json").read_text())["metrics"]
    best = max(result["history"], key=lambda r: r["val_bacc"])
    assert metrics["tta"]["views"] == 8
    assert metrics["tta"]["without"]["bacc"] == pytest.approx(best["val_bacc"], abs=1e-9)  # view 0 is the image
    assert metrics["bacc"] == metrics["tta"]["with"]["bacc"]
    assert "## Test-time augmentation" in (tmp_path / "report_ham10000_validation.md").read_text()


def test_answers_with_tta_are_judged_by_the_threshold_fitted_on_tta_confidences(trained, tmp_path):
    """Averaging 8 views changes every confidence: evaluate --tta (and predict --tta) compare them with the
    threshold fitted on the validation split's view averages, not with the single-view one."""
    from caco_jax.cli.evaluate import main as evaluate_main
    from caco_jax.evaluation import selective, side_files

    workdir, _ = trained
    run = tmp_path / "run"
    shutil.copytree(workdir, run, ignore=shutil.ignore_patterns("checkpoints", "tb"))
    fitted = {**json.loads((run / "best" / "selective.json").read_text()), "threshold": 0.31}
    fitted["tta"] = {**fitted, "threshold": 0.77}
    selective.save(run / "best", fitted)
    side_files.record(run / "best")
    found = {}
    for tta in (False, True):
        out = tmp_path / f"out_{tta}"
        assert evaluate_main(["--workdir", str(run), "--split", "validation", "--out", str(out)] + ["--tta"] * tta) == 0
        metrics = json.loads((out / "report_ham10000_validation.json").read_text())["metrics"]
        found[tta] = metrics["selective"]["at_threshold"]
    assert found[False]["threshold"] == 0.31 and found[True]["threshold"] == 0.77
    del fitted["tta"]  # a run saved before the TTA threshold existed: no reliability mark for TTA answers
    assert selective.threshold_for(fitted, True) is None and selective.threshold_for(fitted, False) == 0.31


def test_the_tta_threshold_is_fitted_on_the_views_average(monkeypatch):
    """fit_selective with the validation views: the second threshold is the lowest TTA confidence at which the
    TTA answers are 90 % accurate, which differs from the single-view threshold on these logits."""
    from types import SimpleNamespace

    from caco_jax.evaluation import decision
    from caco_jax.training import finish

    rng = np.random.default_rng(3)
    labels = rng.integers(0, 3, 400)
    clean = rng.normal(0, 1, (400, 3)) + 2.5 * np.eye(3)[labels]
    views = clean[:, None, :] + rng.normal(0, 2.0, (400, 8, 3))  # views disagree: their average is less sure
    run = SimpleNamespace(config=SimpleNamespace(evaluation=SimpleNamespace(decision="argmax")),
                          runlog=SimpleNamespace(info=lambda _: None))  # fmt: skip
    saved: dict = {}
    monkeypatch.setattr(finish.selective, "save", lambda _d, fitted: saved.update(fitted))
    rule = decision.DecisionRule("none", (0.0, 0.0, 0.0))
    finish.fit_selective(run, views[:, 0], labels, 1.0, rule, pathlib.Path("."), views)  # type: ignore[arg-type]
    probs = np.exp(views - views.max(-1, keepdims=True))
    probs = (probs / probs.sum(-1, keepdims=True)).mean(1)  # the views' mean probability, computed here
    conf, right = probs.max(1), probs.argmax(1) == labels
    t = saved["tta"]["threshold"]
    assert right[conf >= t].mean() >= 0.9  # the promise holds on TTA answers
    below = np.sort(conf[conf < t])[-5:]
    assert all(right[conf >= c].mean() < 0.9 for c in below)  # and it is the lowest confidence that keeps it
    assert t != saved["threshold"]


def test_predict_script_writes_grad_cam_overlays_and_uses_the_temperature(trained, synthetic_tfds, tmp_path):
    from PIL import Image

    from caco_jax.cli.predict import main as predict_main

    workdir, _ = trained
    images = sorted((synthetic_tfds.parent / "manual").rglob("*.jpg"))[:2]
    saved_t = json.loads((workdir / "best" / "calibration.json").read_text())["temperature"]
    assert (
        predict_main(
            [
                "--workdir",
                str(workdir),
                "--json",
                str(tmp_path / "t.json"),
                "--tta",
                "--cam",
                str(tmp_path / "cams"),
                "--cam_class",
                "mel",
                *map(str, images),
            ]
        )
        == 0
    )
    assert (
        predict_main(
            ["--workdir", str(workdir), "--json", str(tmp_path / "plain.json"), "--no_calibration", *map(str, images)]
        )
        == 0
    )
    rows = json.loads((tmp_path / "t.json").read_text())["predictions"]
    plain = json.loads((tmp_path / "plain.json").read_text())["predictions"]
    assert all(r["temperature"] == pytest.approx(saved_t) and r["tta"] for r in rows)
    assert all(r["temperature"] is None for r in plain)
    assert rows[0]["probabilities"] != plain[0]["probabilities"]
    for row, image in zip(rows, images, strict=True):
        assert row["cam"]["class"] == "mel" and pathlib.Path(row["cam"]["file"]).name == f"{image.stem}_gradcam_mel.png"
        assert Image.open(row["cam"]["file"]).size == Image.open(image).size  # at the image's own resolution


def test_predict_script_reports_unreadable_files_and_keeps_going(trained, synthetic_tfds, tmp_path):
    from caco_jax.cli.predict import main as predict_main

    workdir, _ = trained
    images = sorted((synthetic_tfds.parent / "manual").rglob("*.jpg"))[:3]
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "p.json"
    assert (
        predict_main(
            [
                "--workdir",
                str(workdir),
                "--json",
                str(out),
                *map(str, images),
                str(tmp_path / "broken.jpg"),
                str(tmp_path / "missing.jpg"),
            ]
        )
        == 0
    )
    payload = json.loads(out.read_text())
    assert [p["file"] for p in payload["predictions"]] == [str(i) for i in images]
    for p in payload["predictions"]:
        assert sum(p["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert p["top"][0]["probability"] == max(p["probabilities"].values())
    assert {s["file"] for s in payload["skipped"]} == {str(tmp_path / "broken.jpg"), str(tmp_path / "missing.jpg")}


@pytest.mark.slow
def test_training_learns_the_synthetic_classes(tmp_path):
    """The demo's recipe, shrunk to the tiny model: well above the majority-class rate."""
    c = tiny_config(
        tmp_path / "unused",
        **{
            "data.synthetic_images": 700,
            "data.build_size": 64,
            "data.image_size": 48,
            "batch_size": 32,
            "num_epochs": 7,
            "optimizer.learning_rate": 5e-3,
        },
    )
    result = train_and_evaluate(c, tmp_path / "run")
    labels = ham10000.open_splits(tmp_path / "run" / "tfds", image_size=64)["validation"].labels
    majority = np.bincount(labels).max() / len(labels)  # nv's share, about 0.66
    best = max(r["val_accuracy"] for r in result["history"])
    # Measured (2-core CPU): validation accuracy 0.66, 0.76, 0.78, 0.78, 0.80, 0.89, 0.90 by epoch against a
    # majority rate of 0.66 (12 epochs went on to 0.90 and stayed there).
    assert best >= majority + 0.15, result["history"]


@pytest.mark.slow
def test_the_memory_allocator_changes_no_weight_and_a_second_train_changes_nothing(
    scripted_reference, synthetic_tfds, tmp_path
):
    """The scripted reference run, started as a command (under the preferred allocator where one is
    installed), and the same run under glibc's malloc end with the same bytes in every array and the same
    best weights. Meanwhile a second train on the glibc run's workdir (started while the first holds it,
    stopped with SIGSTOP so the overlap is certain) is refused in one line naming the holder, exit 2, and
    the first run ends as if it had been alone (issue 39: both used to fail, or one finished with
    duplicated rows)."""
    from caco_jax import allocator

    env = _env() | {"CACO_TEST_VAL_BACC": SCRIPT, allocator.ENV: "glibc"}
    errors = tmp_path.parent / f"{tmp_path.name}.stderr"
    with errors.open("w") as sink:
        first = subprocess.Popen(
            scripted_args(tmp_path, synthetic_tfds), env=env, stdout=subprocess.DEVNULL, stderr=sink
        )
    deadline = time.time() + 300
    while time.time() < deadline and first.poll() is None:
        log = tmp_path / "metrics.jsonl"
        if log.is_file() and '"kind": "train"' in log.read_text():
            break
        time.sleep(0.1)
    assert first.poll() is None, errors.read_text()[-3000:]
    first.send_signal(signal.SIGSTOP)  # holding the lock, mid-run
    try:
        second = subprocess.run(scripted_args(tmp_path, synthetic_tfds), env=env, capture_output=True, text=True)
    finally:
        first.send_signal(signal.SIGCONT)
    assert first.wait(timeout=300) == 0, errors.read_text()[-3000:]
    assert second.returncode == 2, second.stderr[-3000:]
    said = [line for line in second.stderr.splitlines() if line.strip() and not line.startswith("memory allocator")]
    assert len(said) == 1 and f"in use by another caco-jax train (pid {first.pid} on host" in said[0], said
    assert "memory allocator: glibc's malloc" in (tmp_path / "train.log").read_text()
    preferred = allocator.wanted(_env())[0]
    said = "memory allocator: " + ("glibc's malloc" if preferred == allocator.SYSTEM else preferred)
    assert said in (scripted_reference / "train.log").read_text()
    a, b = final_state(scripted_reference), final_state(tmp_path)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert_same_best_weights(tmp_path, scripted_reference)
    assert _metric_rows(tmp_path) == _metric_rows(scripted_reference)  # no row twice


@pytest.mark.heavy  # the kill -9 test below kills a run and compares it, state and rows, with its reference
def test_killed_run_resumes_bit_exactly(synthetic_tfds, tmp_path):
    overrides = {"num_epochs": 3, "checkpoint.every_steps": 4}
    straight = tmp_path / "straight"
    subprocess.run(cli_args(straight, synthetic_tfds, **overrides), env=_env(), check=True, capture_output=True)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        cli_args(killed, synthetic_tfds, **overrides), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        ckpts = (
            [p for p in (killed / "checkpoints").glob("*") if p.name.isdigit()]
            if (killed / "checkpoints").is_dir()
            else []
        )
        if any(int(p.name) >= 8 for p in ckpts):
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.kill()
    proc.wait()
    resumed = subprocess.run(cli_args(killed, synthetic_tfds, **overrides), env=_env(), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr + resumed.stdout
    a, b = final_state(straight), final_state(killed)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)

    def rows(workdir):  # (kind, step) of every metrics.jsonl row: a resumed run repeats none
        return [(r["kind"], r["step"]) for r in map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines())]

    assert rows(killed) == rows(straight)
    assert_same_best_weights(killed, straight)


def assert_same_best_weights(workdir: pathlib.Path, reference: pathlib.Path) -> None:
    """best/ holds, bit for bit, the weights and metadata of the reference run's best/, and nothing is
    left beside it."""
    from caco_jax.runs.loading import read_weights

    (a, meta_a), (b, meta_b) = read_weights(workdir / "best"), read_weights(reference / "best")
    assert meta_a["epoch"] == meta_b["epoch"] and meta_a["val_bacc"] == meta_b["val_bacc"]
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert not (workdir / "best.partial").exists() and not (workdir / "best.old").exists()


SCRIPT = "0.3,0.6,0.5"  # validation BACC of epochs 1-3: epoch 2 is the last new best
SCRIPTED = {"num_epochs": 3}


def scripted_args(workdir: pathlib.Path, data_dir: pathlib.Path) -> list[str]:
    args = cli_args(workdir, data_dir, **SCRIPTED)
    return [args[0], str(ROOT / "tests" / "scripted_train.py"), *args[2:]]


@pytest.fixture(scope="module")
def scripted_reference(synthetic_tfds: pathlib.Path, tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """An uninterrupted run whose epoch 2 is the best (scripted validation BACC)."""
    workdir = tmp_path_factory.mktemp("scripted")
    proc = subprocess.run(
        scripted_args(workdir, synthetic_tfds),
        env=_env() | {"CACO_TEST_VAL_BACC": SCRIPT},
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return workdir


@pytest.mark.slow
@pytest.mark.parametrize(
    "point",
    [
        "best.promote:2",
        # tests/test_checkpoints.py kills at every point in-process; these repeat it with a real kill -9
        *(
            pytest.param(p, marks=pytest.mark.heavy)
            for p in ("best.write:2", "checkpoint.write:2", "checkpoint.committed:2", "best.swap:1")
        ),
    ],
)
def test_a_kill_9_at_each_point_of_the_save_sequence_keeps_the_best_weights(
    point, scripted_reference, synthetic_tfds, tmp_path
):
    """SIGKILL (``faults.point``) at each moment of epoch 2's save: best.partial being written, the
    checkpoint being written, the checkpoint committed but best/ not yet replaced (issue 23: the old
    best was kept), before and between the two renames. The resumed run ends with epoch 2's weights."""
    from caco_jax.runs import faults

    env = _env() | {"CACO_TEST_VAL_BACC": SCRIPT}
    killed = subprocess.run(
        scripted_args(tmp_path, synthetic_tfds), env=env | {faults.CRASH_ENV: point}, capture_output=True, text=True
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert not (tmp_path / "report.json").exists()
    resumed = subprocess.run(scripted_args(tmp_path, synthetic_tfds), env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Traceback" not in resumed.stderr
    assert_same_best_weights(tmp_path, scripted_reference)
    assert json.loads((tmp_path / "report.json").read_text())["checkpoint"] == str(tmp_path / "best")
    a, b = final_state(tmp_path), final_state(scripted_reference)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert _metric_rows(tmp_path) == _metric_rows(scripted_reference)  # a resumed run repeats no row


def _metric_rows(workdir: pathlib.Path) -> list[tuple[str, int]]:
    return [(r["kind"], r["step"]) for r in map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines())]


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_exits_cleanly(synthetic_tfds, tmp_path):
    workdir = tmp_path / "run"
    proc = subprocess.Popen(
        cli_args(workdir, synthetic_tfds, num_epochs=50),
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        log = workdir / "metrics.jsonl"
        if log.is_file() and '"kind": "train"' in log.read_text():
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, err[-3000:]  # EX_TEMPFAIL: interrupted, rerun to resume
    assert "stopped by signal" in out + err
    steps = [int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()]
    assert steps and 1 <= max(steps) < 50 * 12  # saved where it stopped, long before the end


@pytest.fixture
def stop_after(monkeypatch: pytest.MonkeyPatch) -> Callable[[int | None], None]:
    """``stop_after(n)``: training sees a stop signal (as SIGTERM gives it) once its train step has run
    ``n`` times in this test; ``stop_after(None)``: the real signal handling again (for the resumed run)."""
    import caco_jax.training.loop as train_module
    import caco_jax.training.run as run_module

    calls = {"n": 0}
    real_build = run_module.build_steps

    def counting_build(*args, **kwargs):
        steps = real_build(*args, **kwargs)

        def train(*a):
            calls["n"] += 1
            return steps.train(*a)

        return dataclasses.replace(steps, train=train)

    def stop(n: int | None) -> None:
        class StopAfter(real_stop):
            @property
            def signal(self):
                return signal.SIGTERM if n is not None and calls["n"] >= n else None

            @signal.setter
            def signal(self, value):
                pass

        monkeypatch.setattr(train_module, "_Stop", real_stop if n is None else StopAfter)

    monkeypatch.setattr(run_module, "build_steps", counting_build)
    return stop


def test_a_stop_on_an_epochs_last_step_still_validates_that_epoch(synthetic_tfds, tmp_path, stop_after):
    """The stop signal arrives exactly at the end of epoch 1: its validation runs before the
    checkpoint, so the resumed run neither skips nor repeats it."""
    steps_per_epoch = len(ham10000.open_splits(synthetic_tfds, image_size=BUILD_SIZE)["train"]) // 16
    stop_after(steps_per_epoch)
    workdir = tmp_path / "run"
    first = train_and_evaluate(tiny_config(synthetic_tfds), workdir)
    assert first["status"] == "interrupted" and first["step"] == steps_per_epoch
    assert [row["epoch"] for row in first["history"]] == [1]

    stop_after(None)
    second = train_and_evaluate(tiny_config(synthetic_tfds), workdir)
    assert second["status"] == "finished"
    assert [row["epoch"] for row in second["history"]] == [1, 2]
    logged = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if r["kind"] == "epoch"] == [steps_per_epoch, 2 * steps_per_epoch]


def tensorboard_points(workdir: pathlib.Path) -> list[tuple[str, int]]:
    """(tag, step) of every scalar in the run's TensorBoard event files, as a reader sees them."""
    import struct

    from tensorboardX.proto import event_pb2

    points = []
    for path in sorted((workdir / "tb").glob("events.out.tfevents.*")):
        data, pos = path.read_bytes(), 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos : pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + length])
            points += [(v.tag, event.step) for v in event.summary.value]
            pos += 12 + length + 4
    return points


def test_an_epoch_resumed_mid_way_reports_all_its_steps_and_tensorboard_each_step_once(
    trained, synthetic_tfds, tmp_path, stop_after
):
    """Issue 33: the resumed epoch's training loss and accuracy covered only the steps after the resume,
    and TensorBoard kept the points logged after the checkpoint twice; issue 39: a checkpoint between two
    log rows dropped the steps since the last row. Stopped inside epoch 2 with a checkpoint every 3 steps
    (odd steps: between the log rows, every 2), and resumed from the one before the stop (as after a
    kill -9 that came after more rows were logged): every history row, metrics.jsonl row (its values
    too) and TensorBoard point is the uninterrupted run's, each step once."""
    reference, result = trained
    steps_per_epoch = len(ham10000.open_splits(synthetic_tfds, image_size=BUILD_SIZE)["train"]) // 16
    # a stop 2 steps after an odd-step checkpoint (every 3) inside epoch 2, a log row (every 2) between
    stop_at = next(s for s in range(steps_per_epoch + 5, 2 * steps_per_epoch) if s % 6 == 5)
    stop_after(stop_at)
    workdir = tmp_path / "run"
    config = tiny_config(synthetic_tfds, **{"checkpoint.every_steps": 3})
    assert train_and_evaluate(config, workdir)["status"] == "interrupted"
    last = max(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert last == stop_at and (workdir / "checkpoints" / str(stop_at - 2)).is_dir()
    shutil.rmtree(workdir / "checkpoints" / str(last))  # resume from the one before: steps after it were logged
    stop_after(None)
    resumed = train_and_evaluate(config, workdir)
    assert resumed["status"] == "finished"

    def train_rows(history):
        return [(r["epoch"], r["train_loss"], r["train_accuracy"], r["val_loss"], r["val_bacc"]) for r in history]

    assert train_rows(resumed["history"]) == train_rows(result["history"])
    logged = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    epochs = [(r["step"], r["train_loss"], r["train_accuracy"]) for r in logged if r["kind"] == "epoch"]
    assert epochs == [(r["step"], r["train_loss"], r["train_accuracy"]) for r in result["history"]]
    assert _logged_rows(workdir, "train") == _logged_rows(reference, "train")
    points = tensorboard_points(workdir)
    assert len(points) == len(set(points))  # each (tag, step) once
    assert set(points) == set(tensorboard_points(reference))


def _logged_rows(workdir: pathlib.Path, kind: str) -> list[dict]:
    """metrics.jsonl's rows of one kind, less the wall time and throughput (which depend on the clock)."""
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [
        {k: v for k, v in r.items() if "images_per_sec" not in k and k != "time"} for r in rows if r["kind"] == kind
    ]


def test_a_damaged_last_checkpoint_is_skipped_with_one_line_and_the_run_resumes(trained, synthetic_tfds, tmp_path):
    """The newest checkpoint truncated: the rerun moves it aside, resumes from the one before and
    ends exactly where the undamaged run ended."""
    import shutil

    workdir, _ = trained
    copy = tmp_path / "run"
    shutil.copytree(workdir, copy)
    steps = sorted(int(p.name) for p in (copy / "checkpoints").iterdir() if p.name.isdigit())
    last = copy / "checkpoints" / str(steps[-1])
    # the largest file of array data (orbax's _METADATA / _sharding side files can outgrow it, and restoring
    # does not need every byte of them)
    data = [p for p in (last / "state").rglob("*") if p.is_file() and not p.name.startswith("_")]
    target = max(data, key=lambda p: p.stat().st_size)
    target.write_bytes(target.read_bytes()[:100])
    result = train_and_evaluate(tiny_config(synthetic_tfds), copy)
    assert result["status"] == "finished"
    lines = [line for line in (copy / "train.log").read_text().splitlines() if " is damaged (" in line]
    assert len(lines) == 1, lines
    assert f"checkpoint {steps[-1]} is damaged (" in lines[0] and lines[0].endswith(f"; resuming from {steps[-2]}")
    assert (copy / "checkpoints_damaged" / str(steps[-1])).is_dir()  # kept, not deleted
    a, b = final_state(copy), final_state(workdir)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert_same_best_weights(copy, workdir)


def test_a_full_disk_stops_the_run_at_once_with_one_message(synthetic_tfds, tmp_path, monkeypatch, capfd):
    from caco_jax.cli.train import main
    from caco_jax.runs import faults

    monkeypatch.setattr(faults, "free_bytes", lambda path: 5_000)
    rc = main(cli_args(tmp_path, synthetic_tfds, **{"checkpoint.every_steps": 2})[2:])
    err = capfd.readouterr().err
    assert rc == 1 and "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err[-3000:]
    assert f"checkpoint 2 to {tmp_path / 'checkpoints'}" in errors[0] and "5.0 kB free on that disk" in errors[0]
    assert "No checkpoint was written yet" in errors[0]
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()]


def _small_disk_command() -> list[str] | None:
    """``unshare -rm`` (a private mount namespace, as root or not): a tmpfs mounted there is seen by the
    command alone and vanishes with it. None where the kernel or the container does not allow it."""
    if shutil.which("unshare") is None:
        return None
    probe = subprocess.run(
        ["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"], capture_output=True, timeout=30
    )
    return ["unshare", "-rm", "sh", "-c"] if probe.returncode == 0 else None


def test_a_disk_filling_mid_write_gives_one_error_line_and_the_named_checkpoint_is_intact(synthetic_tfds, tmp_path):
    """A real ENOSPC in the middle of a checkpoint write (a private tmpfs holds the workdir; another
    program fills it, all but 64 kB, once checkpoint 2 has committed; the free-space check before each
    save told nothing): one
    ``error:`` line naming the checkpoint that is intact and nothing after it (issue 33: 31 'Future
    exception was never retrieved' blocks followed it). That checkpoint restores (a resume from a
    checkpoint is what the kill tests check)."""
    wrap = _small_disk_command()
    if wrap is None:
        pytest.skip("no private tmpfs here (unshare -rm / mount not permitted): cannot fill a disk mid-write")
    disk = tmp_path / "disk"
    disk.mkdir()
    args = cli_args(disk / "run", synthetic_tfds, **{"checkpoint.every_steps": 2})
    args = [args[0], str(ROOT / "tests" / "scripted_train.py"), *args[2:]]
    script = (
        f"mount -t tmpfs -o size=16m tmpfs {disk} && {shlex.join(args)}; rc=$?; "
        f"cp -a {disk / 'run'} {tmp_path / 'copy'}; exit $rc"
    )
    env = _env() | {"CACO_TEST_UNKNOWN_FREE_SPACE": "1", "CACO_TEST_FILL_DISK_AT": "4"}
    failed = subprocess.run([*wrap, script], env=env, capture_output=True, text=True, timeout=600)
    err = failed.stderr.splitlines()
    errors = [i for i, line in enumerate(err) if line.startswith("error:")]
    assert failed.returncode == 1 and len(errors) == 1, failed.stderr[-3000:]
    assert errors[0] == len(err) - 1, err[errors[0] :]  # nothing after it
    assert "No space left on device [errno 28]" in err[-1] and "Traceback" not in failed.stderr
    intact = re.search(r"Checkpoint (\d+) \(with the best weights it records\) is intact", err[-1])
    assert intact and intact.group(1) == "2" and "could not write checkpoint 4" in err[-1], err[-1]
    with ocp.StandardCheckpointer() as ckpt:
        state = ckpt.restore(tmp_path / "copy" / "checkpoints" / intact.group(1) / "state")
    assert state and all(np.isfinite(v).all() for v in state.values())


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(synthetic_tfds, tmp_path):
    c = tiny_config(
        synthetic_tfds,
        **{"optimizer.learning_rate": 1e12, "checkpoint.every_steps": 1, "num_epochs": 1, "log_every_steps": 1},
    )
    with pytest.raises(NonFiniteLossError, match="non-finite|loss is"):
        train_and_evaluate(c, tmp_path)
    for step_dir in (p for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()):
        with ocp.StandardCheckpointer() as ckpt:
            state = ckpt.restore(step_dir / "state")
        assert all(np.isfinite(v).all() for k, v in state.items() if k.startswith("params")), step_dir


def test_missing_dataset_error_says_how_to_build_it_or_run_the_demo(tmp_path):
    c = tiny_config(tmp_path / "nowhere")
    with pytest.raises(DataNotBuiltError, match="caco-jax prepare-data") as err:
        train_and_evaluate(c, tmp_path / "run")
    assert "--config demo" in str(err.value) and str(tmp_path / "nowhere") in str(err.value)


def test_resuming_with_another_model_is_refused(trained, tmp_path):
    workdir, _ = trained
    c = tiny_config(tmp_path, **{"model.attention": "se"})
    with pytest.raises(ValueError, match="model.attention"):
        train_and_evaluate(c, workdir)


def test_unknown_config_key_is_named(tmp_path):
    proc = subprocess.run(
        cli_args(tmp_path, tmp_path, **{"model.not_a_field": 1}), env=_env(), capture_output=True, text=True
    )
    assert proc.returncode != 0
    assert "not_a_field" in proc.stderr


@pytest.mark.slow
def test_eight_devices_train_like_one():
    env = _env()
    env["XLA_FLAGS"] += " --xla_force_host_platform_device_count=8"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "multidevice_check.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["moved"] > 1e-2  # training changed the parameters: the comparison means something
    # Measured: params 3e-8, BatchNorm statistics 2.4e-7, loss 1.2e-7 (float summation order only).
    assert result["params"] < 1e-6 and result["batch_stats"] < 1e-5 and result["loss"] < 1e-5, result
    assert "not divisible by the 8 devices" in result["error"]


def test_evaluate_on_an_isic2018_test_build_agrees_with_predict(trained, synthetic_tfds, tmp_path):
    """External evaluation: synthetic lesions laid out as ISIC 2018 Task 3 test files."""
    from caco_jax.cli.evaluate import main as evaluate_main
    from caco_jax.data.classes import CLASS_NAMES
    from caco_jax.serving.classify import predict

    workdir, _ = trained
    manual = tmp_path / "isic"
    (manual / "ISIC2018_Task3_Test_Input").mkdir(parents=True)
    columns = ["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]
    rows = ["image," + ",".join(columns)]
    metadata = (synthetic_tfds.parent / "manual" / "HAM10000_metadata.csv").read_text().splitlines()[1:21]
    truth = {}
    for line in metadata:
        _, image_id, dx = line.split(",")[:3]
        src = next((synthetic_tfds.parent / "manual").rglob(f"{image_id}.jpg"))
        (manual / "ISIC2018_Task3_Test_Input" / src.name).write_bytes(src.read_bytes())
        rows.append(image_id + "," + ",".join("1.0" if c.lower() == dx else "0.0" for c in columns))
        truth[image_id] = dx
    (manual / "ISIC2018_Task3_Test_GroundTruth.csv").write_text("\n".join(rows) + "\n")

    assert (
        evaluate_main(
            [
                "--workdir",
                str(workdir),
                "--dataset",
                "isic2018_test",
                "--manual_dir",
                str(manual),
                "--data_dir",
                str(tmp_path / "tfds"),
                "--out",
                str(tmp_path / "out"),
                "--save_predictions",
            ]
        )
        == 0
    )
    metrics = json.loads((tmp_path / "out" / "report_isic2018_test_test.json").read_text())["metrics"]
    assert metrics["num_examples"] == 20
    from caco_jax.evaluation import predictions as saved

    external = saved.load(tmp_path / "out" / "predictions_test.npz")  # image by image, no leak flags
    assert sorted(external.image_id) == sorted(truth) and not external.same_lesion.any()
    predictions, problems = predict(workdir, [manual / "ISIC2018_Task3_Test_Input"], top_k=1)
    assert not problems
    hits = [truth[pathlib.Path(p["file"]).stem] == p["top"][0]["class"] for p in predictions]
    assert metrics["accuracy"] == pytest.approx(np.mean(hits), abs=1e-9)
    assert set(truth.values()) <= set(CLASS_NAMES)


@pytest.mark.slow
def test_two_processes_train_like_one(synthetic_tfds, tmp_path):
    """jax.distributed on localhost (2 processes, 1 CPU device each, gloo), each reading half of every batch."""
    import socket

    sys.path.insert(0, str(ROOT / "tests"))
    from multihost_config import config

    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    two = tmp_path / "two"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "tests" / "multihost_check.py"),
                str(i),
                str(port),
                str(synthetic_tfds),
                str(two),
            ],
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in (0, 1)
    ]
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=900)[0])
    finally:
        for p in procs:  # the test never leaves processes behind
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-3000:] for o in outputs)
    assert "process 1: finished" in outputs[1]

    one = tmp_path / "one"
    train_and_evaluate(config(synthetic_tfds), one)

    def losses(workdir):
        lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
        return {line["step"]: line["train/loss"] for line in lines if "train/loss" in line}

    l1, l2 = losses(one), losses(two)
    assert l1.keys() == l2.keys() and len(l1) >= 5
    np.testing.assert_allclose([l2[k] for k in sorted(l2)], [l1[k] for k in sorted(l1)], rtol=0, atol=1e-4)
    r1, r2 = (json.loads((w / "report.json").read_text())["metrics"] for w in (one, two))
    assert r1["num_examples"] == r2["num_examples"]
    assert r2["loss"] == pytest.approx(r1["loss"], abs=1e-3)
    assert r2["confusion"] == r1["confusion"]


def test_the_guard_command_refits_what_training_fitted(trained, capsys):
    """caco-jax guard on a finished run (as for runs trained before guards) gives training's own guard."""
    from caco_jax.cli.guard import main as guard_main
    from caco_jax.evaluation import ood_score

    workdir, _ = trained
    before = ood_score.load(workdir / "best")
    selective_before = json.loads((workdir / "best" / "selective.json").read_text())
    assert before is not None and guard_main(["--workdir", str(workdir)]) == 0
    after = ood_score.load(workdir / "best")
    assert after is not None and (after.method, after.layer) == (before.method, before.layer)
    assert after.threshold == pytest.approx(before.threshold, rel=1e-4)
    assert after.info["test_flagged"] == pytest.approx(before.info["test_flagged"])
    selective_after = json.loads((workdir / "best" / "selective.json").read_text())
    was, now = selective_before["threshold"], selective_after["threshold"]
    assert (was is None and now is None) or now == pytest.approx(was, rel=1e-4)
    assert "of test images flagged" in capsys.readouterr().out


def test_the_resume_line_counts_epochs_as_the_epoch_lines_do():
    """Issue 39: 'resumed from checkpoints/50 (epoch 2)' beside 'epoch 3/8' for the same epoch."""
    from caco_jax.training.resume import where

    assert where(50, 20, 8) == "step 10/20 of epoch 3/8"
    assert where(40, 20, 8) == "after epoch 2/8"
