"""JPEG re-compression of training images, the one acquisition augmentation that runs on the host
(an encoder is needed): ``data.augment.jpeg_p`` and ``jpeg_quality``, applied by the training pipeline
(``caco_jax.data.pipeline``, train split only) to each decoded image, before the batch goes to the
accelerator. Each image's draw is seeded by (seed, batch index, row of the global batch), so a resumed
or multi-process stream re-compresses exactly as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import io

import numpy as np
from PIL import Image

_STREAM = 0x4A504547  # 'JPEG': keeps these draws apart from the pipeline's other seeded draws


def round_trip(image: np.ndarray, quality: int) -> np.ndarray:
    """uint8 [H, W, 3] encoded as a JPEG at ``quality`` (Pillow's defaults otherwise: 4:2:0 chroma
    subsampling) and decoded again."""
    out = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(out, format="JPEG", quality=int(quality))
    return np.asarray(Image.open(out).convert("RGB"), np.uint8)


@dataclasses.dataclass(frozen=True)
class Recompression:
    """Re-compress each image with probability ``p`` at a quality uniform in ``quality`` (inclusive)."""

    p: float
    quality: tuple[int, int]

    def draw(self, seed: int, batch: int, row: int) -> int | None:
        """The quality row ``row`` of batch ``batch`` is re-compressed at, or None (left as it is)."""
        rng = np.random.default_rng([_STREAM, seed, batch, row])
        if rng.random() >= self.p:
            return None
        return int(rng.integers(self.quality[0], self.quality[1] + 1))

    def apply(self, images: np.ndarray, *, seed: int, batch: int, rows: range) -> np.ndarray:
        """The uint8 batch [N, H, W, 3] (rows ``rows`` of global batch ``batch``), some images re-compressed."""
        out = np.array(images, np.uint8)
        for i, row in enumerate(rows):
            quality = self.draw(seed, batch, row)
            if quality is not None:
                out[i] = round_trip(out[i], quality)
        return out
