"""Offline prediction throughput: audio-seconds per second of `--mode=predict` on one recording.

  python benchmarks/predict.py [--config=configs/vap.py[:variant]] [--dialog_s=300]

A randomly initialised model of the config (speed does not depend on the weights) over one
synthetic stereo dialog in the evaluation's overlapping windows, the file's reading and the
JSON/CSV/PNG writing excluded; the first pass compiles and is not timed. Prints one JSON line and
appends a row to benchmarks/RESULTS.md.
"""

import pathlib
import sys
import tempfile
import time

import jax
import soundfile as sf
from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks import results  # noqa: E402
from convssl_jax import evaluate, model_state, predict  # noqa: E402
from data_builders.synthetic_dialogs import generator  # noqa: E402

config_flags.DEFINE_config_file('config', 'configs/vap.py', 'Config file[:variant,...].')
flags.DEFINE_float('dialog_s', 300.0, 'Length of the predicted recording in seconds.')
flags.DEFINE_integer('repeats', 3, 'Timed passes (the best is reported).')
FLAGS = flags.FLAGS


def main(_):
  config = FLAGS.config
  dialog = generator.generate_dialog(0, generator.DialogConfig(duration_s=FLAGS.dialog_s))
  with tempfile.TemporaryDirectory() as tmp:
    path = pathlib.Path(tmp) / 'dialog.wav'
    sf.write(path, dialog.audio, 16000)
    corpus = predict.recording(path, dialog.va_list)
  model = model_state.ModelState.create(config)
  evaluate.predict_dialogs(model, config, corpus)  # compiles
  best = float('inf')
  for _ in range(FLAGS.repeats):
    start = time.perf_counter()
    evaluate.predict_dialogs(model, config, corpus)
    best = min(best, time.perf_counter() - start)
  result = {
      'benchmark': 'predict', 'model': config.model.kind, 'dim': config.model.dim,
      'frame_hz': config.model.frame_hz, 'window_s': config.data.window_s,
      'context_s': config.eval.context_s, 'batch_size': config.data.batch_size,
      'dialog_s': FLAGS.dialog_s, 'device': jax.devices()[0].platform, 'seconds': round(best, 3),
      'audio_s_per_s': round(FLAGS.dialog_s / best, 1),
  }
  results.record('predict', result, ('jax', 'flax'))


if __name__ == '__main__':
  app.run(main)
