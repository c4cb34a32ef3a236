"""Output heads and the VA conditioning of the mono model, with the F0 head's loss.

The VAP head's shape follows the objective: 2^(2*n_bins) classes (discrete), 2 x n_bins logits
(independent, speaker A first), or one logit (comparative). The F0 head is the original design's
F0 reconstruction: per speaker and frame, a voiced/unvoiced logit and a log-F0 regression.
"""

from typing import Literal

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from convssl_jax.models import layers

HeadType = Literal['discrete', 'independent', 'comparative']


class VAPHead(nnx.Module):
  """Linear projection of the model stream to VAP logits."""

  def __init__(self, dim: int, head: HeadType, n_bins: int, *, dtype=None, param_dtype=jnp.float32,
               rngs: nnx.Rngs):
    sizes = {'discrete': 2 ** (2 * n_bins), 'independent': 2 * n_bins, 'comparative': 1}
    if head not in sizes:
      raise ValueError(f'unknown VAP head type {head!r}; expected one of {sorted(sizes)}')
    self.head, self.n_bins = head, n_bins
    self.proj = layers.linear(dim, sizes[head], dtype=dtype, param_dtype=param_dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    """[B, N, D] -> [B, N, classes] | [B, N, 2, n_bins] | [B, N, 1]."""
    logits = self.proj(x)
    if self.head == 'independent':
      logits = logits.reshape(*logits.shape[:-1], 2, self.n_bins)
    return logits


class VACondition(nnx.Module):
  """conv_ssl's VA conditioning: LN(Linear(current VA) + Linear(VA history)), added to the audio."""

  def __init__(self, dim: int, history_bins: int = 5, *, dtype=None, param_dtype=jnp.float32,
               rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.va_proj = layers.linear(2, dim, **kw)
    self.history_proj = layers.linear(history_bins, dim, **kw) if history_bins else None
    self.ln = layers.layer_norm(dim, **kw)

  def __call__(self, va: jax.Array, va_history: jax.Array | None = None) -> jax.Array:
    """va [B, N, 2], va_history [B, N, history_bins] -> [B, N, D]."""
    v = self.va_proj(va)
    if self.history_proj is not None:
      if va_history is None:
        raise ValueError('this model is conditioned on VA history: pass va_history [B, N, bins]')
      v = v + self.history_proj(va_history)
    return self.ln(v)


class F0Head(nnx.Module):
  """Per speaker and frame: a voiced logit and log F0 (natural log of Hz)."""

  def __init__(self, dim: int, speakers: int, *, dtype=None, param_dtype=jnp.float32,
               rngs: nnx.Rngs):
    self.speakers = speakers
    self.proj = layers.linear(dim, 2 * speakers, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
    """[B, N, D] -> {'voiced': [B, N, speakers], 'log_f0': [B, N, speakers]}."""
    out = self.proj(x).reshape(*x.shape[:-1], self.speakers, 2)
    return {'voiced': out[..., 0], 'log_f0': out[..., 1]}


def f0_loss(f0_pred: dict[str, jax.Array], f0_hz: jax.Array) -> jax.Array:
  """BCE on voicing plus squared log-F0 error on voiced frames only; f0_hz [B, N, 2], 0 = unvoiced."""
  voiced = f0_hz > 0
  voicing = optax.sigmoid_binary_cross_entropy(
      f0_pred['voiced'].astype(jnp.float32), voiced.astype(jnp.float32)).mean()
  error = jnp.square(f0_pred['log_f0'].astype(jnp.float32) - jnp.log(jnp.where(voiced, f0_hz, 1.0)))
  regression = jnp.sum(jnp.where(voiced, error, 0.0)) / jnp.maximum(voiced.sum(), 1)
  return voicing + regression


def vad_loss(vad_logits: jax.Array, va: jax.Array, speakers: jax.Array | None = None
             ) -> jax.Array:
  """The stereo model's VAD loss: BCE of the per-speaker logits [B, N, 2] against the current
  frames' VA, averaged over the frames of the channels that hold a speaker (`speakers` [B, 2]
  {0, 1}; a monologue's pretend partner has no VAD term; None: both channels)."""
  bce = optax.sigmoid_binary_cross_entropy(vad_logits.astype(jnp.float32),
                                           va.astype(jnp.float32))
  if speakers is None:
    return bce.mean()
  weight = jnp.broadcast_to(speakers[..., None, :].astype(jnp.float32), bce.shape)
  return (bce * weight).sum() / jnp.maximum(weight.sum(), 1.0)
