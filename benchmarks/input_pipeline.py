"""Input pipeline throughput on the synthetic corpus: windows/s and audio-seconds/s per CPU core.

  python benchmarks/input_pipeline.py [--dialog_s=60] [--window_s=20] [--mono] [--batches=200]

Builds a small synthetic corpus if needed, then times the training stream in this process
with one grain read thread, after one warm-up batch. CPU time, not wall time, so the figure is
per core (grain's worker processes each run this same loop). Prints one JSON line and appends a row to benchmarks/RESULTS.md.
"""

import pathlib
import sys
import time

import grain
from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks import results  # noqa: E402

from convssl_jax.data import pipeline  # noqa: E402
from data_builders import builder_class  # noqa: E402
from data_builders.conversation import download_config  # noqa: E402
from data_builders.synthetic_dialogs import SyntheticDialogsConfig  # noqa: E402

flags.DEFINE_float('dialog_s', 60.0, 'Dialog length (60 s: the default corpus; ~300 s: '
                   'a Switchboard call). Each record is read once per group of its windows.')
flags.DEFINE_float('window_s', 20.0, 'Window length (stereo 20 s, mono 10 s).')
flags.DEFINE_float('overlap_s', 2.0, 'Overlap of consecutive training windows.')
flags.DEFINE_integer('batch_size', 8, 'Windows per batch.')
flags.DEFINE_integer('batches', 200, 'Timed batches.')
flags.DEFINE_integer('threads', 1, "grain's read threads; 1 measures what one core does.")
flags.DEFINE_bool('mono', False, 'Mono mix (the mono model) instead of stereo.')
flags.DEFINE_string('data_dir', '/tmp/convssl_bench_data', 'Where the benchmark corpus is built.')
FLAGS = flags.FLAGS


def main(_):
  builder = builder_class('synthetic_dialogs')(
      data_dir=FLAGS.data_dir, config=SyntheticDialogsConfig.sized(32, 2, 2, FLAGS.dialog_s))
  builder.download_and_prepare(download_config=download_config())
  corpus = pipeline.Corpus.from_builder(builder, 'train')
  spec = pipeline.WindowSpec(window_s=FLAGS.window_s, frame_hz=50, horizon_frames=100,
                             mono=FLAGS.mono)
  stream = iter(pipeline.train_dataset(corpus, spec, batch_size=FLAGS.batch_size, seed=0,
                                       overlap_s=FLAGS.overlap_s, epochs=4,
                                       read_options=grain.ReadOptions(num_threads=FLAGS.threads)))
  next(stream)
  cpu, wall = time.process_time(), time.perf_counter()
  for _ in range(FLAGS.batches):
    next(stream)
  cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
  windows = FLAGS.batches * FLAGS.batch_size
  result = {
      'benchmark': 'input_pipeline', 'dialog_s': FLAGS.dialog_s, 'window_s': FLAGS.window_s, 'mono': FLAGS.mono,
      'batch_size': FLAGS.batch_size, 'batches': FLAGS.batches, 'threads': FLAGS.threads,
      'windows_per_cpu_s': round(windows / cpu, 1),
      'audio_s_per_cpu_s': round(windows * FLAGS.window_s / cpu, 1),
      'audio_s_per_wall_s': round(windows * FLAGS.window_s / wall, 1),
  }
  results.record('input_pipeline', result, ('grain', 'numpy'))


if __name__ == '__main__':
  app.run(main)
