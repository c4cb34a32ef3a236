"""What a checkpoint stores, read as untrusted input: config values typed and bounded before they
size anything, sections and state dicts checked to be what the converters index. Every refusal is
one `ConversionError` line naming the file and the field.

The bounds are far above every released model (HuBERT / wav2vec2 / WavLM X-Large: 48 layers,
width 1280, FFN 5120, 16 heads, 7 conv layers; CPC_audio: width 256, 2 LSTM layers; VAP: width
256, 4 layers) and far below what describing the architecture alone would exhaust memory with
(CPC nLevelsGRU=3,000,000 took 4.7 GB before this check).
"""

import math

import numpy as np

from checkpoints_convert import torch_pickle
from checkpoints_convert.keys import ConversionError

MAX_LAYERS = 256  # transformer, LSTM and conv-stack depths
MAX_WIDTH = 65536  # widths, FFN sizes, channels
MAX_HEADS = 1024
MAX_CONV_LAYERS = 64
MAX_KERNEL = 4096  # kernels, strides, positional conv taps
MAX_BUCKETS = 65536  # WavLM relative position buckets and max distance
MAX_WINDOW_S = 3600.0

show = torch_pickle.short  # a stored value in a message


def integer(value, name: str, path: str, low: int, high: int) -> int:
  """`value` if it is an int in [low, high]; else a ConversionError naming `name`."""
  if type(value) is not int or not low <= value <= high:
    raise ConversionError(f'{path}: {name}={show(value)} must be an integer in [{low}, {high}]')
  return value


def flag(value, name: str, path: str) -> bool:
  """`value` as a bool if it is one (or the int 0 or 1, as old argparse configs store flags)."""
  if type(value) is not bool and not (type(value) is int and value in (0, 1)):
    raise ConversionError(f'{path}: {name}={show(value)} must be true or false')
  return bool(value)


def seconds(value, name: str, path: str, high: float = MAX_WINDOW_S) -> float:
  """`value` as a float if it is a number of seconds in (0, high]."""
  if (type(value) not in (int, float) or not math.isfinite(value)
      or not 0 < value <= high):
    raise ConversionError(f'{path}: {name}={show(value)} must be a duration in (0, {high}] s')
  return float(value)


def text(value, name: str, path: str) -> str | None:
  """`value` if it is a string or None."""
  if value is not None and type(value) is not str:
    raise ConversionError(f'{path}: {name}={show(value)} must be a string')
  return value


def one_of(value, choices: tuple) -> bool:
  """Whether `value` is one of the string (or None) `choices`; never compares anything else (an
  array would compare elementwise)."""
  return (value is None or type(value) is str) and value in choices


def mapping(value, name: str, path: str) -> dict:
  """`value` if it is a dict (a config section, a Namespace's attributes)."""
  if not isinstance(value, dict):
    raise ConversionError(f'{path}: {name} is a {type(value).__name__}, not a dict')
  return value


def section(config: dict, fields: tuple[str, ...], name: str, path: str) -> dict:
  """`config[fields[0]][fields[1]]...`, {} where a field is absent or None; an error where one
  is present but not a dict. `name`: how `config` is named (e.g. 'hyper_parameters')."""
  for i, field in enumerate(fields):
    config = config.get(field)
    if config is None:
      return {}
    mapping(config, f"{name}{''.join(f'[{f!r}]' for f in fields[:i + 1])}", path)
  return config


def state_dict(value, name: str, path: str) -> dict[str, np.ndarray]:
  """`value` if it maps strings to arrays (a state dict)."""
  mapping(value, name, path)
  for key, array in value.items():
    if type(key) is not str:
      raise ConversionError(f'{path}: {name} has the key {show(key)}, not a string')
    if not isinstance(array, np.ndarray):
      raise ConversionError(f'{path}: {name}[{key!r}] is a {type(array).__name__}, not a tensor')
  return value


def found(checkpoint) -> str:
  """What a checkpoint of an unexpected layout holds, for messages: its first keys or its type."""
  if isinstance(checkpoint, dict):
    return repr(sorted(k[:60] if isinstance(k, str) else show(k) for k in checkpoint)[:12])
  return type(checkpoint).__name__
