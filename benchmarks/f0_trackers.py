"""F0 trackers at build time: throughput per core and agreement of the fast tracker with pYIN.

  python benchmarks/f0_trackers.py [--seconds=60] [--repeats=3] [--rates=8000,16000]

For each rate and source (the synthetic corpus's dialogs; espeak-ng speech when espeak-ng is
installed), times `f0.fast_pyin_f0` and librosa.pyin (`f0.pyin_f0`) on the same stereo audio,
each the best of `repeats` interleaved runs after a warm-up, in CPU time (so per core), and
compares the tracks (`f0.agreement`). Prints one JSON line per case and appends rows to
benchmarks/RESULTS.md.
"""

import pathlib
import sys
import time

from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks import results  # noqa: E402

from convssl_jax.data import f0 as f0_lib  # noqa: E402
from data_builders.synthetic_dialogs import generator  # noqa: E402
from tests import speech  # noqa: E402

flags.DEFINE_float('seconds', 60.0, 'Length of each stereo test signal.')
flags.DEFINE_integer('repeats', 3, 'Timed runs per tracker (the best counts).')
flags.DEFINE_list('rates', ['8000', '16000'], 'Sample rates.')
FLAGS = flags.FLAGS


def _audio(source: str, rate: int):
  if source == 'espeak':
    return speech.dialog(FLAGS.seconds, rate)
  return generator.generate_dialog(0, generator.DialogConfig(duration_s=FLAGS.seconds,
                                                             sample_rate=rate)).audio


def _best_cpu_s(trackers, audio, rate) -> tuple[dict, dict]:
  """Best CPU seconds of each tracker over interleaved repeats, and its track."""
  best, tracks = {}, {}
  for name, track in trackers.items():
    track(audio[:rate], rate)  # warm-up: imports, numba's cache
  for _ in range(FLAGS.repeats):
    for name, track in trackers.items():
      start = time.process_time()
      tracks[name] = track(audio, rate)
      best[name] = min(best.get(name, float('inf')), time.process_time() - start)
  return best, tracks


def main(_):
  sources = ['synthetic'] + (['espeak'] if speech.available() else [])
  if not speech.available():
    print('espeak-ng not installed: synthetic dialogs only')
  trackers = {'fast': f0_lib.fast_pyin_f0, 'librosa': f0_lib.pyin_f0}
  for rate in map(int, FLAGS.rates):
    for source in sources:
      audio = _audio(source, rate)
      cpu, tracks = _best_cpu_s(trackers, audio, rate)
      channel_s = audio.shape[0] * audio.shape[1] / rate
      agreement = f0_lib.agreement(tracks['librosa'], tracks['fast'])
      results.record('f0_trackers', {
          'benchmark': 'f0_trackers', 'source': source, 'sample_rate': rate,
          'seconds': FLAGS.seconds, 'repeats': FLAGS.repeats,
          'fast_channel_s_per_cpu_s': round(channel_s / cpu['fast'], 1),
          'librosa_channel_s_per_cpu_s': round(channel_s / cpu['librosa'], 1),
          'speedup': round(cpu['librosa'] / cpu['fast'], 1),
          'voiced_share': round(float((tracks['librosa'] > 0).mean()), 3),
          'voicing_agreement': round(agreement['voicing'], 5),
          'gross_error': round(agreement['gross_error'], 5),
      }, ('librosa', 'numba', 'numpy', 'scipy'))


if __name__ == '__main__':
  app.run(main)
