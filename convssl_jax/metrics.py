"""Frame-level turn-taking metrics: S/H, S/L, S-pred and BC-pred (vap_spec.md section 5).

Every (frame, channel) inside an event region is one sample of a binary problem (label 1 = the
positive class of the event) scored by one model probability; `pred = score >= threshold`. Each
event is summarised by the support-weighted F1 of its two classes and the balanced accuracy.

Protocol (section 5.3): run the model on validation, collect `event_samples`, pick the S/L, S-pred
and BC-pred thresholds with `find_thresholds` (best weighted F1 on a 101-point grid within
[0.01, 0.99]) and apply them unchanged to the test samples with `score`. S/H is never tuned: it is
always thresholded at 0.5.

The reference evaluates every batch twice, the second time with the speaker channels swapped
(section 5.5), both for the threshold search and for the test. This module does no swapping: the
caller extracts events and probabilities for both channel orders and merges both orders' samples
(and those of all batches) with `merge_samples`.
"""

import warnings
from collections.abc import Mapping, Sequence

import numpy as np
from sklearn.metrics import balanced_accuracy_score, precision_recall_fscore_support

EVENTS = ('shift_hold', 'short_long', 'shift_prediction', 'backchannel_prediction')
EVENT_LABELS = {'shift_hold': 'S/H', 'short_long': 'S/L', 'shift_prediction': 'S-pred',
                'backchannel_prediction': 'BC-pred'}
# What label 1 / label 0 mean; `score` reports their F1 as f1_pos / f1_neg.
CLASSES = {'shift_hold': ('shift', 'hold'), 'short_long': ('short', 'long'),
           'shift_prediction': ('shift', 'no shift'),
           'backchannel_prediction': ('backchannel', 'no backchannel')}
# The event masks (positive, negative) each metric's samples come from.
EVENT_MASKS = {'shift_hold': ('shift', 'hold'), 'short_long': ('short', 'long'),
               'shift_prediction': ('pred_shift', 'pred_shift_neg'),
               'backchannel_prediction': ('pred_bc', 'pred_bc_neg')}
TUNED_EVENTS = ('short_long', 'shift_prediction', 'backchannel_prediction')
# The names the reference saves the tuned thresholds under (its thresholds.json).
REFERENCE_THRESHOLD_NAMES = {'shift_prediction': 'pred_shift', 'backchannel_prediction': 'pred_bc',
                             'short_long': 'short_long'}
# linspace(0, 1, 101) rounded so that the thresholds are the plain decimals 0.00, 0.01, ... 1.00.
# Scores are compared with them in float32, as the reference's float32 torch tensors are: a score
# of float32(0.35) = 0.34999999 is >= the threshold 0.35.
THRESHOLD_GRID = np.round(np.linspace(0.0, 1.0, 101), 2)
MIN_THRESHOLD = 0.01
DEFAULT_THRESHOLD = 0.5  # S/H always; any event without a threshold or without samples

Samples = dict[str, tuple[np.ndarray, np.ndarray]]
_NO_SAMPLES = (np.zeros(0, np.float32), np.zeros(0, np.int32))


def _pick(values: np.ndarray, mask) -> np.ndarray:
  """values[..., N, 2] at the true entries of mask[..., N, 2], flattened in C order."""
  mask = np.asarray(mask, bool)
  if mask.shape != values.shape:
    raise ValueError(f'event mask {mask.shape} does not match probabilities {values.shape}')
  return values[mask]


def _binary(pos_scores: np.ndarray, neg_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(scores float32 [n], labels int32 [n]): the positives (label 1) first, then the negatives."""
  scores = np.concatenate([pos_scores, neg_scores]).astype(np.float32)
  labels = np.concatenate([np.ones(len(pos_scores), np.int32), np.zeros(len(neg_scores), np.int32)])
  return scores, labels


def event_samples(events: Mapping, p, p_bc) -> Samples:
  """Per event (see `EVENTS`): the frame-level (scores, labels), section 5.1.

  events: bool masks [..., N, 2] keyed shift, hold, short, long, pred_shift, pred_shift_neg,
  pred_bc, pred_bc_neg (as `events.TurnTakingEvents` returns them); p: next-speaker probabilities
  [..., N, 2]; p_bc: backchannel probabilities [..., N, 2], or None for the comparative head.

  The score is always the probability of the positive class, so `score >= t` predicts it:
  * S/H: shift frames (ch = next speaker) score p[ch]; hold frames (ch = the holder, who is the
    next speaker) score 1 - p[ch], the probability that the *other* speaker takes the turn. Both
    are P(shift); hold frames carry label 0, so a good model gives them a low score. The section
    5.1 table's `1 - p[ch]` is therefore not a flipped label but the complement that turns
    P(holder continues) into P(shift).
  * S-pred: pred_shift (ch = upcoming speaker) p[ch]; pred_shift_neg (ch = current speaker)
    1 - p[ch]. Both P(shift).
  * BC-pred: pred_bc (ch = backchanneler) p_bc[ch]; pred_bc_neg (ch = current speaker)
    p_bc[1 - ch]. Both P(the listener backchannels).
  * S/L: short (label 1) and long (label 0) onsets both score p_bc[ch] of the onset speaker.
  Comparative head (p_bc None): BC-pred has no samples and S/L scores p[ch] with the same labels,
  as the reference does, although P(next speaker) is not P(short).
  """
  p = np.asarray(p, np.float32)
  samples = {
      'shift_hold': _binary(_pick(p, events['shift']), 1 - _pick(p, events['hold'])),
      'shift_prediction': _binary(_pick(p, events['pred_shift']),
                                  1 - _pick(p, events['pred_shift_neg'])),
  }
  if p_bc is None:
    samples['backchannel_prediction'] = _NO_SAMPLES
    p_short = p
  else:
    p_bc = np.asarray(p_bc, np.float32)
    samples['backchannel_prediction'] = _binary(_pick(p_bc, events['pred_bc']),
                                                _pick(p_bc[..., ::-1], events['pred_bc_neg']))
    p_short = p_bc
  samples['short_long'] = _binary(_pick(p_short, events['short']), _pick(p_short, events['long']))
  return {name: samples[name] for name in EVENTS}


def merge_samples(parts: Sequence[Samples]) -> Samples:
  """Concatenates the samples of several batches, dialogs or channel orders, event by event."""
  return {name: (np.concatenate([part[name][0] for part in parts]),
                 np.concatenate([part[name][1] for part in parts]))
          for name in parts[0]}


def _ratio(num, den):
  """num / den elementwise, 0 where den is 0 (sklearn's zero_division=0)."""
  num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
  return np.divide(num, den, out=np.zeros(np.broadcast_shapes(num.shape, den.shape)),
                   where=den > 0)


def _class_stats(tp, fp, fn, suffix: str) -> dict[str, np.ndarray]:
  """Precision, recall and F1 = 2tp / (2tp + fp + fn) of one class."""
  return {f'precision_{suffix}': _ratio(tp, tp + fp), f'recall_{suffix}': _ratio(tp, tp + fn),
          f'f1_{suffix}': _ratio(2 * tp, 2 * tp + fp + fn)}


def threshold_curves(scores, labels, grid=THRESHOLD_GRID) -> dict[str, np.ndarray]:
  """Metrics at every threshold t of grid with pred = score >= t, each [len(grid)].

  Keys: threshold, f1_weighted, balanced_accuracy, {precision,recall,f1}_{pos,neg}. Sorting the
  scores once and counting the scores >= t by binary search costs O(n log n) for the whole grid.
  Comparisons are in float32, as in `score`. Balanced accuracy is the mean recall over the classes
  present (sklearn's convention); without samples both are NaN.
  """
  grid = np.asarray(grid, np.float64)
  scores, at = np.asarray(scores, np.float32), grid.astype(np.float32)
  labels = np.asarray(labels).astype(bool)
  pos, neg = np.sort(scores[labels]), np.sort(scores[~labels])
  n_pos, n_neg = len(pos), len(neg)
  tp = n_pos - np.searchsorted(pos, at, side='left')
  fp = n_neg - np.searchsorted(neg, at, side='left')
  fn, tn = n_pos - tp, n_neg - fp
  curves = {'threshold': grid, **_class_stats(tp, fp, fn, 'pos'), **_class_stats(tn, fn, fp, 'neg')}
  if not n_pos + n_neg:
    return curves | dict.fromkeys(('f1_weighted', 'balanced_accuracy'), np.full(len(grid), np.nan))
  curves['f1_weighted'] = (curves['f1_pos'] * n_pos + curves['f1_neg'] * n_neg) / (n_pos + n_neg)
  present = [curves[f'recall_{c}'] for c, size in (('pos', n_pos), ('neg', n_neg)) if size]
  curves['balanced_accuracy'] = np.mean(present, axis=0)
  return curves


def best_threshold(scores, labels, grid=THRESHOLD_GRID) -> float:
  """The grid threshold in [0.01, 0.99] with the highest weighted F1, the lowest one on ties.

  Without samples there is nothing to tune: `DEFAULT_THRESHOLD`.
  """
  grid = np.asarray(grid, np.float64)
  if len(labels) == 0:
    return DEFAULT_THRESHOLD
  candidates = grid[(grid >= MIN_THRESHOLD) & (grid <= 1 - MIN_THRESHOLD)]
  f1 = threshold_curves(scores, labels, candidates)['f1_weighted']
  return float(candidates[np.argmax(f1)])  # argmax returns the first maximum


def find_thresholds(samples: Samples, grid=THRESHOLD_GRID) -> dict[str, float]:
  """Thresholds for every event: tuned for S/L, S-pred and BC-pred (on validation), 0.5 for S/H.

  The reference saves them as `REFERENCE_THRESHOLD_NAMES`.
  """
  return {name: (best_threshold(*samples.get(name, _NO_SAMPLES), grid)
                 if name in TUNED_EVENTS else DEFAULT_THRESHOLD)
          for name in EVENTS}


_PER_CLASS = tuple(f'{stat}_{c}' for c in ('pos', 'neg') for stat in ('f1', 'precision', 'recall'))


def _event_score(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict:
  """Weighted F1, balanced accuracy, per-class F1 / precision / recall and counts of one event at
  one threshold (pred = float32 score >= float32 threshold)."""
  labels = np.asarray(labels, np.int32)
  n_positive = int(labels.sum())
  result = {'threshold': float(threshold), 'n_frames': len(labels), 'n_positive': n_positive,
            'n_negative': len(labels) - n_positive}
  if not len(labels):
    return result | dict.fromkeys(('f1_weighted', 'balanced_accuracy', *_PER_CLASS), np.nan)
  pred = (np.asarray(scores, np.float32) >= np.float32(threshold)).astype(np.int32)
  precision, recall, f1, support = precision_recall_fscore_support(
      labels, pred, labels=[0, 1], zero_division=0.0)
  per_class = {f'{stat}_{c}': float(values[i]) for i, c in ((1, 'pos'), (0, 'neg'))
               for stat, values in (('f1', f1), ('precision', precision), ('recall', recall))}
  return result | per_class | {
      'f1_weighted': float(np.average(f1, weights=support)),  # sklearn's average='weighted'
      'balanced_accuracy': _balanced_accuracy(labels, pred)}


def _balanced_accuracy(labels: np.ndarray, pred: np.ndarray) -> float:
  """sklearn's balanced accuracy, without its warnings for a class absent from `labels` (a split
  without positives or negatives: the tables' frame counts say so; the score is over the classes
  present, as sklearn's)."""
  with warnings.catch_warnings():
    warnings.filterwarnings('ignore', 'y_pred contains classes not in y_true', UserWarning)
    warnings.filterwarnings('ignore', 'A single label was found', UserWarning)
    return float(balanced_accuracy_score(labels, pred))


def score(samples: Samples, thresholds: Mapping[str, float] | None = None,
          counts: Mapping[str, tuple[int, int]] | None = None) -> dict[str, dict]:
  """Metrics of every event in `EVENTS` at the given thresholds (0.5 where one is missing).

  Per event: f1_weighted, balanced_accuracy, {f1,precision,recall}_{pos,neg} (classes in
  `CLASSES`; the reference's shift / hold stats for S/H), threshold, n_frames, n_positive (the
  positive class's support), n_negative, and with `counts` (`event_counts` of the samples' events)
  n_events, n_positive_events, n_negative_events. An event without samples gets NaN metrics and
  zero counts.
  """
  thresholds = thresholds or {}
  scores = {name: _event_score(*samples.get(name, _NO_SAMPLES),
                               thresholds.get(name, DEFAULT_THRESHOLD))
            for name in EVENTS}
  for name, (pos, neg) in (counts or {}).items():
    scores[name].update(n_events=pos + neg, n_positive_events=pos, n_negative_events=neg)
  return scores


def _fmt(value: float, digits: int = 3) -> str:
  """A table cell: the value with `digits` decimals, n/a for NaN."""
  return 'n/a' if np.isnan(value) else f'{value:.{digits}f}'


def event_counts(events: Mapping) -> dict[str, tuple[int, int]]:
  """Per metric event: (positive, negative) event regions, i.e. runs of True frames per speaker
  in the masks [..., N, 2] (a metric's frames come from these regions)."""
  def runs(mask):
    mask = np.asarray(mask, bool)
    return int(mask[..., :1, :].sum() + (mask[..., 1:, :] & ~mask[..., :-1, :]).sum())
  return {name: (runs(events[pos]), runs(events[neg])) for name, (pos, neg) in EVENT_MASKS.items()}


def report_table(results: Mapping[str, Mapping[str, Mapping]],
                 title: str = 'Turn-taking events (frame-level)') -> str:
  """Markdown table in the paper's layout: rows S/H, S/L, S-pred, BC-pred.

  results: {model name: `score` output}. The first model gets weighted F1, balanced accuracy,
  threshold, the frame counts (all / positive / negative) and, when `score` was given them, the
  event counts (positive / negative); the others weighted F1, balanced accuracy and threshold.
  NaN (no samples) prints as n/a.
  """
  first = next(iter(results.values()))
  with_events = all('n_events' in first[name] for name in EVENTS)
  header = ['Event']
  for i, model in enumerate(results):
    header += [f'{model} F1w', f'{model} BAcc', f'{model} thr']
    if i == 0:
      header.append(f'{model} frames (pos/neg)')
      header += ['events (pos/neg)'] if with_events else []
  lines = [f'### {title}', '', '| ' + ' | '.join(header) + ' |',
           '|' + '---|' + '---:|' * (len(header) - 1)]
  for name in EVENTS:
    row = [f'{EVENT_LABELS[name]} ({CLASSES[name][0]} / {CLASSES[name][1]})']
    for i, result in enumerate(results.values()):
      metrics = result[name]
      row += [_fmt(metrics['f1_weighted']), _fmt(metrics['balanced_accuracy']),
              _fmt(metrics['threshold'], 2)]
      if i == 0:
        row.append(f"{metrics['n_frames']} ({metrics['n_positive']}/{metrics['n_negative']})")
        if with_events:
          row.append(f"{metrics['n_events']} ({metrics['n_positive_events']}/"
                     f"{metrics['n_negative_events']})")
    lines.append('| ' + ' | '.join(row) + ' |')
  return '\n'.join(lines) + '\n'
