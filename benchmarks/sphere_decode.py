"""SPHERE / Shorten decoding speed: conversation-seconds per CPU-second of `sphere.read_sphere`.

  python benchmarks/sphere_decode.py [--minutes=5] [--repeats=5]

Writes a Switchboard-like file (8 kHz stereo u-law, Shorten-compressed as LDC ships it; the
synthetic corpus's dialog as its audio), then times reading it back, the best of `repeats` in
CPU time (so per core), and likewise for 16-bit pcm Shorten. Prints one JSON line per coding and
appends rows to benchmarks/RESULTS.md.
"""

import pathlib
import sys
import tempfile
import time

import numpy as np
from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks import results  # noqa: E402

from convssl_jax.data import sphere  # noqa: E402
from tests.fixtures import sphere_write  # noqa: E402
from data_builders.synthetic_dialogs import generator  # noqa: E402

flags.DEFINE_float('minutes', 5.0, 'Length of the conversation.')
flags.DEFINE_integer('repeats', 5, 'Timed reads (the best counts).')
FLAGS = flags.FLAGS
RATE = 8000


def main(_):
  seconds = 60 * FLAGS.minutes
  audio = generator.generate_dialog(0, generator.DialogConfig(duration_s=seconds,
                                                              sample_rate=RATE)).audio
  samples = np.round(np.clip(audio, -1, 1) * 32767).astype(np.int16)
  with tempfile.TemporaryDirectory() as tmp:
    for coding in ('ulaw,embedded-shorten-v2.00', 'pcm,embedded-shorten-v2.00'):
      path = pathlib.Path(tmp) / 'conversation.sph'
      sphere_write.write_sphere(path, samples, RATE, coding)
      sphere.read_sphere(path)  # warm-up (compilation, caches)
      best = float('inf')
      for _ in range(FLAGS.repeats):
        start = time.process_time()
        sphere.read_sphere(path)
        best = min(best, time.process_time() - start)
      results.record('sphere_decode', {
          'benchmark': 'sphere_decode', 'coding': coding, 'seconds': seconds,
          'file_mb': round(path.stat().st_size / 1e6, 2), 'cpu_s': round(best, 4),
          'conversation_s_per_cpu_s': round(seconds / best, 1),
      }, ('numpy', 'numba'))


if __name__ == '__main__':
  app.run(main)
