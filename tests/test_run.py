"""The command line: config variants and overrides, unknown fields refused with their name."""

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
