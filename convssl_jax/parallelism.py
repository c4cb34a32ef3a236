"""Devices and processes: the ('data', 'fsdp') mesh, shardings, batches onto the mesh, process sync.

One mesh over all devices; batches are sharded over both axes, parameters and optimizer state are
replicated, or sharded over 'fsdp' when it is > 1. Multi-process runs start through
`initialize_distributed`; every process then reads its own share of each global batch.
"""

import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec as P

from convssl_jax import errors

BATCH_AXES = ('data', 'fsdp')
DISTRIBUTED = ('auto', 'on', 'off')


def make_mesh(fsdp: int = 1) -> jax.sharding.Mesh:
  """All devices as (data, fsdp); data parallel by default."""
  n = jax.device_count()
  if fsdp < 1 or n % fsdp:
    raise ValueError(f'train.fsdp={fsdp} does not divide the {n} devices')
  auto = (jax.sharding.AxisType.Auto,) * 2
  return jax.make_mesh((n // fsdp, fsdp), BATCH_AXES, axis_types=auto)


def cluster_environment() -> str | None:
  """The multi-process environment this process runs in, as `jax.distributed.initialize()` finds it
  (jax's own detection, jax._src.clusters, in its order), or None: Open MPI's mpirun; a task of a
  SLURM job step (srun sets SLURM_JOB_ID, SLURM_STEP_NODELIST, SLURM_NTASKS, SLURM_PROCID and
  SLURM_LOCALID; an salloc shell is no step); a Cloud TPU VM (libtpu and TPU chips, which jax detects at
  import) of a GKE slice (TPU_WORKER_HOSTNAMES or TPU_PROCESS_ADDRESSES[_PATH]) or a GCE one (the
  metadata server's agent-worker-number, asked only on such a VM); $JAX_COORDINATOR_ADDRESS.
  Not Kubernetes alone (KUBERNETES_SERVICE_HOST is in every pod) nor mpi4py (opt-in in jax)."""
  if os.environ.get('JAX_COORDINATOR_ADDRESS'):
    return 'JAX_COORDINATOR_ADDRESS'
  from jax._src import clusters  # what initialize() reads, so that 'auto' starts where it can
  for env in (clusters.OmpiCluster, clusters.SlurmCluster, clusters.GkeTpuCluster,
              clusters.GceTpuCluster):
    if env.is_env_present():
      return env.__name__
  return None


def initialize_distributed(fsdp: int = 1, coordinator_address: str | None = None,
                           num_processes: int | None = None, process_id: int | None = None,
                           mode: str = 'auto') -> str | None:
  """jax.distributed for multi-process runs, then the mesh's device groups connected; returns what
  started it (None: a single process). `mode` (--distributed): 'auto' starts with an explicit
  coordinator or in a `cluster_environment`, 'on' always (jax finds the rest, else a ConfigError
  names the flags to give), 'off' never."""
  if mode not in DISTRIBUTED:
    raise errors.ConfigError(f'--distributed={mode}: give one of {", ".join(DISTRIBUTED)}')
  if mode == 'off':
    if coordinator_address:
      raise errors.ConfigError('--distributed=off with --coordinator_address: drop one of them')
    return None
  if coordinator_address:
    how = '--coordinator_address'
  else:
    how = cluster_environment() or ('--distributed=on' if mode == 'on' else None)
  if how is None:
    return None
  try:
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
  except ValueError as err:  # nothing said where the other processes are, or how many
    raise errors.ConfigError(
        f'--distributed={mode}: {err} Give --coordinator_address=HOST:PORT --num_processes=N '
        f'--process_id=I, or start under srun, mpirun or on a TPU pod slice') from err
  logging.info('jax.distributed (%s): process %d of %d', how, jax.process_index(),
               jax.process_count())
  connect_processes(fsdp)
  return how


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


def _as_words(x: jax.Array) -> jax.Array:
  """[B, ...] -> [B, K] float32 holding x exactly: 32-bit values bit-cast, narrower ones widened."""
  if x.dtype.itemsize != 4:
    x = x.astype(jnp.float32 if jnp.issubdtype(x.dtype, jnp.floating) else jnp.int32)
  return jax.lax.bitcast_convert_type(x, jnp.float32).reshape(x.shape[0], -1)


def _from_words(words: np.ndarray, like: jax.ShapeDtypeStruct) -> np.ndarray:
  """`_as_words`'s inverse on the host."""
  wide = np.float32 if jnp.issubdtype(like.dtype, jnp.floating) else np.int32
  word = like.dtype if like.dtype.itemsize == 4 else wide
  return words.view(word).astype(like.dtype, copy=False).reshape(like.shape)


class OnEveryProcess:
  """jit of `fn` (outputs: a tree of [B, ...] arrays) whose outputs reach every process whole, as
  numpy. They travel packed in one float32 [B, K] array (`step`): a batch costs one all-gather
  across the processes instead of one per output."""

  def __init__(self, fn: Callable, in_shardings: Any, mesh: jax.sharding.Mesh):
    self._fn = fn
    self._layouts = {}  # the input shapes -> the output tree of ShapeDtypeStructs
    self.step = jax.jit(
        lambda *args: jnp.concatenate([_as_words(x) for x in jax.tree.leaves(fn(*args))], axis=1),
        in_shardings=in_shardings, out_shardings=NamedSharding(mesh, P()))

  def __call__(self, *args):
    key = tuple((x.shape, x.dtype) for x in jax.tree.leaves(args))
    if key not in self._layouts:
      self._layouts[key] = jax.eval_shape(self._fn, *args)
    leaves, tree = jax.tree.flatten(self._layouts[key])
    words = np.asarray(jax.device_get(self.step(*args)))
    ends = np.cumsum([int(np.prod(x.shape[1:])) for x in leaves])
    return jax.tree.unflatten(tree, [_from_words(w, x) for w, x in
                                     zip(np.split(words, ends[:-1], axis=1), leaves)])


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
