"""Data parallelism: a 1-D ('data',) device mesh, shardings, and host -> device batches.

This is the successor of ``jax.pmap`` (in maintenance mode since JAX 0.8): the train
step is one ``jax.jit`` program whose batch argument is sharded along 'data' and
whose state is replicated; XLA partitions it, so BatchNorm means over the batch are
global (all-reduced) and the gradient is the global-batch gradient, exactly as on
one device. Multi-host: call :func:`initialize_distributed` first; each process
then reads and feeds only its own rows of every global batch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXIS = "data"


def initialize_distributed(
    enabled: bool, *, coordinator_address: str = "", num_processes: int = 0, process_id: int = -1
) -> None:
    """Multi-host setup: ``jax.distributed.initialize``, before anything else touches JAX.

    With empty / 0 / -1 arguments the cluster is read from the environment (SLURM, Open
    MPI, Kubernetes, ...). On CPUs the collectives go through gloo.
    """
    if not enabled:
        return
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU devices only; GPUs use NCCL
    jax.distributed.initialize(
        coordinator_address=coordinator_address or None,
        num_processes=num_processes or None,
        process_id=None if process_id < 0 else process_id,
    )


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


def to_global(local: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """This process's rows of a global batch (host numpy) -> sharded global jax.Arrays.

    Every process passes its own ``B / process_count`` rows (the pipeline reads only
    those); with one process the local batch is the global batch.
    """
    sharding = data_sharding(mesh)
    out: dict[str, Any] = {}
    for k, v in local.items():
        v = np.asarray(v)
        out[k] = jax.make_array_from_process_local_data(sharding, v, (v.shape[0] * jax.process_count(), *v.shape[1:]))
    return out
