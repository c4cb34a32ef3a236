"""CPC_audio's InfoNCE objective as pure functions (Oord et al. 2018; Riviere et al. 2020).

From the context c_t (the LSTM output) one linear predictor per step k = 1..K predicts the
encoder frame z_{t+k} (the conv stack output); each prediction is scored against the true frame
and `n` negatives by the mean over channels of their product (CPC_audio's `PredictionNetwork`,
no temperature), and the loss is the cross-entropy of picking the true one. Anchors are the
first W = T - K frames of a sequence, so every positive exists. Negatives follow CPC_audio's
`sampleClean`: for anchor t, a random sequence of the batch (or, `within_sequence`, the anchor's
own) at time (t + r) mod T with r uniform in [1, T), so never the anchor's own frame.

CPC_audio sums the K per-step losses; here the loss is their mean (one prediction's
cross-entropy, log(n + 1) at chance), so its scale does not change with K. Accuracy counts a
prediction as right only when the true frame scores strictly above every negative (a tie, e.g.
an all-silent sequence, is not a hit; CPC_audio's argmax would take the first of tied scores).
"""

import jax
import jax.numpy as jnp


def sample_negatives(key: jax.Array, n_sequences: int, length: int, window: int, n: int,
                     within_sequence: bool = False) -> tuple[jax.Array, jax.Array]:
  """(sequence, time) indices [S, n, W] of the `n` negatives of each anchor t < `window`."""
  if length < 2:
    raise ValueError(f'InfoNCE negatives need sequences of at least 2 frames, got {length}')
  seq_key, time_key = jax.random.split(key)
  shape = (n_sequences, n, window)
  if within_sequence:
    sequence = jnp.broadcast_to(jnp.arange(n_sequences)[:, None, None], shape)
  else:
    sequence = jax.random.randint(seq_key, shape, 0, n_sequences)
  offset = jax.random.randint(time_key, shape, 1, length)
  return sequence, (jnp.arange(window) + offset) % length


def logits(predictions: jax.Array, z: jax.Array, negatives: tuple[jax.Array, jax.Array]
           ) -> jax.Array:
  """predictions [S, W, K, D] (predictor k-1's output at anchor t), z [S, T, D] with T >= W + K,
  negatives from `sample_negatives` -> scores [S, W, K, 1 + n], the true frame z_{t+k} first."""
  window, steps, dim = predictions.shape[1:]
  if z.shape[1] < window + steps:
    raise ValueError(f'{steps} prediction steps from {window} anchors need {window + steps} '
                     f'frames, got {z.shape[1]}')
  predictions = predictions.astype(jnp.float32)
  z = z.astype(jnp.float32)
  positives = jnp.stack([z[:, k + 1:k + 1 + window] for k in range(steps)], axis=2)
  positive = jnp.mean(predictions * positives, axis=-1)  # [S, W, K]
  sequence, time = negatives
  negative = jnp.einsum('swkd,snwd->swkn', predictions, z[sequence, time]) / dim
  return jnp.concatenate([positive[..., None], negative], axis=-1)


def infonce(scores: jax.Array, weight: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """(mean cross-entropy, mean accuracy) of `scores` [..., 1 + n] with the true candidate at 0,
  weighted by `weight` (broadcast to scores.shape[:-1]; e.g. 0 for a silent channel)."""
  scores = scores.astype(jnp.float32)
  loss = jax.nn.logsumexp(scores, axis=-1) - scores[..., 0]
  hit = (scores[..., 0] > jnp.max(scores[..., 1:], axis=-1)).astype(jnp.float32)
  weight = jnp.broadcast_to(jnp.ones(()) if weight is None else weight, loss.shape)
  total = jnp.maximum(weight.sum(), 1e-9)
  return (loss * weight).sum() / total, (hit * weight).sum() / total
