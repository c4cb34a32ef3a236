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

from convssl_jax.models import layers
from convssl_jax.models.vap import StereoVAP


class UnitLM(StereoVAP):
  """units [B, 2, N] int -> the stereo model's outputs plus next-unit logits 'units' [B, N, 2, K]."""

  def __init__(self, cfg, *, rngs: nnx.Rngs):
    super().__init__(cfg, rngs=rngs)
    self.unit_head = layers.linear(cfg.dim, cfg.units, dtype=self.embedding.dtype, rngs=rngs)

  def _init_encoder(self, cfg, dtype, rngs: nnx.Rngs):
    if cfg.units < 2:
      raise ValueError(f'model.units (the codebook size) must be >= 2, got {cfg.units}')
    self.encoder = self.downsample = None
    self.embedding = nnx.Embed(cfg.units, cfg.dim, dtype=dtype, rngs=rngs)

  def encode(self, units: jax.Array, features: None = None) -> jax.Array:
    """units [B', N] int -> embeddings [B', N, D] (the units are the features)."""
    return self.embedding(units)

  def head_outputs(self, x: jax.Array, x1: jax.Array, x2: jax.Array) -> dict[str, Any]:
    out = super().head_outputs(x, x1, x2)
    out['units'] = jnp.stack([self.unit_head(x1), self.unit_head(x2)], axis=-2)
    return out


def next_unit_loss(logits: jax.Array, units: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(cross-entropy, accuracy) of predicting unit t + 1 from frame t: logits [B, N, 2, K],
  units [B, 2, N]; the last frame has no target."""
  targets = jnp.swapaxes(units, 1, 2)[:, 1:]  # [B, N - 1, 2]
  logits = logits[:, :-1].astype(jnp.float32)
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()
  return loss, (jnp.argmax(logits, axis=-1) == targets).mean()
