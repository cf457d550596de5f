"""Shared test setup: CPU backend, low XLA optimisation, persistent compile cache.

Compile time dominates these tests, so the environment is fixed *before* JAX is
imported anywhere, and expensive compiled functions live in session fixtures.
"""

from __future__ import annotations

import os
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_backend_optimization_level" not in _flags:
    os.environ["XLA_FLAGS"] = (_flags + " --xla_backend_optimization_level=0").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Scripts called in-process (evaluate, predict) point the cache here too, not at ~/.cache.
os.environ.setdefault("CACO_JAX_COMPILE_CACHE", str(ROOT / ".cache" / "jax"))

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_compilation_cache_dir", str(ROOT / ".cache" / "jax"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

if os.environ.get("CACO_JAX_TEST_TOYS") == "1":  # register the toy extensions (tests/toys/, test_architecture.py)
    import importlib

    for _toy in sorted((ROOT / "tests" / "toys").glob("[!_]*.py")):
        importlib.import_module(f"toys.{_toy.stem}")


def pytest_sessionstart(session: pytest.Session) -> None:
    """In CI the torch and app extras and the shared real data are always there: a skip would hide a gap."""
    if os.environ.get("CI"):
        try:
            import torch  # noqa: F401
        except ImportError:
            pytest.exit(
                "CI must install the torch extra (pip install -e '.[torch,onnx,dev]'): parity tests would skip", 2
            )
        try:
            import gradio  # noqa: F401
        except ImportError:
            pytest.exit(
                "CI must install the dev extra, which includes the app extra (pip install -e '.[torch,onnx,dev]'): "
                "the web page's tests would skip",
                2,
            )
        try:
            import onnxruntime  # noqa: F401
            import onnxscript  # noqa: F401
        except ImportError:
            pytest.exit("CI must install the onnx extra (pip install -e '.[torch,onnx,dev]'): ONNX tests would skip", 2)
        if not (_real_data_dir() / "HAM10000_metadata.csv").is_file():
            pytest.exit(f"CI must have the real HAM10000 data at {_real_data_dir()}", 2)


def _real_data_dir() -> pathlib.Path:
    env = os.environ.get("CACO_HAM10000_DIR")
    if env:
        return pathlib.Path(env)
    return ROOT.parent / "shared" / "data" / "ham10000_real"


@pytest.fixture(scope="session")
def real_data_dir() -> pathlib.Path:
    """The shared real HAM10000 copy (images_200x150/, metadata, pretrained/)."""
    path = _real_data_dir()
    if not (path / "HAM10000_metadata.csv").is_file():
        pytest.skip(
            f"real HAM10000 data not found at {path}: set CACO_HAM10000_DIR to a folder "
            "with HAM10000_metadata.csv and images_200x150/ (CI always has ../shared)"
        )
    return path


@pytest.fixture(scope="session")
def imagenet_backbone_pth(real_data_dir: pathlib.Path) -> pathlib.Path:
    """torchvision's real ImageNet mobilenet_v3_small weights, backbone only."""
    path = real_data_dir / "pretrained" / "mobilenet_v3_small-047dcff4-features.pth"
    if not path.is_file():
        pytest.skip(f"pretrained backbone not found at {path}")
    return path
