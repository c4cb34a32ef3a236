"""The two VAP models: conv_ssl's mono model (2022) and VoiceActivityProjection's stereo model (2023).

Mono: the mono mix -> encoder -> downsample -> + VA conditioning -> causal GPT -> VAP head.
Stereo: one encoder per speaker (shared weights) -> downsample -> per-speaker GPT ->
cross-attention layers -> combinator -> VAP head; a VAD head on each speaker's stream.
Both can carry the F0 head. A mono model with `encoder.name='none'` hears no audio: it is the
VA-only baseline (VA and its history only). The encoder (CPC, `self.encoder`) is frozen or trained through the
parameter filter of `trainable_filter`, so a frozen encoder gets no gradient and no optimizer state.
"""

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from convssl_jax.models import cpc, downsample, heads, layers, pretrained, transformer

ENCODER = 'encoder'  # attribute holding the pretrained encoder; the frozen part
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def compute_dtype(name: str):
  if name not in DTYPES:
    raise ValueError(f'model.dtype must be one of {sorted(DTYPES)}, got {name!r}')
  return DTYPES[name]


def n_bins(cfg) -> int:
  return len(cfg.vap.bin_times)


class _FrameEncoder(nnx.Module):
  """The encoder at 100 Hz, then the causal downsampler to the model's frame rate (always trainable)."""

  def _init_encoder(self, cfg, dtype, rngs: nnx.Rngs):
    enc = cfg.encoder
    if enc.name == 'none' and cfg.kind == 'mono':  # the VA-only baseline: no audio at all
      self.encoder = self.downsample = None
      return
    if enc.name != 'cpc':
      raise ValueError(f"model.encoder.name {enc.name!r} is not available; expected 'cpc' "
                       "(or 'none' for a mono VA-only model)")
    self.encoder = cpc.CPCEncoder(dim=cfg.dim, lstm_layers=enc.lstm_layers, padding=enc.padding,
                                  unroll=enc.unroll, dtype=dtype, rngs=rngs)
    ks = downsample.downsample_for(cfg.frame_hz)
    self.downsample = (None if ks is None else
                       downsample.CausalDownsample(cfg.dim, *ks, dtype=dtype, rngs=rngs))

  def encode(self, wave: jax.Array) -> jax.Array:
    """wave [B, S] at 16 kHz -> frames [B, N, D] at the model's frame rate."""
    z = self.encoder(wave)
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
        **kw)
    self.vap_head = heads.VAPHead(cfg.dim, cfg.vap.head, n_bins(cfg), **kw)
    self.f0_head = heads.F0Head(cfg.dim, 2, **kw) if cfg.f0_head else None

  def __call__(self, waveform: jax.Array, va: jax.Array,
               va_history: jax.Array | None = None) -> dict[str, Any]:
    """waveform [B, S] (the mono mix; [B, 2, S] is mixed by averaging), va [B, N, 2],
    va_history [B, N, bins] -> {'logits', and 'f0' with the F0 head}."""
    condition = self.va_condition(va, va_history)
    if self.encoder is None:
      z = condition
    else:
      if waveform.ndim == 3:
        waveform = waveform.mean(axis=1)
      z = self.encode(waveform)[:, :va.shape[1]]
      z = z + condition[:, :z.shape[1]].astype(z.dtype)
    x = self.transformer(z)
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
        double_residual=t.double_residual, norm_cross_kv=t.norm_cross_kv, scale=t.scale, **kw)
    self.vap_head = heads.VAPHead(cfg.dim, cfg.vap.head, n_bins(cfg), **kw)
    self.vad_head = layers.linear(cfg.dim, 1, **kw)
    self.f0_head = heads.F0Head(cfg.dim, 1, **kw) if cfg.f0_head else None

  def __call__(self, waveform: jax.Array) -> dict[str, Any]:
    """waveform [B, 2, S] (channel 0 = speaker A) -> {'logits', 'vad' [B, N, 2], and 'f0'}."""
    if waveform.ndim != 3 or waveform.shape[1] != 2:
      raise ValueError(f'the stereo model takes waveform [B, 2, samples], got {waveform.shape}')
    batch = waveform.shape[0]
    z = self.encode(jnp.concatenate([waveform[:, 0], waveform[:, 1]], axis=0))
    return self.heads(*self.transformer(z[:batch], z[batch:]))

  def heads(self, x: jax.Array, x1: jax.Array, x2: jax.Array) -> dict[str, Any]:
    """The outputs from the combined stream x and the speakers' streams x1, x2 [B, N, D]."""
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
    pretrained.load_into(model.encoder, cfg.encoder_checkpoint, expected={
        'name': cfg.encoder.name, 'dim': cfg.dim, 'lstm_layers': cfg.encoder.lstm_layers})
  return model


def encoder_frozen(cfg, step: int = 0) -> bool:
  """Whether the encoder is frozen at `step`: `freeze`, until `unfreeze_step` (-1 = never)."""
  enc = cfg.encoder
  return bool(enc.freeze) and (enc.unfreeze_step < 0 or step < enc.unfreeze_step)


def trainable_filter(cfg, step: int = 0) -> nnx.filterlib.Filter:
  """The parameters trained at `step`: all of them, or all but the encoder's while it is frozen."""
  if encoder_frozen(cfg, step):
    return nnx.All(nnx.Param, nnx.Not(nnx.PathContains(ENCODER)))
  return nnx.Param
