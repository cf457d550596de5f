"""The out-of-distribution guard and the reliability threshold in the product: ``caco-jax guard`` on a
run, and ``predict`` marking images unlike the training images and answers below the reliable level."""

from __future__ import annotations

import dataclasses
import json
import pathlib
import sys

import numpy as np
import pytest
import skimage.data

from caco_jax.cli.predict import main as predict_main
from caco_jax.data import shifts
from caco_jax.evaluation import ood_score, selective
from caco_jax.serving.predictor import Predictor
from caco_jax.training import guard

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from test_images import encode
from test_predict import lesion, make_run

ASTRONAUT = pathlib.Path(skimage.data.__file__).parent / "astronaut.png"


@pytest.fixture(scope="module")
def guarded_run(tmp_path_factory):
    """A made run (tiny model at 32 px) whose guard is fitted as training fits it, on lesion-like images:
    Mahalanobis on the pooled features of 80, threshold keeping 95 % of 40 others; a reliability
    threshold of 0.5."""
    workdir = make_run(tmp_path_factory.mktemp("run"))
    predictor = Predictor(workdir)

    def embedded(seeds: range) -> dict[str, np.ndarray]:
        images = np.stack([predictor.prepare(encode(lesion(s))) for s in seeds])
        return predictor.embed(images) | {"labels": np.arange(len(seeds)) % 7}

    fitted = guard.fit(embedded(range(100, 180)), embedded(range(200, 240)), 7)
    raw = {
        k: np.stack([lesion(s) for s in seeds]) for k, seeds in (("train", range(100, 180)), ("val", range(200, 240)))
    }
    size = predictor.image_size
    images = {
        "train": np.stack([predictor.prepare(encode(im)) for im in raw["train"]]),
        "train_shifted": shifts.mixed(raw["train"], size, 1),
        "validation_shifted": shifts.mixed(raw["val"], size, 11),
    }
    fitted = guard.add_far_part(fitted, predictor.embed, images)
    # far from every dermoscopy image = above this; the made run's features are too crude to place the
    # astronaut reliably, so the tests set the threshold where they need it (tests/test_ood.py tests the fit)
    fitted = dataclasses.replace(fitted, far_threshold=1e30)
    ood_score.save(workdir / "best", fitted)
    selective.save(workdir / "best", {"threshold": 0.5, "target_accuracy": 0.9, "fitted_on": "validation"})
    return workdir


def test_predict_marks_a_natural_photograph_and_passes_lesions(guarded_run, tmp_path, capsys):
    files = []
    for seed in range(300, 310):
        files.append(tmp_path / f"lesion{seed}.png")
        files[-1].write_bytes(encode(lesion(seed)))
    out = tmp_path / "p.json"
    assert predict_main(["--workdir", str(guarded_run), "--json", str(out), str(ASTRONAUT), *map(str, files)]) == 0
    rows = {pathlib.Path(r["file"]).name: r for r in json.loads(out.read_text())["predictions"]}
    assert rows["astronaut.png"]["unlike_training"] is True and rows["astronaut.png"]["not_dermoscopy"] is False
    assert sum(rows[f.name]["unlike_training"] for f in files) <= 1  # the threshold keeps 95 % of lesions
    fitted = ood_score.load(guarded_run / "best")
    assert fitted is not None and rows["astronaut.png"]["ood_score"] > fitted.threshold
    for row in rows.values():
        assert row["reliable"] == (row["confidence"] >= 0.5)
    text = capsys.readouterr().out
    astronaut_line = next(line for line in text.splitlines() if "astronaut.png" in line)
    assert astronaut_line.endswith("ANOTHER ACQUISITION") and "caco-jax adapt --workdir RUN" in text


def test_an_image_that_is_not_dermoscopy_is_void_and_never_reliable(guarded_run, tmp_path, capsys):
    """With the far threshold below every score, each image is 'not dermoscopy': never also 'unlike the
    training images', never reliable, whatever its confidence (scikit-image's astronaut was once answered
    'reliable: True, confidence 1.000' beside 'unlike_training: True')."""
    run = tmp_path / "run"
    import shutil

    shutil.copytree(guarded_run, run)
    fitted = ood_score.load(run / "best")
    ood_score.save(run / "best", dataclasses.replace(fitted, far_threshold=-1.0))
    selective.save(run / "best", {"threshold": 0.0, "target_accuracy": 0.9, "fitted_on": "validation"})
    image = tmp_path / "lesion.png"
    image.write_bytes(encode(lesion(301)))
    out = tmp_path / "p.json"
    assert (
        predict_main(
            ["--workdir", str(run), "--json", str(out), "--csv", str(tmp_path / "p.csv"), str(ASTRONAUT), str(image)]
        )
        == 0
    )
    rows = json.loads(out.read_text())["predictions"]
    assert all(r["not_dermoscopy"] is True and r["unlike_training"] is False and r["reliable"] is False for r in rows)
    assert all(r["far_score"] > -1.0 for r in rows)
    text = capsys.readouterr().out
    assert all(line.endswith("NOT DERMOSCOPY: answer void") for line in text.splitlines() if ".png" in line)
    assert (
        (tmp_path / "p.csv")
        .read_text()
        .splitlines()[0]
        .startswith("file,prediction,decision,not_dermoscopy,far_score,unlike_training,ood_score")
    )


def test_a_run_without_a_guard_says_so_once(tmp_path, capsys):
    workdir = make_run(tmp_path / "old")
    image = tmp_path / "a.png"
    image.write_bytes(encode(lesion(0)))
    out = tmp_path / "p.json"
    assert predict_main(["--workdir", str(workdir), "--json", str(out), str(image), str(ASTRONAUT)]) == 0
    rows = json.loads(out.read_text())["predictions"]
    assert all(r["unlike_training"] is None and r["reliable"] is None for r in rows)
    assert capsys.readouterr().err.count("has no out-of-distribution guard: caco-jax guard --workdir RUN") == 1


@pytest.fixture(scope="module")
def page(guarded_run, tmp_path_factory):
    """The web page of the guarded run, on localhost, driven through Gradio's HTTP API."""
    pytest.importorskip("gradio", reason="the web page needs the app extra: pip install -e '.[app]'")
    import httpx

    from caco_jax.serving import app, uploads
    from test_app import LIMITS, _free_port

    predictor = Predictor(guarded_run, batch_size=1)
    analyser = app.Analyser(predictor, LIMITS, uploads.UploadCache(tmp_path_factory.mktemp("page")))
    analyser.warm_up()
    built = app.build(analyser, description=app.describe(guarded_run, predictor))
    _, url, _ = app.launch(built, port=_free_port(), limits=LIMITS, block=False)
    client = httpx.Client(base_url=url.rstrip("/"), timeout=120)
    yield client
    client.close()
    built.close()


def test_the_page_warns_above_the_answer_for_an_image_unlike_the_training_images(page):
    from caco_jax.serving import app
    from test_app import _analyse, _upload

    result = _analyse(page, _upload(page, "astronaut.png", ASTRONAUT.read_bytes()))
    message = result[3]
    assert message.startswith(f"**{app.UNLIKE}**") and message.index(app.UNLIKE) < message.index("Answer:")
    assert "*(another acquisition: see the warning)*" in message and result[0] is not None
    lesion_message = _analyse(page, _upload(page, "lesion.png", encode(lesion(301))))[3]
    assert app.UNLIKE not in lesion_message
    # the made run answers with little confidence: below the 0.5 this run calls reliable
    assert "**Low confidence**" in lesion_message and "Treat this answer as unreliable" in lesion_message
