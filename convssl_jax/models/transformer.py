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
causal/context mask as a mask (cuDNN's fused kernel on a GPU for bf16/fp16, XLA's otherwise),
except while attention-weight dropout is active, which that function does not offer: then the
explicit einsum/softmax path runs (`attention='einsum'` forces it). Both give the same numbers.

`init_cache` / `gpt_step` run a GPT with a bounded context incrementally, n frames a step, over a
fixed-size ring-buffer key/value cache per layer; the outputs equal the offline ones.
"""

import math
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
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
  if jax.default_backend() == 'gpu' and q.dtype in (jnp.bfloat16, jnp.float16):
    try:  # cuDNN's fused kernel; it refuses (at trace time) shapes it does not support
      return jax.nn.dot_product_attention(q, k, v, bias.astype(q.dtype), visible[None],
                                          scale=scale, implementation='cudnn')
    except (NotImplementedError, RuntimeError):
      pass
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
    return self.after_self_attention(x, self.mha(h, h, bias), bias, source)

  def after_self_attention(self, x: jax.Array, attn: jax.Array, bias: jax.Array | None = None,
                           source: jax.Array | None = None) -> jax.Array:
    """The rest of the layer given its input x and self-attention output attn (both [B, T, D])."""
    h = x + self.dropout(attn)
    if self.double_residual:
      h = x + h
    if self.mha_cross is not None:
      if source is None:
        raise ValueError('a cross-attention layer needs the other speaker stream as `source`')
      kv = source if self.ln_src_kv is None else self.ln_src_kv(source)
      h = h + self.dropout(self.mha_cross(self.ln_src_attn(h), kv, bias))
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
    batch = x1.shape[0]
    x = self.ar_channel(jnp.concatenate([x1, x2], axis=0))
    bias = causal_alibi_bias(self.slopes, x.shape[-2], self.context)
    for layer in self.cross_layers:
      x = layer(x, bias, source=jnp.roll(x, batch, axis=0))  # each speaker's source is the other
    if self.final_norm is not None:
      x = self.final_norm(x)
    x1, x2 = x[:batch], x[batch:]
    return self.combinator(x1, x2), x1, x2


class KVCache(NamedTuple):
  """One attention layer's ring buffer: frame p's key and value sit in slot p % C."""
  keys: jax.Array  # [B, heads, C, head_dim]
  values: jax.Array  # [B, heads, C, head_dim]


class GPTCache(NamedTuple):
  """What a GPT stream carries between steps; the same shapes at every step."""
  layers: tuple[KVCache, ...]  # per layer
  position: jax.Array  # int32 []: frames seen so far, the absolute position of the next frame


def _cache_size(gpt: GPT) -> int:
  """C = the attention context: the keys a frame may attend back to, bounding the cache."""
  if gpt.context is None:
    raise ValueError('streaming needs a bounded attention context (GPT(context=...)): with '
                     'unbounded context the key/value cache would grow without limit')
  return gpt.context


def init_cache(gpt: GPT, batch: int) -> GPTCache:
  """The cache before any frame: zero keys/values, all slots empty (position 0)."""
  size = _cache_size(gpt)

  def empty(mha: MultiHeadAttention) -> KVCache:
    dim = mha.key.out_features
    zeros = jnp.zeros((batch, mha.num_heads, size, dim // mha.num_heads),
                      mha.key.dtype or mha.key.param_dtype)
    return KVCache(zeros, zeros)

  return GPTCache(tuple(empty(layer.mha) for layer in gpt.layers), jnp.zeros((), jnp.int32))


def _ring_bias(slopes: np.ndarray, position: jax.Array, size: int, n: int,
               context: int) -> jax.Array:
  """The bias [heads, n, C + n] of frames position..position+n-1 over the cache slots then
  themselves: slot s holds the latest frame p < position with p % C == s (empty while p < 0)."""
  slot_pos = position - size + (jnp.arange(size) - position) % size
  new_pos = position + jnp.arange(n)
  bias = alibi_bias(slopes, new_pos, jnp.concatenate([slot_pos, new_pos]), context)
  filled = jnp.concatenate([slot_pos >= 0, jnp.ones(n, bool)])
  return jnp.where(filled, bias, -jnp.inf)


def _check_eval(gpt: GPT) -> None:
  """The step has no dropout randomness: every active dropout must be in eval mode."""
  if any(isinstance(m, nnx.Dropout) and m.rate > 0 and not m.deterministic
         for _, m in nnx.iter_modules(gpt)):
    raise ValueError('streaming runs in eval mode: call gpt.eval() first')


def gpt_step(gpt: GPT, cache: GPTCache, x: jax.Array) -> tuple[GPTCache, jax.Array]:
  """n new frames x [B, n, D] (n <= C) -> (new cache, [B, n, D]), equal to the offline `gpt` over
  the whole stream at those frames (in eval mode)."""
  size, n = _cache_size(gpt), x.shape[-2]
  if n > size:
    raise ValueError(f'a step of {n} frames exceeds the cache of {size} (the context)')
  _check_eval(gpt)
  bias = _ring_bias(gpt.slopes, cache.position, size, n, gpt.context)
  slots = (cache.position + jnp.arange(n)) % size
  new_layers = []
  for layer, kv in zip(gpt.layers, cache.layers):
    h = layer.ln_self_attn(x)
    k, v = (t.astype(kv.keys.dtype) for t in layer.mha.keys_values(h))
    attn = layer.mha.attend(h, jnp.concatenate([kv.keys, k], axis=-2),
                            jnp.concatenate([kv.values, v], axis=-2), bias)
    new_layers.append(KVCache(kv.keys.at[:, :, slots].set(k), kv.values.at[:, :, slots].set(v)))
    x = layer.after_self_attention(x, attn)
  y = x if gpt.final_norm is None else gpt.final_norm(x)
  return GPTCache(tuple(new_layers), cache.position + n), y
