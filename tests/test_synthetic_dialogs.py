"""The synthetic dialog generator: determinism, ground truth against the audio, and the design's
promise that only the audio, never the voice activity alone, tells a shift from a hold.

The listener here estimates F0 from the audio with a plain autocorrelation tracker; the VA-only
baselines get every VA feature of a pause, its length included, and are trained on half the dialogs.
"""

import time

import numpy as np
import pytest
import scipy.optimize
import scipy.special
import scipy.stats

from data_builders.synthetic_dialogs import generator

SR = 16000
N_DIALOGS = 50  # about 1000 shift/hold events
LISTENER_CUT = -4.0  # st/s: between a level end (>= 0) and the gentlest fall (-3 st in 0.4 s)
VA_FEATURES = ('pause', 'ipu', 'ipus_in_turn', 'turn', 'listener_gap')


@pytest.fixture(scope='module')
def corpus():
  return [generator.generate_dialog(seed) for seed in range(N_DIALOGS)]


@pytest.fixture(scope='module')
def table(corpus):
  return event_table(corpus)


# Analysis helpers.

def main_ipus(dialog):
  """The IPUs (VA segments that are not backchannels) as (start, end, speaker), in time order."""
  ipus = [(s, e, c) for c in (0, 1) for s, e in dialog.va_list[c]
          if [s, e] not in dialog.backchannel_list[c]]
  return sorted(ipus)


def audio_f0_slope(x, win=0.04, hop=0.01, span=0.3):
  """F0 slope in semitones/s over the last `span` s of `x`, from per-frame autocorrelation pitch."""
  n, h = int(win * SR), int(hop * SR)
  starts = np.arange(len(x) - int(span * SR), len(x) - n + 1, h)
  frames = x[starts[:, None] + np.arange(n)] * np.hanning(n)
  ac = np.fft.irfft(np.abs(np.fft.rfft(frames, 2 * n)) ** 2)[:, :n]
  lo, hi = SR // 400, SR // 50
  lag = lo + np.argmax(ac[:, lo:hi], axis=1)
  voiced = ac[np.arange(len(ac)), lag] > 0.3 * ac[:, 0]
  if voiced.sum() < 3:
    return 0.0
  return np.polyfit((starts[voiced] + n / 2) / SR, 12 * np.log2(SR / lag[voiced]), 1)[0]


def event_table(dialogs):
  """One row per event: kind, label, cue, the VA features and the listener's audio F0 slope."""
  rows = []
  for index, d in enumerate(dialogs):
    ipus = main_ipus(d)
    ends = {(c, e): k for k, (_, e, c) in enumerate(ipus)}
    for ev in d.events:
      k = ends[ev.speaker_before, ev.end if ev.kind == 'overlap_shift' else ev.start]
      run = k
      while run > 0 and ipus[run - 1][2] == ev.speaker_before:
        run -= 1
      heard = [e for s, e in d.va_list[1 - ev.speaker_before] if e <= ev.start]
      i = round(ev.start * SR)
      rows.append({
          'dialog': index, 'kind': ev.kind, 'shift': ev.kind != 'hold',
          'cue_correct': ev.cue_correct, 'pause': ev.end - ev.start,
          'ipu': ipus[k][1] - ipus[k][0], 'ipus_in_turn': k - run + 1,
          'turn': ipus[k][1] - ipus[run][0], 'listener_gap': ev.start - max(heard, default=0.0),
          'slope': audio_f0_slope(d.audio[i - round(0.35 * SR):i, ev.speaker_before]),
      })
  return {key: np.array([r[key] for r in rows]) for key in rows[0]}


def select(table, mask):
  return {key: value[mask] for key, value in table.items()}


def balanced_accuracy(pred, y):
  return 0.5 * (np.mean(pred[y]) + np.mean(~pred[~y]))


def fit_logistic(x, y):
  """Class-balanced logistic regression on standardised features; returns the decision rule."""
  mu, sd = x.mean(0), x.std(0)

  def design(x):
    return np.c_[(x - mu) / sd, np.ones(len(x))]

  z = design(x)
  w = np.where(y, 0.5 / y.mean(), 0.5 / (1 - y.mean()))

  def loss(beta):
    logits = z @ beta
    return (np.sum(w * (np.logaddexp(0, logits) - y * logits)),
            z.T @ (w * (scipy.special.expit(logits) - y)))

  beta = scipy.optimize.minimize(loss, np.zeros(z.shape[1]), jac=True, method='L-BFGS-B').x
  return lambda x_test: design(x_test) @ beta > 0


def fit_threshold(x, y):
  """The cut on a 1-D feature, either direction, with the best training balanced accuracy."""
  cuts = np.unique(x)
  below = x[None, :] < cuts[:, None]
  score = 0.5 * (below[:, y].mean(1) + (~below[:, ~y]).mean(1))
  best = np.argmax(np.abs(score - 0.5))
  cut, sign = cuts[best], score[best] > 0.5
  return lambda x: (x < cut) == sign


def shift_hold_scores(table):
  """Test-half balanced accuracies: VA-only logistic, best VA-only single cut, audio listener."""
  t = select(table, table['kind'] != 'overlap_shift')
  train = t['dialog'] < t['dialog'].max() / 2
  x, y = np.stack([t[f] for f in VA_FEATURES], axis=1).astype(float), t['shift']
  logistic = balanced_accuracy(fit_logistic(x[train], y[train])(x[~train]), y[~train])
  single = max(balanced_accuracy(fit_threshold(x[train, j], y[train])(x[~train, j]), y[~train])
               for j in range(x.shape[1]))
  listener = balanced_accuracy(t['slope'][~train] < LISTENER_CUT, y[~train])
  return logistic, single, listener


# Determinism and format.

def test_same_seed_is_bit_identical_and_seeds_differ():
  config = generator.DialogConfig(duration_s=10.0)
  a, b, c = (generator.generate_dialog(s, config) for s in (7, 7, 8))
  assert a.audio.tobytes() == b.audio.tobytes() and a.f0.tobytes() == b.f0.tobytes()
  assert (a.va_list, a.events, a.backchannel_list) == (b.va_list, b.events, b.backchannel_list)
  assert a.audio.tobytes() != c.audio.tobytes()


def test_shapes_dtypes_and_headroom(corpus):
  config = generator.DialogConfig()
  for d in corpus[:5]:
    assert d.audio.shape == (round(config.duration_s * SR), 2) and d.audio.dtype == np.float32
    assert d.f0.shape == (d.audio.shape[0] // 160, 2) and d.f0.dtype == np.float32
    assert np.abs(d.audio).max() < 0.8
    assert sorted(d.speaker_f0_hz) == pytest.approx(config.speaker_f0_hz, rel=0.1)


def test_segments_are_sorted_disjoint_and_inside_the_dialog(corpus):
  for d in corpus:
    for c in (0, 1):
      segs = np.array(d.va_list[c]).reshape(-1, 2)
      assert np.all(segs[:, 1] > segs[:, 0]) and np.all(segs[1:, 0] > segs[:-1, 1])
      assert segs.min() >= 0 and segs.max() <= 60.0
      assert all(bc in d.va_list[c] for bc in d.backchannel_list[c])
    starts = [ev.start for ev in d.events]
    assert starts == sorted(starts)
    assert all(type(v) is float for s in d.va_list for seg in s for v in seg)


# Ground truth against the audio.

def frame_masks(segments, n_frames):
  """Frames (10 ms, [t, t + 1) * 10 ms) wholly inside a segment's interior (1 frame in from each
  end), and frames within 20 ms of a segment."""
  start = np.arange(n_frames) * 0.01
  inside, near = np.zeros(n_frames, bool), np.zeros(n_frames, bool)
  for s, e in segments:
    inside |= (start >= s + 0.01) & (start + 0.01 <= e - 0.01)
    near |= (start + 0.01 > s - 0.02) & (start < e + 0.02)
  return inside, near


def test_va_agrees_with_the_audio_energy(corpus):
  config = generator.DialogConfig()
  bleed = 10 ** (config.bleed_db / 20)
  for d in corpus[:5]:
    n = d.audio.shape[0] // 160
    rms = np.sqrt(np.mean(np.square(d.audio[:n * 160].reshape(n, 160, 2)), axis=1))
    for c in (0, 1):
      floor = 10 ** (d.noise_floor_db[c] / 20)
      inside, near = frame_masks(d.va_list[c], n)
      # Voiced speech at -24 dBFS, the floor at most -40: speech stands >= 15 dB above it.
      assert np.median(rms[inside, c]) > 10 ** (15 / 20) * floor
      assert np.quantile(rms[inside, c], 0.01) > 10 ** (3 / 20) * floor  # even in dips and gaps
      silent = rms[~near, c]
      assert np.all(silent < 2.0 * (bleed * rms[~near, 1 - c] + floor))  # floor plus bleed only


def test_the_noise_floor_varies_in_level_and_colour_between_dialogs(corpus):
  config = generator.DialogConfig()
  levels, lag1 = [], []
  for d in corpus:
    n = d.audio.shape[0] // 160
    for c in (0, 1):
      assert config.noise_floor_db[0] <= d.noise_floor_db[c] <= config.noise_floor_db[1]
      # Where neither speaker is near, a channel holds its floor alone.
      quiet = ~frame_masks(d.va_list[0], n)[1] & ~frame_masks(d.va_list[1], n)[1]
      samples = d.audio[:n * 160, c].reshape(n, 160)[quiet]
      measured = 10 * np.log10(np.mean(np.square(samples)))
      assert abs(measured - d.noise_floor_db[c]) < 1.0, (measured, d.noise_floor_db[c])
      levels.append(d.noise_floor_db[c])
      lag1.append(np.mean(samples[:, 1:] * samples[:, :-1]) / np.mean(np.square(samples)))
  # White noise has lag-1 correlation 0, the reddest allowed floor (pole 0.95) 0.95.
  assert np.ptp(levels) > 15 and min(lag1) < 0.3 and max(lag1) > 0.8, (levels, lag1)


def test_f0_is_zero_outside_va_and_in_the_speakers_range_inside(corpus):
  for d in corpus[:10]:
    # F0 frame t is centred on t * 10 ms: shift the masks by half a frame.
    centred = np.arange(len(d.f0)) * 0.01
    for c in (0, 1):
      segs = np.array(d.va_list[c])
      in_va = np.any((centred[:, None] > segs[:, 0] - 0.005)
                     & (centred[:, None] < segs[:, 1] + 0.005), axis=1)
      f0 = d.f0[:, c]
      assert np.all(f0[~in_va] == 0)
      ratio = f0[f0 > 0] / d.speaker_f0_hz[c]
      assert ratio.min() > 0.5 and ratio.max() < 1.6
      inside, _ = frame_masks(d.va_list[c], len(d.f0))
      assert 0.8 < np.mean(f0[inside] > 0) < 0.99  # voiced, with some unvoiced gaps


def test_stored_f0_matches_the_audio(corpus):
  """The F0 track is the F0 the audio was synthesised at: autocorrelation pitch agrees."""
  d = corpus[0]
  for c in (0, 1):
    frames = np.flatnonzero(d.f0[:, c] > 0)[::20]
    frames = frames[(frames > 5) & (frames < len(d.f0) - 5)]
    x = np.stack([d.audio[t * 160 - 320:t * 160 + 320, c] for t in frames])
    ac = np.fft.irfft(np.abs(np.fft.rfft(x * np.hanning(640), 1280)) ** 2)[:, :640]
    lag = SR // 400 + np.argmax(ac[:, SR // 400:SR // 50], axis=1)
    cents = 1200 * np.abs(np.log2(SR / lag / d.f0[frames, c]))
    assert np.median(cents) < 30 and np.mean(cents < 100) > 0.9


# The turn-taking design.

def test_cue_reliability_is_realised(table):
  assert np.mean(table['cue_correct']) == pytest.approx(0.9, abs=0.03)


def test_shift_and_hold_pauses_are_indistinguishable(table):
  shift, hold = table['pause'][table['kind'] == 'shift'], table['pause'][table['kind'] == 'hold']
  assert len(shift) > 300 and len(hold) > 400
  assert scipy.stats.ks_2samp(shift, hold).pvalue > 0.01


def test_final_and_nonfinal_ipu_durations_are_indistinguishable(table):
  final, nonfinal = table['ipu'][table['shift']], table['ipu'][~table['shift']]
  assert scipy.stats.ks_2samp(final, nonfinal).pvalue > 0.01


def test_va_alone_is_near_chance_and_the_listener_reaches_the_reliability(table):
  logistic, single, listener = shift_hold_scores(table)
  assert logistic < 0.6 and single < 0.6
  assert listener > 0.8


def test_listener_tracks_a_lower_reliability():
  config = generator.DialogConfig(cue_reliability=0.7)
  t = event_table([generator.generate_dialog(1000 + s, config) for s in range(15)])
  assert np.mean(t['cue_correct']) == pytest.approx(0.7, abs=0.07)
  t = select(t, t['kind'] != 'overlap_shift')
  assert balanced_accuracy(t['slope'] < LISTENER_CUT, t['shift']) == pytest.approx(0.7, abs=0.08)


def test_overlaps_occur_at_the_configured_rate_and_are_short(table):
  config = generator.DialogConfig()
  shifts = table['kind'] != 'hold'
  overlap = table['kind'] == 'overlap_shift'
  assert np.mean(overlap[shifts]) == pytest.approx(config.overlap_prob, abs=0.05)
  low, high = config.overlap_range_s
  assert np.all((table['pause'][overlap] >= low) & (table['pause'][overlap] <= high))


def test_backchannels_occur_at_the_configured_rate(corpus):
  config = generator.DialogConfig()
  in_ipu = in_pause = long_ipus = hold_pauses = 0
  for d in corpus:
    ipus = main_ipus(d)
    long_ipus += sum(e - s >= 1.5 for s, e, _ in ipus)
    hold_pauses += sum(a[2] == b[2] for a, b in zip(ipus, ipus[1:]))
    for c in (0, 1):
      for s, e in d.backchannel_list[c]:
        assert config.backchannel_range_s[0] <= e - s <= config.backchannel_range_s[1] + 1e-9
        inside = any(a <= s and e <= b for a, b, speaker in ipus if speaker != c)
        in_ipu, in_pause = in_ipu + inside, in_pause + (not inside)
  # A few candidates are dropped for coming too close to the listener's own speech.
  assert in_ipu / long_ipus == pytest.approx(config.backchannel_rate, abs=0.05)
  assert in_pause / hold_pauses == pytest.approx(config.backchannel_rate, abs=0.05)


@pytest.mark.slow
def test_report_scores_on_200_dialogs():
  """The README's numbers: `python -m pytest tests/test_synthetic_dialogs.py -m slow -s`."""
  start = time.process_time()
  dialogs = [generator.generate_dialog(seed) for seed in range(200)]
  cpu = (time.process_time() - start) / 200
  table = event_table(dialogs)
  t = select(table, table['kind'] != 'overlap_shift')
  logistic, single, listener = shift_hold_scores(table)
  correct = t['cue_correct']
  on_correct = np.mean((t['slope'] < LISTENER_CUT)[correct] == t['shift'][correct])
  pause_p = scipy.stats.ks_2samp(t['pause'][t['shift']], t['pause'][~t['shift']]).pvalue
  ipu_p = scipy.stats.ks_2samp(table['ipu'][table['shift']], table['ipu'][~table['shift']]).pvalue
  print(f"\n{len(t['shift'])} shift/hold events ({np.sum(t['shift'])} shifts), "
        f"{np.sum(table['kind'] == 'overlap_shift')} overlap shifts; "
        f"realised cue reliability {np.mean(correct):.3f}\n"
        f"balanced accuracy (test half): VA-only logistic {logistic:.3f}, "
        f"best VA-only single cut {single:.3f}, audio listener {listener:.3f}\n"
        f"audio listener accuracy on cue-correct events {on_correct:.3f}\n"
        f"KS p: shift vs hold pause {pause_p:.3f}, final vs non-final IPU {ipu_p:.3f}\n"
        f"generation: {cpu:.3f} s CPU per 60 s dialog")
  assert logistic < 0.6 and listener > 0.85


def test_a_monologue_is_speaker_a_alone_with_holds_and_the_cues_and_a_digitally_silent_b():
  """What monologues would teach a model whose VAP term they trained: the speaker goes on after
  every pause, after a falling F0 (a sentence end) as after a level one."""
  config = generator.DialogConfig(duration_s=60.0, monologue=True)
  monologues = [generator.generate_dialog(seed, config) for seed in range(8)]
  again = generator.generate_dialog(0, config)
  np.testing.assert_array_equal(again.audio, monologues[0].audio)  # deterministic
  for m in monologues:
    assert m.va_list[1] == [] and m.backchannel_list == [[], []]
    assert not m.audio[:, 1].any() and not m.f0[:, 1].any() and m.audio[:, 0].any()
    assert {e.kind for e in m.events} == {'hold'} and len(m.events) > 10
  table = event_table(monologues)
  falling = np.mean(table['slope'] < LISTENER_CUT)
  # A turn-final IPU (0.4 of them) carries the falling cue with 0.9, a turn-internal one with 0.1.
  assert 0.3 < falling < 0.55, falling
