"""Config values checked at start-up: a bad count, size, period, rate or choice stops the run
before any work with one line naming the field, the value and the rule (exit 2)."""

import pytest

from configs import cpc_pretrain, ulm, vap
from convssl_jax import config_check, config_fields, errors
from tests import processes

EVERY_CONFIG = [(vap, v) for v in ('', 'mono', 'tiny', 'reference', 'swb', 'mono_skantze',
                                   'independent40', 'comparative', 'va_only')]
EVERY_CONFIG += [(ulm, ''), (ulm, 'tiny'), (cpc_pretrain, ''), (cpc_pretrain, 'scpc_plus')]


@pytest.mark.parametrize('module, variant', EVERY_CONFIG)
def test_every_shipped_config_passes(module, variant):
  config = module.get_config(variant)
  config_check.check(config)
  config_check.check_devices(config, 1)


def _refused(overrides: dict, variant: str = 'tiny', module=vap) -> str:
  config = module.get_config(variant)
  with config.unlocked():
    for path, value in overrides.items():
      section, _, key = path.rpartition('.')
      (config_fields.lookup(config, section) if section else config)[key] = value
  with pytest.raises(errors.ConfigError) as raised:
    config_check.check(config)
  message = str(raised.value)
  assert '\n' not in message
  return message


@pytest.mark.parametrize('field, value, rule', [
    ('data.batch_size', 0, 'must be an integer >= 1'),
    ('data.batch_size', -2, 'must be an integer >= 1'),
    ('train.steps', -5, 'must be an integer >= 1'),
    ('train.checkpoint_every', 0, 'must be an integer >= 1'),
    ('train.log_every', 0, 'must be an integer >= 1'),
    ('train.keep_checkpoints', 0, 'must be an integer >= 1'),
    ('train.learning_rate', 0.0, 'must be a finite number > 0'),
    ('train.learning_rate', float('nan'), 'must be a finite number > 0'),
    ('train.b2', 1.0, 'must be a number in [0, 1)'),
    ('train.plateau_factor', 0.0, 'must be a number in (0, 1]'),
    ('train.vad_loss_weight', -1.0, 'must be a finite number >= 0'),
    ('train.schedule', 'linear', "must be one of 'plateau', 'cosine', 'constant'"),
    ('train.fsdp', 0, 'must be an integer >= 1'),
    ('data.window_s', 0.0, 'must be a finite number > 0'),
    ('data.overlap_s', -1.0, 'must be a finite number >= 0'),
    ('data.channel_swap', 1.5, 'must be a number in [0, 1]'),
    ('data.history_times', (10, 30), 'must be positive numbers, decreasing'),
    ('data.synthetic.train', 0, 'must be an integer >= 1'),
    ('model.dim', 0, 'must be an integer >= 1'),
    ('model.frame_hz', 25, 'must be one of 20, 50, 100'),
    ('model.kind', 'stero', 'must be one of'),
    ('model.transformer.num_heads', 0, 'must be an integer >= 1'),
    ('model.transformer.dropout', 1.0, 'must be a number in [0, 1)'),
    ('model.transformer.context', 0, 'must be None or an integer >= 1'),
    ('model.vap.threshold', 1.0, 'must be a number in (0, 1)'),
    ('model.encoder.lstm_layers', 0, 'must be an integer >= 1'),
    ('model.encoder.input_gain', 0.0, 'must be a finite number > 0'),
    ('eval.context_s', -1.0, 'must be a finite number >= 0'),
    ('eval.checkpoint', 'last', "must be one of 'best', 'latest'"),
    ('eval.events.min_context', -1.0, 'must be a finite number >= 0'),
    ('eval.training_thresholds.short_long', 2.0, 'must be a number in [0, 1]'),
    ('seed', -1, 'must be an integer >= 0'),
])
def test_a_bad_value_is_one_line_naming_the_field_the_value_and_the_rule(field, value, rule):
  message = _refused({field: value})
  assert message.startswith(f'{field}={value!r}: ') and rule in message


@pytest.mark.parametrize('field, value, rule', [
    ('model.units', 1, 'must be an integer >= 2'),
    ('units.kmeans.iterations', 0, 'must be an integer >= 1'),
    ('units.chunk_s', 0.0, 'must be a finite number > 0'),
    ('units.data.batch_size', 0, 'must be an integer >= 1'),
])
def test_the_unit_configs_own_sections_are_checked(field, value, rule):
  message = _refused({field: value}, '', ulm)
  assert message.startswith(f'{field}={value!r}: ') and rule in message


@pytest.mark.parametrize('overrides, expected', [
    ({'model.dim': 30, 'model.transformer.num_heads': 4},
     'model.dim=30 is not divisible by model.transformer.num_heads=4'),
    ({'data.overlap_s': 5.0}, 'data.overlap_s=5.0 must be below data.window_s=5.0'),
    ({'eval.context_s': 5.0}, 'eval.context_s=5.0 must be below data.window_s=5.0'),
    ({'model.vap.bin_times': (0.05,) * 40, 'model.vap.head': 'independent'},
     'not whole frames at 50 Hz'),
    ({'model.vap.head': 'independent', 'model.vap.pre_frames': 4}, 'pre_frames'),
])
def test_fields_that_must_agree_are_checked_together(overrides, expected):
  assert expected in _refused(overrides)


def test_the_mono_models_va_history_bins_follow_the_history_times():
  message = _refused({'data.history_times': (60, 10)}, 'tiny,mono')
  assert 'model.va_cond.history_bins=5 must be len(data.history_times) + 1 = 3' in message
  config = vap.get_config('tiny,mono')
  config.model.va_cond.history_bins = 0  # no VA history: any times
  config_check.check(config)


def test_the_batch_and_the_shards_must_divide_the_devices():
  config = vap.get_config('tiny')  # batch 2
  config_check.check_devices(config, 2)
  with pytest.raises(errors.ConfigError, match=r'data.batch_size=2 must be a multiple of the 4'):
    config_check.check_devices(config, 4)
  config.train.fsdp = 3
  with pytest.raises(errors.ConfigError, match=r'train.fsdp=3 must divide the 2 devices'):
    config_check.check_devices(config, 2)


@pytest.mark.parametrize('override, expected', [
    ('--config.data.batch_size=-2', 'data.batch_size=-2: must be an integer >= 1'),
    ('--config.train.steps=-5', 'train.steps=-5: must be an integer >= 1'),
    ('--config.train.checkpoint_every=0', 'train.checkpoint_every=0: must be an integer >= 1'),
    ('--config.train.keep_checkpoints=0', 'train.keep_checkpoints=0: must be an integer >= 1'),
])
def test_training_with_a_bad_value_stops_before_any_work(override, expected, tmp_path):
  """Before: batch_size=-2 and steps=-5 failed deep in the input pipeline ('need at least one
  array to concatenate'), checkpoint_every=0 divided by zero after the corpus was built and the
  model compiled, keep_checkpoints=0 trained and kept no checkpoint (exit 0)."""
  out = processes.run('run.py', '--config=configs/vap.py:tiny', f'--workdir={tmp_path / "w"}',
                      f'--config.data.data_dir={tmp_path / "data"}', override)
  assert out.returncode == 2, out.stderr[-2000:]
  assert out.stderr.strip().splitlines() == [f'error: {expected}']
  assert not (tmp_path / 'w').exists() and not (tmp_path / 'data').exists()


def test_prediction_checks_its_config_too(tmp_path):
  out = processes.run('run.py', '--mode=predict', '--config=configs/vap.py:tiny',
                      f'--workdir={tmp_path}', '--audio=x.wav', '--config.eval.context_s=6.0')
  assert out.returncode == 2
  assert out.stderr.strip().splitlines()[-1] == (
      'error: eval.context_s=6.0 must be below data.window_s=5.0: each evaluation window scores '
      'its frames after that much context')
