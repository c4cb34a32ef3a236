"""The fused attention path (jax.nn.dot_product_attention, ALiBi as a bias) against the explicit one."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from convssl_jax.models import transformer

pytestmark = pytest.mark.gpu_image  # also under the accelerator image's versions (.ci/run)

DIM, HEADS, T = 16, 4, 24


def _pair(make):
  """The same module (same weights) built with attention='auto' and attention='einsum'."""
  return make('auto'), make('einsum')


def _inputs(*shape, seed=0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


@pytest.mark.parametrize('context', [None, 5])
def test_fused_gpt_equals_the_explicit_path_in_value_and_gradient(context):
  fused, explicit = _pair(lambda impl: transformer.GPT(
      DIM, HEADS, 2, context=context, dropout=0.0, attention=impl, rngs=nnx.Rngs(0)))
  x = _inputs(3, T, DIM)
  loss = lambda m, x: jnp.sum(jnp.sin(m(x)))
  for grad_of in (0, 1):  # parameters, then inputs
    (va, ga), (vb, gb) = (nnx.value_and_grad(loss, argnums=grad_of)(m, x)
                          for m in (fused, explicit))
    np.testing.assert_allclose(va, vb, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), ga, gb)


def test_fused_stereo_stack_equals_the_explicit_path_in_eval_mode_with_dropout_configured():
  fused, explicit = _pair(lambda impl: transformer.StereoTransformer(
      DIM, HEADS, self_layers=1, cross_layers=2, dropout=0.1, attention=impl, rngs=nnx.Rngs(0)))
  fused.eval()
  explicit.eval()
  x1, x2 = _inputs(2, T, DIM, seed=1), _inputs(2, T, DIM, seed=2)
  for a, b in zip(fused(x1, x2), explicit(x1, x2)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_attention_matches_a_numpy_softmax_with_the_mask_and_bias():
  rng = np.random.default_rng(3)
  q, k, v = (rng.normal(size=(2, HEADS, T, 4)).astype(np.float32) for _ in range(3))
  bias = np.asarray(transformer.causal_alibi_bias(transformer.alibi_slopes(HEADS), T, context=7))
  out = transformer.attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), jnp.asarray(bias),
                              0.3, nnx.Dropout(0.0))
  scores = np.einsum('bhqd,bhkd->bhqk', q, k).astype(np.float64) * 0.3 + bias
  w = np.exp(scores - scores.max(-1, keepdims=True))
  expected = np.einsum('bhqk,bhkd->bqhd', w / w.sum(-1, keepdims=True), v)
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


def test_active_attention_dropout_takes_the_explicit_path_and_drops_weights():
  q = k = v = _inputs(1, HEADS, T, 4)
  bias = transformer.causal_alibi_bias(transformer.alibi_slopes(HEADS), T)
  dropout = nnx.Dropout(0.5, rngs=nnx.Rngs(dropout=0))
  train = transformer.attention(q, k, v, bias, 0.5, dropout)
  dropout.eval()
  np.testing.assert_allclose(transformer.attention(q, k, v, bias, 0.5, dropout),
                             transformer.attention(q, k, v, bias, 0.5, dropout, 'einsum'),
                             rtol=1e-6, atol=1e-6)  # (jax 0.11.2: 6e-8 apart on values near 0)
  assert not np.allclose(train, transformer.attention(q, k, v, bias, 0.5, dropout))


def test_unknown_attention_implementation_is_refused_by_name():
  with pytest.raises(ValueError, match="'flash'"):
    transformer.attention(*(_inputs(1, HEADS, 2, 4),) * 3, jnp.zeros((HEADS, 2, 2)), 1.0,
                          nnx.Dropout(0.0), 'flash')


def _uncompilable_kernel(q, k, v, bias, mask, scale):
  """Stands for a cuDNN kernel that traces and lowers but that XLA cannot compile: a custom call
  (forward, and backward through a custom VJP) that no platform implements."""
  del scale

  def call(*args):
    return jax.ffi.ffi_call('convssl_test_no_such_kernel',
                            [jax.ShapeDtypeStruct(t.shape, t.dtype) for t in (q, k, v)])(*args)

  @jax.custom_vjp
  def kernel(q, k, v):
    return call(q, k, v, bias, mask)[0]

  kernel.defvjp(lambda q, k, v: (kernel(q, k, v), None), lambda _, g: tuple(call(g, g, g)))
  return kernel(q, k, v)


def _train_value_and_grad(model, x):
  loss = lambda m, x: jnp.sum(jnp.sin(m(x)))
  return nnx.jit(nnx.value_and_grad(loss))(model, x)


@pytest.mark.parametrize('kernel', ['fails to compile', 'refused while tracing'])
def test_auto_attention_falls_back_to_xla_when_the_fused_kernel_fails(monkeypatch, caplog, kernel):
  # On the CPU, 'auto' is made to try the fused kernel: one that XLA cannot compile, or cuDNN's own,
  # which refuses to trace here ("cuDNN is not detected").
  monkeypatch.setattr(transformer, '_cudnn_backend', lambda dtype: True)
  if kernel == 'fails to compile':
    monkeypatch.setattr(transformer, '_fused', _uncompilable_kernel)
  transformer.fused_attention_compiles.cache_clear()
  fused, explicit = _pair(lambda impl: transformer.GPT(
      DIM, HEADS, 2, context=5, dropout=0.0, attention=impl, rngs=nnx.Rngs(0)))
  x = _inputs(3, T, DIM, seed=4)
  with caplog.at_level('WARNING'):
    (value, grads), (want, want_grads) = (_train_value_and_grad(m, x) for m in (fused, explicit))
  np.testing.assert_allclose(value, want, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), grads, want_grads)
  assert 'does not compile' in caplog.text and "XLA's attention runs instead" in caplog.text
  # One check per attention shape, however many layers and calls use it.
  assert transformer.fused_attention_compiles.cache_info().currsize == 1
  if kernel == 'fails to compile':  # without the check, the whole step fails to compile
    monkeypatch.setattr(transformer, 'fused_attention_compiles', lambda *args: True)
    with pytest.raises(Exception, match='convssl_test_no_such_kernel'):
      _train_value_and_grad(fused, x)
