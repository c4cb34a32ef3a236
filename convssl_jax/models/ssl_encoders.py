"""wav2vec 2.0 / HuBERT / WavLM encoders: 16 kHz waveform -> 50 Hz transformer features.

The arithmetic is torchaudio's `Wav2Vec2Model` / `wavlm_model` (reference/checkpoints_spec.md 2.1
and 3.1), which equals fairseq's and unilm's, so converted weights give the PyTorch numbers:

* feature extractor: convs without padding, each -> [norm] -> exact GELU. 'group_norm' (Base): only
  the first block normalises, per channel over time (GroupNorm with one group per channel);
  'layer_norm' (Large): every block normalises over channels. eps 1e-5 everywhere (Flax's default
  is 1e-6), two-pass variance.
* feature projection: LayerNorm -> Linear to the model dim.
* positional conv: grouped Conv1d (kernel K, padding K // 2, last frame dropped for even K) ->
  GELU, added to its input. Its weight norm is folded into the kernel at conversion time.
* transformer layers: post-LN (Base: x = LN(x + attn(x)); x = LN(x + ffn(x)), with one LN before
  the first layer) or pre-LN (Large: x = x + attn(LN(x)); x = x + ffn(LN(x)), one LN after the
  last layer).
* WavLM: one bucketed relative position bias [heads, T, T] shared by all layers, gated per layer,
  head and query by a sigmoid of the layer's attention input.

The attention is bidirectional over the whole input: these encoders are not causal.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from convssl_jax.models.layers import (LAYER_NORM_EPS, gelu, layer_norm, linear,
                                       torch_uniform_init)

NAMES = ('hubert', 'wav2vec2', 'wavlm')  # the converted-checkpoint names this module builds
# (channels, kernel, stride) of every released model's extractor: 400-sample field, 320 hop.
BASE_CONV_LAYERS = ((512, 10, 5),) + ((512, 3, 2),) * 4 + ((512, 2, 2),) * 2
EXTRACTOR_MODES = ('group_norm', 'layer_norm')


@dataclasses.dataclass(frozen=True)
class SSLConfig:
  """The architecture of one encoder (defaults: HuBERT / wav2vec 2.0 Base).

  `normalize_waveform`: each utterance is standardised first (zero mean, unit variance, eps 1e-5),
  as the Large models expect. `num_buckets` > 0 makes it a WavLM (gated relative position bias
  with `num_buckets` buckets up to `max_distance` frames).
  """
  conv_layers: tuple[tuple[int, int, int], ...] = BASE_CONV_LAYERS
  extractor_mode: str = 'group_norm'
  conv_bias: bool = False
  dim: int = 768
  num_layers: int = 12
  num_heads: int = 12
  ffn_dim: int = 3072
  layer_norm_first: bool = False
  pos_conv_kernel: int = 128
  pos_conv_groups: int = 16
  normalize_waveform: bool = False
  num_buckets: int = 0
  max_distance: int = 0

  def __post_init__(self):
    object.__setattr__(self, 'conv_layers', tuple(tuple(int(v) for v in l)
                                                  for l in self.conv_layers))
    problems = []
    if self.extractor_mode not in EXTRACTOR_MODES:
      problems.append(f'extractor_mode={self.extractor_mode!r} (expected one of '
                      f'{list(EXTRACTOR_MODES)})')
    if not self.conv_layers or any(len(l) != 3 or min(l) < 1 for l in self.conv_layers):
      problems.append(f'conv_layers={self.conv_layers!r} (expected (channels, kernel, stride) '
                      'triples of positive ints)')
    if self.dim % self.num_heads:
      problems.append(f'dim={self.dim} is not divisible by num_heads={self.num_heads}')
    if self.dim % self.pos_conv_groups:
      problems.append(f'dim={self.dim} is not divisible by pos_conv_groups={self.pos_conv_groups}')
    if self.num_buckets and (self.num_buckets < 4 or self.max_distance <= self.num_buckets // 4):
      problems.append(f'num_buckets={self.num_buckets}, max_distance={self.max_distance} (WavLM '
                      'needs num_buckets >= 4 and max_distance > num_buckets // 4)')
    if problems:
      raise ValueError('invalid SSL encoder config: ' + '; '.join(problems))

  @classmethod
  def from_dict(cls, fields: dict) -> 'SSLConfig':
    """From a config.json-style dict; unknown fields are an error naming them."""
    known = {f.name for f in dataclasses.fields(cls)}
    if unknown := sorted(set(fields) - known):
      raise ValueError(f'unknown SSL encoder config fields {unknown}; expected some of '
                       f'{sorted(known)}')
    return cls(**fields)

  def to_dict(self) -> dict:
    return {k: [list(l) for l in v] if k == 'conv_layers' else v
            for k, v in dataclasses.asdict(self).items()}

  @property
  def receptive_field(self) -> int:
    """Waveform samples one output frame sees (400 for every released model)."""
    field, hop = 1, 1
    for _, kernel, stride in self.conv_layers:
      field += (kernel - 1) * hop
      hop *= stride
    return field

  @property
  def hop(self) -> int:
    """Waveform samples between output frames (320 = 20 ms, 50 Hz, for every released model)."""
    return math.prod(stride for _, _, stride in self.conv_layers)


def num_frames(config: SSLConfig, num_samples: int) -> int:
  """Output frames for `num_samples` samples: floor((S - field) / hop) + 1, at least 0."""
  n = num_samples
  for _, kernel, stride in config.conv_layers:
    n = max((n - kernel) // stride + 1, 0)
  return n


def standardize(wave: jax.Array) -> jax.Array:
  """Each row of wave [B, S] to zero mean and unit variance (F.layer_norm over the samples)."""
  mean = wave.mean(-1, keepdims=True)
  var = jnp.square(wave - mean).mean(-1, keepdims=True)
  return (wave - mean) * jax.lax.rsqrt(var + LAYER_NORM_EPS)


class FeatureExtractor(nnx.Module):
  """The conv stack: wave [B, S] -> [B, T, channels]."""

  def __init__(self, config: SSLConfig, *, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    convs, norms, in_channels = [], [], 1
    for i, (channels, kernel, stride) in enumerate(config.conv_layers):
      init = torch_uniform_init(in_channels * kernel)
      convs.append(nnx.Conv(in_channels, channels, kernel_size=(kernel,), strides=(stride,),
                            padding='VALID', use_bias=config.conv_bias, kernel_init=init,
                            bias_init=init, **kw))
      if config.extractor_mode == 'layer_norm':
        norms.append(layer_norm(channels, **kw))
      elif i == 0:  # one group per channel: statistics over time
        norms.append(nnx.GroupNorm(channels, num_groups=channels, epsilon=LAYER_NORM_EPS,
                                   use_fast_variance=False, **kw))
      in_channels = channels
    self.convs = nnx.List(convs)
    self.norms = nnx.List(norms)

  def __call__(self, wave: jax.Array) -> jax.Array:
    x = wave[..., None]
    for i, conv in enumerate(self.convs):
      x = conv(x)
      if i < len(self.norms):
        x = self.norms[i](x)
      x = gelu(x)
    return x


def relative_position_buckets(length: int, num_buckets: int, max_distance: int) -> jax.Array:
  """WavLM's bidirectional buckets [T, T] of key - query offsets (float32 log, truncated)."""
  pos = jnp.arange(length)
  rel = pos[None, :] - pos[:, None]
  half = num_buckets // 2
  exact = half // 2
  distance = jnp.abs(rel)
  log_ratio = jnp.log(jnp.maximum(distance, 1).astype(jnp.float32) / exact)
  large = exact + (log_ratio / math.log(max_distance / exact) * (half - exact)).astype(jnp.int32)
  bucket = jnp.where(distance < exact, distance, jnp.minimum(large, half - 1))
  return bucket + (rel > 0) * half


class SelfAttention(nnx.Module):
  """Bidirectional multi-head attention with biases; with `gated`, WavLM's gated position bias."""

  def __init__(self, dim: int, num_heads: int, *, gated: bool = False, dtype=None,
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.num_heads = num_heads
    self.q_proj, self.k_proj, self.v_proj, self.out_proj = (linear(dim, dim, **kw)
                                                            for _ in range(4))
    if gated:  # WavLM's gru_rel_pos_linear and gru_rel_pos_const
      self.gate = linear(dim // num_heads, 8, **kw)
      self.gate_const = nnx.Param(jnp.ones((num_heads,), param_dtype))
    else:
      self.gate = self.gate_const = None

  def _heads(self, x: jax.Array) -> jax.Array:
    """[B, T, D] -> [B, H, T, D / H]."""
    b, t, _ = x.shape
    return x.reshape(b, t, self.num_heads, -1).transpose(0, 2, 1, 3)

  def __call__(self, x: jax.Array, position_bias: jax.Array | None = None) -> jax.Array:
    """x [B, T, D], position_bias [H, T, T] (WavLM) -> [B, T, D]."""
    q, k, v = self._heads(self.q_proj(x)), self._heads(self.k_proj(x)), self._heads(self.v_proj(x))
    scores = jnp.einsum('bhqd,bhkd->bhqk', q, k).astype(jnp.float32) / math.sqrt(q.shape[-1])
    if position_bias is not None:
      if self.gate is not None:
        b, t, _ = x.shape
        g = jax.nn.sigmoid(self.gate(self._heads(x)).astype(jnp.float32)
                           .reshape(b, self.num_heads, t, 2, 4).sum(-1))
        const = self.gate_const[...].astype(jnp.float32)[:, None, None]
        position_bias = (g[..., :1] * (g[..., 1:] * const - 1.0) + 2.0) * position_bias
      scores = scores + position_bias
    weights = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum('bhqk,bhkd->bqhd', weights, v)
    return self.out_proj(out.reshape(*out.shape[:2], -1))


class EncoderLayer(nnx.Module):
  """One transformer layer: attention and a GELU feed-forward, post-LN or pre-LN."""

  def __init__(self, config: SSLConfig, *, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.layer_norm_first = config.layer_norm_first
    self.attention = SelfAttention(config.dim, config.num_heads, gated=config.num_buckets > 0,
                                   **kw)
    self.attention_norm = layer_norm(config.dim, **kw)
    self.intermediate = linear(config.dim, config.ffn_dim, **kw)
    self.output = linear(config.ffn_dim, config.dim, **kw)
    self.final_norm = layer_norm(config.dim, **kw)

  def _ffn(self, x):
    return self.output(gelu(self.intermediate(x)))

  def __call__(self, x: jax.Array, position_bias: jax.Array | None = None) -> jax.Array:
    if self.layer_norm_first:
      x = x + self.attention(self.attention_norm(x), position_bias)
      return x + self._ffn(self.final_norm(x))
    x = self.attention_norm(x + self.attention(x, position_bias))
    return self.final_norm(x + self._ffn(x))


class SSLEncoder(nnx.Module):
  """A wav2vec 2.0 / HuBERT / WavLM encoder: wave [B, S] at 16 kHz -> [B, T, dim] at 50 Hz.

  `module(wave)` gives the last layer's output (`output_layer=None`, torchaudio's `forward`: for
  pre-LN models after the final LayerNorm), or that of layer `output_layer` in 1..num_layers
  (torchaudio's `extract_features()[output_layer - 1]`, computing no later layer).
  """

  def __init__(self, config: SSLConfig, *, output_layer: int | None = None, dtype=None,
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    if output_layer is not None and not 1 <= output_layer <= config.num_layers:
      raise ValueError(f'output_layer={output_layer} is outside 1..{config.num_layers} (or None '
                       'for the last layer)')
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    d = config.dim
    self.config = config
    self.output_layer = output_layer
    self.feature_extractor = FeatureExtractor(config, **kw)
    self.projection_norm = layer_norm(config.conv_layers[-1][0], **kw)
    self.projection = linear(config.conv_layers[-1][0], d, **kw)
    k = config.pos_conv_kernel
    init = torch_uniform_init(d // config.pos_conv_groups * k)
    self.pos_conv = nnx.Conv(d, d, kernel_size=(k,), padding=[(k // 2, k // 2)],
                             feature_group_count=config.pos_conv_groups, kernel_init=init,
                             bias_init=init, **kw)
    self.encoder_norm = layer_norm(d, **kw)
    self.layers = nnx.List([EncoderLayer(config, **kw) for _ in range(config.num_layers)])
    self.rel_pos_embed = (nnx.Embed(config.num_buckets, config.num_heads, **kw)
                          if config.num_buckets else None)

  def features(self, wave: jax.Array) -> jax.Array:
    """wave [B, S] -> the conv extractor's output [B, T, channels] (after normalising the wave)."""
    if self.config.normalize_waveform:
      wave = standardize(wave)
    return self.feature_extractor(wave)

  def extract(self, wave: jax.Array, num_layers: int | None = None
              ) -> tuple[jax.Array, list[jax.Array]]:
    """(conv features [B, T, channels], the outputs [B, T, dim] of layers 1..num_layers (all by
    default)) in one pass; the layer outputs are torchaudio's `extract_features` (pre-LN models:
    without the final LayerNorm, which `final` applies)."""
    features = self.features(wave)
    x = self.projection(self.projection_norm(features))
    pos = self.pos_conv(x)
    if self.config.pos_conv_kernel % 2 == 0:
      pos = pos[:, :-1]
    x = x + gelu(pos)
    if not self.config.layer_norm_first:
      x = self.encoder_norm(x)
    bias = None
    if self.rel_pos_embed is not None:
      buckets = relative_position_buckets(x.shape[1], self.config.num_buckets,
                                          self.config.max_distance)
      bias = jnp.moveaxis(self.rel_pos_embed(buckets), -1, 0).astype(jnp.float32)  # [H, T, T]
    outputs = []
    for layer in list(self.layers)[:num_layers or len(self.layers)]:
      x = layer(x, bias)
      outputs.append(x)
    return features, outputs

  def hidden_states(self, wave: jax.Array, num_layers: int | None = None) -> list[jax.Array]:
    """The outputs [B, T, dim] of layers 1..num_layers (see `extract`)."""
    return self.extract(wave, num_layers)[1]

  def final(self, last: jax.Array) -> jax.Array:
    """The encoder output from the last layer's: pre-LN models apply their final LayerNorm."""
    return self.encoder_norm(last) if self.config.layer_norm_first else last

  def __call__(self, wave: jax.Array) -> jax.Array:
    """wave [B, S] float32 at 16 kHz -> [B, num_frames(S), dim] (see the class docstring)."""
    if self.output_layer is not None:
      return self.hidden_states(wave, self.output_layer)[-1]
    return self.final(self.hidden_states(wave)[-1])
