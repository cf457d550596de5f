"""Errors raised for problems with the user's data (not bugs in caco-jax)."""

from __future__ import annotations

from caco_jax.errors import EXIT_USAGE, CacoError


class DataError(CacoError):
    """Base class: something is wrong with the data a user handed over."""


class ManualDirError(DataError, FileNotFoundError):
    """The manual download folder, or the metadata table inside it, is missing."""


class MetadataError(DataError, ValueError):
    """A metadata table is malformed or disagrees with the images found."""


class CorruptImageError(DataError, ValueError):
    """An image does not decode (raised when corrupt images are not skipped)."""


class DataNotBuiltError(DataError, FileNotFoundError):
    """No complete TFDS build where the pipeline was told to look (a config to fix: nothing was started)."""

    exit_code = EXIT_USAGE
