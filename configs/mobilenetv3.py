"""Baseline: torchvision MobileNetV3-Small (SE attention), pretrained, cross-entropy (Table 2)."""

from caco_jax.configs import default


def get_config():
    c = default.get_config()
    c.model.attention = "se"
    c.loss.name = "ce"
    return c
