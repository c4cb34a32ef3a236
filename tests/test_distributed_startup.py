"""Multi-process start-up (--distributed): 'auto' starts jax.distributed where jax itself can find the
other processes (SLURM tasks, Open MPI, Cloud TPU pod slices, an explicit coordinator), 'on' always,
'off' never. The environments are faked; jax's own cluster detection reads them."""

import os
import subprocess
import sys
import warnings

import jax
import pytest
from jax._src import clusters
from jax._src.clusters import cloud_tpu_cluster

from convssl_jax import errors, parallelism
from tests import processes

pytestmark = pytest.mark.gpu_image  # also under the accelerator image's versions (.ci/run)

SRUN_TASK = {'SLURM_JOB_ID': '4242', 'SLURM_STEP_NODELIST': 'node[07-08]', 'SLURM_NTASKS': '2',
             'SLURM_PROCID': '1', 'SLURM_LOCALID': '0'}
SALLOC_SHELL = {'SLURM_JOB_ID': '4242', 'SLURM_NODELIST': 'node[07-08]', 'SLURM_NTASKS': '2'}
MPIRUN_RANK = {'OMPI_MCA_orte_hnp_uri': '1234.0;tcp://10.0.0.1:5000', 'OMPI_COMM_WORLD_SIZE': '4',
               'OMPI_COMM_WORLD_RANK': '3', 'OMPI_COMM_WORLD_LOCAL_RANK': '1'}
GKE_TPU_WORKER = {'TPU_WORKER_HOSTNAMES': 'localhost,127.0.0.1', 'TPU_WORKER_ID': '1'}
# A Cloud TPU VM of a pod slice made with `gcloud compute tpus tpu-vm create` sets no variable:
# jax asks the GCE metadata server (faked below) which worker it is.
GCE_METADATA = {'agent-worker-number': '1', 'worker-network-endpoints': 'localhost,127.0.0.1'}


def _cluster_variable(name: str) -> bool:
  return name.startswith(('SLURM_', 'OMPI_', 'PMIX_', 'TPU_', 'MEGASCALE_', 'KUBERNETES_',
                          'JAX_COORDINATOR'))


@pytest.fixture
def started(monkeypatch):
  """A bare environment (no cluster variables, not a Cloud TPU VM), and the calls of
  jax.distributed.initialize and connect_processes recorded instead of made."""
  for name in filter(_cluster_variable, list(os.environ)):
    monkeypatch.delenv(name)
  monkeypatch.setattr(cloud_tpu_cluster, 'running_in_cloud_tpu_vm', False)
  calls = []
  monkeypatch.setattr(jax.distributed, 'initialize', lambda *args: calls.append(('initialize', args)))
  monkeypatch.setattr(parallelism, 'connect_processes', lambda fsdp: calls.append(('connect', fsdp)))
  return calls


def _on_cloud_tpu_vm(monkeypatch, metadata=None):
  """What jax's import sets on a VM with TPU chips and libtpu; and its metadata server."""
  monkeypatch.setattr(cloud_tpu_cluster, 'running_in_cloud_tpu_vm', True)
  monkeypatch.setattr(cloud_tpu_cluster, 'get_metadata',
                      lambda key: (metadata[key], 200) if metadata and key in metadata else ('', 404))
  if metadata is None:
    monkeypatch.setenv('TPU_SKIP_MDS_QUERY', '1')


def _jax_would_start_with():
  """(coordinator, processes, process id, local device ids) as jax.distributed.initialize()
  derives them here."""
  with warnings.catch_warnings():  # (jax's own: a Kubernetes pod without the kubernetes package)
    warnings.simplefilter('ignore')
    return clusters.ClusterEnv.auto_detect_unset_distributed_params(None, None, None, None, None,
                                                                    5)


# jax binds a SLURM or Open MPI task to the one GPU of its local rank (README "SLURM"); TPUs never.
@pytest.mark.parametrize('env, cluster, jax_finds', [
    (SRUN_TASK, 'SlurmCluster', ('node07:', 2, 1, [0])),
    (MPIRUN_RANK, 'OmpiCluster', ('10.0.0.1:', 4, 3, [1])),
    (GKE_TPU_WORKER, 'GkeTpuCluster', ('localhost:8482', 2, 1, None)),
    ({}, 'GceTpuCluster', ('localhost:8482', 2, 1, None)),
])
def test_auto_starts_where_jax_finds_the_other_processes(started, monkeypatch, env, cluster,
                                                         jax_finds):
  for name, value in env.items():
    monkeypatch.setenv(name, value)
  if cluster.endswith('TpuCluster'):
    _on_cloud_tpu_vm(monkeypatch, GCE_METADATA if cluster == 'GceTpuCluster' else None)
  assert parallelism.initialize_distributed(fsdp=2) == cluster
  assert started == [('initialize', (None, None, None)), ('connect', 2)]
  coordinator, *found = _jax_would_start_with()  # so initialize() itself will succeed
  assert coordinator.startswith(jax_finds[0]) and found == list(jax_finds[1:])


@pytest.mark.parametrize('env, tpu_vm', [({}, False), (SALLOC_SHELL, False),
                                         ({'TPU_WORKER_ID': '0'}, False), ({}, True),
                                         ({'KUBERNETES_SERVICE_HOST': '10.0.0.1'}, False)])
def test_auto_alone_starts_nothing(started, monkeypatch, env, tpu_vm):
  # An salloc shell or batch step is not a task of srun; a TPU VM not in a pod slice (no metadata
  # worker number), a TPU variable off a TPU VM, a Kubernetes pod: jax finds no other process.
  for name, value in env.items():
    monkeypatch.setenv(name, value)
  if tpu_vm:
    _on_cloud_tpu_vm(monkeypatch, metadata={})
  assert parallelism.initialize_distributed() is None
  assert started == []
  assert _jax_would_start_with()[0] is None


def test_an_explicit_coordinator_starts_with_its_values(started):
  assert parallelism.initialize_distributed(1, 'host:1234', 2, 0) == '--coordinator_address'
  assert started == [('initialize', ('host:1234', 2, 0)), ('connect', 1)]


def test_on_always_starts_and_off_never(started, monkeypatch):
  assert parallelism.initialize_distributed(mode='on') == '--distributed=on'
  for name, value in SRUN_TASK.items():
    monkeypatch.setenv(name, value)
  assert parallelism.initialize_distributed(mode='on') == 'SlurmCluster'
  assert parallelism.initialize_distributed(mode='off') is None
  assert started == [('initialize', (None, None, None)), ('connect', 1)] * 2
  with pytest.raises(errors.ConfigError, match='--distributed=off with --coordinator_address'):
    parallelism.initialize_distributed(1, 'host:1234', 2, 0, mode='off')


def test_on_with_nothing_to_find_is_a_one_line_error_naming_the_flags(tmp_path):
  env = {k: v for k, v in processes.env().items() if not _cluster_variable(k)}
  out = subprocess.run([sys.executable, 'run.py', '--config=configs/vap.py:tiny', '--distributed=on',
                        f'--workdir={tmp_path}'], cwd=processes.REPO, env=env, capture_output=True,
                       text=True, timeout=300, check=False)
  assert out.returncode == 2, out.stderr[-2000:]
  (line,) = [l for l in out.stderr.splitlines() if l.startswith('error:')]
  assert '--distributed=on: coordinator_address should be defined' in line
  assert '--coordinator_address=HOST:PORT --num_processes=N --process_id=I' in line
