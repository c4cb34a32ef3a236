"""The units dataset (aligned, deterministic) and the unit LM trained and evaluated on it."""

import json

import numpy as np
import pytest

from configs import ulm
from convssl_jax import corpora, evaluate, train, units
from convssl_jax.data import unit_store


def _config(data_dir, units_dir):
  config = ulm.get_config('tiny')
  config.units.data.data_dir = data_dir
  config.data.units_dir = str(units_dir)
  config.eval.events.min_context = 1.0  # the tiny corpus's dialogs last 20 s
  return config


@pytest.fixture(scope='module')
def units_dir(tmp_path_factory, tiny_data_dir):
  """A units dataset of the tiny corpus from a random causal CPC (units.encoder_checkpoint='')."""
  out = tmp_path_factory.mktemp('units')
  units.build_units(_config(tiny_data_dir, out))
  return out


SPLITS = ('train', 'validation', 'test')


def test_the_units_dataset_holds_every_conversation_with_its_va(units_dir, tiny_data_dir):
  config = _config(tiny_data_dir, units_dir)
  meta = unit_store.read_meta(units_dir)
  assert (meta['n_units'], meta['unit_hz'], meta['layer']) == (16, 50, 'lstm')
  assert np.load(units_dir / unit_store.CODEBOOK).shape == (16, 16)
  audio = corpora.open_data(config.units.data, SPLITS, frame_hz=50)
  units_corpora = corpora.open_data(config.data, SPLITS, frame_hz=50, n_units=16)
  for split in SPLITS:
    a, u = audio[split], units_corpora[split]
    assert u.sessions == a.sessions
    np.testing.assert_array_equal(u.durations, a.durations)
    for i in range(len(a.sessions)):
      record, original = u.source[i], a.source[i]
      assert record['units'].shape == (int(a.durations[i] * 50), 2)
      assert record['units'].min() >= 0 and record['units'].max() < 16
      np.testing.assert_array_equal(record['va'], original['va'])
      np.testing.assert_array_equal(record['f0'], original['f0'])
  used = np.unique(np.concatenate([units_corpora['train'].source[i]['units'].ravel()
                                   for i in range(4)]))
  assert len(used) > 8  # the codebook is used, not collapsed onto a few units


def test_units_extraction_is_deterministic(units_dir, tiny_data_dir, tmp_path):
  units.build_units(_config(tiny_data_dir, tmp_path))
  np.testing.assert_array_equal(np.load(tmp_path / unit_store.CODEBOOK),
                                np.load(units_dir / unit_store.CODEBOOK))
  for split in SPLITS:
    assert (unit_store.split_path(tmp_path, split).read_bytes()
            == unit_store.split_path(units_dir, split).read_bytes())


def test_a_model_of_another_codebook_size_or_frame_rate_is_refused(units_dir, tiny_data_dir):
  config = _config(tiny_data_dir, units_dir)
  with pytest.raises(ValueError, match='16 units, the model has model.units=32'):
    corpora.open_data(config.data, SPLITS, frame_hz=50, n_units=32)
  with pytest.raises(ValueError, match='50 Hz, the model runs at model.frame_hz=20'):
    corpora.open_data(config.data, SPLITS, frame_hz=20, n_units=16)
  config.data.units_dir = str(units_dir / 'missing')
  with pytest.raises(FileNotFoundError, match='--mode=units'):
    corpora.open_data(config.data, SPLITS, frame_hz=50)


def test_the_unit_lm_trains_on_units_and_is_evaluated_with_the_metric_suite(
    units_dir, tiny_data_dir, tmp_path):
  config = _config(tiny_data_dir, units_dir)
  config.train.update(steps=30, log_every=5, eval_every=30, checkpoint_every=30,
                      learning_rate=2e-3)
  results = train.train_and_evaluate(config, tmp_path)
  log = {r['step']: r for r in map(json.loads, (tmp_path / 'train_log.jsonl').read_text()
                                   .splitlines())}
  assert log[30]['unit_loss'] < log[5]['unit_loss'] - 0.3
  assert log[30]['vap_loss'] < log[5]['vap_loss'] - 0.3
  val = results['validation']
  np.testing.assert_allclose(val['loss'], 0.6 * val['vap_loss'] + 0.4 * val['unit_loss'],
                             rtol=1e-5)  # the reference's weighting; VAD weighs 0
  assert val['unit_accuracy'] > 1 / 16
  scores = evaluate.evaluate(config, tmp_path)
  for split in ('validation', 'test'):
    shift_hold = scores[split]['model']['shift_hold']
    assert shift_hold['n_frames'] > 0 and 0 <= shift_hold['f1_weighted'] <= 1


def test_config_variants_and_their_errors():
  config = ulm.get_config('fisher')
  assert config.units.data.name == 'fisher' and config.data.name == 'units'
  assert (config.train.vap_loss_weight, config.train.unit_loss_weight) == (0.6, 0.4)
  with pytest.raises(ValueError, match='tinny'):
    ulm.get_config('tinny')
  with pytest.raises(ValueError, match='units.layer'):
    units.FeatureExtractor(units.cpc.CPCEncoder(dim=4, rngs=units.nnx.Rngs(0)), 'gru', 10)


def test_run_py_units_mode_needs_the_units_dir():
  from tests import processes
  out = processes.run('run.py', '--config=configs/ulm.py:tiny', '--mode=units')
  assert out.returncode != 0 and 'data.units_dir' in out.stderr
