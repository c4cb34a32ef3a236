"""Frame-level turn-taking metrics (vap_spec.md section 5).

Expected values are counted or computed by hand in the comments, or come from scikit-learn at a
single threshold, never from the code under test.
"""


import warnings

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, f1_score, precision_score, recall_score

from convssl_jax import metrics

A, B = 0, 1
N = 10
MASK_KEYS = ('shift', 'hold', 'short', 'long', 'pred_shift', 'pred_shift_neg', 'pred_bc',
             'pred_bc_neg')


def hand_events():
  """1 x 10 x 2 masks, each event on the listed (frame, channel) entries."""
  where = {'shift': [(1, B), (2, B)], 'hold': [(5, A), (6, A)], 'short': [(3, A)],
           'long': [(7, B)], 'pred_shift': [(8, A), (9, A)], 'pred_shift_neg': [(0, B), (4, B)],
           'pred_bc': [(2, A)], 'pred_bc_neg': [(6, B)]}
  events = {key: np.zeros((1, N, 2), bool) for key in MASK_KEYS}
  for key, entries in where.items():
    for frame, ch in entries:
      events[key][0, frame, ch] = True
  return events


def hand_probs():
  """p[n] = (n/10, n/100) (not summing to 1, so 1 - p[ch] differs from p[1-ch]);
  p_bc[n] = (0.3 + n/100, 0.6 + n/100)."""
  n = np.arange(N)
  p = np.stack([n / 10, n / 100], -1)[None].astype(np.float32)
  p_bc = np.stack([0.3 + n / 100, 0.6 + n / 100], -1)[None].astype(np.float32)
  return p, p_bc


def sorted_pairs(scores, labels):
  """The multiset of (label, score) pairs as one sorted array (scores lie in [0, 1])."""
  return np.sort(labels.astype(np.float64) * 10 + scores)


def assert_samples(samples, name, scores, labels):
  np.testing.assert_allclose(samples[name][0], scores, atol=1e-6)
  np.testing.assert_array_equal(samples[name][1], labels)


def test_event_samples_feed_the_probabilities_of_the_spec_table():
  p, p_bc = hand_probs()
  samples = metrics.event_samples(hand_events(), p, p_bc)
  assert tuple(samples) == metrics.EVENTS
  # shift (1,B), (2,B): p[.,B] = .01, .02; hold (5,A), (6,A): 1 - p[.,A] = 1 - .5, 1 - .6.
  assert_samples(samples, 'shift_hold', [0.01, 0.02, 0.5, 0.4], [1, 1, 0, 0])
  # short (3,A): p_bc[3,A] = .33; long (7,B): p_bc[7,B] = .67.
  assert_samples(samples, 'short_long', [0.33, 0.67], [1, 0])
  # pred_shift (8,A), (9,A): .8, .9; pred_shift_neg (0,B), (4,B): 1 - 0, 1 - .04.
  assert_samples(samples, 'shift_prediction', [0.8, 0.9, 1.0, 0.96], [1, 1, 0, 0])
  # pred_bc (2,A): p_bc[2,A] = .32; pred_bc_neg (6,B) is the speaker, the other's p_bc[6,A] = .36.
  assert_samples(samples, 'backchannel_prediction', [0.32, 0.36], [1, 0])
  for scores, labels in samples.values():
    assert scores.dtype == np.float32 and np.issubdtype(labels.dtype, np.integer)


def test_comparative_head_scores_short_long_with_p_and_skips_backchannel_prediction():
  p, _ = hand_probs()
  samples = metrics.event_samples(hand_events(), p, None)
  assert_samples(samples, 'short_long', [0.3, 0.07], [1, 0])  # p[3,A], p[7,B]
  assert_samples(samples, 'shift_hold', [0.01, 0.02, 0.5, 0.4], [1, 1, 0, 0])
  assert len(samples['backchannel_prediction'][0]) == 0
  assert len(samples['backchannel_prediction'][1]) == 0


def test_event_samples_take_any_leading_dims_and_merge_across_batches():
  rng = np.random.default_rng(0)
  shape = (2, 3, N, 2)
  events = {key: rng.random(shape) < 0.3 for key in MASK_KEYS}
  p, p_bc = rng.random(shape, np.float32), rng.random(shape, np.float32)
  whole = metrics.event_samples(events, p, p_bc)
  unbatched = [metrics.event_samples({k: v[i, j] for k, v in events.items()}, p[i, j], p_bc[i, j])
               for i in range(2) for j in range(3)]
  merged = metrics.merge_samples(unbatched)
  for name in metrics.EVENTS:
    scores, labels = whole[name]
    assert len(labels) == len(merged[name][1]) > 0
    # The order differs (positives first in every part), the pairs do not.
    np.testing.assert_array_equal(sorted_pairs(scores, labels), sorted_pairs(*merged[name]))
  assert whole['shift_hold'][1].sum() == events['shift'].sum()
  assert (1 - whole['shift_hold'][1]).sum() == events['hold'].sum()


def test_mismatched_mask_shape_is_rejected():
  p, p_bc = hand_probs()
  with pytest.raises(ValueError, match='does not match'):
    metrics.event_samples(hand_events(), p[0], p_bc[0])


def test_weighted_f1_and_balanced_accuracy_by_hand():
  labels = np.array([1, 1, 1, 0, 0])
  scores = np.array([0.9, 0.6, 0.2, 0.7, 0.1], np.float32)
  # t = 0.5: pred = [1, 1, 0, 1, 0].
  # shift (1): tp 2, fp 1, fn 1 -> f1 = 2*2 / (2*2 + 1 + 1) = 2/3.
  # hold (0): tp 1 (frame 4), fp 1 (frame 2), fn 1 (frame 3) -> f1 = 2 / (2 + 1 + 1) = 1/2.
  # weighted: (2/3 * 3 + 1/2 * 2) / 5 = 3/5; balanced accuracy: (2/3 + 1/2) / 2 = 7/12.
  result = metrics.score({'shift_hold': (scores, labels)})['shift_hold']
  assert result['f1_weighted'] == pytest.approx(3 / 5)
  assert result['balanced_accuracy'] == pytest.approx(7 / 12)
  assert result['f1_pos'] == pytest.approx(2 / 3) and result['f1_neg'] == pytest.approx(1 / 2)
  # shift: precision 2 / (2 + 1), recall 2 / 3; hold: precision 1 / (1 + 1), recall 1 / 2.
  assert (result['precision_pos'], result['recall_pos']) == pytest.approx((2 / 3, 2 / 3))
  assert (result['precision_neg'], result['recall_neg']) == pytest.approx((1 / 2, 1 / 2))
  assert (result['threshold'], result['n_frames'], result['n_positive'], result['n_negative']) == (
      0.5, 5, 3, 2)
  curves = metrics.threshold_curves(scores, labels, [0.5])
  assert curves['f1_weighted'][0] == pytest.approx(3 / 5)
  assert curves['balanced_accuracy'][0] == pytest.approx(7 / 12)
  assert curves['precision_pos'][0] == pytest.approx(2 / 3)  # tp 2 / (tp 2 + fp 1)
  assert curves['recall_neg'][0] == pytest.approx(1 / 2)  # tn 1 / n_neg 2


def test_a_split_without_one_class_scores_without_sklearns_warnings(recwarn):
  # Only negatives (the table's frames column shows 0 positives): balanced accuracy is the
  # recall of the class present, 2 of 3 negatives below the threshold; sklearn used to warn
  # "y_pred contains classes not in y_true" and "A single label was found".
  warnings.simplefilter('always')
  scores = metrics.score({'shift_hold': (np.array([0.1, 0.9, 0.2]), np.array([0, 0, 0])),
                          'short_long': (np.array([0.1, 0.2]), np.array([0, 0]))})
  assert scores['shift_hold']['balanced_accuracy'] == pytest.approx(2 / 3)
  assert scores['short_long']['balanced_accuracy'] == 1.0
  assert not [w for w in recwarn if 'sklearn' in w.filename], [str(w.message) for w in recwarn]
  warnings.warn('a warning of its own')  # only those two are filtered
  assert [str(w.message) for w in recwarn] == ['a warning of its own']


def test_a_score_equal_to_the_threshold_predicts_the_positive_class():
  labels = np.array([1, 0])
  scores = np.array([0.5, 0.49], np.float32)
  result = metrics.score({'shift_prediction': (scores, labels)}, {'shift_prediction': 0.5})
  assert result['shift_prediction']['f1_weighted'] == 1.0
  assert metrics.threshold_curves(scores, labels, [0.5])['balanced_accuracy'][0] == 1.0


def test_scores_meet_thresholds_in_float32_as_the_reference_tensors_do():
  # float32(0.35) = 0.3499999940395355 < 0.35 in float64; in float32 it equals the threshold.
  labels = np.array([1, 1, 0, 0])
  scores = np.array([0.35, 0.35, 0.2, 0.36], np.float32)
  result = metrics.score({'shift_prediction': (scores, labels)}, {'shift_prediction': 0.35})
  # pred = [1, 1, 0, 1]: positives f1 2*2/(4+1) = 0.8, negatives 2*1/(2+1) = 2/3 -> weighted 11/15
  assert result['shift_prediction']['f1_weighted'] == pytest.approx(11 / 15)
  curves = metrics.threshold_curves(scores, labels, [0.35])
  assert curves['f1_weighted'][0] == pytest.approx(11 / 15)


def test_vectorised_curves_equal_sklearn_at_several_thresholds():
  rng = np.random.default_rng(1)
  n = 5000
  labels = (rng.random(n) < 0.3).astype(np.int32)
  scores = np.clip(rng.normal(0.35 + 0.3 * labels, 0.2), 0, 1).astype(np.float32)
  scores[:500] = np.round(scores[:500], 2)  # scores on the grid: ties with the thresholds
  curves = metrics.threshold_curves(scores, labels)
  np.testing.assert_array_equal(curves['threshold'], metrics.THRESHOLD_GRID)
  for i in (0, 1, 13, 35, 50, 77, 99, 100):
    t = metrics.THRESHOLD_GRID[i]
    pred = (scores >= np.float32(t)).astype(np.int32)  # float32, as the reference's tensors
    kwargs = {'labels': [0, 1], 'average': None, 'zero_division': 0.0}
    expected = {'f1_weighted': f1_score(labels, pred, labels=[0, 1], average='weighted',
                                        zero_division=0.0),
                'balanced_accuracy': balanced_accuracy_score(labels, pred)}
    for stat, fn in (('precision', precision_score), ('recall', recall_score), ('f1', f1_score)):
      expected[f'{stat}_neg'], expected[f'{stat}_pos'] = fn(labels, pred, **kwargs)
    for key, value in expected.items():
      assert curves[key][i] == pytest.approx(value, abs=1e-12), (t, key)


def test_threshold_search_picks_the_lowest_best_threshold():
  # Negatives <= 0.295 and positives >= 0.355 separate perfectly for t in [0.30, 0.35] only;
  # the first of those six tied thresholds wins.
  scores = np.array([0.355, 0.4, 0.6, 0.1, 0.2, 0.295], np.float32)
  labels = np.array([1, 1, 1, 0, 0, 0])
  assert metrics.best_threshold(scores, labels) == pytest.approx(0.30)


def test_threshold_search_stays_within_001_and_099():
  # Perfect only at t = 1.0 (both positives score 1, a negative 0.995); for t in (0.5, 0.99] the
  # 0.995 negative is the one error, for t <= 0.5 the 0.5 negative is a second: best is 0.51.
  scores = np.array([1.0, 1.0, 0.5, 0.995], np.float32)
  labels = np.array([1, 1, 0, 0])
  assert metrics.threshold_curves(scores, labels, [1.0])['f1_weighted'][0] == 1.0
  assert metrics.best_threshold(scores, labels) == pytest.approx(0.51)
  # Best at t = 0 (every frame predicted positive), but inside the limits every threshold predicts
  # all negative and ties: the lowest allowed, 0.01.
  scores = np.array([0.0, 0.0, 0.0, 0.0, 0.005], np.float32)
  labels = np.array([1, 1, 1, 1, 0])
  assert metrics.best_threshold(scores, labels) == pytest.approx(0.01)


def test_shift_hold_threshold_is_never_tuned():
  # Perfect (and best) from the first grid point above the highest negative: 0.15 and 0.20.
  separable = (np.array([0.9, 0.8, 0.145, 0.05], np.float32), np.array([1, 1, 0, 0]))
  shifted = (np.array([0.3, 0.25, 0.195, 0.1], np.float32), np.array([1, 1, 0, 0]))
  samples = {'shift_hold': shifted, 'short_long': separable, 'shift_prediction': shifted,
             'backchannel_prediction': separable}
  thresholds = metrics.find_thresholds(samples)
  assert thresholds['shift_hold'] == 0.5
  assert thresholds['shift_prediction'] == pytest.approx(0.20)
  assert thresholds['short_long'] == thresholds['backchannel_prediction'] == pytest.approx(0.15)


def test_thresholds_found_on_validation_are_applied_unchanged_on_test():
  val = {'shift_prediction': (np.array([0.355, 0.4, 0.6, 0.1, 0.2, 0.295], np.float32),
                              np.array([1, 1, 1, 0, 0, 0]))}
  thresholds = metrics.find_thresholds(val)
  assert thresholds['shift_prediction'] == pytest.approx(0.30)
  # Test set, best threshold of its own would be 0.32. At 0.30: pred = [1, 1, 1, 0].
  # pos: tp 2, fp 1, fn 0 -> f1 4/5; neg: tp 1, fp 0, fn 1 -> f1 2/3.
  # weighted (4/5 * 2 + 2/3 * 2) / 4 = 11/15; balanced accuracy (2/2 + 1/2) / 2 = 3/4.
  test = {'shift_prediction': (np.array([0.32, 0.8, 0.31, 0.1], np.float32),
                               np.array([1, 1, 0, 0]))}
  result = metrics.score(test, thresholds)['shift_prediction']
  assert result['threshold'] == pytest.approx(0.30)
  assert result['f1_weighted'] == pytest.approx(11 / 15)
  assert result['balanced_accuracy'] == pytest.approx(3 / 4)


def test_event_without_samples_reports_nan_and_zero_counts():
  p, _ = hand_probs()
  samples = metrics.event_samples(hand_events(), p, None)
  assert metrics.find_thresholds(samples)['backchannel_prediction'] == 0.5
  result = metrics.score(samples, metrics.find_thresholds(samples))['backchannel_prediction']
  assert (result['n_frames'], result['n_positive'], result['n_negative']) == (0, 0, 0)
  for key in ('f1_weighted', 'balanced_accuracy', 'f1_pos', 'f1_neg'):
    assert np.isnan(result[key])
  assert np.isnan(metrics.threshold_curves([], [])['f1_weighted']).all()
  assert set(metrics.score({})) == set(metrics.EVENTS)  # events missing altogether: same


def test_report_table_lists_the_four_events_in_order_with_formatted_numbers():
  val = {'shift_hold': (np.array([0.9, 0.6, 0.2, 0.7, 0.1], np.float32),
                        np.array([1, 1, 1, 0, 0]))}
  vap = metrics.score(val)  # S/H: 0.6 weighted F1, 7/12 = 0.583 balanced accuracy
  comparative = metrics.score(val, {'shift_hold': 0.15})  # all but 0.1 positive
  table = metrics.report_table({'VAP': vap, 'comparative': comparative}, title='Test')
  lines = table.splitlines()
  assert lines[0] == '### Test'
  assert 'VAP F1w' in lines[2] and 'comparative BAcc' in lines[2] and 'frames' in lines[2]
  rows = [line for line in lines[4:] if line.startswith('|')]
  assert [row.split('|')[1].split()[0] for row in rows] == ['S/H', 'S/L', 'S-pred', 'BC-pred']
  cells = [cell.strip() for cell in rows[0].strip('|').split('|')]
  # comparative at 0.15: pred [1, 1, 1, 1, 0]; pos f1 = 6/7, neg f1 = 2/3,
  # weighted (6/7 * 3 + 2/3 * 2) / 5 = 0.781; balanced accuracy (1 + 1/2) / 2 = 0.75.
  assert cells[1:] == ['0.600', '0.583', '0.50', '5 (3/2)', '0.781', '0.750', '0.15']
  assert rows[1].count('n/a') == 4  # no S/L samples: both models' F1w and BAcc
