"""The unit language model: the stereo VAP model over k-means units instead of audio.

Each speaker's unit sequence (`convssl_jax.units`, one unit per model frame) is embedded and goes
through the stereo body (per-speaker causal GPT, cross-attention, VAP and VAD heads); a linear
head on each speaker's stream predicts that speaker's next unit. The reference's early ULM
(reference/vap_spec.md section 9) trained total = 0.6 VAP + 0.4 next-unit cross-entropy;
`configs/ulm.py` sets those weights.
"""

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from convssl_jax.models import frontends, layers
from convssl_jax.models.vap import StereoBody, both, compute_dtype, per_example, speakers
from convssl_jax.objective import VAPObjective


class UnitLM(frontends.UnitFrontend, StereoBody):
  """units [B, 2, N] int -> the stereo body's outputs plus next-unit logits 'units' [B, N, 2, K]."""

  inputs = ('units',)
  mono_mix = False

  def __init__(self, cfg, *, rngs: nnx.Rngs):
    dtype = compute_dtype(cfg.dtype)
    self.init_unit_frontend(cfg, dtype, rngs)
    self.init_stereo_body(cfg, dtype, rngs)
    self.unit_head = layers.linear(cfg.dim, cfg.units, dtype=dtype, rngs=rngs)

  def __call__(self, units: jax.Array) -> dict[str, Any]:
    """units [B, 2, N] (channel 0 = speaker A)."""
    if units.ndim != 3 or units.shape[1] != 2:
      raise ValueError(f'the unit LM takes units [B, 2, frames], got {units.shape}')
    return self.body_outputs(self.encode(both(units)))

  def head_outputs(self, x: jax.Array, x1: jax.Array, x2: jax.Array) -> dict[str, Any]:
    out = super().head_outputs(x, x1, x2)
    out['units'] = jnp.stack([self.unit_head(x1), self.unit_head(x2)], axis=-2)
    return out

  def forward(self, batch, frames: int) -> dict[str, Any]:
    del frames
    return self(batch['units'])

  def losses(self, out, batch, objective: VAPObjective, frames: int):
    terms, metrics = self.body_losses(out, batch, objective, frames)
    terms['unit'], metrics['unit_accuracy'] = per_example(next_unit_loss, out['units'],
                                                          batch['units'], speakers(batch))
    return terms, metrics


def next_unit_loss(logits: jax.Array, units: jax.Array, channels: jax.Array
                   ) -> tuple[jax.Array, jax.Array]:
  """(cross-entropy, accuracy) of predicting unit t + 1 from frame t: logits [B, N, 2, K],
  units [B, 2, N]; the last frame has no target. Averaged over the channels that hold a speaker
  (`channels` [B, 2] {0, 1}, `vap.speakers`: a monologue's silent partner has no term, as it
  has no CPC term)."""
  targets = jnp.swapaxes(units, 1, 2)[:, 1:]  # [B, N - 1, 2]
  logits = logits[:, :-1].astype(jnp.float32)
  weight = jnp.broadcast_to(channels[:, None, :].astype(jnp.float32), targets.shape)
  total = jnp.maximum(weight.sum(), 1.0)
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  hit = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
  return (loss * weight).sum() / total, (hit * weight).sum() / total
