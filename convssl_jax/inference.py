"""Streaming inference: the VAP models hop by hop, equal to their offline forward.

`Streamer` runs a whole model live: push audio hops of any size, get each completed frame's
turn-taking outputs (`objective.frame_outputs`). The model streams itself (`init_stream`,
`stream_step`: its front-end's encoder and downsampler steps, models/cpc.py and downsample.py,
and the transformer's ring-buffer key/value caches bounded to its attention context,
models/transformer.py); the Streamer buffers pushes on the host, feeds the mono model its VA (and
the VA history's last 60 s), and runs one jit-compiled fixed-hop step. `StreamingEncoder` streams
the audio front-end alone.
"""

import copy
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from convssl_jax.data import va as va_lib
from convssl_jax.models import transformer
from convssl_jax.objective import VAPObjective, frame_outputs


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

  def fork(self, state) -> '_HopBuffer':
    """A buffer from `state` with nothing pending that shares this one's compiled step."""
    other = copy.copy(self)
    other.state = jax.tree.map(lambda x: jnp.array(x, copy=True), state)
    other._pending = self._pending[:, :0]
    return other

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
  """A model's audio front-end live: pushes of any size in, model frames out; one compiled
  fixed-hop step whatever the sizes.

  Pushes take samples [*batch_shape, n] (e.g. (B, 2) for stereo, one speaker per channel) and
  return the frames completed so far [*batch_shape, k, D]; leftover samples wait on the host for
  the next push.
  """

  def __init__(self, model, frame_hz: float, *, batch_shape: tuple[int, ...] = (1,),
               frames_per_step: int = 1):
    self.batch_shape = tuple(batch_shape)
    rows = int(np.prod(self.batch_shape))
    state = model.init_encoder_stream(rows)  # refuses what cannot stream
    if frame_hz != model.frame_hz:
      raise ValueError(f'frame_hz {frame_hz}: the model runs at {model.frame_hz} Hz')
    graphdef, params = nnx.split(model)

    def step(params, state, samples):
      return nnx.merge(graphdef, params).encoder_stream_step(state, samples)

    self._buffer = _HopBuffer(step, params, state, frames_per_step * model.frame_samples, rows)
    self._empty = np.zeros((rows, 0, model.encoder.lstm.hidden), np.float32)

  def push(self, samples) -> np.ndarray:
    """samples [*batch_shape, n] -> the frames they complete [*batch_shape, k, D] (k may be 0)."""
    samples = np.asarray(samples, np.float32)
    if samples.shape[:-1] != self.batch_shape:
      raise ValueError(f'expected samples [*{self.batch_shape}, n], got {samples.shape}')
    buffer = self._buffer
    out = _join(buffer.run(buffer.hops(samples.reshape(-1, samples.shape[-1]))), self._empty)
    return out.reshape(*self.batch_shape, *out.shape[1:])


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

  def __init__(self, model, objective: VAPObjective, *, batch: int | None = None,
               frames_per_step: int = 1, context: int | None = None,
               history_times=va_lib.HISTORY_TIMES):
    if not hasattr(model, 'stream_step'):
      raise ValueError(f'{type(model).__name__} does not stream; the VAP models do')
    if model.frame_hz != objective.frame_hz:
      raise ValueError(f'the model runs at {model.frame_hz} Hz, the objective at '
                       f'{objective.frame_hz} Hz')
    if context not in (None, model.transformer.context):
      model = nnx.clone(model)  # a copy: the caller's model keeps its own context
      transformer.set_context(model.transformer, context)
    self.context = model.transformer.context  # frames a frame attends to
    self.batch = batch
    rows = batch or 1
    self.frames_per_step = frames_per_step
    # What the model reads besides audio, per step: the mono model's VA (and VA history).
    self.va_inputs = model.va_inputs(rows, frames_per_step)
    self.reads_va = bool(self.va_inputs)
    self._new_history = lambda: (va_lib.VAHistory(objective.frame_hz, history_times, rows)
                                 if len(self.va_inputs) > 1 else None)
    self._history = self._new_history()
    graphdef, params = nnx.split(model)

    def step(params, state, samples, *va):
      model = nnx.merge(graphdef, params)
      model.eval()
      state, out = model.stream_step(state, samples.reshape(rows, 2, -1), *va)
      return state, frame_outputs(objective, out, va[0] if va else None)

    # The pure step and what it reads, for `export`: step(params, state, samples [B, 2, hop],
    # *va_inputs) -> (state, outputs).
    self.step_fn, self.params = step, params
    self.hop = frames_per_step * model.frame_samples
    # The state first: it refuses, with the reason, an encoder that cannot stream.
    self.initial_state = model.init_stream(rows, frames_per_step)
    self._buffer = _HopBuffer(step, params, self.initial_state, self.hop, 2 * rows)
    _, shapes = jax.eval_shape(step, params, self.initial_state,
                               jax.ShapeDtypeStruct((rows, 2, self.hop), jnp.float32),
                               *self.va_inputs)
    self._empty = {k: np.zeros((rows, 0, *v.shape[2:]), v.dtype) for k, v in shapes.items()}
    self._va = np.zeros((rows, 0, 2), np.float32)  # VA frames not yet heard

  def fork(self) -> 'Streamer':
    """A new stream from the start on the same model, sharing this one's compiled step: one more
    client's stream (run.py --mode=serve) without compiling again. Streams are independent: each
    may be pushed from its own thread."""
    other = copy.copy(self)
    other._buffer = self._buffer.fork(self.initial_state)
    other._va = self._va[:, :0]
    other._history = self._new_history()
    return other

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
    if self.reads_va:
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
      raise ValueError('this model reads audio only: push(samples) without va')
    outputs = _join(self._buffer.run(hops, *extra), self._empty)
    return outputs if self.batch is not None else {k: v[0] for k, v in outputs.items()}


def streamer_for(model, objective: VAPObjective, config, context_s: float | None = None
                 ) -> Streamer:
  """The Streamer of `model` with `context_s` seconds of attention: by default the model's own
  context (`transformer.context`), else `config.data.window_s`, the longest it was trained on."""
  frame_hz = objective.frame_hz
  context = (int(context_s * frame_hz) if context_s
             else config.model.transformer.context or int(config.data.window_s * frame_hz))
  return Streamer(model, objective, context=context)
