"""run.py's flag parsing with every mistake in one line: a bad flag, a config field's value of the
wrong type, a --config.a.b naming no field (with the nearest names), a config file that does not
load. absl would print a usage dump or a traceback; --help exits 0 (absl's exits 1)."""

import importlib.util
import sys

from absl import flags

TYPE_NAMES = {'int': 'an integer', 'float': 'a number', 'bool': 'true or false',
              'string': 'a string'}


def config_argument(argv, default: str) -> str:
  """The --config argument on the command line (`default` without one)."""
  for i, arg in enumerate(argv):
    if arg in ('--config', '-config') and i + 1 < len(argv):
      return argv[i + 1]
    if arg.startswith(('--config=', '-config=')):
      return arg.split('=', 1)[1]
  return default


def _flag_error(flag_values, err: Exception, argv, default: str) -> str:
  """absl's message of a bad flag in one line: a config field's value with the type it needs, a
  config file's own error without its traceback."""
  message = str(err).strip()
  flag, _, reason = message.removeprefix('flag --').partition(': ')
  name = flag.split('=', 1)[0]
  if name.startswith('config.') and name in flag_values:
    kind = flag_values[name].parser.flag_type()
    return f'--{flag}: {name[len("config."):]} takes {TYPE_NAMES.get(kind, kind)}'
  if name == 'config' and 'Traceback' in reason:  # the config file's get_config raised
    return (f'--config={config_argument(argv, default)}: '
            f'{reason.splitlines()[-1].split(": ", 1)[-1]}')
  return ' '.join(line.strip() for line in message.removeprefix('flag ').splitlines() if line)


def _read_config(spec: str):
  """The config of a --config argument FILE[:ARG], read as ml_collections reads it."""
  path, colon, arg = spec.partition(':')
  module_spec = importlib.util.spec_from_file_location('config_file', path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(*([arg] if colon else []))


def unknown_field(argv, default: str) -> str | None:
  """What is wrong with the first --config.a.b override that names no field of the config."""
  from convssl_jax import config_fields
  config = _read_config(config_argument(argv, default))
  missing = object()
  for arg in argv:
    if arg.startswith(('--config.', '-config.', '--noconfig.')):
      path = arg.split('=', 1)[0].split('config.', 1)[1]
      if config_fields.lookup(config, path, missing) is missing:
        return f'--config.{path}: {config_fields.unknown_field(config, path)}'
  return None


def parse(flag_values, argv, default_config: str, unknown_at_start: bool):
  """`flag_values(argv)` (absl's parsing), or one `error:` line on stderr and exit 2.

  `unknown_at_start`: defining --config already failed on an override naming no field (without
  --config, ml_collections reads the default file with the overrides when the flag is defined).
  """
  message = unknown_field(argv, default_config) if unknown_at_start else None
  try:
    if message is None:
      args = flag_values(argv)
      flag_values.config.keys()  # ml_collections defers a config file's load error to here
      return args
  except SystemExit as exit_:  # --help, --helpfull: the help is printed, then exit(1)
    sys.exit(0 if exit_.code == 1 else exit_.code)
  except OSError as err:
    cause = str(err.__cause__ or err).strip().splitlines()[-1].strip()
    message = (f'--config={config_argument(argv, default_config)}: the config file cannot be '
               f'loaded ({cause})')
  except flags.Error as err:
    message = _flag_error(flag_values, err, argv, default_config)
  except (KeyError, AttributeError):  # ml_collections on a --config.a.b naming no field
    message = unknown_field(argv, default_config)
    if message is None:
      raise
  print(f'error: {message}', file=sys.stderr)
  sys.exit(2)
