"""A training run's config, remembered by its workdir: WORKDIR/config.json (the resolved config)
and WORKDIR/command.txt (the command line that started the run), written when training starts
(and on every resume), so that evaluation, prediction, streaming, export and the feature cache
need only `--workdir`.

A config given anyway (and the `--config.a.b=v` overrides) is checked against the record. Fields
that fix what the trained parameters are and what they hear must be equal (`FIXED`): `model.*`
(kind, sizes, frame rate, encoder and its padding, attention context, head and bins, ...) and the
input transforms `data.normalize` and `data.history_times`; except the `model.*` fields that only
say how the same model is computed or where its initial weights were (`RUNTIME`). Every other
field may differ: `data.*` (where the corpus is, which corpus, windows, batch size), `eval.*`,
`train.*` (a resumed run may train longer), `seed`.
"""

import json
import os
import pathlib
import shlex
import sys

import jax
import ml_collections
from absl import logging

from convssl_jax import errors
from convssl_jax.config_fields import flatten, lookup

CONFIG_FILE, COMMAND_FILE = 'config.json', 'command.txt'
# The model.* fields that may differ from the record: compute dtype and attention implementation
# (same parameters), the LSTM scan unroll, the dropout rate (training only) and where the encoder's
# initial weights were read from (a trained model restores its own).
RUNTIME = ('model.dtype', 'model.transformer.attention', 'model.encoder.unroll',
           'model.transformer.dropout', 'model.encoder_checkpoint')
INPUTS = ('data.normalize', 'data.history_times')  # what the model hears


def fixed(path: str) -> bool:
  """Whether the field `path` must equal the workdir's record."""
  return (path.startswith('model.') and path not in RUNTIME) or path in INPUTS


def _tuples(value):
  """JSON's lists back to the configs' tuples."""
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  return value


def read(workdir) -> ml_collections.ConfigDict | None:
  """The config `workdir` was trained with (locked), or None if it has no record."""
  path = pathlib.Path(workdir) / CONFIG_FILE
  if not path.is_file():
    return None
  try:
    stored = json.loads(path.read_text(encoding='utf-8'))
  except (ValueError, OSError) as err:
    raise errors.InputError(f'{path}: not a readable config ({err}); remove it and give --config '
                            'as when the run was trained') from None
  if not isinstance(stored, dict):
    raise errors.InputError(f'{path}: not a config (a {type(stored).__name__})')
  config = ml_collections.ConfigDict(_tuples(stored))
  config.lock()
  return config


def differences(config, recorded) -> list[str]:
  """'path (recorded value there, this value here)' for each FIXED field that differs."""
  ours, theirs = dict(flatten(config)), dict(flatten(recorded))
  missing = object()
  found = []
  for path in dict.fromkeys([*theirs, *ours]):
    mine, stored = ours.get(path, missing), theirs.get(path, missing)
    if fixed(path) and mine != stored:
      show = lambda v: 'absent' if v is missing else repr(v)
      found.append(f'{path} ({show(stored)} there, {show(mine)} here)')
  return found


def check(config, workdir) -> ml_collections.ConfigDict | None:
  """The workdir's record, after refusing (ConfigError, one line) a `config` whose FIXED fields
  differ from it; None without a record."""
  recorded = read(workdir)
  if recorded is not None and (found := differences(config, recorded)):
    shown = ', '.join(found[:6]) + (f' and {len(found) - 6} more' if len(found) > 6 else '')
    raise errors.ConfigError(
        f'the config differs from the one {workdir} was trained with ({CONFIG_FILE}) in {shown}; '
        'these fix the trained model: leave out --config (the workdir\'s is used) or use another '
        '--workdir')
  return recorded


def resolve(workdir, given=None, overrides: dict | None = None) -> ml_collections.ConfigDict | None:
  """The config to run `workdir`'s model with: `given` (a --config) checked against the record,
  or (`given` None) the record with `overrides` ({dotted path: value}) applied and checked; None
  without a record (the caller's default config applies)."""
  recorded = read(workdir)
  if recorded is None:
    if given is None and (pathlib.Path(workdir) / 'checkpoints').is_dir():
      logging.warning('%s has checkpoints but no %s (trained before workdirs recorded their '
                      'config): the default config is used; give the --config it was trained '
                      'with if that differs', workdir, CONFIG_FILE)
    return given
  if given is None:
    given = ml_collections.ConfigDict(recorded.to_dict())
    for path, value in (overrides or {}).items():
      section, _, key = path.rpartition('.')
      node = lookup(given, section) if section else given
      if not hasattr(node, 'keys') or key not in node.keys():
        raise errors.ConfigError(f'--config.{path}: the config of {workdir} ({CONFIG_FILE}) has '
                                 'no such field')
      node[key] = value
    given.lock()
  check(given, workdir)
  return given


def _write(path: pathlib.Path, text: str) -> None:
  """`text` into `path` atomically: a reader sees the old file or the new one, never a part."""
  partial = path.with_name(f'.{path.name}.{os.getpid()}.tmp')
  partial.write_text(text, encoding='utf-8')
  os.replace(partial, path)


def record(config, workdir, command: list[str] | None = None) -> None:
  """Remembers `config` (refused if its FIXED fields differ from an existing record: resuming
  another model's checkpoints) and the command line (default: this process's) in `workdir`;
  process 0 writes."""
  check(config, workdir)
  if jax.process_index() != 0:
    return
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  _write(workdir / CONFIG_FILE, json.dumps(config.to_dict(), indent=2) + '\n')
  command = sys.argv if command is None else command
  _write(workdir / COMMAND_FILE, shlex.join(['python', *command]) + '\n')
