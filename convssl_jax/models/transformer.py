"""Causal transformers with ALiBi: conv_ssl's GPT and VoiceActivityProjection's stereo stack.

Both references share one pre-LN layer (no biases in attention or feed-forward, exact GELU, no
positional embeddings: ALiBi). Their quirks are kept as explicit options, defaulting to the
references, because their released checkpoints are converted into these modules:

* `scale='model'`: scores are scaled by 1/sqrt(model dim), not 1/sqrt(head dim) (both references).
* `double_residual=True`: conv_ssl's GPT adds the attention residual twice, h = 2x + attn
  (VoiceActivityProjection does not).
* `final_norm=False`: neither reference normalises after the last layer.
* `norm_cross_kv=False`: cross-attention keys/values are the other speaker's un-normalised stream.
* attention outputs pass two dropouts (inside the attention and again in the layer), as in both.

ALiBi is written in its relative form m_h * (j - i); the references add m_h * j, which gives the
same softmax (a constant per query row). `context` bounds how far back a frame may attend.

Attention runs through `jax.nn.dot_product_attention` with ALiBi as an additive bias and the
causal/context mask as a mask (cuDNN's fused kernel on a GPU for bf16/fp16 where it compiles for
the shape, XLA's otherwise), except while attention-weight dropout is active, which that function
does not offer: then the explicit einsum/softmax path runs (`attention='einsum'` forces it). All
give the same numbers.

`gpt_step` / `stereo_step` run a GPT / StereoTransformer with a bounded context incrementally, n
frames a step, over a fixed-size ring-buffer key/value cache per attention (`init_cache`,
`init_stereo_cache`); the outputs equal the offline ones.
"""

import contextlib
import contextvars
import functools
import math
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx

from convssl_jax.models import layers


def alibi_slopes(num_heads: int) -> np.ndarray:
  """The ALiBi geometric slopes: 4 heads -> 1/4, 1/16, 1/64, 1/256; 8 heads -> 2^-1 ... 2^-8."""

  def power_of_two(n):
    start = 2.0 ** (-(2.0 ** -(math.log2(n) - 3)))
    return [start ** (i + 1) for i in range(n)]

  if math.log2(num_heads).is_integer():
    slopes = power_of_two(num_heads)
  else:  # the ALiBi paper's rule for other head counts
    closest = 2 ** math.floor(math.log2(num_heads))
    slopes = power_of_two(closest) + power_of_two(2 * closest)[0::2][: num_heads - closest]
  return np.asarray(slopes, np.float32)


def alibi_bias(slopes: np.ndarray, query_pos: jax.Array, key_pos: jax.Array,
               context: int | None = None) -> jax.Array:
  """Additive attention bias [heads, q, k]: ALiBi, -inf on future keys and keys beyond `context`."""
  distance = key_pos[None, :] - query_pos[:, None]  # <= 0 for visible keys
  visible = distance <= 0
  if context is not None:
    visible &= distance > -context
  bias = jnp.asarray(slopes)[:, None, None] * distance.astype(jnp.float32)
  return jnp.where(visible, bias, -jnp.inf)


def causal_alibi_bias(slopes: np.ndarray, length: int, context: int | None = None) -> jax.Array:
  """The bias for `length` frames attending to themselves."""
  pos = jnp.arange(length)
  return alibi_bias(slopes, pos, pos, context)


AttentionImpl = Literal['auto', 'einsum']
_PORTABLE = contextvars.ContextVar('portable_attention', default=False)


@contextlib.contextmanager
def portable_attention():
  """Within it, 'auto' attention traces XLA's implementation on every backend, never cuDNN's
  custom call, so that what is traced lowers for any platform (multi-platform `jax.export`)."""
  token = _PORTABLE.set(True)
  try:
    yield
  finally:
    _PORTABLE.reset(token)


def _cudnn_backend(dtype) -> bool:
  """A GPU, and bf16/fp16: where cuDNN's fused kernel may run."""
  return jax.default_backend() == 'gpu' and dtype in (jnp.bfloat16, jnp.float16)


def _fused_candidate(dtype) -> bool:
  """Whether 'auto' tries cuDNN's fused kernel: where it may run, outside `portable_attention`."""
  return not _PORTABLE.get() and _cudnn_backend(dtype)


def _fused(q, k, v, bias, mask, scale):
  """cuDNN's fused attention ([B, T, heads, hd] layout)."""
  return jax.nn.dot_product_attention(q, k, v, bias, mask, scale=scale, implementation='cudnn')


@functools.lru_cache(maxsize=None)
def fused_attention_compiles(q, k, v, bias, mask, scale: float) -> bool:
  """Whether `_fused` traces, lowers and compiles, forward and backward (training differentiates
  it), for these shapes and dtypes (jax.ShapeDtypeStruct). cuDNN refuses some shapes while tracing
  and others only when XLA compiles the custom call, which would fail the whole step; checked once
  per shape, by compiling the attention alone. A failure is logged once and XLA's runs instead."""
  def forward_backward(q, k, v, bias, mask):
    out, vjp = jax.vjp(lambda q, k, v: _fused(q, k, v, bias, mask, scale), q, k, v)
    return out, vjp(out)

  try:
    jax.jit(forward_backward).lower(q, k, v, bias, mask).compile()
  except Exception as err:  # pylint: disable=broad-except  # any failure: XLA's path instead
    first = (str(err).strip().splitlines() or [type(err).__name__])[0]
    logging.warning('cuDNN attention for q %s %s does not compile (%s: %s); XLA\'s attention runs '
                    'instead (the same numbers)', q.shape, q.dtype, type(err).__name__, first[:200])
    return False
  return True


def attention(q: jax.Array, k: jax.Array, v: jax.Array, bias: jax.Array, scale: float,
              dropout: nnx.Dropout, implementation: AttentionImpl = 'auto') -> jax.Array:
  """softmax(q k^T * scale + bias) v, with dropout on the weights: q [B, heads, Tq, hd], k and v
  [B, heads, Tk, hd], bias [heads, Tq, Tk] (-inf = masked; every query row sees a key) ->
  [B, Tq, heads, hd]."""
  if implementation not in ('auto', 'einsum'):
    raise ValueError(f"attention implementation must be 'auto' or 'einsum', got {implementation!r}")
  if implementation == 'einsum' or (dropout.rate > 0 and not dropout.deterministic):
    scores = jnp.einsum('bhqd,bhkd->bhqk', q, k).astype(jnp.float32) * scale + bias
    weights = dropout(jax.nn.softmax(scores, axis=-1)).astype(v.dtype)
    return jnp.einsum('bhqk,bhkd->bqhd', weights, v)
  visible = bias > -jnp.inf
  bias = jnp.where(visible, bias, 0.0)[None]
  q, k, v = (jnp.swapaxes(t, 1, 2) for t in (q, k, v))  # the function's [B, T, heads, hd]
  if _fused_candidate(q.dtype):
    fused_bias, mask = bias.astype(q.dtype), visible[None]
    shapes = (jax.ShapeDtypeStruct(t.shape, t.dtype) for t in (q, k, v, fused_bias, mask))
    if fused_attention_compiles(*shapes, scale):
      return _fused(q, k, v, fused_bias, mask, scale)
  return jax.nn.dot_product_attention(q, k, v, bias, visible[None], scale=scale)


class MultiHeadAttention(nnx.Module):
  """Multi-head attention without biases, with an additive bias (ALiBi + mask) on the scores."""

  def __init__(self, dim: int, num_heads: int, dropout: float, *, scale: Literal['model', 'head'] = 'model',
               attention: AttentionImpl = 'auto', dtype=None, param_dtype=jnp.float32,
               rngs: nnx.Rngs):
    if dim % num_heads:
      raise ValueError(f'model dim {dim} is not divisible by num_heads {num_heads}')
    if scale not in ('model', 'head'):
      raise ValueError(f"attention scale must be 'model' or 'head', got {scale!r}")
    self.num_heads = num_heads
    self.implementation = attention
    self.scale = 1.0 / math.sqrt(dim if scale == 'model' else dim // num_heads)
    make = lambda: layers.linear(dim, dim, use_bias=False, gpt_init=True, dtype=dtype,
                                 param_dtype=param_dtype, rngs=rngs)
    self.query, self.key, self.value, self.proj = make(), make(), make(), make()
    self.attn_dropout = nnx.Dropout(dropout, rngs=rngs)
    self.resid_dropout = nnx.Dropout(dropout, rngs=rngs)

  def _heads(self, t: jax.Array) -> jax.Array:
    """[B, T, D] -> [B, heads, T, head_dim]."""
    return jnp.swapaxes(t.reshape(*t.shape[:-1], self.num_heads, -1), -3, -2)

  def keys_values(self, source: jax.Array) -> tuple[jax.Array, jax.Array]:
    """source [B, Tk, D] -> its keys and values, each [B, heads, Tk, head_dim]."""
    return self._heads(self.key(source)), self._heads(self.value(source))

  def attend(self, x: jax.Array, k: jax.Array, v: jax.Array, bias: jax.Array) -> jax.Array:
    """x [B, Tq, D] attends to keys/values [B, heads, Tk, head_dim]; bias [heads, Tq, Tk]."""
    q = self._heads(self.query(x))
    out = attention(q, k, v, bias, self.scale, self.attn_dropout, self.implementation)
    return self.resid_dropout(self.proj(out.reshape(*out.shape[:-2], -1)))

  def __call__(self, x: jax.Array, source: jax.Array, bias: jax.Array) -> jax.Array:
    """x [B, Tq, D] attends to source [B, Tk, D]; bias [heads, Tq, Tk]."""
    return self.attend(x, *self.keys_values(source), bias)


class FeedForward(nnx.Module):
  """Linear -> GELU -> Dropout -> Linear, no biases."""

  def __init__(self, dim: int, hidden: int, dropout: float, *, dtype=None, param_dtype=jnp.float32,
               rngs: nnx.Rngs):
    self.up = layers.linear(dim, hidden, use_bias=False, gpt_init=True, dtype=dtype,
                            param_dtype=param_dtype, rngs=rngs)
    self.dropout = nnx.Dropout(dropout, rngs=rngs)
    self.down = layers.linear(hidden, dim, use_bias=False, gpt_init=True, dtype=dtype,
                              param_dtype=param_dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.down(self.dropout(layers.gelu(self.up(x))))


class TransformerLayer(nnx.Module):
  """Pre-LN layer: causal self-attention, optional cross-attention to another stream, feed-forward."""

  def __init__(self, dim: int, num_heads: int, *, ffn_mult: int = 3, dropout: float = 0.1,
               cross: bool = False, double_residual: bool = False, norm_cross_kv: bool = False,
               scale: Literal['model', 'head'] = 'model', attention: AttentionImpl = 'auto',
               dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.double_residual = double_residual
    self.ln_self_attn = layers.layer_norm(dim, **kw)
    self.mha = MultiHeadAttention(dim, num_heads, dropout, scale=scale, attention=attention, **kw)
    if cross:
      self.ln_src_attn = layers.layer_norm(dim, **kw)
      self.mha_cross = MultiHeadAttention(dim, num_heads, dropout, scale=scale,
                                          attention=attention, **kw)
      self.ln_src_kv = layers.layer_norm(dim, **kw) if norm_cross_kv else None
    else:
      self.mha_cross = None
    self.ln_ffn = layers.layer_norm(dim, **kw)
    self.ffn = FeedForward(dim, ffn_mult * dim, dropout, **kw)
    self.dropout = nnx.Dropout(dropout, rngs=rngs)

  def __call__(self, x: jax.Array, bias: jax.Array, source: jax.Array | None = None) -> jax.Array:
    h = self.ln_self_attn(x)
    h = self.add_self_attention(x, self.mha(h, h, bias))
    if self.mha_cross is not None:
      if source is None:
        raise ValueError('a cross-attention layer needs the other speaker stream as `source`')
      h = self.add_cross_attention(
          h, self.mha_cross(self.ln_src_attn(h), self.cross_source(source), bias))
    return self.add_feed_forward(h)

  # The layer in parts, so that a streaming step can put cached attention in between.

  def add_self_attention(self, x: jax.Array, attn: jax.Array) -> jax.Array:
    """The residual around self-attention: x + attn (conv_ssl's double residual: 2x + attn)."""
    h = x + self.dropout(attn)
    return x + h if self.double_residual else h

  def cross_source(self, source: jax.Array) -> jax.Array:
    """What cross-attention keys and values are computed from: the other stream (normalised)."""
    return source if self.ln_src_kv is None else self.ln_src_kv(source)

  def add_cross_attention(self, h: jax.Array, attn: jax.Array) -> jax.Array:
    return h + self.dropout(attn)

  def add_feed_forward(self, h: jax.Array) -> jax.Array:
    return h + self.dropout(self.ffn(self.ln_ffn(h)))


class GPT(nnx.Module):
  """A causal stack of self-attention layers with ALiBi (conv_ssl's AR, VAP's per-speaker tower)."""

  def __init__(self, dim: int, num_heads: int, num_layers: int, *, context: int | None = None,
               final_norm: bool = False, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs,
               **layer_options):
    self.slopes = alibi_slopes(num_heads)
    self.context = context
    self.layers = nnx.List([
        TransformerLayer(dim, num_heads, dtype=dtype, param_dtype=param_dtype, rngs=rngs,
                         **layer_options) for _ in range(num_layers)])
    self.final_norm = (layers.layer_norm(dim, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
                       if final_norm else None)

  def __call__(self, x: jax.Array) -> jax.Array:
    bias = causal_alibi_bias(self.slopes, x.shape[-2], self.context)
    for layer in self.layers:
      x = layer(x, bias)
    return x if self.final_norm is None else self.final_norm(x)


class Combinator(nnx.Module):
  """Merges the two speaker streams: GELU(LN(W_a x1)) + GELU(LN(W_b x2)), one shared LayerNorm."""

  def __init__(self, dim: int, *, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.h0_a = layers.linear(dim, dim, use_bias=False, gpt_init=True, **kw)
    self.h0_b = layers.linear(dim, dim, use_bias=False, gpt_init=True, **kw)
    self.ln = layers.layer_norm(dim, **kw)

  def __call__(self, x1: jax.Array, x2: jax.Array) -> jax.Array:
    return layers.gelu(self.ln(self.h0_a(x1))) + layers.gelu(self.ln(self.h0_b(x2)))


class StereoTransformer(nnx.Module):
  """VoiceActivityProjection's stack: a shared per-speaker GPT, shared cross-attention layers, combinator.

  Each cross layer updates both speakers from the layer's inputs (z1 = f(x1, x2), z2 = f(x2, x1));
  both directions run as one batch. Returns (x, x1, x2): the combined stream and each speaker's.
  """

  def __init__(self, dim: int, num_heads: int, *, self_layers: int = 1, cross_layers: int = 3,
               context: int | None = None, final_norm: bool = False, dtype=None,
               param_dtype=jnp.float32, rngs: nnx.Rngs, **layer_options):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.slopes = alibi_slopes(num_heads)
    self.context = context
    self.ar_channel = GPT(dim, num_heads, self_layers, context=context, final_norm=final_norm,
                          **kw, **layer_options)
    self.cross_layers = nnx.List([
        TransformerLayer(dim, num_heads, cross=True, **kw, **layer_options)
        for _ in range(cross_layers)])
    self.final_norm = layers.layer_norm(dim, **kw) if final_norm else None
    self.combinator = Combinator(dim, **kw)

  def __call__(self, x1: jax.Array, x2: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    x = self.ar_channel(layers.speakers_as_batch(x1, x2))
    bias = causal_alibi_bias(self.slopes, x.shape[-2], self.context)
    for layer in self.cross_layers:
      x = layer(x, bias, source=layers.partners(x))  # each speaker's source is the other
    if self.final_norm is not None:
      x = self.final_norm(x)
    x1, x2 = layers.speakers_apart(x)
    return self.combinator(x1, x2), x1, x2


class KVCache(NamedTuple):
  """One attention layer's ring buffer of S slots: frame p's key and value sit in slot p % S."""
  keys: jax.Array  # [B, heads, S, head_dim]
  values: jax.Array  # [B, heads, S, head_dim]


class GPTCache(NamedTuple):
  """What a GPT stream carries between steps; the same shapes at every step."""
  layers: tuple[KVCache, ...]  # per layer
  position: jax.Array  # int32 []: frames seen so far, the absolute position of the next frame


class StereoCache(NamedTuple):
  """What a StereoTransformer stream carries: the per-speaker GPT's cache (both speakers as one
  batch of 2B) and, per cross layer, its self-attention and cross-attention caches."""
  channel: GPTCache
  cross_layers: tuple[tuple[KVCache, KVCache], ...]


def _context(module: GPT | StereoTransformer) -> int:
  """The attention context: how many frames (itself included) a frame attends to."""
  if module.context is None:
    raise ValueError('streaming needs a bounded attention context (transformer.context): with '
                     'unbounded context the key/value cache would grow without limit')
  return module.context


def set_context(module: GPT | StereoTransformer, context: int) -> None:
  """Bounds how far back every frame of `module` attends (its layers and their caches)."""
  module.context = context
  if isinstance(module, StereoTransformer):
    module.ar_channel.context = context


def _empty_kv(mha: MultiHeadAttention, batch: int, size: int) -> KVCache:
  dim = mha.key.out_features
  shape = (batch, mha.num_heads, size, dim // mha.num_heads)
  dtype = mha.key.dtype or mha.key.param_dtype
  return KVCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))


def init_cache(gpt: GPT, batch: int, step_frames: int = 1) -> GPTCache:
  """The cache before any frame, for steps of up to `step_frames` frames: context + step_frames - 1
  slots (a step's frames are written first, then attend to the cache alone), all empty."""
  size = _context(gpt) + step_frames - 1
  return GPTCache(tuple(_empty_kv(layer.mha, batch, size) for layer in gpt.layers),
                  jnp.zeros((), jnp.int32))


def init_stereo_cache(stereo: StereoTransformer, batch: int, step_frames: int = 1) -> StereoCache:
  """The StereoTransformer's cache before any frame, for `batch` conversations."""
  size = _context(stereo) + step_frames - 1
  return StereoCache(init_cache(stereo.ar_channel, 2 * batch, step_frames), tuple(
      (_empty_kv(layer.mha, 2 * batch, size), _empty_kv(layer.mha_cross, 2 * batch, size))
      for layer in stereo.cross_layers))


def _ring_bias(slopes: np.ndarray, end: jax.Array, size: int, n: int,
               context: int) -> jax.Array:
  """The bias [heads, n, S] of frames end-n..end-1 over the S slots once they are written: slot s
  holds the latest frame p < end with p % S == s (empty while p < 0)."""
  slot_pos = end - size + (jnp.arange(size) - end) % size
  bias = alibi_bias(slopes, end - n + jnp.arange(n), slot_pos, context)
  return jnp.where(slot_pos >= 0, bias, -jnp.inf)


def _step_bias(module: GPT | StereoTransformer, kv: KVCache, position: jax.Array, n: int):
  """(bias, the new frames' slots) for a step of n frames at `position` over caches like kv.

  Also checks that the step fits the cache and has no dropout randomness (eval mode)."""
  context, size = _context(module), kv.keys.shape[-2]
  if n > size - context + 1:
    raise ValueError(f'a step of {n} frames needs a cache of context + {n - 1} slots; this one '
                     f'was made for steps of {size - context + 1} (init_cache(step_frames=...))')
  if any(isinstance(m, nnx.Dropout) and m.rate > 0 and not m.deterministic
         for _, m in nnx.iter_modules(module)):
    raise ValueError('streaming runs in eval mode: call .eval() on the model first')
  return (_ring_bias(module.slopes, position + n, size, n, context),
          (position + jnp.arange(n)) % size)


def _cached_attention(mha: MultiHeadAttention, kv: KVCache, query: jax.Array, source: jax.Array,
                      bias: jax.Array, slots: jax.Array) -> tuple[jax.Array, KVCache]:
  """source's n new frames take their slots in the cache (in place under donation), then query
  [B, n, D] attends to the cache."""
  k, v = (t.astype(kv.keys.dtype) for t in mha.keys_values(source))
  kv = KVCache(kv.keys.at[:, :, slots].set(k), kv.values.at[:, :, slots].set(v))
  return mha.attend(query, kv.keys, kv.values, bias), kv


def _layer_step(layer: TransformerLayer, kv: KVCache, x: jax.Array, bias: jax.Array,
                slots: jax.Array, cross_kv: KVCache | None = None,
                source: jax.Array | None = None):
  """`layer` on n new frames x over its caches -> (y, new kv, new cross kv)."""
  h = layer.ln_self_attn(x)
  attn, kv = _cached_attention(layer.mha, kv, h, h, bias, slots)
  h = layer.add_self_attention(x, attn)
  if cross_kv is not None:
    attn, cross_kv = _cached_attention(layer.mha_cross, cross_kv, layer.ln_src_attn(h),
                                       layer.cross_source(source), bias, slots)
    h = layer.add_cross_attention(h, attn)
  return layer.add_feed_forward(h), kv, cross_kv


def _gpt_layers(gpt: GPT, cache: GPTCache, x: jax.Array, bias: jax.Array,
                slots: jax.Array) -> tuple[GPTCache, jax.Array]:
  """`gpt_step` given the step's bias and slots (shared with the stereo stack's cross layers)."""
  new_layers = []
  for layer, kv in zip(gpt.layers, cache.layers):
    x, kv, _ = _layer_step(layer, kv, x, bias, slots)
    new_layers.append(kv)
  y = x if gpt.final_norm is None else gpt.final_norm(x)
  return GPTCache(tuple(new_layers), cache.position + x.shape[-2]), y


def gpt_step(gpt: GPT, cache: GPTCache, x: jax.Array) -> tuple[GPTCache, jax.Array]:
  """n new frames x [B, n, D] (n <= the cache's step_frames) -> (new cache, [B, n, D]), equal to
  the offline `gpt` over the whole stream at those frames (in eval mode)."""
  return _gpt_layers(gpt, cache, x, *_step_bias(gpt, cache.layers[0], cache.position,
                                                 x.shape[-2]))


def stereo_step(stereo: StereoTransformer, cache: StereoCache, x1: jax.Array, x2: jax.Array
                ) -> tuple[StereoCache, tuple[jax.Array, jax.Array, jax.Array]]:
  """n new frames of each speaker x1, x2 [B, n, D] -> (new cache, (x, x1, x2) as the offline
  `stereo` gives them at those frames, in eval mode)."""
  bias, slots = _step_bias(stereo, cache.channel.layers[0], cache.channel.position,
                           x1.shape[-2])
  channel, x = _gpt_layers(stereo.ar_channel, cache.channel,
                           layers.speakers_as_batch(x1, x2), bias, slots)
  cross_layers = []
  for layer, (kv, cross_kv) in zip(stereo.cross_layers, cache.cross_layers):
    x, kv, cross_kv = _layer_step(layer, kv, x, bias, slots, cross_kv,
                                  source=layers.partners(x))
    cross_layers.append((kv, cross_kv))
  if stereo.final_norm is not None:
    x = stereo.final_norm(x)
  x1, x2 = layers.speakers_apart(x)
  return StereoCache(channel, tuple(cross_layers)), (stereo.combinator(x1, x2), x1, x2)
