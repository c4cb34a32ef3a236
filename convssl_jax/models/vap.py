"""The two VAP models: conv_ssl's mono model (2022) and VoiceActivityProjection's stereo model (2023).

Mono: the mono mix -> encoder -> downsample -> + VA conditioning -> causal GPT -> VAP head.
Stereo: one encoder per speaker (shared weights) -> downsample -> per-speaker GPT ->
cross-attention layers -> combinator -> VAP head; a VAD head on each speaker's stream.
Both can carry the F0 head. A mono model with `encoder.name='none'` hears no audio: it is the
VA-only baseline (VA and its history only). The encoder (CPC, `self.encoder`) is frozen or trained through the
parameter filter of `trainable_filter`, so a frozen encoder gets no gradient and no optimizer state.
A converted HuBERT / wav2vec2 / WavLM (`encoder.name`, architecture and weights from
`encoder_checkpoint`) can stand in for CPC: its 50-Hz features pass a trainable projection to the
model dim instead of the downsampler. It attends over the whole input, so it is not causal.
"""

import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging
from flax import nnx

from convssl_jax.models import (cpc, downsample, heads, layers, pretrained, ssl_encoders,
                               transformer)

ENCODER = 'encoder'  # attribute holding the pretrained encoder; the frozen part
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def compute_dtype(name: str):
  if name not in DTYPES:
    raise ValueError(f'model.dtype must be one of {sorted(DTYPES)}, got {name!r}')
  return DTYPES[name]


def n_bins(cfg) -> int:
  return len(cfg.vap.bin_times)


def both(x: jax.Array | None) -> jax.Array | None:
  """[B, 2, ...] (channel 0 = speaker A) -> [2B, ...]: both speakers' channels as one batch, A's
  first, so one encoder call serves both; x[:B] and x[B:] take them apart again."""
  return None if x is None else jnp.concatenate([x[:, 0], x[:, 1]], axis=0)


class _FrameEncoder(nnx.Module):
  """The encoder at 100 Hz, then the causal downsampler to the model's frame rate (always trainable)."""

  def _init_encoder(self, cfg, dtype, rngs: nnx.Rngs):
    enc = cfg.encoder
    if enc.name == 'none' and cfg.kind == 'mono':  # the VA-only baseline: no audio at all
      self.encoder = self.downsample = self.project = None
      return
    if enc.name in ssl_encoders.NAMES:
      self._init_ssl_encoder(cfg, dtype, rngs)
      return
    if enc.name != 'cpc':
      raise ValueError(f'model.encoder.name {enc.name!r} is not available; expected one of '
                       f"{['cpc', *ssl_encoders.NAMES]} (or 'none' for a mono VA-only model)")
    self.encoder = cpc.CPCEncoder(dim=cfg.dim, lstm_layers=enc.lstm_layers, padding=enc.padding,
                                  unroll=enc.unroll, dtype=dtype, rngs=rngs)
    self.project = None  # only the HuBERT-family encoders project to the model dim
    ks = downsample.downsample_for(cfg.frame_hz)
    self.downsample = (None if ks is None else
                       downsample.CausalDownsample(cfg.dim, *ks, dtype=dtype, rngs=rngs))

  def _init_ssl_encoder(self, cfg, dtype, rngs: nnx.Rngs):
    enc = cfg.encoder
    if not cfg.get('encoder_checkpoint'):
      raise ValueError(f'model.encoder.name={enc.name!r} takes its architecture and weights from '
                       'model.encoder_checkpoint (a `python -m checkpoints_convert '
                       f'{enc.name} SRC DIR` output), which is not set')
    config = pretrained.ssl_config(cfg.encoder_checkpoint)
    if cfg.frame_hz * config.hop != 16000:
      raise ValueError(f'model.frame_hz={cfg.frame_hz}: the {enc.name} encoder gives '
                       f'{16000 / config.hop:g} Hz frames, so frame_hz must be that')
    self.encoder = ssl_encoders.SSLEncoder(config, output_layer=enc.get('output_layer') or None,
                                           dtype=dtype, rngs=rngs)
    self.project = layers.linear(config.dim, cfg.dim, dtype=dtype, rngs=rngs)
    self.downsample = None

  def encode(self, wave: jax.Array | None, features: jax.Array | None = None) -> jax.Array:
    """wave [B, S] at 16 kHz -> frames [B, N, D] at the model's frame rate. `features` [B, T, D],
    the encoder's output computed beforehand (a feature cache), replace the encoder."""
    if self.project is not None:
      if features is None:
        # Right-pad by field - hop (80 samples) so that S samples give S / hop frames, frame t
        # covering samples [hop t, hop t + field), like the VA frames [hop t, hop (t + 1)).
        c = self.encoder.config
        features = self.encoder(jnp.pad(wave, ((0, 0), (0, c.receptive_field - c.hop))))
      return self.project(features)
    z = self.encoder(wave) if features is None else features
    return z if self.downsample is None else self.downsample(z)


class MonoVAP(_FrameEncoder):
  """conv_ssl's model: VAP from the mono mix, conditioned on the current VA and the VA history."""

  def __init__(self, cfg, *, rngs: nnx.Rngs):
    dtype = compute_dtype(cfg.dtype)
    kw = dict(dtype=dtype, rngs=rngs)
    t = cfg.transformer
    self._init_encoder(cfg, dtype, rngs)
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


class StereoVAP(_FrameEncoder):
  """VoiceActivityProjection's model: one channel per speaker, cross-attention between them."""

  def __init__(self, cfg, *, rngs: nnx.Rngs):
    dtype = compute_dtype(cfg.dtype)
    self._init_encoder(cfg, dtype, rngs)
    self._init_body(cfg, dtype, rngs)

  def _init_body(self, cfg, dtype, rngs: nnx.Rngs):
    """Everything after the encoder: the stereo transformer and the heads."""
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

  def __call__(self, waveform: jax.Array | None, *,
               features: jax.Array | None = None) -> dict[str, Any]:
    """waveform [B, 2, S] (channel 0 = speaker A) -> {'logits', 'vad' [B, N, 2], and 'f0'}.
    `features` [B, 2, T, D]: the encoder's output per channel, in place of the waveform."""
    x = waveform if features is None else features
    if x is None or x.ndim != (3 if features is None else 4) or x.shape[1] != 2:
      raise ValueError('the stereo model takes waveform [B, 2, samples] or features '
                       f'[B, 2, frames, dim], got {None if x is None else x.shape}')
    batch = x.shape[0]
    z = self.encode(both(waveform), both(features))
    return self.head_outputs(*self.transformer(z[:batch], z[batch:]))

  def head_outputs(self, x: jax.Array, x1: jax.Array, x2: jax.Array) -> dict[str, Any]:
    """The heads on the combined stream x and the speakers' streams x1, x2 [B, N, D]."""
    out = {'logits': self.vap_head(x),
           'vad': jnp.concatenate([self.vad_head(x1), self.vad_head(x2)], axis=-1)}
    if self.f0_head is not None:
      f1, f2 = self.f0_head(x1), self.f0_head(x2)
      out['f0'] = jax.tree.map(lambda a, b: jnp.concatenate([a, b], axis=-1), f1, f2)
    return out


def build_model(cfg, *, rngs: nnx.Rngs) -> nnx.Module:
  """The model named by `cfg.kind` ('mono', 'stereo', 'cpc' for CPC pretraining, 'ulm' for the
  unit LM), from a `config.model` ConfigDict.

  With `cfg.encoder_checkpoint` (a `python -m checkpoints_convert` output) the encoder starts from
  those converted weights instead of random ones.
  """
  from convssl_jax.models import cpc_pretrain, ulm  # they build on StereoVAP

  kinds = {'mono': MonoVAP, 'stereo': StereoVAP, 'cpc': cpc_pretrain.CPCPretrain,
           'ulm': ulm.UnitLM}
  if cfg.kind not in kinds:
    raise ValueError(f'model.kind must be one of {sorted(kinds)}, got {cfg.kind!r}')
  model = kinds[cfg.kind](cfg, rngs=rngs)
  if cfg.get('encoder_checkpoint') and model.encoder is not None:
    expected = {'name': cfg.encoder.name}
    if cfg.encoder.name == 'cpc':
      expected.update(dim=cfg.dim, lstm_layers=cfg.encoder.lstm_layers)
    stored = pretrained.load_into(model.encoder, cfg.encoder_checkpoint, expected=expected)
    trained_padding = stored.get('padding', 'reference')
    if cfg.encoder.name == 'cpc' and trained_padding != cfg.encoder.padding:
      _warn_padding(cfg.encoder.padding, cfg.encoder_checkpoint, trained_padding)
  return model


@functools.cache  # once per process: a Trainer builds its model more than once
def _warn_padding(padding: str, checkpoint: str, trained_padding: str) -> None:
  logging.warning(
      'model.encoder.padding=%r, but the CPC weights in %s were trained with %r padding: its '
      'convolutions see other samples than in training, so its features differ '
      '(--config.model.encoder.padding=%s reproduces them)', padding, checkpoint,
      trained_padding, trained_padding)


def load_model(directory) -> tuple[MonoVAP | StereoVAP, ml_collections.ConfigDict]:
  """(the model, its `config.model`) of a converted VAP model (`python -m checkpoints_convert vap
  SRC DIR`), in eval mode."""
  config, params = pretrained.load(directory)
  if 'model' not in config:
    raise ValueError(f'{directory}: a converted {config.get("name")!r} encoder, not a VAP model '
                     '(use load_encoder)')
  cfg = ml_collections.ConfigDict(config['model'])
  model = build_model(cfg, rngs=nnx.Rngs(0))
  pretrained.assign(model, params)
  model.eval()
  return model, cfg


def encoder_frozen(cfg, step: int = 0) -> bool:
  """Whether the encoder is frozen at `step`: `freeze`, until `unfreeze_step` (-1 = never)."""
  enc = cfg.encoder
  return bool(enc.freeze) and (enc.unfreeze_step < 0 or step < enc.unfreeze_step)


def trainable_filter(cfg, step: int = 0) -> nnx.filterlib.Filter:
  """The parameters trained at `step`: all of them, or all but the encoder's while it is frozen."""
  if encoder_frozen(cfg, step):
    return nnx.All(nnx.Param, nnx.Not(nnx.PathContains(ENCODER)))
  return nnx.Param
