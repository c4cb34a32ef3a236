"""Streaming inference: the VAP models hop by hop, equal to their offline forward.

`Streamer` runs a whole model live: push audio hops of any size, get each completed frame's
turn-taking outputs (`frame_outputs`). Its state has a fixed size: the encoder's (below), the
transformer's ring-buffer key/value caches bounded to its attention context
(`transformer.gpt_step` / `stereo_step`) and, for the mono model, the VA history's last 60 s.

The encoder: every conv layer keeps the last k - s inputs it has seen (zeros at the start, as the offline
left padding), the LSTM keeps its (h, c), the downsampler keeps its last k - 1 100-Hz frames. A
hop that is a multiple of the model frame's samples (160 * downsampler stride) then gives whole
model frames, each equal to the offline `encode` frame. `StreamingEncoder` buffers pushes of any
size on the host and runs one jit-compiled fixed-hop step.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from convssl_jax.data import va as va_lib
from convssl_jax.data.pipeline import SAMPLE_RATE
from convssl_jax.models import cpc, downsample as downsample_lib, transformer, vap
from convssl_jax.models.layers import gelu
from convssl_jax.objective import VAPObjective

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


def frame_outputs(objective: VAPObjective, out: dict[str, jax.Array],
                  va: jax.Array | None = None, frames: int | None = None) -> dict[str, jax.Array]:
  """A model's outputs [B, N, ...] -> per-frame curves [B, N, 2]: 'p_bc' (not for the comparative
  head), 'p_now' and 'p_future' (discrete head), 'vad' (stereo), and with the current VA
  [B, N, 2] the next-speaker probability 'p'. `frames` keeps only the first frames of `out`."""
  out = {k: out[k][:, :frames] for k in ('logits', 'vad') if k in out}
  probs = objective.probs(out['logits'])
  curves = {}
  if va is not None:
    curves['p'] = objective.next_speaker_probs(probs, va)
  if objective.head != 'comparative':
    curves['p_bc'] = objective.backchannel_probs(probs)
  if objective.head == 'discrete':
    curves.update(p_now=objective.p_now(probs), p_future=objective.p_future(probs))
  if 'vad' in out:
    curves['vad'] = jax.nn.sigmoid(out['vad'].astype(jnp.float32))
  return curves


class _HopBuffer:
  """Host side of a stream: pushes of any size in, one jit-compiled step per fixed hop.

  `step(params, state, samples [rows, hop], *extra)` returns (state, outputs); outputs of the hops
  a push completes are joined along their frame axis (1); leftover samples wait for the next push.
  """

  def __init__(self, step, params, state, hop: int, rows: int):
    # The parameters go in as a flat list: flattening their nnx.State at every push costs more
    # host time than a small model's whole step.
    self._params, treedef = jax.tree.flatten(params)
    self._step = jax.jit(lambda leaves, *args: step(treedef.unflatten(leaves), *args),
                         donate_argnums=1)  # the state is updated in place
    self.state = jax.tree.map(lambda x: jnp.array(x, copy=True), state)  # no shared buffers
    self.hop = hop
    self._pending = np.zeros((rows, 0), np.float32)

  def hops(self, samples: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """Adds samples [rows, n]; (index, hop) for each whole hop now pending."""
    self._pending = np.concatenate([self._pending, samples], axis=1)
    return [(i, self._pending[:, i * self.hop:(i + 1) * self.hop])
            for i in range(self._pending.shape[1] // self.hop)]

  @property
  def compilations(self) -> int:
    """How many times the step has been compiled (1 after the first hop, whatever came since)."""
    return self._step._cache_size()

  def run(self, hops, *extra) -> list:
    """Steps over `hops` (from `hops()`, each with its slice of `extra`) and drops them."""
    outputs = []
    for i, samples in hops:
      self.state, out = self._step(self._params, self.state, samples, *(e(i) for e in extra))
      outputs.append(out)
    self._pending = self._pending[:, len(hops) * self.hop:]
    return outputs


def _join(outputs: list, empty) -> Any:
  """Step outputs (pytrees of [rows, n, ...]) joined along frames, on the host."""
  if not outputs:
    return empty
  return jax.tree.map(lambda *xs: np.concatenate([np.asarray(x) for x in xs], axis=1), *outputs)


class _BufferedStream:
  """A stream stepped by a `_HopBuffer` (`self._buffer`): its current state (the encoder's
  `EncoderState`, the Streamer's `StreamState`) and how often its step was compiled."""

  _buffer: _HopBuffer

  @property
  def state(self):
    return self._buffer.state

  @property
  def compilations(self) -> int:
    return self._buffer.compilations


class StreamingEncoder(_BufferedStream):
  """Pushes of any size in, model frames out; one compiled fixed-hop step whatever the sizes.

  `model` is a VAP model (its `encoder` and `downsample`) or an (encoder, downsample) pair. Pushes
  take samples [*batch_shape, n] (e.g. (B, 2) for stereo, one speaker per channel) and return the
  frames completed so far [*batch_shape, k, D]; leftover samples wait on the host for the next push.
  """

  def __init__(self, model, frame_hz: float, *, batch_shape: tuple[int, ...] = (1,),
               frames_per_step: int = 1):
    encoder, downsample = (model if isinstance(model, tuple)
                           else (model.encoder, model.downsample))
    self.batch_shape = tuple(batch_shape)
    rows = int(np.prod(self.batch_shape))
    state = init_encoder_state(encoder, downsample, rows)  # refuses what cannot stream
    _check_frame_rate(downsample, frame_hz)
    graphdef, params = nnx.split((encoder, downsample))

    def step(params, state, samples):
      return encode_step(*nnx.merge(graphdef, params), state, samples)

    self._buffer = _HopBuffer(step, params, state, frames_per_step * frame_samples(downsample),
                              rows)
    self._empty = np.zeros((rows, 0, encoder.lstm.hidden), np.float32)

  def push(self, samples) -> np.ndarray:
    """samples [*batch_shape, n] -> the frames they complete [*batch_shape, k, D] (k may be 0)."""
    samples = np.asarray(samples, np.float32)
    if samples.shape[:-1] != self.batch_shape:
      raise ValueError(f'expected samples [*{self.batch_shape}, n], got {samples.shape}')
    buffer = self._buffer
    out = _join(buffer.run(buffer.hops(samples.reshape(-1, samples.shape[-1]))), self._empty)
    return out.reshape(*self.batch_shape, *out.shape[1:])


def _check_frame_rate(downsample, frame_hz: float) -> None:
  expected = downsample_lib.downsample_for(frame_hz)
  got = None if downsample is None else (downsample.conv.kernel_size[0],
                                         downsample.conv.strides[0])
  if got != expected:
    raise ValueError(f'frame_hz {frame_hz} needs downsampler (kernel, stride) {expected}, the '
                     f'model has {got}')


class StreamState(NamedTuple):
  """A model stream's state: fixed shapes, whatever has been pushed."""
  encoder: EncoderState | None  # None for a model without audio (VA only)
  transformer: transformer.GPTCache | transformer.StereoCache


def init_stream_state(model: vap.MonoVAP | vap.StereoVAP, batch: int,
                      step_frames: int = 1) -> StreamState:
  """The state before any audio, for `batch` conversations and steps of `step_frames` frames."""
  if isinstance(model, vap.StereoVAP):
    return StreamState(init_encoder_state(model.encoder, model.downsample, 2 * batch),
                       transformer.init_stereo_cache(model.transformer, batch, step_frames))
  encoder = (None if model.encoder is None
             else init_encoder_state(model.encoder, model.downsample, batch))
  return StreamState(encoder, transformer.init_cache(model.transformer, batch, step_frames))


def stream_step(model: vap.MonoVAP | vap.StereoVAP, objective: VAPObjective, state: StreamState,
                samples: jax.Array, va: jax.Array | None = None,
                va_history: jax.Array | None = None) -> tuple[StreamState, dict[str, jax.Array]]:
  """One hop: the model (in eval mode) on samples [B, 2, hop] (one speaker per channel; the mono
  model hears their mean, as offline) -> (new state, `frame_outputs` [B, n, 2] of its n frames).

  The mono model also reads the hop's frames of VA [B, n, 2] and VA history [B, n, bins] (and
  its outputs then include 'p'); the stereo model reads audio only.
  """
  batch = samples.shape[0]
  if isinstance(model, vap.StereoVAP):
    encoder, z = encode_step(model.encoder, model.downsample, state.encoder, vap.both(samples))
    cache, streams = transformer.stereo_step(model.transformer, state.transformer, z[:batch],
                                             z[batch:])
    out = model.head_outputs(*streams)
  else:
    encoder, z = state.encoder, None
    if model.encoder is not None:
      encoder, z = encode_step(model.encoder, model.downsample, encoder, samples.mean(axis=1))
    cache, x = transformer.gpt_step(model.transformer, state.transformer,
                                    model.frame_inputs(z, va, va_history))
    out = model.head_outputs(x)
  return StreamState(encoder, cache), frame_outputs(objective, out, va)


class Streamer(_BufferedStream):
  """A trained VAP model live: push stereo audio hops of any size, get per-frame outputs.

  `push(samples)` takes samples [2, n] at 16 kHz (channel 0 = speaker A; [B, 2, n] with `batch`)
  and returns the outputs of the frames it completes: {'p_now', 'p_future', 'p_bc', 'vad', ...}
  each [k, 2] ([B, k, 2]); k may be 0, leftover samples wait for the next push. The mono model
  also needs each frame's current voice activity: `push(samples, va=[k', 2])`; VA frames and
  audio may arrive unevenly, a frame is computed once both are there.

  One jit-compiled step of `frames_per_step` frames serves every push (no recompilation after the
  first); state and memory stay constant however long the stream. The attention context must be
  bounded: the model's own (`transformer.context`) or `context` frames here (a model trained on
  20 s windows never attended further back than that). With the encoder's 'causal' padding the
  outputs equal the offline model's on the same audio with the same context.
  """

  def __init__(self, model: vap.MonoVAP | vap.StereoVAP, objective: VAPObjective, *,
               batch: int | None = None, frames_per_step: int = 1, context: int | None = None,
               history_times=va_lib.HISTORY_TIMES):
    if context not in (None, model.transformer.context):
      model = nnx.clone(model)  # a copy: the caller's model keeps its own context
      transformer.set_context(model.transformer, context)
    self.mono = isinstance(model, vap.MonoVAP)
    self.context = model.transformer.context  # frames a frame attends to
    self.batch = batch
    rows = batch or 1
    self.frames_per_step = frames_per_step
    graphdef, params = nnx.split(model)
    history = (model.va_condition.history_proj is not None) if self.mono else False
    self._history = va_lib.VAHistory(objective.frame_hz, history_times, rows) if history else None

    def step(params, state, samples, *va):
      model = nnx.merge(graphdef, params)
      model.eval()
      return stream_step(model, objective, state, samples.reshape(rows, 2, -1), *va)

    # The pure step and what it reads, for `export`: step(params, state, samples [B, 2, hop],
    # *va_inputs) -> (state, outputs); the mono model's va_inputs are VA [B, n, 2] (and history).
    self.step_fn, self.params = step, params
    # Samples per step: the CPC encoder's frames at frame_hz (checked below) are as long.
    self.hop = frames_per_step * int(SAMPLE_RATE // objective.frame_hz)
    # The state first: it refuses, with the reason, an encoder that cannot stream.
    self.initial_state = init_stream_state(model, rows, frames_per_step)
    if model.encoder is not None:
      _check_frame_rate(model.downsample, objective.frame_hz)
    self.va_inputs = ()
    if self.mono:
      self.va_inputs = (jax.ShapeDtypeStruct((rows, frames_per_step, 2), jnp.float32),)
      if self._history:
        self.va_inputs += (jax.ShapeDtypeStruct((rows, frames_per_step, len(history_times) + 1),
                                                jnp.float32),)
    self._buffer = _HopBuffer(step, params, self.initial_state, self.hop, 2 * rows)
    _, shapes = jax.eval_shape(step, params, self.initial_state,
                               jax.ShapeDtypeStruct((rows, 2, self.hop), jnp.float32),
                               *self.va_inputs)
    self._empty = {k: np.zeros((rows, 0, *v.shape[2:]), v.dtype) for k, v in shapes.items()}
    self._va = np.zeros((rows, 0, 2), np.float32)  # mono: VA frames not yet heard

  def push(self, samples, va=None) -> dict[str, np.ndarray]:
    """samples [(B,) 2, n] (and for the mono model va [(B,) k, 2]) -> outputs [(B,) frames, 2]."""
    rows = self.batch or 1
    samples = np.asarray(samples, np.float32)
    want = (2,) if self.batch is None else (self.batch, 2)
    if samples.shape[:-1] != want:
      raise ValueError(f'expected samples [{", ".join(map(str, want))}, n] (one speaker per '
                       f'channel), got {samples.shape}')
    hops = self._buffer.hops(samples.reshape(2 * rows, -1))
    extra = ()
    if self.mono:
      if va is not None:
        va = np.asarray(va, np.float32)
        if va.shape[:-2] != want[:-1] or va.shape[-1] != 2:
          raise ValueError(f'expected va [{", ".join(map(str, want[:-1] + ("k",)))}, 2], got '
                           f'{va.shape}')
        self._va = np.concatenate([self._va, va.reshape(rows, -1, 2)], axis=1)
      n = self.frames_per_step
      hops = hops[:self._va.shape[1] // n]  # a frame needs both its audio and its VA
      frames, self._va = self._va[:, :len(hops) * n], self._va[:, len(hops) * n:]
      extra = [lambda i: frames[:, i * n:(i + 1) * n]]
      if self._history is not None:
        history = self._history(frames)
        extra.append(lambda i: history[:, i * n:(i + 1) * n])
    elif va is not None:
      raise ValueError('the stereo model reads audio only: push(samples) without va')
    outputs = _join(self._buffer.run(hops, *extra), self._empty)
    return outputs if self.batch is not None else {k: v[0] for k, v in outputs.items()}
