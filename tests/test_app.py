"""The web page (caco_jax.serving.app), served on 127.0.0.1 and driven through Gradio's HTTP API.

Upload with POST /gradio_api/upload, start a run with POST /gradio_api/call/analyse, read its
result from the event stream GET /gradio_api/call/analyse/<event_id>: what a browser does.
"""
from __future__ import annotations

import io
import json
import pathlib
import socket
import sys

import numpy as np
import pytest
from PIL import Image

gr = pytest.importorskip("gradio", reason="the web page needs the app extra: pip install -e '.[app]'")
httpx = pytest.importorskip("httpx", reason="comes with gradio (the app extra)")

from caco_jax.serving import app  # noqa: E402
from caco_jax.evaluation import calibration
from caco_jax.data.classes import CLASS_NAMES  # noqa: E402
from caco_jax.serving.predictor import Predictor  # noqa: E402
from caco_jax.models import model_from_config  # noqa: E402
from caco_jax.runs.weights import save_weights  # noqa: E402
from caco_jax.runs.workspace import save_config  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from caco_jax.configs import demo  # noqa: E402

LIMITS = app.Limits(max_bytes=1 << 20, max_pixels=4_000_000)  # small, so the refusals are cheap to test


def tiny_run(workdir: pathlib.Path) -> pathlib.Path:
    """A run directory as training leaves it (config, best weights with class names, a temperature),
    for the tiny model at 32 px; untrained weights are enough to test the page."""
    config = demo.get_config()
    config.model.arch = "tiny"
    config.data.image_size = 32
    save_config(config, workdir)
    model = model_from_config(config.model, num_classes=len(CLASS_NAMES), seed=0)
    save_weights(model, workdir / "best", metadata={"class_names": list(CLASS_NAMES)})
    calibration.save(workdir / "best", 1.5, fitted_on="validation")
    return workdir


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    workdir = tiny_run(tmp_path_factory.mktemp("run"))
    predictor = Predictor(workdir, batch_size=1)
    analyser = app.Analyser(predictor, LIMITS)
    analyser.warm_up()
    page = app.build(analyser, description=app.describe(workdir, predictor))
    _, url, _ = app.launch(page, port=_free_port(), limits=LIMITS, block=False)
    client = httpx.Client(base_url=url.rstrip("/"), timeout=120)
    yield client, url
    client.close()
    page.close()


def _upload(client, name: str, data: bytes) -> dict:
    r = client.post("/gradio_api/upload", files={"files": (name, data)})
    assert r.status_code == 200, r.text
    return {"path": r.json()[0], "meta": {"_type": "gradio.FileData"}, "orig_name": name}


def _analyse(client, file: dict | None, explain: str = app.PREDICTED, tta: bool = False) -> list:
    r = client.post("/gradio_api/call/analyse", json={"data": [file, explain, tta]})
    assert r.status_code == 200, r.text
    event_id = r.json()["event_id"]
    with client.stream("GET", f"/gradio_api/call/analyse/{event_id}") as stream:
        text = "".join(stream.iter_text())
    events = [block.split("\n") for block in text.strip().split("\n\n")]
    last = {line.split(": ", 1)[0]: line.split(": ", 1)[1] for line in events[-1] if ": " in line}
    assert last["event"] == "complete", text  # never an error event: refusals are messages
    return json.loads(last["data"])


def _jpeg(size: tuple[int, int] = (120, 90)) -> bytes:
    rng = np.random.default_rng(0)
    image = np.full((size[1], size[0], 3), (215, 170, 140), np.uint8)
    yy, xx = np.mgrid[0:size[1], 0:size[0]]
    image[np.hypot(yy - size[1] / 2, xx - size[0] / 2) < min(size) / 4] = (90, 55, 40)
    image = np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(image).save(out, format="JPEG", quality=90)
    return out.getvalue()


def test_binds_to_localhost_and_the_page_says_it_is_not_a_diagnosis(server):
    client, url = server
    assert url.startswith("http://127.0.0.1:")
    assert client.get("/").status_code == 200
    config = client.get("/config").text
    assert "not a diagnosis" in config and "synthetic" in config


def test_an_image_gets_probabilities_and_a_grad_cam_overlay(server):
    client, _ = server
    probs, image, heat, message = _analyse(client, _upload(client, "lesion.jpg", _jpeg()))
    confidences = {c["label"]: c["confidence"] for c in probs["confidences"]}
    assert set(confidences) == set(CLASS_NAMES) and sum(confidences.values()) == pytest.approx(1.0, abs=1e-4)
    assert probs["label"] == max(confidences, key=confidences.get)
    assert f"**{probs['label']}**" in message and "T = 1.50" in message and "not a diagnosis" in message
    overlay = Image.open(io.BytesIO(client.get(heat["url"]).content))
    original = Image.open(io.BytesIO(client.get(image["url"]).content))
    assert overlay.size == original.size == (120, 90)  # shown at the upload's own size
    assert np.abs(np.asarray(overlay, int) - np.asarray(original, int)).mean() > 1  # the heat map is drawn


def test_a_chosen_class_and_test_time_augmentation(server):
    client, _ = server
    file = _upload(client, "lesion.jpg", _jpeg())
    _, _, _, message = _analyse(client, file, explain="mel", tta=True)
    assert "supports **mel**" in message and "averaged over 8" in message


@pytest.mark.parametrize(("name", "data", "expected"), [
    ("notes.txt", b"these are my notes, not a picture", "is not an image"),
    ("cut.jpg", _jpeg()[:600], "could not be decoded"),
    ("empty.jpg", b"", "is empty"),
    ("bomb.png", None, "megapixels"),
])
def test_bad_files_get_a_clear_message(server, name, data, expected):
    client, _ = server
    if data is None:  # 4.8 megapixels in a few kB: refused from its header, before decoding
        out = io.BytesIO()
        Image.new("RGB", (2400, 2000)).save(out, format="PNG")
        data = out.getvalue()
    probs, image, heat, message = _analyse(client, _upload(client, name, data))
    assert not probs and image is None and heat is None  # an empty label, no images
    assert "Cannot analyse this file" in message and expected in message, message


def test_no_file_and_a_file_over_the_size_limit(server, tmp_path):
    client, _ = server
    assert "Drop a dermoscopy image" in _analyse(client, None)[3]
    r = client.post("/gradio_api/upload", files={"files": ("huge.jpg", b"\0" * (LIMITS.max_bytes + 1))})
    assert r.status_code == 413 and "maximum allowed size" in r.text  # refused before it is stored
    huge = tmp_path / "huge.jpg"
    huge.write_bytes(b"\0" * (LIMITS.max_bytes + 1))
    with pytest.raises(app.UploadError, match="the limit is 1 MB"):
        app.read_upload(huge, LIMITS)
