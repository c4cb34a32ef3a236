"""JSON files a user gives (VA lists, word lists), read within bounds: a hostile or broken file is
refused with one line naming it, never a bare RecursionError or a parse that eats the machine.

Bounds: the file's size (`MAX_BYTES`, so parsing takes bounded memory and time), integers of at
most `MAX_INT_DIGITS` digits (Python's own limit is 4300, and the float conversion of anything
larger overflows), and the nesting depth the interpreter's JSON decoder allows (about a thousand
levels; VA lists need three).
"""

import json
import os
import stat

from convssl_jax import errors

MAX_BYTES = 16 << 20  # a dense VA list (two segments a second per speaker) for 2 days is ~8 MB
MAX_INT_DIGITS = 30


def read_bytes(path, *, max_bytes: int = MAX_BYTES) -> bytes:
  """A regular file's content, refused (InputError naming it) when missing, not a regular file
  (a FIFO or /dev/zero would be read without end) or larger than `max_bytes`."""
  too_large = errors.InputError(f'{path}: larger than {max_bytes >> 20} MB, the most such an '
                                'input may hold')
  try:
    if not stat.S_ISREG(os.stat(path).st_mode):
      raise errors.InputError(f'{path}: not a regular file')
    with open(path, 'rb') as f:
      size = os.fstat(f.fileno()).st_size
      if size > max_bytes:
        raise too_large
      data = f.read(size + 1)  # (a buffer of the read's size is allocated up front)
  except FileNotFoundError:
    raise errors.InputError(f'{path}: no such file') from None
  except OSError as err:
    raise errors.InputError(f'{path}: cannot read ({err.strerror})') from err
  if len(data) > size:  # it grew while we read it
    raise errors.InputError(f'{path}: changed while it was read')
  return data


def _int(text: str) -> int:
  if len(text.lstrip('-')) > MAX_INT_DIGITS:
    raise errors.InputError(f'an integer of {len(text.lstrip("-"))} digits (at most '
                            f'{MAX_INT_DIGITS})')
  return int(text)


def read_json(path, *, max_bytes: int = MAX_BYTES):
  """A JSON file's content (UTF-8, UTF-8 with BOM, UTF-16 or UTF-32); InputError naming the file
  when it is unreadable, too large, not JSON, nested too deeply or holds an oversized integer."""
  data = read_bytes(path, max_bytes=max_bytes)
  try:
    return json.loads(data, parse_int=_int)
  except errors.InputError as err:
    raise errors.InputError(f'{path}: not a usable JSON file: {err}') from None
  except RecursionError:
    raise errors.InputError(f'{path}: not a usable JSON file: nested too deeply') from None
  except (json.JSONDecodeError, UnicodeDecodeError) as err:
    raise errors.InputError(f'{path}: not valid JSON ({err})') from err
