"""torchvision's ImageNet MobileNetV3 weights: downloaded once into the user cache, checked, resumable.

``--config.model.pretrained=imagenet`` (and ``caco-jax convert --pth imagenet``) call
:func:`fetch`, which returns ``<cache>/weights/<file name>`` once that file's SHA-256 starts
with the hex digits its name carries (torch.hub's ``name-<sha256 prefix>.pth`` convention,
e.g. ``mobilenet_v3_small-047dcff4.pth``). A download goes to ``<file name>.part``; an
interrupted one is resumed with an HTTP ``Range`` request (from the start again when the
server ignores it) and only a complete, checked file is renamed into place. A ``<file name>.lock``
beside it keeps concurrent runs from writing the same download.

Where things are, in order of precedence:

* cache: the ``cache_dir`` argument, else ``$CACO_JAX_CACHE/weights``, else
  ``$XDG_CACHE_HOME/caco_jax/weights``, else ``~/.cache/caco_jax/weights``;
* server: the ``base_url`` argument, else ``$CACO_JAX_WEIGHTS_URL`` (a mirror, or a local
  server in tests), else ``https://download.pytorch.org/models``.

Without a network the error names the URL to fetch by hand and the two ways to use the file.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
import os
import pathlib
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import BinaryIO

from tqdm import tqdm

from caco_jax.errors import DownloadError, UsageError

CACHE_ENV = "CACO_JAX_CACHE"
URL_ENV = "CACO_JAX_WEIGHTS_URL"
DEFAULT_BASE_URL = "https://download.pytorch.org/models"
#: torchvision's IMAGENET1K_V1 files (MobileNet_V3_{Small,Large}_Weights), keyed by caco-jax arch.
FILES = {
    "small": "mobilenet_v3_small-047dcff4.pth",
    "large": "mobilenet_v3_large-8738ca79.pth",
}
TIMEOUT_S = 30.0
_CHUNK = 1 << 16
_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,})\.")
_log = logging.getLogger(__name__)


def file_name(arch: str) -> str:
    """torchvision's ImageNet file name for ``arch`` ('small', 'large' or 'mobilenet_v3_small', ...)."""
    key = arch.removeprefix("mobilenet_v3_")
    if key not in FILES:
        raise UsageError(
            f"torchvision has no ImageNet weights for arch {arch!r} (it has: {', '.join(sorted(FILES))}); "
            "use another arch, a .pth file, or '' (from scratch) for model.pretrained"
        )
    return FILES[key]


def hash_prefix(name: str) -> str:
    """The SHA-256 prefix a torch.hub-style file name carries ('047dcff4' for 'mobilenet_v3_small-047dcff4.pth')."""
    found = _HASH_IN_NAME.search(name)
    if found is None:
        raise ValueError(f"{name!r} does not carry a SHA-256 prefix (expected NAME-<8+ hex digits>.EXT)")
    return found.group(1)


def weights_url(arch: str, base_url: str | None = None) -> str:
    """Where ``arch``'s file is fetched from (``base_url``, else ``$CACO_JAX_WEIGHTS_URL``, else torchvision's)."""
    base = base_url or os.environ.get(URL_ENV) or DEFAULT_BASE_URL
    return f"{base.rstrip('/')}/{file_name(arch)}"


def default_cache_dir() -> pathlib.Path:
    """``$CACO_JAX_CACHE/weights``, else ``$XDG_CACHE_HOME/caco_jax/weights``, else ``~/.cache/caco_jax/weights``."""
    root = os.environ.get(CACHE_ENV)
    if root:
        return pathlib.Path(root).expanduser() / "weights"
    base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return pathlib.Path(base).expanduser() / "caco_jax" / "weights"


def sha256_of(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(
    arch: str,
    *,
    cache_dir: str | os.PathLike | None = None,
    base_url: str | None = None,
    progress: bool = True,
    timeout: float = TIMEOUT_S,
) -> pathlib.Path:
    """Path of torchvision's ImageNet weights for ``arch`` in the cache, downloaded and checked if needed.

    A cached file whose SHA-256 does not start with its name's prefix is deleted and fetched
    again. Raises :class:`DownloadError` when the server cannot be reached or stops early
    (what was received is kept and a rerun resumes it; the message says how to fetch the
    file by hand) and when the downloaded file fails the check (it is deleted).
    """
    name = file_name(arch)
    folder = pathlib.Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    dest, url = folder / name, weights_url(arch, base_url)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DownloadError(
            f"cannot create the weights cache {folder} ({err}): set {CACHE_ENV} to a writable "
            f"folder, or fetch {url} by hand and pass --config.model.pretrained=/path/to/{name}"
        ) from err
    with _exclusive(folder / f"{name}.lock"):
        if _cached_and_intact(dest):
            return dest
        part = folder / f"{name}.part"
        _log.info("downloading %s to %s", url, dest)
        _download(url, part, dest, progress=progress, timeout=timeout)
        _verify(part, hash_prefix(name), url)
        os.replace(part, dest)
    return dest


def _cached_and_intact(dest: pathlib.Path) -> bool:
    """True when ``dest`` is there and passes its hash check; a damaged copy is deleted."""
    if not dest.is_file():
        return False
    expected, actual = hash_prefix(dest.name), sha256_of(dest)
    if actual.startswith(expected):
        return True
    _log.warning(
        "cached %s is damaged (SHA-256 %s..., expected %s...): downloading it again",
        dest,
        actual[: len(expected)],
        expected,
    )
    dest.unlink()
    return False


@contextlib.contextmanager
def _exclusive(lock_path: pathlib.Path) -> Iterator[None]:
    """Holds an exclusive lock on ``lock_path`` so concurrent runs do not write the same ``.part``."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    with open(lock_path, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _log.info("another process is downloading %s; waiting for it", lock_path.with_suffix(""))
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _download(url: str, part: pathlib.Path, dest: pathlib.Path, *, progress: bool, timeout: float) -> None:
    """Completes ``part`` from ``url``, resuming what is already there; network trouble -> DownloadError."""
    for _ in range(2):  # the second round only after a 416 for a partial file that is not a prefix
        offset = part.stat().st_size if part.is_file() else 0
        request = urllib.request.Request(url, headers={"User-Agent": "caco-jax"})
        if offset:
            request.add_header("Range", f"bytes={offset}-")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                _receive(response, part, offset, desc=dest.name, progress=progress)
            return
        except urllib.error.HTTPError as err:
            if err.code == 416 and offset:  # Range Not Satisfiable: complete already, or not this file
                if _content_range_total(err.headers.get("Content-Range")) == offset:
                    return
                part.unlink()
                continue
            raise DownloadError(_manual_message(url, part, dest, f"HTTP {err.code} {err.reason}")) from err
        except (OSError, http.client.HTTPException) as err:  # refused, DNS, timeout, connection cut
            raise DownloadError(_manual_message(url, part, dest, str(getattr(err, "reason", None) or err))) from err
    raise DownloadError(_manual_message(url, part, dest, "the server refused every byte range"))


def _receive(response: http.client.HTTPResponse, part: pathlib.Path, offset: int, *, desc: str, progress: bool) -> None:
    """Streams the body into ``part``: appended after a matching 206, from the start otherwise."""
    resumed = offset > 0 and response.status == 206
    if resumed and _content_range_start(response.headers.get("Content-Range")) != offset:
        part.unlink()
        raise OSError(
            f"the server answered bytes={offset}- with {response.headers.get('Content-Range')!r}; "
            "the partial download was discarded"
        )
    if not resumed:
        offset = 0  # a plain 200 (the server ignores Range): start over
        if part.exists():
            _log.info("the server does not resume downloads: restarting %s", part.name)
    length = response.headers.get("Content-Length")
    total = offset + int(length) if length and length.isdigit() else None
    with (
        open(part, "ab" if resumed else "wb") as fh,
        tqdm(
            total=total,
            initial=offset,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=desc,
            disable=not progress,
            dynamic_ncols=True,
        ) as bar,
    ):
        _copy(response, fh, bar)
    size = part.stat().st_size
    if total is not None and size < total:
        raise OSError(f"the connection closed after {size} of {total} bytes")


def _copy(source: http.client.HTTPResponse, target: BinaryIO, bar: tqdm) -> None:
    """Copies what arrives as it arrives (``read1``), so a timeout loses nothing already received."""
    read = getattr(source, "read1", source.read)
    while chunk := read(_CHUNK):
        target.write(chunk)
        bar.update(len(chunk))


def _content_range_start(value: str | None) -> int | None:
    found = re.fullmatch(r"\s*bytes\s+(\d+)-\d+/(?:\d+|\*)\s*", value or "")
    return int(found.group(1)) if found else None


def _content_range_total(value: str | None) -> int | None:
    found = re.fullmatch(r"\s*bytes\s+(?:\*|\d+-\d+)/(\d+)\s*", value or "")
    return int(found.group(1)) if found else None


def _verify(part: pathlib.Path, expected: str, url: str) -> None:
    """Deletes ``part`` and raises DownloadError unless its SHA-256 starts with ``expected``."""
    actual = sha256_of(part)
    if not actual.startswith(expected):
        part.unlink()
        raise DownloadError(
            f"{url} sent a file whose SHA-256 starts with {actual[: len(expected)]}, not {expected} as its name "
            "says (a proxy, captive portal or damaged mirror?); it was deleted. Rerun to download it again, or "
            f"fetch it by hand, check that `sha256sum` starts with {expected}, and pass "
            "--config.model.pretrained=/path/to/file.pth"
        )


def _manual_message(url: str, part: pathlib.Path, dest: pathlib.Path, reason: str) -> str:
    """What to do when ``url`` cannot be downloaded from here."""
    kept = part.stat().st_size if part.is_file() else 0
    resume = (
        f"a rerun resumes the partial download ({kept} bytes kept in {part})"
        if kept
        else "a rerun tries again and resumes any partial download"
    )
    return (
        f"could not download {url} ({reason}). Fetch that URL by hand on a machine with internet "
        f"(e.g. curl -fLO {url}), then either put the file at {dest} (it is checked and used from there) or "
        f"pass it directly: --config.model.pretrained=/path/to/{dest.name} (caco-jax convert: --pth "
        f"/path/to/{dest.name}); {URL_ENV} can point at a mirror. Once online, {resume}."
    )
