"""CPC_audio's InfoNCE: hand-derived scores and losses, and the negatives' sampling rule."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from convssl_jax import cpc_objective


def test_scores_losses_and_accuracy_of_a_hand_derived_case():
  # One sequence z = 1, 2, 3 (D = 1), one step (K = 1), so anchors t = 0, 1 predict z_1, z_2.
  z = jnp.array([[[1.0], [2.0], [3.0]]])
  predictions = jnp.array([[[[1.0]], [[0.5]]]])  # [S=1, W=2, K=1, D=1]: a = 1, b = 0.5
  negatives = (jnp.zeros((1, 1, 2), jnp.int32), jnp.array([[[2, 0]]]))  # t=0 -> z_2, t=1 -> z_0
  scores = cpc_objective.logits(predictions, z, negatives)
  np.testing.assert_allclose(scores[0, :, 0], [[2.0, 3.0], [1.5, 0.5]])  # [true, negative]
  loss, accuracy = cpc_objective.infonce(scores)
  np.testing.assert_allclose(loss, (np.log1p(np.e) + np.log1p(np.exp(-1.0))) / 2, rtol=1e-6)
  assert accuracy == 0.5  # t=0 scores its negative higher, t=1 its true frame


def test_scores_are_the_mean_over_channels_of_the_products():
  z = jnp.array([[[0.0, 0.0], [2.0, 4.0], [6.0, -2.0]]])
  predictions = jnp.array([[[[1.0, 3.0], [0.5, 0.5]]]])  # one anchor, K = 2
  scores = cpc_objective.logits(predictions, z, (jnp.zeros((1, 1, 1), jnp.int32),
                                                  jnp.zeros((1, 1, 1), jnp.int32)))
  np.testing.assert_allclose(scores[0, 0], [[(2 + 12) / 2, 0.0], [(3 - 1) / 2, 0.0]])


def _orthogonal_frames(sequences, length, dim):
  """Every frame of every sequence a different one-hot vector (dim >= sequences * length)."""
  return jnp.eye(dim)[:sequences * length].reshape(sequences, length, dim)


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_a_perfect_predictor_has_zero_loss_and_full_accuracy_whatever_the_negatives(seed):
  sequences, length, steps, n = 3, 10, 4, 16
  window = length - steps
  z = _orthogonal_frames(sequences, length, 32)
  predictions = 1000.0 * jnp.stack([z[:, k + 1:k + 1 + window] for k in range(steps)], axis=2)
  # Random negatives that avoid each prediction's true frame (a negative equal to it would tie).
  rng = np.random.default_rng(seed)
  sequence = rng.integers(0, sequences, (sequences, n, window))
  time = rng.integers(0, length, (sequences, n, window))
  own = sequence == np.arange(sequences)[:, None, None]
  time = np.where(own, np.minimum(time, np.arange(window)), time)  # own frames <= t: no positive
  scores = cpc_objective.logits(predictions, z, (jnp.asarray(sequence), jnp.asarray(time)))
  loss, accuracy = cpc_objective.infonce(scores)
  assert float(loss) < 1e-6 and float(accuracy) == 1.0


def test_a_predictor_that_says_nothing_is_at_chance_log_n_plus_one_and_never_right():
  z = jax.random.normal(jax.random.key(0), (4, 20, 8))
  negatives = cpc_objective.sample_negatives(jax.random.key(1), 4, 20, 8, n=31)
  scores = cpc_objective.logits(jnp.zeros((4, 8, 12, 8)), z, negatives)
  loss, accuracy = cpc_objective.infonce(scores)
  np.testing.assert_allclose(loss, np.log(32), rtol=1e-6)
  assert accuracy == 0.0  # every score ties: not a hit


def test_weights_leave_out_masked_sequences():
  scores = jnp.array([[[0.0, 5.0]], [[3.0, 0.0]]])  # sequence 0 wrong, sequence 1 right
  loss, accuracy = cpc_objective.infonce(scores, jnp.array([[0.0], [1.0]]))
  np.testing.assert_allclose(loss, np.log1p(np.exp(-3.0)), rtol=1e-6)
  assert accuracy == 1.0


@pytest.mark.parametrize('within_sequence', [False, True])
def test_negatives_follow_cpc_audio_sampling(within_sequence):
  sequences, length, window, n = 5, 40, 30, 64
  sequence, time = cpc_objective.sample_negatives(jax.random.key(3), sequences, length, window, n,
                                                  within_sequence)
  sequence, time = np.asarray(sequence), np.asarray(time)
  assert sequence.shape == time.shape == (sequences, n, window)
  offset = (time - np.arange(window)) % length  # r in (t + r) mod T
  assert offset.min() >= 1 and offset.max() <= length - 1  # never the anchor's own frame
  assert len(np.unique(offset)) > length // 2  # spread over the sequence
  if within_sequence:
    assert np.all(sequence == np.arange(sequences)[:, None, None])
  else:
    assert sorted(np.unique(sequence)) == list(range(sequences))
  # A different key draws different negatives.
  other = cpc_objective.sample_negatives(jax.random.key(4), sequences, length, window, n,
                                         within_sequence)
  assert not np.array_equal(np.asarray(other[1]), time)


def test_too_short_sequences_are_an_error():
  with pytest.raises(ValueError, match='3 prediction steps from 2 anchors need 5 frames, got 4'):
    cpc_objective.logits(jnp.zeros((1, 2, 3, 1)), jnp.zeros((1, 4, 1)),
                         (jnp.zeros((1, 1, 2), jnp.int32),) * 2)
