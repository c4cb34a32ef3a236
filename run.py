"""convssl-jax entry point: `python run.py --config=configs/vap.py[:variant] --mode=MODE`.

Flags and dispatch only; each mode is a library call (convssl_jax/modes.py, README "Layout"):
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
  config          the resolved config, a field a line with its comment (then checked)
Training records its config in --workdir (workdir_config.py); the modes that read a trained model
take it from there when --config is not given (a --config given is checked against it).
A user error (a bad flag or config value, a missing or invalid input, a refused checkpoint, a
workdir in use by another run) is one line on stderr and exit code 2; --verbose shows its
traceback too. The modes that write into --workdir hold its lock (convssl_jax/workdir_lock.py).
"""

import dataclasses
import sys

from absl import app, flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
DEFAULT_CONFIG = 'configs/vap.py'
try:
  config_flags.DEFINE_config_file('config', DEFAULT_CONFIG, 'Config file[:variant,...] (default: '
                                  "--workdir's own, if it has one, else configs/vap.py).",
                                  lock_config=True)
  _UNKNOWN_AT_START = False
except (KeyError, AttributeError):  # without --config, the default is read here, with the
  _UNKNOWN_AT_START = True          # --config.a.b overrides: one names no field (parse_flags)
flags.DEFINE_enum('mode', 'train', ['train', 'eval', 'predict', 'stream', 'serve', 'export',
                                    'summary', 'data', 'cache_features', 'pretrain', 'units',
                                    'config'],
                  'What to run.')
flags.DEFINE_string('workdir', 'workdir', 'Checkpoints, TensorBoard events and metrics go here.')
flags.DEFINE_string('audio', None, 'predict: an audio file (stereo: one speaker per channel; mono: '
                    'speaker A) or a folder of them. stream: a file, - (stdin PCM) or mic. serve: '
                    'recordings (a file or folder) offered as partners and to stream as if live.')
flags.DEFINE_string('va', None, 'predict, stream: a VA list (JSON [[[start, end], ...] of A, [...] '
                    'of B], or a TextGrid) for one --audio file; needed by the mono model. A '
                    "folder's files use the <name>.json or <name>.TextGrid beside each.")
flags.DEFINE_string('va_tiers', '', "predict, stream: a TextGrid's speaker tiers, 'A_TIER,B_TIER' "
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
flags.DEFINE_list('export_platforms', ['cpu', 'cuda', 'tpu'], 'export: the platforms the artifacts '
                  'are lowered for (of cpu, cuda, rocm, tpu); each runs on any of them.')
flags.DEFINE_string('compilation_cache', '~/.cache/convssl_jax/xla',
                    'Persistent XLA compilation cache (reruns and resumes skip compiling); '
                    "'' turns it off. $JAX_COMPILATION_CACHE_DIR, when set, wins.")
flags.DEFINE_string('coordinator_address', None, 'Multi-process runs without a cluster manager: '
                    'host:port of process 0 (with --num_processes and --process_id).')
flags.DEFINE_integer('num_processes', None, 'Number of processes (with --coordinator_address).')
flags.DEFINE_integer('process_id', None, 'This process (with --coordinator_address).')
flags.DEFINE_enum('distributed', 'auto', ['auto', 'on', 'off'], 'train, eval, cache_features, '
                  'pretrain, units: jax.distributed across processes: auto (an explicit coordinator, '
                  'or what SLURM, Open MPI or a Cloud TPU pod slice sets), on (always), off (never).')
flags.DEFINE_bool('verbose', False, 'Tracebacks for user errors too.')



# The flags that are modes.Options fields of the same name and value.
OPTION_FLAGS = ('mode', 'workdir', 'audio', 'va', 'va_tiers', 'output', 'model_dir', 'pace', 'host',
                'port', 'context_s', 'compilation_cache', 'coordinator_address', 'num_processes',
                'process_id', 'distributed')


def main(argv):
  from convssl_jax import errors, modes
  try:
    if len(argv) > 1:
      raise errors.UserError(f'unexpected arguments: {argv[1:]}')
    options = modes.Options(
        config_given=FLAGS['config'].present,
        config_spec=config_flags.get_config_filename(FLAGS['config']),
        overrides=config_flags.get_override_values(FLAGS['config']),
        export_platforms=tuple(FLAGS.export_platforms),
        **{f.name: FLAGS[f.name].value for f in dataclasses.fields(modes.Options)
           if f.name in OPTION_FLAGS})
    modes.run(FLAGS.config, options)
  except errors.UserError as err:
    if FLAGS.verbose:
      raise
    print(f'error: {err}', file=sys.stderr)
    sys.exit(2)


def parse_flags(argv):
  from convssl_jax import flag_errors
  return flag_errors.parse(FLAGS, argv, DEFAULT_CONFIG, _UNKNOWN_AT_START)


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
