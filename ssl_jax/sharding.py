"""Device mesh and the shardings the trainer uses: batch-sharded data, replicated state, except
large non-parameter state (memory banks, queues), whose rows are split over the devices.

Everything runs as `jax.jit` over global arrays: XLA inserts the
collectives, so BatchNorm statistics and contrastive logits are computed over the global batch.
"""
from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def make_mesh() -> Mesh:
    """A 1-D mesh over every device of every process, axis name 'data'."""
    return Mesh(np.asarray(jax.devices()), (DATA_AXIS,))


def data_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over devices."""
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


# A model-state leaf at least this large is split over the devices along axis 0 when that axis
# divides evenly: an ImageNet InsDis bank (1.28M x 128 fp32, 655 MB) would otherwise be copied
# onto every device. Parameters stay replicated (data parallelism).
SHARD_STATE_BYTES = 64 * 2**20


def state_leaf_sharding(mesh: Mesh, leaf, min_bytes: int = SHARD_STATE_BYTES) -> NamedSharding:
    """Row-sharded when `leaf` (anything with .shape and .dtype) is >= min_bytes and its first
    axis divides by the device count; replicated otherwise."""
    n = mesh.devices.size
    nbytes = int(np.prod(leaf.shape)) * np.dtype(leaf.dtype).itemsize
    if leaf.ndim >= 1 and nbytes >= min_bytes and leaf.shape[0] % n == 0:
        return NamedSharding(mesh, P(DATA_AXIS))
    return replicated(mesh)


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assemble this process's slice of the batch into global arrays sharded on axis 0."""
    sharding = data_sharding(mesh)
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch)


def check_batch_divisible(global_batch_size: int, mesh: Mesh) -> None:
    n = mesh.devices.size
    if global_batch_size % n:
        raise ValueError(
            f"batch_size={global_batch_size} is not divisible by the {n} devices of the mesh; "
            f"choose a multiple of {n}")
