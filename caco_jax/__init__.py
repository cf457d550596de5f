"""caco-jax: MobileNetV3-CaCo skin-lesion classification in JAX/Flax NNX."""

__version__ = "0.1.0"
