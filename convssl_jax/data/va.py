"""Voice activity (VA): the reference's segment lists, their frame form, and the VA history.

A VA list is the reference's JSON format `[[[start, end], ...], [[start, end], ...]]`: seconds,
channel 0 = speaker A, channel 1 = speaker B, segments sorted and disjoint within a channel.
"""

import numbers
import reprlib
from collections.abc import Sequence

import numpy as np

from convssl_jax import errors

HISTORY_TIMES = (60, 30, 10, 5)
# How far a VA list may run past the end of its audio (rounding of times, a last frame); more
# means the list belongs to another recording (or the audio was cut) and is refused.
END_TOLERANCE_S = 0.05


class _ShortRepr(reprlib.Repr):
  """Bounded reprs for messages: a hostile list may hold millions of items or huge integers."""

  def repr_int(self, x, level):
    try:
      return super().repr_int(x, level)
    except ValueError:  # past Python's int -> str limit
      return f'<{x.bit_length()}-bit int>'


_short = _ShortRepr(maxlevel=2, maxlist=4, maxtuple=4, maxother=40).repr


def _is_time(v) -> bool:
  if not isinstance(v, numbers.Real) or isinstance(v, bool):
    return False
  try:
    float(v)
  except OverflowError:  # an int too large for float64
    return False
  return True


def _is_pair(seg) -> bool:
  return (isinstance(seg, (Sequence, np.ndarray)) and not isinstance(seg, str) and len(seg) == 2
          and all(_is_time(v) for v in seg))


def validate_va_list(va_list, *, source: str, duration_s: float | None = None) -> list[np.ndarray]:
  """Checks a VA list and returns it as two float64 [n, 2] arrays (one per channel).

  Raises InputError naming `source` (a file name, plus any context the caller adds), the channel
  and the segment for: not exactly two channels, a segment that is not a pair of finite numbers,
  a negative time, end < start, a segment starting before the previous one ends (unsorted or
  overlapping) and, given the audio's `duration_s`, a segment ending more than END_TOLERANCE_S
  after it (which also bounds every time, so frames never overflow or grow with a bad time).
  Touching (end == next start) and empty (start == end) segments are allowed.
  """
  if not isinstance(va_list, (list, tuple)) or len(va_list) != 2:
    n = len(va_list) if isinstance(va_list, (list, tuple)) else type(va_list).__name__
    raise errors.InputError(f'{source}: expected 2 channels of [start, end] segments, got {n}')
  channels = []
  for c, channel in enumerate(va_list):
    if not isinstance(channel, (list, tuple, np.ndarray)):
      raise errors.InputError(f'{source}: channel {c} is not a list of segments: '
                              f'{_short(channel)}')
    for i, seg in enumerate(channel):
      if not _is_pair(seg):
        raise errors.InputError(f'{source}: channel {c} segment {i} {_short(seg)}: not a [start, '
                                'end] pair of numbers')
    segs = np.asarray(channel, np.float64).reshape(-1, 2)
    starts, ends = segs[:, 0], segs[:, 1]
    checks = [
        (~np.isfinite(segs).all(axis=1), 'not finite'),
        ((segs < 0).any(axis=1), 'negative time'),
        (ends < starts, 'reversed (end < start)'),
        (np.r_[False, starts[1:] < ends[:-1]], 'starts before the previous segment ends'),
    ]
    if duration_s is not None:
      checks.append((ends > duration_s + END_TOLERANCE_S,
                     f'ends after the end of the audio ({duration_s:.2f} s); is it this '
                     "recording's VA list? Cut it to the audio"))
    for bad, what in checks:
      if bad.any():
        i = int(np.argmax(bad))
        prev = f' {_short(channel[i - 1])}' if what.startswith('starts') else ''
        raise errors.InputError(f'{source}: channel {c} segment {i} {_short(channel[i])}: '
                                f'{what}{prev}')
    channels.append(segs)
  return channels


def va_segments(va_list, *, source: str, duration_s: float | None = None) -> np.ndarray:
  """A VA list, validated (against the audio's `duration_s` when given, see `validate_va_list`)
  -> the stored segment table [n, 3] (channel, start, end). Readers of a recording with its VA
  list call this once, at the edge, with the audio's duration."""
  channels = validate_va_list(va_list, source=source, duration_s=duration_s)
  rows = [np.column_stack([np.full(len(seg), c, np.float64), seg]) for c, seg in enumerate(channels)]
  return np.concatenate(rows).reshape(-1, 3)


def channel_segments(segments: np.ndarray) -> list[np.ndarray]:
  """A segment table [n, 3] -> each channel's [k, 2] (start, end) rows, A then B."""
  return [segments[segments[:, 0] == c, 1:] for c in (0, 1)]


def time_to_frames(seconds, frame_hz: float):
  """Seconds -> frame index, the reference's `int(t / hop)` with hop = 1 / frame_hz in float64.

  Dividing by the hop is not the same as multiplying by the rate: 0.94 / 0.02 = 46.99... -> 46,
  while 0.94 * 50 = 47.0. Works on scalars (-> int) and arrays (-> int64).
  """
  frames = np.floor(np.asarray(seconds, np.float64) / (1.0 / frame_hz)).astype(np.int64)
  return int(frames) if frames.ndim == 0 else frames


def num_frames(duration_s: float, frame_hz: float) -> int:
  """Frames of a dialog: int(duration / hop), the VAP rule.

  The older vap_turn_taking / datasets_turntaking rule is int(duration / hop) + 1, one frame more.
  """
  return time_to_frames(duration_s, frame_hz)


def va_frames(va_list, n_frames: int, frame_hz: float) -> np.ndarray:
  """VA list (raw or validated) -> [n_frames, 2] float32 {0, 1}.

  A segment sets frames [time_to_frames(start), time_to_frames(end)): both ends truncate and the
  end is exclusive, as in the reference (0.29 s at 100 Hz is 28.999... -> frame 28). Frames
  past `n_frames` are dropped; times are clipped before they become integers, so a huge time
  (1e300 s) covers the frames to the end instead of overflowing. The output is the only array
  of the frames' size.
  """
  out = np.zeros((n_frames, 2), np.float32)
  for c, channel in enumerate(va_list):
    segs = np.asarray(channel, np.float64).reshape(-1, 2)
    seconds = np.clip(segs, 0, (n_frames + 1) / frame_hz)  # past the last frame either way
    bounds = np.minimum(time_to_frames(seconds, frame_hz), n_frames)
    for start, end in bounds:
      out[start:end, c] = 1
  return out


class VAFrameStream:
  """A VA list's frames block by block, for streams of unknown length (stdin, a microphone):
  `take(n)` gives the next n frames [n, 2] float32, equal to `va_frames` over the same frames.
  Memory is that of the list and the block asked for, whatever the times (a segment ending at
  2e6 s costs nothing until its frames are asked for); frames after the list's end are silence.
  """

  # Times are clipped here before they become frame indices: 1e15 s is past any stream and its
  # frames stay far inside int64.
  _MAX_S = 1e15

  def __init__(self, va_list, frame_hz: float, *, source: str, duration_s: float | None = None):
    """`va_list` is checked by `validate_va_list` (against the audio's `duration_s` when known,
    e.g. a file's), InputError naming `source`."""
    self.frame_hz = frame_hz
    channels = validate_va_list(va_list, source=source, duration_s=duration_s)
    self._bounds = [time_to_frames(np.clip(segs, 0, self._MAX_S), frame_hz).reshape(-1, 2)
                    for segs in channels]
    self._next = [0, 0]  # per channel: the first segment that may still cover a frame
    self.frame = 0  # frames given so far

  def take(self, n: int) -> np.ndarray:
    """The next `n` frames [n, 2]."""
    first, stop = self.frame, self.frame + n
    out = np.zeros((n, 2), np.float32)
    for c, bounds in enumerate(self._bounds):
      i = self._next[c]
      while i < len(bounds) and bounds[i, 1] <= first:  # ends are ordered: validated segments
        i += 1
      self._next[c] = i
      while i < len(bounds) and bounds[i, 0] < stop:
        out[max(bounds[i, 0], first) - first:min(bounds[i, 1], stop) - first, c] = 1
        i += 1
    self.frame = stop
    return out


def va_history(va: np.ndarray, frame_hz: float,
               history_times: Sequence[float] = HISTORY_TIMES) -> np.ndarray:
  """Speaker A's share of the past activity, [T, 2] -> [T, len(history_times) + 1] float32.

  The reference's `get_activity_history`, computed over the whole dialog before windowing. With
  bin edges e = (int(60 hz), int(30 hz), int(10 hz), int(5 hz), 0) frames (3000, 1500, 500, 250,
  0 at 50 Hz), the bins of frame t partition [0, t]:
    bin 0: frames [0, t - e0],  bin k >= 1: frames [t - e(k-1) + 1, t - e(k)],
  clipped at frame 0, so the last bin [t - e3 + 1, t] includes the current frame. Each value is
  A / (A + B) over the bin's frames, and 0.5 where that is undefined: no activity, or the bin
  ends before the dialog starts (t < e(k)).
  """
  return VAHistory(frame_hz, history_times)(np.asarray(va)[None])[0]


class VAHistory:
  """`va_history` frame by frame for streams: call it on each new block of frames [B, n, 2].

  It keeps the cumulative activity of the last e0 + 1 frame boundaries (e0 = 60 s of frames), so
  memory is bounded however long the stream; bin 0 reaches back to frame 0 through the running
  total. Over a whole dialog in one call it is `va_history` itself.
  """

  def __init__(self, frame_hz: float, history_times: Sequence[float] = HISTORY_TIMES,
               batch: int = 1):
    self.edges = np.array([int(h * frame_hz) for h in history_times] + [0], np.int64)
    if np.any(np.diff(self.edges) >= 0):
      raise ValueError(f'history_times must be positive and decreasing, got {history_times}')
    # cum[k] = activity over frames < k, for k = t - e0 .. t (t = frames seen); 0 before frame 0.
    self._cum = np.zeros((batch, self.edges[0] + 1, 2))

  def __call__(self, va: np.ndarray) -> np.ndarray:
    """The next frames' VA [B, n, 2] -> their history [B, n, bins] float32."""
    va = np.asarray(va, np.float64)
    if va.ndim != 3 or va.shape[0] != len(self._cum) or va.shape[2] != 2:
      raise ValueError(f'expected VA frames [{len(self._cum)}, n, 2], got {va.shape}')
    past = len(self._cum[0])
    cum = np.concatenate([self._cum, self._cum[:, -1:] + np.cumsum(va, axis=1)], axis=1)
    # Frame j of the block has its bins end (exclusively) at cum index j - e + 1 + past - 1.
    stop = np.arange(va.shape[1])[:, None] - self.edges + past
    activity = cum[:, stop] - np.concatenate(  # bin 0 starts at frame 0, where cum is 0
        [np.zeros_like(cum[:, stop[:, :1]]), cum[:, stop[:, :-1]]], axis=2)  # [B, n, bins, 2]
    self._cum = cum[:, -past:]
    total = activity.sum(-1)
    ratio = np.where(total > 0, activity[..., 0] / np.where(total > 0, total, 1.0), 0.5)
    return ratio.astype(np.float32)


def _merge_words(words, min_gap: float) -> list[list[float]]:
  """One run of (start, end) words -> segments: a word starting less than `min_gap` after the
  segment's end extends it (to that word's end), otherwise it starts a new segment."""
  segments = []
  for w_start, w_end in words:
    if segments and w_start - segments[-1][1] < min_gap:
      segments[-1][1] = w_end
    else:
      segments.append([w_start, w_end])
  return [[round(s, 2), round(e, 2)] for s, e in segments]


def unite_segments(segments) -> list[list[float]]:
  """(start, end) segments of one speaker, sorted, with overlapping ones united: the same frames
  as setting each segment's (the reference's), in the sorted, disjoint form a VA list needs."""
  united = []
  for start, end in sorted(segments):
    if united and start < united[-1][1]:
      united[-1][1] = max(united[-1][1], end)
    else:
      united.append([start, end])
  return united


def words_to_va(words, min_gap: float = 0.05) -> list[list[list[float]]]:
  """Word timings per channel -> VA list (the reference's `extract_vad_list_from_words`).

  `words[c]` is either a flat list of (start, end) words (Fisher: merged over the whole channel)
  or a list of utterances, each a list of words (Switchboard: never merged across utterances).
  Both ends of every segment are rounded to 2 decimals. The reference is inconsistent here: its
  Switchboard loader rounds inner segment ends to whole seconds (`round(end)`, a bug) and its
  Fisher loader leaves the last segment unrounded, so released models saw slightly different VA.
  Segments of utterances that overlap (or come out of order) are united (`unite_segments`).
  """
  va = []
  for channel in words:
    utterances = [channel] if all(_is_pair(w) for w in channel) else channel
    va.append(unite_segments([seg for utt in utterances for seg in _merge_words(utt, min_gap)]))
  return va
