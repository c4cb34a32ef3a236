"""The workdir remembers its config: training records it (and the command line), the modes that
read a trained model need only --workdir, and a config given anyway is checked against it."""

import json
import logging

import numpy as np
import pytest
import soundfile as sf

from configs import vap
from convssl_jax import config_fields, errors, recipes, workdir_config
from tests import processes
from tests.conftest import TINY_CLI_OVERRIDES


def _flat(config) -> dict:
  return dict(config_fields.flatten(config))


def test_a_recorded_config_reads_back_equal_with_its_command(tmp_path):
  config = vap.get_config('reference,mono,skantze')  # tuples, a None placeholder, floats, bools
  workdir_config.record(config, tmp_path, ['run.py', '--config=configs/vap.py:x y'])
  recorded = workdir_config.read(tmp_path)
  assert _flat(recorded) == _flat(config)
  assert all(type(recorded_value) is type(value) for (_, recorded_value), (_, value)
             in zip(config_fields.flatten(recorded), config_fields.flatten(config)))
  assert (tmp_path / 'command.txt').read_text() == "python run.py '--config=configs/vap.py:x y'\n"
  assert sorted(p.name for p in tmp_path.iterdir()) == ['command.txt', 'config.json']  # no tmp


@pytest.mark.parametrize('path, value, refused', [
    ('model.dim', 64, True),
    ('model.transformer.num_heads', 4, True),
    ('model.frame_hz', 20, True),
    ('model.encoder.padding', 'reference', True),
    ('model.transformer.context', 100, True),
    ('data.normalize', True, True),
    ('data.history_times', (30, 10), True),
    ('model.dtype', 'bfloat16', False),
    ('model.transformer.attention', 'einsum', False),
    ('model.encoder.unroll', 1, False),
    ('model.encoder_checkpoint', '/moved/cpc', False),
    ('data.batch_size', 4, False),
    ('data.data_dir', '/elsewhere', False),
    ('data.window_s', 10.0, False),
    ('eval.context_s', 1.0, False),
    ('eval.checkpoint', 'latest', False),
    ('train.steps', 1000, False),
    ('seed', 3, False),
])
def test_what_fixes_the_trained_model_must_match_the_record_and_the_rest_may_differ(
    tmp_path, path, value, refused):
  workdir_config.record(vap.get_config('tiny'), tmp_path, ['run.py'])
  given = vap.get_config('tiny')
  section, _, key = path.rpartition('.')
  (config_fields.lookup(given, section) if section else given)[key] = value
  if refused:
    with pytest.raises(errors.ConfigError) as raised:
      workdir_config.check(given, tmp_path)
    assert f'in {path} (' in str(raised.value) and '\n' not in str(raised.value)
  else:
    assert workdir_config.resolve(tmp_path, given) is given


def test_without_a_config_the_record_is_used_with_the_overrides(tmp_path):
  workdir_config.record(vap.get_config('tiny'), tmp_path, ['run.py'])
  resolved = workdir_config.resolve(tmp_path, None, {'data.batch_size': 4, 'eval.context_s': 1.0})
  want = vap.get_config('tiny')
  want.data.batch_size, want.eval.context_s = 4, 1.0
  assert _flat(resolved) == _flat(want)
  with pytest.raises(errors.ConfigError, match=r'in model.dim \(32 there, 64 here\)'):
    workdir_config.resolve(tmp_path, None, {'model.dim': 64})
  with pytest.raises(errors.ConfigError, match=r'--config.data.nope: the config of .* has no such'):
    workdir_config.resolve(tmp_path, None, {'data.nope': 1})


def test_a_workdir_without_a_record_leaves_the_given_config(tmp_path, caplog):
  given = vap.get_config('tiny')
  assert workdir_config.resolve(tmp_path, given) is given
  (tmp_path / 'checkpoints').mkdir()  # trained before configs were recorded
  with caplog.at_level(logging.WARNING):
    assert workdir_config.resolve(tmp_path, None) is None
  assert f'{tmp_path} has checkpoints but no config.json' in caplog.text


@pytest.mark.parametrize('content', ['{"model": ', '[1, 2]'])
def test_a_damaged_record_is_refused_naming_it(tmp_path, content):
  (tmp_path / 'config.json').write_text(content)
  with pytest.raises(errors.InputError, match=f'{tmp_path / "config.json"}: not a'):
    workdir_config.read(tmp_path)


# As a user runs it: a workdir trained by run.py (tests/conftest.py: tiny_cli_run).

def test_training_records_the_config_and_the_baselines_own(tiny_cli_run, tiny_data_dir):
  want = vap.get_config('tiny')
  want.data.data_dir = tiny_data_dir
  for path, value in TINY_CLI_OVERRIDES.items():
    section, _, key = path.rpartition('.')
    config_fields.lookup(want, section)[key] = value
  assert _flat(workdir_config.read(tiny_cli_run)) == _flat(want)
  assert _flat(workdir_config.read(tiny_cli_run / 'va_only')) == _flat(recipes.va_only(want))
  command = (tiny_cli_run / 'command.txt').read_text()
  assert command.startswith('python run.py --config=configs/vap.py:tiny --workdir=')
  assert '--config.train.steps=2' in command
  assert json.loads((tiny_cli_run / 'config.json').read_text())['model']['kind'] == 'stereo'


def _audio(path, seconds=4.0):
  rng = np.random.default_rng(0)
  sf.write(path, (0.1 * rng.standard_normal((int(seconds * 16000), 2))).astype(np.float32),
           16000, subtype='FLOAT')
  return path


def test_a_config_that_differs_in_the_model_is_refused_in_one_line(tiny_cli_run, tmp_path):
  out = processes.run('run.py', '--mode=predict', '--config=configs/vap.py',
                      f'--workdir={tiny_cli_run}', f'--audio={_audio(tmp_path / "a.wav")}')
  assert out.returncode == 2, out.stderr[-2000:]
  assert out.stderr.strip().splitlines() == [
      f'error: the config differs from the one {tiny_cli_run} was trained with (config.json) in '
      'model.transformer.num_heads (2 there, 4 here), model.transformer.num_layers (1 there, 2 '
      "here); these fix the trained model: leave out --config (the workdir's is used) or use "
      'another --workdir']


def test_resuming_a_workdir_with_another_model_is_refused_before_any_work(tiny_cli_run):
  before = (tiny_cli_run / 'config.json').read_text()
  out = processes.run('run.py', '--config=configs/vap.py:tiny,mono', f'--workdir={tiny_cli_run}')
  assert out.returncode == 2 and 'model.kind (\'stereo\' there, \'mono\' here)' in out.stderr
  assert (tiny_cli_run / 'config.json').read_text() == before


def test_stream_and_export_need_only_the_workdir(tiny_cli_run, tmp_path):
  """Before: without --config=configs/vap.py:tiny they ended in an Orbax shape mismatch."""
  out = processes.run('run.py', '--mode=stream', f'--workdir={tiny_cli_run}', '--nopace',
                      f'--audio={_audio(tmp_path / "a.wav", 1.0)}')
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout.count(' p_future A ') == 10  # a line every 0.1 s
  out = processes.run('run.py', '--mode=export', f'--workdir={tiny_cli_run}',
                      f'--output={tmp_path / "export"}')
  assert out.returncode == 0, out.stderr[-3000:]
  assert {p.name for p in (tmp_path / 'export').glob('*.jaxexport')} == {
      'forward.jaxexport', 'stream_step.jaxexport'}


@pytest.mark.slow
def test_eval_needs_only_the_workdir_and_takes_inference_overrides(tiny_cli_run):
  out = processes.run('run.py', '--mode=eval', f'--workdir={tiny_cli_run}',
                      '--config.data.batch_size=1', '--config.eval.context_s=2.0', timeout=900)
  assert out.returncode == 0, out.stderr[-3000:]
  assert 'S/H weighted F1 on test' in out.stdout
