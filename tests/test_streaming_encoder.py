"""Streaming frame encoder: equal to the offline causal encoder, any push sizes, one compile."""

import functools

import jax
import numpy as np
import pytest
from flax import nnx

from configs import vap as vap_config
from convssl_jax import inference, models
from convssl_jax.models import frontends

RATE = 16000


@functools.cache
def _model(frame_hz, padding='causal'):
  cfg = vap_config.get_config('tiny').model
  cfg.encoder.padding = padding
  cfg.frame_hz = frame_hz
  return models.build_model(cfg, rngs=nnx.Rngs(0))


def _stereo_wave(seconds, batch=1, seed=0):
  samples = int(seconds * RATE)
  return 0.1 * np.random.default_rng(seed).standard_normal((batch, 2, samples)).astype(np.float32)


def _offline(model, wave):
  """The audio front-end over each channel: channels stacked on the batch, back to [B, 2, N, D]."""
  batch = wave.shape[0]
  z = np.asarray(model.encode(np.concatenate([wave[:, 0], wave[:, 1]], axis=0)))
  return np.stack([z[:batch], z[batch:]], axis=1)


def _stream(streamer, wave, sizes):
  """Pushes `wave` [B, 2, S] in chunks of `sizes` (cycled); returns all frames [B, 2, N, D]."""
  outs, start, i = [], 0, 0
  while start < wave.shape[-1]:
    size = sizes[i % len(sizes)]
    outs.append(streamer.push(wave[..., start:start + size]))
    start, i = start + size, i + 1
  return np.concatenate(outs, axis=2)


def _count_traces(monkeypatch):
  """A list that grows by one each time a streamer's step is traced (compiled)."""
  traces, step = [], frontends.AudioFrontend.encoder_stream_step

  def counting_step(*args):
    traces.append(1)
    return step(*args)

  monkeypatch.setattr(frontends.AudioFrontend, 'encoder_stream_step', counting_step)
  return traces


MIXED = (1, 319, 17, 800, 3, 1000, 160, 5)


@pytest.mark.parametrize('frame_hz', [100, 50, 20])
def test_streamed_frames_equal_offline_for_any_push_sizes_with_one_compile(monkeypatch, frame_hz):
  model = _model(frame_hz)
  wave = _stereo_wave(1.0)
  offline = _offline(model, wave)
  traces = _count_traces(monkeypatch)
  results = {}
  for name, sizes in {'319': (319,), 'one_second': (RATE,), 'mixed': MIXED}.items():
    streamer = inference.StreamingEncoder(model, frame_hz, batch_shape=(1, 2))
    results[name] = _stream(streamer, wave, sizes)
    assert streamer.compilations == 1, name
  assert len(traces) == 3  # once per streamer, whatever its push sizes
  assert results['319'].shape == offline.shape  # 1 s is a whole number of frames at every rate
  np.testing.assert_allclose(results['319'], offline, atol=1e-4)
  for name in ('one_second', 'mixed'):
    np.testing.assert_array_equal(results[name], results['319'], err_msg=name)


def test_one_sample_pushes_equal_offline():
  model = _model(50)
  wave = _stereo_wave(0.2)
  streamer = inference.StreamingEncoder(model, 50, batch_shape=(1, 2))
  streamed = _stream(streamer, wave, (1,))
  np.testing.assert_allclose(streamed, _offline(model, wave), atol=1e-4)


def test_partial_frames_wait_for_the_next_push():
  streamer = inference.StreamingEncoder(_model(50), 50, batch_shape=(1, 2))
  wave = _stereo_wave(0.04)  # two 20-ms frames
  assert streamer.push(wave[..., :319]).shape == (1, 2, 0, 32)
  assert streamer.push(wave[..., 319:]).shape == (1, 2, 2, 32)


def test_state_shapes_stay_constant():
  streamer = inference.StreamingEncoder(_model(50), 50, batch_shape=(1, 2))
  before = jax.tree.map(lambda a: (a.shape, a.dtype), streamer.state)
  _stream(streamer, _stereo_wave(2.0), MIXED)
  assert jax.tree.map(lambda a: (a.shape, a.dtype), streamer.state) == before


def test_larger_fixed_hop_gives_the_same_frames():
  model = _model(20)
  wave = _stereo_wave(1.0)
  one = _stream(inference.StreamingEncoder(model, 20, batch_shape=(1, 2)), wave, (RATE,))
  five = _stream(inference.StreamingEncoder(model, 20, batch_shape=(1, 2), frames_per_step=5),
                 wave, (RATE,))
  np.testing.assert_allclose(five, one, atol=1e-5)


def test_rejects_lookahead_padding_wrong_rate_and_wrong_shape():
  with pytest.raises(ValueError, match='causal'):
    inference.StreamingEncoder(_model(50, 'reference'), 50)
  with pytest.raises(ValueError, match='frame_hz'):
    inference.StreamingEncoder(_model(50), 20)
  with pytest.raises(ValueError, match='expected samples'):
    inference.StreamingEncoder(_model(50), 50, batch_shape=(1, 2)).push(np.zeros((2, 10)))
