"""Child processes for tests that run the project as a user would (run.py, scripts, several
JAX processes): the repository on the path, and the tests' shared compilation cache."""

from concurrent import futures
import os
import pathlib
import socket
import subprocess
import sys
import textwrap

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


# `python -c` this, then a script and its arguments: the script runs with the address space capped.
_CAPPED = ('import resource, runpy, sys; resource.setrlimit(resource.RLIMIT_AS, ({}, '
           "resource.RLIM_INFINITY)); sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], "
           "run_name='__main__')")


def run_capped(limit_mb: int, script: str, *args: str, input: bytes | None = None,
               timeout: float = 300) -> subprocess.CompletedProcess:
  """`python SCRIPT ARGS` (e.g. run.py as a user runs it) with its address space capped at
  `limit_mb` MiB from its start (RLIMIT_AS): an allocation past it fails. stdout and stderr as
  bytes."""
  return subprocess.run([sys.executable, '-c', _CAPPED.format(limit_mb << 20), script, *args],
                        cwd=REPO, env=env(), input=input, capture_output=True, timeout=timeout,
                        check=False)


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


# Prepended to a `python -c` script by `run_script_together`: joins the JAX processes from
# run_together's flags; the script's own arguments are in ARGS.
_JOIN = textwrap.dedent("""
    import argparse as _argparse
    import jax as _jax
    _parser = _argparse.ArgumentParser()
    _parser.add_argument('args', nargs='*')
    for _name in ('coordinator_address', 'num_processes', 'process_id'):
      _parser.add_argument(f'--{_name}')
    _flags = _parser.parse_args()
    _jax.distributed.initialize(_flags.coordinator_address, int(_flags.num_processes),
                                int(_flags.process_id))
    ARGS = _flags.args
""")


def run_script_together(script: str, *args: str, **kwargs) -> list[tuple[str, str]]:
  """`script` (Python source, run with `python -c`) as joined JAX processes, `args` in its ARGS;
  like `run_together`."""
  return run_together('-c', _JOIN + textwrap.dedent(script), *args, **kwargs)


def run_together(*args: str, processes: int = 2, devices: int = 2,
                 timeout: float = 600) -> list[tuple[str, str]]:
  """`python ARGS` (a script taking run.py's coordinator flags) as `processes` JAX processes of
  `devices` CPU devices each on localhost; every one must succeed. Their (stdout, stderr)."""
  port = free_port()
  procs = [start(*args, f'--coordinator_address=127.0.0.1:{port}',
                 f'--num_processes={processes}', f'--process_id={i}', JAX_PLATFORMS='cpu',
                 XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}')
           for i in range(processes)]
  try:  # all pipes read at once: a peer blocked on a full pipe would stall the others
    with futures.ThreadPoolExecutor(len(procs)) as pool:
      outputs = list(pool.map(lambda p: p.communicate(timeout=timeout), procs))
  finally:
    for p in procs:
      p.kill()  # a failed process leaves its peer waiting at a barrier
  failed = [f'process {i} (exit {p.returncode}):\n{_tail(stderr)}'
            for i, (p, (_, stderr)) in enumerate(zip(procs, outputs)) if p.returncode != 0]
  assert not failed, '\n\n'.join(failed)
  return outputs


def _tail(stderr: str, size: int = 3000) -> str:
  """The end of a failed process's stderr without the noise of a fatal error (the module list),
  and, for a process the coordination service aborted because its peer failed, what it printed
  before the abort (its own error, if any) and where its threads were."""
  stderr = stderr.split('\nExtension modules:')[0]
  aborted = stderr.find('Terminating process because the JAX distributed service')
  if aborted < 0:
    return stderr[-size:]
  before, dump = stderr[:aborted], stderr[stderr.find('Fatal Python error', aborted):]
  return f'{before[-size:]}\n[aborted by the coordination service]\n{dump[-size // 2:]}'


# Prepended to a `python -c` script by `run_limited`: `limit_memory(mb)` caps the process's
# address space at its size then (after the script's imports) plus `mb` MiB.
_LIMIT = textwrap.dedent("""
    import re as _re
    import resource as _resource

    def limit_memory(mb):
      with open('/proc/self/status') as _f:
        size = int(_re.search(r'VmSize:\\s+(\\d+) kB', _f.read())[1]) * 1024
      _resource.setrlimit(_resource.RLIMIT_AS, (size + mb * 2**20, _resource.RLIM_INFINITY))
""")


def run_limited(script: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
  """`script` (Python source that calls `limit_memory(mb)` once its imports are done) in a child
  process whose memory is then capped: whatever it allocates past the cap raises MemoryError.
  BLAS runs one thread, so no thread stacks are mapped after the cap, and malloc keeps one arena:
  each thread's own arena would reserve 64 MB of address space, which the cap counts."""
  return run('-c', _LIMIT + textwrap.dedent(script), *args, timeout=timeout,
             OPENBLAS_NUM_THREADS='1', OMP_NUM_THREADS='1', MALLOC_ARENA_MAX='1')
