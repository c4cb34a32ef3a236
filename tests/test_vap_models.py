"""The mono and stereo VAP models: parameter counts, shapes, dtypes, causality, freezing, F0 head."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import vap as vap_config
from convssl_jax import models
from convssl_jax.models import heads

# Parameter counts derived from the layer shapes of the references (vap_spec 2.7,
# data_and_stereo_spec B.6), not from our modules.
D, FFN = 256, 768
LN = 2 * D
GPT_LAYER = 2 * LN + 4 * D * D + 2 * D * FFN  # two LayerNorms, q/k/v/proj, FFN; no biases
CROSS_LAYER = GPT_LAYER + LN + 4 * D * D  # plus the source LayerNorm and the cross attention
COMBINATOR = 2 * D * D + LN
VA_CONDITION = (2 * D + D) + (5 * D + D) + LN
DISCRETE_HEAD = D * 256 + 256
DOWNSAMPLE = {50: 5 * D * D + D + LN, 20: 11 * D * D + D + LN, 100: 0}
CPC_CONVS = (10 * D + D) + (8 * D * D + D) + 3 * (4 * D * D + D) + 5 * LN


def _abstract_model(cfg):
  return nnx.eval_shape(lambda: models.build_model(cfg, rngs=nnx.Rngs(0)))


def _config(*variants, **model_overrides):
  """The model config of `variants`, at the reference's sizes unless 'tiny' is among them."""
  variants = variants if 'tiny' in variants else ('reference', *variants)
  cfg = vap_config.get_config(','.join(variants)).model
  for key, value in model_overrides.items():
    node = cfg
    *parents, leaf = key.split('.')
    for p in parents:
      node = node[p]
    node[leaf] = value
  return cfg


def test_reference_sizes_are_the_spec_figures():
  assert GPT_LAYER == 656_384 and CROSS_LAYER == 919_040 and COMBINATOR == 131_584
  assert VA_CONDITION == 2_816 and DISCRETE_HEAD == 65_792 and CPC_CONVS == 1_317_120
  assert (DOWNSAMPLE[50], DOWNSAMPLE[20]) == (328_448, 721_664)


@pytest.mark.parametrize('frame_hz', [50, 20, 100])
def test_mono_trainable_parameters_equal_conv_ssl(frame_hz):
  cfg = _config('mono', frame_hz=frame_hz, **{'encoder.freeze': True})
  model = _abstract_model(cfg)
  expected = DOWNSAMPLE[frame_hz] + VA_CONDITION + 4 * GPT_LAYER + DISCRETE_HEAD
  assert models.count_params(model, models.trainable_filter(cfg)) == expected
  if frame_hz == 50:
    assert expected == 3_022_592  # vap_spec 2.7's total


@pytest.mark.parametrize('variant, head_size', [('independent', D * 8 + 8), ('comparative', D + 1)])
def test_mono_head_types_change_only_the_head(variant, head_size):
  cfg = _config('mono', variant, **{'encoder.freeze': True})
  expected = DOWNSAMPLE[50] + VA_CONDITION + 4 * GPT_LAYER + head_size
  assert models.count_params(_abstract_model(cfg), models.trainable_filter(cfg)) == expected


def test_mono_skantze_is_a_one_layer_gpt_with_120_regression_outputs_at_100_hz():
  cfg = _config('mono_skantze', **{'encoder.freeze': True})
  expected = DOWNSAMPLE[100] + VA_CONDITION + GPT_LAYER + D * 120 + 120
  assert models.count_params(_abstract_model(cfg), models.trainable_filter(cfg)) == expected


def test_stereo_trainable_parameters_equal_voice_activity_projection():
  cfg = _config(**{'encoder.freeze': True})
  model = _abstract_model(cfg)
  expected = (DOWNSAMPLE[50] + GPT_LAYER + 3 * CROSS_LAYER + COMBINATOR + DISCRETE_HEAD
              + (D + 1))  # VAD head
  assert models.count_params(model, models.trainable_filter(cfg)) == expected == 3_939_585


def test_frozen_encoder_is_excluded_until_its_unfreeze_step():
  cfg = _config(**{'encoder.freeze': True, 'encoder.unfreeze_step': 100})
  model = _abstract_model(cfg)
  encoder = models.count_params(model.encoder)
  assert encoder >= CPC_CONVS
  total = models.count_params(model)
  assert models.count_params(model, models.trainable_filter(cfg, step=99)) == total - encoder
  assert models.count_params(model, models.trainable_filter(cfg, step=100)) == total
  cfg.encoder.freeze = False
  assert models.count_params(model, models.trainable_filter(cfg, step=0)) == total


def _inputs(cfg, batch, samples, seed=0):
  rng = np.random.default_rng(seed)
  wave = rng.uniform(-0.5, 0.5, size=(batch, 2, samples)).astype(np.float32)
  frames = math.ceil((samples // 160) / (100 // cfg.frame_hz))
  va = (rng.uniform(size=(batch, frames, 2)) > 0.5).astype(np.float32)
  hist = rng.uniform(size=(batch, frames, cfg.va_cond.history_bins)).astype(np.float32)
  return wave, va, hist


def _call(model, wave, va, hist):
  if isinstance(model, models.MonoVAP):
    return model(wave, va, hist)
  return model(wave)


_forward = nnx.jit(_call)


def _run(model, cfg, wave, va, hist):
  del cfg  # the model's kind decides its inputs
  return _forward(model, jnp.asarray(wave), jnp.asarray(va), jnp.asarray(hist))


@pytest.mark.parametrize('kind', ['mono', 'stereo'])
@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
@pytest.mark.parametrize('batch, samples', [(1, 3200), (3, 3200 + 170)])
def test_output_shapes_and_dtypes(kind, dtype, batch, samples):
  cfg = _config(kind, 'tiny', dtype=dtype, f0_head=True)
  model = models.build_model(cfg, rngs=nnx.Rngs(0))
  model.eval()
  out = _run(model, cfg, *_inputs(cfg, batch, samples))
  frames = math.ceil((samples // 160) / 2)  # causal CPC: floor(S / 160) frames at 100 Hz -> 50 Hz
  compute = jnp.dtype(dtype)
  assert out['logits'].shape == (batch, frames, 256) and out['logits'].dtype == compute
  assert out['f0']['voiced'].shape == out['f0']['log_f0'].shape == (batch, frames, 2)
  if kind == 'stereo':
    assert out['vad'].shape == (batch, frames, 2) and out['vad'].dtype == compute
  assert {p.dtype for p in jax.tree.leaves(nnx.state(model, nnx.Param))} == {jnp.dtype('float32')}


@pytest.mark.parametrize('head, shape', [('independent', (2, 4)), ('comparative', (1,))])
def test_mono_head_output_shapes(head, shape):
  cfg = _config('mono', 'tiny', head)
  model = models.build_model(cfg, rngs=nnx.Rngs(0))
  model.eval()
  out = _run(model, cfg, *_inputs(cfg, 2, 3200))
  assert out['logits'].shape == (2, 10, *shape)


@pytest.mark.parametrize('kind', ['mono', 'stereo'])
def test_causal_model_frames_ignore_all_later_audio_and_va(kind):
  cfg = _config(kind, 'tiny', f0_head=True)
  model = models.build_model(cfg, rngs=nnx.Rngs(0))
  model.eval()
  wave, va, hist = _inputs(cfg, 2, 320 * 12)
  k = 7  # change everything from sample 320 k (the start of 50 Hz frame k) on
  rng = np.random.default_rng(9)
  wave2 = wave.copy()
  wave2[..., 320 * k:] = rng.uniform(-0.5, 0.5, size=wave2[..., 320 * k:].shape)
  va2, hist2 = va.copy(), hist.copy()
  va2[:, k:], hist2[:, k:] = 1 - va2[:, k:], rng.uniform(size=hist2[:, k:].shape)
  before, after = _run(model, cfg, wave, va, hist), _run(model, cfg, wave2, va2, hist2)
  for b, a in zip(jax.tree.leaves(before), jax.tree.leaves(after)):
    np.testing.assert_array_equal(b[:, :k], a[:, :k])
    assert not np.allclose(b[:, k], a[:, k])


@pytest.mark.parametrize('kind', ['mono', 'stereo'])
def test_reference_padding_model_sees_exactly_311_samples_past_the_frame(kind):
  cfg = _config(kind, 'tiny', **{'encoder.padding': 'reference'})
  model = models.build_model(cfg, rngs=nnx.Rngs(0))
  model.eval()
  wave, va, hist = _inputs(cfg, 1, 320 * 10)
  i = 5  # 50 Hz frame i ends at 100 Hz frame 2i, which sees samples up to 160 * 2i + 311

  graphdef, state = nnx.split(model)

  def frame_output(w):
    return _call(nnx.merge(graphdef, state), w, va, hist)['logits'][:, i].sum()

  grad = np.abs(np.asarray(jax.jit(jax.grad(frame_output))(jnp.asarray(wave)))).sum(axis=(0, 1))
  last = 320 * i + 311
  assert grad[last] > 0 and np.all(grad[last + 1:] == 0)


def test_f0_loss_is_voicing_bce_plus_log_f0_error_on_voiced_frames():
  f0_hz = jnp.asarray([[[100.0, 0.0], [0.0, 0.0], [200.0, 0.0]]])  # [B=1, N=3, 2]
  pred = {'voiced': jnp.zeros((1, 3, 2)), 'log_f0': jnp.full((1, 3, 2), math.log(200.0))}
  # voicing: every logit 0 -> BCE log 2; regression: voiced frames (100 Hz -> error log 2, 200 Hz -> 0)
  expected = math.log(2.0) + (math.log(2.0) ** 2 + 0.0) / 2
  np.testing.assert_allclose(heads.f0_loss(pred, f0_hz), expected, rtol=1e-6)


def test_f0_loss_ignores_log_f0_when_nothing_is_voiced():
  pred = {'voiced': jnp.full((1, 2, 2), -30.0), 'log_f0': jnp.full((1, 2, 2), 1e3)}
  np.testing.assert_allclose(heads.f0_loss(pred, jnp.zeros((1, 2, 2))), 0.0, atol=1e-9)


def test_unknown_config_values_are_refused_with_their_name():
  with pytest.raises(ValueError, match='unknown config variant'):
    vap_config.get_config('stero')
  with pytest.raises(ValueError, match="'gru'"):
    models.build_model(_config('tiny', **{'encoder.name': 'gru'}), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match='float16'):
    models.build_model(_config('tiny', dtype='float16'), rngs=nnx.Rngs(0))
