"""Field-of-view crop: find the bright disc a dermatoscope leaves inside a dark circular border, and crop
to the square inscribed in it (``data.fov_crop``). NumPy only: it runs on the host, where images are
decoded (``caco_jax.data.images.decode``), before they are resized to the network's input, because the
crop's size depends on the image.

Detection, on a block-averaged copy of the luminance (longer side at most ``WORK_SIDE`` pixels, then a
3 x 3 mean: JPEG noise and single bright specks in the border average away):

1. the bright level is the 95th percentile of the luminance; a pixel is inside the field of view
   when it is brighter than ``DARK`` times that level (an image darker than ``MIN_BRIGHT`` everywhere
   has no disc to find and is left alone);
2. at least two of the four corner patches must be mostly outside (dark), else there is no border;
3. every row and column gives the points where the inside starts and ends (to a fraction of a pixel,
   where the luminance crosses the threshold), except where the inside reaches the image's edge;
4. a circle is fitted to those points (algebraic least squares, then geometric Gauss-Newton steps,
   dropping points far from it, such as a dark lesion at the border or a bright label in the corner);
5. it is accepted when its radius is at least a quarter of the shorter side, its centre lies in the
   image, and it agrees with the mask: most pixels inside it bright, few outside it.

The crop is the axis-aligned square inscribed in the circle (side ``MARGIN`` * radius * sqrt(2): the
vignette's edge is soft), clipped to the image: no dark border is left, the lesion fills more of the
frame, as in HAM10000's images (cropped inside the field of view by their authors). The crop may then
be a rectangle, when the disc is cut by the image's edges. An image without a dark border, or whose
circle is not found, is returned unchanged.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

WORK_SIDE = 256
DARK = 0.3
MIN_BRIGHT = 20.0  # on the 0-255 scale
MARGIN = 0.98
_LUMA = np.asarray([0.299, 0.587, 0.114], np.float32)


@dataclasses.dataclass(frozen=True)
class Circle:
    """A field of view in the image's pixel coordinates (pixel (i, j) covers [i, i + 1) x [j, j + 1))."""

    cy: float
    cx: float
    radius: float


def _block_mean(luma: np.ndarray, factor: int) -> np.ndarray:
    h, w = luma.shape[0] // factor, luma.shape[1] // factor
    return luma[: h * factor, : w * factor].reshape(h, factor, w, factor).mean(axis=(1, 3))


def _box3(x: np.ndarray) -> np.ndarray:
    padded = np.pad(x, 1, mode="edge")
    h, w = x.shape
    out = np.zeros_like(x)
    for i in range(3):
        for j in range(3):
            out += padded[i : i + h, j : j + w]
    return out / 9.0


def _edges(values: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row of ``values`` [R, N]: where the inside (values > threshold) starts and ends, to a fraction
    of a pixel; (rows, start, end) for the rows whose inside is neither empty nor cut by the edges."""
    inside = values > threshold
    n = values.shape[1]
    rows = np.flatnonzero(inside.any(axis=1))
    first = np.argmax(inside[rows], axis=1)
    last = n - 1 - np.argmax(inside[rows, ::-1], axis=1)
    keep = (first > 0) & (last < n - 1)
    rows, first, last = rows[keep], first[keep], last[keep]

    def crossing(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
        a, b = values[rows, outer], values[rows, inner]
        return np.clip((threshold - a) / np.maximum(b - a, 1e-6), 0.0, 1.0)

    # pixel centres at j + 0.5: the edge lies between the last dark and the first bright centre
    start = first - 0.5 + crossing(first - 1, first)
    end = last + 0.5 + (1.0 - crossing(last + 1, last))
    return rows, start, end


def _fit(y: np.ndarray, x: np.ndarray) -> tuple[float, float, float]:
    """(cy, cx, r) of the circle through the points: algebraic fit, then geometric refinement with the
    points farther than 3 robust deviations (at least one pixel) from it left out."""
    a = np.stack([x, y, np.ones_like(x)], axis=1)
    d, e, f = np.linalg.lstsq(a, -(x * x + y * y), rcond=None)[0]
    cx, cy = -d / 2.0, -e / 2.0
    r = math.sqrt(max(cx * cx + cy * cy - f, 1e-12))
    keep = np.ones(len(x), bool)
    for _ in range(6):
        dist = np.hypot(x - cx, y - cy)
        residual = dist - r
        spread = 1.4826 * np.median(np.abs(residual[keep]))
        keep = np.abs(residual) <= max(1.0, 3.0 * spread)
        if keep.sum() < 3:
            break
        k = keep & (dist > 1e-9)
        jac = np.stack([-(x[k] - cx) / dist[k], -(y[k] - cy) / dist[k], -np.ones(k.sum())], axis=1)
        step = np.linalg.lstsq(jac, -residual[k], rcond=None)[0]
        cx, cy, r = cx + step[0], cy + step[1], r + step[2]
    return float(cy), float(cx), float(r)


def find_circle(image: np.ndarray) -> Circle | None:
    """The dark-bordered circular field of view of a uint8 RGB image [H, W, 3], or None (no dark border)."""
    height, width = image.shape[:2]
    factor = max(1, math.ceil(max(height, width) / WORK_SIDE))
    if min(height, width) < 8 * factor:
        return None
    luma = _box3(_block_mean(np.asarray(image[..., :3], np.float32) @ _LUMA, factor))
    h, w = luma.shape
    bright = float(np.percentile(luma, 95))
    if bright < MIN_BRIGHT:
        return None
    threshold = DARK * bright
    inside = luma > threshold
    c = max(2, min(h, w) // 16)
    corners = (inside[:c, :c], inside[:c, -c:], inside[-c:, :c], inside[-c:, -c:])
    if sum(corner.mean() < 0.5 for corner in corners) < 2:
        return None
    rows, left, right = _edges(luma, threshold)
    cols, top, bottom = _edges(luma.T, threshold)
    y = np.concatenate([rows + 0.5, rows + 0.5, top, bottom])
    x = np.concatenate([left, right, cols + 0.5, cols + 0.5])
    if len(x) < 12:
        return None
    cy, cx, r = _fit(y, x)
    if not (r >= 0.25 * min(h, w) and 0 <= cy <= h and 0 <= cx <= w):
        return None
    yy, xx = np.mgrid[0:h, 0:w]
    in_disc = np.hypot(yy + 0.5 - cy, xx + 0.5 - cx) < r
    if not in_disc.any() or in_disc.all() or inside[in_disc].mean() < 0.7 or inside[~in_disc].mean() > 0.2:
        return None
    return Circle(cy * factor, cx * factor, r * factor)


def crop_box(image: np.ndarray) -> tuple[int, int, int, int] | None:
    """(top, bottom, left, right) of the field-of-view crop of a uint8 RGB image, or None: no dark border
    (or a crop that would keep the whole image)."""
    circle = find_circle(image)
    if circle is None:
        return None
    height, width = image.shape[:2]
    half = MARGIN * circle.radius / math.sqrt(2.0)
    top, bottom = max(0, math.ceil(circle.cy - half)), min(height, math.floor(circle.cy + half))
    left, right = max(0, math.ceil(circle.cx - half)), min(width, math.floor(circle.cx + half))
    if bottom - top < 8 or right - left < 8 or (bottom - top, right - left) == (height, width):
        return None
    return top, bottom, left, right


def crop(image: np.ndarray) -> np.ndarray:
    """The image cropped to the square inscribed in its field of view, clipped to the image; the image
    itself when it has no dark circular border."""
    box = crop_box(image)
    if box is None:
        return image
    top, bottom, left, right = box
    return image[top:bottom, left:right]
