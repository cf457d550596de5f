"""The machine a campaign ran on, as JSON: GPUs and driver (nvidia-smi), jax / jaxlib / CUDA plugin and
other versions, JAX's devices and backend version, torch's CUDA and cuDNN. Run as its own process
(``python tools/campaign/envinfo.py OUT.json``) so that the GPU is free again when it exits."""

from __future__ import annotations

import json
import os
import pathlib
import platform
import re
import subprocess
import sys
from importlib import metadata
from typing import Any

PACKAGES = (
    "jax",
    "jaxlib",
    "jax-cuda12-plugin",
    "jax-cuda12-pjrt",
    "jax-cuda13-plugin",
    "jax-cuda13-pjrt",
    "flax",
    "optax",
    "orbax-checkpoint",
    "grain",
    "tensorflow-datasets",
    "numpy",
    "torch",
    "torchvision",
    "nvidia-cudnn-cu12",
    "nvidia-cudnn-cu13",
)
SMI_FIELDS = ("name", "driver_version", "memory.total", "compute_cap", "pci.bus_id")


def nvidia_smi() -> list[dict[str, str]]:
    """One dict per GPU, or [] without nvidia-smi."""
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={','.join(SMI_FIELDS)}", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [
        dict(zip(SMI_FIELDS, (x.strip() for x in line.split(",")), strict=False))
        for line in out.splitlines()
        if line.strip()
    ]


def versions() -> dict[str, str]:
    """Python's and the installed packages' versions that matter here."""
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def jax_info() -> dict[str, Any]:
    """JAX's default backend: platform, devices, and its version string (CUDA and cuDNN on GPUs)."""
    try:
        import jax

        devices = jax.devices()
        info: dict[str, Any] = {
            "platform": devices[0].platform,
            "device_kind": devices[0].device_kind,
            "device_count": len(devices),
        }
        version = getattr(devices[0].client, "platform_version", "")
        info["platform_version"] = version
        for word in ("cuda", "cudnn"):  # e.g. "cuda 12080", "cudnn_version: 9.8.0"
            found = re.search(rf"\b{word}[^0-9]*([0-9][0-9.]*)", version, re.IGNORECASE)
            if found:
                info[word] = found.group(1)
        return info
    except Exception as e:  # noqa: BLE001 -- the record must be written whatever fails
        return {"error": f"{type(e).__name__}: {e}"}


def torch_info() -> dict[str, Any]:
    """torch's CUDA and cuDNN versions, and whether it sees a GPU."""
    try:
        import torch

        return {
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
            "cuda_available": torch.cuda.is_available(),
        }
    except Exception as e:  # noqa: BLE001
        return {"error": f"{type(e).__name__}: {e}"}


def collect() -> dict[str, Any]:
    return {
        "hostname": platform.node(),
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "nvidia_smi": nvidia_smi(),
        "versions": versions(),
        "jax": jax_info(),
        "torch": torch_info(),
        "env": {k: v for k, v in os.environ.items() if k.startswith(("XLA_", "JAX_", "CUDA_VISIBLE"))},
    }


def main(argv: list[str]) -> int:
    """Writes the record to argv[1] and prints one line."""
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    info = collect()
    pathlib.Path(argv[1]).write_text(json.dumps(info, indent=2) + "\n")
    gpus = ", ".join(f"{g.get('name')} (driver {g.get('driver_version')})" for g in info["nvidia_smi"]) or "no GPU"
    print(
        f"environment: {gpus}; jax {info['versions'].get('jax')} on {info['jax'].get('platform')}; "
        f"{info['jax'].get('platform_version', '')}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
