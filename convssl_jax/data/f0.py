"""F0 tracks for the stored corpora, once per conversation at build time.

Two trackers of the same algorithm, probabilistic YIN (Mauch & Dixon 2014) as librosa.pyin runs
it with this module's settings (50-500 Hz, 64 ms frames, 10 ms hop, librosa's defaults else):
  'pyin'          this module's implementation (numba): librosa's CMNDF, threshold and trough
                  priors, pitch bins, HMM and its transition pruning, decoded with a pruned,
                  banded Viterbi that keeps int8 back-pointers; 21-29x faster per core and ~25x
                  less memory than librosa's, the same track but for float rounding
                  (tests/test_f0.py, benchmarks/f0_trackers.py). The default.
  'librosa_pyin'  librosa.pyin itself: the reference (`--f0_tracker=librosa_pyin`).
"""

import functools

import numba
import numpy as np

F0_HZ = 100  # stored F0 frame rate (10 ms hop)
F0_RANGE = (50.0, 500.0)  # Hz searched: covers adult male to child speech
TRACKERS = ('pyin', 'librosa_pyin')
DEFAULT_TRACKER = 'pyin'

# librosa.pyin's defaults, which both trackers use.
N_THRESHOLDS = 100
BETA_PARAMETERS = (2, 18)  # prior over YIN thresholds
BOLTZMANN_PARAMETER = 2.0  # prior over troughs: earlier (shorter-period) troughs weigh more
BINS_PER_SEMITONE = 10  # resolution 0.1 semitone
MAX_TRANSITION_RATE = 35.92  # octaves per second
SWITCH_PROB = 0.01  # voiced <-> unvoiced
NO_TROUGH_PROB = 0.01
TRANSITION_MIN_PROB = 1e-4  # librosa's Viterbi ignores less likely transitions
_TINY = np.finfo(np.float64).tiny  # librosa's epsilon before its logs
_CHUNK_FRAMES = 1024  # frames framed and transformed at once: bounds the working memory
_PRUNE = 500.0  # nats below a frame's best path where the Viterbi drops a state


def frame_length(sample_rate: int) -> int:
  """The analysis frame: 64 ms rounded up to a power of 2 (3 periods at 50 Hz)."""
  return 2 ** int(np.ceil(np.log2(sample_rate * 0.064)))


def pyin_f0(audio: np.ndarray, sample_rate: int) -> np.ndarray:
  """librosa.pyin's F0 in Hz per channel at `F0_HZ`, 0 where unvoiced:
  audio [S, C] -> [S * F0_HZ // sample_rate, C].

  Run at the recording's own rate (8 kHz telephone audio costs half of 16 kHz). Frame t is
  centred on sample t * hop, as librosa centres its frames.
  """
  import librosa  # imported here: its first import costs seconds (numba)

  hop = sample_rate // F0_HZ
  n = audio.shape[0] // hop
  tracks = []
  for channel in np.asarray(audio, np.float32).T:
    f0, voiced, _ = librosa.pyin(channel, fmin=F0_RANGE[0], fmax=F0_RANGE[1], sr=sample_rate,
                                 frame_length=frame_length(sample_rate), hop_length=hop)
    tracks.append(np.where(voiced, np.nan_to_num(f0), 0.0)[:n])
  return np.stack(tracks, axis=-1).astype(np.float32)


def track_f0(audio: np.ndarray, sample_rate: int, tracker: str = DEFAULT_TRACKER) -> np.ndarray:
  """F0 in Hz per channel at `F0_HZ`, 0 where unvoiced, by `tracker` (one of TRACKERS):
  audio [S, C] -> [S * F0_HZ // sample_rate, C] float32."""
  if tracker == 'pyin':
    return fast_pyin_f0(audio, sample_rate)
  if tracker == 'librosa_pyin':
    return pyin_f0(audio, sample_rate)
  raise ValueError(f'unknown F0 tracker {tracker!r}; expected one of {", ".join(TRACKERS)}')


def agreement(reference: np.ndarray, track: np.ndarray) -> dict[str, float]:
  """How `track` agrees with `reference` (both [T, C] Hz, 0 = unvoiced), pYIN's usual checks:
  `voicing`, the share of frames where both make the same voiced/unvoiced call, and
  `gross_error`, the share of the frames both call voiced where they differ by over 20 %."""
  reference, track = np.asarray(reference, np.float64), np.asarray(track, np.float64)
  if reference.shape != track.shape:
    raise ValueError(f'tracks of shapes {reference.shape} and {track.shape}')
  voiced = (reference > 0) & (track > 0)
  gross = np.abs(track[voiced] - reference[voiced]) > 0.2 * reference[voiced]
  return {'voicing': float(np.mean((reference > 0) == (track > 0))) if reference.size else 1.0,
          'gross_error': float(gross.mean()) if gross.size else 0.0}


# ---------------------------------------------------------------------------------------------
# The fast tracker.


class _Setup:
  """The per-rate constants of the fast tracker, derived as librosa.pyin derives them."""

  def __init__(self, sample_rate: int):
    import scipy.special

    fmin, fmax = F0_RANGE
    if not 2 * fmax <= sample_rate:
      raise ValueError(f'F0 tracking needs a sample rate of at least {2 * fmax:g} Hz, '
                       f'got {sample_rate}')
    self.sample_rate = sample_rate
    self.hop = sample_rate // F0_HZ
    self.frame_length = frame_length(sample_rate)
    self.min_period = int(np.floor(sample_rate / fmax))
    self.max_period = min(int(np.ceil(sample_rate / fmin)), self.frame_length - 1)
    thresholds = np.linspace(0, 1, N_THRESHOLDS + 1)
    self.thresholds = thresholds[1:]
    self.cum_beta = scipy.special.betainc(*BETA_PARAMETERS, thresholds)  # cum_beta[0] = 0
    self.n_bins = int(np.floor(12 * BINS_PER_SEMITONE * np.log2(fmax / fmin))) + 1
    semitones = round(MAX_TRANSITION_RATE * 12 * self.hop / sample_rate)
    self.half_width = semitones * BINS_PER_SEMITONE // 2
    self.stay, switch = self._log_transitions()
    self.stay_from = np.ascontiguousarray(self.stay.T)
    self.switch_from = np.ascontiguousarray(switch.T)
    h = self.half_width  # switch_to[j, q]: from bin j + q - h into j
    q = np.arange(2 * h + 1)
    sources = np.arange(self.n_bins)[:, None] + q - h
    self.switch_to = np.where((sources >= 0) & (sources < self.n_bins),
                              switch[2 * h - q, np.clip(sources, 0, self.n_bins - 1)], -np.inf)
    self.freqs = fmin * 2 ** (np.arange(self.n_bins) / (12 * BINS_PER_SEMITONE))

  def _log_transitions(self) -> tuple[np.ndarray, np.ndarray]:
    """log P(bin k -> bin k + d) [2h + 1, n_bins] within a voicing state and across it.

    librosa's transition_local(triangle, no wrap) rows, scaled by the voicing switch, and -inf
    where librosa's Viterbi drops them (below TRANSITION_MIN_PROB) or where k + d is off range.
    """
    h, n = self.half_width, self.n_bins
    offsets = np.arange(-h, h + 1)[:, None]
    targets = np.arange(n)[None, :] + offsets
    weights = np.where((targets >= 0) & (targets < n), (h + 1 - np.abs(offsets)) / (h + 1), 0.0)
    pitch = weights / weights.sum(axis=0, keepdims=True)  # each source row sums to 1
    floor = np.log(TRANSITION_MIN_PROB + _TINY)

    def log(p):
      logp = np.log(p * pitch + _TINY)
      return np.where((weights > 0) & (logp >= floor), logp, -np.inf)

    return log(1 - SWITCH_PROB), log(SWITCH_PROB)


@functools.cache
def _setup(sample_rate: int) -> _Setup:
  return _Setup(sample_rate)


def _yin_frames(x: np.ndarray, setup: _Setup, start: int, stop: int) -> np.ndarray:
  """librosa's cumulative mean normalised difference (CMNDF) of frames [start, stop) of `x`
  (padded by half a frame each side): [stop - start, max_period - min_period + 1] float64.

  The frames' autocorrelation by float32 FFTs, as librosa's (zero-padded to a fast length of at
  least frame + max_period: no wrap-around up to max_period)."""
  import scipy.fft

  length, hop, max_period = setup.frame_length, setup.hop, setup.max_period
  frames = np.lib.stride_tricks.sliding_window_view(x, length)[start * hop:stop * hop:hop]
  n_fft = scipy.fft.next_fast_len(length + max_period, real=True)
  acf = scipy.fft.irfft(_power(scipy.fft.rfft(frames, n_fft, axis=1)), n_fft, axis=1)
  return _cmndf(acf, frames, setup.min_period, max_period)


@numba.njit(cache=True)
def _power(spectrum):
  out = np.empty(spectrum.shape, np.float32)
  for i in range(spectrum.shape[0]):
    for j in range(spectrum.shape[1]):
      out[i, j] = spectrum[i, j].real ** 2 + spectrum[i, j].imag ** 2
  return out


@numba.njit(cache=True)
def _cmndf(acf, frames, min_period, max_period):
  """YIN's d(k) / mean(d(1..k)) for k = min_period..max_period from each frame's ACF, with
  librosa's difference d(k) = 2 (r(0) - r(k)) - sum(y[0..k-1]^2) (y[0]^2 left out at k = 1)."""
  out = np.empty((acf.shape[0], max_period - min_period + 1))
  for i in range(acf.shape[0]):
    energy = np.float64(frames[i, 0]) ** 2
    total = 0.0
    for k in range(1, max_period + 1):
      if k >= 2:
        energy += np.float64(frames[i, k - 1]) ** 2
      diff = 2.0 * (np.float64(acf[i, 0]) - acf[i, k]) - (energy if k >= 2 else 0.0)
      total += diff
      if k >= min_period:
        out[i, k - min_period] = diff / (total / k + _TINY)
  return out


@numba.njit(cache=True)
def _observe(yin, thresholds, cum_beta, prior_scale, prior_decay, min_period, sample_rate, fmin,
             n_bins, bins_per_octave, troughs, entry, trough_probs, present, bins, probs):
  """One frame's pitch candidates as librosa's __pyin_helper finds them: fills bins[:n] and
  probs[:n] in increasing period and returns n (troughs .. present: work space).

  Each trough (local minimum) of the CMNDF below threshold k gets the threshold's beta prior
  times a Boltzmann prior on its rank among the troughs below k; the global minimum also gets
  NO_TROUGH_PROB of the thresholds no trough is below. Summed over the runs of thresholds where
  the set of troughs below is constant (cum_beta: cumulative beta prior, cum_beta[0] = 0). The
  Boltzmann prior of rank r among n is prior_scale[n] * prior_decay[r].
  """
  n_lags = yin.shape[0]
  n_thresholds = thresholds.shape[0]
  n_troughs = 0
  for i in range(n_lags):
    if i == 0:
      is_trough = n_lags > 1 and yin[0] < yin[1]
    elif i == n_lags - 1:
      is_trough = yin[i] < yin[i - 1]
    else:
      is_trough = yin[i] < yin[i - 1] and yin[i] <= yin[i + 1]
    if is_trough:
      troughs[n_troughs] = i
      n_troughs += 1
  if n_troughs == 0:
    return 0
  present[:] = False
  global_min = 0
  for m in range(n_troughs):
    height = yin[troughs[m]]
    entry[m] = np.searchsorted(thresholds, height, side='right')  # first threshold above it
    present[entry[m]] = True
    trough_probs[m] = 0.0
    if height < yin[troughs[global_min]]:
      global_min = m
  first = -1
  for last in range(n_thresholds + 1):
    if not present[last] and last < n_thresholds:
      continue
    if first >= 0:  # thresholds first .. last - 1 see the troughs with entry <= first
      below = 0
      for m in range(n_troughs):
        below += entry[m] <= first
      scale = (cum_beta[last] - cum_beta[first]) * prior_scale[below]
      rank = 0
      for m in range(n_troughs):
        if entry[m] <= first:
          trough_probs[m] += scale * prior_decay[rank]
          rank += 1
    first = last
  trough_probs[global_min] += NO_TROUGH_PROB * cum_beta[entry[global_min]]
  n = 0
  for m in range(n_troughs):
    p = np.float32(trough_probs[m])  # librosa keeps these in the frames' float32
    if p == 0:
      continue
    i = troughs[m]
    shift = 0.0
    if 0 < i < n_lags - 1:  # parabolic interpolation of the trough
      a = yin[i + 1] + yin[i - 1] - 2.0 * yin[i]
      b = 0.5 * (yin[i + 1] - yin[i - 1])
      if abs(b) < abs(a):
        shift = -b / a
    f0 = sample_rate / (min_period + i + shift)
    index = min(max(np.rint(bins_per_octave * np.log2(f0 / fmin)), 0), n_bins)
    if index < n_bins:  # librosa writes bin n_bins into the unvoiced block, then overwrites it
      bins[n] = np.int64(index)
      probs[n] = p
      n += 1
  return n


@numba.njit(cache=True)
def _relax(best, code, value, log_transition, c):
  """best = max(best, value + log_transition) elementwise, code = c where it grew (vectorised)."""
  for j in range(best.shape[0]):
    cost = value[j] + log_transition[j]
    grew = cost > best[j]
    best[j] = cost if grew else best[j]
    code[j] = c if grew else code[j]


@numba.njit(cache=True)
def _relax_from(best, code, value, log_transitions, c):
  """best = max(best, value + log_transitions), one source to a run of targets; code = c - i
  at the i-th target where it grew (vectorised)."""
  for i in range(best.shape[0]):
    cost = value + log_transitions[i]
    grew = cost > best[i]
    best[i] = cost if grew else best[i]
    code[i] = c - i if grew else code[i]


@numba.njit(cache=True)
def _max(x):
  """max(x) of a non-empty array without NaN, in 8 lanes (a plain loop is a serial chain)."""
  lanes = np.full(8, -np.inf)
  for i in range(x.shape[0] - x.shape[0] % 8):
    lanes[i % 8] = max(lanes[i % 8], x[i])
  top = lanes.max()
  for i in range(x.shape[0] - x.shape[0] % 8, x.shape[0]):
    top = max(top, x[i])
  return top


@numba.njit(cache=True)
def _forward(yin, value, thresholds, cum_beta, sample_rate, min_period, fmin, bins_per_octave,
             stay, stay_from, switch_from, switch_to, pointers):
  """librosa.pyin's Viterbi over a chunk of frames' CMNDF `yin` [F, lags], from `value` (log-
  probabilities [2 * n_bins] of the frame before, voiced bins then unvoiced, -inf where pruned;
  None at the first frame) to the chunk's last frame's, returned. Back-pointers go to `pointers`
  [F, 2 * n_bins] as int8 codes: source block * (2h + 1) + h + source bin - target bin.

  Log transitions by offset (target - source + h) and source bin: `stay` [2h + 1, n_bins];
  by source, then offset: `stay_from`, `switch_from` [n_bins, 2h + 1]; by target, then source -
  target + h: `switch_to` [n_bins, 2h + 1].

  States below the frame's best by more than _PRUNE are pruned: a voiced bin without a
  candidate (emission librosa's epsilon, e^-708) never carries the best path unless every path
  does, which the relative threshold keeps. So voiced states cost their candidates only; the
  unvoiced block is relaxed densely (vectorised), in librosa's order of sources for ties.
  """
  n_bins = stay.shape[1]
  width = stay.shape[0]
  h = width // 2
  n_lags = yin.shape[1]
  log_tiny = np.log(_TINY)
  first = value is None
  value = np.empty(2 * n_bins) if value is None else value.copy()
  voiced_v = value[:n_bins]
  voiced_u = value[n_bins:]
  emit = np.full(n_bins, log_tiny)  # log emission of the voiced states
  voiced = np.zeros(n_bins)  # their probability
  best = np.empty(2 * n_bins)
  best_v, best_u = best[:n_bins], best[n_bins:]
  code = np.zeros(2 * n_bins, np.int8)
  code_v, code_u = code[:n_bins], code[n_bins:]
  troughs = np.empty(n_lags, np.int64)
  entry = np.empty(n_lags, np.int64)
  trough_probs = np.empty(n_lags)
  present = np.empty(thresholds.shape[0] + 1, np.bool_)
  bins = np.empty(n_lags, np.int64)
  probs = np.empty(n_lags)
  live = np.empty(n_bins, np.int64)
  prior_decay = np.exp(-BOLTZMANN_PARAMETER * np.arange(n_lags))  # scipy.stats.boltzmann's pmf
  prior_scale = np.zeros(n_lags + 1)
  prior_scale[1:] = ((1 - np.exp(-BOLTZMANN_PARAMETER))
                     / (1 - np.exp(-BOLTZMANN_PARAMETER * np.arange(1, n_lags + 1))))
  for t in range(yin.shape[0]):
    n = _observe(yin[t], thresholds, cum_beta, prior_scale, prior_decay, min_period,
                 sample_rate, fmin, n_bins, bins_per_octave, troughs, entry, trough_probs,
                 present, bins, probs)
    for m in range(n):
      voiced[bins[m]] = probs[m]  # a later (longer-period) candidate wins a shared bin
    voiced_prob = 0.0
    for m in range(n):
      if emit[bins[m]] == log_tiny:  # each bin once
        emit[bins[m]] = np.log(voiced[bins[m]] + _TINY)
        voiced_prob += voiced[bins[m]]
    voiced_prob = min(max(voiced_prob, 0.0), 1.0)
    emit_u = np.log((1 - voiced_prob) / n_bins + _TINY)
    if first and t == 0:
      best[:] = np.log(1.0 / (2 * n_bins) + _TINY)
      code[:] = 0
    else:
      best[:] = -np.inf
      n_live = 0
      for k in range(n_bins):
        if voiced_v[k] != -np.inf:
          live[n_live] = k
          n_live += 1
      for i in range(n_live):  # live voiced sources, in increasing bin
        k = live[i]
        lo, hi = max(0, k - h), min(n_bins, k + h + 1)
        r = lo - k + h
        _relax_from(best_v[lo:hi], code_v[lo:hi], voiced_v[k], stay_from[k, r:r + hi - lo],
                    2 * h - r)
        _relax_from(best_u[lo:hi], code_u[lo:hi], voiced_v[k], switch_from[k, r:r + hi - lo],
                    2 * h - r)
      for j in range(n_bins):  # unvoiced sources of the voiced candidates, in increasing bin
        if voiced[j] == 0:
          continue
        top, arg = best_v[j], code_v[j]
        for q in range(max(0, h - j), min(width, n_bins - j + h)):
          cost = voiced_u[j + q - h] + switch_to[j, q]
          grew = cost > top
          top = cost if grew else top
          arg = width + q if grew else arg
        best_v[j], code_v[j] = top, arg
      for d in range(-h, h + 1):  # unvoiced -> unvoiced, source bin j + d in increasing order
        lo, hi = max(0, -d), min(n_bins, n_bins - d)
        _relax(best_u[lo:hi], code_u[lo:hi], voiced_u[lo + d:hi + d],
               stay[h - d, lo + d:hi + d], width + h + d)
    for j in range(n_bins):
      voiced_v[j] = best_v[j] + emit[j]
      voiced_u[j] = best_u[j] + emit_u
    top = _max(value)
    for j in range(2 * n_bins):  # keep values relative to the best; prune the hopeless
      relative = value[j] - top
      value[j] = relative if relative >= -_PRUNE else -np.inf
    pointers[t] = code
    for m in range(n):  # clean for the next frame
      voiced[bins[m]] = 0.0
      emit[bins[m]] = log_tiny
  return value


def _backtrack(value: np.ndarray, pointers: np.ndarray, half_width: int) -> np.ndarray:
  """The Viterbi path [T] of states (bin, + n_bins when unvoiced) from the last values."""
  n_bins = value.shape[0] // 2
  width = 2 * half_width + 1
  states = np.empty(pointers.shape[0], np.int64)
  states[-1] = np.argmax(value)
  for t in range(pointers.shape[0] - 1, 0, -1):
    source, offset = divmod(int(pointers[t, states[t]]), width)
    states[t - 1] = source * n_bins + states[t] % n_bins + offset - half_width
  return states


def fast_pyin_f0(audio: np.ndarray, sample_rate: int) -> np.ndarray:
  """pYIN's F0 as `pyin_f0` computes it, by this module's implementation: audio [S, C] ->
  [S * F0_HZ // sample_rate, C] float32 Hz, 0 where unvoiced.

  Memory: the audio, a chunk of frames, and one int8 back-pointer per state and frame (2 x 399
  bytes per 10 ms).
  """
  setup = _setup(sample_rate)
  audio = np.asarray(audio, np.float32)
  if audio.ndim != 2:
    raise ValueError(f'expected audio [samples, channels], got shape {audio.shape}')
  n = audio.shape[0] // setup.hop
  n_frames = 1 + audio.shape[0] // setup.hop  # librosa's centred frames, the last one dropped
  tracks = []
  for channel in audio.T:
    x = np.pad(channel, setup.frame_length // 2)
    pointers = np.empty((n_frames, 2 * setup.n_bins), np.int8)
    value = None
    for start in range(0, n_frames, _CHUNK_FRAMES):
      stop = min(start + _CHUNK_FRAMES, n_frames)
      value = _forward(_yin_frames(x, setup, start, stop), value, setup.thresholds,
                       setup.cum_beta, setup.sample_rate, setup.min_period, F0_RANGE[0],
                       12 * BINS_PER_SEMITONE, setup.stay, setup.stay_from, setup.switch_from,
                       setup.switch_to, pointers[start:stop])
    states = _backtrack(value, pointers, setup.half_width)[:n]
    tracks.append(np.where(states < setup.n_bins, setup.freqs[states % setup.n_bins], 0.0))
  return np.stack(tracks, axis=-1).astype(np.float32).reshape(n, audio.shape[1])
