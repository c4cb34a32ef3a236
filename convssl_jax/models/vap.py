"""The VAP models: conv_ssl's mono model (2022) and VoiceActivityProjection's stereo model (2023).

Mono: the mono mix -> audio front-end -> + VA conditioning -> causal GPT -> VAP head.
Stereo: the audio front-end per speaker (shared weights) -> the stereo body: per-speaker GPT ->
cross-attention layers -> combinator -> VAP head, and a VAD head on each speaker's stream.
Both can carry the F0 head. A mono model with `encoder.name='none'` hears no audio: it is the
VA-only baseline (VA and its history only). The front-ends (CPC, or a converted HuBERT / wav2vec2 /
WavLM, models/frontends.py) are frozen or trained through `factory.trainable_filter`.

Every model class has one interface, which the trainer, evaluation, prediction and streaming use
without asking which model it is:
  `inputs`                    the batch keys its forward may read ('audio', 'features',
                              'units', 'va', 'va_history'); its losses read the targets 'va'
                              (with the label horizon), 'f0' and 'speakers' [B, 2] (1 for a
                              channel that holds a speaker, 0 for a monologue's pretend
                              partner; absent: every channel holds one);
  `mono_mix`                  whether it hears both channels mixed (the input pipeline mixes);
  `forward(batch, frames)`    its outputs for a batch of windows of `frames` frames (the VA holds
                              the label horizon after them);
  `losses(out, batch, objective, frames)`
                              per-example loss terms {name: [B]} and metrics {name: [B]}, or
                              `Masked` values where some examples lack one (a monologue's window
                              has no VAP term); the trainer averages each over the examples
                              that have it and weighs the terms by `train.<name>_loss_weight`;
and the live models (`MonoVAP`, `StereoVAP`) `init_stream` / `stream_step` (inference.Streamer).
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from convssl_jax.models import frontends, heads, layers, transformer
from convssl_jax.objective import VAPObjective

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def compute_dtype(name: str):
  if name not in DTYPES:
    raise ValueError(f'model.dtype must be one of {sorted(DTYPES)}, got {name!r}')
  return DTYPES[name]


def n_bins(cfg) -> int:
  return len(cfg.vap.bin_times)


def both(x: jax.Array | None) -> jax.Array | None:
  """[B, 2, ...] (channel 0 = speaker A) -> [2B, ...]: both speakers' channels as one batch
  (`layers.speakers_as_batch`), so one encoder call serves both."""
  return None if x is None else x.reshape(-1, *x.shape[2:])


def per_example(f, *xs):
  """f over each example of the batch (a leading batch of 1 each): [B] per-example values."""
  return jax.vmap(lambda *x: f(*jax.tree.map(lambda a: a[None], x)))(*xs)


class Masked(NamedTuple):
  """A per-example loss term or metric `value` [B] that only the examples where `present` [B]
  (bool) have: the trainer averages it over those."""
  value: jax.Array
  present: jax.Array


def speakers(batch) -> jax.Array:
  """[B, 2]: 1 for a channel that holds a speaker, 0 for a monologue's pretend partner (the
  batch's 'speakers'; without it every channel holds one)."""
  if 'speakers' in batch:
    return batch['speakers'].astype(jnp.float32)
  return jnp.ones((batch['va'].shape[0], 2), jnp.float32)


def is_dialog(batch) -> jax.Array:
  """[B] bool: the windows of dialogs. A monologue's window has no turn-taking to learn: the
  original design gives it a partner who is always quiet and keeps its duration information out
  of the turn-taking terms, so that the model is not biased towards holds."""
  return jnp.all(speakers(batch) > 0, axis=-1)


def vap_terms(out, batch, objective: VAPObjective, frames: int):
  """({'vap'}, {'frame_accuracy'} for the discrete head) of the VAP logits, per example, for
  the dialogs' windows only (`is_dialog`)."""
  va = batch['va']
  labels = objective.labels(va)
  logits = out['logits'][:, :frames]
  dialog = is_dialog(batch)
  metrics = {}
  if objective.head == 'discrete':
    metrics['frame_accuracy'] = Masked(
        (jnp.argmax(logits, axis=-1) == labels).mean(axis=-1), dialog)
  return {'vap': Masked(per_example(objective.loss, logits, labels), dialog)}, metrics


def f0_terms(out, batch, frames: int) -> dict[str, jax.Array]:
  """{'f0': [B]} with the F0 head, else {}."""
  if 'f0' not in out:
    return {}
  return {'f0': per_example(heads.f0_loss, jax.tree.map(lambda x: x[:, :frames], out['f0']),
                            batch['f0'][:, :frames])}


class StreamState(NamedTuple):
  """A live model's state: fixed shapes, whatever has been pushed."""
  encoder: Any  # the audio front-end's (None for a model without audio)
  transformer: transformer.GPTCache | transformer.StereoCache


class StereoBody(nnx.Module):
  """Both speakers' frames -> the stereo transformer -> VAP, VAD (and F0) heads (mixin:
  `init_stereo_body` sets `transformer`, `vap_head`, `vad_head`, `f0_head`)."""

  def init_stereo_body(self, cfg, dtype, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, rngs=rngs)
    t = cfg.transformer
    self.transformer = transformer.StereoTransformer(
        cfg.dim, t.num_heads, self_layers=t.self_layers, cross_layers=t.cross_layers,
        context=t.context, final_norm=t.final_norm, ffn_mult=t.ffn_mult, dropout=t.dropout,
        double_residual=t.double_residual, norm_cross_kv=t.norm_cross_kv, scale=t.scale,
        attention=t.attention, **kw)
    self.vap_head = heads.VAPHead(cfg.dim, cfg.vap.head, n_bins(cfg), **kw)
    self.vad_head = layers.linear(cfg.dim, 1, **kw)
    self.f0_head = heads.F0Head(cfg.dim, 1, **kw) if cfg.f0_head else None

  def body_outputs(self, z: jax.Array) -> dict[str, Any]:
    """z [2B, N, D] (`both`'s order) -> the heads' outputs."""
    return self.head_outputs(*self.transformer(*layers.speakers_apart(z)))

  def head_outputs(self, x: jax.Array, x1: jax.Array, x2: jax.Array) -> dict[str, Any]:
    """The heads on the combined stream x and the speakers' streams x1, x2 [B, N, D]:
    {'logits', 'vad' [B, N, 2], and 'f0'}."""
    out = {'logits': self.vap_head(x),
           'vad': jnp.concatenate([self.vad_head(x1), self.vad_head(x2)], axis=-1)}
    if self.f0_head is not None:
      f1, f2 = self.f0_head(x1), self.f0_head(x2)
      out['f0'] = jax.tree.map(lambda a, b: jnp.concatenate([a, b], axis=-1), f1, f2)
    return out

  def body_losses(self, out, batch, objective: VAPObjective, frames: int):
    """The VAP, VAD (and F0) terms and the frame accuracy, per example."""
    terms, metrics = vap_terms(out, batch, objective, frames)
    terms['vad'] = per_example(heads.vad_loss, out['vad'][:, :frames], batch['va'][:, :frames],
                               speakers(batch))  # not a monologue's silent partner's
    return {**terms, **f0_terms(out, batch, frames)}, metrics


class MonoVAP(frontends.AudioFrontend):
  """conv_ssl's model: VAP from the mono mix, conditioned on the current VA and the VA history."""

  inputs = ('audio', 'features', 'va', 'va_history')
  mono_mix = True

  def __init__(self, cfg, *, rngs: nnx.Rngs):
    dtype = compute_dtype(cfg.dtype)
    kw = dict(dtype=dtype, rngs=rngs)
    t = cfg.transformer
    self.init_audio_frontend(cfg, dtype, rngs, allow_none=True)
    self.va_condition = heads.VACondition(cfg.dim, cfg.va_cond.history_bins, **kw)
    self.transformer = transformer.GPT(
        cfg.dim, t.num_heads, t.num_layers, context=t.context, final_norm=t.final_norm,
        ffn_mult=t.ffn_mult, dropout=t.dropout, double_residual=t.double_residual, scale=t.scale,
        attention=t.attention, **kw)
    self.vap_head = heads.VAPHead(cfg.dim, cfg.vap.head, n_bins(cfg), **kw)
    self.f0_head = heads.F0Head(cfg.dim, 2, **kw) if cfg.f0_head else None

  def __call__(self, waveform: jax.Array | None, va: jax.Array,
               va_history: jax.Array | None = None, *,
               features: jax.Array | None = None) -> dict[str, Any]:
    """waveform [B, S] (the mono mix; [B, 2, S] is mixed by averaging), va [B, N, 2],
    va_history [B, N, bins] -> {'logits', and 'f0' with the F0 head}. `features` [B, T, D]: the
    encoder's output for the mix, in place of the waveform."""
    z = None
    if self.encoder is not None:
      if waveform is not None and waveform.ndim == 3:
        waveform = waveform.mean(axis=1)
      z = self.encode(waveform, features)[:, :va.shape[1]]
    z = self.frame_inputs(z, va, va_history)
    return self.head_outputs(self.transformer(z))

  def forward(self, batch, frames: int) -> dict[str, Any]:
    return self(batch.get('audio'), batch['va'][:, :frames], batch.get('va_history'),
                features=batch.get('features'))

  def encoder_features(self, audio: jax.Array) -> jax.Array:
    """The mix [B, S] -> the encoder's output [B, T, D], what a feature cache holds."""
    return self.encoder(audio)

  def losses(self, out, batch, objective: VAPObjective, frames: int):
    terms, metrics = vap_terms(out, batch, objective, frames)
    return {**terms, **f0_terms(out, batch, frames)}, metrics

  def frame_inputs(self, z: jax.Array | None, va: jax.Array,
                   va_history: jax.Array | None) -> jax.Array:
    """The transformer's input: audio frames z (None without an encoder) + the VA condition."""
    condition = self.va_condition(va, va_history)
    return condition if z is None else z + condition[:, :z.shape[1]].astype(z.dtype)

  def head_outputs(self, x: jax.Array) -> dict[str, Any]:
    """The heads on the transformer's output x [B, N, D]."""
    out = {'logits': self.vap_head(x)}
    if self.f0_head is not None:
      out['f0'] = self.f0_head(x)
    return out

  def va_inputs(self, batch: int, frames: int) -> tuple[jax.ShapeDtypeStruct, ...]:
    """What the model reads besides audio for `frames` frames: VA [B, n, 2] (and the VA
    history [B, n, bins] when it is conditioned on one)."""
    va = jax.ShapeDtypeStruct((batch, frames, 2), jnp.float32)
    if self.va_condition.history_proj is None:
      return (va,)
    bins = self.va_condition.history_proj.in_features
    return va, jax.ShapeDtypeStruct((batch, frames, bins), jnp.float32)

  def init_stream(self, batch: int, step_frames: int = 1) -> StreamState:
    """The state before any audio, for `batch` conversations and steps of `step_frames` frames."""
    encoder = None if self.encoder is None else self.init_encoder_stream(batch)
    return StreamState(encoder, transformer.init_cache(self.transformer, batch, step_frames))

  def stream_step(self, state: StreamState, samples: jax.Array, va: jax.Array,
                  va_history: jax.Array | None = None) -> tuple[StreamState, dict[str, Any]]:
    """One hop: samples [B, 2, hop] (heard as their mean, as offline), the hop's VA [B, n, 2]
    and VA history [B, n, bins] -> (new state, the outputs of its n frames)."""
    encoder, z = state.encoder, None
    if self.encoder is not None:
      encoder, z = self.encoder_stream_step(encoder, samples.mean(axis=1))
    cache, x = transformer.gpt_step(self.transformer, state.transformer,
                                    self.frame_inputs(z, va, va_history))
    return StreamState(encoder, cache), self.head_outputs(x)


class StereoVAP(frontends.AudioFrontend, StereoBody):
  """VoiceActivityProjection's model: one channel per speaker, cross-attention between them."""

  inputs = ('audio', 'features')
  mono_mix = False

  def __init__(self, cfg, *, rngs: nnx.Rngs):
    dtype = compute_dtype(cfg.dtype)
    self.init_audio_frontend(cfg, dtype, rngs)
    self.init_stereo_body(cfg, dtype, rngs)

  def __call__(self, waveform: jax.Array | None, *,
               features: jax.Array | None = None) -> dict[str, Any]:
    """waveform [B, 2, S] (channel 0 = speaker A) -> {'logits', 'vad' [B, N, 2], and 'f0'}.
    `features` [B, 2, T, D]: the encoder's output per channel, in place of the waveform."""
    x = waveform if features is None else features
    if x is None or x.ndim != (3 if features is None else 4) or x.shape[1] != 2:
      raise ValueError('the stereo model takes waveform [B, 2, samples] or features '
                       f'[B, 2, frames, dim], got {None if x is None else x.shape}')
    return self.body_outputs(self.encode(both(waveform), both(features)))

  def forward(self, batch, frames: int) -> dict[str, Any]:
    del frames  # the stereo model hears audio only
    return self(batch.get('audio'), features=batch.get('features'))

  def encoder_features(self, audio: jax.Array) -> jax.Array:
    """audio [B, 2, S] -> the encoder's output per channel [B, 2, T, D], what a feature cache
    holds."""
    b, c, s = audio.shape
    z = self.encoder(audio.reshape(b * c, s))
    return z.reshape(b, c, *z.shape[1:])

  def losses(self, out, batch, objective: VAPObjective, frames: int):
    return self.body_losses(out, batch, objective, frames)

  def va_inputs(self, batch: int, frames: int) -> tuple[jax.ShapeDtypeStruct, ...]:
    """What the model reads besides audio: nothing."""
    del batch, frames
    return ()

  def init_stream(self, batch: int, step_frames: int = 1) -> StreamState:
    """The state before any audio, for `batch` conversations and steps of `step_frames` frames."""
    return StreamState(self.init_encoder_stream(2 * batch),
                       transformer.init_stereo_cache(self.transformer, batch, step_frames))

  def stream_step(self, state: StreamState,
                  samples: jax.Array) -> tuple[StreamState, dict[str, Any]]:
    """One hop: samples [B, 2, hop] (one speaker per channel) -> (new state, the outputs of its
    n frames)."""
    encoder, z = self.encoder_stream_step(state.encoder, both(samples))
    cache, streams = transformer.stereo_step(self.transformer, state.transformer,
                                             *layers.speakers_apart(z))
    return StreamState(encoder, cache), self.head_outputs(*streams)
