"""The acquisition augmentation on the accelerator (``data.augment`` options, all off by default): what
differs between dermatoscopes and clinics, drawn per image inside the jitted train step
(``caco_jax.data.augment.augment_image`` calls these):

* zoom-out (:func:`zoom_box`, :func:`mirror_pad`): the whole image shrunk into a larger frame at a random
  place, the frame's border the image mirrored outwards, instead of the random resized crop;
* after the crop and the flips (:func:`apply`), in this order: Gaussian blur (:func:`blur`), gamma,
  per-channel gains and a circular field-of-view mask (:func:`fov_mask`), each with its own draw.

JPEG re-compression, the one such option that needs an encoder, runs on the host
(``caco_jax.data.recompress``). :func:`checked` validates every one of these options.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

AugmentConfig = Any  # caco_jax.data.augment.AugmentConfig, which imports this module (no import back)

# Upper bounds of the acquisition options (the blur kernel and the mirrored border have static sizes).
LIMITS: dict[str, float] = {
    "channel_gain": 4.0,
    "fov_shift": 1.0,
    "blur_sigma": 5.0,
    "fov_softness": 1.0,
    "zoom_out": 2.0,
    "jpeg_quality": 100,
}


def checked(cfg: AugmentConfig) -> dict[str, Any]:
    """The acquisition options' pairs as tuples of floats (of ints for ``jpeg_quality``), for
    ``AugmentConfig`` to keep; ValueError naming the first option out of range."""
    pairs: dict[str, Any] = {}
    for name in ("blur_p", "fov_p", "zoom_p", "jpeg_p"):
        if not 0.0 <= getattr(cfg, name) <= 1.0:
            raise ValueError(f"{name} is a probability in [0, 1], got {getattr(cfg, name)}")
    for name in ("channel_gain", "fov_shift"):
        if not 0.0 <= getattr(cfg, name) <= LIMITS[name]:
            raise ValueError(f"{name} must be in [0, {LIMITS[name]}] (0: off), got {getattr(cfg, name)}")
    for name, low, low_open in (
        ("gamma", 0.0, True),
        ("blur_sigma", 0.0, True),
        ("fov_radius", 0.0, True),
        ("fov_softness", 0.0, False),
        ("zoom_out", 1.0, False),
        ("jpeg_quality", 1, False),
    ):
        value = getattr(cfg, name)
        if not isinstance(value, tuple | list) or len(value) != 2:
            raise ValueError(f"{name} must be a pair (lo, hi), got {value!r}")
        if name == "jpeg_quality" and not all(float(v) == int(v) for v in value):
            raise ValueError(f"jpeg_quality must be whole numbers, got {value}")
        pair = tuple(int(v) if name == "jpeg_quality" else float(v) for v in value)
        pairs[name] = pair
        lo, hi, top = pair[0], pair[1], LIMITS.get(name)
        if not ((lo > low) if low_open else (lo >= low)) or lo > hi or (top is not None and hi > top):
            bound = f"{low} {'<' if low_open else '<='} lo <= hi" + (f" <= {top}" if top is not None else "")
            raise ValueError(f"{name} must be (lo, hi) with {bound}, got {value}")
    return pairs


def zoom_box(key: jax.Array, height: int, width: int, cfg: AugmentConfig) -> jax.Array:
    """(y0, x0, h, w) of a zoom-out frame, float32: the whole image, its sides 1 / z of the frame's
    (z uniform in ``zoom_out``), at a uniform place inside it (y0, x0 <= 0)."""
    k_z, k_y, k_x = jax.random.split(key, 3)
    z = jax.random.uniform(k_z, (), minval=cfg.zoom_out[0], maxval=cfg.zoom_out[1])
    h, w = z * height, z * width
    y0 = -jax.random.uniform(k_y, ()) * (h - height)
    x0 = -jax.random.uniform(k_x, ()) * (w - width)
    return jnp.stack([y0, x0, h, w])


def mirror_pad(pixels: jax.Array, max_zoom: float) -> tuple[jax.Array, tuple[int, int]]:
    """The image [H, W, C] mirrored outwards on every side, far enough for any zoom-out frame up to
    ``max_zoom`` (the image continues as its reflection, edge pixel repeated: scipy's 'reflect');
    returns it and the (top, left) padding, which boxes shift by."""
    pad_y, pad_x = math.ceil((max_zoom - 1.0) * pixels.shape[0]), math.ceil((max_zoom - 1.0) * pixels.shape[1])
    return jnp.pad(pixels, ((pad_y, pad_y), (pad_x, pad_x), (0, 0)), mode="symmetric"), (pad_y, pad_x)


def blur(image: jax.Array, sigma: jax.Array, radius: int) -> jax.Array:
    """Separable Gaussian blur of [S, S, C] with standard deviation ``sigma`` (pixels; a traced value)
    and a kernel of fixed size 2 * radius + 1; borders mirrored (scipy.ndimage's 'reflect')."""
    offsets = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
    weights = jnp.exp(-0.5 * (offsets / sigma) ** 2)
    weights = weights / jnp.sum(weights)
    size_y, size_x = image.shape[0], image.shape[1]
    padded = jnp.pad(image, ((radius, radius), (0, 0), (0, 0)), mode="symmetric")
    image = weights[0] * padded[:size_y]
    for i in range(1, 2 * radius + 1):
        image = image + weights[i] * padded[i : i + size_y]
    padded = jnp.pad(image, ((0, 0), (radius, radius), (0, 0)), mode="symmetric")
    out = weights[0] * padded[:, :size_x]
    for i in range(1, 2 * radius + 1):
        out = out + weights[i] * padded[:, i : i + size_x]
    return out


def fov_mask(size: int, centre: jax.Array, radius: jax.Array, softness: jax.Array) -> jax.Array:
    """[S, S, 1] in [0, 1]: 1 inside a disc, 0 outside, a smoothstep edge ``softness * radius`` wide just
    inside the circle. Lengths in units of half the side; ``centre`` (y, x) from the image's centre."""
    coords = (jnp.arange(size, dtype=jnp.float32) + 0.5) / (size / 2) - 1.0  # pixel centres in [-1, 1]
    distance = jnp.sqrt((coords[:, None] - centre[0]) ** 2 + (coords[None, :] - centre[1]) ** 2)
    t = jnp.clip((radius - distance) / jnp.maximum(softness * radius, 1e-6), 0.0, 1.0)
    return (t * t * (3.0 - 2.0 * t))[..., None]


def _log_uniform(key: jax.Array, lo: float, hi: float, shape: tuple[int, ...] = ()) -> jax.Array:
    return jnp.exp(jax.random.uniform(key, shape, minval=math.log(lo), maxval=math.log(hi)))


def apply(key: jax.Array, image: jax.Array, cfg: AugmentConfig) -> jax.Array:
    """Blur, gamma, channel gains and the field-of-view mask of one [S, S, 3] image in [0, 1], each
    only where configured."""
    k_blur, k_sigma, k_gamma, k_gain, k_fov, k_centre, k_radius, k_soft = jax.random.split(key, 8)
    if cfg.blur_p > 0:
        sigma = jax.random.uniform(k_sigma, (), minval=cfg.blur_sigma[0], maxval=cfg.blur_sigma[1])
        blurred = blur(image, sigma, math.ceil(3 * cfg.blur_sigma[1]))
        image = jnp.where(jax.random.bernoulli(k_blur, cfg.blur_p), blurred, image)
    if cfg.gamma != (1.0, 1.0):
        image = image ** _log_uniform(k_gamma, *cfg.gamma)
    if cfg.channel_gain > 0:
        bound = 1.0 + cfg.channel_gain
        image = jnp.clip(image * _log_uniform(k_gain, 1.0 / bound, bound, (3,)), 0.0, 1.0)
    if cfg.fov_p > 0:
        centre = jax.random.uniform(k_centre, (2,), minval=-cfg.fov_shift, maxval=cfg.fov_shift)
        radius = jax.random.uniform(k_radius, (), minval=cfg.fov_radius[0], maxval=cfg.fov_radius[1])
        softness = jax.random.uniform(k_soft, (), minval=cfg.fov_softness[0], maxval=cfg.fov_softness[1])
        mask = fov_mask(image.shape[0], centre, radius, softness)
        image = jnp.where(jax.random.bernoulli(k_fov, cfg.fov_p), image * mask, image)
    return image
