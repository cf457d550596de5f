"""MobileNetV3-CaCo with the joint focal+LDAM loss: the paper's best model (Table 4)."""

from caco_jax.configs import default


def get_config():
    return default.get_config()
