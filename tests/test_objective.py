"""VAP objective: bins, codebook, labels, losses and zero-shot probabilities.

Expected values are derived by hand (see the comments) or by the plain-python re-derivations below,
never by the code under test.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from convssl_jax import objective as vo
from convssl_jax.objective import VAPObjective


# Plain re-derivations of the reference semantics (vap_spec.md section 3).

def ref_bins(va, bin_frames, threshold=0.5):
  """Loop version: the window of frame t is t+1..t+H, bin k active if mean >= threshold."""
  horizon = sum(bin_frames)
  n = len(va) - horizon
  out = np.zeros((n, 2, len(bin_frames)), np.float32)
  for t in range(n):
    start = t + 1
    for k, size in enumerate(bin_frames):
      for c in range(2):
        out[t, c, k] = float(np.mean(va[start:start + size, c]) >= threshold)
      start += size
  return out


def ref_class(bits):
  """Class id of one [2, n_bins] bit grid: bit (c, b) is worth 2**(n_bins*c + b)."""
  n_bins = len(bits[0])
  return sum(int(bits[c][b]) << (n_bins * c + b) for c in range(2) for b in range(n_bins))


def ref_comparative(va, horizon):
  n = len(va) - horizon
  out = np.zeros(n, np.float64)
  for t in range(n):
    a, b = va[t + 1:t + 1 + horizon].sum(0)
    out[t] = a / (a + b + 1e-9)
  return out


def random_va(rng, shape, switch=0.08):
  """Binary VA with runs: each channel flips with probability `switch` per frame."""
  flips = rng.random(shape) < switch
  return (np.cumsum(flips, axis=-2) % 2).astype(np.float32)


# Bins and horizon.

@pytest.mark.parametrize('frame_hz, frames, horizon', [
    (20, (4, 8, 12, 16), 40),
    (50, (10, 20, 30, 40), 100),
    (100, (20, 40, 60, 80), 200),
])
def test_bin_frames_and_horizon_at_each_frame_rate(frame_hz, frames, horizon):
  obj = VAPObjective(frame_hz=frame_hz)
  assert obj.bin_frames == frames
  assert obj.horizon_frames == horizon
  assert obj.n_bins == 4 and obj.n_classes == 256


def test_bins_that_are_not_whole_frames_are_refused():
  # 40 x 50 ms at 50 Hz: each bin truncates to 2 frames, 80 in all, but the times span 100.
  assert int(np.float32(0.05) * 50) == 2
  with pytest.raises(ValueError, match='not whole frames at 50 Hz.*80 frames instead of the 100'):
    VAPObjective(bin_times=(0.05,) * 40, frame_hz=50, head='independent', pre_frames=12)


def test_bin_frames_truncate_the_float32_product():
  # 0.6 * 50 is 30.000002 in float32: truncation (not rounding) still gives 30.
  assert float(np.float32(0.6) * np.float32(50)) > 30.0
  assert vo.bin_times_to_frames((0.6,), 50) == (30,)


def test_independent40_at_100hz_has_5_frame_bins():
  obj = VAPObjective(bin_times=(0.05,) * 40, frame_hz=100, head='independent', pre_frames=12)
  assert obj.bin_frames == (5,) * 40
  assert obj.horizon_frames == 200
  assert obj.n_bins == 40 and obj.n_classes is None


def test_discrete_head_rejects_more_than_5_bins():
  with pytest.raises(ValueError):
    VAPObjective(bin_times=(0.1,) * 6)


# Codebook and subsets.

def test_codebook_is_lsb_first_over_speaker_then_bin():
  cb = vo.codebook()
  assert cb.shape == (256, 2, 4)
  for i in range(256):
    bits = [(i >> p) & 1 for p in range(8)]  # LSB first
    np.testing.assert_array_equal(cb[i], np.array(bits).reshape(2, 4))
  np.testing.assert_array_equal(cb[1], [[1, 0, 0, 0], [0, 0, 0, 0]])  # A bin 0 = bit 0
  np.testing.assert_array_equal(cb[128], [[0, 0, 0, 0], [0, 0, 0, 1]])  # B bin 3 = bit 7
  np.testing.assert_array_equal(cb[15], [[1, 1, 1, 1], [0, 0, 0, 0]])
  np.testing.assert_array_equal(cb[240], [[0, 0, 0, 0], [1, 1, 1, 1]])


def test_class_to_bins_and_bins_to_class_are_inverse():
  idx = np.arange(256)
  bins = np.asarray(vo.class_to_bins(idx, 4))
  np.testing.assert_array_equal(bins, vo.codebook(4))
  np.testing.assert_array_equal(np.asarray(vo.bins_to_class(bins)), idx)
  assert int(vo.bins_to_class(np.array([[1, 1, 0, 0], [0, 0, 0, 1]]))) == 3 + 128


def test_silence_subsets_match_spec():
  obj = VAPObjective()
  np.testing.assert_array_equal(obj.subset_silence, [[12, 13, 14, 15], [192, 208, 224, 240]])
  np.testing.assert_array_equal(obj.subset_silence_hold, [[192, 208, 224, 240], [12, 13, 14, 15]])


def test_active_subsets_match_spec():
  obj = VAPObjective()
  np.testing.assert_array_equal(
      obj.subset_active,
      [[12, 13, 14, 15, 28, 29, 30, 31, 60, 61, 62, 63],
       [192, 193, 195, 208, 209, 211, 224, 225, 227, 240, 241, 243]])
  np.testing.assert_array_equal(obj.subset_active_hold, [[192, 208, 224, 240], [12, 13, 14, 15]])


def test_backchannel_subsets_are_the_56_class_sets():
  obj = VAPObjective()
  bc_a = {a + 16 * b for a in range(1, 8) for b in range(8, 16)}
  bc_b = {a + 16 * b for a in range(8, 16) for b in range(1, 8)}
  assert len(bc_a) == len(bc_b) == 56
  assert set(obj.subset_backchannel[0].tolist()) == bc_a
  assert set(obj.subset_backchannel[1].tolist()) == bc_b


def test_dialog_states_codes():
  va = np.array([[1, 0], [0, 0], [1, 1], [0, 1]], np.float32)
  np.testing.assert_array_equal(np.asarray(vo.dialog_states(va)), [0, 1, 2, 3])


# Labels.

def test_labels_future_segment_activates_bins_0_and_1_at_50hz():
  obj = VAPObjective(frame_hz=50)  # bins of 10, 20, 30, 40 frames
  va = np.zeros((2 + 100, 2), np.float32)
  va[1:31, 0] = 1  # A speaks in frames 1..30 = bins 0 and 1 of frame 0's window
  labels = np.asarray(obj.labels(va))
  assert labels.shape == (2,) and labels.dtype == np.int32
  # t=0: bin0 = frames 1..10 (10/10), bin1 = 11..30 (20/20) -> bits 0,1 -> 3.
  # t=1: bin0 = 2..11 (10/10), bin1 = 12..31 (19/20), bin2 = 32..61 (0) -> 3.
  np.testing.assert_array_equal(labels, [3, 3])


def test_label_window_excludes_the_current_frame():
  obj = VAPObjective(frame_hz=50)
  va = np.zeros((3 + 100, 2), np.float32)
  va[0, 0] = 1  # only frame 0: never in any window (windows start at t+1)
  va[1, 1] = 1  # frame 1 is in frame 0's window (1/10 of B's bin 0, inactive)
  np.testing.assert_array_equal(np.asarray(obj.bins(va)), np.zeros((3, 2, 4)))
  va[1:6, 1] = 1  # 5/10 of B's bin 0 for t=0; 4/10 for t=1 (frames 2..11)
  bins = np.asarray(obj.bins(va))
  assert bins[0, 1, 0] == 1 and bins[1, 1, 0] == 0


@pytest.mark.parametrize('frame_hz, speaker, bin_idx, start, size, bit', [
    (50, 0, 0, 0, 10, 0),  # A bin 0 at 50 Hz: window offsets 0..9
    (50, 1, 3, 60, 40, 7),  # B bin 3 at 50 Hz: offsets 60..99
    (100, 0, 1, 20, 40, 1),  # A bin 1 at 100 Hz: offsets 20..59
    (100, 1, 2, 60, 60, 6),  # B bin 2 at 100 Hz: offsets 60..119
])
def test_bin_threshold_is_half_inclusive(frame_hz, speaker, bin_idx, start, size, bit):
  obj = VAPObjective(frame_hz=frame_hz)
  va = np.zeros((1 + obj.horizon_frames, 2), np.float32)
  first = 1 + start  # frame 0's window starts at frame 1
  va[first:first + size // 2, speaker] = 1  # exactly 50 % of the bin
  assert int(obj.labels(va)[0]) == 2 ** bit
  va[first + size // 2 - 1, speaker] = 0  # one frame less
  assert int(obj.labels(va)[0]) == 0


def test_n_labels_from_n_plus_h_frames_and_too_short_input_fails():
  obj = VAPObjective(frame_hz=50)
  assert obj.labels(np.zeros((7 + 100, 2))).shape == (7,)
  with pytest.raises(ValueError):
    obj.labels(np.zeros((100, 2)))


@pytest.mark.parametrize('frame_hz', [20, 50, 100])
def test_bins_and_labels_match_loop_rederivation(frame_hz):
  obj = VAPObjective(frame_hz=frame_hz)
  va = random_va(np.random.default_rng(frame_hz), (40 + obj.horizon_frames, 2))
  expected = ref_bins(va, obj.bin_frames)
  np.testing.assert_array_equal(np.asarray(obj.bins(va)), expected)
  np.testing.assert_array_equal(np.asarray(obj.labels(va)), [ref_class(b) for b in expected])


def test_independent40_bins_match_loop_rederivation():
  obj = VAPObjective(bin_times=(0.05,) * 40, frame_hz=100, head='independent', pre_frames=12)
  va = random_va(np.random.default_rng(0), (30 + 200, 2))
  labels = np.asarray(obj.labels(va))
  assert labels.shape == (30, 2, 40) and labels.dtype == np.float32
  np.testing.assert_array_equal(labels, ref_bins(va, (5,) * 40))


def test_labels_with_batch_dims():
  obj = VAPObjective(frame_hz=20)
  va = random_va(np.random.default_rng(1), (2, 3, 25 + 40, 2))
  labels = np.asarray(obj.labels(va))
  assert labels.shape == (2, 3, 25)
  for i in range(2):
    for j in range(3):
      expected = [ref_class(b) for b in ref_bins(va[i, j], obj.bin_frames)]
      np.testing.assert_array_equal(labels[i, j], expected)
  np.testing.assert_array_equal(np.asarray(obj.labels(va[0])), labels[0])


def test_independent_labels_are_the_bins():
  obj = VAPObjective(frame_hz=50, head='independent')
  va = np.zeros((1 + 100, 2), np.float32)
  va[1:31, 0] = 1
  va[61:101, 1] = 1
  np.testing.assert_array_equal(np.asarray(obj.labels(va)),
                                [[[1, 1, 0, 0], [0, 0, 0, 1]]])


def test_comparative_labels_share_of_a_and_zero_for_silent_future():
  obj = VAPObjective(frame_hz=50, head='comparative')
  va = np.zeros((3 + 100, 2), np.float32)
  va[1:31, 0] = 1  # 30 frames of A in frame 0's window
  va[91:101, 1] = 1  # 10 frames of B
  # t=0: 30 / 40; t=1 (frames 2..101): 29 / 39; t=2 (frames 3..102): 28 / 38.
  np.testing.assert_allclose(np.asarray(obj.labels(va)), [30 / 40, 29 / 39, 28 / 38], rtol=1e-6)
  silent = np.zeros((2 + 100, 2), np.float32)
  silent[0] = 1  # the current frame does not count
  np.testing.assert_array_equal(np.asarray(obj.labels(silent)), [0.0, 0.0])
  va = random_va(np.random.default_rng(2), (2, 20 + 100, 2))
  for i in range(2):
    np.testing.assert_allclose(np.asarray(obj.labels(va))[i], ref_comparative(va[i], 100),
                               rtol=1e-6)


# Losses.

def np_log_softmax(x):
  x = x.astype(np.float64)
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def np_bce(x, y):
  p = 1 / (1 + np.exp(-x.astype(np.float64)))
  return -(y * np.log(p) + (1 - y) * np.log(1 - p))


def test_discrete_loss_is_mean_cross_entropy():
  obj = VAPObjective()
  rng = np.random.default_rng(3)
  logits = rng.normal(size=(2, 5, 256)).astype(np.float32)
  labels = rng.integers(0, 256, size=(2, 5))
  expected = -np.take_along_axis(np_log_softmax(logits), labels[..., None], -1).mean()
  np.testing.assert_allclose(float(obj.loss(logits, jnp.asarray(labels))), expected, rtol=1e-5)
  # A model run over all N+H frames: the trailing frames are dropped.
  longer = np.concatenate([logits, rng.normal(size=(2, 4, 256)).astype(np.float32)], axis=1)
  np.testing.assert_allclose(float(obj.loss(longer, jnp.asarray(labels))), expected, rtol=1e-5)


def test_independent_loss_is_mean_bce_over_frames_speakers_bins():
  obj = VAPObjective(head='independent')
  rng = np.random.default_rng(4)
  logits = rng.normal(size=(2, 5, 2, 4)).astype(np.float32) * 3
  labels = (rng.random((2, 5, 2, 4)) < 0.5).astype(np.float32)
  np.testing.assert_allclose(float(obj.loss(logits, jnp.asarray(labels))),
                             np_bce(logits, labels).mean(), rtol=1e-5)


def test_comparative_loss_is_soft_bce():
  obj = VAPObjective(head='comparative')
  rng = np.random.default_rng(5)
  logits = rng.normal(size=(3, 6, 1)).astype(np.float32)
  labels = rng.random((3, 6)).astype(np.float32)
  np.testing.assert_allclose(float(obj.loss(logits, jnp.asarray(labels))),
                             np_bce(logits[..., 0], labels).mean(), rtol=1e-5)


# Zero-shot next-speaker probabilities.

STATES = {'only_a': [1, 0], 'silence': [0, 0], 'both': [1, 1], 'only_b': [0, 1]}
VA_STATES = np.array(list(STATES.values()), np.float32)  # 4 frames, one per dialog state


def dist(**mass):
  """A [4, 256] distribution (same on every frame) with mass on the given classes (c<id>=p)."""
  p = np.zeros(256, np.float32)
  for name, value in mass.items():
    p[int(name[1:])] = value
  return np.tile(p, (4, 1))


def by_state(p):
  return {name: np.asarray(p)[i] for i, name in enumerate(STATES)}


def test_discrete_all_mass_on_a_speaking_on_predicts_a_in_every_state():
  obj = VAPObjective()
  p = by_state(obj.next_speaker_probs(dist(c15=1.0), VA_STATES))
  # sil_A = 1/(1+0), act_A = 1, act_B = 0 -> A next in every state.
  for name in STATES:
    np.testing.assert_allclose(p[name], [1, 0], err_msg=name)
  p = by_state(obj.next_speaker_probs(dist(c240=1.0), VA_STATES))
  for name in STATES:
    np.testing.assert_allclose(p[name], [0, 1], err_msg=name)


def test_discrete_mixture_uses_the_subset_of_each_dialog_state():
  obj = VAPObjective()
  # 15 in silence[A] and active[A]; 28 (A nav + B bin 0) only in active[A];
  # 240 in silence[B], active[B] and active_hold[A]; 195 (B nav + A bins 0,1) only in active[B];
  # 0 in no subset.
  probs = dist(c15=0.1, c28=0.3, c240=0.2, c195=0.1, c0=0.3)
  # sil_A = P{12..15} / (P{12..15} + P{192,208,224,240}) = 0.1 / 0.3; sil_B = 0.2 / 0.3.
  # act_A = P(active[A]) / (+ P(hold[A]={192,..,240})) = 0.4 / 0.6.
  # act_B = P(active[B]) / (+ P(hold[B]={12..15})) = 0.3 / 0.4.
  sil_a, sil_b, act_a, act_b = 1 / 3, 2 / 3, 2 / 3, 3 / 4
  p = by_state(obj.next_speaker_probs(probs, VA_STATES))
  np.testing.assert_allclose(p['silence'], [sil_a, sil_b], rtol=1e-6)
  np.testing.assert_allclose(p['only_a'], [1 - act_b, act_b], rtol=1e-6)
  np.testing.assert_allclose(p['only_b'], [act_a, 1 - act_a], rtol=1e-6)
  np.testing.assert_allclose(p['both'], [8 / 17, 9 / 17], rtol=1e-6)  # act / (2/3 + 3/4)


def test_discrete_empty_subsets_give_one_half_not_nan():
  obj = VAPObjective()
  p = np.asarray(obj.next_speaker_probs(dist(c0=1.0), VA_STATES))
  np.testing.assert_allclose(p, np.full((4, 2), 0.5))


def test_next_speaker_probs_with_batch_dims_match_per_example():
  obj = VAPObjective()
  rng = np.random.default_rng(6)
  probs = np.asarray(obj.probs(rng.normal(size=(2, 3, 10, 256)).astype(np.float32)))
  va = (rng.random((2, 3, 10, 2)) < 0.5).astype(np.float32)
  out = np.asarray(obj.next_speaker_probs(probs, va))
  assert out.shape == (2, 3, 10, 2)
  np.testing.assert_allclose(out[1, 2], np.asarray(obj.next_speaker_probs(probs[1, 2], va[1, 2])))


def test_independent_next_speaker_probs_by_state():
  obj = VAPObjective(head='independent', pre_frames=2)
  probs = np.tile(np.array([[0.1, 0.2, 0.3, 0.4], [0.5, 0.5, 0.1, 0.2]], np.float32), (4, 1, 1))
  # sil = all bins: A 1.0, B 1.3 -> (1/2.3, 1.3/2.3); act = bins 2..3: A 0.7, B 0.3 -> (0.7, 0.3).
  p = by_state(obj.next_speaker_probs(probs, VA_STATES))
  np.testing.assert_allclose(p['silence'], [1 / 2.3, 1.3 / 2.3], rtol=1e-6)
  np.testing.assert_allclose(p['only_a'], [0.7, 0.3], rtol=1e-6)  # (1 - act_B, act_B)
  np.testing.assert_allclose(p['only_b'], [0.7, 0.3], rtol=1e-6)  # (act_A, 1 - act_A)
  np.testing.assert_allclose(p['both'], [0.7, 0.3], rtol=1e-6)


def test_independent40_pre_frames_drops_12_leading_bins():
  obj = VAPObjective(bin_times=(0.05,) * 40, frame_hz=100, head='independent', pre_frames=12)
  a = np.array([0.9] * 12 + [0.1] * 28, np.float32)
  b = np.array([0.1] * 12 + [0.5] * 28, np.float32)
  probs = np.tile(np.stack([a, b]), (4, 1, 1))
  # sil: A 10.8 + 2.8 = 13.6, B 1.2 + 14 = 15.2; act (bins 12..39): A 2.8, B 14 -> A 1/6.
  p = by_state(obj.next_speaker_probs(probs, VA_STATES))
  np.testing.assert_allclose(p['silence'], [13.6 / 28.8, 15.2 / 28.8], rtol=1e-5)
  np.testing.assert_allclose(p['only_a'], [1 / 6, 5 / 6], rtol=1e-5)
  np.testing.assert_allclose(p['both'], [1 / 6, 5 / 6], rtol=1e-5)


def test_comparative_next_speaker_is_sigma_in_every_state():
  obj = VAPObjective(head='comparative')
  probs = np.full((4, 1), 0.7, np.float32)
  np.testing.assert_allclose(np.asarray(obj.next_speaker_probs(probs, VA_STATES)),
                             np.tile([0.7, 0.3], (4, 1)), rtol=1e-6)


# Backchannel probabilities.

def test_discrete_backchannel_probs():
  obj = VAPObjective()
  a_bc = 3 + 16 * 8  # A bins 0,1, not bin 3; B bin 3
  b_bc = 8 + 16 * 3  # mirror
  np.testing.assert_allclose(np.asarray(obj.backchannel_probs(dist(**{f'c{a_bc}': 1.0}))),
                             np.tile([1, 0], (4, 1)))
  np.testing.assert_allclose(np.asarray(obj.backchannel_probs(dist(**{f'c{b_bc}': 1.0}))),
                             np.tile([0, 1], (4, 1)))
  # 15 (A in all bins) and 8 (A only in bin 3) are no backchannel.
  mixed = dist(**{f'c{a_bc}': 0.4, 'c15': 0.3, 'c8': 0.3})
  np.testing.assert_allclose(np.asarray(obj.backchannel_probs(mixed)), np.tile([0.4, 0], (4, 1)),
                             rtol=1e-6)
  uniform = np.full((1, 256), 1 / 256, np.float32)
  np.testing.assert_allclose(np.asarray(obj.backchannel_probs(uniform)), [[56 / 256] * 2],
                             rtol=1e-6)


@pytest.mark.parametrize('a, b, expected', [
    # A's last bin (0.1) < B's (0.9) and max(A[:3]) = 0.6 > 0.1 -> 0.6; B's last > A's -> 0.
    ([0.2, 0.6, 0.3, 0.1], [0.1, 0.1, 0.1, 0.9], [0.6, 0.0]),
    # A's early bins never exceed its last bin -> 0.
    ([0.05, 0.05, 0.05, 0.1], [0.1, 0.1, 0.1, 0.9], [0.0, 0.0]),
    # Equal last bins: the comparison is strict -> 0 for both.
    ([0.2, 0.6, 0.3, 0.5], [0.7, 0.1, 0.1, 0.5], [0.0, 0.0]),
    # B backchannels: B's last 0.2 < A's 0.8, max(B[:3]) = 0.7 > 0.2.
    ([0.9, 0.9, 0.9, 0.8], [0.7, 0.1, 0.4, 0.2], [0.0, 0.7]),
])
def test_independent_backchannel_max_rule(a, b, expected):
  obj = VAPObjective(head='independent')
  probs = np.array([[a, b]], np.float32)
  np.testing.assert_allclose(np.asarray(obj.backchannel_probs(probs)), [expected], rtol=1e-6)


def test_comparative_head_has_no_backchannel_probs():
  with pytest.raises(ValueError):
    VAPObjective(head='comparative').backchannel_probs(np.zeros((1, 1)))


# Stereo-model aggregation.

def test_p_now_and_p_future_on_hand_built_distributions():
  obj = VAPObjective()
  # Half on class 3 (A in bins 0,1), half on 192 (B in bins 2,3).
  probs = dist(c3=0.5, c192=0.5)[:1]
  # p_now: expected counts A 0.5 * 2 = 1, B 0 -> (1 / (1 + 1e-5), 0); p_future mirrored.
  np.testing.assert_allclose(np.asarray(obj.p_now(probs)), [[1 / (1 + 1e-5), 0]], rtol=1e-6)
  np.testing.assert_allclose(np.asarray(obj.p_future(probs)), [[0, 1 / (1 + 1e-5)]], rtol=1e-6)
  # 0.25 on 255 (everyone everywhere), 0.75 on 1 (A bin 0 only):
  # now: A 0.25 * 2 + 0.75 = 1.25, B 0.5; future: A 0.5, B 0.5.
  probs = dist(c255=0.25, c1=0.75)[:1]
  np.testing.assert_allclose(np.asarray(obj.p_now(probs)), [[1.25 / 1.75001, 0.5 / 1.75001]],
                             rtol=1e-6)
  np.testing.assert_allclose(np.asarray(obj.p_future(probs)), [[0.5 / 1.00001] * 2], rtol=1e-6)
  np.testing.assert_allclose(np.asarray(obj.aggregate_probs(probs, 0, 3)),
                             [[1.75 / 2.75001, 1.0 / 2.75001]], rtol=1e-6)


# jit and dtypes.

@pytest.mark.parametrize('head, logit_shape', [
    ('discrete', (256,)), ('independent', (2, 4)), ('comparative', (1,))])
def test_objective_inside_jit_matches_direct_calls(head, logit_shape):
  obj = VAPObjective(frame_hz=20, head=head)
  rng = np.random.default_rng(7)
  va = random_va(rng, (2, 15 + obj.horizon_frames, 2))
  logits = rng.normal(size=(2, 15) + logit_shape).astype(np.float32)

  def run(logits, va):
    labels = obj.labels(va)
    probs = obj.probs(logits)
    out = {'labels': labels, 'loss': obj.loss(logits, labels), 'probs': probs,
           'p': obj.next_speaker_probs(probs, va[:, :15])}
    if head != 'comparative':
      out['bc'] = obj.backchannel_probs(probs)
    if head == 'discrete':
      out['p_now'] = obj.p_now(probs)
    return out

  eager, jitted = run(logits, va), jax.jit(run)(logits, va)  # obj is a closure constant
  for key in eager:
    np.testing.assert_allclose(np.asarray(jitted[key]), np.asarray(eager[key]), rtol=1e-6,
                               atol=1e-7, err_msg=key)


def test_equal_configs_are_equal_objectives():
  assert VAPObjective(frame_hz=50) == VAPObjective(frame_hz=50)
  assert hash(VAPObjective(frame_hz=50)) == hash(VAPObjective(frame_hz=50))
  assert VAPObjective(frame_hz=50) != VAPObjective(frame_hz=100)
  assert VAPObjective(head='independent') != VAPObjective(head='comparative')


@pytest.mark.parametrize('head, logit_shape', [
    ('discrete', (256,)), ('independent', (2, 4)), ('comparative', (1,))])
def test_bf16_logits_give_float32_probs(head, logit_shape):
  obj = VAPObjective(head=head)
  logits = jnp.asarray(np.random.default_rng(8).normal(size=(3,) + logit_shape), jnp.bfloat16)
  probs = obj.probs(logits)
  assert probs.dtype == jnp.float32
  assert obj.next_speaker_probs(probs, np.zeros((3, 2))).dtype == jnp.float32
