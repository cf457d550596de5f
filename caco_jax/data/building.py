"""What the TFDS builds of this project share: TFDS's notes on its own look-ups silenced, and a
build that fails leaving no folders behind."""

from __future__ import annotations

import contextlib
import logging
import pathlib
import shutil
from collections.abc import Iterator


class _LookupNotes(logging.Filter):
    """Drops TFDS's warnings about its own look-ups ('Variant folder ... has no dataset_info.json' for a
    build not made yet, 'Using custom data configuration' for every image size): noise before the
    error or the progress that matters."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(("Variant folder ", "Using custom data configuration"))


_NOTES = _LookupNotes()


def quiet_lookups() -> None:
    """Installs the filter on absl's logger, through which TFDS logs (idempotent)."""
    logger = logging.getLogger("absl")
    if _NOTES not in logger.filters:
        logger.addFilter(_NOTES)


@contextlib.contextmanager
def nothing_left_on_failure(release: pathlib.Path) -> Iterator[None]:
    """Around a build into ``release`` (``data_dir/<dataset>/<config>``): if it raises, the folders it
    created are removed (TFDS makes the release's folder and a ``.config`` note in the dataset's folder
    before it reads anything); folders that existed before, and other releases' builds, stay."""
    levels = (release.parent.parent, release.parent, release)
    created = [p for p in levels if not p.exists()]
    try:
        yield
    except BaseException:
        for path in reversed(created):
            if path == release:
                shutil.rmtree(path, ignore_errors=True)  # a skeleton: a complete build is only renamed in at the end
                continue
            with contextlib.suppress(OSError):
                (path / ".config" / "metadata.json").unlink(missing_ok=True)
                (path / ".config").rmdir()
            with contextlib.suppress(OSError):
                path.rmdir()  # only if empty
        raise


class LocalBuild:
    """Mixin for this project's TFDS builders, which read local files only: TFDS's own line before a build
    ('Downloading and preparing dataset ...') would tell a user of the no-download demo that something is
    downloaded, and its line after one that it was downloaded; these say what happens instead."""

    def _log_download_bytes(self) -> None:
        info = self.info  # type: ignore[attr-defined]
        print(f"building {info.full_name} from local files into {self.data_dir} (nothing is downloaded)")  # type: ignore[attr-defined]

    def _log_download_done(self) -> None:
        print(f"built {self.info.full_name}")  # type: ignore[attr-defined]
