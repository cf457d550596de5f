"""Accelerator-side augmentation: shapes, ranges, exact geometric invariants, determinism."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from caco_jax.data import augment
from caco_jax.data.augment import AugmentConfig
from caco_jax.data.classes import IMAGENET_MEAN, IMAGENET_STD

MEAN, STD = np.asarray(IMAGENET_MEAN), np.asarray(IMAGENET_STD)
LO, HI = (0 - MEAN) / STD, (1 - MEAN) / STD  # normalised range of [0, 1]
NO_COLOUR = dict(brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0)
GEOMETRY_ONLY = dict(scale=(1.0, 1.0), ratio=(1.0, 1.0), **NO_COLOUR)

_augment = jax.jit(augment.augment_batch, static_argnames=("out_size", "cfg"))


def _images(n=8, h=24, w=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def _denorm(x):
    return np.asarray(x) * STD + MEAN


def test_shapes_dtype_range_and_determinism():
    x = _images()
    cfg = AugmentConfig()
    out = _augment(jax.random.key(0), x, out_size=16, cfg=cfg)
    assert out.shape == (8, 16, 16, 3) and out.dtype == jnp.float32
    assert np.all(np.asarray(out) >= LO - 1e-5) and np.all(np.asarray(out) <= HI + 1e-5)
    again = _augment(jax.random.key(0), x, out_size=16, cfg=cfg)
    other = _augment(jax.random.key(1), x, out_size=16, cfg=cfg)
    np.testing.assert_array_equal(out, again)
    assert not np.allclose(out, other)
    # examples get independent draws: identical inputs come out differently
    same = _augment(jax.random.key(0), np.repeat(x[:1], 8, 0), out_size=16, cfg=cfg)
    assert not np.allclose(same[0], same[1])


def test_normalize_matches_imagenet_statistics():
    x = np.array([[[[0, 0, 0], [255, 255, 255]]]], np.uint8)
    out = np.asarray(augment.normalize(x))
    np.testing.assert_allclose(out[0, 0, 0], LO, rtol=1e-6)
    np.testing.assert_allclose(out[0, 0, 1], HI, rtol=1e-6)
    assert out.dtype == np.float32


def test_no_augmentation_is_identity_and_keeps_batch_order():
    x = _images(h=16, w=16)
    out = _augment(jax.random.key(3), x, out_size=16, cfg=AugmentConfig.none())
    np.testing.assert_allclose(out, augment.normalize(x), atol=1e-5)


def test_full_crop_of_non_square_image_is_the_eval_resize():
    x = _images(h=24, w=32)
    out = _augment(jax.random.key(0), x, out_size=16, cfg=AugmentConfig.none())
    expected = jax.image.resize(x.astype(np.float32) / 255, (8, 16, 16, 3), "linear", antialias=True)
    np.testing.assert_allclose(_denorm(out), expected, atol=1e-4)


@pytest.mark.parametrize("flip, axis", [("hflip", 2), ("vflip", 1)])
def test_flips_are_exact_and_random(flip, axis):
    x = _images(n=16, h=16, w=16)
    cfg = AugmentConfig(hflip=False, vflip=False, rot90=False, **GEOMETRY_ONLY)
    cfg = dataclasses.replace(cfg, **{flip: True})
    out = np.asarray(_augment(jax.random.key(5), x, out_size=16, cfg=cfg))
    flipped = [np.allclose(o, augment.normalize(np.flip(i, axis - 1)), atol=1e-5) for i, o in zip(x, out, strict=True)]
    kept = [np.allclose(o, augment.normalize(i), atol=1e-5) for i, o in zip(x, out, strict=True)]
    assert all(f != k for f, k in zip(flipped, kept, strict=True))  # each image exactly one of the two
    assert 2 <= sum(flipped) <= 14  # about half


def test_rotations_are_exact_multiples_of_90_degrees():
    x = _images(n=16, h=12, w=12)
    cfg = AugmentConfig(hflip=False, vflip=False, rot90=True, **GEOMETRY_ONLY)
    out = np.asarray(_augment(jax.random.key(7), x, out_size=12, cfg=cfg))
    seen = set()
    for image, result in zip(x, out, strict=True):
        matches = [k for k in range(4) if np.allclose(result, augment.normalize(np.rot90(image, k)), atol=1e-5)]
        assert len(matches) == 1
        seen.add(matches[0])
    assert len(seen) >= 3  # the rotation really is random


def test_flips_and_rotations_stay_in_the_dihedral_group():
    x = _images(n=16, h=10, w=10)
    cfg = AugmentConfig(rot90=True, **GEOMETRY_ONLY)
    out = np.asarray(_augment(jax.random.key(2), x, out_size=10, cfg=cfg))
    for image, result in zip(x, out, strict=True):
        variants = [np.rot90(f, k) for f in (image, image[:, ::-1]) for k in range(4)]
        assert any(np.allclose(result, augment.normalize(v), atol=1e-5) for v in variants)


def test_crops_stay_inside_the_image():
    """A constant image stays constant under any crop: no zero padding leaks in."""
    x = np.full((8, 20, 30, 3), 200, np.uint8)
    cfg = AugmentConfig(scale=(0.05, 1.0), ratio=(0.3, 3.0), **NO_COLOUR)
    out = _augment(jax.random.key(0), x, out_size=16, cfg=cfg)
    np.testing.assert_allclose(_denorm(out), 200 / 255, atol=1e-4)


def test_random_crops_zoom_in():
    """Small crops of a smooth ramp cover a narrower range of values than the whole image."""
    ramp = np.broadcast_to(np.linspace(0, 255, 64).astype(np.uint8)[None, :, None], (64, 64, 3))
    x = np.repeat(ramp[None], 8, 0)
    cfg = AugmentConfig(hflip=False, vflip=False, rot90=False, scale=(0.1, 0.1), ratio=(1.0, 1.0), **NO_COLOUR)
    out = _denorm(_augment(jax.random.key(0), x, out_size=16, cfg=cfg))
    spans = out[..., 0].max(axis=(1, 2)) - out[..., 0].min(axis=(1, 2))
    assert np.all(spans < 0.45) and np.all(spans > 0.15)  # crop width ~ sqrt(0.1) of the image


def test_colour_jitter_keeps_grey_grey_and_bounds_brightness():
    grey = np.full((8, 8, 8, 3), 100, np.uint8)
    cfg = AugmentConfig(
        hflip=False,
        vflip=False,
        rot90=False,
        scale=(1.0, 1.0),
        ratio=(1.0, 1.0),
        brightness=0.3,
        contrast=0.3,
        saturation=0.5,
        hue=0.5,
    )
    out = _denorm(_augment(jax.random.key(0), grey, out_size=8, cfg=cfg))
    # contrast, saturation and hue leave a flat grey image alone; brightness scales it
    np.testing.assert_allclose(out, out[:, :1, :1, :1] * np.ones_like(out), atol=2e-3)
    factors = out[:, 0, 0, 0] / (100 / 255)
    assert np.all(factors >= 0.7 - 1e-3) and np.all(factors <= 1.3 + 1e-3)
    assert factors.std() > 0.02


def test_colour_jitter_changes_colour_images():
    x = _images(h=8, w=8)
    cfg = AugmentConfig(
        hflip=False,
        vflip=False,
        rot90=False,
        scale=(1.0, 1.0),
        ratio=(1.0, 1.0),
        brightness=0.0,
        contrast=0.0,
        saturation=0.0,
        hue=0.1,
    )
    out = np.asarray(_augment(jax.random.key(0), x, out_size=8, cfg=cfg))
    assert not np.allclose(out, augment.normalize(x), atol=1e-2)
    # a hue rotation keeps the luma (Y of YIQ) where nothing clips
    luma = np.asarray([0.299, 0.587, 0.114])
    before, after = (x / 255) @ luma, _denorm(out) @ luma
    unclipped = (_denorm(out).min(-1) > 0.01) & (_denorm(out).max(-1) < 0.99)
    np.testing.assert_allclose(after[unclipped], before[unclipped], atol=1e-3)


def test_from_config():
    cfg = ml_collections.ConfigDict({"hflip": False, "scale": [0.5, 1.0], "hue": 0.0})
    made = AugmentConfig.from_config(cfg)
    assert made.hflip is False and made.scale == (0.5, 1.0) and made.vflip == AugmentConfig().vflip
    hash(made)  # static jit argument
    with pytest.raises(ValueError, match=r"unknown augmentation key\(s\) \['rotate', 'zoom'\]"):
        AugmentConfig.from_config({"zoom": 1.0, "rotate": True, "hflip": True})
    with pytest.raises(ValueError, match="on or off"):
        AugmentConfig(hflip=0.5)
    with pytest.raises(ValueError, match="scale"):
        AugmentConfig(scale=(0.0, 1.0))


def test_the_config_file_spells_out_every_augmentation_field_with_the_library_defaults():
    import pathlib
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
    from caco_jax.configs import default

    section = default.get_config().data.augment
    assert set(section) == {f.name for f in dataclasses.fields(AugmentConfig)}
    assert AugmentConfig.from_config(section) == AugmentConfig()


def test_augmentation_fields_can_be_overridden_from_the_command_line(tmp_path):
    import pathlib
    import subprocess
    import sys

    root = pathlib.Path(__file__).resolve().parents[1]
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import sys\nsys.path.insert(0, sys.argv.pop(1))\n"
        "from absl import app\nfrom ml_collections import config_flags\n"
        "C = config_flags.DEFINE_config_file('config', None, '', lock_config=True)\n"
        "app.run(lambda _: print(C.value.data.augment.hflip, C.value.data.augment.scale))\n"
    )

    def run(*a):
        command = [sys.executable, str(probe), str(root), "--config", str(root / "configs" / "default.py"), *a]
        return subprocess.run(command, capture_output=True, text=True)

    ok = run("--config.data.augment.hflip=False", "--config.data.augment.scale=(0.5,1.0)")
    assert ok.returncode == 0 and ok.stdout.split() == ["False", "(0.5,", "1.0)"], ok.stderr[-500:]
    bad = run("--config.data.augment.zoom=2")
    assert bad.returncode != 0 and "zoom" in bad.stderr


def test_no_augmentation_at_the_output_size_is_normalisation_alone():
    """AugmentConfig.none() on images already at the output size: exactly ``normalize`` (the shortcut the
    benchmark's --no_augment row and evaluation-like inputs take), and the same as resampling would give."""
    images = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3)).astype(np.uint8)
    out = augment.augment_batch(jax.random.key(0), images, out_size=16, cfg=AugmentConfig.none())
    np.testing.assert_array_equal(np.asarray(out), np.asarray(augment.normalize(images)))
    crop = jax.vmap(lambda x: augment.augment_image(jax.random.key(1), x, out_size=16, cfg=AugmentConfig.none()))(
        images
    )
    np.testing.assert_allclose(np.asarray(crop), images / 255.0, atol=1e-5)
