"""Fixed-length training and evaluation windows cut from whole dialogs, as pure numpy.

A dialog is audio [S, C] at `sample_rate` plus frame-level arrays [T, ...] at `frame_hz` (VA,
VA history, F0). A window of D seconds gives D * sample_rate samples, N = int(D * frame_hz)
frames of inputs, and N + H frames of VA (the H horizon frames hold the labels' future).
"""

import numpy as np


def sliding_starts(duration_s: float, window_s: float, overlap_s: float) -> np.ndarray:
  """Window starts in seconds, every `window - overlap` seconds from 0 (datasets_turntaking).

  n = int((duration - window) / step + 1) windows; audio after the last full window is unused.
  A dialog shorter than one window gives one window at 0 (zero-padded by `cut_window`), where the
  reference would drop the dialog.
  """
  step = window_s - overlap_s
  if step <= 0:
    raise ValueError(f'overlap ({overlap_s} s) must be shorter than the window ({window_s} s)')
  if duration_s < window_s:
    return np.zeros(1)
  n = int((duration_s - window_s) / step + 1)
  return np.arange(0, duration_s, step, dtype=np.float64)[:n]


def jitter_offsets(step_s: float, grid_s: float) -> np.ndarray:
  """The offsets a training window may move by on a jitter grid: 0, g, 2g, ... below the step
  between consecutive windows (just 0 when the grid is as coarse as the step)."""
  if grid_s <= 0:
    raise ValueError(f'data.jitter_grid_s must be > 0 for a grid of offsets, got {grid_s}')
  return np.arange(max(1, int(np.ceil(step_s / grid_s - 1e-9)))) * grid_s


def eval_starts(duration_s: float, window_s: float, overlap_s: float) -> np.ndarray:
  """`sliding_starts` plus, when they stop short of the dialog end, a window ending at the end.

  Together they cover every frame of the dialog, for evaluation on whole dialogs.
  """
  starts = sliding_starts(duration_s, window_s, overlap_s)
  if starts[-1] + window_s < duration_s:
    starts = np.append(starts, max(0.0, duration_s - window_s))
  return starts


def cut_frames(x: np.ndarray, start: int, n: int, pad_value: float = 0) -> np.ndarray:
  """x[start:start + n] along axis 0, padded with `pad_value` past the end to exactly n rows.

  0 suits VA (the future after a dialog is silent), audio and F0 (unvoiced); 0.5 suits the VA
  history (no evidence for either speaker).
  """
  if start < 0:
    raise ValueError(f'start must be >= 0, got {start}')
  x = np.asarray(x)
  out = np.full((n,) + x.shape[1:], pad_value, x.dtype)
  part = x[start:start + n]
  out[:len(part)] = part
  return out


def start_frame(start_s: float, frame_hz: float) -> int:
  """The frame a window starting at `start_s` begins at: the nearest one, round(start * hz).

  For the reference's whole-second starts this equals its int(start / hop); for off-grid (random)
  starts it is the frame best aligned with the audio, and it absorbs float error (20.02 s - 20 s
  at 50 Hz is 0.99999999999998 frames: frame 1, where truncation gives 0). Cut every frame-level array of a window
  (VA, VA history, F0) from this frame.
  """
  return round(start_s * frame_hz)


def cut_window(audio: np.ndarray, va: np.ndarray, start_s: float, window_s: float, *,
               sample_rate: int, frame_hz: float,
               horizon_frames: int) -> tuple[np.ndarray, np.ndarray]:
  """Dialog audio [S, C] and VA [T, 2] -> (audio [window * sample_rate, C], VA [N + H, 2]).

  The window starts at `start_frame(start_s)` and the audio at that frame's first sample, so
  audio and VA frames stay aligned for any start. Both are zero-padded past the dialog end:
  silent audio, and a silent future in the H horizon frames.
  """
  first = start_frame(start_s, frame_hz)
  audio_window = cut_frames(audio, round(first * sample_rate / frame_hz),
                            round(window_s * sample_rate))
  return audio_window, cut_frames(va, first, int(window_s * frame_hz) + horizon_frames)


def f0_at_frame_rate(f0: np.ndarray, f0_hz: float, frame_hz: float) -> np.ndarray:
  """F0 [T0, 2] at `f0_hz` (0 = unvoiced) -> [int(T0 * frame_hz / f0_hz), 2] at `frame_hz`.

  Output frame j covers input frames [j r, (j + 1) r) with r = f0_hz / frame_hz (floored), and
  holds the mean of their voiced (> 0) values, or 0 when none is voiced: a 50 Hz frame is voiced
  if either of its two 100 Hz frames is. Only downsampling (frame_hz <= f0_hz) is supported.
  """
  if frame_hz > f0_hz:
    raise ValueError(f'cannot upsample F0 from {f0_hz} Hz to {frame_hz} Hz')
  f0 = np.asarray(f0, np.float64)
  n_out = int(len(f0) * frame_hz / f0_hz)
  edges = np.floor(np.arange(n_out + 1) * f0_hz / frame_hz).astype(np.int64)
  voiced = f0 > 0
  cum_f0 = np.concatenate([np.zeros((1,) + f0.shape[1:]), np.cumsum(np.where(voiced, f0, 0), 0)])
  cum_n = np.concatenate([np.zeros((1,) + f0.shape[1:]), np.cumsum(voiced, 0)])
  total = cum_f0[edges[1:]] - cum_f0[edges[:-1]]
  count = cum_n[edges[1:]] - cum_n[edges[:-1]]
  return np.where(count > 0, total / np.maximum(count, 1), 0).astype(np.float32)


def swap_channels(example: dict) -> dict:
  """The speaker-swap augmentation: a copy of `example` with speakers A and B exchanged.

  Swaps the channels (last axis) of 'audio' [..., S, C] (a mono [..., S, 1] stays as is), 'va',
  'f0' and 'speakers', and maps 'va_history' h -> 1 - h, which equals recomputing it on the
  swapped VA. Absent keys are skipped; other keys are copied unchanged.
  """
  out = dict(example)
  if 'audio' in out and np.ndim(out['audio']) < 2:
    raise ValueError('swap_channels needs audio [..., S, C], got a 1-D array')
  for key in ('audio', 'va', 'f0', 'speakers'):
    if key in out:
      out[key] = np.ascontiguousarray(np.asarray(out[key])[..., ::-1])
  if 'va_history' in out:
    out['va_history'] = 1 - np.asarray(out['va_history'])
  return out
