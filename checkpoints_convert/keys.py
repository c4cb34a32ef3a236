"""Key accounting shared by the converters: every expected tensor present once, nothing unknown."""

import numpy as np

from checkpoints_convert import torch_file


class ConversionError(ValueError):
  """The checkpoint does not describe (or does not hold) a model we can reproduce."""


def strip_module_prefix(weights: dict, path: str) -> dict:
  """`weights` with a leading `module.` (DataParallel) removed from every key."""
  stripped = {}
  for key, value in weights.items():
    name = key.removeprefix('module.')
    if name in stripped:
      raise ConversionError(f'{path}: weights hold {name!r} twice (with and without module.)')
    stripped[name] = value
  return stripped


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
    raise ConversionError(f'{path}: weights do not match the {what}: ' + '; '.join(problems))
  return torch_file.as_float32(dict(weights))
