"""The Libri-light 60k CPC_audio encoder: 5 conv blocks and an LSTM, 16 kHz waveform -> 100 Hz.

Two padding modes for the conv stack:

* `'reference'`: CPC_audio's symmetric paddings (3, 2, 1, 1, 1). Needed for parity with CPC_audio
  and converted weights, but 100-Hz frame n sees samples [160n - 153, 160n + 311]: 311 samples
  (19.4 ms) of lookahead past the frame's start, 152 past its end, so a streaming run must delay
  one frame.
* `'causal'`: left-only paddings k - s = (5, 4, 2, 2, 2). Frame t covers samples [160t, 160t + 159]
  and sees nothing at or after 160(t + 1): no lookahead, exact in real time. Pretrained CPC weights
  then see their input shifted and no longer reproduce the PyTorch numbers.

The LSTM and ChannelNorm add no lookahead in either mode.

Streaming (`init_stream_state`, `stream_step`, causal padding only): every conv layer keeps the
last k - s inputs it has seen (zeros at the start, as the offline left padding) and the LSTM its
(h, c), so hop after hop gives exactly the offline frames.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from convssl_jax.models.layers import (conv1d, stream_context, torch_uniform_init, valid_conv,
                                       with_context)

KERNELS = (10, 8, 4, 4, 4)
STRIDES = (5, 4, 2, 2, 2)
REFERENCE_PADDINGS = (3, 2, 1, 1, 1)
CHANNEL_NORM_EPS = 1e-5


def _paddings(padding: str) -> list[tuple[int, int]]:
  """Per-layer (left, right) conv paddings of a padding mode."""
  if padding == 'reference':
    return [(p, p) for p in REFERENCE_PADDINGS]
  if padding == 'causal':
    return [(k - s, 0) for k, s in zip(KERNELS, STRIDES)]
  raise ValueError(f"Unknown CPC padding mode {padding!r}; expected 'reference' or 'causal'.")


def num_frames(num_samples: int, padding: str = 'reference') -> int:
  """Number of 100-Hz frames the encoder gives for `num_samples` waveform samples."""
  n = num_samples
  for (left, right), k, s in zip(_paddings(padding), KERNELS, STRIDES):
    n = max((n + left + right - k) // s + 1, 0)
  return n


class ChannelNorm(nnx.Module):
  """CPC's per-time-step normalisation over channels, with the unbiased (ddof=1) variance.

  Not a LayerNorm: CPC divides by C - 1. Statistics are computed in float32 even for bf16 input.
  """

  def __init__(self, num_features: int, *, epsilon: float = CHANNEL_NORM_EPS, dtype=None,
               param_dtype=jnp.float32):
    self.epsilon = epsilon
    self.dtype = dtype
    self.scale = nnx.Param(jnp.ones((num_features,), param_dtype))
    self.bias = nnx.Param(jnp.zeros((num_features,), param_dtype))

  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [B, T, C] -> [B, T, C] in the compute dtype (x's dtype if none is set)."""
    dtype = self.dtype or x.dtype
    x32 = x.astype(jnp.float32)
    mean = x32.mean(-1, keepdims=True)
    var = x32.var(-1, ddof=1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + self.epsilon)
    y = y * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)
    return y.astype(dtype)


class LSTMLayer(nnx.Module):
  """One torch.nn.LSTM layer (gates i, f, g, o) with the input projection hoisted out of the scan.

  `input_proj` holds W_ih and the summed biases b_ih + b_hh; `hidden_proj` holds W_hh.
  """

  def __init__(self, in_features: int, hidden: int, *, unroll: int = 16, dtype=None,
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    init = torch_uniform_init(hidden)  # torch.nn.LSTM: U(+-1/sqrt(H)) for every weight and bias
    self.unroll = unroll
    self.input_proj = nnx.Linear(in_features, 4 * hidden, kernel_init=init, bias_init=init,
                                 dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.hidden_proj = nnx.Linear(hidden, 4 * hidden, use_bias=False, kernel_init=init,
                                  dtype=dtype, param_dtype=param_dtype, rngs=rngs)

  def __call__(self, x: jax.Array, carry: tuple[jax.Array, jax.Array]
               ) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    """x: [B, T, in], carry (h, c) each [B, H] float32 -> (y [B, T, H] float32, final (h, c))."""
    gates_x = jnp.swapaxes(self.input_proj(x), 0, 1)  # [T, B, 4H], one matmul for all steps

    def step(carry, gx):
      h, c = carry
      gates = gx.astype(jnp.float32) + self.hidden_proj(h).astype(jnp.float32)
      i, f, g, o = jnp.split(gates, 4, axis=-1)
      c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
      h = jax.nn.sigmoid(o) * jnp.tanh(c)
      return (h, c), h

    carry, ys = jax.lax.scan(step, carry, gates_x, unroll=self.unroll)
    return jnp.swapaxes(ys, 0, 1), carry


class LSTM(nnx.Module):
  """A batch-first multi-layer LSTM equal to torch.nn.LSTM (zero initial state by default).

  The recurrent state stays float32 under a bf16 compute dtype; only the matmuls run in `dtype`.
  """

  def __init__(self, in_features: int, hidden: int, num_layers: int = 1, *, unroll: int = 16,
               dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
    self.hidden = hidden
    self.dtype = dtype
    self.layers = nnx.List([
        LSTMLayer(in_features if i == 0 else hidden, hidden, unroll=unroll, dtype=dtype,
                  param_dtype=param_dtype, rngs=rngs)
        for i in range(num_layers)])

  def initial_carry(self, batch_size: int) -> list[tuple[jax.Array, jax.Array]]:
    """Zero (h, c) per layer, as torch.nn.LSTM starts."""
    zeros = jnp.zeros((batch_size, self.hidden), jnp.float32)
    return [(zeros, zeros) for _ in self.layers]

  def apply_with_carry(self, x: jax.Array, carry: list[tuple[jax.Array, jax.Array]] | None
                       ) -> tuple[jax.Array, list[tuple[jax.Array, jax.Array]]]:
    """Runs x [B, T, in] from the per-layer (h, c) `carry` (zeros if None); returns (y, new carry).

    Feeding the returned carry to the next call continues the recurrence, for hop-by-hop streaming.
    """
    if carry is None:
      carry = self.initial_carry(x.shape[0])
    new_carry = []
    for layer, layer_carry in zip(self.layers, carry):
      x, layer_carry = layer(x, layer_carry)
      new_carry.append(layer_carry)
    return x.astype(self.dtype or x.dtype), new_carry

  def __call__(self, x: jax.Array, carry: list[tuple[jax.Array, jax.Array]] | None = None
               ) -> jax.Array:
    """x: [B, T, in] -> y [B, T, H]."""
    return self.apply_with_carry(x, carry)[0]


class CPCEncoder(nnx.Module):
  """CPC's gEncoder (conv -> ChannelNorm -> ReLU, x5) and gAR (LSTM): 16 kHz waveform -> 100 Hz.

  `convs[i]` / `norms[i]` are CPC's `gEncoder.conv{i}` / `gEncoder.batchNorm{i}`; `lstm` is `gAR`.
  `input_gain` multiplies the waveform before the first conv (1: CPC_audio's). A conv initialised
  for unit-scale input sees speech at an RMS of ~0.05 as a few per cent of its bias, and silence
  as nothing; a from-scratch encoder trains steadily only once the input is lifted
  (docs/default_run.md).
  """

  def __init__(self, *, dim: int = 256, lstm_layers: int = 1, padding: str = 'reference',
               input_gain: float = 1.0, unroll: int = 16, dtype=None, param_dtype=jnp.float32,
               rngs: nnx.Rngs):
    paddings = _paddings(padding)
    self.padding = padding
    self.input_gain = float(input_gain)
    self.convs = nnx.List([
        conv1d(1 if i == 0 else dim, dim, k, s, [pad], dtype=dtype, param_dtype=param_dtype,
               rngs=rngs)
        for i, (k, s, pad) in enumerate(zip(KERNELS, STRIDES, paddings))])
    self.norms = nnx.List([ChannelNorm(dim, dtype=dtype, param_dtype=param_dtype)
                           for _ in KERNELS])
    self.lstm = LSTM(dim, dim, lstm_layers, unroll=unroll, dtype=dtype, param_dtype=param_dtype,
                     rngs=rngs)

  def conv_features(self, wave: jax.Array) -> jax.Array:
    """wave [B, S] -> conv stack output [B, T, dim] (post-ReLU; CPC's "z", output layer 0)."""
    x = self.conv_input(wave)
    for conv, norm in zip(self.convs, self.norms):
      x = jax.nn.relu(norm(conv(x)))
    return x

  def conv_input(self, wave: jax.Array) -> jax.Array:
    """wave [B, S] -> the first conv's input [B, S, 1], times `input_gain`."""
    return (wave * jnp.asarray(self.input_gain, wave.dtype))[..., None]

  def __call__(self, wave: jax.Array) -> jax.Array:
    """wave [B, S] -> LSTM output [B, T, dim] at 100 Hz (CPC's "c", output layer 1)."""
    return self.lstm(self.conv_features(wave))

  def init_stream_state(self, batch: int) -> tuple[tuple[jax.Array, ...], tuple]:
    """(each conv layer's zero context [B, k - s, C_in], the LSTM's zero (h, c) per layer): the
    state before any audio. Only the causal padding streams: 'reference' looks ahead."""
    if self.padding != 'causal':
      raise ValueError(f"streaming needs the encoder's 'causal' padding, got {self.padding!r} "
                       '(it looks ahead, so hop-by-hop frames would differ from offline ones)')
    conv_context = tuple(
        jnp.zeros((batch, stream_context(conv), conv.in_features),
                  jnp.float32 if i == 0 else self.norms[i - 1].dtype or jnp.float32)
        for i, conv in enumerate(self.convs))
    return conv_context, tuple(self.lstm.initial_carry(batch))

  def stream_step(self, state, wave: jax.Array) -> tuple[tuple, jax.Array]:
    """One hop wave [B, 160 n] -> (new state, the next n LSTM frames [B, n, dim])."""
    conv_context, lstm_carry = state
    x, contexts = self.conv_input(wave), []
    for conv, norm, context in zip(self.convs, self.norms, conv_context):
      x, context = with_context(context, x)
      x = jax.nn.relu(norm(valid_conv(conv, x)))
      contexts.append(context)
    y, lstm_carry = self.lstm.apply_with_carry(x, list(lstm_carry))
    return (tuple(contexts), tuple(lstm_carry)), y
