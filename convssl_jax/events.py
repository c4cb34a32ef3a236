"""Turn-taking events from voice activity: shifts, holds, short/long onsets, prediction windows.

A reimplementation of `vap_turn_taking`'s `TurnTakingEvents` (reference/vap_spec.md section 4),
in vectorised numpy. Every event is a bool mask [B, T, 2] whose channel is the speaker the event
is about:

* `shift`, `hold`: `dur` frames starting `pad` frames into a gap, on the next speaker (for a hold
  that is the speaker who keeps the turn). Gap shifts only: an overlap shift is no event.
* `long`: the first `onset_dur` frames of the next speaker after a gap shift.
* `short`: the first `bc_metric_dur` frames of a backchannel, on the backchanneler.
* `pred_shift` / `pred_bc`: the `pre_label_dur` (`bc_pre_label_dur`) frames before a shift's gap
  / a backchannel's onset, on the next speaker / the backchanneler.
* `pred_shift_neg` / `pred_bc_neg`: windows of `pre_label_dur` frames sampled from the current
  speaker's non-shift region (only-one-speaker activity for shift negatives), as many as there
  are positive islands. The reference draws them from NumPy's and torch's global RNGs; here they
  come from an explicit `numpy.random.Generator`, so they cannot match the reference draw for
  draw, only in distribution.

Dialog states are 0 = only A, 1 = silence, 2 = both, 3 = only B (`2 vb - va + 1`).
"""

import numpy as np

ONLY_A, SILENCE, BOTH, ONLY_B = 0, 1, 2, 3
# Run triples of dialog states; the row is the next speaker. Both are gap (silence) templates.
SHIFT_TEMPLATE = ((ONLY_B, SILENCE, ONLY_A), (ONLY_A, SILENCE, ONLY_B))
HOLD_TEMPLATE = ((ONLY_A, SILENCE, ONLY_A), (ONLY_B, SILENCE, ONLY_B))
LONG_MAX_SEGMENTS = 1000  # the reference's cap on `long` segments (effectively all of them)
ONSET_PAD_MIN, ONSET_PAD_MAX = 3, 10  # negatives' onset pad, frames at any frame rate
RATIO_EPS = 1e-5  # the reference's epsilon in the non-shift activity ratio
EVENT_KEYS = ('shift', 'hold', 'short', 'long', 'pred_shift', 'pred_shift_neg', 'pred_bc',
              'pred_bc_neg')


def seconds_to_frames(seconds: float, frame_hz: int) -> int:
  """Truncating conversion, the reference's `int(v * f)` in Python floats (0.05 s, 50 Hz -> 2)."""
  return int(seconds * frame_hz)


def dialog_states(va) -> np.ndarray:
  """va [..., T, 2] {0,1} -> states [..., T] int32: 0 only A, 1 silence, 2 both, 3 only B."""
  va = np.asarray(va, np.int32)
  return 2 * va[..., 1] - va[..., 0] + 1


def _runs(x: np.ndarray):
  """Maximal runs of equal values in every row of x [R, T] (T >= 1), rows in order.

  Returns int arrays (row, start, duration, value), one entry per run.
  """
  n_rows, n_frames = x.shape
  new = np.ones(x.shape, bool)
  new[:, 1:] = x[:, 1:] != x[:, :-1]
  row, start = np.nonzero(new)
  # Every row opens a run at frame 0, so consecutive flat starts delimit each run.
  flat = row * n_frames + start
  dur = np.diff(np.append(flat, n_rows * n_frames))
  return row, start, dur, x[row, start]


def islands(x):
  """Runs of equal values of a 1-D sequence: (starts, durations, values)."""
  x = np.asarray(x)
  if x.ndim != 1 or x.size == 0:
    raise ValueError(f'islands needs a non-empty 1-D sequence, got shape {x.shape}')
  _, start, dur, value = _runs(x[None])
  return start, dur, value


def _last_speech_state(ds: np.ndarray) -> np.ndarray:
  """State of the latest non-silent frame at or before each frame of ds [..., T]; -1 before any."""
  t = np.arange(ds.shape[-1])
  idx = np.maximum.accumulate(np.where(ds != SILENCE, t, -1), axis=-1)
  state = np.take_along_axis(ds, np.maximum(idx, 0), axis=-1)
  return np.where(idx >= 0, state, -1)


def last_speaker(ds) -> np.ndarray:
  """Last speaker per frame [..., T]: 0 = A, 1 = B, 2 = overlap or unknown.

  A silence inherits the speaker before it (2 after an overlap); a leading silence is 2.
  """
  prev = _last_speech_state(np.asarray(ds))
  return np.select([prev == ONLY_A, prev == ONLY_B], [0, 1], 2).astype(np.int32)


def fill_pauses(va, ds) -> np.ndarray:
  """va [..., T, 2] with every pause inside one speaker's turn (A-sil-A, B-sil-B) set active."""
  va = np.asarray(va)
  ds = np.asarray(ds)
  prev = _last_speech_state(ds)
  nxt = _last_speech_state(ds[..., ::-1])[..., ::-1]
  silent = ds == SILENCE
  filled = va.copy()
  for ch, state in ((0, ONLY_A), (1, ONLY_B)):
    filled[..., ch] = np.where(silent & (prev == state) & (nxt == state), 1, va[..., ch])
  return filled


def _cumsum(va: np.ndarray) -> np.ndarray:
  """[B, T, 2] -> [B, T+1, 2] int64 prefix sums, so window [a, b) sums to c[b] - c[a]."""
  out = np.zeros((va.shape[0], va.shape[1] + 1, 2), np.int64)
  np.cumsum(va, axis=1, out=out[:, 1:])
  return out


def _window_sum(csum, b, ch, start, end):
  """Sums of frames [start, end) of row b, channel ch; the window is clipped to the sequence."""
  n = csum.shape[1] - 1
  return csum[b, np.clip(end, 0, n), ch] - csum[b, np.clip(start, 0, n), ch]


def _paint(shape, b, ch, start, end) -> np.ndarray:
  """Bool mask of `shape` [B, T, 2], True on frames [start, end) of (b, ch); 0 <= start <= end."""
  bsz, n, _ = shape
  end = np.minimum(end, n)  # a slice past the end stops at the end, as in the reference
  delta = np.zeros((bsz, n + 1, 2), np.int32)
  np.add.at(delta, (b, start, ch), 1)
  np.add.at(delta, (b, end, ch), -1)
  return np.cumsum(delta, axis=1)[:, :n] > 0


def non_shift(va, ls, horizon: int, majority_ratio: float = 1.0, max_frame=None,
              min_context: int = 0) -> np.ndarray:
  """Frames [B, T, 2] where the last speaker (channel) keeps the floor over the next `horizon`.

  Frame t qualifies when its future t+1 .. t+horizon holds at least `majority_ratio` of the
  activity for the last speaker (float32 arithmetic with the reference's epsilons); a silent
  future does not. Frames without a full future, from `max_frame` on, and before `min_context`
  are False.
  """
  va = np.asarray(va)
  bsz, n_frames, _ = va.shape
  n = max(min(n_frames - horizon, n_frames if max_frame is None else max_frame), 0)
  t = np.arange(n)
  csum = _cumsum(va)
  future = (csum[:, t + 1 + horizon] - csum[:, t + 1]).astype(np.float32)
  ratio = future / (future.sum(-1, keepdims=True) + np.float32(RATIO_EPS))
  majority = np.float32(majority_ratio) <= ratio + np.float32(RATIO_EPS)
  out = np.zeros(va.shape, bool)
  out[:, :n] = majority & (np.asarray(ls)[:, :n, None] == np.arange(2))
  out[:, :min_context] = False
  return out


def _true_runs(x: np.ndarray):
  """Runs of True in x [B, T, 2], ordered by batch, channel, start: (b, ch, start, duration)."""
  bsz, n, _ = x.shape
  row, start, dur, value = _runs(x.transpose(0, 2, 1).reshape(bsz * 2, n))
  keep = value.astype(bool)
  return row[keep] // 2, row[keep] % 2, start[keep], dur[keep]


def count_islands(x) -> int:
  """Number of runs of True over all batch items and channels of x [B, T, 2]."""
  x = np.asarray(x, bool)
  return int(x[:, :1].sum() + (x[:, 1:] & ~x[:, :-1]).sum())


def _choose(k: int, n: int, rng: np.random.Generator) -> np.ndarray:
  """Indices of n of k candidates drawn without replacement, or all of them when k <= n."""
  return rng.choice(k, size=n, replace=False) if k > n else np.arange(k)


def sample_segments(x, n: int, rng: np.random.Generator) -> np.ndarray:
  """Keep whole runs of True of x [B, T, 2]: all of them, or n drawn at random if there are more."""
  x = np.asarray(x, bool)
  b, ch, start, dur = _true_runs(x)
  keep = _choose(len(start), n, rng)
  return _paint(x.shape, b[keep], ch[keep], start[keep], start[keep] + dur[keep])


def sample_negatives(x, n: int, dur: int, min_context: int,
                     rng: np.random.Generator) -> np.ndarray:
  """n windows of `dur` frames inside the runs of True of x [B, T, 2] (fewer if fewer fit).

  Candidate runs start at or after `min_context` and are longer than `dur`. A run [s, s+d) offers
  windows at s + pad, s + pad + dur, ... (starts before s + d - dur), where the onset pad is 0, 3
  or a random 3..9 frames for runs with d - dur at most 3, at most 10, or more.
  """
  x = np.asarray(x, bool)
  if n == 0:
    return np.zeros(x.shape, bool)
  b, ch, start, length = _true_runs(x)
  ok = (start >= min_context) & (length > dur)
  b, ch, start, span = b[ok], ch[ok], start[ok], length[ok] - dur
  pad = np.where(span <= ONSET_PAD_MIN, 0, ONSET_PAD_MIN)
  wide = span > ONSET_PAD_MAX
  pad[wide] = rng.integers(ONSET_PAD_MIN, ONSET_PAD_MAX, size=int(wide.sum()))
  count = -(-(span - pad) // dur)  # len(range(start + pad, start + span, dur)), span > pad
  run = np.repeat(np.arange(len(start)), count)
  step = np.arange(len(run)) - np.repeat(np.cumsum(count) - count, count)
  onset = start[run] + pad[run] + step * dur
  keep = _choose(len(onset), n, rng)
  return _paint(x.shape, b[run][keep], ch[run][keep], onset[keep], onset[keep] + dur)


def _as_batch(va):
  """Validated va as uint8 [B, T, 2], and whether the input was a single [T, 2] dialog."""
  va = np.asarray(va)
  if va.ndim not in (2, 3) or va.shape[-1] != 2 or va.shape[-2] == 0:
    raise ValueError(f'va must have shape [B, T, 2] or [T, 2] with T >= 1, got {va.shape}')
  if not np.isin(va, (0, 1)).all():
    bad = np.unique(va[~np.isin(va, (0, 1))])[:5]
    raise ValueError(f'va values must be 0 or 1, got e.g. {bad.tolist()}')
  va = va.astype(np.uint8)
  return (va[None], True) if va.ndim == 2 else (va, False)


class TurnTakingEvents:
  """Event masks of `vap_turn_taking` (paper settings by default, in seconds).

  Attributes hold the settings in frames (`int(seconds * frame_hz)`), except
  `non_shift_majority_ratio` (a ratio; the reference's blanket conversion would turn it into
  frames too if a config set it, which none does) and `seed`. `min_silence = pad + dur` is the
  shortest gap that can be a shift or a hold.
  """

  def __init__(self, frame_hz: int = 50, *, pad=0.05, dur=0.1, pre_label_dur=0.5, onset_dur=0.2,
               min_context=3.0, pre_offset_shift=1.0, post_onset_shift=1.0, pre_offset_hold=1.0,
               post_onset_hold=1.0, non_shift_horizon=2.0, non_shift_majority_ratio=1.0,
               bc_max_duration=1.0, bc_pre_silence=1.0, bc_post_silence=2.0, bc_min_duration=0.2,
               bc_metric_dur=0.2, bc_pre_label_dur=0.5, seed=0):
    seconds = dict(pad=pad, dur=dur, pre_label_dur=pre_label_dur, onset_dur=onset_dur,
                   min_context=min_context, pre_offset_shift=pre_offset_shift,
                   post_onset_shift=post_onset_shift, pre_offset_hold=pre_offset_hold,
                   post_onset_hold=post_onset_hold, non_shift_horizon=non_shift_horizon,
                   bc_max_duration=bc_max_duration, bc_pre_silence=bc_pre_silence,
                   bc_post_silence=bc_post_silence, bc_min_duration=bc_min_duration,
                   bc_metric_dur=bc_metric_dur, bc_pre_label_dur=bc_pre_label_dur)
    if frame_hz <= 0:
      raise ValueError(f'frame_hz must be positive, got {frame_hz}')
    negative = {k: v for k, v in seconds.items() if v < 0}
    if negative:
      raise ValueError(f'event settings must be >= 0 seconds, got {negative}')
    f = {k: seconds_to_frames(v, frame_hz) for k, v in seconds.items()}
    if f['onset_dur'] > f['post_onset_shift']:
      raise ValueError(f"onset_dur ({f['onset_dur']} frames) must be <= post_onset_shift "
                       f"({f['post_onset_shift']} frames)")
    if f['bc_metric_dur'] > f['bc_max_duration']:
      raise ValueError(f"bc_metric_dur ({f['bc_metric_dur']} frames) must be <= "
                       f"bc_max_duration ({f['bc_max_duration']} frames)")
    self.frame_hz = frame_hz
    self.pad = f['pad']
    self.dur = f['dur']
    self.pre_label_dur = f['pre_label_dur']
    self.onset_dur = f['onset_dur']
    self.min_context = f['min_context']
    self.pre_offset_shift = f['pre_offset_shift']
    self.post_onset_shift = f['post_onset_shift']
    self.pre_offset_hold = f['pre_offset_hold']
    self.post_onset_hold = f['post_onset_hold']
    self.non_shift_horizon = f['non_shift_horizon']
    self.bc_max_duration = f['bc_max_duration']
    self.bc_pre_silence = f['bc_pre_silence']
    self.bc_post_silence = f['bc_post_silence']
    self.bc_min_duration = f['bc_min_duration']
    self.bc_metric_dur = f['bc_metric_dur']
    self.bc_pre_label_dur = f['bc_pre_label_dur']
    self.min_silence = self.pad + self.dur
    self.non_shift_majority_ratio = non_shift_majority_ratio
    self.seed = seed

  def match(self, filled, ds, template, pre_cond: int, post_cond: int, max_frame=None):
    """Gap events of one template: (event, pre-label, onset) masks [B, T, 2] on the next speaker.

    A run triple (pre, gap, post) of `ds` matching row `ns` of `template` is an event when the gap
    lasts at least `min_silence`, the `pre_cond` frames before it are only the previous speaker's
    and the `post_cond` frames from the onset only the next speaker's, both in the `filled` VA
    (a window reaching before frame 0 or past the end fails), the gap starts before `max_frame`
    and `gap + pad >= min_context`. The pre-label window (dropped if it would start before frame
    0) is set before the checks that the event (`end < max_frame`) and then the onset fit.
    """
    filled = np.asarray(filled)
    ds = np.asarray(ds)
    n_frames = ds.shape[1]
    limit = np.inf if max_frame is None else max_frame
    row, start, dur, value = _runs(ds)
    triples = np.stack([value[:-2], value[1:-1], value[2:]], -1)
    same_row = row[:-2] == row[2:]
    pre, ns = np.nonzero((triples[:, None] == np.asarray(template)).all(-1) & same_row[:, None])
    gap, post = pre + 1, pre + 2
    hold = template[0][0] == template[0][-1]
    prev = ns if hold else 1 - ns
    b, gap_start, onset = row[gap], start[gap], start[post]
    csum = _cumsum(filled)
    pre_start, post_end = gap_start - pre_cond, onset + post_cond
    ok = (dur[gap] >= self.min_silence) & (pre_start >= 0) & (post_end <= n_frames)
    ok &= _window_sum(csum, b, prev, pre_start, gap_start) == pre_cond
    ok &= _window_sum(csum, b, 1 - prev, pre_start, gap_start) == 0
    ok &= _window_sum(csum, b, ns, onset, post_end) == post_cond
    ok &= _window_sum(csum, b, 1 - ns, onset, post_end) == 0
    ok &= (gap_start < limit) & (gap_start + self.pad >= self.min_context)
    label = ok & (gap_start - self.pre_label_dur >= 0)
    end = gap_start + self.pad + self.dur
    ok &= end < limit
    onset_end = onset + self.onset_dur
    onset_ok = ok & (onset_end < limit)
    shape = filled.shape
    return (_paint(shape, b[ok], ns[ok], gap_start[ok] + self.pad, end[ok]),
            _paint(shape, b[label], ns[label], gap_start[label] - self.pre_label_dur,
                   gap_start[label]),
            _paint(shape, b[onset_ok], ns[onset_ok], onset[onset_ok], onset_end[onset_ok]))

  def backchannels(self, va, ls, max_frame=None):
    """(backchannel, pre-label) masks [B, T, 2] on the backchanneler, from the raw va.

    A run of activity of one speaker is a backchannel when it lasts bc_min_duration ..
    bc_max_duration frames, the other speaker was the last speaker on the frame before it, and
    the same speaker's own channel is silent for at least bc_pre_silence frames before and
    bc_post_silence after it (the other speaker may overlap). The mask covers its first
    bc_metric_dur frames (all of it if that is 0), must end before `max_frame` and start at or
    after min_context; the pre-label needs `onset - bc_pre_label_dur >= min_context`.
    """
    va = np.asarray(va)
    bsz, n_frames, _ = va.shape
    row, start, dur, value = _runs(va.transpose(0, 2, 1).reshape(bsz * 2, n_frames))
    b, ch = row // 2, row % 2
    inner = np.zeros(len(row), bool)  # runs with a (silent) run before and after in their row
    inner[1:-1] = (row[:-2] == row[1:-1]) & (row[2:] == row[1:-1])
    before = np.append(0, dur[:-1])
    after = np.append(dur[1:], 0)
    prev_speaker = np.asarray(ls)[b, np.maximum(start - 1, 0)]
    ok = inner & (value == 1) & (dur >= self.bc_min_duration) & (dur <= self.bc_max_duration)
    ok &= (prev_speaker == 1 - ch) & (before >= self.bc_pre_silence)
    ok &= after >= self.bc_post_silence
    end = start + (self.bc_metric_dur if self.bc_metric_dur > 0 else dur)
    limit = np.inf if max_frame is None else max_frame
    ok &= (end < limit) & (start >= self.min_context)
    label = ok & (start - self.bc_pre_label_dur >= self.min_context)
    return (_paint(va.shape, b[ok], ch[ok], start[ok], end[ok]),
            _paint(va.shape, b[label], ch[label], start[label] - self.bc_pre_label_dur,
                   start[label]))

  def __call__(self, va, max_frame=None, rng=None) -> dict[str, np.ndarray]:
    """Event masks of va [B, T, 2] or [T, 2] ({0,1}), each [B, max_frame, 2] (or [max_frame, 2]).

    Args:
      va: voice activity, typically the model's N frames plus the H label-horizon frames, so that
        post conditions, post silences and non-shift futures can look into the horizon.
      max_frame: events must start before it and their masks end before it (pre-labels of
        shifts excepted, as in the reference); outputs are cut to it. None = T without the checks.
      rng: `numpy.random.Generator` for `long` (capped at 1000 segments) and the negatives; by
        default a fresh `default_rng(self.seed)`, so a call is deterministic.
    """
    va, single = _as_batch(va)
    n_frames = va.shape[1]
    if max_frame is not None and not 1 <= max_frame <= n_frames:
      raise ValueError(f'max_frame must be in [1, {n_frames}] (T), got {max_frame}')
    rng = np.random.default_rng(self.seed) if rng is None else rng
    ds = dialog_states(va)
    ls = last_speaker(ds)
    filled = fill_pauses(va, ds)
    shift, pred_shift, shift_onset = self.match(
        filled, ds, SHIFT_TEMPLATE, self.pre_offset_shift, self.post_onset_shift, max_frame)
    hold, _, _ = self.match(
        filled, ds, HOLD_TEMPLATE, self.pre_offset_hold, self.post_onset_hold, max_frame)
    short, pred_bc = self.backchannels(va, ls, max_frame)
    floor = non_shift(va, ls, self.non_shift_horizon, self.non_shift_majority_ratio, max_frame,
                      self.min_context)
    one_speaker = ((ds == ONLY_A) | (ds == ONLY_B))[..., None]
    events = dict(
        shift=shift, hold=hold, short=short,
        long=sample_segments(shift_onset, LONG_MAX_SEGMENTS, rng),
        pred_shift=pred_shift,
        pred_shift_neg=sample_negatives(floor & one_speaker, count_islands(pred_shift),
                                        self.pre_label_dur, self.min_context, rng),
        pred_bc=pred_bc,
        pred_bc_neg=sample_negatives(floor, count_islands(pred_bc), self.pre_label_dur,
                                     self.min_context, rng))
    return {k: (v[0] if single else v)[..., :max_frame, :] for k, v in events.items()}
