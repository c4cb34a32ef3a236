"""One run at a time in a workdir: `hold(workdir)`, an OS file lock held for the run's life.

Two runs writing one workdir mix their checkpoints and interleave train_log.jsonl. `hold` takes
an exclusive `flock` on WORKDIR/.lock and writes the holder (PID, host, start, command) into
it; a second run is refused at once with one line naming the holder (errors.UserError). The
kernel releases a flock when its holder dies, however it dies (SIGKILL included), so the lock
of a killed run is simply taken over: there is nothing stale to clean up. The file is never
deleted (unlinking a lock file lets two runs lock two different files of one name).

Multi-process runs share the workdir (a shared filesystem): process 0 alone takes the lock, as
a lock per process on the one file would refuse the run's own processes, and a broadcast tells
the others, so every process of a refused run stops with the same line before touching the
workdir. The lock is as good as the filesystem's flock: local disks and NFS (Linux turns flock
into NFS byte-range locks, which every client sees) hold it; Lustre only when mounted with
`-o flock`; where flock is unsupported a warning says the workdir is not locked.
"""

import contextlib
import errno
import fcntl
import json
import os
import pathlib
import socket
import sys
import time

import jax
import numpy as np
from absl import logging

from convssl_jax import errors

LOCK_FILE = '.lock'
_UNSUPPORTED = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


def _holder(fd: int) -> str:
  """Who holds the lock, from the file's contents, for the refusal."""
  try:
    info = json.loads(os.pread(fd, 1 << 16, 0) or b'{}')
    return (f'process {info["pid"]} on {info["host"]} (started {info["started"]}: '
            f'{info["command"]})')
  except (ValueError, KeyError, TypeError):  # the holder is between locking and writing
    return 'another process'


def _acquire(path: pathlib.Path) -> tuple[int | None, str | None]:
  """(the locked file's fd, None), (None, why refused) or (None, None) where the filesystem
  has no flock."""
  path.parent.mkdir(parents=True, exist_ok=True)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError as e:
    holder = _holder(fd) if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN) else None
    os.close(fd)
    if holder is None and e.errno in _UNSUPPORTED:
      logging.warning('%s: the filesystem has no file locks (%s); this workdir is not locked '
                      'against a second run', path, os.strerror(e.errno))
      return None, None
    if holder is None:
      raise
    return None, (f'{path.parent} is in use by {holder}; wait for it to finish or stop it, or '
                  f'give another --workdir (lock: {path})')
  os.ftruncate(fd, 0)
  os.pwrite(fd, json.dumps({
      'pid': os.getpid(), 'host': socket.gethostname(),
      'started': time.strftime('%Y-%m-%d %H:%M:%S'),
      'command': ' '.join([pathlib.Path(sys.argv[0]).name, *sys.argv[1:]])[:300]}).encode(), 0)
  return fd, None


def _refused_anywhere(refusal: str | None, path: pathlib.Path) -> str | None:
  """Process 0's verdict, on every process of a multi-process run."""
  if not jax.distributed.is_initialized() or jax.process_count() == 1:
    return refusal
  from jax.experimental import multihost_utils
  refused = int(multihost_utils.broadcast_one_to_all(np.int32(refusal is not None)))
  if not refused or refusal:
    return refusal
  try:
    fd = os.open(path, os.O_RDONLY)
  except OSError:
    holder = 'another run'
  else:
    holder = _holder(fd)
    os.close(fd)
  return f'{path.parent} is in use by {holder} (process 0 of this run found it locked)'


@contextlib.contextmanager
def hold(workdir):
  """Holds `workdir`'s lock for the `with` block (created, with the workdir, if needed).

  Raises:
    errors.UserError: another run holds it; the message names its PID, host and command.
  """
  path = pathlib.Path(workdir).absolute() / LOCK_FILE
  first = not jax.distributed.is_initialized() or jax.process_index() == 0
  fd, refusal = _acquire(path) if first else (None, None)
  refusal = _refused_anywhere(refusal, path)
  if refusal:
    raise errors.UserError(refusal)
  try:
    yield
  finally:
    if fd is not None:
      os.ftruncate(fd, 0)  # nobody holds it now
      fcntl.flock(fd, fcntl.LOCK_UN)
      os.close(fd)
