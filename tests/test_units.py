"""k-means in JAX against known clusters and sklearn; chunked feature extraction against one pass."""

import jax
import numpy as np
import pytest
from flax import nnx
from sklearn.cluster import KMeans

from convssl_jax import units
from convssl_jax.models import cpc


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
