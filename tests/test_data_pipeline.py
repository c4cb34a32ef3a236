"""The grain pipeline: windows, frames, horizon padding, determinism, resume, sharding, swap."""

import numpy as np
import pytest

from convssl_jax.data import pipeline

HZ, H = 50, 100  # frame rate, horizon frames
SR = pipeline.SAMPLE_RATE


def _dialog(duration_s, segments_a, segments_b, seed):
  """A stored-format example whose audio encodes the sample index (channel B negated)."""
  n = int(duration_s * SR)
  ramp = (np.arange(n) % 20000).astype(np.int16)
  audio = np.stack([ramp, -ramp], axis=1)
  va = [[0, s, e] for s, e in segments_a] + [[1, s, e] for s, e in segments_b]
  f0 = np.zeros((int(duration_s * 100), 2), np.float32)
  f0[:, 0] = 100 + seed
  return {'audio': audio, 'va': np.asarray(va, np.float64).reshape(-1, 3), 'f0': f0}


@pytest.fixture
def corpus():
  dialogs = [
      _dialog(25.0, [(0.0, 4.0), (10.0, 24.99)], [(4.5, 9.0)], 0),
      _dialog(6.0, [(1.0, 2.0)], [(2.5, 5.9)], 1),  # shorter than one window
      _dialog(41.3, [(0.5, 20.0)], [(21.0, 41.0)], 2),
  ]
  return pipeline.Corpus(source=dialogs, sessions=('a', 'b', 'c'),
                         durations=np.array([25.0, 6.0, 41.3]))


def _spec(**kw):
  return pipeline.WindowSpec(window_s=10.0, frame_hz=HZ, horizon_frames=H, **kw)


def _full_va(segments, duration_s):
  """Hand-built frames: frame f is active when int(start/hop) <= f < int(end/hop)."""
  hop = 1 / HZ
  va = np.zeros((int(duration_s / hop), 2), np.float32)
  for channel, start, end in segments:
    va[int(start / hop):int(end / hop), int(channel)] = 1
  return va


def test_eval_windows_cover_every_frame_with_silent_horizon_past_the_end(corpus):
  batches = list(pipeline.eval_dataset(corpus, _spec(normalize=False), batch_size=4))
  real = np.concatenate([b['weight'] for b in batches]) == 1
  va = np.concatenate([b['va'] for b in batches])[real]
  conv = np.concatenate([b['conversation'] for b in batches])[real]
  start = np.concatenate([b['start'] for b in batches])[real]
  for i, dialog in enumerate(corpus.source):
    full = _full_va(dialog['va'], corpus.durations[i])
    padded = np.concatenate([full, np.zeros((10 * HZ + H, 2), np.float32)])
    covered = np.zeros(len(full), bool)
    for window, s in zip(va[conv == i], start[conv == i]):
      f = int(round(s * HZ))
      np.testing.assert_array_equal(window, padded[f:f + 10 * HZ + H])
      covered[f:f + 10 * HZ] = True
    assert covered.all(), f'dialog {i} has frames no evaluation window covers'
  # The 41.3 s dialog: sliding starts 0, 10, 20, 30 and a last window ending at the end.
  np.testing.assert_allclose(start[conv == 2], [0, 10, 20, 30, 31.3], atol=1e-6)


def test_a_dialog_shorter_than_a_window_is_one_zero_padded_window(corpus):
  (b,) = list(pipeline.eval_dataset(corpus, _spec(normalize=False), batch_size=16))
  short = b['conversation'] == 1
  assert short.sum() == 1
  audio = b['audio'][short][0]  # [2, S]
  n = 6 * SR
  expected = (np.arange(n) % 20000) / 32768.0
  np.testing.assert_allclose(audio[0, :n], expected, rtol=0, atol=1e-7)
  np.testing.assert_allclose(audio[1, :n], -expected, rtol=0, atol=1e-7)
  assert not audio[:, n:].any() and audio.shape == (2, 10 * SR)
  assert not b['va'][short][0, 6 * HZ:].any()  # future silence past the end
  np.testing.assert_array_equal(b['va_history'][short][0, 6 * HZ:], 0.5)  # no evidence


def test_batches_have_the_design_shapes(corpus):
  batch = next(iter(pipeline.train_dataset(corpus, _spec(), batch_size=3, seed=0)))
  assert batch['audio'].shape == (3, 2, 10 * SR) and batch['audio'].dtype == np.float32
  assert batch['va'].shape == (3, 10 * HZ + H, 2)
  assert batch['va_history'].shape == (3, 10 * HZ, 5) and batch['f0'].shape == (3, 10 * HZ, 2)
  mono = next(iter(pipeline.train_dataset(corpus, _spec(mono=True), batch_size=3, seed=0)))
  assert mono['audio'].shape == (3, 10 * SR)


@pytest.mark.parametrize('normalize', [True, False])
def test_the_mono_mix_is_renormalised_only_with_normalisation(normalize):
  n = 10 * SR
  ramp = (np.arange(n) % 20000).astype(np.int16)  # peak 19999
  dialog = {'audio': np.stack([ramp, ramp // 2], axis=1), 'va': np.zeros((0, 3)),
            'f0': np.zeros((1000, 2), np.float32)}
  corpus = pipeline.Corpus(source=[dialog], sessions=('a',), durations=np.array([10.0]))
  (b,) = list(pipeline.eval_dataset(corpus, _spec(mono=True, normalize=normalize), batch_size=1))
  # Normalised: each channel to peak 1 (peaks 19999 and 9999), their mean, again to peak 1.
  # Not normalised: only the mean of the int16 channels over 32768, as the reference.
  if normalize:
    mean = (ramp / 19999.0 + (ramp // 2) / 9999.0) / 2
    expected = mean / mean.max()
  else:
    expected = (ramp.astype(np.float64) + ramp // 2) / 2 / 32768.0
  np.testing.assert_allclose(b['audio'][0], expected, rtol=0, atol=2e-6)


def _take(ds, n):
  it = iter(ds)
  return [next(it) for _ in range(n)]


def test_training_stream_is_deterministic_for_a_seed(corpus):
  a, b = (_take(pipeline.train_dataset(corpus, _spec(), batch_size=2, seed=7, epochs=2), 5)
          for _ in range(2))
  c = _take(pipeline.train_dataset(corpus, _spec(), batch_size=2, seed=8, epochs=2), 5)
  for x, y in zip(a, b):
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])
  assert any(not np.array_equal(x['start'], z['start']) for x, z in zip(a, c))


def test_restored_iterator_continues_with_the_same_batches(corpus):
  ds = pipeline.train_dataset(corpus, _spec(), batch_size=2, seed=3)
  it = iter(ds)
  for _ in range(3):
    next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(3)]
  resumed = iter(pipeline.train_dataset(corpus, _spec(), batch_size=2, seed=3))
  resumed.set_state(state)
  for want in expected:
    got = next(resumed)
    for key in want:
      np.testing.assert_array_equal(got[key], want[key])


def test_windows_stay_inside_their_dialog_and_every_window_is_used_each_epoch(corpus):
  table = pipeline.window_table(corpus, 10.0, 2.0, cover=False)
  ds = pipeline.train_dataset(corpus, _spec(), batch_size=1, seed=0, overlap_s=2.0)
  rows = [next(it) for it in [iter(ds)] for _ in range(len(table))]
  conv = np.array([int(r['conversation'][0]) for r in rows])
  start = np.array([float(r['start'][0]) for r in rows])
  np.testing.assert_array_equal(np.bincount(conv, minlength=3), np.bincount(
      table[:, 0].astype(int), minlength=3))
  assert np.all(start >= 0)
  assert np.all(start <= np.maximum(corpus.durations[conv] - 10.0, 0) + 1e-6)


def test_processes_read_disjoint_shares_of_the_windows_in_equally_many_full_batches(corpus):
  table = pipeline.window_table(corpus, 10.0, 0.0, cover=True)
  assert len(table) == 9  # 3 + 1 + 5 windows: 2 processes x 2 batches of 3 need 3 padding rows
  shares, batches = [], []
  for process in range(2):
    ds = list(pipeline.eval_dataset(corpus, _spec(), batch_size=3, process_index=process,
                                    process_count=2))
    batches.append(len(ds))
    assert all(len(b['weight']) == 3 for b in ds)
    shares.append({(int(c), float(s)) for b in ds
                   for c, s, w in zip(b['conversation'], b['start'], b['weight']) if w == 1})
  assert batches == [2, 2] and sum(map(len, shares)) == 9
  assert not shares[0] & shares[1]
  assert shares[0] | shares[1] == {(int(c), float(np.float32(s))) for c, s in table}


def test_processes_training_batches_together_are_the_one_process_batch(corpus):
  spec = _spec()
  whole = _take(pipeline.train_dataset(corpus, spec, batch_size=4, seed=3), 3)
  shares = [_take(pipeline.train_dataset(corpus, spec, batch_size=2, seed=3, process_index=p,
                                         process_count=2), 3) for p in range(2)]
  # Global element k of a batch is process k % 2's element k // 2: same window, jitter and swap.
  for b, batch in enumerate(whole):
    for k in range(4):
      for key, value in batch.items():
        np.testing.assert_array_equal(shares[k % 2][b][key][k // 2], value[k], err_msg=key)


def test_channel_swap_swaps_audio_va_f0_and_mirrors_history(corpus):
  kept = next(iter(pipeline.train_dataset(corpus, _spec(), batch_size=4, seed=1,
                                          channel_swap=0.0)))
  swapped = next(iter(pipeline.train_dataset(corpus, _spec(), batch_size=4, seed=1,
                                             channel_swap=1.0)))
  np.testing.assert_array_equal(swapped['audio'], kept['audio'][:, ::-1])
  np.testing.assert_array_equal(swapped['va'], kept['va'][..., ::-1])
  np.testing.assert_array_equal(swapped['f0'], kept['f0'][..., ::-1])
  np.testing.assert_allclose(swapped['va_history'], 1 - kept['va_history'])


def test_peak_normalisation_scales_each_channel_to_one(corpus):
  batch = next(iter(pipeline.train_dataset(corpus, _spec(), batch_size=2, seed=0)))
  np.testing.assert_allclose(np.abs(batch['audio']).max(axis=-1), 1.0, rtol=1e-6)


def test_grouped_order_is_a_permutation_that_keeps_conversations_together():
  table = np.array([[c, s] for c in range(10) for s in range(5)], np.float64)
  order = pipeline.grouped_order(table, 10, np.random.default_rng(0), group=2)
  np.testing.assert_array_equal(np.sort(order), np.arange(len(table)))
  conv = table[order, 0].astype(int)
  for block in range(5):  # each run of 10 windows holds exactly two conversations
    assert len(set(conv[block * 10:(block + 1) * 10])) == 2
