"""JPEG decoding and resizing on the CPU (PIL): build-time shrinking and load-time decoding."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image, UnidentifiedImageError

JPEG_QUALITY = 95


class UnreadableImage(ValueError):
    """The bytes are not a complete, decodable image."""


def _open_rgb(data: bytes) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data))
        image.load()  # decodes everything: truncated files fail here
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise UnreadableImage(str(err) or type(err).__name__) from err
    return image


def shrink(data: bytes, short_side: int | None) -> tuple[bytes, tuple[int, int]]:
    """Validate an encoded image and shrink it so its shorter side is <= short_side.

    Aspect ratio is kept and images are never enlarged. A JPEG that needs no
    change is returned byte for byte (no second compression); anything else is
    re-encoded as an RGB JPEG. Returns (jpeg bytes, (height, width)).
    Raises `UnreadableImage` for a corrupt or truncated file.
    """
    image = _open_rgb(data)
    width, height = image.size
    scale = 1.0 if short_side is None else min(1.0, short_side / min(width, height))
    if scale == 1.0 and image.format == "JPEG" and image.mode == "RGB":
        return data, (height, width)
    if scale < 1.0:
        width, height = max(1, round(width * scale)), max(1, round(height * scale))
        image = image.convert("RGB").resize((width, height), Image.BICUBIC, reducing_gap=None)
    out = io.BytesIO()
    image.convert("RGB").save(out, format="JPEG", quality=JPEG_QUALITY)
    return out.getvalue(), (height, width)


def decode(data: bytes, size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode to uint8 [H, W, 3]; with size=(h, w), resize (bilinear, antialiased) to it.

    Uses libjpeg's reduced-size decoding (`draft`) when the target is at most
    half the stored size, which makes small loads much cheaper.
    """
    with Image.open(io.BytesIO(data)) as image:
        if size is not None and image.size != (size[1], size[0]):
            image.draft("RGB", (size[1], size[0]))
            image = image.convert("RGB").resize((size[1], size[0]), Image.BILINEAR)
        elif image.mode != "RGB":
            image = image.convert("RGB")
        return np.asarray(image, dtype=np.uint8)
