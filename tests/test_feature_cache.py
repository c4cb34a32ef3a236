"""The frozen-encoder feature cache: training from it gives the on-the-fly losses, batch for
batch; its windows are the ones training cuts; a broken build never looks like a cache."""

import json

import numpy as np
import pytest

from configs import vap
from convssl_jax import corpora, feature_cache, train
from convssl_jax.data import feature_store, pipeline


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('data'))


def _config(data_dir, variant='tiny', **data):
  config = vap.get_config(variant)
  config.data.data_dir = data_dir
  config.model.encoder.freeze = True
  config.data.update(**{'jitter_grid_s': 1.0, **data})  # tiny: 5 s windows every 3 s: offsets 0, 1, 2
  config.train.update(steps=6, log_every=1, eval_every=100, checkpoint_every=100)
  return config


def _losses(workdir):
  lines = (workdir / 'train_log.jsonl').read_text().splitlines()
  return [json.loads(line)['loss'] for line in lines]


@pytest.mark.parametrize('variant', ['tiny', pytest.param('tiny,mono', marks=pytest.mark.slow)])
def test_training_from_the_cache_gives_the_on_the_fly_losses(tmp_path, data_dir, variant):
  config = _config(data_dir, variant)
  train.train_and_evaluate(config, tmp_path / 'on_the_fly')
  cache = feature_cache.build(config, tmp_path / 'features')
  config.data.features = str(cache)
  train.train_and_evaluate(config, tmp_path / 'cached')
  on_the_fly, cached = _losses(tmp_path / 'on_the_fly'), _losses(tmp_path / 'cached')
  assert len(cached) == config.train.steps
  np.testing.assert_allclose(cached, on_the_fly, rtol=1e-5)


def test_the_cache_holds_every_window_training_cuts_and_nothing_else(data_dir):
  config = _config(data_dir)
  corpus = corpora.open_corpora(config, ('train',))['train']
  spec = corpora.window_spec(config)
  table = pipeline.cached_window_table(corpus, spec, config.data.overlap_s, 1.0)
  # Hand-derived: a 20 s dialog, 5 s windows every 3 s (0 .. 15), moved by 0, 1 or 2 s but not
  # past 15: every whole second from 0 to 15, at 50 frames a second.
  for i, duration in enumerate(corpus.durations):
    assert duration == 20.0
    starts = sorted(round(s * 50) for c, s in table if c == i)
    assert starts == [50 * s for s in range(16)]
  cut = {(int(b['conversation'][j]), round(float(b['start'][j]) * 50))
         for b in _batches(config, corpus, spec, 40) for j in range(len(b['start']))}
  held = {(int(c), round(s * 50)) for c, s in table}
  assert cut <= held and len(cut) > len(corpus.durations) * 8


def _batches(config, corpus, spec, n):
  ds = pipeline.train_dataset(corpus, spec, batch_size=2, seed=0, overlap_s=config.data.overlap_s,
                              epochs=3, jitter_grid_s=config.data.jitter_grid_s)
  it = iter(ds)
  return [next(it) for _ in range(n)]


def test_an_interrupted_build_leaves_no_cache_and_a_rebuild_completes(tmp_path, data_dir,
                                                                      monkeypatch):
  config = _config(data_dir)
  directory = tmp_path / 'features'
  write = feature_store.ShardWriter.write
  calls = []

  def failing(self, *args):
    calls.append(1)
    if len(calls) == 3:
      raise KeyboardInterrupt('interrupted')
    write(self, *args)

  monkeypatch.setattr(feature_store.ShardWriter, 'write', failing)
  with pytest.raises(KeyboardInterrupt):
    feature_cache.build(config, directory)
  assert not directory.exists()
  with pytest.raises(FileNotFoundError, match='not a complete feature cache.*interrupted'):
    feature_store.FeatureStore(directory)
  monkeypatch.setattr(feature_store.ShardWriter, 'write', write)
  feature_cache.build(config, directory)
  store = feature_store.FeatureStore(directory)
  assert len(store) == store.meta['records'] > 0
  assert not feature_store.partial_dir(directory).exists()


def test_a_cache_of_another_config_or_a_trained_encoder_is_refused(tmp_path, data_dir):
  config = _config(data_dir)
  directory = feature_cache.build(config, tmp_path / 'features')
  other = _config(data_dir, jitter_grid_s=0.5, features=str(directory))
  with pytest.raises(ValueError, match='jitter_grid_s: cache 1.0, config 0.5'):
    train.train_and_evaluate(other, tmp_path / 'run')
  louder = _config(data_dir, features=str(directory))
  louder.model.encoder.input_gain = 20.0  # the same weights hearing another scale
  with pytest.raises(ValueError, match="'input_gain': 10.0.*config .*'input_gain': 20.0"):
    train.train_and_evaluate(louder, tmp_path / 'run1')
  unfrozen = _config(data_dir, features=str(directory))
  unfrozen.model.encoder.unfreeze_step = 3
  with pytest.raises(ValueError, match='frozen for the whole run'):
    train.train_and_evaluate(unfrozen, tmp_path / 'run2')
  continuous = _config(data_dir, jitter_grid_s=0.0)
  with pytest.raises(ValueError, match='jitter_grid_s > 0'):
    feature_cache.build(continuous, tmp_path / 'other')


def test_a_cache_written_before_input_gain_existed_is_read_as_gain_1(tmp_path, data_dir):
  config = _config(data_dir)
  config.model.encoder.input_gain = 1.0
  directory = feature_cache.build(config, tmp_path / 'features')
  meta_file = directory / feature_store.META
  meta = json.loads(meta_file.read_text())
  del meta['fingerprint']['encoder']['input_gain']  # as such a cache records it
  meta_file.write_text(json.dumps(meta))
  config.data.features = str(directory)
  config.train.steps = 1
  train.train_and_evaluate(config, tmp_path / 'run')  # accepted at gain 1 ...
  config.model.encoder.input_gain = 10.0
  with pytest.raises(ValueError, match="cache .*'input_gain': 1.0"):  # ... and not at another
    train.train_and_evaluate(config, tmp_path / 'run2')


@pytest.mark.slow  # ~2 minutes: two JAX processes
def test_run_py_builds_the_same_cache_with_two_processes_of_two_devices(tmp_path, data_dir):
  from tests import processes

  config = _config(data_dir, batch_size=4)
  one = feature_store.FeatureStore(feature_cache.build(config, tmp_path / 'one'))
  flags = ['--config=configs/vap.py:tiny', '--mode=cache_features', f'--workdir={tmp_path / "w"}',
           f'--config.data.data_dir={data_dir}', '--config.data.batch_size=4',
           '--config.model.encoder.freeze=True', '--config.data.jitter_grid_s=1.0',
           f'--config.data.features={tmp_path / "two"}']
  processes.run_together('run.py', *flags)
  two = feature_store.FeatureStore(tmp_path / 'two')
  assert two.meta['processes'] == 2 and len(two) == len(one)
  assert two.meta['fingerprint'] == one.meta['fingerprint']
  assert set(two.keys()) == set(one.keys())
  for key in one.keys():
    np.testing.assert_allclose(two[key], one[key], rtol=1e-5, atol=1e-6, err_msg=str(key))
