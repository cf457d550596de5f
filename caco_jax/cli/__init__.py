"""The ``caco-jax`` commands, one module each (``scripts/*.py`` are thin shims over them)."""
