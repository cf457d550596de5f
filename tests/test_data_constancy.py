"""Colour constancy (data.color_constancy): the NumPy, JAX and PyTorch versions against the formula written
out here, and the option followed from a run's config into every step, the Predictor and an exported
model's graph (with the field-of-view crop in the portable predictor's decoding)."""

from __future__ import annotations

import io
import pathlib
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from caco_jax.data import augment, constancy
from caco_jax.data.classes import CLASS_NAMES, IMAGENET_MEAN, IMAGENET_STD
from caco_jax.data.constancy import OFF, ColorConstancy
from caco_jax.models import create_model, model_from_config
from caco_jax.training import parallel
from caco_jax.training.steps import ModelDef, build_steps

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from test_data_fov import vignetted

SOG = ColorConstancy("shades_of_gray", 6.0)


def reference(image: np.ndarray, p: float) -> np.ndarray:
    """Shades of Gray of one float image [H, W, 3] in [0, 1], channel by channel in float64."""
    out = np.empty(image.shape, np.float64)
    e = [
        float(np.power(np.power(image[..., c].astype(np.float64), p).sum() / image[..., c].size, 1 / p))
        for c in range(3)
    ]
    grey = sum(e) / 3
    for c in range(3):
        out[..., c] = np.minimum(1.0, image[..., c] * grey / e[c]) if e[c] > 0 else 0.0
    return out


def tinted_images(n: int = 6, size: int = 10) -> np.ndarray:
    """Tinted images; from 5 on, the 4th with a black channel (no illuminant estimate), the 5th all black."""
    rng = np.random.default_rng(0)
    x = rng.random((n, size, size, 3)) * rng.uniform(0.3, 1.0, (n, 1, 1, 3))
    if n >= 5:
        x[3, ..., 2] = 0.0
        x[4] = 0.0
    return x.astype(np.float32)


@pytest.mark.parametrize("p", [1.0, 6.0])
def test_numpy_and_jax_versions_are_the_formula(p):
    x = tinted_images()
    want = np.stack([reference(image, p) for image in x])
    np.testing.assert_allclose(constancy.shades_of_gray(x, p), want, atol=1e-6)
    got = np.asarray(jax.jit(augment.shades_of_gray, static_argnums=1)(x, p))
    np.testing.assert_allclose(got, want, atol=2e-6)
    assert np.all(np.isfinite(got)) and np.all(got[4] == 0) and np.all(got[3, ..., 2] == 0)
    # the illuminant becomes neutral: a second pass changes (almost) nothing where nothing clipped (and no
    # channel is black: its estimate of 0 lowers the grey level the others are brought to)
    neutral = (want.max(axis=(1, 2, 3)) < 1) & (x.max(axis=(1, 2)) > 0).all(axis=-1)
    assert neutral.sum() >= 2
    np.testing.assert_allclose(constancy.shades_of_gray(want[neutral], p), want[neutral], atol=1e-5)


def test_torch_version_is_the_formula():
    torch = pytest.importorskip("torch")
    from caco_jax.interop.deployable import shades_of_gray

    x = tinted_images()
    got = shades_of_gray(torch.from_numpy(x).permute(0, 3, 1, 2), 6.0).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(got, np.stack([reference(image, 6.0) for image in x]), atol=2e-6)


def test_preprocess_is_normalize_when_off_and_the_formula_when_on():
    images = (tinted_images() * 255).astype(np.uint8)
    run = jax.jit(augment.preprocess, static_argnums=1)
    np.testing.assert_array_equal(np.asarray(run(images, OFF)), np.asarray(jax.jit(augment.normalize)(images)))
    want = (np.stack([reference(x / 255.0, 6.0) for x in images]) - IMAGENET_MEAN) / IMAGENET_STD
    np.testing.assert_allclose(np.asarray(run(images, SOG)), want, atol=1e-5)


def test_the_option_is_checked_and_read_from_old_configs():
    with pytest.raises(ValueError, match="color_constancy must be one of"):
        ColorConstancy("grey_world")
    with pytest.raises(ValueError, match=">= 1"):
        ColorConstancy("shades_of_gray", 0.5)
    assert ColorConstancy.from_config({}) == OFF and not OFF.enabled
    assert ColorConstancy.from_config({"color_constancy": "shades_of_gray", "color_constancy_p": 4}).p == 4.0
    assert SOG.describe("in the graph") == {"method": "shades_of_gray", "p": 6.0, "where": "in the graph"}
    assert OFF.describe("in the graph") is None


def test_every_step_applies_the_runs_colour_constancy():
    model = create_model(arch="tiny", num_classes=4, seed=3)
    model_def = ModelDef(model)
    mesh = parallel.make_mesh(1)
    steps = build_steps(model_def, mesh, loss=lambda logits, labels, weights, mask=None: logits.mean(), color=SOG)
    # An initialised head is nearly uniform: larger linear weights make the answers differ (as test_steps.py).
    sharper = jax.tree.map(lambda p: p * 30 if p.ndim == 2 else p, model_def.init_params)
    params, stats = jax.device_put((sharper, model_def.init_batch_stats), parallel.replicated(mesh))
    images = (tinted_images(4, 16) * 255).astype(np.uint8)
    images[:, :, :, 0] = np.maximum(images[:, :, :, 0], 200)  # a strong red cast to remove
    x = ((np.stack([reference(im / 255.0, 6.0) for im in images]) - IMAGENET_MEAN) / IMAGENET_STD).astype(np.float32)
    want = np.asarray(jax.jit(lambda x: model_def.apply(params, stats, x, train=False)[0])(x))
    t = np.float32(1.0)
    np.testing.assert_allclose(np.asarray(steps.predict(params, stats, images, t)), jax.nn.softmax(want), atol=1e-5)
    batch = {"image": images, "label": np.zeros(4, np.int32), "mask": np.ones(4, bool)}
    np.testing.assert_allclose(
        np.asarray(steps.eval(params, stats, batch, np.ones(4, np.float32))["logits"]), want, atol=1e-4
    )
    np.testing.assert_allclose(
        np.asarray(steps.eval_tta(params, stats, batch, np.ones(4))["logits"])[:, 0], want, atol=1e-4
    )
    np.testing.assert_allclose(np.asarray(steps.embed(params, stats, batch)["logits"]), want, atol=1e-4)
    cam = steps.cam(params, stats, images, np.full(4, -1, np.int32), t)
    np.testing.assert_allclose(np.asarray(cam["probs"]), jax.nn.softmax(want), atol=1e-5)
    plain = np.asarray(build_steps(model_def, mesh).predict(params, stats, images, t))
    assert np.abs(plain - jax.nn.softmax(want)).max() > 1e-3  # it does change the answer


def _png(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, "PNG")
    return out.getvalue()


def test_the_predictor_reads_both_options_from_the_run(tmp_path):
    from caco_jax.configs import demo
    from caco_jax.data import fov
    from caco_jax.runs.weights import save_weights
    from caco_jax.runs.workspace import save_config
    from caco_jax.serving.predictor import Predictor

    config = demo.get_config()
    config.model.arch, config.data.image_size = "tiny", 32
    config.data.color_constancy, config.data.color_constancy_p, config.data.fov_crop = "shades_of_gray", 6.0, True
    save_config(config, tmp_path)
    model = model_from_config(config.model, num_classes=len(CLASS_NAMES), seed=3)
    save_weights(model, tmp_path / "best", metadata={"class_names": list(CLASS_NAMES)})
    predictor = Predictor(tmp_path, batch_size=2)
    assert predictor.color == SOG and predictor.fov_crop
    image = vignetted(150, 200, 76.0, 99.0, 70.0, edge=1.5)
    top, bottom, left, right = fov.crop_box(image)
    want = np.asarray(Image.fromarray(image[top:bottom, left:right]).resize((32, 32), Image.Resampling.BILINEAR))
    prepared = predictor.prepare(_png(image))
    np.testing.assert_array_equal(prepared, want)
    model_def = ModelDef(model)
    x = ((reference(prepared / 255.0, 6.0) - IMAGENET_MEAN) / IMAGENET_STD).astype(np.float32)[None]
    logits = np.asarray(
        jax.jit(lambda x: model_def.apply(model_def.init_params, model_def.init_batch_stats, x, train=False)[0])(x)
    )
    np.testing.assert_allclose(predictor.probabilities(prepared[None]), jax.nn.softmax(logits), atol=1e-5)


def test_an_export_computes_colour_constancy_in_its_graph_and_crops_when_decoding(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    import whole_model as wm
    from caco_jax.interop import artifact, deploy
    from caco_jax.serving.portable import PortablePredictor

    model = wm.case("caco")["model"]
    run = artifact.describe_run(tmp_path, class_names=CLASS_NAMES, image_size=(64, 64), color=SOG, fov_crop=True)
    assert run["color_constancy"] == {"method": "shades_of_gray", "p": 6.0, "where": "in the graph"}
    assert run["fov_crop"]["enabled"] and "decoding" in run["fov_crop"]["where"]
    (path,) = deploy.export_models(model, run, onnx=tmp_path / "m.onnx", log=lambda _: None)
    portable = PortablePredictor(path)
    assert portable.color == SOG and portable.fov_crop
    image = vignetted(150, 200, 76.0, 99.0, 70.0, edge=1.5)
    prepared = portable.prepare(_png(image))
    from caco_jax.data import fov

    top, bottom, left, right = fov.crop_box(image)
    want = np.asarray(Image.fromarray(image[top:bottom, left:right]).resize((64, 64), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(prepared, want)
    images = np.concatenate([prepared[None], (tinted_images(2, 64) * 255).astype(np.uint8)])
    model_def = ModelDef(model)
    x = jax.jit(augment.preprocess, static_argnums=1)(images, SOG)
    logits = np.asarray(
        jax.jit(lambda x: model_def.apply(model_def.init_params, model_def.init_batch_stats, x, train=False)[0])(x)
    )
    np.testing.assert_allclose(portable.logits(images), logits, rtol=2e-3, atol=1e-2)
    plain = np.asarray(
        jax.jit(lambda x: model_def.apply(model_def.init_params, model_def.init_batch_stats, x, train=False)[0])(
            augment.normalize(images)
        )
    )
    assert np.abs(plain - logits).max() > 0.05  # without it the answer would differ


def test_the_config_checks_name_the_new_fields():
    from caco_jax.configs import demo
    from caco_jax.errors import ConfigError
    from caco_jax.training.checks import check_config

    config = demo.get_config()
    check_config(config)  # every new field's default passes
    config.data.color_constancy, config.data.color_constancy_p = "grey_world", 0.5
    config.data.augment.zoom_out = (0.5, 1.0)
    with pytest.raises(ConfigError) as err:
        check_config(config)
    for key in ("data.color_constancy='grey_world'", "data.color_constancy_p=0.5", "data.augment.*: zoom_out"):
        assert key in str(err.value)
