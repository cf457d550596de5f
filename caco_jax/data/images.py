"""The one image-decoding path (PIL): the data build (:func:`shrink`), training and evaluation loads
(:func:`decode`), ``caco-jax predict`` and the web page all go through :func:`open_image`, so the
model sees what a person sees in an image viewer:

* EXIF orientation is applied (a phone photo tagged "rotate 90" is turned upright);
* 16-bit greyscale is scaled to 8 bits (not clipped to white), palette and CMYK images are
  converted to RGB, transparent pixels are shown over white (as a browser shows them);
* animations (GIF, APNG, WebP, multi-page TIFF), floating-point pixels and other kinds are
  refused, and so is anything over ``max_pixels`` (before it is decoded: the message says the
  size and the limit);
* every refusal is an :class:`UnreadableImage` (a ``caco_jax.errors.ImageError``) whose message
  is one plain reason, for the caller to put after the file's name.
"""

from __future__ import annotations

import io
import re
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from caco_jax.data import fov
from caco_jax.errors import ImageError

JPEG_QUALITY = 95
# 89.5 megapixels: Pillow's own warning threshold (its default value, should an importer have switched it off)
MAX_PIXELS: int = Image.MAX_IMAGE_PIXELS or 89_478_485
SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
FORMATS = "JPEG, PNG, BMP, GIF, TIFF or WebP"
_ORIENTATION = 0x0112  # EXIF tag
_TRANSPOSED = {5, 6, 7, 8}  # orientations that swap width and height
_SIXTEEN_BIT = {"I;16", "I;16B", "I;16L", "I;16N", "I"}
_ALPHA = {"RGBA", "RGBa", "LA", "La", "PA"}

# Our own limit is checked from the header before decoding; Pillow's warning would only repeat it.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*")


def _no_object(err: BaseException) -> str:
    """Pillow's message without the '<_io.BytesIO object at 0x...>' it names the stream by."""
    text = re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-f]+>", " the data", str(err)) or type(err).__name__
    return text


class UnreadableImage(ImageError):
    """The bytes are not an image this program can use; the message is the reason."""


class ImageTooLarge(UnreadableImage):
    """The image has more pixels than the limit (checked before decoding)."""


class UnsupportedImage(UnreadableImage):
    """A readable image of a kind that is refused (an animation, floating-point pixels)."""


def _megapixels(pixels: float) -> str:
    mp = pixels / 1e6
    return f"{mp:.0f} megapixels" if mp >= 10 else f"{mp:.2g} megapixels"


def _too_large(width: int, height: int, max_pixels: int) -> ImageTooLarge:
    return ImageTooLarge(
        f"{width} x {height} pixels ({_megapixels(width * height)}) is too large; "
        f"the limit is {_megapixels(max_pixels)}"
    )


def _open(data: bytes, max_pixels: int) -> Image.Image:
    """The image's header, checked: an image, within the pixel limit, a single frame."""
    if not data:
        raise UnreadableImage("the file is empty (0 bytes)")
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as err:
        pixels = re.search(r"\((\d+) pixels\)", str(err))
        size = _megapixels(int(pixels.group(1))) if pixels else "more pixels than Pillow opens"
        raise ImageTooLarge(f"{size} is too large; the limit is {_megapixels(max_pixels)}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        if data.startswith(_SIGNATURES) or data[8:12] == b"WEBP":  # an image's start, cut or garbled later
            raise UnreadableImage(f"damaged or incomplete ({_no_object(err)})") from None
        raise UnreadableImage(f"not an image file this program can read ({FORMATS})") from None
    width, height = image.size
    if width * height > max_pixels:
        raise _too_large(width, height, max_pixels)
    frames = getattr(image, "n_frames", 1)
    if frames > 1:
        raise UnsupportedImage(
            f"an animation or multi-page image ({frames} frames): save the frame to classify as a still JPEG or PNG"
        )
    return image


def _to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB of a decoded image of any mode Pillow reads."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in _SIXTEEN_BIT:  # 16-bit greyscale (Pillow reads 16-bit PNG as I;16 or I): scale, never clip
        values = np.asarray(image, np.int64)
        grey = ((np.clip(values, 0, 65535) * 255 + 32767) // 65535).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if mode == "F":
        raise UnsupportedImage("floating-point pixels (mode F) are not supported: save it as an 8- or 16-bit image")
    if mode in _ALPHA or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    try:
        return image.convert("RGB")  # L, 1, P, CMYK, YCbCr, ...
    except ValueError:
        raise UnsupportedImage(f"pixel format {mode} cannot be converted to RGB") from None


def _load(data: bytes, max_pixels: int, draft: tuple[int, int] | None) -> tuple[Image.Image, str | None, str, int]:
    """(upright 8-bit RGB image, file format, original mode, EXIF orientation)."""
    image = _open(data, max_pixels)
    kind, mode = image.format, image.mode
    try:
        orientation = int(image.getexif().get(_ORIENTATION, 1))
    except (OSError, SyntaxError, ValueError, TypeError):  # an unreadable EXIF block: show it as stored
        orientation = 1
    try:
        if draft is not None:  # JPEG: decode at a reduced scale that still covers ``draft`` (h, w)
            height, width = draft
            image.draft("RGB", (height, width) if orientation in _TRANSPOSED else (width, height))
        image.load()
        if orientation != 1:
            image = ImageOps.exif_transpose(image)
        return _to_rgb(image), kind, mode, orientation
    except UnreadableImage:
        raise
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as err:
        raise UnreadableImage(f"damaged or incomplete ({_no_object(err)})") from None


def open_image(data: bytes, *, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Encoded bytes -> upright 8-bit RGB PIL image at full size; :class:`UnreadableImage` says why not."""
    return _load(data, max_pixels, None)[0]


def decode(
    data: bytes, size: tuple[int, int] | None = None, *, max_pixels: int = MAX_PIXELS, fov_crop: bool = False
) -> np.ndarray:
    """Decode to uint8 [H, W, 3], upright; with size=(h, w), resize (bilinear) to it.

    Uses libjpeg's reduced-size decoding (`draft`) when the target is at most
    half the stored size, which makes small loads much cheaper. fov_crop: first crop
    to the dermatoscope's field of view (``caco_jax.data.fov``; an image without a dark
    circular border is kept whole), found at the full decoded size.
    """
    image = _load(data, max_pixels, None if fov_crop else size)[0]
    if fov_crop:
        box = fov.crop_box(np.asarray(image))
        if box is not None:
            top, bottom, left, right = box
            image = image.crop((left, top, right, bottom))
    if size is not None and image.size != (size[1], size[0]):
        image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def shrink(data: bytes, short_side: int | None, *, max_pixels: int = MAX_PIXELS) -> tuple[bytes, tuple[int, int]]:
    """Validate an encoded image and shrink it so its shorter side is <= short_side.

    Aspect ratio is kept and images are never enlarged. An upright RGB JPEG that needs no
    change is returned byte for byte (no second compression); anything else is re-encoded
    as an upright RGB JPEG (no EXIF orientation left to apply). Returns (jpeg bytes,
    (height, width)). Raises `UnreadableImage` for a file :func:`open_image` refuses.
    """
    image, kind, mode, orientation = _load(data, max_pixels, None)
    width, height = image.size
    scale = 1.0 if short_side is None else min(1.0, short_side / min(width, height))
    if scale == 1.0 and kind == "JPEG" and mode == "RGB" and orientation == 1:
        return data, (height, width)
    if scale < 1.0:
        width, height = max(1, round(width * scale)), max(1, round(height * scale))
        image = image.resize((width, height), Image.Resampling.BICUBIC, reducing_gap=None)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=JPEG_QUALITY)
    return out.getvalue(), (height, width)
