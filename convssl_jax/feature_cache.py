"""The frozen-encoder feature cache: `run.py --mode=cache_features`, and opening it for training.

While the encoder is frozen its output for a window never changes, yet training recomputes it
every step, and the CPC LSTM is most of the step. The cache computes it once per training window.

Per window, not per conversation: the causal CPC starts every window from zero state (conv
padding, LSTM carry), so a window's features depend on where the window starts; features of
the whole conversation cut at the window would differ from on-the-fly training. The cache
therefore holds the features of exactly the windows training cuts, computed from exactly the
audio the pipeline gives (normalisation and mono mix included): with the windows on a grid
(`data.jitter_grid_s` > 0: starts move by multiples of it) there are finitely many, and training
from the cache gives the losses of on-the-fly training with the same config, batch for batch.
Storage is window_s / min(jitter_grid_s, window step) times the split's audio length of
features (100 Hz x dim x channels in the compute dtype).

The build is sharded like evaluation (each process computes and writes its share of the windows,
batches sharded over its devices) into `<dir>.partial`, which becomes `<dir>` only when complete.
"""

import hashlib
import pathlib
import shutil

import jax
import numpy as np
from absl import logging
from flax import nnx
from jax.experimental import multihost_utils

from convssl_jax import corpora, errors, parallelism, progress
from convssl_jax.data import feature_store, pipeline
from convssl_jax.model_state import ModelState
from convssl_jax.models import factory
from convssl_jax.models.frontends import ENCODER

SPLIT = 'train'


def check_config(config) -> None:
  """A feature cache needs a frozen encoder for the whole run and windows on a grid."""
  enc, d = config.model.encoder, config.data
  if enc.name == 'none':
    raise errors.ConfigError('a model without an encoder (model.encoder.name=none) has no '
                             'features to cache')
  if not enc.freeze or enc.unfreeze_step >= 0:
    raise errors.ConfigError('a feature cache needs an encoder frozen for the whole run '
                             f'(model.encoder.freeze=True, unfreeze_step=-1); got '
                             f'freeze={enc.freeze}, unfreeze_step={enc.unfreeze_step}')
  if d.jitter_grid_s <= 0:
    raise errors.ConfigError('a feature cache needs data.jitter_grid_s > 0 (training windows on '
                             f'a grid the cache can hold; {d.window_s - d.overlap_s:g} = no '
                             f'jitter), got {d.jitter_grid_s}')


def encoder_digest(model: ModelState) -> str:
  """sha256 of the encoder's parameters (names and values) of a model."""
  digest = hashlib.sha256()
  leaves = jax.tree_util.tree_flatten_with_path(model.params[ENCODER])[0]
  for path, leaf in sorted(leaves, key=lambda item: jax.tree_util.keystr(item[0])):
    if not leaf.is_fully_addressable:
      leaf = multihost_utils.process_allgather(leaf, tiled=True)
    digest.update(jax.tree_util.keystr(path).encode())
    digest.update(np.asarray(leaf).tobytes())
  return digest.hexdigest()


def fingerprint(config, corpus: pipeline.Corpus, model: ModelState) -> dict:
  """Everything the cached features depend on; a cache serves only a config with the same."""
  d, m = config.data, config.model
  sha = lambda b: hashlib.sha256(b).hexdigest()
  return {
      'corpus': d.name, 'builder_config': d.builder_config, 'split': SPLIT,
      'sessions': sha('\n'.join(corpus.sessions).encode()),
      'durations': sha(np.asarray(corpus.durations, np.float64).tobytes()),
      'window_s': d.window_s, 'overlap_s': d.overlap_s, 'jitter_grid_s': d.jitter_grid_s,
      'frame_hz': m.frame_hz, 'normalize': d.normalize,
      'mono': factory.model_class(m).mono_mix,
      'encoder': {'name': m.encoder.name, 'padding': m.encoder.padding,
                  'input_gain': m.encoder.get('input_gain', 1.0), 'dim': m.dim,
                  'lstm_layers': m.encoder.lstm_layers, 'dtype': m.dtype,
                  'parameters': encoder_digest(model)},
  }


def _mismatch(found: dict, expected: dict) -> list[str]:
  # Caches written before the encoder's input_gain existed were computed at gain 1.
  found = {**found, 'encoder': {'input_gain': 1.0, **found.get('encoder', {})}}
  return [f'{k}: cache {found.get(k)!r}, config {v!r}' for k, v in expected.items()
          if found.get(k) != v]


def _encode_fn(model: ModelState):
  """jit: (params, audio) -> the frozen encoder's features (the model's `encoder_features`)."""
  graphdef = model.graphdef

  def encode(params, audio):
    encoder = nnx.merge(graphdef, params)
    encoder.eval()
    return encoder.encoder_features(audio)

  return jax.jit(encode, in_shardings=(model.sharding, model.batch_sharding),
                 out_shardings=model.batch_sharding)


def build(config, directory) -> pathlib.Path:
  """Computes the encoder's features of every training window of `config` into `directory`
  (skipped when a complete cache of the same fingerprint is there). Returns the directory."""
  check_config(config)
  directory = pathlib.Path(directory).absolute()
  d = config.data
  batch_size = parallelism.check_batch_size(d.batch_size)
  corpus = corpora.open_corpora(config, (SPLIT,))[SPLIT]
  model = ModelState.create(config)
  spec = corpora.window_spec(config, model.objective)
  expected = fingerprint(config, corpus, model)
  meta = feature_store.read_meta(directory)
  if meta is not None and not _mismatch(meta['fingerprint'], expected):
    logging.info('feature cache %s is up to date (%d windows)', directory, meta['records'])
    return directory

  process, count = jax.process_index(), jax.process_count()
  if process == 0 and feature_store.partial_dir(directory).exists():
    shutil.rmtree(feature_store.partial_dir(directory))  # an interrupted earlier build
  parallelism.sync_processes('feature_cache_start')
  table = pipeline.cached_window_table(corpus, spec, d.overlap_s, d.jitter_grid_s)
  data = pipeline.windows_dataset(corpus, spec, table, batch_size=batch_size,
                                  process_index=process, process_count=count)
  encode = _encode_fn(model)
  writer = feature_store.ShardWriter(directory, process, count)
  local = jax.sharding.PartitionSpec(parallelism.BATCH_AXES)
  batches = pipeline.batch_count(len(table), batch_size, count)
  for batch in progress.bar(data, total=batches, desc='feature cache', unit='batch'):
    audio = jax.make_array_from_process_local_data(model.batch_sharding, batch['audio'])
    features = np.asarray(multihost_utils.global_array_to_host_local_array(
        encode(model.params, audio), model.mesh, local))
    for i in np.flatnonzero(batch['weight']):
      writer.write(int(batch['conversation'][i]), int(batch['frame'][i]), features[i])
  writer.close()
  parallelism.sync_processes('feature_cache_written')
  if process == 0:
    feature_store.finalize(directory, {
        'fingerprint': expected, 'shape': list(writer.shape), 'dtype': str(writer.dtype),
        'records': len(table), 'processes': count})
  parallelism.sync_processes('feature_cache_done')
  logging.info('feature cache %s: %d windows of %s %s', directory, len(table), writer.shape,
               config.model.dtype)
  return directory


def open_for(config, corpus: pipeline.Corpus, model: ModelState) -> feature_store.FeatureStore:
  """The cache `config.data.features` for training `config`, refused (naming what differs)
  unless it was built for this corpus, these windows and this encoder."""
  check_config(config)
  store = feature_store.FeatureStore(config.data.features)
  if problems := _mismatch(store.meta['fingerprint'], fingerprint(config, corpus, model)):
    raise errors.ConfigError(f'feature cache {config.data.features} was built for another '
                             f'config ({"; ".join(problems)}); rebuild it with run.py '
                             '--mode=cache_features')
  return store

