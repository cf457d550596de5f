"""Compiled forward passes shared by the test modules (one nnx.jit each, so one cache entry per shape)."""

from flax import nnx


@nnx.jit
def logits(model, x):
    return model(x)


@nnx.jit
def logits_and_features(model, x):
    """(logits, pooled features) in one compiled call."""
    return model(x), model.features(x)
