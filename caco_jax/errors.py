"""Errors a user can act on (a bad flag, a missing file, damaged data), with the commands' exit codes.

Every command prints one of these as ``error: <message>`` without a traceback and exits
with its ``exit_code``; anything else is a bug and keeps its traceback. The messages say
what is wrong (naming the file, row or key) and what to do.

Exit codes (the same for every ``caco-jax`` command):

====  =====================================================================
0     done
1     failed (data, files, weights, a numerical failure, a bug)
2     usage or configuration error: nothing was started
75    interrupted (SIGTERM / SIGINT) after saving a checkpoint: rerun the
      same command to resume (75 is ``EX_TEMPFAIL``: try again later)
====  =====================================================================
"""

from __future__ import annotations

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 75


class CacoError(Exception):
    """Base class: a problem with what the user gave caco-jax, explained in the message."""

    exit_code = EXIT_FAILURE


class UsageError(CacoError, ValueError):
    """A command-line flag or config value is wrong; nothing was started."""

    exit_code = EXIT_USAGE


class ConfigError(UsageError):
    """A config field is unknown, out of range, or names something that does not exist."""


class RunDirError(CacoError, FileNotFoundError):
    """A --workdir or weights directory is not what the command needs (a bad flag: nothing was started)."""

    exit_code = EXIT_USAGE


class RunTooOld(CacoError):
    """A run (or weights) written by an older caco-jax, before checkpoints held the best weights and
    recorded checksums: this version no longer reads it. Nothing was started."""

    exit_code = EXIT_USAGE

    def __init__(self, workdir: object, what: str):
        super().__init__(
            f"{workdir} was written by an older caco-jax ({what}), in a format this version no longer reads: "
            "train it again in a new --workdir (weights from caco-jax convert: convert them again)"
        )


class WeightsError(CacoError, ValueError):
    """Weights (a checkpoint, a .pth, a converted directory) do not fit or cannot be read."""


class DownloadError(CacoError, OSError):
    """A file could not be fetched or failed its checksum."""


class ImageError(CacoError, ValueError):
    """An image file cannot be used (unreadable, damaged, too large, an unsupported kind): bad input, like a
    bad flag (exit 2)."""

    exit_code = EXIT_USAGE
