"""caco-jax predict on folders of mixed files, and the decision rule it answers with (--decision).

The run is made, not trained: the tiny model's initial weights at 32 px, a temperature and a
balanced decision rule saved beside them, as training leaves them.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import pathlib
import shutil
import sys

import numpy as np
import pytest
from PIL import Image

from caco_jax.cli.predict import main as predict_main
from caco_jax.data.classes import CLASS_NAMES
from caco_jax.evaluation import calibration, decision
from caco_jax.models import model_from_config
from caco_jax.runs.weights import assign_weights, model_weights, save_weights
from caco_jax.runs.workspace import save_config
from caco_jax.serving.classify import predict
from caco_jax.serving.predictor import Predictor
from caco_jax.training.steps import dihedral_views

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from caco_jax.configs import demo

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from test_images import encode, exif_with_orientation, png_header_only

TEMPERATURE, FIT_TEMPERATURE = 1.5, 2.0
# Offsets in the log domain: strong enough to move many answers away from the argmax.
RULE = decision.DecisionRule(
    "logit_adjustment",
    (-0.4, -0.2, 0.3, 0.1, 0.0, 0.5, 0.2),
    tau=1.0,
    info={"temperature": FIT_TEMPERATURE, "fitted_on": "validation"},
)


def make_run(workdir: pathlib.Path, *, rule: bool = True, default: str | None = "argmax") -> pathlib.Path:
    workdir.mkdir(parents=True, exist_ok=True)
    config = demo.get_config()
    config.model.arch = "tiny"
    config.data.image_size = 32
    if default is None:
        del config.evaluation["decision"]  # a run from before the field existed
    else:
        config.evaluation.decision = default
    save_config(config, workdir)
    model = model_from_config(config.model, num_classes=len(CLASS_NAMES), seed=3)
    flat = model_weights(model)  # initial weights answer ~1/7 everywhere: make the answers differ
    flat["classifier/kernel"] = (
        np.random.default_rng(0).normal(0, 300, flat["classifier/kernel"].shape).astype(np.float32)
    )
    assign_weights(model, flat, source="test")
    save_weights(model, workdir / "best", metadata={"class_names": list(CLASS_NAMES)})
    calibration.save(workdir / "best", TEMPERATURE, fitted_on="validation")
    if rule:
        decision.save(workdir / "best", RULE)
    return workdir


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return make_run(tmp_path_factory.mktemp("run"))


def lesion(seed: int, size: tuple[int, int] = (60, 40)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = np.full((size[1], size[0], 3), (215, 170, 140), np.uint8)
    image[size[1] // 4 : 3 * size[1] // 4, size[0] // 3 :] = rng.integers(0, 255, 3)
    return np.clip(image + rng.normal(0, 20, image.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """Good images of every format beside a 20000 x 20000 PNG, text, an animation, a cut and an empty file."""
    folder = tmp_path_factory.mktemp("mixed")
    for i, (name, fmt) in enumerate(
        [
            ("a.jpg", "JPEG"),
            ("b.png", "PNG"),
            ("c.gif", "GIF"),
            ("d.tiff", "TIFF"),
            ("e.webp", "WEBP"),
            ("f.bmp", "BMP"),
        ]
    ):
        (folder / name).write_bytes(encode(lesion(i), fmt))
    (folder / "sub").mkdir()
    (folder / "sub" / "g.JPEG").write_bytes(encode(lesion(9), "JPEG"))
    (folder / "huge.png").write_bytes(png_header_only(20000, 20000))
    (folder / "notes.txt").write_text("not an image")
    (folder / "notes.jpg").write_text("not an image either")
    frames = [Image.fromarray(lesion(1)), Image.fromarray(lesion(2))]
    (folder / "anim.gif").write_bytes(encode(frames[0], "GIF", save_all=True, append_images=frames[1:]))
    (folder / "cut.jpg").write_bytes(encode(lesion(3, (240, 160)), "JPEG")[:2000])
    (folder / "empty.png").write_bytes(b"")
    return folder


GOOD = ["a.jpg", "b.png", "c.gif", "d.tiff", "e.webp", "f.bmp", "sub/g.JPEG"]
SKIPPED = {
    "huge.png": "400 megapixels is too large; the limit is 89 megapixels",
    "notes.txt": "not an image file (suffix .txt",
    "notes.jpg": "not an image file this program can read",
    "anim.gif": "an animation or multi-page image (2 frames)",
    "cut.jpg": "damaged or incomplete (image file is truncated",
    "empty.png": "the file is empty (0 bytes)",
}


def test_one_bad_file_never_stops_the_batch_and_every_skipped_file_is_listed(run_dir, mixed_folder, tmp_path, capsys):
    out = tmp_path / "p.json"
    assert predict_main(["--workdir", str(run_dir), "--json", str(out), str(mixed_folder)]) == 0
    payload = json.loads(out.read_text())
    assert sorted(pathlib.Path(r["file"]).relative_to(mixed_folder).as_posix() for r in payload["predictions"]) == GOOD
    skipped = {pathlib.Path(s["file"]).name: s["reason"] for s in payload["skipped"]}
    assert skipped.keys() == SKIPPED.keys()
    for name, reason in SKIPPED.items():
        assert skipped[name].startswith(reason), (name, skipped[name])
    err = capsys.readouterr().err
    assert all(f"skipped {mixed_folder / name}: " in err for name in SKIPPED) and "BytesIO" not in err


def test_when_no_image_can_be_read_the_exit_is_bad_input(run_dir, mixed_folder, capsys):
    """Every other bad input exits 2; an image that cannot be used is bad input too (issue 39)."""
    assert predict_main(["--workdir", str(run_dir), str(mixed_folder / "cut.jpg")]) == 2
    assert "error: no image could be read" in capsys.readouterr().err


def test_a_file_reached_twice_is_listed_once_and_the_written_files_are_named(run_dir, mixed_folder, tmp_path, capsys):
    """a.jpg given directly and inside its folder, sub/ inside the folder and given again: every file once."""
    csv_path, json_path = tmp_path / "p.csv", tmp_path / "p.json"
    inputs = [mixed_folder / "a.jpg", mixed_folder, mixed_folder / "sub", mixed_folder / "sub" / ".." / "a.jpg"]
    argv = ["--workdir", str(run_dir), "--csv", str(csv_path), "--json", str(json_path), *map(str, inputs)]
    assert predict_main(argv) == 0
    payload = json.loads(json_path.read_text())
    files = [pathlib.Path(r["file"]).resolve().relative_to(mixed_folder).as_posix() for r in payload["predictions"]]
    assert sorted(files) == GOOD  # each once
    assert sorted(pathlib.Path(s["file"]).name for s in payload["skipped"]) == sorted(SKIPPED)
    assert len(csv_path.read_text().splitlines()) == 1 + len(GOOD)
    out = capsys.readouterr().out
    assert f"CSV ({len(GOOD)} rows): {csv_path}" in out
    assert f"JSON ({len(GOOD)} predictions, {len(SKIPPED)} skipped): {json_path}" in out


def _overwrite_largest_weights_file(workdir: pathlib.Path) -> pathlib.Path:
    f = max((p for p in (workdir / "best" / "weights").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    data = bytearray(f.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = np.random.default_rng(2).bytes(64)
    f.write_bytes(bytes(data))
    return f


def test_a_damaged_best_is_restored_from_its_checkpoint_or_named_in_one_error(tmp_path, caplog, capsys):
    """Issue 33: damaged best weights were used silently. With a checkpoint recording them they are
    restored (one log line) and the answers are the undamaged ones; without one, one error naming the file."""
    from caco_jax.runs.loading import read_weights
    from caco_jax.training.checkpoints import Checkpointer

    workdir = make_run(tmp_path / "run")
    image = tmp_path / "a.png"
    image.write_bytes(encode(lesion(0)))

    def answers(name: str) -> tuple[int, dict]:
        code = predict_main(["--workdir", str(workdir), "--json", str(tmp_path / name), str(image)])
        return code, json.loads((tmp_path / name).read_text())["predictions"] if code == 0 else {}

    code, undamaged = answers("undamaged.json")
    flat, meta = read_weights(workdir / "best")
    ckpt = Checkpointer(workdir / "checkpoints")  # as training leaves one: it records the best weights
    ckpt.save(7, {"w": np.zeros(3, np.float32)}, {}, {"history": [], "best_bacc": 0.5, "epoch": 1, "best": meta}, flat)
    ckpt.close()
    damaged = _overwrite_largest_weights_file(workdir)
    with caplog.at_level(logging.WARNING, logger="caco_jax"):
        code, restored = answers("restored.json")
    assert code == 0 and restored == undamaged
    [line] = [r.getMessage() for r in caplog.records if " is damaged (" in r.getMessage()]
    assert line.startswith(f"{damaged} is damaged (") and line.endswith("from checkpoint 7")
    capsys.readouterr()
    damaged = _overwrite_largest_weights_file(workdir)
    shutil.rmtree(workdir / "checkpoints")
    assert answers("none.json")[0] == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {damaged} is damaged (") and len(err.splitlines()) == 1, err


def test_an_exif_rotated_photo_is_classified_as_it_is_seen(run_dir, tmp_path):
    upright = lesion(5, (64, 48))
    (tmp_path / "upright.png").write_bytes(encode(upright))
    (tmp_path / "tagged.png").write_bytes(
        encode(np.ascontiguousarray(np.rot90(upright, 1)), "PNG", exif=exif_with_orientation(6))
    )
    (tmp_path / "sideways.png").write_bytes(encode(np.ascontiguousarray(np.rot90(upright, 1))))
    rows, problems = predict(run_dir, [tmp_path / n for n in ("upright.png", "tagged.png", "sideways.png")])
    assert not problems
    probs = [np.array(list(r["probabilities"].values())) for r in rows]
    np.testing.assert_allclose(probs[1], probs[0], atol=1e-6)
    assert np.abs(probs[2] - probs[0]).max() > 1e-4  # the orientation matters to the model: the test means something


@pytest.mark.parametrize("tta", [False, True])
def test_the_balanced_rule_answers_as_the_fitted_rule_does_on_the_logits(run_dir, tmp_path, tta):
    """Against the rule applied to logits computed separately (per dihedral view with TTA: the log of
    the views' mean probability, decision.log_scores on [N, V, C])."""
    predictor = Predictor(run_dir, batch_size=8)
    batch = np.stack([predictor.prepare(encode(lesion(i))) for i in range(12)])
    views = np.asarray(dihedral_views(batch)) if tta else batch[None]  # [V, N, S, S, 3]
    logits = np.stack([np.log(predictor.probabilities(v, temperature=1.0)) for v in views], axis=1)
    logits = logits if tta else logits[:, 0]  # log softmax(z): the logits up to a per-image constant
    balanced = predictor.decide(batch, tta=tta, rule="balanced")
    argmax = predictor.decide(batch, tta=tta, rule="argmax")
    np.testing.assert_array_equal(balanced.classes, RULE.predict(logits, FIT_TEMPERATURE))
    np.testing.assert_allclose(balanced.probabilities, RULE.balanced_probabilities(logits, FIT_TEMPERATURE), atol=1e-5)
    np.testing.assert_allclose(argmax.probabilities, calibration.probabilities(logits, TEMPERATURE), atol=1e-5)
    np.testing.assert_array_equal(argmax.classes, argmax.probabilities.argmax(-1))
    assert (balanced.classes != argmax.classes).any()  # the rule changes answers here


def test_predict_names_the_rule_in_the_table_csv_and_json(run_dir, mixed_folder, tmp_path, capsys):
    files = [str(mixed_folder / n) for n in ("a.jpg", "b.png")]
    assert (
        predict_main(
            [
                "--workdir",
                str(run_dir),
                "--decision",
                "balanced",
                "--csv",
                str(tmp_path / "p.csv"),
                "--json",
                str(tmp_path / "p.json"),
                *files,
            ]
        )
        == 0
    )
    assert (
        capsys.readouterr()
        .out.splitlines()[0]
        .startswith("decision rule balanced: the rule fitted on the validation split")
    )
    rows = json.loads((tmp_path / "p.json").read_text())["predictions"]
    for row in rows:
        assert row["decision"] == "balanced" and row["prediction"] == row["top"][0]["class"]
        assert row["top"][0]["probability"] == max(row["probabilities"].values())
        assert sum(row["model_probabilities"].values()) == pytest.approx(1, abs=1e-5)
    table = list(csv.reader(io.StringIO((tmp_path / "p.csv").read_text())))
    guard = ["not_dermoscopy", "far_score", "unlike_training", "ood_score"]
    assert table[0][:9] == ["file", "prediction", "decision", *guard, "confidence", "reliable"]
    assert table[0][9:] == list(CLASS_NAMES)
    assert [r[1:3] for r in table[1:]] == [[r["prediction"], "balanced"] for r in rows]
    assert predict_main(["--workdir", str(run_dir), "--json", str(tmp_path / "d.json"), *files]) == 0
    default = json.loads((tmp_path / "d.json").read_text())["predictions"]
    assert {r["decision"] for r in default} == {"argmax"} and "model_probabilities" not in default[0]


def test_the_default_rule_is_the_runs_and_argmax_for_runs_without_one(tmp_path):
    assert Predictor(make_run(tmp_path / "balanced", default="balanced")).decision == "balanced"
    assert Predictor(make_run(tmp_path / "old", default=None, rule=False)).decision == "argmax"


def test_asking_for_balanced_without_a_fitted_rule_is_a_usage_error(tmp_path, capsys):
    workdir = make_run(tmp_path / "run", rule=False)
    image = tmp_path / "a.png"
    image.write_bytes(encode(lesion(0)))
    assert predict_main(["--workdir", str(workdir), "--decision", "balanced", str(image)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the balanced decision rule needs ") and str(workdir / "best" / "decision.json") in err
    assert "use --decision argmax" in err and "Traceback" not in err
    assert (
        predict_main(["--workdir", str(make_run(tmp_path / "run2", rule=False, default="balanced")), str(image)]) == 2
    )  # a run whose default is balanced but whose weights lack the rule
