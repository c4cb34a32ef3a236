"""CPC encoder: ChannelNorm and LSTM math, frame counts, causality, receptive field, shapes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from convssl_jax.models.cpc import LSTM, ChannelNorm, CPCEncoder, num_frames
from convssl_jax.models.downsample import CausalDownsample

# CPC_audio's frame counts for these lengths (from the PyTorch model, checkpoints_spec.md 1.4).
REFERENCE_FRAMES = {160: 1, 320: 2, 400: 2, 465: 2, 1000: 6, 16000: 100, 16001: 100,
                    16159: 101, 16160: 101, 32000: 200}
CUMULATIVE_STRIDES = (5, 20, 40, 80, 160)


def _num_params(module) -> int:
  return sum(leaf.size for leaf in jax.tree.leaves(nnx.state(module, nnx.Param)))


# Jitted entry points: one compile per configuration and shape keeps the file fast on CPU.
_encode = nnx.jit(lambda encoder, wave: (encoder.conv_features(wave), encoder(wave)))
_apply_with_carry = nnx.jit(lambda lstm, x, carry: lstm.apply_with_carry(x, carry))


@nnx.jit
def _block_outputs(encoder, wave):
  """Each conv block's output (conv -> norm -> ReLU), built from the encoder's own layers."""
  outputs, x = [], wave[..., None]
  for conv, norm in zip(encoder.convs, encoder.norms):
    x = jax.nn.relu(norm(conv(x)))
    outputs.append(x)
  return outputs


@nnx.jit
def _frame_gradients(encoder, wave):
  """d(channel sum of frame n)/d(wave) for each frame n of item 0: [T, S] for convs and LSTM."""
  def frame_sums(fn):
    return jax.jacrev(lambda w: fn(w)[0].sum(-1))(wave)[:, 0]
  return frame_sums(encoder.conv_features), frame_sums(encoder)


def _wave(batch, length, seed=0):
  return jnp.asarray(np.random.default_rng(seed).standard_normal((batch, length)), jnp.float32)


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def _numpy_lstm(x, layers):
  """torch.nn.LSTM semantics (gates i, f, g, o; zero initial state) in float64 numpy."""
  for w_ih, b, w_hh in layers:
    hidden = w_hh.shape[0]
    h = np.zeros((x.shape[0], hidden))
    c = np.zeros((x.shape[0], hidden))
    ys = []
    for t in range(x.shape[1]):
      gates = x[:, t] @ w_ih + b + h @ w_hh
      i, f, g, o = (gates[:, j * hidden:(j + 1) * hidden] for j in range(4))
      c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
      h = _sigmoid(o) * np.tanh(c)
      ys.append(h)
    x = np.stack(ys, axis=1)
  return x


def test_channel_norm_uses_unbiased_variance_over_channels():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 5, 8)).astype(np.float32) * 3 + 1
  scale = rng.standard_normal(8).astype(np.float32)
  bias = rng.standard_normal(8).astype(np.float32)
  norm = ChannelNorm(8)
  norm.scale[...] = jnp.asarray(scale)
  norm.bias[...] = jnp.asarray(bias)

  def expected(ddof):
    x64 = x.astype(np.float64)
    mean = x64.mean(-1, keepdims=True)
    var = x64.var(-1, ddof=ddof, keepdims=True)
    return (x64 - mean) / np.sqrt(var + 1e-5) * scale + bias

  y = np.asarray(norm(jnp.asarray(x)))
  np.testing.assert_allclose(y, expected(ddof=1), rtol=1e-5, atol=1e-5)
  assert np.abs(y - expected(ddof=0)).max() > 1e-2


def test_channel_norm_bf16_input_returns_bf16_with_float32_statistics():
  x = np.random.default_rng(1).standard_normal((1, 4, 16)).astype(np.float32) * 100 + 1000
  x_bf16 = jnp.asarray(x, jnp.bfloat16)
  y = ChannelNorm(16)(x_bf16)
  assert y.dtype == jnp.bfloat16
  x64 = np.asarray(x_bf16.astype(jnp.float32), np.float64)
  want = (x64 - x64.mean(-1, keepdims=True)) / np.sqrt(x64.var(-1, ddof=1, keepdims=True) + 1e-5)
  np.testing.assert_allclose(np.asarray(y, np.float32), want, atol=2e-2)


@pytest.mark.parametrize('num_layers', [1, 2])
def test_lstm_matches_numpy_lstm_with_gate_order_ifgo(num_layers):
  lstm = LSTM(6, 5, num_layers, unroll=3, rngs=nnx.Rngs(0))
  x = np.random.default_rng(2).standard_normal((2, 7, 6)).astype(np.float32)
  weights = [(np.asarray(l.input_proj.kernel[...], np.float64),
              np.asarray(l.input_proj.bias[...], np.float64),
              np.asarray(l.hidden_proj.kernel[...], np.float64)) for l in lstm.layers]
  y = lstm(jnp.asarray(x))
  assert y.shape == (2, 7, 5)
  np.testing.assert_allclose(np.asarray(y), _numpy_lstm(x.astype(np.float64), weights),
                             rtol=1e-5, atol=1e-6)


def test_lstm_init_is_uniform_within_one_over_sqrt_hidden():
  lstm = LSTM(64, 16, rngs=nnx.Rngs(0))
  leaves = jax.tree.leaves(nnx.state(lstm, nnx.Param))
  assert all(float(jnp.abs(leaf).max()) <= 0.25 for leaf in leaves)
  assert max(float(jnp.abs(leaf).max()) for leaf in leaves) > 0.24


@pytest.mark.parametrize('num_layers', [1, 2])
def test_lstm_carry_continues_the_recurrence_across_calls(num_layers):
  lstm = LSTM(4, 6, num_layers, rngs=nnx.Rngs(1))
  x = jnp.asarray(np.random.default_rng(3).standard_normal((3, 11, 4)), jnp.float32)
  y_first, carry = _apply_with_carry(lstm, x[:, :4], None)
  y_rest, _ = _apply_with_carry(lstm, x[:, 4:], carry)
  y_whole, _ = _apply_with_carry(lstm, x, None)
  np.testing.assert_allclose(np.concatenate([y_first, y_rest], axis=1), np.asarray(y_whole),
                             rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize('length', sorted(REFERENCE_FRAMES))
def test_reference_mode_frame_count_matches_cpc_audio(length):
  assert num_frames(length, 'reference') == REFERENCE_FRAMES[length]


@pytest.mark.parametrize('length', sorted(REFERENCE_FRAMES))
def test_causal_mode_frame_count_is_whole_hops(length):
  assert num_frames(length, 'causal') == length // 160


@pytest.mark.parametrize('padding', ['reference', 'causal'])
def test_encoder_output_length_equals_num_frames(padding):
  encoder = CPCEncoder(dim=16, padding=padding, rngs=nnx.Rngs(0))
  for length in (319, 465, 1600):
    for out in _encode(encoder, jnp.zeros((1, length))):
      assert out.shape[1] == num_frames(length, padding)


def test_unknown_padding_mode_raises_naming_it():
  with pytest.raises(ValueError, match='same'):
    CPCEncoder(dim=8, padding='same', rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match='same'):
    num_frames(1600, 'same')


@pytest.mark.parametrize('k', [1, 7])
def test_causal_mode_frames_before_a_perturbation_are_bit_identical(k):
  assert_causal(CPCEncoder(dim=16, padding='causal', rngs=nnx.Rngs(0)), k)


def assert_causal(encoder, k):
  """Perturbing the samples from 100-Hz frame k on leaves every earlier frame of every conv
  block, the LSTM and the downsamplers bit-identical, and changes frame k."""
  dim = encoder.lstm.hidden
  p = 160 * k
  wave = _wave(2, 160 * 12)
  perturbed = wave.at[:, p:].add(_wave(2, 160 * 12 - p, seed=1))

  for stride, a, b in zip(CUMULATIVE_STRIDES, _block_outputs(encoder, wave),
                          _block_outputs(encoder, perturbed)):
    first_changed = p // stride  # block frame j covers samples [stride*j, stride*(j+1))
    np.testing.assert_array_equal(a[:, :first_changed], b[:, :first_changed])
    assert not np.array_equal(a[:, first_changed], b[:, first_changed])

  c, c_perturbed = _encode(encoder, wave)[1], _encode(encoder, perturbed)[1]
  np.testing.assert_array_equal(c[:, :k], c_perturbed[:, :k])
  assert not np.array_equal(c[:, k], c_perturbed[:, k])

  for kernel, stride in ((5, 2), (11, 5)):
    down = CausalDownsample(dim, kernel, stride, rngs=nnx.Rngs(2))
    z, z_perturbed = down(c), down(c_perturbed)
    first_changed = -(-k // stride)  # downsampled frame i ends at 100-Hz frame stride*i
    np.testing.assert_array_equal(z[:, :first_changed], z_perturbed[:, :first_changed])
    assert not np.array_equal(z[:, first_changed], z_perturbed[:, first_changed])


@pytest.mark.parametrize('frame', [0, 1, 4])
def test_reference_mode_receptive_field_is_160n_minus_153_to_160n_plus_311(frame):
  encoder = CPCEncoder(dim=16, padding='reference', rngs=nnx.Rngs(0))
  wave = _wave(1, 1280)
  first, last = max(160 * frame - 153, 0), 160 * frame + 311

  conv_grads, lstm_grads = _frame_gradients(encoder, wave)
  nonzero = np.flatnonzero(np.asarray(conv_grads[frame]))
  assert nonzero.min() == first and nonzero.max() == last

  nonzero = np.flatnonzero(np.asarray(lstm_grads[frame]))
  assert nonzero.min() == 0 and nonzero.max() == last  # the LSTM adds the past, no lookahead


@pytest.mark.parametrize('padding,length,frames,batch,dtype', [
    ('reference', 1600, 10, 1, jnp.float32),
    ('reference', 319, 2, 3, jnp.float32),
    ('reference', 1600, 10, 3, jnp.bfloat16),
    ('causal', 1600, 10, 3, jnp.float32),
    ('causal', 319, 1, 1, jnp.bfloat16),
    ('causal', 319, 1, 3, jnp.bfloat16),
])
def test_output_shapes_and_dtypes(padding, length, frames, batch, dtype):
  encoder = CPCEncoder(dim=16, padding=padding, dtype=dtype, rngs=nnx.Rngs(0))
  wave = _wave(batch, length)
  for out in _encode(encoder, wave):
    assert out.shape == (batch, frames, 16)
    assert out.dtype == dtype
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(nnx.state(encoder, nnx.Param)))


def test_input_gain_multiplies_the_waveform_before_the_first_conv_offline_and_streaming():
  lifted = CPCEncoder(dim=16, padding='causal', input_gain=10.0, rngs=nnx.Rngs(0))
  plain = CPCEncoder(dim=16, padding='causal', rngs=nnx.Rngs(0))  # the same weights, gain 1
  wave = 0.05 * _wave(2, 1600)
  offline = np.asarray(lifted(wave))
  np.testing.assert_allclose(offline, plain(10.0 * wave), rtol=1e-5, atol=1e-6)
  assert np.abs(offline - np.asarray(plain(wave))).max() > 1e-2  # the gain changes what it hears
  _, streamed = lifted.stream_step(lifted.init_stream_state(2), wave)
  np.testing.assert_allclose(streamed, offline, atol=1e-5)


def test_conv_stack_parameter_count():
  encoder = CPCEncoder(rngs=nnx.Rngs(0))
  conv_weights = 256 * 1 * 10 + 256 * 256 * 8 + 3 * (256 * 256 * 4)
  conv_biases = 5 * 256
  channel_norms = 5 * (256 + 256)
  assert conv_weights + conv_biases + channel_norms == 1_317_120
  stack = _num_params(encoder.convs) + _num_params(encoder.norms)
  assert stack == conv_weights + conv_biases + channel_norms


def test_lstm_layer_parameter_count_is_torch_minus_the_merged_bias():
  torch_count = 4 * 256 * 256 + 4 * 256 * 256 + 4 * 256 + 4 * 256  # W_ih, W_hh, b_ih, b_hh
  assert torch_count == 526_336
  # b_ih + b_hh are stored summed, as one bias.
  assert _num_params(LSTM(256, 256, rngs=nnx.Rngs(0))) == torch_count - 4 * 256
