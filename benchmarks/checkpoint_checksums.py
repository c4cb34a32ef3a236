"""What the checkpoints' content checksums cost: digesting every array of a training state
(model + optimizer) at save and again at restore, against the save and restore themselves and
against the alternative of hashing the step's files (a SHA-256 manifest).

The state is the configured model's and its AdamW moments', filled with random normal values as
a trained state is (incompressible: zeros would flatter Orbax's zstd), on the default device.
The digest is numpy on the host (nothing to compile); times are medians over --repeats after
one warm-up (`first_digest_s`). `load_average` is the machine's 1-minute load at the end: on a
shared machine the CPU-bound digest slows with it.

  python benchmarks/checkpoint_checksums.py                                 # the default config
  python benchmarks/checkpoint_checksums.py --config=configs/vap.py:reference
"""

import argparse
import hashlib
import os
import pathlib
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position
import orbax.checkpoint as ocp  # pylint: disable=wrong-import-position

from benchmarks import results  # pylint: disable=wrong-import-position
from configs import vap  # pylint: disable=wrong-import-position
from convssl_jax import checkpoints, parallelism  # pylint: disable=wrong-import-position
from convssl_jax import trainer as trainer_lib  # pylint: disable=wrong-import-position


def _median_s(fn, repeats):
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return round(statistics.median(times), 4)


def _files_sha256(directory: pathlib.Path) -> dict[str, str]:
  return {str(p): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(directory.rglob('*')) if p.is_file()}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--config', default='configs/vap.py', help='configs/vap.py[:variants]')
  parser.add_argument('--repeats', type=int, default=5)
  args = parser.parse_args()
  variants = args.config.partition(':')[2] or None
  trainer = trainer_lib.Trainer(vap.get_config(variants), parallelism.make_mesh())
  rng = np.random.default_rng(0)
  state = jax.tree.map(
      lambda x: jnp.asarray(rng.normal(size=x.shape).astype(x.dtype)) if x.dtype.kind == 'f'
      else x, trainer.stored_state())
  abstract = trainer.abstract_stored_state()
  leaves = jax.tree.leaves(state)
  digests = lambda: checkpoints._array_digests(state)  # pylint: disable=protected-access
  start = time.perf_counter()
  digests()
  first = time.perf_counter() - start

  with tempfile.TemporaryDirectory() as directory:
    store = checkpoints.Checkpoints(pathlib.Path(directory) / 'with', keep=1)
    plain = checkpoints.Checkpoints(pathlib.Path(directory) / 'without', keep=1)
    steps = iter(range(1, 10 ** 6))
    latest = lambda: pathlib.Path(directory) / 'with' / str(store.latest_step())

    def save_with():
      store.save(next(steps), state)
      store.wait()

    def save_without():  # the same composite save without the checksums item
      plain._manager.save(next(steps), args=ocp.args.Composite(  # pylint: disable=protected-access
          state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave({})))
      plain.wait()

    def restore_unverified(store):  # what Checkpoints.restore did before checksums
      manager = store._manager  # pylint: disable=protected-access
      manager.item_metadata(store.latest_step())
      manager.restore(store.latest_step(), args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))

    save_with()
    save_without()
    result = {
        'benchmark': 'checkpoint_checksums', 'config': args.config,
        'device': jax.devices()[0].device_kind, 'cpus': os.cpu_count(),
        'load_average': round(os.getloadavg()[0], 1), 'arrays': len(leaves),
        'parameters': int(sum(x.size for x in leaves)),
        'checkpoint_mb': round(sum(p.stat().st_size for p in latest().rglob('*')
                                   if p.is_file()) / 2 ** 20, 2),
        'first_digest_s': round(first, 3),
        'digest_s': _median_s(digests, args.repeats),
        'save_with_checksums_s': _median_s(save_with, args.repeats),
        'save_without_checksums_s': _median_s(save_without, args.repeats),
        'restore_verified_s': _median_s(lambda: store.restore(abstract), args.repeats),
        'restore_unverified_s': _median_s(lambda: restore_unverified(plain), args.repeats),
        'file_sha256_manifest_s': _median_s(lambda: _files_sha256(latest()), args.repeats),
    }
    store.close()
    plain.close()
  results.record('checkpoint_checksums', result, ('jax', 'orbax-checkpoint'))


if __name__ == '__main__':
  main()
