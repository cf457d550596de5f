"""Acquisition augmentation (caco_jax.data.acquisition, caco_jax.data.recompress): each operation against an
independent computation (NumPy, SciPy, Pillow written here), the order of the draws, the options'
validation, and the default configuration computing exactly what it did before they existed."""

from __future__ import annotations

import dataclasses
import io
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from caco_jax.data import acquisition, augment
from caco_jax.data.augment import AugmentConfig
from caco_jax.data.classes import IMAGENET_MEAN, IMAGENET_STD
from caco_jax.data.recompress import Recompression, round_trip

MEAN, STD = np.asarray(IMAGENET_MEAN), np.asarray(IMAGENET_STD)
NONE = AugmentConfig.none()  # no crop, flip or jitter: with out_size = the input's size, the identity


def _images(n=8, size=12, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _denorm(x):
    return np.asarray(x, np.float64) * STD + MEAN


@pytest.fixture(scope="session")
def run_augment():
    """augment_batch jitted once for the whole session (each cfg compiles once)."""
    return jax.jit(augment.augment_batch, static_argnames=("out_size", "cfg", "color"))


def test_default_config_is_the_pre_existing_pipeline_bit_for_bit(run_augment):
    """With every new option off (whatever their other values) the output is bit for bit the composition
    the augmentation had before they existed: crop box, resample, rotate / flip, clip, jitter, normalise."""

    def before(key, image, out_size, cfg):
        k_crop, k_rot, k_h, k_v, k_jit = jax.random.split(key, 5)
        box = augment._crop_box(k_crop, image.shape[0], image.shape[1], cfg)
        x = augment._resized_crop(image.astype(jnp.float32) / 255.0, box, out_size, jax.lax.Precision.DEFAULT)
        k = jax.random.randint(k_rot, (), 0, 4)
        x = augment._rotate_flip(x, k, jax.random.bernoulli(k_h, 0.5), jax.random.bernoulli(k_v, 0.5))
        return augment._jitter(jnp.clip(x, 0.0, 1.0), k_jit, cfg)

    @jax.jit
    def old_batch(rng, images):
        keys = jax.random.split(rng, images.shape[0])
        out = jax.vmap(lambda k, x: before(k, x, 16, AugmentConfig()))(keys, images)
        return (out - augment._MEAN) / augment._STD

    x = _images(size=20)
    new = np.asarray(run_augment(jax.random.key(4), x, out_size=16, cfg=AugmentConfig()))
    np.testing.assert_array_equal(new, np.asarray(old_batch(jax.random.key(4), x)))
    off = AugmentConfig(blur_sigma=(2.0, 3.0), fov_radius=(0.3, 0.5), zoom_out=(1.5, 2.0), jpeg_quality=(5, 10))
    assert off.recompression is None and not off.acquisition_on_device
    np.testing.assert_array_equal(np.asarray(run_augment(jax.random.key(4), x, out_size=16, cfg=off)), new)


@pytest.mark.parametrize("sigma", [0.6, 1.7])
def test_blur_is_scipys_gaussian_filter(sigma):
    image = np.random.default_rng(1).random((14, 14, 3)).astype(np.float32)
    radius = 6
    blurred = np.asarray(jax.jit(acquisition.blur, static_argnames="radius")(image, jnp.float32(sigma), radius))
    want = ndimage.gaussian_filter1d(image.astype(np.float64), sigma, axis=0, mode="reflect", radius=radius)
    want = ndimage.gaussian_filter1d(want, sigma, axis=1, mode="reflect", radius=radius)
    np.testing.assert_allclose(blurred, want, atol=2e-6)


def test_random_blur_happens_with_its_probability_and_keeps_flat_images(run_augment):
    x = _images(n=32, size=12, seed=2)
    cfg = dataclasses.replace(NONE, blur_p=0.5, blur_sigma=(0.8, 1.2))
    out = _denorm(run_augment(jax.random.key(0), x, out_size=12, cfg=cfg))
    plain = np.isclose(out, x / 255.0, atol=1e-5).all(axis=(1, 2, 3))
    assert 8 <= plain.sum() <= 24  # about half are left alone
    for image, result in zip(x[~plain], out[~plain], strict=True):  # the others: some sigma of the range
        errors = [
            np.abs(result - ndimage.gaussian_filter(image / 255.0, (s, s, 0), mode="reflect", radius=(4, 4, 0))).max()
            for s in np.linspace(0.8, 1.2, 41)
        ]
        assert min(errors) < 2e-3
    flat = np.full((4, 12, 12, 3), 90, np.uint8)
    np.testing.assert_allclose(_denorm(run_augment(jax.random.key(1), flat, out_size=12, cfg=cfg)), 90 / 255, atol=1e-5)


def test_gamma_is_a_power_log_uniform_in_its_range(run_augment):
    x = _images(n=64, size=8, seed=3)
    x[:, 0, 0] = 128  # a known grey pixel reads the drawn exponent back
    cfg = dataclasses.replace(NONE, gamma=(0.5, 2.0))
    out = _denorm(run_augment(jax.random.key(2), x, out_size=8, cfg=cfg))
    g = np.log(out[:, 0, 0, 0]) / np.log(128 / 255)
    assert np.all(g >= 0.5 - 1e-4) and np.all(g <= 2.0 + 1e-4)
    assert 20 <= (g < 1).sum() <= 44  # log-uniform: as many below 1 as above
    want = (x / 255.0) ** g[:, None, None, None]
    np.testing.assert_allclose(out, want, atol=1e-4)


def test_channel_gains_are_per_channel_log_uniform(run_augment):
    x = _images(n=64, size=8, seed=4) // 4  # <= 63: no gain up to 4 clips
    x[:, 0, 0] = 60
    cfg = dataclasses.replace(NONE, channel_gain=1.0)
    out = _denorm(run_augment(jax.random.key(3), x, out_size=8, cfg=cfg))
    gains = out[:, 0, 0] / (60 / 255)  # [N, 3]
    assert np.all(gains >= 0.5 - 1e-4) and np.all(gains <= 2.0 + 1e-4)
    assert np.abs(np.log(gains)).std() > 0.1 and not np.allclose(gains[:, 0], gains[:, 1])
    assert 0.35 <= (gains < 1).mean() <= 0.65
    np.testing.assert_allclose(out, np.clip(x / 255.0 * gains[:, None, None, :], 0, 1), atol=1e-5)


def _reference_mask(size, cy, cx, radius, softness):
    """The soft-edged disc, written out in NumPy: 1 inside radius - width, 0 beyond radius, smoothstep between."""
    half = size / 2
    y = (np.arange(size) + 0.5 - half) / half - cy
    x = (np.arange(size) + 0.5 - half) / half - cx
    d = np.hypot(y[:, None], x[None, :])
    width = softness * radius
    if width == 0:
        return (d < radius).astype(np.float64)
    t = np.clip((radius - d) / width, 0, 1)
    return t * t * (3 - 2 * t)


@pytest.mark.parametrize("centre, radius, softness", [((0.0, 0.0), 1.0, 0.0), ((0.2, -0.1), 1.2, 0.3)])
def test_fov_mask_is_a_soft_edged_disc(centre, radius, softness):
    mask = jax.jit(acquisition.fov_mask, static_argnums=0)(20, jnp.asarray(centre), jnp.float32(radius), softness)
    want = _reference_mask(20, *centre, radius, softness)
    np.testing.assert_allclose(np.asarray(mask)[..., 0], want, atol=1e-5)
    if softness == 0:
        assert abs(want.mean() - math.pi / 4) < 0.02  # a disc touching the sides


def test_random_fov_mask_darkens_the_outside_with_its_probability(run_augment):
    white = np.full((32, 16, 16, 3), 255, np.uint8)
    cfg = dataclasses.replace(NONE, fov_p=0.5, fov_radius=(0.9, 1.1), fov_softness=(0.0, 0.2), fov_shift=0.1)
    out = _denorm(run_augment(jax.random.key(5), white, out_size=16, cfg=cfg))
    masked = out.min(axis=(1, 2, 3)) < 0.5
    assert 8 <= masked.sum() <= 24
    np.testing.assert_allclose(out[~masked], 1.0, atol=1e-5)
    corners = out[masked][:, [0, 0, -1, -1], [0, -1, 0, -1]]
    assert np.all(corners < 1e-3)  # black outside
    centre = out[masked][:, 6:10, 6:10]
    np.testing.assert_allclose(centre, 1.0, atol=1e-5)  # untouched inside
    area = out[masked][..., 0].mean(axis=(1, 2))
    assert np.all(area > 0.45) and np.all(area < 0.95)  # pi r^2 / 4 for r in [0.9, 1.1], minus the soft edge


def test_zoom_out_frame_mirrors_the_image():
    """The zoom-out frame resampled at scale 1 is the image mirrored outwards (NumPy's 'symmetric' pad),
    and at scale 1/2 the antialiased triangle filter of that frame."""
    image = np.random.default_rng(6).random((8, 8, 3)).astype(np.float32)

    @jax.jit
    def frame(box, out_size_marker):
        padded, (pad_y, pad_x) = acquisition.mirror_pad(jnp.asarray(image), 2.0)
        box = box + jnp.asarray([pad_y, pad_x, 0, 0], jnp.float32)
        return augment._resized_crop(padded, box, out_size_marker.shape[0], jax.lax.Precision.HIGHEST)

    at_one = np.asarray(frame(jnp.asarray([-3.0, -5.0, 16.0, 16.0]), jnp.zeros(16)))
    np.testing.assert_allclose(at_one, np.pad(image, ((3, 5), (5, 3), (0, 0)), mode="symmetric"), atol=1e-5)
    half = np.asarray(frame(jnp.asarray([-4.0, -4.0, 16.0, 16.0]), jnp.zeros(8)))
    # the 16 x 16 frame (image in its middle) and the mirrored pixel around it that the filter reaches
    frame_and_rim = np.pad(image, ((5, 5), (5, 5), (0, 0)), mode="symmetric")
    # each output pixel: the input pixels at distance 0.5 weigh 0.75, at 1.5 weigh 0.25 (sum 2 per axis)
    weights = np.outer([0.25, 0.75, 0.75, 0.25], [0.25, 0.75, 0.75, 0.25]) / 4
    want = np.zeros((8, 8, 3))
    for i in range(8):
        for j in range(8):
            want[i, j] = np.einsum("ab,abc->c", weights, frame_and_rim[2 * i : 2 * i + 4, 2 * j : 2 * j + 4])
    np.testing.assert_allclose(half, want, atol=1e-5)


def test_zoom_out_draws_the_whole_image_inside_the_frame(run_augment):
    boxes = jax.jit(jax.vmap(lambda k: acquisition.zoom_box(k, 30, 40, AugmentConfig(zoom_out=(1.2, 1.8)))))(
        jax.random.split(jax.random.key(0), 200)
    )
    y0, x0, h, w = np.asarray(boxes).T
    z = h / 30
    np.testing.assert_allclose(w / 40, z, rtol=1e-6)  # the image's own aspect
    assert z.min() >= 1.2 - 1e-6 and z.max() <= 1.8 + 1e-6 and z.std() > 0.1
    assert np.all(y0 <= 0) and np.all(y0 + h >= 30 - 1e-4) and np.all(x0 <= 0) and np.all(x0 + w >= 40 - 1e-4)
    # end to end: a flat image stays flat (the border is the image, never black), a ramp shrinks
    cfg = dataclasses.replace(NONE, zoom_p=1.0, zoom_out=(2.0, 2.0))
    flat = np.full((4, 10, 10, 3), 77, np.uint8)
    np.testing.assert_allclose(_denorm(run_augment(jax.random.key(1), flat, out_size=10, cfg=cfg)), 77 / 255, atol=1e-5)


def test_colour_constancy_comes_after_the_mask_and_before_the_jitter(run_augment):
    """A tinted image with a field-of-view mask: the outside stays black, the inside is neutral grey."""
    tinted = np.zeros((4, 16, 16, 3), np.uint8)
    tinted[...] = (200, 120, 60)
    cfg = dataclasses.replace(NONE, fov_p=1.0, fov_radius=(0.8, 0.8), fov_softness=(0.0, 0.0))
    from caco_jax.data.constancy import ColorConstancy

    out = _denorm(run_augment(jax.random.key(0), tinted, out_size=16, cfg=cfg, color=ColorConstancy("shades_of_gray")))
    inside = out[:, 8, 8]
    np.testing.assert_allclose(inside, np.broadcast_to(inside.mean(-1, keepdims=True), inside.shape), atol=1e-5)
    np.testing.assert_allclose(inside[:, 0], (200 + 120 + 60) / 3 / 255, atol=1e-4)
    np.testing.assert_allclose(out[:, 0, 0], 0.0, atol=1e-6)


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("gamma", (0.0, 1.0), "gamma"),
        ("gamma", (2.0, 1.0), "gamma"),
        ("channel_gain", -0.1, "channel_gain"),
        ("blur_p", 1.5, "blur_p"),
        ("blur_sigma", (0.5, 9.0), "blur_sigma"),
        ("fov_radius", (0.0, 1.0), "fov_radius"),
        ("fov_softness", (0.1, 1.5), "fov_softness"),
        ("fov_shift", 2.0, "fov_shift"),
        ("zoom_out", (0.9, 1.2), "zoom_out"),
        ("zoom_out", (1.0, 2.5), "zoom_out"),
        ("jpeg_p", -0.5, "jpeg_p"),
        ("jpeg_quality", (0, 90), "jpeg_quality"),
        ("jpeg_quality", (50.5, 90), "whole numbers"),
        ("fov_radius", (1.0,), "pair"),
    ],
)
def test_acquisition_options_are_validated(field, value, match):
    with pytest.raises(ValueError, match=match):
        AugmentConfig(**{field: value})


def test_jpeg_round_trip_is_pillows():
    image = _images(n=1, size=24, seed=7)[0]
    out = io.BytesIO()
    Image.fromarray(image).save(out, "JPEG", quality=40)
    np.testing.assert_array_equal(round_trip(image, 40), np.asarray(Image.open(io.BytesIO(out.getvalue()))))


def test_jpeg_draws_are_seeded_per_image_with_their_probability_and_range():
    jpeg = Recompression(0.3, (20, 60))
    draws = [jpeg.draw(0, batch, row) for batch in range(50) for row in range(8)]
    qualities = [q for q in draws if q is not None]
    assert 0.22 <= len(qualities) / len(draws) <= 0.38
    assert min(qualities) >= 20 and max(qualities) <= 60 and len(set(qualities)) > 20
    assert draws == [jpeg.draw(0, batch, row) for batch in range(50) for row in range(8)]
    assert draws != [jpeg.draw(1, batch, row) for batch in range(50) for row in range(8)]
    images = _images(n=4, size=16, seed=8)
    out = jpeg.apply(images, seed=0, batch=3, rows=range(4, 8))
    for i, row in enumerate(range(4, 8)):
        q = jpeg.draw(0, 3, row)
        np.testing.assert_array_equal(out[i], images[i] if q is None else round_trip(images[i], q))
    assert AugmentConfig(jpeg_p=0.3, jpeg_quality=(20, 60)).recompression == jpeg
