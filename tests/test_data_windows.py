"""Window starts, window cutting, F0 resampling and the channel swap (convssl_jax/data/windows.py).

Expected values are derived by hand (see the comments), never by the code under test.
"""

import numpy as np
import pytest

from convssl_jax.data import windows


# Window starts

def test_sliding_starts_reference_rule():
  # step 8: n = int((100 - 10) / 8 + 1) = 12 -> 0, 8, ..., 88; the last window ends at 98 s.
  np.testing.assert_array_equal(windows.sliding_starts(100, 10, 2), np.arange(0, 96, 8))
  # Exactly one window.
  np.testing.assert_array_equal(windows.sliding_starts(20, 20, 5), [0.0])
  # step 15: n = int((50 - 20) / 15 + 1) = 3 -> 0, 15, 30, the last one ends exactly at 50.
  np.testing.assert_array_equal(windows.sliding_starts(50, 20, 5), [0, 15, 30])


def test_sliding_starts_short_dialog_keeps_one_window():
  np.testing.assert_array_equal(windows.sliding_starts(3.5, 10, 2), [0.0])


def test_sliding_starts_rejects_overlap_not_shorter_than_window():
  with pytest.raises(ValueError, match='overlap'):
    windows.sliding_starts(100, 10, 10)


def test_eval_starts_add_a_final_window_ending_at_dialog_end():
  np.testing.assert_array_equal(windows.eval_starts(100, 10, 2), list(range(0, 96, 8)) + [90])
  np.testing.assert_array_equal(windows.eval_starts(50, 20, 5), [0, 15, 30])  # already covered
  np.testing.assert_array_equal(windows.eval_starts(3.5, 10, 2), [0.0])


@pytest.mark.parametrize('duration', [10.0, 10.02, 23.7, 30.02, 61.33, 100.0, 7.0])
def test_eval_windows_cover_every_frame(duration):
  frame_hz, window, horizon = 50, 10.0, 100
  n_frames = int(duration * frame_hz)
  # Frame t of the dialog carries its own index, so the cut windows show which frames they hold.
  va = np.stack([np.arange(n_frames), np.arange(n_frames)], 1).astype(np.float32) + 1
  audio = np.zeros((int(duration * 16000), 2), np.float32)
  seen = set()
  for start in windows.eval_starts(duration, window, 2.0):
    _, va_window = windows.cut_window(audio, va, start, window, sample_rate=16000,
                                      frame_hz=frame_hz, horizon_frames=horizon)
    inputs = va_window[:int(window * frame_hz), 0]
    seen.update(int(v) - 1 for v in inputs if v > 0)
  assert seen == set(range(n_frames))


# Cutting

def test_cut_frames_pads_past_the_end():
  x = np.arange(10, dtype=np.float32).reshape(5, 2)
  np.testing.assert_array_equal(windows.cut_frames(x, 1, 2), [[2, 3], [4, 5]])
  np.testing.assert_array_equal(windows.cut_frames(x, 3, 4), [[6, 7], [8, 9], [0, 0], [0, 0]])
  np.testing.assert_array_equal(windows.cut_frames(x, 7, 2), np.zeros((2, 2)))
  np.testing.assert_array_equal(windows.cut_frames(x[:, 0], 4, 3, pad_value=0.5), [8, 0.5, 0.5])
  with pytest.raises(ValueError):
    windows.cut_frames(x, -1, 2)


def dialog(seconds, sample_rate=100, frame_hz=10):
  """Audio whose sample i is i + 1 (channel 1 negated) and VA whose frame t is t + 1 (A) and
  -(t + 1) (B), so every value tells where it was cut from; 0 means padding."""
  samples = np.arange(1, int(seconds * sample_rate) + 1, dtype=np.float32)
  frames = np.arange(1, int(seconds * frame_hz) + 1, dtype=np.float32)
  return np.stack([samples, -samples], 1), np.stack([frames, -frames], 1)


def test_cut_window_first_window():
  audio, va = dialog(30)
  a, v = windows.cut_window(audio, va, 0.0, 10.0, sample_rate=100, frame_hz=10, horizon_frames=20)
  assert a.shape == (1000, 2) and v.shape == (120, 2)  # N = 100 frames + H = 20
  np.testing.assert_array_equal(a[:, 0], np.arange(1, 1001))
  np.testing.assert_array_equal(a[:, 1], -np.arange(1, 1001))
  np.testing.assert_array_equal(v[:, 0], np.arange(1, 121))


def test_cut_window_last_window_pads_audio_and_horizon():
  # 30 s dialog, window 18-28 s: audio samples 1800..2799 exist; VA frames 180..299 hold
  # N + H = 120 frames, of which 180..299 exist (300 frames), so no padding yet.
  audio, va = dialog(30)
  a, v = windows.cut_window(audio, va, 18.0, 10.0, sample_rate=100, frame_hz=10,
                            horizon_frames=20)
  np.testing.assert_array_equal(a[:, 0], np.arange(1801, 2801))
  np.testing.assert_array_equal(v[:, 0], np.arange(181, 301))
  # Window 22-32 s: audio 2200..2999 then 200 zero samples; VA frames 220..299 (80) then the
  # remaining 20 input frames and all 20 horizon frames are silence.
  a, v = windows.cut_window(audio, va, 22.0, 10.0, sample_rate=100, frame_hz=10,
                            horizon_frames=20)
  np.testing.assert_array_equal(a[:800, 0], np.arange(2201, 3001))
  np.testing.assert_array_equal(a[800:], np.zeros((200, 2)))
  np.testing.assert_array_equal(v[:80, 0], np.arange(221, 301))
  np.testing.assert_array_equal(v[80:], np.zeros((40, 2)))


def test_cut_window_short_dialog_is_zero_padded():
  audio, va = dialog(3.5)
  start, = windows.sliding_starts(3.5, 10, 2)
  a, v = windows.cut_window(audio, va, start, 10.0, sample_rate=100, frame_hz=10,
                            horizon_frames=20)
  assert a.shape == (1000, 2) and v.shape == (120, 2)
  np.testing.assert_array_equal(a[:350, 0], np.arange(1, 351))
  np.testing.assert_array_equal(a[350:], 0)
  np.testing.assert_array_equal(v[:35, 1], -np.arange(1, 36))
  np.testing.assert_array_equal(v[35:], 0)


def test_start_frame_rounds_to_nearest_frame():
  assert windows.start_frame(8.0, 50) == 400
  assert windows.start_frame(1.017, 50) == 51  # 50.85
  assert windows.start_frame(1.009, 50) == 50  # 50.45
  assert windows.start_frame(20.02 - 20.0, 50) == 1  # 0.99999999999998 in float64


def test_cut_window_off_grid_start_snaps_to_nearest_frame():
  # 16 kHz / 50 Hz = 320 samples per frame. 1.017 s -> frame round(50.85) = 51 -> sample 16320.
  audio, va = dialog(4, sample_rate=16000, frame_hz=50)
  a, v = windows.cut_window(audio, va, 1.017, 2.0, sample_rate=16000, frame_hz=50,
                            horizon_frames=10)
  assert a[0, 0] == 16321 and v[0, 0] == 52
  assert a.shape == (32000, 2) and v.shape == (110, 2)


# F0 and channel swap

def test_f0_at_frame_rate_means_voiced_values():
  f0 = np.array([[100, 0], [120, 0], [0, 200], [0, 0], [90, 210], [110, 190], [130, 0]],
                np.float32)
  out = windows.f0_at_frame_rate(f0, 100, 50)
  # 100 Hz frames (0,1) (2,3) (4,5); frame 6 has no partner and is dropped.
  np.testing.assert_allclose(out, [[110, 0], [0, 200], [100, 200]])
  assert out.dtype == np.float32
  out20 = windows.f0_at_frame_rate(np.tile(f0, (2, 1))[:10], 100, 20)  # frames 0-4, 5-9
  np.testing.assert_allclose(out20, [[(100 + 120 + 90) / 3, 205], [(110 + 130 + 100 + 120) / 4,
                                                                   (190 + 200) / 2]])
  np.testing.assert_array_equal(windows.f0_at_frame_rate(f0, 100, 100), f0)


def test_f0_at_frame_rate_rejects_upsampling():
  with pytest.raises(ValueError, match='upsample'):
    windows.f0_at_frame_rate(np.zeros((4, 2)), 50, 100)


def test_swap_channels():
  example = {
      'audio': np.array([[1, 2], [3, 4], [5, 6]], np.float32),
      'va': np.array([[1, 0], [1, 1], [0, 1]], np.float32),
      'f0': np.array([[100, 0], [0, 200], [0, 0]], np.float32),
      'va_history': np.array([[0.5, 1.0, 0.25]], np.float32),
      'session': 'sw02001',
  }
  out = windows.swap_channels(example)
  np.testing.assert_array_equal(out['audio'], [[2, 1], [4, 3], [6, 5]])
  np.testing.assert_array_equal(out['va'], [[0, 1], [1, 1], [1, 0]])
  np.testing.assert_array_equal(out['f0'], [[0, 100], [200, 0], [0, 0]])
  np.testing.assert_array_equal(out['va_history'], [[0.5, 0.0, 0.75]])
  assert out['session'] == 'sw02001' and out['va_history'].dtype == np.float32
  np.testing.assert_array_equal(example['va'], [[1, 0], [1, 1], [0, 1]])  # input untouched
  swapped_twice = windows.swap_channels(out)
  for key in ('audio', 'va', 'f0', 'va_history'):
    np.testing.assert_array_equal(swapped_twice[key], example[key])


def test_swap_channels_mono_audio_and_missing_keys():
  out = windows.swap_channels({'audio': np.ones((4, 1)), 'va': np.eye(2)})
  np.testing.assert_array_equal(out['audio'], np.ones((4, 1)))
  np.testing.assert_array_equal(out['va'], [[0, 1], [1, 0]])
  with pytest.raises(ValueError, match='1-D'):
    windows.swap_channels({'audio': np.ones(4)})
