"""The one decoding path (caco_jax.data.images) on made-up files of every kind a person might give it."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from caco_jax.data import images
from caco_jax.errors import ImageError


def scene(height: int = 24, width: int = 36) -> np.ndarray:
    """An asymmetric RGB image: every flip and rotation of it is different."""
    yy, xx = np.mgrid[0:height, 0:width]
    out = np.stack([xx * 255 // (width - 1), yy * 255 // (height - 1), np.zeros_like(xx)], -1).astype(np.uint8)
    out[:6, :6] = (255, 255, 255)  # a white top-left corner
    return out


def encode(array_or_image, fmt: str = "PNG", **kwargs) -> bytes:
    image = array_or_image if isinstance(array_or_image, Image.Image) else Image.fromarray(array_or_image)
    out = io.BytesIO()
    image.save(out, format=fmt, **kwargs)
    return out.getvalue()


def exif_with_orientation(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


# How a camera stores an upright scene for each EXIF orientation (the viewer undoes it):
# 6 = "rotate 90 clockwise to view" (a phone held upright), 8 = counter-clockwise, 3 = 180,
# 2/4 = mirrored, 5/7 = transposed.
STORED = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: np.rot90(a, 2),
    4: lambda a: a[::-1],
    5: lambda a: np.swapaxes(a, 0, 1),
    6: lambda a: np.rot90(a, 1),
    7: lambda a: np.rot90(np.swapaxes(a, 0, 1), 2),
    8: lambda a: np.rot90(a, -1),
}


@pytest.mark.parametrize("orientation", sorted(STORED))
def test_exif_orientation_is_applied_so_the_model_sees_what_a_viewer_shows(orientation):
    upright = scene()
    stored = np.ascontiguousarray(STORED[orientation](upright))
    data = encode(stored, "PNG", exif=exif_with_orientation(orientation))
    np.testing.assert_array_equal(images.decode(data), upright)


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_with_reduced_size_jpeg_decoding(orientation):
    """The resized path (libjpeg draft) too: shape and content of the upright image."""
    upright = np.kron(scene(), np.ones((8, 8, 1), np.uint8))  # 192 x 288, so draft can halve it
    stored = np.ascontiguousarray(STORED[orientation](upright))
    data = encode(stored, "JPEG", quality=95, exif=exif_with_orientation(orientation))
    got = images.decode(data, (48, 72)).astype(int)
    want = np.asarray(Image.fromarray(upright).resize((72, 48), Image.BILINEAR), int)
    assert got.shape == (48, 72, 3) and np.abs(got - want).mean() < 6


def test_shrink_stores_tagged_jpegs_upright_and_keeps_plain_ones_byte_for_byte():
    plain = encode(scene(), "JPEG", quality=95)
    assert images.shrink(plain, None) == (plain, (24, 36))
    tagged = encode(np.ascontiguousarray(np.rot90(scene(), 1)), "JPEG", quality=95, exif=exif_with_orientation(6))
    data, (h, w) = images.shrink(tagged, None)
    assert (h, w) == (24, 36) and data != tagged
    assert Image.open(io.BytesIO(data)).getexif().get(0x0112, 1) == 1
    assert np.abs(images.decode(data).astype(int) - scene().astype(int)).mean() < 6


def test_sixteen_bit_greyscale_is_scaled_not_clipped_to_white():
    ramp = np.tile(np.linspace(0, 65535, 256).astype(np.uint16), (8, 1))
    data = encode(Image.fromarray(ramp), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")  # really 16-bit on disk
    got = images.decode(data)
    assert got.shape == (8, 256, 3) and got[0, 0, 0] == 0 and got[0, -1, 0] == 255
    np.testing.assert_allclose(got[0, :, 0], ramp[0] / 257, atol=1)
    assert (got[..., 0] == got[..., 1]).all()


def test_palette_images_with_and_without_transparency():
    palette = Image.new("P", (4, 1))
    palette.putpalette([200, 30, 40, 10, 220, 30] + [0, 0, 0] * 254)
    palette.putdata([0, 1, 0, 1])
    np.testing.assert_array_equal(images.decode(encode(palette))[0], [[200, 30, 40], [10, 220, 30]] * 2)
    transparent = palette.copy()
    transparent.info["transparency"] = 1
    np.testing.assert_array_equal(
        images.decode(encode(transparent, transparency=1))[0], [[200, 30, 40], [255, 255, 255]] * 2
    )


def test_alpha_is_shown_over_white_as_a_browser_shows_it():
    rgba = np.zeros((1, 3, 4), np.uint8)
    rgba[0, :, :3] = (0, 0, 200)
    rgba[0, :, 3] = (255, 0, 128)
    got = images.decode(encode(Image.fromarray(rgba, "RGBA"))).astype(int)
    np.testing.assert_allclose(got[0], [[0, 0, 200], [255, 255, 255], [127, 127, 227]], atol=1)
    la = Image.fromarray(np.array([[[0, 255], [0, 0]]], np.uint8), "LA")
    np.testing.assert_array_equal(images.decode(encode(la))[0], [[0, 0, 0], [255, 255, 255]])


def test_cmyk_and_bilevel_images_are_converted():
    rgb = scene()
    cmyk = encode(Image.fromarray(rgb).convert("CMYK"), "JPEG", quality=98)
    assert Image.open(io.BytesIO(cmyk)).mode == "CMYK"
    assert np.abs(images.decode(cmyk).astype(int) - rgb.astype(int)).mean() < 8
    bilevel = Image.fromarray(np.array([[0, 255, 255]], np.uint8)).convert("1")
    np.testing.assert_array_equal(images.decode(encode(bilevel))[0], [[0, 0, 0], [255, 255, 255], [255, 255, 255]])


@pytest.mark.parametrize("fmt", ["GIF", "TIFF", "WEBP", "BMP"])
def test_still_images_of_the_other_formats_decode(fmt):
    data = encode(scene(), fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    got = images.decode(data).astype(int)
    tolerance = 40 if fmt == "GIF" else 1  # GIF: a 256-colour palette
    assert got.shape == (24, 36, 3) and np.abs(got - scene().astype(int)).mean() < tolerance


@pytest.mark.parametrize("fmt", ["GIF", "PNG", "WEBP", "TIFF"])
def test_animations_and_multi_page_images_are_refused(fmt):
    frames = [Image.fromarray(scene()), Image.fromarray(255 - scene())]
    data = encode(frames[0], fmt, save_all=True, append_images=frames[1:])
    with pytest.raises(images.UnsupportedImage, match=r"animation or multi-page image \(2 frames\)"):
        images.decode(data)


def test_floating_point_pixels_are_refused_with_a_reason():
    data = encode(Image.fromarray(np.ones((4, 4), np.float32)), "TIFF")
    with pytest.raises(images.UnsupportedImage, match="floating-point"):
        images.decode(data)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header says width x height over a tiny body: refused from the header, never decoded."""
    data = bytearray(encode(np.zeros((1, 1, 3), np.uint8)))
    ihdr = bytearray(data[12:29])  # b"IHDR" + 13 bytes
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    return bytes(data)


def test_too_large_says_the_size_and_the_limit():
    with pytest.raises(images.ImageTooLarge) as err:
        images.decode(png_header_only(20000, 20000))  # 400 megapixels: beyond even Pillow's hard limit
    assert str(err.value) == "400 megapixels is too large; the limit is 89 megapixels"
    with pytest.raises(images.ImageTooLarge) as err:
        images.decode(png_header_only(12000, 8000))  # 96 megapixels: over ours
    assert str(err.value) == "12000 x 8000 pixels (96 megapixels) is too large; the limit is 89 megapixels"
    with pytest.raises(images.ImageTooLarge, match=r"^100 x 100 pixels \(0.01 megapixels\) .* limit is 0.005"):
        images.decode(encode(np.zeros((100, 100, 3), np.uint8)), max_pixels=5000)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (
            b"these are my notes, not a picture",
            "not an image file this program can read (JPEG, PNG, BMP, GIF, TIFF or WebP)",
        ),
        (b"", "the file is empty (0 bytes)"),
        (encode(scene(), "JPEG")[:300], "damaged or incomplete (Truncated File Read)"),  # cut in the header
        (
            encode(np.kron(scene(), np.ones((4, 4, 1), np.uint8)), "JPEG")[:881],
            "damaged or incomplete (image file is truncated",
        ),  # cut in the pixels
        (encode(scene(), "PNG")[:-40], "damaged or incomplete ("),
    ],
)
def test_unreadable_files_get_one_plain_reason(data, reason):
    with pytest.raises(images.UnreadableImage) as err:
        images.decode(data, (8, 8))
    assert str(err.value).startswith(reason) and "BytesIO" not in str(err.value)
    assert isinstance(err.value, ImageError)  # printed as 'error: ...' by the commands


def test_open_image_returns_the_full_size_upright_rgb_image():
    stored = np.ascontiguousarray(np.rot90(scene(), 1))
    image = images.open_image(encode(stored, "PNG", exif=exif_with_orientation(6)))
    assert image.mode == "RGB" and image.size == (36, 24)
