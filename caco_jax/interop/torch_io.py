"""Read and write PyTorch ``torch.save`` state_dict files without importing torch.

PyTorch's default format (since 1.6) is a zip archive holding ``data.pkl`` (the
pickled dict) and one raw little-endian buffer per storage under ``data/``. Tensors
are pickled as calls to ``torch._utils._rebuild_tensor_v2(storage, offset, size,
stride, ...)``; we answer those calls with numpy views, so JAX users can convert
torchvision checkpoints without installing PyTorch (a multi-GB dependency).
Only plain state_dicts of dense tensors are supported; anything else raises an error
that says so. Writing uses torch itself (only needed to go back to PyTorch).
"""

from __future__ import annotations

import collections
import os
import pickle
import zipfile
from typing import Any

import numpy as np

from caco_jax.errors import EXIT_USAGE, WeightsError

_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _StorageType:
    def __init__(self, name: str):
        self.dtype = np.dtype(_STORAGE_DTYPES[name])


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None):
    itemsize = storage.dtype.itemsize
    if not size:
        return storage[offset : offset + 1].reshape(()).copy()
    return np.lib.stride_tricks.as_strided(
        storage[offset:], shape=tuple(size), strides=tuple(s * itemsize for s in stride)
    ).copy()


class PthNotFound(WeightsError, FileNotFoundError):
    """No file at the path given as a .pth."""


class NotAPth(WeightsError):
    """A file given as a .pth that is no PyTorch checkpoint at all: bad input (exit 2)."""

    exit_code = EXIT_USAGE


class UnsupportedPth(WeightsError, pickle.UnpicklingError):
    """A .pth holding something other than a plain state_dict of dense tensors."""


class _Unpickler(pickle.Unpickler):
    def __init__(self, fh, archive: zipfile.ZipFile, prefix: str, path: str):
        super().__init__(fh)
        self._archive, self._prefix, self._path = archive, prefix, path
        self._storages: dict[str, np.ndarray] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor_v2
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise UnsupportedPth(
            f"{self._path}: unsupported object {module}.{name} in the checkpoint; expected a plain "
            "state_dict of tensors (save one with torch.save(model.state_dict(), path))"
        )

    def persistent_load(self, pid: Any) -> np.ndarray:
        kind, storage_type, key, _location, numel = pid
        if kind != "storage":
            raise UnsupportedPth(f"{self._path}: unsupported persistent id {kind!r}")
        if key not in self._storages:
            raw = self._archive.read(f"{self._prefix}/data/{key}")
            self._storages[key] = np.frombuffer(raw, dtype=storage_type.dtype.newbyteorder("<"), count=numel)
        return self._storages[key]


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads a ``torch.save``d state_dict into ``{key: numpy array}`` (no torch needed).

    Every failure is a :class:`~caco_jax.errors.WeightsError` naming the file: ``PthNotFound`` (also a
    FileNotFoundError) for a missing file, ``UnsupportedPth`` (also an UnpicklingError) for objects
    other than tensors, and a plain ``WeightsError`` (a ValueError) for a file that is not a zip-format
    PyTorch checkpoint, is damaged, or holds something other than a state_dict; ``NotAPth`` (exit 2) for a
    file that is no PyTorch checkpoint at all.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise PthNotFound(f"checkpoint not found: {path}")
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as fh:
            legacy = fh.read(1) == b"\x80"  # a pickle: torch.save's format before torch 1.6
        if not legacy:
            raise NotAPth(f"{path} is not a PyTorch checkpoint: give the .pth file torch.save wrote")
        raise WeightsError(
            f"{path} is a PyTorch checkpoint in the legacy (torch<1.6) format; re-save it with torch>=1.6: "
            "torch.save(torch.load(p), p)"
        )
    try:
        obj = _read(path)
    except WeightsError:
        raise
    except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError, TypeError) as err:
        raise WeightsError(
            f"{path} is a damaged or unsupported PyTorch checkpoint ({type(err).__name__}: {err})"
        ) from err
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, np.ndarray) for v in obj.values()):
        raise WeightsError(f"{path}: expected a dict of tensors (a state_dict), got {type(obj).__name__}")
    return dict(obj)


def pth_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` is not a zip-format PyTorch checkpoint, from its directory alone (None: it looks like one)."""
    try:
        if not zipfile.is_zipfile(path):
            return "not a zip-format PyTorch checkpoint (a .pth saved by torch>=1.6)"
        with zipfile.ZipFile(path) as archive:
            if not any(n.endswith("/data.pkl") or n == "data.pkl" for n in archive.namelist()):
                return "a zip archive without data.pkl, not a PyTorch checkpoint"
    except (OSError, zipfile.BadZipFile) as err:
        return f"cannot be read ({err})"
    return None


def _read(path: str) -> Any:
    with zipfile.ZipFile(path) as archive:
        pkl = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pkl) != 1:
            raise WeightsError(
                f"{path}: expected one data.pkl in the archive, found {len(pkl)}: not a PyTorch checkpoint"
            )
        prefix = pkl[0][: -len("/data.pkl")] if "/" in pkl[0] else ""
        byteorder = f"{prefix}/byteorder"
        if byteorder in archive.namelist() and archive.read(byteorder).strip() != b"little":
            raise WeightsError(f"{path}: big-endian checkpoints are not supported")
        with archive.open(pkl[0]) as fh:
            return _Unpickler(fh, archive, prefix, path).load()


def save_state_dict(state_dict: dict[str, np.ndarray], path: str | os.PathLike) -> None:
    """Writes ``{key: array}`` as a torch state_dict file (needs the ``torch`` extra)."""
    try:
        import torch
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("exporting to PyTorch needs torch: pip install 'caco-jax[torch]'") from e
    torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state_dict.items()}, os.fspath(path))
