"""The command line: config variants and overrides, unknown fields refused with their name."""

import pytest

from tests import processes


def _run(*args):
  return processes.run('run.py', *args)


def test_summary_reports_the_overridden_model():
  out = _run('--mode=summary', '--config=configs/vap.py:mono,tiny', '--config.model.frame_hz=20')
  assert out.returncode == 0, out.stderr[-2000:]
  assert 'model: mono, 20 Hz' in out.stdout and "output ['logits']: (1, 20, 256)" in out.stdout


def test_an_unknown_config_field_is_an_error_naming_it():
  out = _run('--mode=summary', '--config=configs/vap.py:tiny', '--config.model.dimm=8')
  assert out.returncode != 0 and 'dimm' in out.stderr


def test_an_unknown_variant_is_an_error_naming_it():
  out = _run('--mode=summary', '--config=configs/vap.py:stero')
  assert out.returncode != 0 and 'stero' in out.stderr


def _one_line_error(out) -> str:
  """The single stderr line of a refused command (exit 2)."""
  assert out.returncode == 2, out.stderr[-2000:]
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1, out.stderr[-2000:]
  return lines[0]


def test_a_config_key_typo_is_one_line_with_the_nearest_names():
  """Before: a 55-line traceback ending in an escaped '\\'step\\'\\nDid you mean "steps"...'."""
  line = _one_line_error(_run('--mode=summary', '--config=configs/vap.py:tiny',
                              '--config.train.step=5'))
  assert line == ('error: --config.train.step: train.step is not a config field; nearest: '
                  'train.steps, train.warmup_steps, train.fsdp (--mode=config lists every field)')


def test_an_unknown_config_section_is_one_line_with_the_nearest_names():
  line = _one_line_error(_run('--mode=summary', '--config.trainn.steps=5'))
  assert line.startswith('error: --config.trainn.steps: trainn is not a config field; nearest: '
                         'train')


@pytest.mark.parametrize('override, expected', [
    ('--config.train.steps=abc', 'train.steps takes an integer'),
    ('--config.train.learning_rate=fast', 'train.learning_rate takes a number'),
    ('--config.model.f0_head=maybe', 'model.f0_head takes true or false'),
])
def test_a_config_value_of_the_wrong_type_names_the_type_it_needs(override, expected):
  line = _one_line_error(_run('--mode=summary', '--config=configs/vap.py:tiny', override))
  assert line == f'error: {override}: {expected}'


def test_a_config_files_own_error_is_one_line_without_its_traceback():
  line = _one_line_error(_run('--mode=summary', '--config=configs/vap.py:stero'))
  assert line.startswith("error: --config=configs/vap.py:stero: unknown config variant(s) "
                         "['stero']; known: [")


def test_a_missing_config_file_is_one_line():
  line = _one_line_error(_run('--mode=summary', '--config=configs/nope.py'))
  assert line.startswith('error: --config=configs/nope.py: the config file cannot be loaded')


def test_help_exits_0_and_lists_the_modes():
  """Before: absl's --help printed the help and exited 1."""
  out = _run('--help')
  assert out.returncode == 0 and '--mode' in out.stdout and 'config' in out.stdout
