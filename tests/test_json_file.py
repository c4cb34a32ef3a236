"""JSON inputs read within bounds (convssl_jax/data/json_file.py): hostile or broken files are
refused in one line naming them; size, nesting and integers are bounded before or while parsing."""

import json
import os

import pytest

from convssl_jax import errors
from convssl_jax.data import json_file
from tests import processes


def _write(tmp_path, data: bytes, name='va.json'):
  path = tmp_path / name
  path.write_bytes(data)
  return path


@pytest.mark.parametrize('data, message', [
    (b'[' * 100_000 + b']' * 100_000, 'nested too deeply'),  # was a bare RecursionError
    (b'{"a": ' * 50_000 + b'1' + b'}' * 50_000, 'nested too deeply'),
    (b'[' + b'9' * 5000 + b']', 'an integer of 5000 digits'),  # was ValueError naming no file
    (b'[-' + b'9' * 31 + b']', 'an integer of 31 digits'),
    (b'[[0, 1]', 'not valid JSON'),
    (b'[1, 2]\n[3]', r'not valid JSON \(Extra data: line 2 column 1'),
    (b'\xff\xfe\xfa', 'not valid JSON'),
])
def test_bad_json_is_refused_in_one_line_naming_the_file(tmp_path, data, message):
  path = _write(tmp_path, data)
  with pytest.raises(errors.InputError, match=f'^{path}: .*{message}') as err:
    json_file.read_json(path)
  assert '\n' not in str(err.value)


def test_integers_up_to_the_limit_and_any_float_parse_as_json_does(tmp_path):
  value = [[-10**29, 10**30 - 1, 1e300, 0.5], {'a': [True, None, 'x']}]
  path = _write(tmp_path, json.dumps(value).encode())
  assert json_file.read_json(path) == value


@pytest.mark.parametrize('encoding', ['utf-8-sig', 'utf-16', 'utf-32'])
def test_a_byte_order_mark_or_utf16_json_reads(tmp_path, encoding):
  path = _write(tmp_path, '[[[0, 1.5]], [["é", 2]]]'.encode(encoding))
  assert json_file.read_json(path) == [[[0, 1.5]], [['é', 2]]]


def test_a_file_over_the_size_limit_is_refused(tmp_path):
  path = _write(tmp_path, b'[' + b'0, ' * 400 + b'0]')
  assert len(json_file.read_json(path, max_bytes=1203)) == 401
  with pytest.raises(errors.InputError, match=f'^{path}: larger than'):
    json_file.read_json(path, max_bytes=1202)


def test_missing_and_non_regular_files_are_refused_without_reading(tmp_path):
  with pytest.raises(errors.InputError, match='gone.json: no such file'):
    json_file.read_json(tmp_path / 'gone.json')
  fifo = tmp_path / 'pipe.json'
  os.mkfifo(fifo)  # opening it for reading would wait for a writer forever
  with pytest.raises(errors.InputError, match=f'^{fifo}: not a regular file'):
    json_file.read_json(fifo)
  with pytest.raises(errors.InputError, match='not a regular file'):
    json_file.read_json('/dev/zero')  # read to the end, it never ends


def test_a_huge_file_is_refused_within_a_small_memory_budget(tmp_path):
  path = tmp_path / 'huge.json'
  with open(path, 'wb') as f:  # 2 GB of spaces, sparse on disk: valid JSON once a value follows
    f.truncate(2 << 30)
  script = """
      import sys
      from convssl_jax import errors
      from convssl_jax.data import json_file
      limit_memory(64)
      try:
        json_file.read_json(sys.argv[1])
      except errors.InputError as err:
        print(err)
  """
  run = processes.run_limited(script, str(path))
  assert run.returncode == 0, run.stderr
  assert run.stdout.strip() == f'{path}: larger than 16 MB, the most such an input may hold'
