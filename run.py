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
  config          the resolved config, a field a line with its comment (then checked)
Training records its config in --workdir (workdir_config.py); the modes that read a trained model
take it from there when --config is not given (a --config given is checked against it).
A user error (a bad flag or config value, a missing or invalid input, a refused checkpoint, a
workdir in use by another run) is one line on stderr and exit code 2; --verbose shows its
traceback too. The modes that write into --workdir hold its lock (convssl_jax/workdir_lock.py).
"""

import contextlib
import importlib.util
import json
import os
import pathlib
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
  from convssl_jax.data import textgrid
  if not FLAGS.audio:
    raise errors.UserError('--mode=predict needs --audio=FILE_OR_FOLDER')
  folder = pathlib.Path(FLAGS.audio).is_dir()
  if FLAGS.va and folder:
    raise errors.UserError('--va goes with a single --audio file; a folder\'s files are read '
                           'with the VA list or TextGrid beside each one (<name>.json, '
                           '<name>.TextGrid)')
  files = predict_lib.audio_files(FLAGS.audio)
  va_list = _va_list()
  model, config, source = _load(config)
  print(f'model: {source}')
  output = FLAGS.output or pathlib.Path(FLAGS.workdir) / 'predictions'
  predict_lib.predict_files(model, config, files, va_list, output, source=source, index=folder,
                            beside=folder, tiers=textgrid.parse_tiers(FLAGS.va_tiers))


def stream(config) -> None:
  from convssl_jax import errors, live
  if not FLAGS.audio:
    raise errors.UserError('--mode=stream needs --audio=FILE, - (stdin PCM) or mic')
  va_list = _va_list()
  live.check_va(live.model_config(config, FLAGS.model_dir), va_list)  # before any weights
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
  written, skipped = export_lib.export_model(model, config, output, FLAGS.context_s,
                                             FLAGS.export_platforms)
  if skipped:
    print(f'the streaming step is not exported: {skipped}')
  print(f'model: {source} -> ' + ', '.join(map(str, written))
        + f' (for {", ".join(FLAGS.export_platforms)})')


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


def show_config(config) -> None:
  from convssl_jax import config_fields
  if FLAGS['config'].present or not _recorded():
    spec = config_flags.get_config_filename(FLAGS['config'])
    title, files = spec, [spec.split(':')[0]]
  else:
    title, files = f'{FLAGS.workdir}/config.json', config_fields.all_config_files()
  overrides = config_flags.get_override_values(FLAGS['config'])
  title += ''.join(f' --config.{k}={v}' for k, v in overrides.items())
  print(config_fields.describe(config, files, title))


MODES = {'train': train, 'eval': evaluate, 'predict': predict, 'stream': stream,
         'serve': serve, 'export': export, 'summary': summary, 'data': data,
         'cache_features': cache_features, 'pretrain': pretrain, 'units': units,
         'config': show_config}
DISTRIBUTED_MODES = ('train', 'eval', 'cache_features', 'pretrain', 'units')
BATCHED_MODES = ('train', 'eval', 'predict', 'cache_features', 'pretrain')
# The modes that take --workdir's recorded config when --config is not given.
WORKDIR_MODES = ('train', 'eval', 'predict', 'stream', 'serve', 'export', 'cache_features',
                 'config')
LOCKING_MODES = ('train', 'eval', 'cache_features', 'pretrain')  # they write into --workdir


def _recorded() -> bool:
  from convssl_jax import workdir_config
  return (pathlib.Path(FLAGS.workdir) / workdir_config.CONFIG_FILE).is_file()


def resolved_config():
  """--config, or where it is not given, the config --workdir recorded when it was trained (with
  the --config.a.b overrides); a --config given is checked against the record."""
  from convssl_jax import workdir_config
  if FLAGS.mode not in WORKDIR_MODES or FLAGS.model_dir:
    return FLAGS.config
  given = FLAGS.config if FLAGS['config'].present else None
  if FLAGS.mode == 'config' and given is not None:
    return given  # shown as given
  resolved = workdir_config.resolve(FLAGS.workdir, given,
                                    config_flags.get_override_values(FLAGS['config']))
  return FLAGS.config if resolved is None else resolved


def setup(config) -> None:
  """The compilation cache; Orbax's INFO lines (dozens per checkpoint on every process) dropped;
  the processes joined (for the modes that run on several)."""
  import logging

  import jax
  from absl import logging as absl_logging

  if FLAGS.compilation_cache and not jax.config.jax_compilation_cache_dir:
    jax.config.update('jax_compilation_cache_dir', os.path.expanduser(FLAGS.compilation_cache))
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 1.0)
  absl_logging.get_absl_handler().addFilter(
      lambda record: record.levelno >= logging.WARNING or '/orbax/' not in record.pathname)
  # JAX's "Unable to initialize backend 'tpu'/'proxy'" INFO lines on every CPU or GPU start.
  logging.getLogger('jax._src.xla_bridge').setLevel(logging.WARNING)
  if FLAGS.mode in DISTRIBUTED_MODES:
    from convssl_jax import parallelism
    parallelism.initialize_distributed(config.train.fsdp, FLAGS.coordinator_address,
                                       FLAGS.num_processes, FLAGS.process_id, FLAGS.distributed)


def main(argv):
  from convssl_jax import errors
  try:
    if len(argv) > 1:
      raise errors.UserError(f'unexpected arguments: {argv[1:]}')
    config = resolved_config()
    if FLAGS.mode == 'config':
      show_config(config)
    from convssl_jax import config_check
    config_check.check(config)  # before any work
    if FLAGS.mode == 'config':
      return
    setup(config)
    if FLAGS.mode in BATCHED_MODES:
      import jax
      config_check.check_devices(config, jax.device_count())
    from convssl_jax import workdir_lock
    with (workdir_lock.hold(FLAGS.workdir) if FLAGS.mode in LOCKING_MODES
          else contextlib.nullcontext()):
      MODES[FLAGS.mode](config)
  except errors.UserError as err:
    if FLAGS.verbose:
      raise
    print(f'error: {err}', file=sys.stderr)
    sys.exit(2)


def _config_argument(argv) -> str:
  """The --config argument on the command line (the default without one)."""
  for i, arg in enumerate(argv):
    if arg in ('--config', '-config') and i + 1 < len(argv):
      return argv[i + 1]
    if arg.startswith(('--config=', '-config=')):
      return arg.split('=', 1)[1]
  return DEFAULT_CONFIG


TYPE_NAMES = {'int': 'an integer', 'float': 'a number', 'bool': 'true or false',
              'string': 'a string'}


def _flag_error(err: Exception, argv) -> str:
  """absl's message of a bad flag in one line: a config field's value with the type it needs, a
  config file's own error without its traceback."""
  message = str(err).strip()
  flag, _, reason = message.removeprefix('flag --').partition(': ')
  name = flag.split('=', 1)[0]
  if name.startswith('config.') and name in FLAGS:
    kind = FLAGS[name].parser.flag_type()
    return f'--{flag}: {name[len("config."):]} takes {TYPE_NAMES.get(kind, kind)}'
  if name == 'config' and 'Traceback' in reason:  # the config file's get_config raised
    return f'--config={_config_argument(argv)}: {reason.splitlines()[-1].split(": ", 1)[-1]}'
  return ' '.join(line.strip() for line in message.removeprefix('flag ').splitlines() if line)


def _read_config(spec: str):
  """The config of a --config argument FILE[:ARG], read as ml_collections reads it."""
  path, colon, arg = spec.partition(':')
  module_spec = importlib.util.spec_from_file_location('config_file', path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(*([arg] if colon else []))


def _unknown_field(argv) -> str | None:
  """What is wrong with the first --config.a.b override that names no field of the config."""
  from convssl_jax import config_fields
  config = _read_config(_config_argument(argv))
  missing = object()
  for arg in argv:
    if arg.startswith(('--config.', '-config.', '--noconfig.')):
      path = arg.split('=', 1)[0].split('config.', 1)[1]
      if config_fields.lookup(config, path, missing) is missing:
        return f'--config.{path}: {config_fields.unknown_field(config, path)}'
  return None


def parse_flags(argv):
  """absl's flag parsing, with each bad flag or config field in one line (exit 2) and --help
  exiting 0 (absl's exits 1)."""
  message = _unknown_field(argv) if _UNKNOWN_AT_START else None
  try:
    if message is None:
      args = FLAGS(argv)
      FLAGS.config.keys()  # ml_collections defers a config file's load error to here
      return args
  except SystemExit as exit_:  # --help, --helpfull: the help is printed, then exit(1)
    sys.exit(0 if exit_.code == 1 else exit_.code)
  except OSError as err:
    cause = str(err.__cause__ or err).strip().splitlines()[-1].strip()
    message = f'--config={_config_argument(argv)}: the config file cannot be loaded ({cause})'
  except flags.Error as err:
    message = _flag_error(err, argv)
  except (KeyError, AttributeError):  # ml_collections on a --config.a.b naming no field
    message = _unknown_field(argv)
    if message is None:
      raise
  print(f'error: {message}', file=sys.stderr)
  sys.exit(2)


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
