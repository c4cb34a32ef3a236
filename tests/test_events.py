"""Turn-taking events (convssl_jax/events.py, reference/vap_spec.md section 4).

Expected frames are derived by hand in the comments (or, for random dialogs, by the literal loop
port of the spec's pseudo-code below), never by the code under test. Events are written as
(channel, start, end) with channel 0 = A, 1 = B.

Paper settings in frames (section 4.1):
  50 Hz: pad 2, dur 5, min_silence 7, pre_label 25, onset 10, min_context 150, SH 50,
         non-shift horizon 100, BC max 50, pre 50, post 100, min 10, metric 10, pre_label 25.
  100 Hz: pad 5, dur 10, min_silence 15, pre_label 50, onset 20, min_context 300, SH 100,
          horizon 200, BC max 100, pre 100, post 200, min 20, metric 20, pre_label 50.
"""

import numpy as np
import pytest

from convssl_jax import events as ev
from convssl_jax.events import TurnTakingEvents

A, B = 0, 1
DETERMINISTIC = ('shift', 'hold', 'short', 'long', 'pred_shift', 'pred_bc')


def make_va(n_frames, a=(), b=()):
  """[T, 2] int VA with A active on the frame ranges `a` and B on `b`."""
  va = np.zeros((n_frames, 2), np.int32)
  for ch, segs in ((A, a), (B, b)):
    for start, end in segs:
      va[start:end, ch] = 1
  return va


def seconds_va(hz, total, a=(), b=()):
  """make_va from segments in seconds (all chosen to be whole frames at 50 and 100 Hz)."""
  def frames(segs):
    return [(round(s * hz), round(e * hz)) for s, e in segs]
  return make_va(round(total * hz), frames(a), frames(b))


def segments(mask):
  """Runs of True of a [T, 2] mask as sorted (channel, start, end)."""
  out = []
  for ch in (A, B):
    edges = np.diff(np.r_[0, mask[:, ch].astype(int), 0])
    out += [(ch, int(s), int(e)) for s, e in zip(np.flatnonzero(edges == 1),
                                                 np.flatnonzero(edges == -1))]
  return sorted(out)


def check(out, expected):
  """Deterministic keys equal `expected` (missing keys: no event)."""
  for key in DETERMINISTIC:
    assert segments(out[key]) == sorted(expected.get(key, [])), key


# Helpers.

def test_islands_are_runs_of_equal_values():
  starts, durs, values = ev.islands([0, 0, 1, 1, 1, 0])
  np.testing.assert_array_equal(starts, [0, 2, 5])
  np.testing.assert_array_equal(durs, [2, 3, 1])
  np.testing.assert_array_equal(values, [0, 1, 0])


def test_dialog_states_follow_2vb_minus_va_plus_1():
  # only A, silence, both, only B
  np.testing.assert_array_equal(ev.dialog_states([[1, 0], [0, 0], [1, 1], [0, 1]]), [0, 1, 2, 3])


def test_last_speaker_carries_over_silences():
  ds = [1, 1, 0, 0, 1, 3, 1, 2, 1, 0]
  # leading silence unknown (2); silence after A is A, after B is B, after overlap 2; B -> 1.
  np.testing.assert_array_equal(ev.last_speaker(ds), [2, 2, 0, 0, 0, 1, 1, 2, 2, 0])


def test_fill_pauses_fills_only_within_turn_pauses():
  # A . A | . B | . A .  (frames 0..8): ds 0 1 0 1 3 1 0 1 (plus frame 8 silent)
  va = make_va(9, a=[(0, 1), (2, 3), (6, 7)], b=[(4, 5)])
  filled = ev.fill_pauses(va, ev.dialog_states(va))
  # Only frame 1 (A-sil-A) is filled; A-sil-B, B-sil-A and the trailing silence are not.
  np.testing.assert_array_equal(filled[:, A], [1, 1, 1, 0, 0, 0, 1, 0, 0])
  np.testing.assert_array_equal(filled[:, B], va[:, B])


def test_non_shift_needs_a_future_of_only_the_last_speaker():
  # A = 1 1 1 0 0 0, B = 0 0 0 0 1 1, horizon 2: futures t+1..t+2 exist for t = 0..3.
  # t=0: frames 1,2 only A, last speaker A -> A. t=1: frames 2,3 A only -> A.
  # t=2, t=3: future has only B but the last speaker is A -> nothing.
  va = make_va(6, a=[(0, 3)], b=[(4, 6)])[None]
  ls = ev.last_speaker(ev.dialog_states(va))
  out = ev.non_shift(va, ls, horizon=2)
  np.testing.assert_array_equal(out[0, :, A], [1, 1, 0, 0, 0, 0])
  assert not out[0, :, B].any()
  np.testing.assert_array_equal(ev.non_shift(va, ls, 2, min_context=1)[0, :, A], [0, 1, 0, 0, 0, 0])
  np.testing.assert_array_equal(ev.non_shift(va, ls, 2, max_frame=1)[0, :, A], [1, 0, 0, 0, 0, 0])
  # A = 1 1 0 0 0 0 with last speaker A throughout: only t=0 (future frame 1) has activity;
  # a silent future is never a non-shift.
  silent = ev.non_shift(make_va(6, a=[(0, 2)])[None], np.zeros((1, 6), int), 2)
  np.testing.assert_array_equal(silent[0, :, A], [1, 0, 0, 0, 0, 0])


def test_count_islands_counts_runs_over_batch_and_channels():
  x = np.zeros((2, 10, 2), bool)
  x[0, 2:4, A] = x[0, 6:7, A] = x[0, 0:10, B] = x[1, 9:10, A] = True
  assert ev.count_islands(x) == 4


def test_sample_negatives_windows_and_onset_pads():
  x = np.zeros((1, 40, 2), bool)
  x[0, 0:4, A] = True    # d 4 > 3: span 1 <= 3 -> pad 0 -> window [0, 3)
  x[0, 10:20, A] = True  # span 7: 3 < 7 <= 10 -> pad 3 -> starts range(13, 17, 3) = 13, 16
  x[0, 25:28, B] = True  # d 3 == dur: not longer than dur, no candidate
  out = ev.sample_negatives(x, 10, dur=3, min_context=0, rng=np.random.default_rng(0))
  assert segments(out[0]) == [(A, 0, 3), (A, 13, 19)]  # 13..16 and 16..19 merge
  # min_context 5 drops the run starting at 0; n = 1 keeps one of the two windows.
  out = ev.sample_negatives(x, 1, dur=3, min_context=5, rng=np.random.default_rng(0))
  assert segments(out[0]) in ([(A, 13, 16)], [(A, 16, 19)])
  assert not ev.sample_negatives(x, 0, 3, 0, np.random.default_rng(0)).any()


def test_sample_segments_keeps_whole_runs():
  x = np.zeros((1, 20, 2), bool)
  x[0, 2:5, A] = x[0, 10:12, B] = True
  assert segments(ev.sample_segments(x, 1000, np.random.default_rng(0))[0]) == [
      (A, 2, 5), (B, 10, 12)]
  assert len(segments(ev.sample_segments(x, 1, np.random.default_rng(0))[0])) == 1


# Settings.

def test_settings_truncate_to_frames():
  e50, e100 = TurnTakingEvents(50), TurnTakingEvents(100)
  assert (e50.pad, e50.dur, e50.min_silence, e50.pre_label_dur, e50.onset_dur) == (2, 5, 7, 25, 10)
  assert (e50.min_context, e50.pre_offset_shift, e50.non_shift_horizon) == (150, 50, 100)
  assert (e50.bc_max_duration, e50.bc_pre_silence, e50.bc_post_silence) == (50, 50, 100)
  assert (e50.bc_min_duration, e50.bc_metric_dur, e50.bc_pre_label_dur) == (10, 10, 25)
  assert (e100.pad, e100.dur, e100.min_silence, e100.min_context) == (5, 10, 15, 300)
  assert TurnTakingEvents(20).pad == 1


@pytest.mark.parametrize('kwargs, message', [
    (dict(onset_dur=0.5, post_onset_shift=0.4), 'onset_dur (25 frames) must be <= post_onset_s'),
    (dict(bc_metric_dur=0.6, bc_max_duration=0.5), 'bc_metric_dur (30 frames) must be <='),
    (dict(pad=-0.1), 'must be >= 0 seconds'),
])
def test_inconsistent_settings_are_rejected(kwargs, message):
  with pytest.raises(ValueError, match=message.replace('(', r'\(').replace(')', r'\)')):
    TurnTakingEvents(50, **kwargs)


# The spec's worked example (section 4.8, the reference's test fixture).

def test_worked_example_at_100hz():
  va = make_va(1590, a=[(0, 300), (585, 660), (840, 950), (1000, 1100), (1200, 1360)],
               b=[(350, 460), (480, 590), (670, 800), (1110, 1190), (1350, 1590)])
  events = TurnTakingEvents(100, pad=0, dur=0.2, pre_label_dur=0.4, onset_dur=0.2, min_context=3,
                            bc_max_duration=1, bc_pre_silence=1, bc_post_silence=1,
                            bc_min_duration=0.2, bc_metric_dur=0.2, bc_pre_label_dur=0.4)
  out = events(va)
  check(out, dict(
      shift=[(B, 300, 320), (A, 800, 820)],
      hold=[(B, 460, 480), (A, 950, 970)],  # the holder's channel
      long=[(B, 350, 370), (A, 840, 860)],
      short=[(A, 585, 605), (B, 1110, 1130)],
      pred_shift=[(B, 260, 300), (A, 760, 800)],
      pred_bc=[(A, 545, 585), (B, 1070, 1110)]))
  # Negatives: the only non-shift run longer than 40 frames is A's [840, 910) (last speaker A,
  # no B until 1110 = 910 + 200), all of it only-A. Its span 70 - 40 = 30 > 10 gives a random
  # pad of 3..9 and one window, so both kinds get one negative although there are 2 positives.
  for key in ('pred_shift_neg', 'pred_bc_neg'):
    (neg,) = segments(out[key])
    assert neg[0] == A and 843 <= neg[1] <= 849 and neg[2] - neg[1] == 40, key


# Hand-built dialogs with the paper settings.

SCENARIOS = {
    # A [0, 4) s, gap, B [4.5, 7) s: gap at 200 / 400, B onset at 225 / 450.
    'clean_shift': (dict(a=[(0, 4)], b=[(4.5, 7)]), {
        50: dict(shift=[(B, 202, 207)], pred_shift=[(B, 175, 200)], long=[(B, 225, 235)]),
        100: dict(shift=[(B, 405, 415)], pred_shift=[(B, 350, 400)], long=[(B, 450, 470)])}),
    # A pauses 0.5 s and goes on: a hold on A (no onset label for holds in `long`).
    'hold': (dict(a=[(0, 4), (4.5, 7)]), {
        50: dict(hold=[(A, 202, 207)]), 100: dict(hold=[(A, 405, 415)])}),
    # B starts at 3.8 s while A talks until 4 s: an overlap shift, which is no event.
    'overlap_shift': (dict(a=[(0, 4)], b=[(3.8, 7)]), {50: {}, 100: {}}),
    # B says 0.5 s at 4 s while A talks on: B silent 4 s before and 6 s after, last speaker A.
    'backchannel': (dict(a=[(0, 8)], b=[(4, 4.5)]), {
        50: dict(short=[(B, 200, 210)], pred_bc=[(B, 175, 200)]),
        100: dict(short=[(B, 400, 420)], pred_bc=[(B, 350, 400)])}),
    # A 0.12 s gap: 6 frames < 7 at 50 Hz, 12 < 15 at 100 Hz.
    'short_gap': (dict(a=[(0, 4)], b=[(4.12, 7)]), {50: {}, 100: {}}),
    # Shift gap at 2 s: 100 + 2 < 150, 200 + 5 < 300 (no pre-label either).
    'no_context': (dict(a=[(0, 2)], b=[(2.5, 5)]), {50: {}, 100: {}}),
}


@pytest.mark.parametrize('hz', [50, 100])
@pytest.mark.parametrize('name', sorted(SCENARIOS))
def test_scenarios_with_paper_settings(name, hz):
  segs, expected = SCENARIOS[name]
  out = TurnTakingEvents(hz)(seconds_va(hz, 10, **segs))
  check(out, expected[hz])
  assert all(v.shape == (10 * hz, 2) and v.dtype == bool for v in out.values())


@pytest.mark.parametrize('hz, region', [(50, (225, 300)), (100, (450, 600))])
def test_clean_shift_negative_on_the_new_speaker(hz, region):
  # T = 8 s. A's non-shift ends a horizon before B's onset, i.e. before min_context. B's starts
  # at its onset (225 / 450) and ends where the future runs out: T - horizon = 300 / 600.
  out = TurnTakingEvents(hz)(seconds_va(hz, 8, a=[(0, 4)], b=[(4.5, 7)]))
  (neg,) = segments(out['pred_shift_neg'])
  assert neg[0] == B and region[0] <= neg[1] and neg[2] <= region[1]
  assert neg[2] - neg[1] == hz // 2
  assert not out['pred_bc_neg'].any()  # no backchannel, no negatives


@pytest.mark.parametrize('hz, region', [(50, (225, 399)), (100, (450, 799))])
def test_backchannel_negative_on_the_current_speaker(hz, region):
  # T = 10 s. During the BC the frames are overlap (last speaker 2). A's non-shift before it
  # ends a horizon before the BC (< min_context); after it, it runs from the BC's end to the
  # last frame whose future still holds A: 398 / 798 (A stops at 400 / 800).
  out = TurnTakingEvents(hz)(seconds_va(hz, 10, a=[(0, 8)], b=[(4, 4.5)]))
  (neg,) = segments(out['pred_bc_neg'])
  assert neg[0] == A and region[0] <= neg[1] and neg[2] <= region[1]
  assert neg[2] - neg[1] == hz // 2


# Boundaries at 50 Hz (paper settings unless stated).

@pytest.mark.parametrize('b_onset, expected', [
    (207, dict(shift=[(B, 202, 207)], pred_shift=[(B, 175, 200)], long=[(B, 207, 217)])),
    (206, {}),  # gap 6 < min_silence 7
])
def test_min_silence_boundary(b_onset, expected):
  check(TurnTakingEvents(50)(make_va(400, a=[(0, 200)], b=[(b_onset, 400)])), expected)


@pytest.mark.parametrize('gap, expected', [
    # 148 + pad 2 = 150 >= min_context; the pre-label [123, 148) may start before min_context.
    (148, dict(shift=[(B, 150, 155)], pred_shift=[(B, 123, 148)], long=[(B, 173, 183)])),
    (147, {}),  # 147 + 2 < 150
])
def test_shift_min_context_boundary(gap, expected):
  check(TurnTakingEvents(50)(make_va(400, a=[(0, gap)], b=[(gap + 25, 400)])), expected)


@pytest.mark.parametrize('bc_start, expected', [
    (149, {}),  # starts before min_context 150
    (150, dict(short=[(B, 150, 160)])),  # pre-label 125 < 150: none
    (175, dict(short=[(B, 175, 185)], pred_bc=[(B, 150, 175)])),
])
def test_backchannel_min_context_boundary(bc_start, expected):
  va = make_va(500, a=[(0, 400)], b=[(bc_start, bc_start + 10)])  # 10 frames = bc_min_duration
  check(TurnTakingEvents(50)(va), expected)


@pytest.mark.parametrize('a, b', [
    # Leading silence: B's first words have no previous speaker (last speaker 2).
    ([(300, 500)], [(200, 210)]),
    # A and B stop together after an overlap: the silence's last speaker is 2. (B's [240, 300)
    # is 60 frames, too long for a backchannel itself.)
    ([(0, 300), (500, 700)], [(240, 300), (400, 410)]),
])
def test_short_utterance_without_previous_speaker_is_no_backchannel(a, b):
  check(TurnTakingEvents(50)(make_va(700, a=a, b=b)), {})


@pytest.mark.parametrize('max_frame, expected', [
    (300, {}),  # the gap starts at max_frame
    (305, dict(pred_shift=[(B, 275, 300)])),  # pre-label set before the end check
    (307, dict(pred_shift=[(B, 275, 300)])),  # shift end 307 >= max_frame
    (308, dict(pred_shift=[(B, 275, 300)], shift=[(B, 302, 307)])),
    (330, dict(pred_shift=[(B, 275, 300)], shift=[(B, 302, 307)])),  # onset end 330
    (331, dict(pred_shift=[(B, 275, 300)], shift=[(B, 302, 307)], long=[(B, 320, 330)])),
])
def test_max_frame_cuts_events_at_the_end(max_frame, expected):
  out = TurnTakingEvents(50)(make_va(400, a=[(0, 300)], b=[(320, 400)]), max_frame=max_frame)
  check(out, expected)
  assert all(v.shape == (max_frame, 2) for v in out.values())


@pytest.mark.parametrize('n_frames, expected', [
    (369, {}),  # B's 50 post-condition frames [320, 370) run past the end
    (370, dict(shift=[(B, 302, 307)], pred_shift=[(B, 275, 300)], long=[(B, 320, 330)])),
])
def test_post_window_past_the_end_fails(n_frames, expected):
  check(TurnTakingEvents(50)(make_va(n_frames, a=[(0, 300)], b=[(320, n_frames)])), expected)


@pytest.mark.parametrize('max_frame, expected', [
    (210, {}),  # BC end 210 >= max_frame: unlike shifts, no pre-label either
    (211, dict(short=[(B, 200, 210)], pred_bc=[(B, 175, 200)])),
])
def test_max_frame_cuts_backchannels(max_frame, expected):
  va = make_va(500, a=[(0, 400)], b=[(200, 210)])
  check(TurnTakingEvents(50)(va, max_frame=max_frame), expected)


@pytest.mark.parametrize('a_end, expected', [
    (49, {}),  # pre-condition window [-1, 49) starts before frame 0: fails
    (50, dict(shift=[(B, 52, 57)], pred_shift=[(B, 25, 50)], long=[(B, 70, 80)])),
])
def test_pre_condition_before_the_first_frame_fails(a_end, expected):
  va = make_va(200, a=[(0, a_end)], b=[(a_end + 20, 200)])
  check(TurnTakingEvents(50, min_context=0)(va), expected)


def test_pre_label_before_the_first_frame_is_dropped():
  # Pre-condition 20 frames [0, 20) holds; the 25-frame pre-label would start at -5.
  events = TurnTakingEvents(50, min_context=0, pre_offset_shift=0.4)
  check(events(make_va(200, a=[(0, 20)], b=[(40, 200)])),
        dict(shift=[(B, 22, 27)], long=[(B, 40, 50)]))


def test_shift_conditions_use_filled_va_and_backchannels_raw_va():
  # A talks [0, 290), B [300, 310), 110 silent frames, B again [420, 600).
  # Filled VA: B's silence [310, 420) lies between two B runs, so it counts as B's.
  # Shift at gap 290: A only in [240, 290); B only in filled [300, 350) -> shift [292, 297),
  #   pre-label [265, 290), onset [300, 310).
  # Hold B-sil-B at 310: its pre-condition [260, 310) contains A -> no hold.
  # Backchannel on raw B: 10 frames, last speaker before it A, silent 300 >= 50 before and
  #   110 >= 100 after -> short [300, 310), pre-label [275, 300).
  va = make_va(600, a=[(0, 290)], b=[(300, 310), (420, 600)])
  check(TurnTakingEvents(50)(va), dict(
      shift=[(B, 292, 297)], pred_shift=[(B, 265, 290)], long=[(B, 300, 310)],
      short=[(B, 300, 310)], pred_bc=[(B, 275, 300)]))


def test_pause_inside_the_pre_window_is_filled():
  # A [0, 270) and [280, 300): the pause is filled, so [250, 300) is all A -> shift at 300.
  # The pause itself is no hold: A's post window [280, 330) holds only 20 frames of A.
  va = make_va(400, a=[(0, 270), (280, 300)], b=[(320, 400)])
  check(TurnTakingEvents(50)(va),
        dict(shift=[(B, 302, 307)], pred_shift=[(B, 275, 300)], long=[(B, 320, 330)]))


# Negatives.

# Alternating turns A, B, A, ... at 50 Hz: 200 frames, then 140 each, with these gaps (frames).
GAPS = (10, 5, 10, 5, 10, 10, 5, 10)
LENGTHS = (200,) + (140,) * len(GAPS)


def alternating_turns():
  """VA, turn onsets and channels; the dialog ends 10 frames after the last turn."""
  onsets = np.cumsum((0,) + tuple(n + g for n, g in zip(LENGTHS, GAPS)))
  channels = np.arange(len(onsets)) % 2
  va = np.zeros((onsets[-1] + 150, 2), np.int32)
  for onset, n, ch in zip(onsets, LENGTHS, channels):
    va[onset:onset + n, ch] = 1
  return va, onsets, channels


def test_negatives_are_balanced_windows_in_the_non_shift_region():
  va, onsets, channels = alternating_turns()
  out = TurnTakingEvents(50)(va)
  # Gaps of 10 >= 7 are shifts (5 of them, the first at 200 + 2 >= 150), gaps of 5 are not.
  assert len(segments(out['pred_shift'])) == 5
  # Turn k >= 1's non-shift (and only-one-speaker) run is [onset, next onset - horizon 100) =
  # [o, o + 40 + gap) (the last turn: [o, T - 100) = [o, o + 50)); turn 0's, [0, 110), lies
  # before min_context. Each run is 45 or 50 frames, > 25: one window at a random pad of 3..9.
  region = np.zeros(va.shape, bool)
  for k in range(1, len(onsets)):
    region[onsets[k]:onsets[k] + 40 + (GAPS + (10,))[k], channels[k]] = True
  neg = out['pred_shift_neg']
  assert not (neg & ~region).any()
  runs = segments(neg)
  assert len(runs) == 5  # 8 candidates, as many negatives as positive islands
  for ch, start, end in runs:
    k = np.searchsorted(onsets, start) - 1
    assert ch == channels[k] and 3 <= start - onsets[k] <= 9 and end - start == 25
  assert not out['pred_bc_neg'].any()


def test_shift_negatives_skip_silences():
  # A [0, 160), pause, A [260, 290), gap, B [310, 430). Shift at 290 (the pause is filled, so
  # [240, 290) is all A): one positive. No hold at 160: A's post window [260, 310) has 30 frames.
  va = make_va(430, a=[(0, 160), (260, 290)], b=[(310, 430)])
  out = TurnTakingEvents(50)(va)
  check(out, dict(shift=[(B, 292, 297)], pred_shift=[(B, 265, 290)], long=[(B, 310, 320)]))
  # A keeps the floor while its future t+1..t+100 has no B (t < 210) and some A (t != 159,
  # whose future 160..259 is the silent pause): [150, 159) and [160, 210), the latter in the
  # pause. B's would start at 310 but futures end at T - 100 = 330.
  ls = ev.last_speaker(ev.dialog_states(va))
  floor = ev.non_shift(va[None], ls[None], 100, min_context=150)[0]
  assert segments(floor) == [(A, 150, 159), (A, 160, 210), (B, 310, 330)]
  # Only-one-speaker frames leave [150, 159) and [310, 330), both <= 25 frames: no candidate,
  # no negative (the 50-frame run in the pause would give one).
  assert not out['pred_shift_neg'].any()


def test_negatives_are_deterministic_per_seed():
  va, _, _ = alternating_turns()
  first = TurnTakingEvents(50, seed=0)(va)['pred_shift_neg']
  np.testing.assert_array_equal(TurnTakingEvents(50, seed=0)(va)['pred_shift_neg'], first)
  explicit = TurnTakingEvents(50)(va, rng=np.random.default_rng(0))['pred_shift_neg']
  np.testing.assert_array_equal(explicit, first)
  assert not np.array_equal(TurnTakingEvents(50, seed=1)(va)['pred_shift_neg'], first)


# Shapes and batches.

def test_batch_matches_one_dialog_at_a_time():
  dialogs = [seconds_va(50, 10, **segs) for segs, _ in SCENARIOS.values()]
  events = TurnTakingEvents(50)
  for max_frame in (None, 400):
    batch = events(np.stack(dialogs), max_frame=max_frame)
    for i, va in enumerate(dialogs):
      single = events(va, max_frame=max_frame)
      for key in DETERMINISTIC:
        assert single[key].shape == (max_frame or 500, 2)
        np.testing.assert_array_equal(batch[key][i], single[key], err_msg=key)
  assert set(batch) == set(ev.EVENT_KEYS)


@pytest.mark.parametrize('va, message', [
    (np.zeros((10, 3)), r'shape \[B, T, 2\] or \[T, 2\]'),
    (np.zeros((10,)), r'shape \[B, T, 2\] or \[T, 2\]'),
    (np.zeros((1, 2, 10, 2)), r'shape \[B, T, 2\] or \[T, 2\]'),
    (np.zeros((0, 2)), 'T >= 1'),
    (np.full((10, 2), 0.5), r'values must be 0 or 1, got e.g. \[0.5\]'),
    (np.full((10, 2), 2), r'values must be 0 or 1, got e.g. \[2\]'),
])
def test_bad_input_is_rejected(va, message):
  with pytest.raises(ValueError, match=message):
    TurnTakingEvents(50)(va)


@pytest.mark.parametrize('max_frame', [0, 11])
def test_bad_max_frame_is_rejected(max_frame):
  with pytest.raises(ValueError, match=r'max_frame must be in \[1, 10\]'):
    TurnTakingEvents(50)(np.zeros((10, 2)), max_frame=max_frame)


# Random dialogs against a literal loop port of the spec's pseudo-code (sections 4.2-4.5).

def loop_runs(x):
  starts, durs, vals = [], [], []
  for i, v in enumerate(x):
    if vals and v == vals[-1]:
      durs[-1] += 1
    else:
      starts.append(i)
      durs.append(1)
      vals.append(int(v))
  return starts, durs, vals


def loop_reference(va, e, max_frame):
  """Deterministic events of one [T, 2] dialog, slice by slice as in the pseudo-code."""
  n = len(va)
  ds = [2 * int(b) - int(a) + 1 for a, b in va]
  s, d, v = loop_runs(ds)
  last = list(v)
  for i in range(len(v)):
    if v[i] == 1:
      last[i] = 2 if i == 0 else last[i - 1]
  last = np.repeat([1 if x == 3 else x for x in last], d)
  filled = np.array(va)
  for i in range(1, len(v) - 1):
    for ch, st in ((0, 0), (1, 3)):
      if (v[i - 1], v[i], v[i + 1]) == (st, 1, st):
        filled[s[i]:s[i] + d[i], ch] = 1
  out = {k: np.zeros((n, 2), bool) for k in DETERMINISTIC}

  def match(template, pre_cond, post_cond, name, pre_name=None, onset_name=None):
    hold = template[0][0] == template[0][-1]
    for ns in (0, 1):
      for pre in range(len(v) - 2):
        if tuple(v[pre:pre + 3]) != template[ns]:
          continue
        ps = ns if hold else 1 - ns
        cur, post = pre + 1, pre + 2
        if d[cur] < e.min_silence or s[cur] - pre_cond < 0:
          continue
        window = filled[s[cur] - pre_cond:s[cur]]
        if window[:, ps].sum() != pre_cond or window[:, 1 - ps].sum() != 0:
          continue
        window = filled[s[post]:s[post] + post_cond]
        if window[:, ns].sum() != post_cond or window[:, 1 - ns].sum() != 0:
          continue
        if max_frame is not None and s[cur] >= max_frame:
          continue
        if s[cur] + e.pad < e.min_context:
          continue
        if pre_name and s[cur] - e.pre_label_dur >= 0:
          out[pre_name][s[cur] - e.pre_label_dur:s[cur], ns] = True
        end = s[cur] + e.pad + e.dur
        if max_frame is not None and end >= max_frame:
          continue
        out[name][s[cur] + e.pad:end, ns] = True
        if onset_name:
          end = s[post] + e.onset_dur
          if max_frame is not None and end >= max_frame:
            continue
          out[onset_name][s[post]:end, ns] = True

  match(((3, 1, 0), (0, 1, 3)), e.pre_offset_shift, e.post_onset_shift, 'shift', 'pred_shift',
        'long')
  match(((0, 1, 0), (3, 1, 3)), e.pre_offset_hold, e.post_onset_hold, 'hold')
  for sp in (0, 1):
    st, du, va_sp = loop_runs(va[:, sp])
    for i in range(1, len(st) - 1):
      if va_sp[i] == 0 or not e.bc_min_duration <= du[i] <= e.bc_max_duration:
        continue
      if last[st[i] - 1] != 1 - sp or du[i - 1] < e.bc_pre_silence:
        continue
      if du[i + 1] < e.bc_post_silence:
        continue
      end = st[i] + e.bc_metric_dur
      if (max_frame is not None and end >= max_frame) or st[i] < e.min_context:
        continue
      out['short'][st[i]:end, sp] = True
      if st[i] - e.bc_pre_label_dur >= e.min_context:
        out['pred_bc'][st[i] - e.bc_pre_label_dur:st[i], sp] = True
  return {k: x[:max_frame] for k, x in out.items()}


def random_dialog(rng, n_frames, hz=50):
  """Alternating turns with pauses, gaps, overlaps and short interjections."""
  va = np.zeros((n_frames, 2), np.int32)
  t, speaker = 0, 0
  while t < n_frames:
    end = min(t + int(rng.uniform(0.5, 6) * hz), n_frames)
    va[t:end, speaker] = 1
    for _ in range(rng.integers(0, 3)):
      p = rng.integers(t, end)
      va[p:p + int(rng.uniform(0.05, 0.6) * hz), speaker] = 0
    if rng.random() < 0.4 and end - t > hz:
      p = rng.integers(t, end - hz // 2)
      va[p:p + int(rng.uniform(0.1, 1.2) * hz), 1 - speaker] = 1
    t, speaker = max(end + int(rng.uniform(-0.4, 1.5) * hz), 0), 1 - speaker
  return va


def test_random_dialogs_match_the_loop_port():
  rng = np.random.default_rng(1)
  events = TurnTakingEvents(50)
  dialogs = np.stack([random_dialog(rng, 3000) for _ in range(8)])
  for max_frame in (None, 2900):
    batch = events(dialogs, max_frame=max_frame)
    for i, va in enumerate(dialogs):
      expected = loop_reference(va, events, max_frame)
      for key in DETERMINISTIC:
        np.testing.assert_array_equal(batch[key][i], expected[key], err_msg=key)
  assert sum(len(segments(batch[k][i])) for k in DETERMINISTIC for i in range(8)) > 100
