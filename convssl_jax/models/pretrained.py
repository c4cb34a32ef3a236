"""Converted pretrained encoders on disk: `DIR/config.json` plus an Orbax checkpoint `DIR/params`.

`python -m checkpoints_convert FORMAT SRC DIR` writes them; reading needs neither torch nor the
converter. `config.json` is {'name': 'cpc', 'dim', 'lstm_layers', 'padding' (the one its
weights were trained with; 'reference' when absent: CPC_audio's), 'source'} or, for the
wav2vec2 family, {'name': 'hubert' | 'wav2vec2' | 'wavlm', 'format', 'architecture' (an
`SSLConfig`), 'ignored_keys', 'source'}.
"""

import json
import math
import os
import pathlib

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from convssl_jax import errors
from convssl_jax.models import cpc, ssl_encoders

CONFIG_FILE, PARAMS_DIR = 'config.json', 'params'


def save(directory: str | os.PathLike, config: dict, params: dict) -> None:
  """Writes `config` (JSON) and the encoder's `params` pure dict (Orbax) into a new `directory`."""
  directory = pathlib.Path(directory).absolute()
  directory.mkdir(parents=True, exist_ok=True)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(directory / PARAMS_DIR, jax.tree.map(np.asarray, params))
  checkpointer.wait_until_finished()
  (directory / CONFIG_FILE).write_text(json.dumps(config, indent=1) + '\n')


def read_config(directory: str | os.PathLike) -> dict:
  """The stored config.json of a converted encoder or VAP model (architecture, padding, source;
  a VAP model's `model` and `data` settings)."""
  return json.loads((pathlib.Path(directory) / CONFIG_FILE).read_text())


# What a converted encoder's config.json leaves out means: CPC_audio's weights take the waveform
# as it is (our own pretraining records its `input_gain`).
STORED_DEFAULTS = {'input_gain': 1.0}
# The model config's field for each stored setting a model must match.
CONFIG_FIELDS = {'name': 'model.encoder.name', 'dim': 'model.dim',
                 'lstm_layers': 'model.encoder.lstm_layers',
                 'input_gain': 'model.encoder.input_gain'}


def _stored(config: dict, key: str):
  """A converted encoder's setting `key`, or what its absence means."""
  return config.get(key, STORED_DEFAULTS.get(key))


def load(directory: str | os.PathLike) -> tuple[dict, dict]:
  """(config, params as a pure dict of numpy arrays) of a converted encoder."""
  directory = pathlib.Path(directory).absolute()
  config = read_config(directory)
  gain = _stored(config, 'input_gain')
  if not (type(gain) in (int, float) and math.isfinite(gain) and gain > 0):  # bool is no gain
    raise errors.InputError(
        f'{directory / CONFIG_FILE}: input_gain={gain!r} must be a finite number > 0 (the scale '
        'of the waveform the encoder was trained on; absent: 1)')
  params = ocp.StandardCheckpointer().restore(directory / PARAMS_DIR)
  return config, jax.tree.map(np.asarray, params)


def _flat_shapes(tree) -> dict[str, tuple[int, ...]]:
  return {'/'.join(str(getattr(k, 'key', k)) for k in path): tuple(np.shape(leaf))
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def assign(module: nnx.Module, params: dict) -> None:
  """Sets `module`'s parameters to `params` (a pure dict), which must fill every one exactly."""
  state = nnx.state(module, nnx.Param)
  want, have = _flat_shapes(nnx.to_pure_dict(state)), _flat_shapes(params)
  problems = [f'{k} is missing' for k in sorted(want.keys() - have.keys())]
  problems += [f'{k} is unexpected' for k in sorted(have.keys() - want.keys())]
  problems += [f'{k} has shape {have[k]}, the module {want[k]}'
               for k in sorted(want.keys() & have.keys()) if want[k] != have[k]]
  if problems:
    raise ValueError(f'converted parameters do not fit {type(module).__name__}: ' +
                     '; '.join(problems))
  nnx.replace_by_pure_dict(state, params)
  nnx.update(module, state)


def load_into(encoder: nnx.Module, directory: str | os.PathLike, expected: dict) -> dict:
  """Loads the converted encoder in `directory` into `encoder`, after checking that its config
  matches `expected` (e.g. {'name': 'cpc', 'dim': model.dim, 'lstm_layers': ...}); returns the
  stored config."""
  config, params = load(directory)
  stored = {k: _stored(config, k) for k in expected}
  if wrong := [k for k, v in expected.items() if stored[k] != v]:
    raise errors.ConfigError(
        f'the converted encoder in {directory} does not fit the model: ' +
        ', '.join(f'{k}={stored[k]!r} (the model has {expected[k]!r})' for k in wrong) +
        '; give ' + ' '.join(f'--config.{CONFIG_FIELDS[k]}={stored[k]}' for k in wrong))
  assign(encoder, params)
  return config


def ssl_config(directory: str | os.PathLike) -> ssl_encoders.SSLConfig:
  """The architecture of the converted HuBERT / wav2vec2 / WavLM encoder in `directory`."""
  config = read_config(directory)
  if config.get('name') not in ssl_encoders.NAMES:
    raise ValueError(f'{directory}: encoder {config.get("name")!r} is not one of '
                     f'{list(ssl_encoders.NAMES)}')
  return ssl_encoders.SSLConfig.from_dict(config['architecture'])


def load_encoder(directory: str | os.PathLike,
                 **kwargs) -> cpc.CPCEncoder | ssl_encoders.SSLEncoder:
  """The converted encoder in `directory` as an NNX module; `module(wave)` with wave [B, S] at
  16 kHz gives [B, T, D] (CPC: the LSTM output at 100 Hz; the others: the last layer at 50 Hz).

  `kwargs` go to the module: CPC's `padding` ('reference', the default, reproduces the PyTorch
  numbers; 'causal' removes the lookahead but shifts what the weights see), `input_gain` (default:
  the one it was trained with), `unroll`, `dtype`; the others' `output_layer`, `dtype`.
  """
  config, params = load(directory)
  name = config.get('name')
  if name == 'cpc':
    kwargs.setdefault('padding', 'reference')
    kwargs.setdefault('input_gain', _stored(config, 'input_gain'))
    encoder = cpc.CPCEncoder(dim=config['dim'], lstm_layers=config['lstm_layers'],
                             rngs=nnx.Rngs(0), **kwargs)
  elif name in ssl_encoders.NAMES:
    encoder = ssl_encoders.SSLEncoder(ssl_encoders.SSLConfig.from_dict(config['architecture']),
                                      rngs=nnx.Rngs(0), **kwargs)
  else:
    raise ValueError(f'{directory}: encoder {name!r} is not supported; expected one of '
                     f'{["cpc", *ssl_encoders.NAMES]}')
  assign(encoder, params)
  return encoder
