"""k-means in JAX against known clusters and sklearn; chunked feature extraction against one pass;
units from converted HuBERT / wav2vec2 / WavLM layers against torchaudio's; the feature budget."""

import jax
import numpy as np
import pytest
from flax import nnx
from sklearn.cluster import KMeans

from checkpoints_convert import __main__ as convert_cli
from configs import ulm
from convssl_jax import corpora, errors, units
from convssl_jax.data import audio as audio_lib
from convssl_jax.data import pipeline, unit_store
from convssl_jax.data import va as va_lib
from convssl_jax.models import cpc, pretrained, ssl_encoders
from tests.test_convert_ssl import FIXTURES, INPUTS, TOL, _expected


def _blobs(seed=0, k=6, per=200, dim=8, spread=0.1):
  """k Gaussian blobs with centres >= 4 apart and std `spread`: (points, true labels, centres)."""
  rng = np.random.default_rng(seed)
  centres = 4.0 * np.eye(k, dim) + rng.uniform(-0.5, 0.5, (k, dim))
  labels = np.repeat(np.arange(k), per)
  points = centres[labels] + spread * rng.standard_normal((k * per, dim))
  order = rng.permutation(len(points))
  return points[order].astype(np.float32), labels[order], centres


def _same_partition(a, b):
  """True when labelings a and b are equal up to a permutation of the cluster ids."""
  pairs = set(zip(a.tolist(), b.tolist()))
  return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


@pytest.mark.parametrize('batch_size', [0, 128])  # full-batch Lloyd, mini-batch
@pytest.mark.parametrize('seed', [0, 1])
def test_kmeans_recovers_well_separated_blobs(batch_size, seed):
  x, labels, centres = _blobs(seed)
  centroids, inertia = units.kmeans(x, 6, seed=seed, batch_size=batch_size, iterations=100)
  ids = np.asarray(units.assign(x, centroids)[0])
  assert _same_partition(ids, labels)
  # Each centroid sits at its blob's mean; the inertia is the points' spread around them.
  for c in range(6):
    np.testing.assert_allclose(centroids[ids[labels == c][0]], x[labels == c].mean(0), atol=0.05)
  reference = KMeans(6, n_init=1, random_state=0).fit(x).inertia_
  np.testing.assert_allclose(inertia, reference, rtol=0.02)


def test_kmeans_plus_plus_seeds_one_centroid_per_blob():
  x, labels, centres = _blobs(2)
  seeds = np.asarray(units.kmeans_plusplus(jax.random.key(0), x, 6, np.ones(len(x), np.float32)))
  nearest_blob = np.argmin(((seeds[:, None] - centres[None]) ** 2).sum(-1), axis=1)
  assert sorted(nearest_blob) == list(range(6))


def test_weights_count_as_repeated_points():
  x = np.array([[0.0], [1.0], [10.0]], np.float32)
  centroids, inertia = units.kmeans(x, 2, weights=np.array([1.0, 3.0, 1.0]), seed=0)
  np.testing.assert_allclose(np.sort(centroids[:, 0]), [0.75, 10.0], rtol=1e-6)
  np.testing.assert_allclose(inertia, 1 * 0.75 ** 2 + 3 * 0.25 ** 2, rtol=1e-5)


def test_kmeans_needs_k_points():
  with pytest.raises(ValueError, match='k=5 needs at least 5'):
    units.kmeans(np.zeros((3, 2), np.float32), 5)


def test_assignment_is_the_nearest_centroid():
  rng = np.random.default_rng(0)
  x, c = rng.standard_normal((50, 4)), rng.standard_normal((7, 4))
  ids, d2 = units.assign(x, c)
  brute = ((x[:, None] - c[None]) ** 2).sum(-1)
  np.testing.assert_array_equal(ids, brute.argmin(1))
  np.testing.assert_allclose(d2, brute.min(1), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('padding', ['causal', 'reference'])
@pytest.mark.parametrize('layer', ['conv', 'lstm'])
def test_chunked_features_equal_one_pass_over_the_whole_conversation(padding, layer):
  encoder = cpc.CPCEncoder(dim=16, padding=padding, rngs=nnx.Rngs(0))
  wave = np.random.default_rng(1).uniform(-0.5, 0.5, (2, 160 * 53 + 77)).astype(np.float32)
  extractor = units.FeatureExtractor(encoder, layer, chunk_frames=10)
  chunked = extractor(wave)
  whole = encoder.conv_features(wave) if layer == 'conv' else encoder(wave)
  assert chunked.shape == (2, 53, 16)
  checked = 53 - (2 if padding == 'reference' else 0)  # see FeatureExtractor
  np.testing.assert_allclose(chunked[:, :checked], np.asarray(whole)[:, :checked], atol=2e-5)
  np.testing.assert_array_equal(extractor(wave), chunked)  # deterministic


def test_pooling_to_50_hz_averages_pairs_of_frames():
  features = np.arange(10, dtype=np.float32).reshape(1, 5, 2)
  np.testing.assert_allclose(units.pool(features, 50), [[[1, 2], [5, 6]]])
  with pytest.raises(ValueError, match='divides 100'):
    units.pool(features, 30)


# Units from a converted HuBERT / wav2vec2 / WavLM encoder.

CONVERTED = {'hubert': ('hubert_base_fairseq.pt', 'hubert_base'),
             'wav2vec2': ('wav2vec2_large_fairseq.pt', 'wav2vec2_large'),
             'wavlm': ('wavlm_base_unilm.pt', 'wavlm_base')}


@pytest.fixture(scope='module')
def converted(tmp_path_factory):
  """{family: the tiny torch fixture converted by `python -m checkpoints_convert`}."""
  root = tmp_path_factory.mktemp('converted')
  for family, (file, _) in CONVERTED.items():
    convert_cli.main([family, str(FIXTURES / file), str(root / family)])
  return {family: root / family for family in CONVERTED}


def _units_config(encoder_dir, layer='1', **units):
  config = ulm.get_config('tiny')
  config.units.update(encoder_checkpoint=str(encoder_dir), layer=layer, **units)
  return config


@pytest.mark.parametrize('family', CONVERTED)
def test_a_converted_encoders_layer_k_is_torchaudios_extract_features_k_minus_1(family, converted):
  """The unit encoder of `units.layer=k` is torchaudio's extract_features()[k - 1]; the extractor
  runs it on the wave right-padded by 80 samples, as the VAP front-end does: 3120 samples (9.75
  VA frames of 20 ms) give 9 frames."""
  wave = INPUTS['len3200']
  for layer in (1, 2):
    encoder = units.load_unit_encoder(_units_config(converted[family], str(layer)).units)
    assert isinstance(encoder, ssl_encoders.SSLEncoder) and encoder.output_layer == layer
    np.testing.assert_allclose(encoder(wave),
                               _expected(CONVERTED[family][1])[f'layer{layer}_len3200'], **TOL)
    extractor = units.SSLFeatureExtractor(encoder, chunk_frames=1000, context_frames=100, rows=2)
    assert extractor.rate_hz == 50
    features = extractor(wave[:, :3120])
    assert features.shape == (2, va_lib.num_frames(3120 / 16000, 50), 32) == (2, 9, 32)
    np.testing.assert_allclose(features, encoder(np.pad(wave[:, :3120], ((0, 0), (0, 80)))),
                               atol=1e-5)


def test_long_conversations_are_encoded_in_windows_with_context_on_both_sides(converted):
  encoder = units.load_unit_encoder(_units_config(converted['hubert']).units)
  extractor = units.SSLFeatureExtractor(encoder, chunk_frames=8, context_frames=3, rows=4)
  # 30 frames in windows of 14: frames 0-10 from the first (3 frames after each), 11-18 from the
  # second (3 on either side), 19-29 from the last one, which ends with the conversation.
  assert extractor.plan(30) == [(0, 0, 11), (8, 11, 19), (16, 19, 30)]
  assert extractor.plan(14) == [(0, 0, 14)]  # fits one window: one pass
  for frames in (15, 23, 40, 97):
    plan = extractor.plan(frames)
    kept = np.concatenate([np.arange(a, b) for _, a, b in plan])
    np.testing.assert_array_equal(kept, np.arange(frames))  # every frame once, in order
    for start, first, end in plan:
      assert start + 14 <= frames and (first - start >= 3 or start == 0)
      assert start + 14 - end >= 3 or end == frames
  wave = np.random.default_rng(3).uniform(-0.5, 0.5, (2, 320 * 30 + 100)).astype(np.float32)
  padded = np.pad(wave, ((0, 0), (0, 80)))  # frame t: samples [320 t, 320 t + 400)
  windows = {s: np.asarray(encoder(padded[:, 320 * s:320 * (s + 14) + 80])) for s in (0, 8, 16)}
  expected = np.concatenate([windows[0][:, :11], windows[8][:, 3:11], windows[16][:, 3:]], axis=1)
  np.testing.assert_allclose(extractor(wave), expected, atol=1e-5)


def test_units_from_a_converted_hubert_are_its_nearest_centroids_at_50_hz(converted,
                                                                         tiny_data_dir, tmp_path):
  config = _units_config(converted['hubert'], '2', chunk_s=30.0)  # 20 s dialogs: one pass each
  config.units.data.data_dir = tiny_data_dir
  config.data.units_dir = str(tmp_path)
  units.build_units(config)
  meta = unit_store.read_meta(tmp_path)
  assert (meta['layer'], meta['encoder_hz'], meta['unit_hz'], meta['dim']) == ('2', 50, 50, 32)
  codebook = np.load(tmp_path / unit_store.CODEBOOK)
  assert codebook.shape == (16, 32)
  audio = corpora.open_data(config.units.data, ('test',), frame_hz=50)['test']
  record, example = corpora.open_data(config.data, ('test',), frame_hz=50)['test'].source[0], (
      audio.source[0])
  wave = audio_lib.from_int16(example['audio']).T
  encoder = pretrained.load_encoder(converted['hubert'], output_layer=2)
  features = np.asarray(encoder(np.pad(wave, ((0, 0), (0, 80)))))  # the VAP front-end's framing
  frames = va_lib.num_frames(audio.durations[0], 50)
  expected = np.argmin(((features[:, :frames, None] - codebook) ** 2).sum(-1), axis=-1).T
  assert record['units'].shape == (frames, 2)
  assert np.mean(record['units'] == expected) > 0.99  # up to near-ties in float32
  assert not record['monologue']


@pytest.mark.parametrize('layer, units_update, match', [
    ('lstm', {}, r"units.layer='lstm': the hubert encoder in .* takes a transformer layer 1..2"),
    ('3', {}, r"units.layer='3'.*layer 1..2"),
    ('1', {'padding': 'causal'}, r"units.padding='causal' is for CPC encoders"),
])
def test_a_layer_or_padding_the_encoder_has_not_is_refused_naming_the_field(
    converted, layer, units_update, match):
  with pytest.raises(errors.ConfigError, match=match):
    units.load_unit_encoder(_units_config(converted['hubert'], layer, **units_update).units)


def test_a_frame_rate_that_does_not_divide_the_encoders_is_refused(converted, tmp_path):
  config = _units_config(converted['hubert'])
  config.model.frame_hz = 20
  config.data.units_dir = str(tmp_path)
  with pytest.raises(errors.ConfigError, match=r"divides 50 Hz \(the encoder's\), got "
                                               'model.frame_hz=20'):
    units.build_units(config)


def test_the_feature_memory_budget_bounds_the_kmeans_sample_spread_evenly():
  cfg = ulm.get_config('tiny').units
  cfg.kmeans.update(max_frames=10**9, max_feature_memory_gb=1e-4)  # 100 kB of float32 features
  assert units.max_sample_frames(cfg, 32) == 100_000 // 128 == 781
  cfg.kmeans.max_frames = 500
  assert units.max_sample_frames(cfg, 32) == 500

  class Extractor:  # features that say where they come from: (conversation, channel, frame)
    rate_hz, dim = 50, 3

    def conversations(self, audio):
      return [np.stack(np.broadcast_arrays(a[0, 0], np.arange(2)[:, None],
                                           np.arange(a.shape[1] // 320)[None]), -1)
              .astype(np.float32) for a in audio]

  class Source:
    def __getitem__(self, j):
      return {'audio': np.full((16000 * (10 + j), 2), j, np.int16)}

  corpus = pipeline.Corpus(Source(), tuple('abcd'), np.array([10.0, 11.0, 12.0, 13.0]),
                           np.array([False, False, True, False]))
  x = units.sample_frames(Extractor(), corpus, 50, 781, batch=2, seed=0)
  assert 781 - 4 <= len(x) <= 781
  # The same share of each conversation's speakers' frames: 2 channels each, 1 for monologue c.
  frames = {j: len(x[x[:, 0] * 32768 == j]) for j in range(4)}
  speakers = np.array([2, 2, 1, 2]) * 50 * np.array([10, 11, 12, 13])
  np.testing.assert_allclose(np.array(list(frames.values())) / speakers, 781 / speakers.sum(),
                             atol=1e-3)
  assert not np.any((x[:, 0] * 32768 == 2) & (x[:, 1] == 1))  # no pretend partner's frame


BUDGET_SCRIPT = '''
import sys
import jax
import numpy as np
from configs import ulm
from convssl_jax import units
from convssl_jax.data import pipeline

class Extractor:  # 256-dim float32 features at 50 Hz: 15 MB per channel of 5 min
  rate_hz, dim = 50, 256
  def conversations(self, audio):
    return [np.ones((2, a.shape[1] // 320, 256), np.float32) for a in audio]

class Source:  # 60 conversations of 5 min: 3.7 GB of features in all
  def __getitem__(self, j):
    return {'audio': np.zeros((16000 * 300, 2), np.int16)}

cfg = ulm.get_config('tiny').units
cfg.kmeans.update(max_frames=10**9, max_feature_memory_gb=float(sys.argv[1]))
corpus = pipeline.Corpus(Source(), tuple(map(str, range(60))), np.full(60, 300.0))
jax.devices()  # the backend up before the cap, as in a units run (the progress bar asks it)
limit_memory(800)
x = units.sample_frames(Extractor(), corpus, 50, units.max_sample_frames(cfg, 256), 2, 0)
print(x.nbytes)
'''


def test_the_kmeans_sample_stays_within_the_feature_budget_under_a_memory_limit():
  """A child process capped at 800 MB over its imports samples 3.7 GB of features under a 0.2 GB
  budget; with conv_ssl's default of 20 GB (and no frame cap) the same sample exceeds the cap."""
  from tests import processes
  out = processes.run_limited(BUDGET_SCRIPT, '0.2', timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert 0.19e9 < int(out.stdout.split()[-1]) <= 0.2e9
  out = processes.run_limited(BUDGET_SCRIPT, '20', timeout=300)
  assert out.returncode != 0 and 'MemoryError' in out.stderr
