"""A recording's voice activity as a file: a VA list in JSON, predict's output JSON (its
`vad_list`), or a Praat TextGrid (`textgrid`). Read with errors that name the file, and found
beside an audio file by a fixed precedence (`read_va_beside`)."""

import os
import pathlib
from collections.abc import Sequence

from absl import logging

from convssl_jax import errors
from convssl_jax.data import json_file, textgrid
from convssl_jax.data import va as va_lib

TEXTGRID_SUFFIXES = ('.TextGrid', '.textgrid')
TEXTGRID_MAX_BYTES = 256 << 20  # MFA's words and phones tiers of hours of speech fit many times


def read_textgrid(path, *, tiers: Sequence[str] | None = None) -> list[list[list[float]]]:
  """A Praat TextGrid file -> a VA list (`textgrid.textgrid_va_list`: `tiers` or the tiers its
  layout shows); InputError naming the file for what is wrong."""
  source = os.fspath(path)
  text = textgrid.decode(json_file.read_bytes(path, max_bytes=TEXTGRID_MAX_BYTES), source=source)
  return textgrid.textgrid_va_list(text, source=source, tiers=tiers)


def _json_va_list(content, path) -> list:
  """A JSON file's VA list: the content itself, or predict's output's `vad_list`."""
  if isinstance(content, dict):
    if 'vad_list' not in content:
      raise errors.InputError(f'{path}: a JSON object without "vad_list"; expected a VA list '
                              '[[[start, end], ...], [...]] or predict\'s output JSON (of a '
                              'model with a VAD head)')
    content = content['vad_list']
  va_lib.validate_va_list(content, source=os.fspath(path))
  return content


def read_va_file(path, *, tiers: Sequence[str] | None = None) -> list[list[list[float]]]:
  """A VA list from `path`: a TextGrid (by its suffix, any case; `tiers` chooses the speaker
  tiers, see `textgrid.choose`), else JSON holding a VA list `[[[start, end], ...], [...]]` or
  predict's output (its `vad_list`). Checked by `va.validate_va_list`."""
  if pathlib.Path(path).suffix.lower() == '.textgrid':
    return read_textgrid(path, tiers=tiers)
  return _json_va_list(json_file.read_json(path), path)


def textgrid_beside(audio_path: pathlib.Path) -> pathlib.Path | None:
  """`<stem>.TextGrid` (or `.textgrid`) beside an audio file, if there is one."""
  return next((p for p in map(audio_path.with_suffix, TEXTGRID_SUFFIXES) if p.is_file()), None)


def candidates_beside(audio_path) -> list[pathlib.Path]:
  """The files that may hold an audio file's VA list: `<stem>.json`, `<stem>.TextGrid`,
  `<stem>.textgrid` beside it (existing or not)."""
  audio_path = pathlib.Path(audio_path)
  return [audio_path.with_suffix(s) for s in ('.json', *TEXTGRID_SUFFIXES)]


def has_va_beside(audio_path) -> bool:
  """Whether a file that `read_va_beside` would read lies beside the audio file."""
  return any(p.is_file() for p in candidates_beside(audio_path))


def read_va_beside(audio_path, *, tiers: Sequence[str] | None = None
                   ) -> tuple[list[list[list[float]]], pathlib.Path]:
  """The VA list of an audio file `<stem>.<ext>` from the file beside it, and that file's path.

  Precedence: `<stem>.json` holding a VA list (a JSON array), then `<stem>.TextGrid`, then
  `<stem>.json` holding predict's output (its `vad_list`, the model's own voice activity): an
  annotation beats a prediction written next to the audio later. A VA-list JSON beside a
  TextGrid is used and the TextGrid's being ignored is logged. InputError naming the audio file
  when there is none.
  """
  audio_path = pathlib.Path(audio_path)
  json_path, grid = audio_path.with_suffix('.json'), textgrid_beside(audio_path)
  has_json = json_path.exists()
  content = json_file.read_json(json_path) if has_json else None
  if has_json and isinstance(content, list):
    if grid:
      logging.warning('%s: VA list %s is used, %s beside it is ignored', audio_path,
                      json_path.name, grid.name)
    return _json_va_list(content, json_path), json_path
  if grid:
    return read_textgrid(grid, tiers=tiers), grid
  if has_json:
    return _json_va_list(content, json_path), json_path
  raise errors.InputError(f'{audio_path}: its VA list is missing (no {json_path.name} or '
                          f'{audio_path.stem}.TextGrid beside it)')
