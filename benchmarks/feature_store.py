"""Read speed of a feature cache: random windows/s, MB/s and audio-seconds/s from one process.

  python benchmarks/feature_store.py [--kind=stereo] [--dtype=bfloat16] [--records=256]

Writes `--records` random records of the reference model's shape (stereo [2, 2000, 256] for a
20 s window; mono [1000, 256] for 10 s) through the cache's writer into a temporary directory,
then reads them in a random order through `FeatureStore` (what training's LoadWindow does), after
one untimed pass (so the page cache holds them, as a warm epoch would). Prints one JSON line and
appends a row to benchmarks/RESULTS.md.
"""

import pathlib
import sys
import tempfile
import time

import numpy as np
from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks import results  # noqa: E402
from convssl_jax.data import feature_store  # noqa: E402

flags.DEFINE_enum('kind', 'stereo', ['stereo', 'mono'], 'Record shape of this model.')
flags.DEFINE_enum('dtype', 'bfloat16', ['float32', 'bfloat16'], 'Stored dtype (compute dtype).')
flags.DEFINE_integer('records', 256, 'Records written and read.')
FLAGS = flags.FLAGS
SHAPES = {'stereo': ((2, 2000, 256), 20.0), 'mono': ((1000, 256), 10.0)}


def main(_):
  shape, window_s = SHAPES[FLAGS.kind]
  dtype = feature_store._dtype(FLAGS.dtype)
  rng = np.random.default_rng(0)
  with tempfile.TemporaryDirectory() as tmp:
    directory = pathlib.Path(tmp) / 'features'
    writer = feature_store.ShardWriter(directory, 0, 1)
    record = rng.normal(size=shape).astype(dtype)
    start = time.perf_counter()
    for i in range(FLAGS.records):
      writer.write(i, 0, record)
    writer.close()
    write_s = time.perf_counter() - start
    feature_store.finalize(directory, {'fingerprint': {}, 'shape': list(shape),
                                       'dtype': FLAGS.dtype, 'records': FLAGS.records})
    store = feature_store.FeatureStore(directory)
    order = rng.permutation(FLAGS.records)
    for i in order:  # warm: the page cache holds the file, as after a first epoch
      store[int(i), 0]
    start = time.perf_counter()
    for i in order:
      store[int(i), 0].copy()  # touch the data (a batch copies it once more)
    read_s = time.perf_counter() - start
  mb = record.nbytes / 1e6
  result = {'benchmark': 'feature_store', 'kind': FLAGS.kind, 'dtype': FLAGS.dtype,
            'record_shape': list(shape), 'record_mb': round(mb, 2), 'records': FLAGS.records,
            'write_mb_per_s': round(mb * FLAGS.records / write_s, 1),
            'read_windows_per_s': round(FLAGS.records / read_s, 1),
            'read_mb_per_s': round(mb * FLAGS.records / read_s, 1),
            'read_audio_s_per_s': round(window_s * FLAGS.records / read_s, 1)}
  results.record('feature_store', result, ('numpy', 'array_record'))


if __name__ == '__main__':
  app.run(main)
