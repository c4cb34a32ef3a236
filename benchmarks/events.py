"""Events and metrics throughput on one long synthetic dialog.

  python benchmarks/events.py [--dialog_s=600] [--frame_hz=50] [--repeats=20]

Generates a dialog of the synthetic corpus (its VA), then times `TurnTakingEvents` on it (the
paper's settings, `max_frame` = its frames) and the metric suite on its events with random
probabilities: samples, the threshold search and the scores. Median wall time over repeats, one
process. Prints one JSON line and appends a row to benchmarks/RESULTS.md.
"""

import pathlib
import sys
import time

import numpy as np
from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks import results  # noqa: E402

from convssl_jax import metrics  # noqa: E402
from convssl_jax.data import va as va_lib  # noqa: E402
from convssl_jax.events import TurnTakingEvents  # noqa: E402
from data_builders.synthetic_dialogs import generator  # noqa: E402

flags.DEFINE_float('dialog_s', 600.0, 'Dialog length in seconds.')
flags.DEFINE_integer('frame_hz', 50, 'Frame rate.')
flags.DEFINE_integer('repeats', 20, 'Timed repeats (the median is reported).')
FLAGS = flags.FLAGS


def _median_seconds(fn, repeats: int) -> float:
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def main(_):
  dialog = generator.generate_dialog(0, generator.DialogConfig(duration_s=FLAGS.dialog_s))
  frames = va_lib.num_frames(FLAGS.dialog_s, FLAGS.frame_hz)
  horizon = 2 * FLAGS.frame_hz
  va = np.concatenate([va_lib.va_frames(dialog.va_list, frames, FLAGS.frame_hz),
                       np.zeros((horizon, 2), np.float32)])
  events_fn = TurnTakingEvents(FLAGS.frame_hz)
  events = events_fn(va, max_frame=frames)
  rng = np.random.default_rng(0)
  p = rng.uniform(size=(frames, 2)).astype(np.float32)
  p_bc = rng.uniform(size=(frames, 2)).astype(np.float32)

  def score():
    samples = metrics.event_samples(events, p, p_bc)
    metrics.score(samples, metrics.find_thresholds(samples))

  result = {
      'benchmark': 'events', 'dialog_s': FLAGS.dialog_s, 'frame_hz': FLAGS.frame_hz,
      'event_frames': {k: int(m.sum()) for k, m in events.items()},
      'events_s': round(_median_seconds(lambda: events_fn(va, max_frame=frames),
                                        FLAGS.repeats), 4),
      'metrics_s': round(_median_seconds(score, FLAGS.repeats), 4),
  }
  result['audio_s_per_s'] = round(FLAGS.dialog_s / (result['events_s'] + result['metrics_s']))
  results.record('events', result, ('numpy', 'scikit-learn'))


if __name__ == '__main__':
  app.run(main)
