"""Data parallelism: a 1-D ('data',) device mesh, shardings, and host -> device batches.

This is the successor of ``jax.pmap`` (in maintenance mode since JAX 0.8): the train
step is one ``jax.jit`` program whose batch argument is sharded along 'data' and
whose state is replicated; XLA partitions it, so BatchNorm means over the batch are
global (all-reduced) and the gradient is the global-batch gradient, exactly as on
one device. Multi-host: call :func:`initialize_distributed` first; each process
then feeds its own slice of every global batch.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXIS = "data"


def initialize_distributed(enabled: bool) -> None:
    """Multi-host setup (jax.distributed.initialize reads the cluster from the environment)."""
    if enabled:
        jax.distributed.initialize()


def make_mesh(num_devices: int | None = None) -> Mesh:
    """A ('data',) mesh over all (or the first ``num_devices``) devices, Auto axis type."""
    devices = jax.devices()
    if num_devices is not None:
        if not 1 <= num_devices <= len(devices):
            raise ValueError(f"asked for {num_devices} devices, {len(devices)} available")
        devices = devices[:num_devices]
    return jax.make_mesh((len(devices),), (AXIS,), axis_types=(jax.sharding.AxisType.Auto,), devices=devices)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def data_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over 'data'."""
    return NamedSharding(mesh, P(AXIS))


def check_batch_size(batch_size: int, mesh: Mesh, what: str = "batch_size") -> None:
    """Raises a ValueError when a global batch cannot be split evenly over the devices."""
    n = mesh.devices.size
    if batch_size % n:
        raise ValueError(
            f"{what}={batch_size} is not divisible by the {n} devices of the mesh; pick a multiple of {n} "
            f"(e.g. --config.{what}={max(n, batch_size // n * n)})"
        )
    if batch_size % jax.process_count():
        raise ValueError(f"{what}={batch_size} is not divisible by the {jax.process_count()} processes")


def process_slice(global_batch: int) -> slice:
    """This process's rows of a global batch that every process reads in full."""
    per = global_batch // jax.process_count()
    i = jax.process_index()
    return slice(i * per, (i + 1) * per)


def to_global(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Host numpy global batch -> sharded global jax.Arrays (each process gives its slice)."""
    sharding = data_sharding(mesh)
    out: dict[str, Any] = {}
    for k, v in batch.items():
        v = np.asarray(v)
        rows = process_slice(v.shape[0])
        out[k] = jax.make_array_from_process_local_data(sharding, v[rows], v.shape)
    return out
