"""Grad-CAM (caco_jax.evaluation.saliency, the cam step of build_steps) and the model's last-conv method.

The localisation test trains the tiny model on images whose only class evidence is a disc
at a random place, then checks that the heat map sits on the disc.
"""

from __future__ import annotations

import pathlib
import sys

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from caco_jax.data.augment import AugmentConfig
from caco_jax.evaluation import saliency
from caco_jax.models import ARCHS, create_model
from caco_jax.training import parallel
from caco_jax.training.losses import make_loss
from caco_jax.training.steps import ModelDef, build_steps, init_state

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from caco_jax.configs import default

SIZE = 64  # the tiny arch has stride 8: an 8 x 8 map
RADIUS = 7
# Class 0: plain skin; class 1: a brown disc; class 2: a red disc. With a lesion-free class,
# neither lesion class can be told by the absence of the other: the evidence is the disc.
COLOURS = {1: (70, 40, 30), 2: (200, 40, 70)}


def disc_images(n: int, seed: int, *, mirrored: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(uint8 images [n, 64, 64, 3], labels [n], disc centres [n, 2]): noisy skin, one disc unless class 0.

    ``mirrored``: the same images with each disc moved to the point reflection of its centre."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    labels = rng.integers(0, 3, n)
    centres = rng.uniform(RADIUS + 3, SIZE - RADIUS - 3, (n, 2))
    if mirrored:
        centres = SIZE - 1 - centres
    skin = np.asarray([215, 170, 140], np.float32)
    images = skin + rng.normal(0, 12, (n, SIZE, SIZE, 3)).astype(np.float32)
    for i in np.flatnonzero(labels > 0):
        inside = np.hypot(yy - centres[i, 0], xx - centres[i, 1]) <= RADIUS
        images[i][inside] = np.asarray(COLOURS[labels[i]], np.float32) + rng.normal(0, 12, (int(inside.sum()), 3))
    return np.clip(images, 0, 255).astype(np.uint8), labels.astype(np.int32), centres


@pytest.fixture(scope="module")
def mesh():
    return parallel.make_mesh(1)


@pytest.fixture(scope="module")
def trained_on_discs(mesh):
    """The tiny CaCo model trained (CE, Adam, 150 steps) on disc images: (model_def, steps, params, stats)."""
    model = create_model(arch="tiny", num_classes=3, dropout=0.0, bn_momentum=0.2)
    model_def = ModelDef(model)
    cfg = default.get_config().loss
    cfg.name = "ce"
    tx = optax.adam(3e-3)
    steps = build_steps(
        model_def, mesh, tx=tx, loss=make_loss(cfg, None, num_classes=3), aug=AugmentConfig.none(), image_size=SIZE
    )
    images, labels, _ = disc_images(1024, seed=0)
    state = jax.device_put(init_state(model_def, tx, 0), parallel.replicated(mesh))
    weights = np.ones(3, np.float32)
    rng = np.random.default_rng(1)
    for _ in range(150):
        idx = rng.choice(len(images), 32, replace=False)
        state, _ = steps.train(state, parallel.to_global({"image": images[idx], "label": labels[idx]}, mesh), weights)
    return model_def, steps, state.params, state.batch_stats


def test_feature_map_is_what_the_head_pools():
    model = create_model(arch="tiny", num_classes=3)
    model.eval()
    x = np.random.default_rng(0).normal(size=(2, 40, 48, 3)).astype(np.float32)

    @nnx.jit
    def parts(m, x):
        fmap = m.feature_map(x)
        return fmap, m.features(x), m.classify(m.features(x)), m(x)

    fmap, feats, logits, direct = parts(model, x)
    assert fmap.shape == (2, 5, 6, ARCHS["tiny"].last_conv) and fmap.dtype == np.float32
    np.testing.assert_allclose(np.asarray(feats), np.asarray(fmap).mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(logits), np.asarray(direct))


def test_cam_has_the_input_shape_range_and_explains_the_asked_class(trained_on_discs, mesh):
    model_def, steps, params, stats = trained_on_discs
    images, _, _ = disc_images(64, seed=5)  # the batch size of the next test: one compilation
    predicted = steps.cam(params, stats, images, np.full(64, -1, np.int32), np.float32(1.0))
    cam = np.asarray(predicted["cam"])
    assert cam.shape == (64, SIZE, SIZE) and np.isfinite(cam).all()
    assert np.allclose(cam.min(axis=(1, 2)), 0.0) and np.allclose(cam.max(axis=(1, 2)), 1.0, atol=1e-6)
    probs = np.asarray(predicted["probs"])
    np.testing.assert_array_equal(np.asarray(predicted["class"]), probs.argmax(axis=1))
    np.testing.assert_allclose(probs, np.asarray(steps.predict(params, stats, images, np.float32(1.0))), atol=1e-5)
    other = ((probs.argmax(axis=1) + 1) % 3).astype(np.int32)
    asked = steps.cam(params, stats, images, other, np.float32(1.0))
    np.testing.assert_array_equal(np.asarray(asked["class"]), other)
    assert not np.allclose(np.asarray(asked["cam"]), cam)  # another class, another map
    sharper = steps.cam(params, stats, images, np.full(64, -1, np.int32), np.float32(0.5))
    np.testing.assert_allclose(np.asarray(sharper["cam"]), cam, atol=1e-5)  # T rescales the logits, not the map


def _centre_of_mass(cam: np.ndarray) -> np.ndarray:
    yy, xx = np.mgrid[0 : cam.shape[1], 0 : cam.shape[2]]
    w = cam / cam.sum(axis=(1, 2), keepdims=True)
    return np.stack([(w * yy).sum(axis=(1, 2)), (w * xx).sum(axis=(1, 2))], axis=1)


def test_cam_follows_the_lesion(trained_on_discs):
    """The class evidence is the disc, anywhere in the image: the map must go where it goes."""
    _, steps, params, stats = trained_on_discs
    images, labels, centres = disc_images(64, seed=7)
    twins, _, twin_centres = disc_images(64, seed=7, mirrored=True)  # same skin, disc elsewhere
    out = steps.cam(params, stats, images, np.full(64, -1, np.int32), np.float32(1.0))
    twin_cam = np.asarray(steps.cam(params, stats, twins, np.full(64, -1, np.int32), np.float32(1.0))["cam"])
    probs, cam = np.asarray(out["probs"]), np.asarray(out["cam"])
    assert (probs.argmax(axis=1) == labels).mean() >= 0.9  # the model learned the task
    lesion = labels > 0
    com, twin_com = _centre_of_mass(cam)[lesion], _centre_of_mass(twin_cam)[lesion]
    to_disc = np.hypot(*(com - centres[lesion]).T)
    blind = np.hypot(*((SIZE - 1) / 2 - centres[lesion]).T)  # where a map blind to the disc would centre
    # Measured: median distance of the map's centre of mass to the disc 7.2 px, of the image centre 18 px;
    # the centre of mass is nearer its own disc than the twin's in 46/46 lesion images, both ways.
    assert np.median(to_disc) < 0.6 * np.median(blind), (np.median(to_disc), np.median(blind))
    own = np.hypot(*(com - centres[lesion]).T) < np.hypot(*(com - twin_centres[lesion]).T)
    twin_own = np.hypot(*(twin_com - twin_centres[lesion]).T) < np.hypot(*(twin_com - centres[lesion]).T)
    assert own.mean() >= 0.9 and twin_own.mean() >= 0.9, (own.mean(), twin_own.mean())


def test_overlay_fits_any_image_size():
    image = np.full((30, 50, 3), 128, np.uint8)
    cam = np.zeros((8, 8), np.float32)
    cam[:4, :4] = 1.0
    out = saliency.overlay(image, cam)
    assert out.shape == (30, 50, 3) and out.dtype == np.uint8
    assert np.abs(out[0, 0].astype(int) - 128).sum() > 50  # hot corner coloured
    assert np.abs(out[-1, -1].astype(int) - 128).sum() == 0  # cold corner untouched


def test_select_gallery_picks_most_and_least_confident_correct_and_wrong():
    probs = np.asarray([[0.9, 0.1], [0.6, 0.4], [0.7, 0.3], [0.2, 0.8], [0.45, 0.55], [0.3, 0.7]])
    labels = np.asarray([0, 0, 0, 0, 0, 1])
    rows = saliency.select_gallery(probs, labels)
    assert rows[0] == [0, 1, 3, 4]  # correct: 0.9, 0.7, 0.6 -> most 0, least 1; wrong: 0.8 (3), 0.55 (4)
    assert rows[1] == [5, None, None, None]  # one correct example: shown once
    assert saliency.gallery_indices(rows) == [0, 1, 3, 4, 5]
