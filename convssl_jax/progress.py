"""What a person waiting sees: progress bars (tqdm, on stderr, process 0 only) for the long steps
(evaluation, predicting long files and folders, caching features, units), and the training rate
smoothed over the last log steps."""

import collections
import time
from collections.abc import Iterable

import jax
import tqdm


def bar(iterable: Iterable | None = None, *, total: int | None = None, initial: int = 0,
        desc: str | None = None, unit: str = 'it', leave: bool = True,
        enabled: bool = True) -> tqdm.tqdm:
  """A tqdm bar on stderr over `iterable` (or updated by hand), its width following the terminal;
  silent on processes other than 0 and with `enabled=False`. `leave=False` clears it when done
  (a bar inside another's)."""
  return tqdm.tqdm(iterable, total=total, initial=initial, desc=desc, unit=unit, leave=leave,
                   dynamic_ncols=True, disable=not enabled or jax.process_index() != 0)


class Rate:
  """Steps per second over the last `window` log steps (a sliding window), so that one short or
  long interval between two log steps (the device catching up on queued steps, a validation, a
  checkpoint) moves the rate by its share of the window instead of making it spike."""

  def __init__(self, step: int, window: int = 10, now: float | None = None):
    self._points = collections.deque([(step, time.perf_counter() if now is None else now)],
                                     maxlen=window + 1)

  def update(self, step: int, now: float | None = None) -> float:
    """Records that `step` was reached (at `now`, default the clock); the rate over the window."""
    self._points.append((step, time.perf_counter() if now is None else now))
    (first, start), (last, end) = self._points[0], self._points[-1]
    return (last - first) / max(end - start, 1e-9)
