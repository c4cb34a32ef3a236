"""Procedural two-speaker stereo dialogs whose turn ends are signalled by prosody only.

A dialog is a sequence of turns; a turn is a geometric number of inter-pausal units (IPUs). IPU
durations and pauses are drawn from the same distributions whatever follows them, so voice
activity alone carries no information on whether a pause ends in a shift or a hold. What tells
them apart is in the audio: a turn-final IPU ends with falling F0, final lengthening of its last
syllables and an intensity decay; a turn-internal IPU ends level or rising, unslowed, undecayed.
With probability 1 - `cue_reliability` an IPU carries the other class's pattern, so a perfect
listener scores `cue_reliability` and a voice-activity-only model chance (see README.md).

Audio is synthesised per channel in one vectorised pass: piecewise-linear control tracks (F0,
voiced amplitude, unvoiced-noise amplitude) are interpolated to the sample rate, a harmonic source
with spectral tilt is run through a speaker-specific formant filter, and the channels get a noise
floor and a little bleed of each other, like telephone speech.
"""

import dataclasses
from typing import NamedTuple

import numpy as np
import scipy.signal

F0_HZ = 100  # frame rate of the F0 ground truth
_TAIL_S = 0.3  # silence kept at the end of the dialog
_RAMP_S = 0.01  # voiced on/offset ramp
_PAD_S = 0.05  # synthesised margin around a segment, for the formant filter's ringing
_SYLLABLE_FLOOR = 0.35  # voiced amplitude between syllables, relative to a syllable's peak
_SYLLABLE_PEAK = 0.3  # position of the amplitude peak within a syllable's voiced part
_GAP_RANGE_S = (0.03, 0.07)  # unvoiced (fricative-like) gap at a syllable's onset
_CONSONANT_DB = -12.0  # level of the unvoiced gaps relative to the voiced speech
_IPU_GAIN_DB = 2.0  # per-IPU loudness jitter, +-
_ACCENT_ST = 1.5  # per-syllable F0 accent jitter, +- semitones
_BACKCHANNEL_DB = -3.0  # backchannels are a little softer
_BACKCHANNEL_ST = ((-1.0, 0.0), (1.0, 4.0))  # their own rising F0: start and end ranges
_BC_LEAD_S = 0.3  # an in-IPU backchannel starts at least this far into the IPU...
_BC_TAIL_S = 0.5  # ...and ends at least this far before it ends (beyond any overlap)
_BC_CLEARANCE_S = 0.1  # minimum silence between a backchannel and the listener's own speech
_FORMANTS_HZ = ((550.0, 1450.0), (700.0, 1900.0))  # low and high voice
_FORMANT_JITTER = 0.08  # relative, per dialog
_FORMANT_BANDWIDTH_HZ = 100.0
_TILT_HZ = 1000.0  # harmonic k has amplitude exp(-k f0 / _TILT_HZ)
_VOICE_F0_JITTER_ST = 1.5  # per-dialog spread of a voice's mean F0, +- semitones


@dataclasses.dataclass(frozen=True)
class DialogConfig:
  """Generation parameters. Ranges are (low, high) and drawn uniformly unless stated."""
  duration_s: float = 60.0  # length of the dialog
  sample_rate: int = 16000
  # Probability that an IPU carries the prosodic pattern of its true class (final / non-final);
  # otherwise it gets the other class's pattern. The best achievable shift/hold accuracy.
  cue_reliability: float = 0.9
  # Turns hold a geometric number of IPUs with this mean: after each IPU the turn ends with
  # probability 1 / mean_ipus_per_turn, whatever came before (memoryless).
  mean_ipus_per_turn: float = 2.5
  ipu_range_s: tuple[float, float] = (0.6, 3.0)  # IPU duration, same for final and non-final
  # Pause (shift or hold alike): pause_range_s[0] plus an exponential with mean
  # pause_mean_s - pause_range_s[0], truncated at pause_range_s[1].
  pause_mean_s: float = 0.55
  pause_range_s: tuple[float, float] = (0.2, 1.5)
  # Share of shifts where the next speaker starts before the current one ends, and by how much.
  overlap_prob: float = 0.15
  overlap_range_s: tuple[float, float] = (0.1, 0.4)
  # Chance that the listener backchannels at each opportunity: inside every speaker IPU long
  # enough to hold one with margins (>= 1.5 s by default) and in every hold pause. A candidate
  # that would come within 0.1 s of the listener's own speech is dropped.
  backchannel_rate: float = 0.2
  backchannel_range_s: tuple[float, float] = (0.2, 0.7)  # 1 syllable below 0.4 s, else 2
  # Voices: mean F0 of the low and the high voice (each jittered per dialog and randomly
  # assigned to a channel) and the spread of an IPU's F0 baseline (Gaussian sd in semitones,
  # clipped at 2 sd).
  speaker_f0_hz: tuple[float, float] = (110.0, 200.0)
  ipu_f0_jitter_st: float = 1.0
  syllable_rate_range: tuple[float, float] = (4.0, 6.0)  # syllables per second, per IPU
  unvoiced_gap_prob: float = 0.3  # chance of an unvoiced gap at each IPU-internal syllable onset
  # The turn-end cue pattern, over the last cue_range_s of an IPU.
  cue_range_s: tuple[float, float] = (0.3, 0.4)
  final_fall_st: tuple[float, float] = (3.0, 6.0)  # final: F0 falls by this (semitones)
  final_decay_db: tuple[float, float] = (6.0, 10.0)  # final: intensity decays by this
  final_lengthening: tuple[float, float] = (1.5, 2.0)  # final: last 2 syllables this much longer
  nonfinal_rise_st: tuple[float, float] = (0.0, 3.0)  # non-final: F0 level or rising by this
  # Levels in dBFS (RMS): voiced speech; bleed relative to the source. The noise floor is drawn
  # per dialog and channel, its level from noise_floor_db and its colour, white to red, from
  # noise_pole (a first-order low-pass x[t] = w[t] + a x[t-1]): silence that is one constant
  # input made a from-scratch encoder code all silent frames alike, and the default run's VAD
  # loss jump from step to step (docs/default_run.md).
  speech_db: float = -24.0
  noise_floor_db: tuple[float, float] = (-70.0, -40.0)
  noise_pole: tuple[float, float] = (0.0, 0.95)
  bleed_db: float = -30.0
  # A monologue: speaker A (channel 0) alone, its IPUs and pauses drawn as above (a turn-final IPU,
  # a sentence end with the final cues, is followed by A again), no backchannels, and channel B
  # digital silence: the silent partner a mono recording gets.
  monologue: bool = False


class Event(NamedTuple):
  """A turn-taking event between two consecutive IPUs, in seconds.

  'shift' and 'hold': the silence [start, end] with exactly one speaker before and after it.
  'overlap_shift': the overlap [start, end] from the next speaker's onset to the previous
  speaker's offset. `cue_correct`: the IPU before carries the cue pattern of its true class.
  """
  start: float
  end: float
  speaker_before: int
  speaker_after: int
  kind: str
  cue_correct: bool


@dataclasses.dataclass
class Dialog:
  """A generated dialog and its exact ground truth."""
  audio: np.ndarray  # float32 [S, 2], channel c = speaker c
  # Per channel, sorted and disjoint [start, end] seconds: the IPUs and the backchannels.
  va_list: list[list[list[float]]]
  # float32 [S // (sample_rate // F0_HZ), 2] Hz; frame t is centred on t / F0_HZ s; 0 = unvoiced.
  f0: np.ndarray
  events: list[Event]  # in time order
  backchannel_list: list[list[list[float]]]  # the backchannels among va_list, same format
  speaker_f0_hz: tuple[float, float]  # mean F0 of each channel's voice in this dialog
  noise_floor_db: tuple[float, float]  # each channel's noise floor (RMS dBFS)


class _Segment(NamedTuple):
  speaker: int
  start: float
  end: float
  final: bool  # a turn-final IPU (a shift follows)
  cue_correct: bool


class _Knots(NamedTuple):
  """Piecewise-linear control tracks of one segment: (times, values) pairs."""
  f0: tuple[np.ndarray, np.ndarray]  # Hz
  amp: tuple[np.ndarray, np.ndarray]  # voiced amplitude, linear, 0 = unvoiced
  noise: tuple[np.ndarray, np.ndarray]  # unvoiced-noise amplitude, linear


def _pause(rng: np.random.Generator, config: DialogConfig) -> float:
  """A pause: shifted exponential truncated to pause_range_s (inverse-CDF sampling)."""
  low, high = config.pause_range_s
  scale = config.pause_mean_s - low
  mass = 1.0 - np.exp(-(high - low) / scale)
  return float(low - scale * np.log1p(-rng.random() * mass))


def _turn_structure(rng: np.random.Generator, config: DialogConfig) -> list[_Segment]:
  """The main IPUs in time order, each drawn without knowledge of what follows it."""
  speaker = int(rng.integers(2))
  if config.monologue:
    speaker = 0
  start = rng.uniform(0.3, 1.0)
  ipus = []
  while True:
    end = start + rng.uniform(*config.ipu_range_s)
    if end > config.duration_s - _TAIL_S:
      return ipus
    final = rng.random() < 1.0 / config.mean_ipus_per_turn
    ipus.append(_Segment(speaker, start, end, final, rng.random() < config.cue_reliability))
    shift = final and not config.monologue
    if shift and rng.random() < config.overlap_prob:
      start = end - rng.uniform(*config.overlap_range_s)
    else:
      start = end + _pause(rng, config)
    speaker = 1 - speaker if shift else speaker


def _backchannel_candidates(rng: np.random.Generator, config: DialogConfig,
                            ipus: list[_Segment]) -> list[_Segment]:
  """Listener responses inside long IPUs and in hold pauses, before collision checks."""
  low, high = config.backchannel_range_s
  candidates = []
  for ipu, nxt in zip(ipus, ipus[1:] + [None]):
    listener = 1 - ipu.speaker
    fits = ipu.end - ipu.start >= _BC_LEAD_S + high + _BC_TAIL_S
    if fits and rng.random() < config.backchannel_rate:
      dur = rng.uniform(low, high)
      start = rng.uniform(ipu.start + _BC_LEAD_S, ipu.end - _BC_TAIL_S - dur)
      candidates.append(_Segment(listener, start, start + dur, False, True))
    if nxt is not None and nxt.speaker == ipu.speaker and rng.random() < config.backchannel_rate:
      start = ipu.end + rng.uniform(0.1, 0.5) * (nxt.start - ipu.end)
      candidates.append(_Segment(listener, start, start + rng.uniform(low, high), False, True))
  return candidates


def _backchannels(candidates: list[_Segment], ipus: list[_Segment]) -> list[_Segment]:
  """The candidates `_BC_CLEARANCE_S` or more from the listener's IPUs and kept backchannels."""
  kept = []
  for bc in candidates:
    own = [s for s in ipus + kept if s.speaker == bc.speaker]
    if all(s.end + _BC_CLEARANCE_S <= bc.start or bc.end + _BC_CLEARANCE_S <= s.start
           for s in own):
      kept.append(bc)
  return kept


def _events(ipus: list[_Segment], backchannels: list[_Segment]) -> list[Event]:
  """Shift, hold and overlap-shift events between consecutive IPUs.

  A hold with a backchannel in its pause has no single silence around it and is left out.
  """
  bc_starts = np.array([bc.start for bc in backchannels])
  events = []
  for prev, nxt in zip(ipus, ipus[1:]):
    if prev.speaker != nxt.speaker:
      kind = 'overlap_shift' if nxt.start < prev.end else 'shift'
    elif np.any((bc_starts > prev.end) & (bc_starts < nxt.start)):
      continue
    else:
      kind = 'hold'
    events.append(Event(min(prev.end, nxt.start), max(prev.end, nxt.start), prev.speaker,
                        nxt.speaker, kind, prev.cue_correct))
  return events


def _syllables(rng: np.random.Generator, segment: _Segment, n: int, gap_prob: float,
               lengthening: float) -> tuple[np.ndarray, np.ndarray]:
  """Voiced spans (starts, ends) of `n` syllables filling the segment.

  The segment's duration is fixed beforehand: final lengthening (the last two syllables
  `lengthening` times longer) only redistributes it, speeding up the rest. Each internal syllable
  starts with an unvoiced gap with probability `gap_prob`.
  """
  weights = rng.uniform(0.8, 1.2, n)
  weights[-2:] *= lengthening
  cumulative = np.r_[0.0, np.cumsum(weights)] / weights.sum()
  bounds = segment.start + (segment.end - segment.start) * cumulative
  gaps = np.where(rng.random(n - 1) < gap_prob, rng.uniform(*_GAP_RANGE_S, n - 1), 0.0)
  gaps = np.minimum(gaps, 0.4 * np.diff(bounds[1:]))
  return bounds[:-1] + np.r_[0.0, gaps], bounds[1:]


def _amplitude_knots(starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Syllable-rate amplitude modulation: each voiced span rises to a peak and falls to a floor.

  Spans that touch share their floor-valued boundary; edges next to silence or an unvoiced gap
  ramp to 0 within `_RAMP_S`.
  """
  touching = starts[1:] == ends[:-1]
  edge_in = np.r_[0.0, np.where(touching, _SYLLABLE_FLOOR, 0.0)]
  edge_out = np.r_[np.where(touching, _SYLLABLE_FLOOR, 0.0), 0.0]
  times = np.stack([starts, starts + _RAMP_S, starts + _SYLLABLE_PEAK * (ends - starts),
                    ends - _RAMP_S, ends], axis=1).ravel()
  floor = np.full_like(starts, _SYLLABLE_FLOOR)
  values = np.stack([edge_in, floor, np.ones_like(starts), floor, edge_out], axis=1).ravel()
  keep = np.r_[True, np.diff(times) > 0]  # drop the duplicate of each shared boundary
  return times[keep], values[keep]


def _noise_knots(starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Unvoiced-noise tracks over the gaps between non-touching syllables of a segment."""
  gap_starts, gap_ends = ends[:-1], starts[1:]
  is_gap = gap_ends > gap_starts
  gap_starts, gap_ends = gap_starts[is_gap], gap_ends[is_gap]
  ramp = 0.005
  times = np.stack([gap_starts, gap_starts + ramp, gap_ends - ramp, gap_ends], axis=1).ravel()
  level = 10.0 ** (_CONSONANT_DB / 20.0)
  values = np.tile([0.0, level, level, 0.0], len(gap_starts))
  return times, values


def _ipu_knots(rng: np.random.Generator, config: DialogConfig, ipu: _Segment,
               f0_mean: float) -> _Knots:
  """Control tracks of an IPU: accents in the body, then the cue pattern of its cue class."""
  ends_turn = ipu.final == ipu.cue_correct  # the cue pattern shown: final or non-final
  n = max(2, round((ipu.end - ipu.start) * rng.uniform(*config.syllable_rate_range)))
  lengthening = rng.uniform(*config.final_lengthening) if ends_turn else 1.0
  starts, ends = _syllables(rng, ipu, n, config.unvoiced_gap_prob, lengthening)
  cue_start = ipu.end - rng.uniform(*config.cue_range_s)
  peaks = starts + _SYLLABLE_PEAK * (ends - starts)
  peaks = peaks[(peaks > ipu.start) & (peaks < cue_start)]
  if ends_turn:
    cue_st, decay_db = -rng.uniform(*config.final_fall_st), rng.uniform(*config.final_decay_db)
  else:
    cue_st, decay_db = rng.uniform(*config.nonfinal_rise_st), 0.0
  sd = config.ipu_f0_jitter_st
  base_st = np.clip(rng.normal(0.0, sd), -2.0 * sd, 2.0 * sd)
  accents = rng.uniform(-_ACCENT_ST, _ACCENT_ST, len(peaks) + 1)
  f0_times = np.r_[ipu.start, peaks, cue_start, ipu.end]
  f0_st = base_st + np.r_[accents[0], accents, accents[-1] + cue_st]
  gain_db = rng.uniform(-_IPU_GAIN_DB, _IPU_GAIN_DB)
  amp_times, amp = _amplitude_knots(starts, ends)
  decay = np.interp(amp_times, [cue_start, ipu.end], [0.0, -decay_db])
  amp = amp * 10.0 ** ((gain_db + decay) / 20.0)
  return _Knots((f0_times, f0_mean * 2.0 ** (f0_st / 12.0)), (amp_times, amp),
                _noise_knots(starts, ends))


def _backchannel_knots(rng: np.random.Generator, bc: _Segment, f0_mean: float) -> _Knots:
  """Control tracks of a backchannel: one or two voiced syllables, softer, rising F0."""
  starts, ends = _syllables(rng, bc, 1 if bc.end - bc.start < 0.4 else 2, 0.0, 1.0)
  f0_st = [rng.uniform(*_BACKCHANNEL_ST[0]), rng.uniform(*_BACKCHANNEL_ST[1])]
  amp_times, amp = _amplitude_knots(starts, ends)
  amp = amp * 10.0 ** (_BACKCHANNEL_DB / 20.0)
  return _Knots((np.array([bc.start, bc.end]), f0_mean * 2.0 ** (np.array(f0_st) / 12.0)),
                (amp_times, amp), _noise_knots(starts, ends))


def _track(knots: list[tuple[np.ndarray, np.ndarray]], t: np.ndarray, edge: float) -> np.ndarray:
  """Concatenated segment knots (segments sorted, disjoint) interpolated at times `t`, `edge`
  before the first; past the last knot the last value holds."""
  times = np.concatenate([[-1.0]] + [k[0] for k in knots])
  values = np.concatenate([[edge]] + [k[1] for k in knots])
  return np.interp(t, times, values)


def _active_samples(knots: list[_Knots], n_samples: int, sample_rate: int) -> np.ndarray:
  """Indices of the samples within `_PAD_S` of a segment, the only ones that carry speech.

  Synthesising only these halves the work, and the silent stretches between them would otherwise
  decay the formant filter's state into subnormal floats, which are very slow.
  """
  spans = np.array([(k.f0[0][0] - _PAD_S, k.f0[0][-1] + _PAD_S) for k in knots]).reshape(-1, 2)
  bounds = np.clip(np.round(spans * sample_rate).astype(np.int64), 0, n_samples)
  edges = np.zeros(n_samples + 1, np.int32)
  np.add.at(edges, bounds[:, 0], 1)
  np.add.at(edges, bounds[:, 1], -1)
  return np.flatnonzero(np.cumsum(edges[:-1]) > 0)


def _formant_filter(formants_hz: np.ndarray, sample_rate: int) -> np.ndarray:
  """Denominator of a cascade of two-pole resonators at the given formant frequencies."""
  radius = np.exp(-np.pi * _FORMANT_BANDWIDTH_HZ / sample_rate)
  a = np.ones(1)
  for f in formants_hz:
    a = np.convolve(a, [1.0, -2.0 * radius * np.cos(2.0 * np.pi * f / sample_rate), radius ** 2])
  return a


def _voice(f0: np.ndarray, amp: np.ndarray, formants_hz: np.ndarray,
           sample_rate: int) -> np.ndarray:
  """Voiced speech: harmonics of `f0` with spectral tilt, amplitude `amp`, formant-coloured.

  The source is the closed form of sum_k a^k cos(k phase), a = exp(-f0 / _TILT_HZ), divided by its
  RMS: one cosine per sample whatever the number of harmonics, and negligible aliasing.
  """
  phase = 2.0 * np.pi * (np.cumsum(f0 / sample_rate) % 1.0)
  c = np.cos(phase).astype(np.float32)
  a = np.exp(-f0.astype(np.float32) / np.float32(_TILT_HZ))
  source = (a * c - a * a) / (1.0 - 2.0 * a * c + a * a) * (np.sqrt(2.0 * (1.0 - a * a)) / a)
  return scipy.signal.lfilter([1.0], _formant_filter(formants_hz, sample_rate),
                              source * amp.astype(np.float32)).astype(np.float32)


def _frame_f0(f0: np.ndarray, voiced: np.ndarray, hop: int, n_frames: int) -> np.ndarray:
  """F0 per frame centred on t * hop: mean F0 of its voiced samples, 0 if under half are voiced."""
  pad = hop // 2
  f0 = np.r_[np.zeros(pad), f0 * voiced][:n_frames * hop].reshape(n_frames, hop)
  voiced = np.r_[np.zeros(pad), voiced][:n_frames * hop].reshape(n_frames, hop)
  count = voiced.sum(axis=1)
  return np.where(count >= hop / 2, f0.sum(axis=1) / np.maximum(count, 1), 0.0)


def _render_channel(rng: np.random.Generator, knots: list[_Knots], n_samples: int,
                    f0_mean: float, formants_hz: np.ndarray,
                    config: DialogConfig) -> tuple[np.ndarray, np.ndarray]:
  """One speaker's clean speech at `speech_db` and its sample-level F0 (0 where unvoiced)."""
  index = _active_samples(knots, n_samples, config.sample_rate)
  t = index / config.sample_rate
  f0 = _track([k.f0 for k in knots], t, f0_mean)
  amp = _track([k.amp for k in knots], t, 0.0)
  voiced = _voice(f0, amp, formants_hz, config.sample_rate)
  is_voiced = amp > 0
  rms = np.sqrt(np.mean(np.square(voiced[is_voiced]))) if is_voiced.any() else 1.0
  consonants = _track([k.noise for k in knots], t, 0.0).astype(np.float32)
  has_noise = consonants > 0
  consonants[has_noise] *= rng.standard_normal(np.count_nonzero(has_noise), dtype=np.float32)
  consonants = np.diff(consonants, prepend=np.float32(0.0)) / np.float32(np.sqrt(2.0))
  speech, f0_voiced = np.zeros(n_samples, np.float32), np.zeros(n_samples)
  speech[index] = (voiced / rms + consonants) * np.float32(10.0 ** (config.speech_db / 20.0))
  f0_voiced[index] = np.where(is_voiced, f0, 0.0)
  return speech, f0_voiced


def _voices(rng: np.random.Generator, config: DialogConfig) -> tuple[np.ndarray, np.ndarray]:
  """Per-channel mean F0 [2] and formants [2, 2]: the low and high voice in random channel order."""
  order = rng.permutation(2)
  jitter_st = rng.uniform(-_VOICE_F0_JITTER_ST, _VOICE_F0_JITTER_ST, 2)
  f0_mean = np.array(config.speaker_f0_hz)[order] * 2.0 ** (jitter_st / 12.0)
  formants = np.array(_FORMANTS_HZ)[order] * (1.0 + rng.uniform(-1, 1, (2, 2)) * _FORMANT_JITTER)
  return f0_mean, formants


def _segment_list(segments: list[_Segment]) -> list[list[list[float]]]:
  return [[[float(s.start), float(s.end)] for s in segments if s.speaker == c] for c in (0, 1)]


def _noise_floor(rng: np.random.Generator, n_samples: int,
                 config: DialogConfig) -> tuple[np.ndarray, tuple[float, float]]:
  """Each channel's noise floor [S, 2]: Gaussian noise through a one-pole low-pass drawn from
  `noise_pole`, at an RMS level drawn from `noise_floor_db`; and the two levels (dBFS)."""
  noise = rng.standard_normal((n_samples, 2), dtype=np.float32)
  levels = []
  for c in (0, 1):
    coloured = scipy.signal.lfilter([1.0], [1.0, -rng.uniform(*config.noise_pole)], noise[:, c])
    levels.append(float(rng.uniform(*config.noise_floor_db)))
    rms = max(float(np.sqrt(np.mean(coloured ** 2))), 1e-9)
    noise[:, c] = coloured * (10.0 ** (levels[-1] / 20.0) / rms)
  return noise, (levels[0], levels[1])


def generate_dialog(seed: int, config: DialogConfig = DialogConfig()) -> Dialog:
  """A dialog of `config.duration_s` seconds, a deterministic function of (seed, config)."""
  rng = np.random.default_rng(seed)
  f0_mean, formants = _voices(rng, config)
  ipus = _turn_structure(rng, config)
  backchannels = ([] if config.monologue
                  else _backchannels(_backchannel_candidates(rng, config, ipus), ipus))
  knots = ([(s, _ipu_knots(rng, config, s, f0_mean[s.speaker])) for s in ipus]
           + [(s, _backchannel_knots(rng, s, f0_mean[s.speaker])) for s in backchannels])
  knots.sort(key=lambda pair: pair[0].start)
  n_samples = round(config.duration_s * config.sample_rate)
  speech, f0 = zip(*[
      _render_channel(rng, [k for s, k in knots if s.speaker == c], n_samples, f0_mean[c],
                      formants[c], config) for c in (0, 1)])
  speech = np.stack(speech, axis=1)
  noise, floor_db = _noise_floor(rng, n_samples, config)
  audio = speech + np.float32(10.0 ** (config.bleed_db / 20.0)) * speech[:, ::-1] + noise
  if config.monologue:
    audio[:, 1] = 0.0
  hop = config.sample_rate // F0_HZ
  f0_frames = np.stack([_frame_f0(f, f > 0, hop, n_samples // hop) for f in f0], axis=1)
  return Dialog(audio=audio, va_list=_segment_list([s for s, _ in knots]),
                f0=f0_frames.astype(np.float32), events=_events(ipus, backchannels),
                backchannel_list=_segment_list(backchannels),
                speaker_f0_hz=(float(f0_mean[0]), float(f0_mean[1])),
                noise_floor_db=floor_db)
