"""The field-of-view crop (caco_jax.data.fov) on synthetic dermatoscope images with known circles, and
at decoding (caco_jax.data.images.decode)."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from PIL import Image

from caco_jax.data import fov, images

SKIN, LESION, BORDER = (205, 150, 128), (95, 62, 48), (9, 7, 7)


def vignetted(
    height: int,
    width: int,
    cy: float,
    cx: float,
    radius: float,
    *,
    seed: int = 0,
    edge: float = 3.0,
    lesion: tuple[float, float, float] | None = None,
    label: bool = False,
) -> np.ndarray:
    """Skin with a lesion inside a disc (centre (cy, cx), radius; an edge ``edge`` px wide), dark outside,
    noisy everywhere; ``label``: a white text block in the top-left corner, as some dermatoscopes print."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width] + 0.5
    texture = 12 * np.sin(xx / 17.0 + seed) * np.cos(yy / 23.0)
    scene = np.asarray(SKIN, np.float64) + texture[..., None]
    ly, lx, lr = lesion or (cy + 0.1 * radius, cx - 0.15 * radius, 0.3 * radius)
    blob = np.clip((lr - np.hypot(yy - ly, xx - lx)) / 4.0, 0, 1)[..., None]
    scene = scene * (1 - blob) + np.asarray(LESION) * blob
    inside = np.clip((radius - np.hypot(yy - cy, xx - cx)) / edge + 0.5, 0, 1)[..., None]
    out = scene * inside + np.asarray(BORDER, np.float64) * (1 - inside) + rng.normal(0, 5, (height, width, 3))
    if label:
        out[6:20, 6:60] = 250
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def plain_skin(height: int, width: int, seed: int = 0, corner_shade: float = 1.0) -> np.ndarray:
    """Skin and a lesion filling the frame, no border (HAM10000's framing); corners shaded by ``corner_shade``."""
    image = vignetted(height, width, height / 2, width / 2, 10 * max(height, width), seed=seed).astype(np.float64)
    yy, xx = np.mgrid[0:height, 0:width] + 0.5
    r = np.hypot((yy - height / 2) / (height / 2), (xx - width / 2) / (width / 2)) / math.sqrt(2)
    image *= (1 - (1 - corner_shade) * r**2)[..., None]
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


# (height, width, cy, cx, radius, options): centred inside the frame, cut by the top and bottom, off
# centre, a dark lesion at the border and a label in a corner, small (no block averaging), large.
CASES = [
    (450, 600, 225.0, 300.0, 210.0, {}),
    (450, 600, 225.0, 300.0, 280.0, {}),
    (450, 600, 205.0, 330.0, 190.0, {"seed": 1}),
    (450, 600, 225.0, 300.0, 215.0, {"lesion": (225.0, 100.0, 60.0), "label": True}),
    (150, 200, 76.0, 99.0, 70.0, {"edge": 1.5}),
    (1200, 1600, 610.0, 790.0, 740.0, {"edge": 8.0, "seed": 2}),
]


@pytest.mark.parametrize("height, width, cy, cx, radius, options", CASES)
def test_the_circle_is_found_within_one_percent_of_the_shorter_side(height, width, cy, cx, radius, options):
    image = vignetted(height, width, cy, cx, radius, **options)
    circle = fov.find_circle(image)
    assert circle is not None
    tolerance = 0.01 * min(height, width)
    assert abs(circle.cy - cy) <= tolerance and abs(circle.cx - cx) <= tolerance
    assert abs(circle.radius - radius) <= tolerance


@pytest.mark.parametrize("height, width, cy, cx, radius, options", CASES)
def test_the_crop_is_the_inscribed_square_clipped_to_the_image(height, width, cy, cx, radius, options):
    image = vignetted(height, width, cy, cx, radius, **options)
    box = fov.crop_box(image)
    assert box is not None
    top, bottom, left, right = box
    half = fov.MARGIN * radius / math.sqrt(2)
    slack = 0.015 * min(height, width)
    assert abs(top - max(0.0, cy - half)) <= slack and abs(bottom - min(height, cy + half)) <= slack
    assert abs(left - max(0.0, cx - half)) <= slack and abs(right - min(width, cx + half)) <= slack
    corners = np.asarray([[top, left], [top, right], [bottom, left], [bottom, right]], np.float64)
    assert np.all(np.hypot(corners[:, 0] - cy, corners[:, 1] - cx) <= radius)  # nothing of the border kept
    np.testing.assert_array_equal(fov.crop(image), image[top:bottom, left:right])


@pytest.mark.parametrize(
    "image",
    [
        plain_skin(450, 600),
        plain_skin(450, 600, seed=3, corner_shade=0.6),  # the lens's own shading: darker, not dark
        np.zeros((300, 400, 3), np.uint8),  # all dark
        np.random.default_rng(4).integers(0, 12, (300, 400, 3)).astype(np.uint8),  # dark noise
        np.full((300, 400, 3), 255, np.uint8),  # all white
        np.full((5, 7, 3), 128, np.uint8),  # too small to say
    ],
    ids=["skin", "shaded-skin", "black", "dark-noise", "white", "tiny"],
)
def test_an_image_without_a_dark_border_is_left_as_it_is(image):
    assert fov.find_circle(image) is None and fov.crop_box(image) is None
    assert fov.crop(image) is image


def test_decode_crops_before_resizing_and_changes_nothing_when_off():
    image = vignetted(150, 200, 76.0, 99.0, 70.0, edge=1.5)
    out = io.BytesIO()
    Image.fromarray(image).save(out, "PNG")
    data = out.getvalue()
    top, bottom, left, right = fov.crop_box(image)
    want = Image.fromarray(image).crop((left, top, right, bottom)).resize((32, 32), Image.Resampling.BILINEAR)
    np.testing.assert_array_equal(images.decode(data, (32, 32), fov_crop=True), np.asarray(want))
    plain = np.asarray(Image.fromarray(image).resize((32, 32), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(images.decode(data, (32, 32)), plain)
    np.testing.assert_array_equal(images.decode(data, fov_crop=True), image[top:bottom, left:right])
