"""Training augmentation and normalisation in JAX, for the jitted step on the accelerator.

The paper names the operations (random horizontal and vertical flips, rotation by
90/180 degrees, colour jitter, random scaling); the parameters are ours:

1. random resized crop (as torchvision's RandomResizedCrop): a crop covering
   `scale` of the image's area, with an aspect ratio `ratio` (log-uniform) times
   the image's own, at a uniform position, resized to out_size x out_size with
   `jax.image.scale_and_translate` (bilinear, antialiased when shrinking).
   Relative aspect makes scale = ratio = 1 the whole image, squashed to a square,
   exactly what evaluation sees (for square inputs it is torchvision's rule).
   A crop larger than the image is clipped to it (torchvision retries instead);
   with probability `zoom_p` a zoom-out box replaces the crop: the whole image
   shrunk by a side factor in `zoom_out` at a random place of the frame, the frame's
   border filled by mirroring the image (as the skin would continue);
2. rotation by k * 90 degrees, k uniform in {0, 1, 2, 3}, then horizontal and
   vertical flips, each with its probability (on the square crop);
3. acquisition augmentation (`caco_jax.data.acquisition`, all off by default): Gaussian
   blur, gamma, per-channel gains, a circular field-of-view mask (dark outside a soft-edged
   disc), in that order;
4. colour constancy (`caco_jax.data.constancy`), when the run has it on, as at inference;
5. colour jitter in torchvision's ColorJitter ranges, fixed order: brightness,
   contrast, saturation (factors uniform in [1 - x, 1 + x]), hue (a rotation of
   the chroma plane in YIQ space by uniform [-hue, hue] turns, a cheap linear
   stand-in for the HSV hue shift), clipped to [0, 1] after each;
6. ImageNet mean/std normalisation (`normalize`).

JPEG re-compression (`jpeg_p`, `jpeg_quality`) needs an encoder: it runs on the host, in
the training pipeline (`caco_jax.data.recompress`). Every step that feeds images to the
network at inference goes through `preprocess` (colour constancy, then normalisation).

Everything is vmapped over the batch with one key per example (no Python loop
over examples), jit-able, shapes static. Options that are off add no operation, so
the default configuration computes exactly what it did before they existed.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from caco_jax.data import acquisition
from caco_jax.data.classes import IMAGENET_MEAN, IMAGENET_STD
from caco_jax.data.config_section import from_section
from caco_jax.data.constancy import EPS, OFF, ColorConstancy
from caco_jax.data.recompress import Recompression


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation; probabilities in [0, 1], jitter strengths >= 0."""

    hflip: bool = True  # flip horizontally with probability 1/2
    vflip: bool = True  # flip vertically with probability 1/2
    rot90: bool = True  # rotate by k * 90 degrees, k uniform in {0, 1, 2, 3}
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    hue: float = 0.05  # fraction of a full turn, at most 0.5
    scale: tuple[float, float] = (0.35, 1.0)  # crop area / image area
    ratio: tuple[float, float] = (3 / 4, 4 / 3)  # crop aspect / image aspect (w/h)
    # Batch mixing in the train step (`mix_batch`): Beta(alpha, alpha) weights; 0 = off.
    # Both on: each step picks one of the two with probability 1/2.
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    # Acquisition augmentation (docs/data.md), every part off by default.
    gamma: tuple[float, float] = (1.0, 1.0)  # x ** g, g log-uniform in the range
    channel_gain: float = 0.0  # per-channel gains log-uniform in [1 / (1 + x), 1 + x]
    blur_p: float = 0.0  # Gaussian blur with this probability,
    blur_sigma: tuple[float, float] = (0.5, 1.5)  # sigma uniform in the range, in output pixels
    fov_p: float = 0.0  # a circular field-of-view mask (dark outside) with this probability,
    fov_radius: tuple[float, float] = (1.0, 1.4)  # radius / half the side: 1 touches the sides, sqrt(2) the corners
    fov_softness: tuple[float, float] = (0.0, 0.1)  # width of the soft edge / radius
    fov_shift: float = 0.0  # centre moved by up to this fraction of half the side, along each axis
    zoom_p: float = 0.0  # zoom out (instead of the crop) with this probability,
    zoom_out: tuple[float, float] = (1.0, 1.5)  # frame side / image side, uniform in the range
    jpeg_p: float = 0.0  # JPEG re-compression on the host (train split) with this probability,
    jpeg_quality: tuple[int, int] = (30, 95)  # quality uniform in the range (integers)

    def __post_init__(self):
        for name in ("hflip", "vflip", "rot90"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise ValueError(f"{name} is on or off (True / False), got {getattr(self, name)!r}")
        for name in ("brightness", "contrast", "saturation"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("mixup_alpha", "cutmix_alpha"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (0: off), got {getattr(self, name)}")
        if not 0.0 <= self.hue <= 0.5:
            raise ValueError(f"hue must be in [0, 0.5], got {self.hue}")
        object.__setattr__(self, "scale", tuple(float(v) for v in self.scale))
        object.__setattr__(self, "ratio", tuple(float(v) for v in self.ratio))
        lo, hi = self.scale
        if len(self.scale) != 2 or not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"scale must be (lo, hi) with 0 < lo <= hi <= 1, got {self.scale}")
        lo, hi = self.ratio
        if len(self.ratio) != 2 or not 0.0 < lo <= hi:
            raise ValueError(f"ratio must be (lo, hi) with 0 < lo <= hi, got {self.ratio}")
        for name, value in acquisition.checked(self).items():
            object.__setattr__(self, name, value)

    @classmethod
    def from_config(cls, cfg: Any) -> AugmentConfig:
        """From an ml_collections.ConfigDict (or a mapping); unknown keys raise, naming them."""
        return from_section(cls, cfg, "augmentation")

    @property
    def recompression(self) -> Recompression | None:
        """The host side of the augmentation: JPEG re-compression for the training pipeline, or None (off)."""
        return Recompression(self.jpeg_p, self.jpeg_quality) if self.jpeg_p > 0 else None

    @property
    def acquisition_on_device(self) -> bool:
        """Whether any of blur, gamma, channel gains or the field-of-view mask is on."""
        return self.blur_p > 0 or self.gamma != (1.0, 1.0) or self.channel_gain > 0 or self.fov_p > 0

    @classmethod
    def none(cls) -> AugmentConfig:
        """No randomness: the whole image, resized (what evaluation sees)."""
        return cls(
            hflip=False,
            vflip=False,
            rot90=False,
            brightness=0.0,
            contrast=0.0,
            saturation=0.0,
            hue=0.0,
            scale=(1.0, 1.0),
            ratio=(1.0, 1.0),
        )


# numpy constants: importing this module does not start a JAX backend.
_MEAN = np.asarray(IMAGENET_MEAN, np.float32)
_STD = np.asarray(IMAGENET_STD, np.float32)
_LUMA = np.asarray([0.299, 0.587, 0.114], np.float32)  # ITU-R 601, as torchvision's grayscale
_RGB_TO_YIQ = np.asarray([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], np.float32)
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ).astype(np.float32)
# fold_in tags of the acquisition draws: keys of their own, so that the default draws stay as they were.
_ZOOM, _ACQUISITION = 1, 2


def normalize(images: jax.Array) -> jax.Array:
    """uint8 (or [0, 255] float) images -> float32 normalised with ImageNet mean/std."""
    return (jnp.asarray(images, jnp.float32) / 255.0 - _MEAN) / _STD


def shades_of_gray(images: jax.Array, p: float) -> jax.Array:
    """Shades of Gray colour constancy of float images [..., H, W, 3] in [0, 1], each on its own
    (``caco_jax.data.constancy``): channels scaled by mean(e) / e_c, e_c = mean(x_c ** p) ** (1 / p)."""
    illuminant = jnp.mean(images**p, axis=(-3, -2), keepdims=True) ** (1.0 / p)
    gain = jnp.mean(illuminant, axis=-1, keepdims=True) / jnp.maximum(illuminant, EPS)
    return jnp.clip(images * gain, 0.0, 1.0)


def preprocess(images: jax.Array, color: ColorConstancy = OFF) -> jax.Array:
    """uint8 images -> the network's float32 input: colour constancy (when ``color`` is on), then
    ``normalize``. Every evaluation, prediction, test-time-augmentation, Grad-CAM and embedding step
    feeds its images through this; training applies the same colour constancy inside ``augment_image``."""
    if not color.enabled:
        return normalize(images)
    return (shades_of_gray(jnp.asarray(images, jnp.float32) / 255.0, color.p) - _MEAN) / _STD


def _crop_box(key: jax.Array, height: int, width: int, cfg: AugmentConfig) -> jax.Array:
    """(y0, x0, h, w) of a random resized crop, float32."""
    k_area, k_ratio, k_y, k_x = jax.random.split(key, 4)
    area = height * width * jax.random.uniform(k_area, (), minval=cfg.scale[0], maxval=cfg.scale[1])
    log_ratio = jax.random.uniform(k_ratio, (), minval=math.log(cfg.ratio[0]), maxval=math.log(cfg.ratio[1]))
    ratio = jnp.exp(log_ratio) * (width / height)  # relative to the image's own aspect
    w = jnp.clip(jnp.sqrt(area * ratio), 1.0, width)
    h = jnp.clip(jnp.sqrt(area / ratio), 1.0, height)
    y0 = jax.random.uniform(k_y, ()) * (height - h)
    x0 = jax.random.uniform(k_x, ()) * (width - w)
    return jnp.stack([y0, x0, h, w])


def _resized_crop(image: jax.Array, box: jax.Array, out_size: int, precision) -> jax.Array:
    """Resample the box of image [H, W, C] to [out, out, C] (bilinear, antialiased).

    scale_and_translate contracts dense [out, in] weight matrices (matmuls: about
    2 * 3 * out * (H * W + out * W) flops per image), hence `precision`.
    """
    y0, x0, h, w = box[0], box[1], box[2], box[3]
    scale = jnp.stack([out_size / h, out_size / w])
    translation = -jnp.stack([y0, x0]) * scale
    return jax.image.scale_and_translate(
        image,
        (out_size, out_size, image.shape[-1]),
        (0, 1),
        scale,
        translation,
        method="linear",
        antialias=True,
        precision=precision,
    )


def _rotate_flip(image: jax.Array, k: jax.Array, hflip: jax.Array, vflip: jax.Array) -> jax.Array:
    """rot90(image, k) (counter-clockwise, as numpy), then the flips; image square.

    rot90 by k = transpose if k is odd, then flip rows if k in {1, 2} and columns
    if k in {2, 3}; the random flips toggle the same two flips.
    """
    image = jnp.where(k % 2 == 1, jnp.swapaxes(image, 0, 1), image)
    flip_rows = jnp.logical_xor((k == 1) | (k == 2), vflip)
    flip_cols = jnp.logical_xor((k == 2) | (k == 3), hflip)
    image = jnp.where(flip_rows, image[::-1, :], image)
    return jnp.where(flip_cols, image[:, ::-1], image)


def _mix(image: jax.Array, weights) -> jax.Array:
    """``image @ weights`` over the channel axis as explicit multiply-adds (weights [3] or [3, k]).

    XLA's CPU backend runs a contraction over 3 channels as a matrix product per image,
    tens of times slower than the elementwise form, which also fuses with its neighbours.
    """
    return image[..., 0:1] * weights[0] + image[..., 1:2] * weights[1] + image[..., 2:3] * weights[2]


def _jitter(image: jax.Array, key: jax.Array, cfg: AugmentConfig) -> jax.Array:
    """Colour jitter of one [H, W, 3] image in [0, 1]."""
    k_b, k_c, k_s, k_h = jax.random.split(key, 4)

    def factor(k, strength):
        return jax.random.uniform(k, (), minval=1.0 - strength, maxval=1.0 + strength)

    if cfg.brightness > 0:
        image = jnp.clip(image * factor(k_b, cfg.brightness), 0.0, 1.0)
    if cfg.contrast > 0:
        mean = jnp.mean(_mix(image, _LUMA))
        image = jnp.clip((image - mean) * factor(k_c, cfg.contrast) + mean, 0.0, 1.0)
    if cfg.saturation > 0:
        gray = _mix(image, _LUMA)
        image = jnp.clip((image - gray) * factor(k_s, cfg.saturation) + gray, 0.0, 1.0)
    if cfg.hue > 0:
        angle = 2 * jnp.pi * jax.random.uniform(k_h, (), minval=-cfg.hue, maxval=cfg.hue)
        cos, sin = jnp.cos(angle), jnp.sin(angle)
        one, zero = jnp.ones(()), jnp.zeros(())
        rotate = jnp.stack(
            [jnp.stack([one, zero, zero]), jnp.stack([zero, cos, -sin]), jnp.stack([zero, sin, cos])]
        )  # rotates the (I, Q) chroma plane
        matrix = _YIQ_TO_RGB @ rotate @ _RGB_TO_YIQ
        image = jnp.clip(_mix(image, matrix.T), 0.0, 1.0)
    return image


def augment_image(
    key: jax.Array,
    image: jax.Array,
    *,
    out_size: int,
    cfg: AugmentConfig,
    precision=jax.lax.Precision.DEFAULT,
    color: ColorConstancy = OFF,
) -> jax.Array:
    """One uint8 [H, W, 3] image -> augmented float32 [out, out, 3] in [0, 1] (not normalised)."""
    k_crop, k_rot, k_h, k_v, k_jit = jax.random.split(key, 5)
    height, width = image.shape[0], image.shape[1]
    box = _crop_box(k_crop, height, width, cfg)
    pixels = image.astype(jnp.float32) / 255.0
    if cfg.zoom_p > 0:
        k_zoom, k_frame = jax.random.split(jax.random.fold_in(key, _ZOOM))
        box = jnp.where(
            jax.random.bernoulli(k_zoom, cfg.zoom_p), acquisition.zoom_box(k_frame, height, width, cfg), box
        )
        pixels, (pad_y, pad_x) = acquisition.mirror_pad(pixels, cfg.zoom_out[1])
        box = box + jnp.asarray([pad_y, pad_x, 0, 0], jnp.float32)
    image = _resized_crop(pixels, box, out_size, precision)
    k = jax.random.randint(k_rot, (), 0, 4) if cfg.rot90 else jnp.zeros((), jnp.int32)
    image = _rotate_flip(
        image,
        k,
        jax.random.bernoulli(k_h, 0.5 if cfg.hflip else 0.0),
        jax.random.bernoulli(k_v, 0.5 if cfg.vflip else 0.0),
    )
    image = jnp.clip(image, 0.0, 1.0)
    if cfg.acquisition_on_device:
        image = acquisition.apply(jax.random.fold_in(key, _ACQUISITION), image, cfg)
    if color.enabled:
        image = shades_of_gray(image, color.p)
    return _jitter(image, k_jit, cfg)


def augment_batch(
    rng: jax.Array,
    images: jax.Array,
    *,
    out_size: int,
    cfg: AugmentConfig,
    precision=jax.lax.Precision.DEFAULT,
    color: ColorConstancy = OFF,
) -> jax.Array:
    """uint8 [B, H, W, 3] -> float32 [B, out_size, out_size, 3], augmented and normalised.

    One independent draw per example (keys split from rng). Labels are not
    touched, so they stay aligned with the batch order. Jit with out_size, cfg and
    color static, e.g. `jax.jit(augment_batch, static_argnames=("out_size", "cfg", "color"))`.
    precision: of the resampling matmuls; DEFAULT lets a GPU use TF32 (an error
    far below one grey level), HIGHEST forces full float32. color: the run's colour
    constancy, applied after the acquisition augmentation and before the colour jitter.
    """
    if cfg == AugmentConfig.none() and images.shape[1:3] == (out_size, out_size):
        return preprocess(images, color)  # nothing random and nothing to resample: the identity, skipped
    keys = jax.random.split(rng, images.shape[0])
    augmented = jax.vmap(
        lambda k, x: augment_image(k, x, out_size=out_size, cfg=cfg, precision=precision, color=color)
    )(keys, images)
    return (augmented - _MEAN) / _STD


def mix_batch(key: jax.Array, images: jax.Array, cfg: AugmentConfig) -> tuple[jax.Array, jax.Array]:
    """Mixup or CutMix of a (normalised) batch with its own reverse: (mixed images, lam).

    Example i is mixed with example B-1-i; the loss is ``lam * L(y) + (1 - lam) * L(y[::-1])``.
    lam ~ Beta(alpha, alpha), one draw per batch; for CutMix a box of area (1 - lam) of the image
    is pasted from the partner and lam is the share of pixels actually kept. Without mixing
    configured the batch is returned with lam = 1.
    """
    if cfg.mixup_alpha <= 0 and cfg.cutmix_alpha <= 0:
        return images, jnp.ones((), jnp.float32)
    k_choice, k_mix, k_cut, k_y, k_x = jax.random.split(key, 5)
    partner = images[::-1]
    out_h, out_w = images.shape[1], images.shape[2]

    def mixup():
        lam = jax.random.beta(k_mix, cfg.mixup_alpha, cfg.mixup_alpha)
        return lam * images + (1.0 - lam) * partner, lam

    def cutmix():
        lam = jax.random.beta(k_cut, cfg.cutmix_alpha, cfg.cutmix_alpha)
        cut = jnp.sqrt(1.0 - lam)
        h, w = jnp.round(cut * out_h), jnp.round(cut * out_w)
        cy, cx = jax.random.uniform(k_y, (), maxval=out_h), jax.random.uniform(k_x, (), maxval=out_w)
        y0, y1 = jnp.clip(cy - h / 2, 0, out_h), jnp.clip(cy + h / 2, 0, out_h)
        x0, x1 = jnp.clip(cx - w / 2, 0, out_w), jnp.clip(cx + w / 2, 0, out_w)
        ys, xs = jnp.arange(out_h)[:, None] + 0.5, jnp.arange(out_w)[None, :] + 0.5
        box = ((ys >= y0) & (ys < y1) & (xs >= x0) & (xs < x1))[None, :, :, None]
        kept = 1.0 - jnp.mean(box.astype(jnp.float32))
        return jnp.where(box, partner, images), kept

    if cfg.cutmix_alpha <= 0:
        return mixup()
    if cfg.mixup_alpha <= 0:
        return cutmix()
    use_cutmix = jax.random.bernoulli(k_choice, 0.5)
    (mixed_a, lam_a), (mixed_b, lam_b) = mixup(), cutmix()
    return jnp.where(use_cutmix, mixed_b, mixed_a), jnp.where(use_cutmix, lam_b, lam_a)
