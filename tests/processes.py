"""Child processes for tests that run the project as a user would (run.py, scripts, several
JAX processes): the repository on the path, and the tests' shared compilation cache."""

import os
import pathlib
import socket
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parent.parent


def env(**extra: str) -> dict[str, str]:
  path = os.pathsep.join(filter(None, [str(REPO), os.environ.get('PYTHONPATH')]))
  return {**os.environ, 'PYTHONPATH': path,
          'JAX_COMPILATION_CACHE_DIR': str(REPO / '.pytest_cache' / 'jax'), **extra}


def start(*args: str, **extra_env: str) -> subprocess.Popen:
  """`python ARGS` in the repository, stdout and stderr captured as text."""
  return subprocess.Popen([sys.executable, *args], cwd=REPO, env=env(**extra_env),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run(*args: str, timeout: float = 300, **extra_env: str) -> subprocess.CompletedProcess:
  """`python ARGS` to completion."""
  return subprocess.run([sys.executable, *args], cwd=REPO, env=env(**extra_env),
                        capture_output=True, text=True, timeout=timeout, check=False)


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def run_together(*args: str, processes: int = 2, devices: int = 2,
                 timeout: float = 600) -> list[tuple[str, str]]:
  """`python ARGS` (a script taking run.py's coordinator flags) as `processes` JAX processes of
  `devices` CPU devices each on localhost; every one must succeed. Their (stdout, stderr)."""
  port = free_port()
  procs = [start(*args, f'--coordinator_address=127.0.0.1:{port}',
                 f'--num_processes={processes}', f'--process_id={i}', JAX_PLATFORMS='cpu',
                 XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}')
           for i in range(processes)]
  try:
    outputs = [p.communicate(timeout=timeout) for p in procs]
  finally:
    for p in procs:
      p.kill()  # a failed process leaves its peer waiting at a barrier
  for p, (_, stderr) in zip(procs, outputs):
    assert p.returncode == 0, _tail(stderr)
  return outputs


def _tail(stderr: str, size: int = 3000) -> str:
  """The end of a failed process's stderr, without the module list a fatal error ends with."""
  return stderr.split('\nExtension modules:')[0][-size:]
