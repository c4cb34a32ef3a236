"""Key/value-cache streaming of the ALiBi GPT against its offline forward over the whole stream."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import vap as vap_config
from convssl_jax.models import transformer

DIM, HEADS, LAYERS, CONTEXT, FRAMES = 32, 2, 2, 16, 60


def _gpt(context=CONTEXT, **options):
  gpt = transformer.GPT(DIM, HEADS, LAYERS, context=context, rngs=nnx.Rngs(0), **options)
  gpt.eval()
  return gpt


def _stream(gpt, x, n):
  """Feeds x [B, T, D] n frames a step through one jitted step; the outputs and every cache."""
  step = nnx.jit(transformer.gpt_step)
  cache, outputs, caches = transformer.init_cache(gpt, x.shape[0], n), [], []
  for t in range(0, x.shape[1], n):
    cache, y = step(gpt, cache, jnp.asarray(x[:, t:t + n]))
    outputs.append(y)
    caches.append(cache)
  return np.concatenate(outputs, axis=1), caches


def _frames(seed=0):
  return np.random.default_rng(seed).normal(size=(2, FRAMES, DIM)).astype(np.float32)


@pytest.mark.parametrize('n', [1, 4])
def test_streaming_equals_offline(n):
  gpt, x = _gpt(), _frames()
  got, _ = _stream(gpt, x, n)
  np.testing.assert_allclose(got, gpt(jnp.asarray(x)), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('n', [1, 4])
def test_streaming_equals_offline_with_the_tiny_mono_config(n):
  t = vap_config.get_config('tiny,mono').model.transformer
  gpt = transformer.GPT(DIM, t.num_heads, t.num_layers, context=CONTEXT, rngs=nnx.Rngs(1),
                        final_norm=t.final_norm, ffn_mult=t.ffn_mult, dropout=t.dropout,
                        scale=t.scale, double_residual=t.double_residual)
  assert t.double_residual and t.scale == 'model'
  gpt.eval()
  x = _frames(1)
  got, _ = _stream(gpt, x, n)
  np.testing.assert_allclose(got, gpt(jnp.asarray(x)), atol=1e-5, rtol=1e-5)


def test_streaming_with_a_final_norm_and_head_scale_equals_offline():
  gpt, x = _gpt(final_norm=True, scale='head'), _frames(2)
  got, _ = _stream(gpt, x, 4)
  np.testing.assert_allclose(got, gpt(jnp.asarray(x)), atol=1e-5, rtol=1e-5)


def test_cache_shapes_are_constant_and_bounded_by_the_context():
  gpt = _gpt()
  _, caches = _stream(gpt, _frames(), 1)
  shapes = {jax.tree.map(jnp.shape, c) for c in caches}
  assert len(shapes) == 1
  (keys, values), = {(kv.keys.shape, kv.values.shape) for kv in caches[-1].layers}
  assert keys == values == (2, HEADS, CONTEXT, DIM // HEADS)
  assert int(caches[-1].position) == FRAMES


def test_unbounded_context_is_refused():
  gpt = _gpt(context=None)
  with pytest.raises(ValueError, match='bounded attention context'):
    transformer.init_cache(gpt, 1)
  with pytest.raises(ValueError, match='bounded attention context'):
    transformer.gpt_step(gpt, transformer.init_cache(_gpt(), 1), jnp.zeros((1, 1, DIM)))


def test_a_step_longer_than_the_cache_was_made_for_is_refused():
  gpt = _gpt(context=4)
  with pytest.raises(ValueError, match='made for steps of 2'):
    transformer.gpt_step(gpt, transformer.init_cache(gpt, 1, 2), jnp.zeros((1, 3, DIM)))


def test_training_mode_dropout_is_refused():
  gpt = _gpt(dropout=0.1)
  gpt.train()
  with pytest.raises(ValueError, match='eval mode'):
    transformer.gpt_step(gpt, transformer.init_cache(gpt, 1), jnp.zeros((1, 1, DIM)))


def _stereo(**options):
  stereo = transformer.StereoTransformer(DIM, HEADS, self_layers=1, cross_layers=2,
                                         context=CONTEXT, rngs=nnx.Rngs(3), **options)
  stereo.eval()
  return stereo


def _stream_stereo(stereo, x1, x2, n):
  step = nnx.jit(transformer.stereo_step)
  cache, outputs, caches = transformer.init_stereo_cache(stereo, x1.shape[0], n), [], []
  for t in range(0, x1.shape[1], n):
    cache, y = step(stereo, cache, jnp.asarray(x1[:, t:t + n]), jnp.asarray(x2[:, t:t + n]))
    outputs.append(y)
    caches.append(cache)
  return [np.concatenate(parts, axis=1) for parts in zip(*outputs)], caches


@pytest.mark.parametrize('n,options', [
    (1, {}), (5, {}), (3, {'norm_cross_kv': True, 'final_norm': True}),
    (2, {'double_residual': True, 'scale': 'head'})])
def test_stereo_streaming_equals_offline(n, options):
  stereo, x1, x2 = _stereo(**options), _frames(4), _frames(5)
  got, _ = _stream_stereo(stereo, x1, x2, n)
  want = stereo(jnp.asarray(x1), jnp.asarray(x2))
  for g, w in zip(got, want):  # the combined stream, then each speaker's
    np.testing.assert_allclose(g, w, atol=1e-5, rtol=1e-5)


def test_stereo_speakers_see_each_other_through_the_cache():
  """Changing speaker B's past changes A's later outputs (cross-attention reads B's cache)."""
  stereo, x1, x2 = _stereo(), _frames(4), _frames(5)
  (_, a, _), _ = _stream_stereo(stereo, x1, x2, 1)
  x2_changed = x2.copy()
  x2_changed[:, 10] += 1.0
  (_, a_changed, _), _ = _stream_stereo(stereo, x1, x2_changed, 1)
  np.testing.assert_array_equal(a[:, :10], a_changed[:, :10])
  assert np.abs(a[:, 10:10 + CONTEXT] - a_changed[:, 10:10 + CONTEXT]).max() > 1e-3


def test_stereo_cache_shapes_are_constant_and_bounded_by_the_context():
  stereo = _stereo()
  _, caches = _stream_stereo(stereo, _frames(), _frames(1), 1)
  assert len({jax.tree.map(jnp.shape, c) for c in caches}) == 1
  shapes = {kv.keys.shape for pair in caches[-1].cross_layers for kv in pair}
  assert shapes == {(4, HEADS, CONTEXT, DIM // HEADS)}  # both speakers of 2 conversations
  assert int(caches[-1].channel.position) == FRAMES
