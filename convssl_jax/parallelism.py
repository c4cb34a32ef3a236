"""Devices and processes: the ('data', 'fsdp') mesh, shardings, batches onto the mesh, process sync.

One mesh over all devices; batches are sharded over both axes, parameters and optimizer state are
replicated, or sharded over 'fsdp' when it is > 1. Multi-process runs start through
`initialize_distributed`; every process then reads its own share of each global batch.
"""

import os
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

BATCH_AXES = ('data', 'fsdp')
# Environment variables of the cluster managers jax.distributed reads itself.
CLUSTER_VARIABLES = ('SLURM_NTASKS', 'OMPI_COMM_WORLD_SIZE', 'TPU_WORKER_ID', 'CLOUD_TPU_TASK_ID',
                     'JAX_COORDINATOR_ADDRESS')


def make_mesh(fsdp: int = 1) -> jax.sharding.Mesh:
  """All devices as (data, fsdp); data parallel by default."""
  n = jax.device_count()
  if fsdp < 1 or n % fsdp:
    raise ValueError(f'train.fsdp={fsdp} does not divide the {n} devices')
  auto = (jax.sharding.AxisType.Auto,) * 2
  return jax.make_mesh((n // fsdp, fsdp), BATCH_AXES, axis_types=auto)


def initialize_distributed(fsdp: int = 1, coordinator_address: str | None = None,
                           num_processes: int | None = None, process_id: int | None = None) -> None:
  """jax.distributed for multi-process runs: an explicit coordinator, or what TPU pods, SLURM and
  Open MPI put in the environment (jax detects those itself); then the mesh's device groups
  connected. Alone (none of these), nothing happens."""
  if coordinator_address:
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
  elif any(v in os.environ for v in CLUSTER_VARIABLES):
    jax.distributed.initialize()
  else:
    return
  connect_processes(fsdp)


def connect_processes(fsdp: int = 1) -> None:
  """One collective over every device group of the (data, fsdp) mesh, so that a multi-process
  run connects them all now. Call it right after `jax.distributed.initialize` (a rendezvous),
  while the processes are in step.

  On CPU, JAX's gloo collectives connect a group at its first collective and give the other
  processes 30 s to arrive, whatever `--xla_cpu_collective_timeout_seconds` says; a first
  train step that one process compiles half a minute later than another (a loaded machine)
  then fails with 'Gloo context initialization failed'. Connected groups wait as long as needed.
  """
  if jax.process_count() == 1:
    return
  mesh = make_mesh(fsdp)
  spec = P(BATCH_AXES)
  ones = jax.make_array_from_process_local_data(NamedSharding(mesh, spec),
                                                np.ones(jax.local_device_count(), np.float32))
  sums = lambda x: sum(jax.lax.psum(x, axes) for axes in (BATCH_AXES, 'data', 'fsdp'))
  jax.block_until_ready(jax.jit(jax.shard_map(sums, mesh=mesh, in_specs=spec,
                                              out_specs=spec))(ones))


def sync_processes(name: str) -> None:
  """Waits until every process of a multi-process run reaches this `name`d point (no-op alone)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def global_sum(x: float) -> float:
  """The sum of a host value over all processes."""
  if jax.process_count() == 1:
    return x
  from jax.experimental import multihost_utils
  return float(np.sum(multihost_utils.process_allgather(np.float32(x))))


def state_sharding(mesh: jax.sharding.Mesh, state: Any) -> Any:
  """Replicated leaves, or with fsdp > 1 each array sharded over 'fsdp' along its largest
  divisible axis (small arrays stay replicated: sharding them saves nothing)."""
  fsdp = mesh.shape['fsdp']

  def spec(leaf):
    shape = getattr(leaf, 'shape', ())
    if fsdp == 1 or np.prod(shape, dtype=np.int64) < 4096:
      return NamedSharding(mesh, P())
    axes = [a for a in np.argsort(shape)[::-1] if shape[a] % fsdp == 0]
    if not axes:
      return NamedSharding(mesh, P())
    parts = [None] * len(shape)
    parts[axes[0]] = 'fsdp'
    return NamedSharding(mesh, P(*parts))

  return jax.tree.map(spec, state)


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(BATCH_AXES))


def to_device(batch: dict[str, np.ndarray], sharding: NamedSharding,
              keys) -> dict[str, jax.Array]:
  """This process's share of the batch's `keys` (those present) -> global arrays sharded over
  the batch axes."""
  return {k: jax.make_array_from_process_local_data(sharding, batch[k]) for k in keys if k in batch}


def check_batch_size(batch_size: int) -> int:
  """The per-process batch of a global `batch_size`, which every device must share evenly."""
  if batch_size % jax.device_count():
    raise ValueError(f'data.batch_size={batch_size} is not divisible by the '
                     f'{jax.device_count()} devices')
  return batch_size // jax.process_count()
