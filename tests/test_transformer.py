"""The causal ALiBi transformers against a numpy re-derivation of the references' layer math."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy.special import erf

from convssl_jax.models import layers, transformer

DIM, HEADS = 16, 4


def test_alibi_slopes_are_the_reference_geometric_sequences():
  np.testing.assert_array_equal(transformer.alibi_slopes(4), [0.25, 0.0625, 0.015625, 0.00390625])
  np.testing.assert_array_equal(transformer.alibi_slopes(8), [2.0 ** -k for k in range(1, 9)])


def test_layer_norm_keeps_its_digits_when_the_mean_dwarfs_the_spread():
  # torch's LayerNorm computes the variance in two passes; E[x^2] - E[x]^2 in float32 loses
  # every digit of a spread of 1e-2 around 100 (x^2 ~ 1e4, float32 spacing there ~1e-3; max error
  # 4.3 against 5e-4 in two passes).
  x = (100 + 1e-2 * np.random.default_rng(0).standard_normal((4, DIM))).astype(np.float32)
  norm = layers.layer_norm(DIM, rngs=nnx.Rngs(0))
  x64 = x.astype(np.float64)
  expected = (x64 - x64.mean(-1, keepdims=True)) / np.sqrt(x64.var(-1, keepdims=True) + 1e-5)
  np.testing.assert_allclose(norm(x), expected, atol=2e-3)


def test_relative_alibi_gives_the_same_softmax_as_the_reference_key_index_form():
  slopes = transformer.alibi_slopes(HEADS)
  scores = np.random.default_rng(0).normal(size=(HEADS, 7, 7))
  i, j = np.arange(7)[:, None], np.arange(7)[None, :]
  reference = np.where(j <= i, scores + slopes[:, None, None] * j, -np.inf)  # m_h * key index
  ours = scores + np.asarray(transformer.causal_alibi_bias(slopes, 7))
  np.testing.assert_allclose(jax.nn.softmax(ours, -1), jax.nn.softmax(reference, -1), atol=1e-6)


def test_context_hides_keys_further_back_than_the_context():
  bias = np.asarray(transformer.causal_alibi_bias(transformer.alibi_slopes(2), 6, context=3))
  i, j = np.arange(6)[:, None], np.arange(6)[None, :]
  np.testing.assert_array_equal(np.isfinite(bias[0]), (j <= i) & (j > i - 3))


# A numpy re-derivation of the references' pre-LN layer (vap_spec 2.5.1, data_and_stereo_spec B.3).

def _ln(x, p):
  mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + 1e-5) * np.asarray(p.scale[...]) + np.asarray(p.bias[...])


def _gelu(x):
  return 0.5 * x * (1 + erf(x / math.sqrt(2)))


def _w(linear):
  return np.asarray(linear.kernel[...], np.float64)


def _mha(m, x, src, heads, scale):
  t, s = x.shape[1], src.shape[1]
  split = lambda a: a.reshape(a.shape[0], a.shape[1], heads, -1).transpose(0, 2, 1, 3)
  q, k, v = split(x @ _w(m.query)), split(src @ _w(m.key)), split(src @ _w(m.value))
  slopes = transformer.alibi_slopes(heads)
  i, j = np.arange(t)[:, None], np.arange(s)[None, :]
  bias = np.where(j <= i, slopes[:, None, None] * j, -np.inf)  # the reference's key-index ALiBi
  scores = q @ k.transpose(0, 1, 3, 2) * scale + bias
  w = np.exp(scores - scores.max(-1, keepdims=True))
  w /= w.sum(-1, keepdims=True)
  out = (w @ v).transpose(0, 2, 1, 3).reshape(x.shape)
  return out @ _w(m.proj)


def _layer(layer, x, heads, scale, double_residual, src=None):
  h = _ln(x, layer.ln_self_attn)
  h = x + _mha(layer.mha, h, h, heads, scale)
  if double_residual:
    h = x + h
  if src is not None:
    h = h + _mha(layer.mha_cross, _ln(h, layer.ln_src_attn), src, heads, scale)
  ffn = layer.ffn
  return h + _gelu(_ln(h, layer.ln_ffn) @ _w(ffn.up)) @ _w(ffn.down)


@pytest.mark.parametrize('double_residual', [False, True])
@pytest.mark.parametrize('scale', ['model', 'head'])
def test_gpt_matches_the_reference_layer_math(double_residual, scale):
  gpt = transformer.GPT(DIM, HEADS, 2, double_residual=double_residual, scale=scale,
                        rngs=nnx.Rngs(0))
  gpt.eval()
  x = np.random.default_rng(1).normal(size=(2, 9, DIM)).astype(np.float32)
  expected = x.astype(np.float64)
  for layer in gpt.layers:
    expected = _layer(layer, expected, HEADS, 1 / math.sqrt(DIM if scale == 'model' else DIM // HEADS),
                      double_residual)
  np.testing.assert_allclose(gpt(jnp.asarray(x)), expected, atol=1e-5, rtol=1e-5)


def test_stereo_stack_matches_the_reference_layer_math():
  stack = transformer.StereoTransformer(DIM, HEADS, self_layers=1, cross_layers=2, rngs=nnx.Rngs(0))
  stack.eval()
  rng = np.random.default_rng(2)
  x1, x2 = (rng.normal(size=(2, 8, DIM)).astype(np.float32) for _ in range(2))
  scale = 1 / math.sqrt(DIM)
  a, b = x1.astype(np.float64), x2.astype(np.float64)
  for layer in stack.ar_channel.layers:
    a, b = _layer(layer, a, HEADS, scale, False), _layer(layer, b, HEADS, scale, False)
  for layer in stack.cross_layers:  # both directions from the layer's inputs, K/V un-normalised
    a, b = (_layer(layer, a, HEADS, scale, False, src=b), _layer(layer, b, HEADS, scale, False, src=a))
  comb = stack.combinator
  x = _gelu(_ln(a @ _w(comb.h0_a), comb.ln)) + _gelu(_ln(b @ _w(comb.h0_b), comb.ln))
  out, out1, out2 = stack(jnp.asarray(x1), jnp.asarray(x2))
  for got, want in ((out, x), (out1, a), (out2, b)):
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def _perturb_after(x, t, seed=3):
  noise = np.random.default_rng(seed).normal(size=x.shape).astype(x.dtype)
  return np.where(np.arange(x.shape[1])[None, :, None] > t, x + noise, x)


def test_gpt_output_at_t_ignores_every_later_input():
  gpt = transformer.GPT(DIM, HEADS, 3, rngs=nnx.Rngs(0))
  gpt.eval()
  x = np.random.default_rng(4).normal(size=(2, 12, DIM)).astype(np.float32)
  for t in (0, 5, 10):
    before, after = gpt(jnp.asarray(x)), gpt(jnp.asarray(_perturb_after(x, t)))
    np.testing.assert_array_equal(before[:, :t + 1], after[:, :t + 1])
    assert not np.allclose(before[:, t + 1:], after[:, t + 1:])


def test_stereo_output_at_t_ignores_later_input_of_either_speaker():
  stack = transformer.StereoTransformer(DIM, HEADS, self_layers=1, cross_layers=2, rngs=nnx.Rngs(0))
  stack.eval()
  rng = np.random.default_rng(5)
  x1, x2 = (rng.normal(size=(1, 10, DIM)).astype(np.float32) for _ in range(2))
  t = 4
  before = stack(jnp.asarray(x1), jnp.asarray(x2))
  for changed in (( _perturb_after(x1, t), x2), (x1, _perturb_after(x2, t))):
    after = stack(*map(jnp.asarray, changed))
    for b, a in zip(before, after):
      np.testing.assert_array_equal(b[:, :t + 1], a[:, :t + 1])
      assert not np.allclose(b[:, t + 1:], a[:, t + 1:])


def test_each_speaker_stream_depends_on_the_other_speaker_through_cross_attention():
  stack = transformer.StereoTransformer(DIM, HEADS, rngs=nnx.Rngs(0))
  stack.eval()
  x1, x2 = jnp.ones((1, 5, DIM)), jnp.asarray(np.random.default_rng(6).normal(size=(1, 5, DIM)))
  grad_of_x1_stream = jax.grad(lambda b: stack(x1, b)[1].sum())(x2)
  grad_of_x2_stream = jax.grad(lambda a: stack(a, x2)[2].sum())(x1)
  assert np.abs(grad_of_x1_stream).sum() > 0 and np.abs(grad_of_x2_stream).sum() > 0


def test_dropout_is_active_in_training_and_off_in_eval():
  gpt = transformer.GPT(DIM, HEADS, 1, dropout=0.5, rngs=nnx.Rngs(0, dropout=1))
  x = jnp.asarray(np.random.default_rng(7).normal(size=(1, 6, DIM)), jnp.float32)
  gpt.train()
  assert not np.allclose(gpt(x), gpt(x))
  gpt.eval()
  np.testing.assert_array_equal(gpt(x), gpt(x))


def test_bfloat16_compute_keeps_float32_parameters():
  gpt = transformer.GPT(DIM, HEADS, 1, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
  gpt.eval()
  out = gpt(jnp.ones((3, 5, DIM), jnp.bfloat16))
  assert out.dtype == jnp.bfloat16 and out.shape == (3, 5, DIM)
  assert {p.dtype for p in jax.tree.leaves(nnx.state(gpt, nnx.Param))} == {jnp.dtype('float32')}
