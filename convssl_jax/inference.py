"""Streaming frame encoder: the causal CPC encoder and downsampler, hop by hop, equal to offline.

Every conv layer keeps the last k - s inputs it has seen (zeros at the start, as the offline
left padding), the LSTM keeps its (h, c), the downsampler keeps its last k - 1 100-Hz frames. A
hop that is a multiple of the model frame's samples (160 * downsampler stride) then gives whole
model frames, each equal to the offline `encode` frame. `StreamingEncoder` buffers pushes of any
size on the host and runs one jit-compiled fixed-hop step.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from convssl_jax.models import cpc, downsample as downsample_lib
from convssl_jax.models.layers import gelu

SAMPLES_PER_100HZ_FRAME = int(np.prod(cpc.STRIDES))  # 160 at 16 kHz


class EncoderState(NamedTuple):
  """What a stream carries between hops; the same shapes at every hop."""
  conv_context: tuple[jax.Array, ...]  # per conv layer, its last k - s inputs [B, k - s, C_in]
  lstm_carry: tuple[tuple[jax.Array, jax.Array], ...]  # per LSTM layer (h, c), each [B, H]
  down_context: jax.Array | None  # the downsampler's last k - 1 input frames [B, k - 1, D]


def frame_samples(downsample: downsample_lib.CausalDownsample | None) -> int:
  """Waveform samples per model frame: 160 at 100 Hz, 160 * stride behind a downsampler."""
  return SAMPLES_PER_100HZ_FRAME * (1 if downsample is None else downsample.conv.strides[0])


def _context_len(conv: nnx.Conv) -> int:
  """Inputs a causal strided conv needs from before a hop: kernel - stride."""
  return conv.kernel_size[0] - conv.strides[0]


def init_encoder_state(encoder: cpc.CPCEncoder,
                       downsample: downsample_lib.CausalDownsample | None,
                       batch: int) -> EncoderState:
  """The state before any audio: zero contexts (the offline left padding) and a zero LSTM carry."""
  if not isinstance(encoder, cpc.CPCEncoder):
    raise ValueError(f'streaming needs the causal CPC encoder, not {type(encoder).__name__} '
                     '(HuBERT-family encoders attend over the whole input)')
  if encoder.padding != 'causal':
    raise ValueError(f"streaming needs the encoder's 'causal' padding, got {encoder.padding!r} "
                     '(it looks ahead, so hop-by-hop frames would differ from offline ones)')
  conv_context = tuple(
      jnp.zeros((batch, _context_len(conv), conv.in_features),
                jnp.float32 if i == 0 else encoder.norms[i - 1].dtype or jnp.float32)
      for i, conv in enumerate(encoder.convs))
  down_context = None if downsample is None else jnp.zeros(
      (batch, downsample.conv.kernel_size[0] - 1, downsample.conv.in_features),
      downsample.norm.dtype or jnp.float32)
  return EncoderState(conv_context, tuple(encoder.lstm.initial_carry(batch)), down_context)


def _valid_conv(conv: nnx.Conv, x: jax.Array) -> jax.Array:
  """`conv`'s weights over x [B, T, C_in] with no padding (the context is already in front)."""
  dtype = conv.dtype or jnp.result_type(x, conv.kernel[...])
  y = jax.lax.conv_general_dilated(
      x.astype(dtype), conv.kernel[...].astype(dtype), conv.strides, 'VALID',
      dimension_numbers=('NWC', 'WIO', 'NWC'), precision=conv.precision)
  return y + conv.bias[...].astype(dtype)


def _with_context(context: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(context then x along time, the new context: the same number of the latest steps)."""
  full = jnp.concatenate([context, x.astype(context.dtype)], axis=1)
  return full, full[:, full.shape[1] - context.shape[1]:]


def encode_step(encoder: cpc.CPCEncoder, downsample: downsample_lib.CausalDownsample | None,
                state: EncoderState, samples: jax.Array) -> tuple[EncoderState, jax.Array]:
  """One hop: samples [B, hop] (hop a multiple of `frame_samples`) -> (new state, [B, n, D]).

  n = hop / frame_samples; the frames continue exactly the offline `encode` of the whole stream.
  """
  hop = samples.shape[1]
  if hop % frame_samples(downsample):
    raise ValueError(f'hop {hop} is not a multiple of the model frame ({frame_samples(downsample)} '
                     'samples)')
  x = samples[..., None]
  conv_context = []
  for conv, norm, context in zip(encoder.convs, encoder.norms, state.conv_context):
    x, context = _with_context(context, x)
    x = jax.nn.relu(norm(_valid_conv(conv, x)))
    conv_context.append(context)
  z, lstm_carry = encoder.lstm.apply_with_carry(x, list(state.lstm_carry))
  down_context = None
  if downsample is not None:
    z, down_context = _with_context(state.down_context, z)
    z = gelu(downsample.norm(_valid_conv(downsample.conv, z)))
  return EncoderState(tuple(conv_context), tuple(lstm_carry), down_context), z


class StreamingEncoder:
  """Pushes of any size in, model frames out; one compiled fixed-hop step whatever the sizes.

  `model` is a VAP model (its `encoder` and `downsample`) or an (encoder, downsample) pair. Pushes
  take samples [*batch_shape, n] (e.g. (B, 2) for stereo, one speaker per channel) and return the
  frames completed so far [*batch_shape, k, D]; leftover samples wait on the host for the next push.
  """

  def __init__(self, model, frame_hz: float, *, batch_shape: tuple[int, ...] = (1,),
               frames_per_step: int = 1):
    encoder, downsample = (model if isinstance(model, tuple)
                           else (model.encoder, model.downsample))
    batch = int(np.prod(batch_shape))
    self.state = init_encoder_state(encoder, downsample, batch)
    expected = downsample_lib.downsample_for(frame_hz)
    got = None if downsample is None else (downsample.conv.kernel_size[0],
                                           downsample.conv.strides[0])
    if got != expected:
      raise ValueError(f'frame_hz {frame_hz} needs downsampler (kernel, stride) {expected}, the '
                       f'model has {got}')
    self.batch_shape = tuple(batch_shape)
    self.hop = frames_per_step * frame_samples(downsample)
    graphdef, self._params = nnx.split((encoder, downsample))

    def step(params, state, samples):
      return encode_step(*nnx.merge(graphdef, params), state, samples)

    self.step = jax.jit(step)
    self._pending = np.zeros((batch, 0), np.float32)
    self._dim = encoder.lstm.hidden

  def push(self, samples) -> np.ndarray:
    """samples [*batch_shape, n] -> the frames they complete [*batch_shape, k, D] (k may be 0)."""
    samples = np.asarray(samples, np.float32)
    if samples.shape[:-1] != self.batch_shape:
      raise ValueError(f'expected samples [*{self.batch_shape}, n], got {samples.shape}')
    pending = np.concatenate([self._pending, samples.reshape(-1, samples.shape[-1])], axis=1)
    num_hops = pending.shape[1] // self.hop
    frames = []
    for i in range(num_hops):
      self.state, out = self.step(self._params, self.state,
                                  pending[:, i * self.hop:(i + 1) * self.hop])
      frames.append(out)
    self._pending = pending[:, num_hops * self.hop:]
    out = (np.concatenate([np.asarray(f) for f in frames], axis=1) if frames
           else np.zeros((pending.shape[0], 0, self._dim), np.float32))
    return out.reshape(*self.batch_shape, *out.shape[1:])
