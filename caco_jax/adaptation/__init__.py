"""Adapting a trained run to a new clinic's unlabelled images: BatchNorm statistics re-estimated on them
(``batchnorm``), their class prior estimated by EM (``prior``), and the adapted run written beside the
source run (``run``; ``caco-jax adapt``)."""
