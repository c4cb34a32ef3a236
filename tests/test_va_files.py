"""The VA file of a recording: JSON VA lists, predict's output JSON, TextGrids, the precedence
of the files beside an audio file, and JSON that cannot be parsed."""

import json

import pytest

from convssl_jax import errors
from convssl_jax.data import va_files
from tests import corpus_fixtures as fx

JSON_VA = [[[0.1, 0.5]], [[0.6, 0.9]]]
GRID_VA = [[[0.2, 0.4]], []]
PREDICTED_VA = [[[0.0, 0.3]], [[0.5, 1.0]]]


def _write(root, stem, *, va_json=None, grid=False, predicted=False):
  """An audio file's neighbours: a VA-list JSON, a TextGrid, or predict's output JSON."""
  root.mkdir(exist_ok=True)
  audio = root / f'{stem}.wav'
  audio.write_bytes(b'')  # never read here
  if va_json is not None or predicted:
    content = {'frame_hz': 50, 'vad_list': PREDICTED_VA} if predicted else va_json
    (root / f'{stem}.json').write_text(json.dumps(content))
  if grid:
    (root / f'{stem}.TextGrid').write_text(fx.textgrid_text(
        [('A', [(0, 0.2, ''), (0.2, 0.4, 'hi'), (0.4, 1, '')]), ('B', [(0, 1, '')])], xmax=1))
  return audio


def test_predicts_output_json_gives_its_vad_list(tmp_path):
  audio = _write(tmp_path, 'talk', predicted=True)
  assert va_files.read_va_file(tmp_path / 'talk.json') == PREDICTED_VA
  assert va_files.read_va_beside(audio) == (PREDICTED_VA, tmp_path / 'talk.json')


@pytest.mark.parametrize('neighbours, expected, used', [
    (dict(va_json=JSON_VA), JSON_VA, 'talk.json'),
    (dict(grid=True), GRID_VA, 'talk.TextGrid'),
    (dict(va_json=JSON_VA, grid=True), JSON_VA, 'talk.json'),  # an annotation either way
    (dict(predicted=True, grid=True), GRID_VA, 'talk.TextGrid'),  # annotation beats prediction
])
def test_precedence_of_the_files_beside_an_audio_file(tmp_path, caplog, neighbours, expected,
                                                     used):
  audio = _write(tmp_path, 'talk', **neighbours)
  caplog.set_level('WARNING')
  assert va_files.read_va_beside(audio) == (expected, tmp_path / used)
  warned = [r.getMessage() for r in caplog.records if 'is ignored' in r.getMessage()]
  assert warned == ([f'{audio}: VA list talk.json is used, talk.TextGrid beside it is ignored']
                    if 'va_json' in neighbours and 'grid' in neighbours else [])


def test_a_lower_case_textgrid_suffix_is_found_and_tiers_are_passed_on(tmp_path):
  audio = _write(tmp_path, 'talk', grid=True)
  (tmp_path / 'talk.TextGrid').rename(tmp_path / 'talk.textgrid')
  assert va_files.read_va_beside(audio, tiers=('B', 'A')) == (
      [[], [[0.2, 0.4]]], tmp_path / 'talk.textgrid')


def test_no_va_file_beside_the_audio_names_both_choices(tmp_path):
  audio = _write(tmp_path, 'talk')
  with pytest.raises(errors.InputError, match=f'^{audio}: its VA list is missing '
                     r'\(no talk.json or talk.TextGrid beside it\)$'):
    va_files.read_va_beside(audio)


@pytest.mark.parametrize('text, message', [
    ('[' * 100_000 + ']' * 100_000, 'not a usable JSON file: nested too deeply'),
    ('[[[0, 1' + '0' * 5000 + ']], []]', 'not a usable JSON file: an integer of 5001 digits'),
    ('[[0, 1', 'not valid JSON'),
    (b'\xff\xfe[', 'not valid JSON'),
])
def test_json_that_cannot_be_parsed_is_refused_naming_the_file(tmp_path, text, message):
  path = tmp_path / 'va.json'
  path.write_bytes(text if isinstance(text, bytes) else text.encode())
  with pytest.raises(errors.InputError, match=f'^{path}: {message}'):
    va_files.read_va_file(path)


def test_a_json_that_is_no_va_list_is_refused_naming_the_file(tmp_path):
  path = tmp_path / 'va.json'
  path.write_text('{"frame_hz": 50}')  # predict's output of a model without a VAD head
  with pytest.raises(errors.InputError, match=f'^{path}: a JSON object without "vad_list"; '):
    va_files.read_va_file(path)
  path.write_text('[[[0, 1]]]')
  with pytest.raises(ValueError, match=f'^{path}: expected 2 channels'):
    va_files.read_va_file(path)
  # Beside a TextGrid, such a prediction gives way to the annotation.
  path.write_text('{"frame_hz": 50}')
  audio = _write(tmp_path, 'va', grid=True)
  assert va_files.read_va_beside(audio) == (GRID_VA, tmp_path / 'va.TextGrid')
