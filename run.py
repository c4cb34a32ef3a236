"""convssl-jax entry point: `python run.py --config=configs/vap.py[:variant] --mode=MODE`.

Flags and dispatch only; each mode is a library call (README "Layout"):
  train           build the corpus on first use, train in --workdir (resuming), then evaluate
  eval            turn-taking scores with the VA-only baseline and trivial rules (experiment.py)
  predict         per-frame curves for --audio (a file or folder; --va): JSON, CSV, PNG and an
                  interactive HTML page per file, a folder's index.html (predict.py, viewer.py)
  stream          the model live on --audio=FILE|-|mic with a terminal bar (live.py)
  serve           a local web page: the microphone live in the browser (serve.py)
  export          jax.export artifacts: the streaming step and the offline forward (export.py)
  summary, data   the model's shapes and parameters; the corpus's splits (built if needed)
  cache_features  the frozen encoder's features of every training window (feature_cache.py)
  pretrain, units CPC pretraining (configs/cpc_pretrain.py); k-means units (configs/ulm.py)
A user error (a bad flag or config value, a missing or invalid input, a refused checkpoint) is
one line on stderr and exit code 2; --verbose shows its traceback too.
"""

import json
import os
import pathlib
import sys

from absl import app, flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', 'configs/vap.py', 'Config file[:variant,...].',
                                lock_config=True)
flags.DEFINE_enum('mode', 'train', ['train', 'eval', 'predict', 'stream', 'serve', 'export',
                                    'summary', 'data', 'cache_features', 'pretrain', 'units'],
                  'What to run.')
flags.DEFINE_string('workdir', 'workdir', 'Checkpoints, TensorBoard events and metrics go here.')
flags.DEFINE_string('audio', None, 'predict: an audio file (stereo: one speaker per channel; mono: '
                    'speaker A) or a folder of them. stream: a file, - (stdin PCM) or mic. serve: '
                    'recordings (a file or folder) offered as partners and to stream as if live.')
flags.DEFINE_string('va', None, 'predict, stream: a VA list (JSON [[[start, end], ...] of A, [...] '
                    'of B], or a TextGrid) for one --audio file; needed by the mono model.')
flags.DEFINE_string('va_tiers', '', "predict, stream: a --va TextGrid's speaker tiers, 'A_TIER,B_TIER' "
                    "('A_TIER,' or ',B_TIER': the other silent); default: recognised (MFA too).")
flags.DEFINE_string('output', None, 'predict: where the JSON, CSV and PNG go (default '
                    "WORKDIR/predictions); stream, serve: the same (serve: and each session's "
                    'audio), written at the end, if given.')
flags.DEFINE_string('model_dir', None, 'predict, stream, serve, export: a converted VAP model '
                    '(python -m checkpoints_convert vap|conv_ssl SRC DIR) in place of the trained '
                    'one.')
flags.DEFINE_bool('pace', True, "stream: release a file's audio in real time.")
flags.DEFINE_string('host', '127.0.0.1', 'serve: the address to listen on (another than loopback '
                    'is warned about: anyone who reaches it can use the model).')
flags.DEFINE_integer('port', 8000, 'serve: the port (0: any free one).')
flags.DEFINE_float('context_s', None, 'stream, serve, export: attention context in seconds '
                   "(default: the model's own, else data.window_s, the longest it was trained on).")
flags.DEFINE_string('compilation_cache', '~/.cache/convssl_jax/xla',
                    'Persistent XLA compilation cache (reruns and resumes skip compiling); '
                    "'' turns it off. $JAX_COMPILATION_CACHE_DIR, when set, wins.")
flags.DEFINE_string('coordinator_address', None, 'Multi-process runs without a cluster manager: '
                    'host:port of process 0 (with --num_processes and --process_id).')
flags.DEFINE_integer('num_processes', None, 'Number of processes (with --coordinator_address).')
flags.DEFINE_integer('process_id', None, 'This process (with --coordinator_address).')
flags.DEFINE_bool('verbose', False, 'Tracebacks for user errors too.')


def _load(config):
  """(model, config, description) of --model_dir's converted model (data fields given on the
  command line win over its recipe's) or of --workdir's trained one."""
  from convssl_jax import trainer

  given = config_flags.get_override_values(FLAGS['config'])
  keep = {k[len('data.'):] for k in given if k.startswith('data.')}
  return trainer.load(config, workdir=FLAGS.workdir, model_dir=FLAGS.model_dir, keep_data=keep)


def _va_list():
  from convssl_jax import predict
  from convssl_jax.data import textgrid
  tiers = textgrid.parse_tiers(FLAGS.va_tiers)
  return predict.read_va_list(FLAGS.va, tiers=tiers) if FLAGS.va else None


def _report(config, results) -> None:
  import jax

  from convssl_jax import experiment
  if results is not None and jax.process_index() == 0:
    print(experiment.report(config, results))
    print(f'written to {pathlib.Path(FLAGS.workdir) / "eval"}')


def train(config) -> None:
  from convssl_jax import experiment
  results, evaluation = experiment.train(config, FLAGS.workdir)
  print(json.dumps(results, indent=2))
  _report(config, evaluation)


def evaluate(config) -> None:
  from convssl_jax import experiment
  _report(config, experiment.evaluate(config, FLAGS.workdir))


def predict(config) -> None:
  from convssl_jax import errors, predict as predict_lib
  if not FLAGS.audio:
    raise errors.UserError('--mode=predict needs --audio=FILE_OR_FOLDER')
  files = predict_lib.audio_files(FLAGS.audio)
  if FLAGS.va and len(files) > 1:
    raise errors.UserError('--va goes with a single --audio file, not a folder')
  va_list = _va_list()
  model, config, source = _load(config)
  print(f'model: {source}')
  output = FLAGS.output or pathlib.Path(FLAGS.workdir) / 'predictions'
  for line in predict_lib.predict_files(model, config, files, va_list, output, source=source,
                                       index=pathlib.Path(FLAGS.audio).is_dir()):
    print(line)


def stream(config) -> None:
  from convssl_jax import errors, live
  if not FLAGS.audio:
    raise errors.UserError('--mode=stream needs --audio=FILE, - (stdin PCM) or mic')
  va_list = _va_list()
  if not FLAGS.model_dir:  # a converted model's kind is known once it is loaded
    live.check_va(config.model, va_list)
  model, config, source = _load(config)
  print(f'model: {source}', file=sys.stderr)
  live.stream(model, config, FLAGS.audio, va_list=va_list, context_s=FLAGS.context_s,
              pace=FLAGS.pace, output=FLAGS.output, source=source)


def serve(config) -> None:
  from convssl_jax import serve as serve_lib
  serve_lib.require()  # aiohttp, before the model loads
  model, config, source = _load(config)
  print(f'model: {source}', file=sys.stderr)
  serve_lib.serve(model, config, audio=FLAGS.audio, output=FLAGS.output, host=FLAGS.host,
                  port=FLAGS.port, context_s=FLAGS.context_s, source=source)


def export(config) -> None:
  from convssl_jax import export as export_lib
  model, config, source = _load(config)
  output = FLAGS.output or pathlib.Path(FLAGS.workdir) / 'export'
  written, skipped = export_lib.export_model(model, config, output, FLAGS.context_s)
  if skipped:
    print(f'the streaming step is not exported: {skipped}')
  print(f'model: {source} -> ' + ', '.join(map(str, written)))


def cache_features(config) -> None:
  from convssl_jax import feature_cache
  directory = feature_cache.build(config, config.data.features
                                  or pathlib.Path(FLAGS.workdir) / 'features')
  print(f'feature cache: {directory}; train from it with --config.data.features={directory}')


def summary(config) -> None:
  from convssl_jax import experiment
  print(experiment.summary(config))


def data(config) -> None:
  from convssl_jax import corpora
  print('\n'.join(corpora.describe(config)))


def pretrain(config) -> None:
  from convssl_jax import pretrain as pretrain_lib
  print(json.dumps(pretrain_lib.pretrain(config, FLAGS.workdir), indent=2))


def units(config) -> None:
  from convssl_jax import units as units_lib
  print(units_lib.build_units(config))


MODES = {'train': train, 'eval': evaluate, 'predict': predict, 'stream': stream,
         'serve': serve, 'export': export, 'summary': summary, 'data': data,
         'cache_features': cache_features, 'pretrain': pretrain, 'units': units}
DISTRIBUTED_MODES = ('train', 'eval', 'cache_features', 'pretrain', 'units')


def setup() -> None:
  """The compilation cache; Orbax's INFO lines (dozens per checkpoint on every process) dropped."""
  import logging

  import jax
  from absl import logging as absl_logging

  if FLAGS.compilation_cache and not jax.config.jax_compilation_cache_dir:
    jax.config.update('jax_compilation_cache_dir', os.path.expanduser(FLAGS.compilation_cache))
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 1.0)
  absl_logging.get_absl_handler().addFilter(
      lambda record: record.levelno >= logging.WARNING or '/orbax/' not in record.pathname)
  if FLAGS.mode in DISTRIBUTED_MODES:
    from convssl_jax import parallelism
    parallelism.initialize_distributed(FLAGS.config.train.fsdp, FLAGS.coordinator_address,
                                       FLAGS.num_processes, FLAGS.process_id)


def main(argv):
  from convssl_jax import errors
  try:
    if len(argv) > 1:
      raise errors.UserError(f'unexpected arguments: {argv[1:]}')
    setup()
    MODES[FLAGS.mode](FLAGS.config)
  except errors.UserError as err:
    if FLAGS.verbose:
      raise
    print(f'error: {err}', file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
  app.run(main)
