"""LiteRT export (caco_jax.interop.export_litert) and predict --model on a .tflite file.

Needs the litert extra, which CI does not install (it cannot share an environment with the app extra at
the tested versions: docs/deploy.md); elsewhere these tests skip with that reason. The float file must
give caco-jax's evaluation logits and the reference's feature layers to the ONNX tolerance; by default
for caco, the other variants in the heavy marker (about 30 s each)."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip(
    "litert_torch",
    reason="litert-torch is not installed: the litert extra (pip install -e '.[torch,onnx,litert]' in an "
    "environment without the app and dev extras, docs/deploy.md); CI does not install it",
)

import torch

import whole_model as wm
from caco_jax.data.classes import CLASS_NAMES
from caco_jax.interop import artifact, deploy
from caco_jax.interop.export_litert import export_litert
from caco_jax.serving.portable import PortablePredictor
from caco_jax.training.steps import ModelDef
from deploy_run import imagenet_caco, make_run, pooled_cosine, real_images, uint8_images

pytestmark = pytest.mark.torch
TOL = 1e-4
VARIANTS = [name for name in wm.CASES if name != "caco-plain"]


@pytest.mark.parametrize("name", [n if n == "caco" else pytest.param(n, marks=pytest.mark.heavy) for n in VARIANTS])
def test_litert_float_matches_caco_jax(name, tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    c = wm.case(name)
    path = tmp_path / f"{name}.tflite"
    key = export_litert(c["model"], path, image_size=(wm.HEIGHT, wm.WIDTH))
    runner = Interpreter(model_path=str(path)).get_signature_runner()
    assert runner.get_input_details()[key]["shape"].tolist() == [1, wm.HEIGHT, wm.WIDTH, 3]  # NHWC, batch 1
    x = wm.images()
    outs = [runner(**{key: x[i : i + 1]}) for i in range(len(x))]
    logits = np.concatenate([o["logits"] for o in outs])
    np.testing.assert_allclose(logits, c["eval_logits"], rtol=0, atol=TOL)
    ref = c["ref"]
    with torch.no_grad():
        pooled = torch.flatten(ref.avgpool(ref.features(wm.nchw(x))), 1)
        hidden = ref.classifier[:-1](pooled)
    np.testing.assert_allclose(np.concatenate([o["pooled"] for o in outs]), pooled.numpy(), rtol=0, atol=TOL)
    np.testing.assert_allclose(np.concatenate([o["hidden"] for o in outs]), hidden.numpy(), rtol=0, atol=TOL)


def _logits(model, images: np.ndarray) -> np.ndarray:
    md = ModelDef(model)
    return np.asarray(md.apply(md.init_params, md.init_batch_stats, deploy.normalise(images), train=False)[0])


def test_litert_int8_and_predict_model(tmp_path):
    """caco-jax export --tflite --int8's files: an int8 file that changes too many answers is refused; forced,
    it holds int8 tensors and is smaller; both answer through caco-jax predict --model with the run's rules
    (the float one as caco-jax does)."""
    from ai_edge_litert.interpreter import Interpreter

    from caco_jax.serving.classify import predict

    model = wm.case("caco")["model"]
    run_dir = make_run(tmp_path / "best", model, _logits)
    run = artifact.describe_run(run_dir, class_names=CLASS_NAMES, image_size=(64, 64), default_decision="balanced")
    calibration = deploy.normalise(uint8_images(8, seed=3))
    # a random model on noise: its int8 file changes most answers, so export refuses it unless forced
    with pytest.raises(deploy.Int8Refused, match="int8 LiteRT not written: the top class of"):
        deploy.export_models(model, run, tflite=tmp_path / "refused.tflite", calibration=calibration)
    assert (tmp_path / "refused.tflite").is_file() and not (tmp_path / "refused_int8.tflite").exists()
    files = deploy.export_models(model, run, tflite=tmp_path / "m.tflite", calibration=calibration, force_int8=True)
    assert [p.name for p in files] == ["m.tflite", "m_int8.tflite", "m_int8.onnx"]
    dtypes = {d["dtype"] for d in Interpreter(model_path=str(files[1])).get_tensor_details()}
    assert np.int8 in dtypes and files[1].stat().st_size < 0.6 * files[0].stat().st_size
    images = uint8_images(3, seed=4)
    folder = tmp_path / "imgs"
    folder.mkdir()
    from PIL import Image

    for i, im in enumerate(images):
        Image.fromarray(im).save(folder / f"{i}.png")
    for path in files[:2]:
        rows, problems = predict(None, [folder], model=path, tta=True)
        assert not problems and [r["decision"] for r in rows] == ["balanced"] * 3
        answer = PortablePredictor(path).decide(images, tta=True)
        assert [r["prediction"] for r in rows] == [CLASS_NAMES[k] for k in answer.classes]
    float_logits = PortablePredictor(files[0]).logits(images)
    np.testing.assert_allclose(float_logits, _logits(model, images), rtol=2e-3, atol=1e-2)  # rounding, amplified
    assert pathlib.Path(f"{files[1]}.ood.npz").is_file()


@pytest.mark.real_data
def test_litert_int8_keeps_the_features_of_real_images(real_data_dir, imagenet_backbone_pth, tmp_path):
    """The int8 LiteRT file of a caco model with torchvision's ImageNet backbone, calibrated on 32 real lesion
    images, against its float file on 64 others: the pooled features point the same way (the ONNX int8
    test's bound, tests/test_deploy.py). Measured here: every activation in int8 with shared squeeze MLPs,
    median cosine 0.41 (minimum 0.11); with the stem and its reader in float32 and the MLPs unshared, 0.96
    (minimum 0.80)."""
    import json

    size = (64, 64)
    images = real_images(real_data_dir, 96, size)
    model = imagenet_caco(imagenet_backbone_pth)
    run = artifact.describe_run(tmp_path, class_names=CLASS_NAMES, image_size=size)
    files = deploy.export_models(model, run, tflite=tmp_path / "m.tflite", calibration=deploy.normalise(images[:32]))
    cosine = pooled_cosine(files[0], files[1], images[32:])
    assert np.median(cosine) > 0.85, np.median(cosine)
    quantization = json.loads(artifact.metadata_path(files[1]).read_text())["quantization"]
    assert quantization["float32_units"] == ["ref.features.0", "ref.features.1.block.0"]
    assert files[1].stat().st_size < 0.4 * files[0].stat().st_size
