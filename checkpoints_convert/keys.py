"""Key accounting shared by the converters: every expected tensor present once, nothing unknown."""

import re

import numpy as np

from convssl_jax import errors

from checkpoints_convert import torch_file, torch_pickle

_LISTED = 20  # problems named in one error; the rest are counted


class ConversionError(errors.UserError, ValueError):
  """The checkpoint does not describe (or does not hold) a model we can reproduce; the message
  (one line) starts with the file's path."""

  def __init__(self, message: str):
    super().__init__(torch_pickle.one_line(message))


def listed(items: list[str], separator: str = ', ') -> str:
  """The first items joined, the rest counted: one error names what is wrong, not all of it."""
  more = [f'and {len(items) - _LISTED} more'] if len(items) > _LISTED else []
  return separator.join(items[:_LISTED] + more)


def strip_module_prefix(weights: dict, path: str) -> dict:
  """`weights` with a leading `module.` (DataParallel) removed from every key."""
  stripped = {}
  for key, value in weights.items():
    name = key.removeprefix('module.')
    if name in stripped:
      raise ConversionError(f'{path}: weights hold {name!r} twice (with and without module.)')
    stripped[name] = value
  return stripped


def shape(weights: dict, key: str, path: str, ndim: int) -> tuple[int, ...]:
  """The shape of `weights[key]`, a tensor the architecture is read from (so it must be there,
  with `ndim` dimensions, none empty)."""
  if key not in weights:
    raise ConversionError(f'{path}: missing {key}, needed to read the architecture')
  found = np.shape(weights[key])
  if len(found) != ndim or not all(found):
    raise ConversionError(f'{path}: {key} has shape {found}, expected {ndim} non-empty '
                          'dimensions')
  return found


def count(weights: dict, pattern: str) -> int:
  r"""How many distinct values (e.g. layer indices) group 1 of `pattern` takes over the keys.

  `pattern` is matched at the start of each key (re.match): end it with `\Z` to match whole keys.
  """
  return len({m[1] for k in weights if (m := re.match(pattern, k))})


def checked(weights: dict, shapes: dict[str, tuple[int, ...]], path: str, what: str,
            source_names: dict[str, str] | None = None) -> dict[str, np.ndarray]:
  """`weights` as float32, after checking they hold exactly the keys and shapes of `shapes`.

  Every missing, unknown or misshapen key is listed in one ConversionError. `source_names` maps a
  renamed key back to the file's own name for the message.
  """
  name = lambda k: (source_names or {}).get(k, k)
  problems = [f'missing {k}' for k in shapes if k not in weights]
  problems += [f'unknown {name(k)}' for k in weights if k not in shapes]
  problems += [f'{name(k)} has shape {tuple(np.shape(v))}, expected {shapes[k]}'
               for k, v in weights.items() if k in shapes and np.shape(v) != shapes[k]]
  if problems:
    raise ConversionError(f'{path}: weights do not match the {what}: {listed(problems, "; ")}')
  return torch_file.as_float32(dict(weights))
