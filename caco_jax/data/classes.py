"""HAM10000 class vocabulary and the constants every module agrees on."""

from __future__ import annotations

# Fixed label order (alphabetical dx codes, as in the HAM10000 metadata).
CLASS_NAMES: tuple[str, ...] = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
NUM_CLASSES: int = len(CLASS_NAMES)

# Image counts of the full HAM10000 release, in CLASS_NAMES order.
HAM10000_COUNTS: tuple[int, ...] = (327, 514, 1099, 115, 1113, 6705, 142)

# ImageNet normalisation used by torchvision's pretrained weights (RGB, 0-1 scale).
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

# Per-image metadata a build may store beside the label, carried by Source.meta and saved with the
# predictions: how the diagnosis was confirmed, age (NaN unknown), sex, body site, acquisition source.
META_FIELDS: tuple[str, ...] = ("dx_type", "age", "sex", "localization", "source")
