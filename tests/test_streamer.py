"""The whole model live (inference.Streamer) against its offline forward on the same audio."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import vap as vap_config
from convssl_jax import inference, models, objective as objective_lib
from convssl_jax.data import va as va_lib
from convssl_jax.models import vap

RATE, CONTEXT = 16000, 20  # 20 frames = 0.4 s of attention: the cache fills and wraps below


@functools.cache
def _setup(variant='tiny', context=CONTEXT):
  cfg = vap_config.get_config(variant).model
  cfg.transformer.context = context
  model = models.build_model(cfg, rngs=nnx.Rngs(0))
  model.eval()
  return model, objective_lib.for_model(cfg)


def _wave(seconds, batch=1, seed=0):
  """Stereo noise with loud and quiet stretches, so the outputs vary."""
  rng = np.random.default_rng(seed)
  samples = int(seconds * RATE)
  gain = np.repeat(rng.uniform(0, 0.5, (batch, 2, samples // 1600 + 1)), 1600, axis=-1)
  return (gain[..., :samples] * rng.standard_normal((batch, 2, samples))).astype(np.float32)


def _offline(model, objective, wave, va=None):
  """frame_outputs of the offline forward over the whole stereo wave [B, 2, S]."""
  if isinstance(model, vap.MonoVAP):
    history = np.stack([va_lib.va_history(v, objective.frame_hz) for v in va])
    out = model(jnp.asarray(wave), jnp.asarray(va), jnp.asarray(history))
  else:
    out = model(jnp.asarray(wave))
  out = {k: out[k] for k in ('logits', 'vad') if k in out}
  return jax.device_get(objective_lib.frame_outputs(objective, out, va))


def _stream(streamer, wave, sizes, va=None, va_sizes=None):
  """Pushes wave [B, 2, S] in chunks of `sizes` (cycled; VA frames in chunks of `va_sizes`)."""
  outs, start, va_start, i = [], 0, 0, 0
  while start < wave.shape[-1] or (va is not None and va_start < va.shape[1]):
    size = sizes[i % len(sizes)]
    kwargs = {}
    if va is not None:
      va_size = va_sizes[i % len(va_sizes)]
      kwargs['va'] = va[:, va_start:va_start + va_size]
      va_start += va_size
    outs.append(streamer.push(wave[..., start:start + size], **kwargs))
    start, i = start + size, i + 1
  return {k: np.concatenate([o[k] for o in outs], axis=-2) for k in outs[0]}


def _assert_close(got, want):
  assert set(got) == set(want)
  for key in want:
    np.testing.assert_allclose(got[key], want[key], atol=1e-4, err_msg=key)


MIXED = (1, 319, 17, 800, 3, 1000, 160, 5)


@pytest.mark.gpu_image
@pytest.mark.parametrize('sizes', [(320,), (319,), (RATE,), MIXED], ids=str)
def test_stereo_stream_equals_offline_for_any_hop_sizes_with_one_compile(sizes):
  model, objective = _setup()
  wave = _wave(1.5, batch=2)  # 75 frames: the 20-frame cache wraps several times
  streamer = inference.Streamer(model, objective, batch=2)
  got = _stream(streamer, wave, sizes)
  assert set(got) == {'p_now', 'p_future', 'p_bc', 'vad'}
  assert got['vad'].shape == (2, 75, 2)
  _assert_close(got, _offline(model, objective, wave))
  assert streamer.compilations == 1


def test_one_sample_pushes_of_a_single_conversation():
  model, objective = _setup()
  wave = _wave(0.3)
  streamer = inference.Streamer(model, objective)  # no batch: samples [2, n] -> outputs [k, 2]
  got = _stream(streamer, wave[0], (1,))
  _assert_close({k: v[None] for k, v in got.items()}, _offline(model, objective, wave))


def test_several_frames_per_step_give_the_same_outputs():
  model, objective = _setup()
  wave = _wave(1.0)
  one = _stream(inference.Streamer(model, objective, batch=1), wave, (777,))
  five = _stream(inference.Streamer(model, objective, batch=1, frames_per_step=5), wave, (777,))
  _assert_close(five, one)


def test_a_context_override_bounds_an_unbounded_model():
  """context=C on a model trained without a bound equals that model offline with the bound C."""
  model, objective = _setup(context=None)
  bounded, _ = _setup(context=CONTEXT)
  wave = _wave(1.0)
  got = _stream(inference.Streamer(model, objective, batch=1, context=CONTEXT), wave, (320,))
  _assert_close(got, _offline(bounded, objective, wave))
  assert model.transformer.context is None  # the caller's model is untouched
  with pytest.raises(ValueError, match='bounded attention context'):
    inference.Streamer(model, objective)


def test_state_is_constant_in_size_over_a_long_stream():
  model, objective = _setup()
  streamer = inference.Streamer(model, objective, batch=1)
  spec = lambda: jax.tree.map(lambda a: (a.shape, a.dtype), streamer.state)
  before = spec()
  for _ in range(3):
    streamer.push(_wave(1.0)[:, :, :RATE])  # 150 frames through a 20-frame cache
  assert spec() == before
  assert int(streamer.state.transformer.channel.position) == 150
  assert streamer.compilations == 1


@pytest.mark.gpu_image
def test_mono_stream_with_va_equals_offline():
  """The mono model reads each frame's VA and history; VA and audio arrive unevenly."""
  model, objective = _setup('tiny,mono')
  wave = _wave(1.2, seed=1)
  frames = 60
  va = np.zeros((1, frames, 2), np.float32)
  va[0, 5:25, 0] = va[0, 30:55, 1] = va[0, 20:28, 1] = 1
  streamer = inference.Streamer(model, objective, batch=1)
  got = _stream(streamer, wave, (500, 77, 1200), va, (3, 0, 11))
  want = _offline(model, objective, wave, va)
  assert 'p' in got
  _assert_close(got, want)


@pytest.mark.parametrize('variant', ['tiny', 'tiny,mono'])
def test_forks_stream_independently_from_the_start_without_compiling_again(variant):
  """Forks (one per client of run.py --mode=serve) pushed in turn, each on its own audio, and
  their parent afterwards: each equals the offline model on its own audio; one compilation."""
  model, objective = _setup(variant)
  waves = [_wave(1.0, seed=s) for s in (4, 5, 6)]
  frames = 50
  va = np.zeros((1, frames, 2), np.float32)
  va[0, 5:25, 0] = va[0, 20:45, 1] = 1
  va = va if variant.endswith('mono') else None
  parent = inference.Streamer(model, objective, batch=1)
  first = parent.push(waves[2][..., :700], **({} if va is None else {'va': va[:, :2]}))
  forks = [parent.fork(), parent.fork()]
  outs = [[], []]
  for start in range(0, RATE, 800):  # the forks' pushes interleaved
    for i, fork in enumerate(forks):
      kwargs = {} if va is None else {'va': va[:, start // 320:(start + 800) // 320]}
      outs[i].append(fork.push(waves[i][..., start:start + 800], **kwargs))
  got = [{k: np.concatenate([o[k] for o in out], axis=-2) for k in out[0]} for out in outs]
  rest = {} if va is None else {'va': va[:, 2:]}
  last = parent.push(waves[2][..., 700:], **rest)  # the 60 samples left over before the forks
  got.append({k: np.concatenate([first[k], last[k]], axis=-2) for k in first})
  for g, wave in zip(got, waves):
    _assert_close(g, _offline(model, objective, wave, va))
  assert parent.compilations == 1 and all(f.compilations == 1 for f in forks)


def test_push_checks_its_input():
  model, objective = _setup()
  streamer = inference.Streamer(model, objective)
  with pytest.raises(ValueError, match=r'expected samples \[2, n\]'):
    streamer.push(np.zeros((1, 320), np.float32))
  with pytest.raises(ValueError, match='audio only'):
    streamer.push(np.zeros((2, 320), np.float32), va=np.zeros((1, 2)))
  mono, mono_objective = _setup('tiny,mono')
  with pytest.raises(ValueError, match=r'expected va \[k, 2\]'):
    inference.Streamer(mono, mono_objective).push(np.zeros((2, 320), np.float32),
                                                   va=np.zeros((1, 3)))


def test_reference_padding_is_refused():
  cfg = vap_config.get_config('tiny').model
  cfg.transformer.context = CONTEXT
  cfg.encoder.padding = 'reference'
  model = models.build_model(cfg, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="'causal' padding"):
    inference.Streamer(model, objective_lib.for_model(cfg))
