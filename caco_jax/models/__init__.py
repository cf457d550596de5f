"""Flax NNX MobileNetV3 family with a pluggable attention slot."""
