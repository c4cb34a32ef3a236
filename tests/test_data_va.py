"""VA lists, VA frames, VA history and word merging (convssl_jax/data/va.py).

Expected values are derived by hand (see the comments) or by the small loops below, written from
the reference's definitions, never by the code under test.
"""

import itertools

import numpy as np
import pytest

from convssl_jax import errors
from convssl_jax.data import va as va_lib
from tests import processes


# validate_va_list

def test_validate_returns_float_arrays_per_channel():
  out = va_lib.validate_va_list([[[0, 1.5], [1.5, 2]], []], source='ok.json')
  assert len(out) == 2
  np.testing.assert_array_equal(out[0], [[0.0, 1.5], [1.5, 2.0]])
  assert out[0].dtype == np.float64 and out[1].shape == (0, 2)


@pytest.mark.parametrize('va_list, expected', [
    ([[[0, 1]]], 'expected 2 channels'),
    ([[], [], []], 'expected 2 channels'),
    ({'a': 1}, 'expected 2 channels'),
    ([[[0, 1]], 5], 'channel 1 is not a list'),
    ([[[0, 1], [2, 3, 4]], []], 'channel 0 segment 1 [2, 3, 4]'),
    ([[[0, 1], [2]], []], 'channel 0 segment 1 [2]'),
    ([[], [[0, 1], ['2', 3]]], "channel 1 segment 1 ['2', 3]"),
    ([[], [[True, 3]]], 'channel 1 segment 0 [True, 3]'),
    ([[[0, 1]], [[1, float('nan')]]], 'channel 1 segment 0 [1, nan]: not finite'),
    ([[[0, float('inf')]], []], 'channel 0 segment 0 [0, inf]: not finite'),
    ([[[-0.1, 1]], []], 'channel 0 segment 0 [-0.1, 1]: negative'),
    ([[], [[0, 1], [3, 2]]], 'channel 1 segment 1 [3, 2]: reversed'),
    ([[[0, 1], [0.5, 2]], []], 'channel 0 segment 1 [0.5, 2]: starts before'),
    ([[[2, 3], [0, 1]], []], 'channel 0 segment 1 [0, 1]: starts before'),
])
def test_validate_rejects_bad_lists_naming_source_and_segment(va_list, expected):
  with pytest.raises(ValueError) as err:
    va_lib.validate_va_list(va_list, source='sw02001.json (switchboard)')
  message = str(err.value)
  assert message.startswith('sw02001.json (switchboard): ')
  assert expected in message


def test_validate_overlap_message_names_previous_segment():
  with pytest.raises(ValueError, match=r'segment 2 \[1.5, 2\].*\[1, 1.6\]'):
    va_lib.validate_va_list([[], [[0, 0.5], [1, 1.6], [1.5, 2]]], source='x.json')


def test_validate_accepts_touching_and_empty_segments():
  out = va_lib.validate_va_list([[[0, 1], [1, 1], [1, 2]], [[0.5, 0.5]]], source='x.json')
  assert out[0].shape == (3, 2) and out[1].shape == (1, 2)



@pytest.mark.parametrize('va_list, named', [
    ([[[0.5, 1e300]], []], r'channel 0 segment 0 \[0.5, 1e\+300\]'),
    ([[[0, 1]], [[2, 3], [10.1, 10.2]]], r'channel 1 segment 1 \[10.1, 10.2\]'),
    ([[[0, 10.051]], []], r'channel 0 segment 0 \[0, 10.051\]'),
])
def test_a_segment_ending_past_the_audio_and_its_tolerance_is_refused(va_list, named):
  with pytest.raises(errors.InputError, match=f'^x.json: {named}: ends after the end of the '
                     r'audio \(10.00 s\)'):
    va_lib.va_segments(va_list, source='x.json', duration_s=10.0)


def test_segments_within_the_tolerance_of_the_audio_end_are_kept_as_given():
  va_list = [[[9.0, 10.05]], [[10.0, 10.04]]]  # END_TOLERANCE_S = 0.05 past a 10 s recording
  np.testing.assert_array_equal(va_lib.va_segments(va_list, source='x', duration_s=10.0),
                                [[0, 9.0, 10.05], [1, 10.0, 10.04]])


def test_messages_stay_short_whatever_the_list_holds():
  huge = [[list(range(10**6))], []]
  with pytest.raises(errors.InputError) as err:
    va_lib.validate_va_list(huge, source='x.json')
  assert len(str(err.value)) < 200 and 'channel 0 segment 0 [0, 1, 2, 3, ...]' in str(err.value)
  with pytest.raises(errors.InputError,
                     match=r'segment 0 \[0, <16610-bit int>\]: not a \[start, end\]'):
    va_lib.validate_va_list([[[0, 10**5000]], []], source='x.json')  # no float64 holds it


# num_frames / va_frames

def test_num_frames_truncates_without_plus_one():
  assert va_lib.num_frames(10.0, 50) == 500
  assert va_lib.num_frames(10.019, 50) == 500
  assert va_lib.num_frames(10.02, 100) == 1001  # 10.02 / 0.01 = 1001.9999999999999


def test_va_frames_truncates_both_ends_end_exclusive_50hz():
  # 0.019 s -> 0.95 -> frame 0; 0.041 s -> 2.05 -> 2 (exclusive): frames 0, 1.
  # 0.1 s -> 5; 0.16 s -> 8: frames 5, 6, 7.  B: 0.07 -> 3.5 -> 3; 0.079 -> 3.95 -> 3: empty.
  out = va_lib.va_frames([[[0.019, 0.041], [0.1, 0.16]], [[0.07, 0.079]]], 10, 50)
  assert out.shape == (10, 2) and out.dtype == np.float32
  np.testing.assert_array_equal(out[:, 0], [1, 1, 0, 0, 0, 1, 1, 1, 0, 0])
  np.testing.assert_array_equal(out[:, 1], np.zeros(10))


def test_va_frames_100hz_float_truncation_and_clipping():
  # 0.29 * 100 = 28.999999999999996 -> 28 (the reference's float64 truncation).
  # B's 0.05..0.5 s segment -> frames 5..49, clipped to the 40 frames asked for.
  out = va_lib.va_frames([[[0.0, 0.29]], [[0.05, 0.5]]], 40, 100)
  expected_a = np.zeros(40)
  expected_a[:28] = 1
  expected_b = np.zeros(40)
  expected_b[5:] = 1
  np.testing.assert_array_equal(out[:, 0], expected_a)
  np.testing.assert_array_equal(out[:, 1], expected_b)


def test_va_frames_touching_segments_and_validated_input():
  va_list = va_lib.validate_va_list([[[0.0, 0.1], [0.1, 0.2]], [[1.0, 2.0]]], source='t')
  out = va_lib.va_frames(va_list, 12, 50)
  np.testing.assert_array_equal(out[:, 0], [1] * 10 + [0, 0])
  np.testing.assert_array_equal(out[:, 1], np.zeros(12))  # starts at frame 50 > 12


def test_va_frames_matches_a_segment_loop():
  rng = np.random.default_rng(0)
  va_list = []
  for _ in range(2):
    times = np.sort(rng.uniform(0, 30, 40)).reshape(-1, 2)
    va_list.append(times.tolist())
  for hz in (20, 50, 100):
    n = int(29 * hz)
    expected = np.zeros((n, 2), np.float32)
    for c, channel in enumerate(va_list):
      for s, e in channel:
        expected[int(s / (1 / hz)):int(e / (1 / hz)), c] = 1  # the reference's time2frames
    np.testing.assert_array_equal(va_lib.va_frames(va_list, n, hz), expected)



def test_a_time_too_large_for_integer_frames_covers_the_frames_to_the_end():
  # 1e300 s / 0.02 s overflows int64: the segment used to vanish (with one RuntimeWarning).
  out = va_lib.va_frames([[[0.5, 1e300]], [[1e300, 1e301]]], 100, 50)
  np.testing.assert_array_equal(np.flatnonzero(out[:, 0]), np.arange(25, 100))
  assert not out[:, 1].any()


def test_va_frames_allocates_no_more_than_the_frames_asked_for():
  # 10 M frames: the output is 80 MB; 150 MB of headroom leave no room for a second array of
  # int64 counts (160 MB), and a segment ending at 2e6 s asks for nothing past the frames.
  script = """
      import numpy as np
      from convssl_jax.data import va
      limit_memory(150)
      out = va.va_frames([[[0.5, 2e6]], [[1.0, 1e300]]], 10_000_000, 50)
      print(int(out[:, 0].sum()), int(out[:, 1].sum()))
  """
  run = processes.run_limited(script)
  assert run.returncode == 0, run.stderr[-2000:]
  assert run.stdout.split() == [str(10_000_000 - 25), str(10_000_000 - 50)]


def test_times_become_frames_by_dividing_by_the_hop_not_multiplying_by_the_rate():
  # 0.94 / 0.02 = 46.99999999999999 and 1.18 / 0.02 = 58.99999999999999 in float64, while
  # 0.94 * 50 = 47.0 and 1.18 * 50 = 59.0: the reference (int(t / hop)) gives frames [46, 58).
  out = va_lib.va_frames([[[0.94, 1.18]], []], 60, 50)
  np.testing.assert_array_equal(np.flatnonzero(out[:, 0]), np.arange(46, 58))
  assert va_lib.time_to_frames(0.15, 20) == 2  # 0.15 / 0.05 = 2.9999999999999996
  assert va_lib.time_to_frames(0.29, 100) == 28
  np.testing.assert_array_equal(va_lib.time_to_frames(np.array([0.3, 0.7]), 50), [15, 35])
  assert va_lib.num_frames(0.94, 50) == 46


# va_history

def loop_history(va, edges):
  """The reference bins, frame by frame: bin 0 = [0, t - e0], bin k = (t - e(k-1), t - e(k)],
  clipped at 0; 0.5 when t < e(k) or the bin is silent."""
  edges = list(edges) + [0]
  out = np.zeros((len(va), len(edges)), np.float32)
  for t in range(len(va)):
    for k, e in enumerate(edges):
      lo = 0 if k == 0 else max(t - edges[k - 1] + 1, 0)
      hi = t - e  # inclusive
      a = va[lo:hi + 1, 0].sum() if hi >= 0 else 0
      b = va[lo:hi + 1, 1].sum() if hi >= 0 else 0
      out[t, k] = a / (a + b) if a + b > 0 else 0.5
  return out


def hand_dialog():
  """100 s at 10 Hz: A speaks 0-40 s (frames 0-399), silence, B speaks 50-100 s (500-999)."""
  return va_lib.va_frames([[[0, 40]], [[50, 100]]], 1000, 10)


def test_va_history_hand_dialog():
  # Edges at 10 Hz: (600, 300, 100, 50, 0) frames.
  h = va_lib.va_history(hand_dialog(), 10)
  assert h.shape == (1000, 5) and h.dtype == np.float32
  # t = 0: bins 0-3 end before the dialog starts -> 0.5; the last bin holds frame 0 (A) -> 1.
  np.testing.assert_array_equal(h[0], [0.5, 0.5, 0.5, 0.5, 1.0])
  # t = 49: bin 3 ends at t - 50 < 0 -> 0.5; t = 50: bin 3 is frame 0 only -> A.
  assert h[49, 3] == 0.5 and h[50, 3] == 1.0
  # t = 460 (46 s): last bin [411, 460] is silence -> 0.5; bin 3 [361, 410]: 39 A frames -> 1;
  # bin 2 [161, 360] A; bin 1 [0, 160] A; bin 0 ends at t - 600 < 0 -> 0.5.
  np.testing.assert_array_equal(h[460], [0.5, 1.0, 1.0, 1.0, 0.5])
  # t = 650: bin 0 [0, 50] A; bin 1 [51, 350] A; bin 2 [351, 550]: A 351-399 (49 frames),
  # B 500-550 (51 frames) -> 0.49; bin 3 [551, 600] and last bin [601, 650] B -> 0.
  np.testing.assert_allclose(h[650], [1.0, 1.0, 0.49, 0.0, 0.0], rtol=1e-6)
  # t = 999: bin 0 [0, 399] all A -> 1; bin 1 [400, 699]: B 500-699 only -> 0; the rest B.
  np.testing.assert_array_equal(h[999], [1.0, 0.0, 0.0, 0.0, 0.0])


def test_va_history_last_bin_includes_current_frame():
  # 1 Hz with history (4, 2, 1) s: edges (4, 2, 1, 0), so the bins of frame t are
  # [0, t-4], [t-3, t-2], [t-1] and [t]: the last bin is the current frame alone.
  va = np.zeros((12, 2), np.float32)
  va[6, 1] = 1  # one B frame
  h = va_lib.va_history(va, 1, history_times=(4, 2, 1))
  assert h[5, 3] == 0.5  # silent frame 5
  assert h[6, 3] == 0.0  # frame 6 itself: B
  assert h[7, 3] == 0.5 and h[7, 2] == 0.0  # [t-1] = frame 6
  assert h[8, 1] == 0.0 and h[9, 1] == 0.0 and h[10, 1] == 0.5  # [5, 6], [6, 7], [7, 8]
  assert h[10, 0] == 0.0 and h[9, 0] == 0.5  # [0, 6], [0, 5]


def test_va_history_matches_reference_loop():
  rng = np.random.default_rng(1)
  va = (rng.uniform(size=(300, 2)) < 0.3).astype(np.float32)
  va[100:150] = 0  # a silent stretch
  h = va_lib.va_history(va, 2, history_times=(60, 30, 10, 5))  # edges (120, 60, 20, 10)
  np.testing.assert_allclose(h, loop_history(va, (120, 60, 20, 10)), rtol=1e-6)


def test_va_history_dialog_shorter_than_bins_is_neutral():
  va = np.ones((30, 2), np.float32)
  va[:, 1] = 0
  h = va_lib.va_history(va, 10)  # edges 600.. > 30 frames
  np.testing.assert_array_equal(h[:, :4], 0.5)
  np.testing.assert_array_equal(h[:, 4], 1.0)


def test_va_history_swapped_speakers_is_one_minus():
  h = va_lib.va_history(hand_dialog(), 10)
  h_swapped = va_lib.va_history(hand_dialog()[:, ::-1], 10)
  np.testing.assert_allclose(h_swapped, 1 - h, atol=1e-7)


def test_va_history_rejects_non_decreasing_times():
  with pytest.raises(ValueError, match='decreasing'):
    va_lib.va_history(np.zeros((10, 2)), 10, history_times=(5, 10))


# words_to_va

def test_words_merge_below_gap_and_split_at_gap():
  # Exact binary fractions, min_gap = 0.0625: a gap of exactly 0.0625 splits, just below merges.
  words = [[(0.25, 0.5), (0.5624, 0.75), (0.8125, 1.0)], []]
  out = va_lib.words_to_va(words, min_gap=0.0625)
  # 0.5624 - 0.5 < 0.0625: merged to 0.75; 0.8125 - 0.75 == 0.0625: new segment.
  assert out == [[[0.25, 0.75], [0.81, 1.0]], []]


def test_words_default_gap():
  words = [[], [(1.0, 1.2), (1.249, 1.5), (1.6, 2.0), (2.0, 2.1)]]
  # gaps: 0.049 merge, 0.1 split, 0.0 merge
  assert va_lib.words_to_va(words) == [[], [[1.0, 1.5], [1.6, 2.1]]]


def test_words_extend_to_last_word_end_like_reference():
  # A word inside the segment (earlier end) moves the end back, as in the reference.
  assert va_lib.words_to_va([[(0.0, 1.0), (0.5, 0.8)], []]) == [[[0.0, 0.8]], []]


def test_words_never_merge_across_utterances():
  utterances = [[(0.0, 0.5), (0.52, 1.0)], [(1.01, 2.0)]]  # 0.01 s gap across utterances
  flat = [(0.0, 0.5), (0.52, 1.0), (1.01, 2.0)]
  assert va_lib.words_to_va([utterances, []]) == [[[0.0, 1.0], [1.01, 2.0]], []]
  assert va_lib.words_to_va([flat, []]) == [[[0.0, 2.0]], []]


def test_overlapping_or_unordered_utterances_become_the_union_of_their_frames():
  # Utterances overlapping by 0.1 s, and one out of time order: the reference sets each
  # segment's frames, so the VA list holds their union, sorted.
  utterances = [[(2.0, 2.5)], [(0.0, 1.0)], [(0.9, 1.5)]]
  assert va_lib.words_to_va([utterances, []]) == [[[0.0, 1.5], [2.0, 2.5]], []]
  rng = np.random.default_rng(3)
  segments = [sorted(rng.uniform(0, 10, 2).round(2)) for _ in range(30)]
  frames = np.zeros(500, bool)
  for s, e in segments:
    frames[int(s / 0.02):int(e / 0.02)] = True
  united = va_lib.va_frames([va_lib.unite_segments(segments), []], 500, 50)[:, 0]
  np.testing.assert_array_equal(united, frames)


def test_words_round_both_ends_to_two_decimals():
  out = va_lib.words_to_va([[[(0.123, 0.456), (0.789, 1.2345)]], [[(3.14159, 3.14159 + 1)]]])
  assert out == [[[0.12, 0.46], [0.79, 1.23]], [[3.14, 4.14]]]


def test_va_history_streamed_in_blocks_equals_the_whole_dialog():
  """Frame by frame or in odd blocks, past the 60-s memory, the history equals the offline one."""
  rng = np.random.default_rng(0)
  frame_hz, frames = 10, 1500  # 150 s at 10 Hz: 600 frames of memory, slid over twice
  va = (rng.random((2, frames, 2)) < 0.3).astype(np.float32)
  va[:, 200:260] = 0  # a silent stretch: undefined recent bins
  want = np.stack([va_lib.va_history(v, frame_hz) for v in va])
  stream = va_lib.VAHistory(frame_hz, batch=2)
  got, start = [], 0
  for size in itertools.cycle((1, 7, 333, 2, 50)):
    if start >= frames:
      break
    got.append(stream(va[:, start:start + size]))
    start += size
  np.testing.assert_array_equal(np.concatenate(got, axis=1), want)
  assert stream._cum.shape == (2, 601, 2)  # bounded memory
