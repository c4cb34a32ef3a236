"""Turn-taking evaluation: trained models over whole dialogs -> events -> metrics -> report.

Each model runs over every dialog in overlapping windows (jit, batched and sharded like
training); a frame's probabilities come from the latest window with at least `eval.context_s`
seconds of audio before it, so the windows join into whole-dialog curves. Events are extracted
once per dialog on its whole VA (`TurnTakingEvents`, `max_frame` = the dialog's frames, the
silent future after its end as horizon) and shared by every model and baseline. As in the
reference, every dialog is scored in both speaker orders, and the S-pred, BC-pred and S/L
thresholds are chosen on validation and applied unchanged on test (S/H stays at 0.5).
Monologues (a corpus's conversations of one speaker) are left out: they hold no turn-taking.

The reference scores events inside each 10 or 20 s training chunk instead, so events near chunk
borders are lost (they need 3 s of context inside the chunk) or counted twice; here every event
of a dialog counts once.
"""

import collections
import json
import pathlib
from typing import Any

import jax
import numpy as np

from convssl_jax import corpora, metrics, plots, progress, trainer as trainer_lib
from convssl_jax.data import pipeline
from convssl_jax.data import va as va_lib
from convssl_jax.events import TurnTakingEvents
from convssl_jax.model_state import ModelState

SPLITS = ('validation', 'test')
ORDERS = (False, True)  # speakers as recorded, then swapped
ROW_KEYS = ('conversation', 'frame', 'weight')


def check_context(config) -> None:
  """Refuses an `eval.context_s` that leaves the evaluation windows nothing to score."""
  if not 0 <= config.eval.context_s < config.data.window_s:
    raise ValueError(f'eval.context_s={config.eval.context_s} must be in [0, data.window_s)')


def predict_dialogs(model: ModelState, config, corpus: pipeline.Corpus, swap: bool = False,
                    desc: str | None = None) -> list[dict[str, np.ndarray]]:
  """Per dialog of `corpus` (with `swap`, speakers A and B exchanged): whole-dialog outputs
  [T, 2] ('p', 'p_bc', 'p_now', 'p_future', 'vad' as the head has them) and 'va' [T + H, 2]
  (silence after the end). With `desc`, a progress bar so named over more than one batch."""
  spec = corpora.window_spec(config, model.objective)
  check_context(config)
  context = int(config.eval.context_s * spec.frame_hz)
  local_batch = config.data.batch_size // jax.process_count()
  data = pipeline.eval_dataset(corpus, spec, batch_size=local_batch,
                               overlap_s=config.eval.context_s,
                               process_index=jax.process_index(),
                               process_count=jax.process_count(), swap=swap)
  batches = pipeline.batch_count(
      len(pipeline.window_table(corpus, spec.window_s, config.eval.context_s, cover=True)),
      local_batch, jax.process_count())
  windows = collections.defaultdict(list)  # conversation -> [(start frame, outputs)]
  for batch in progress.bar(data, total=batches, desc=desc, unit='batch', leave=False,
                            enabled=desc is not None and batches > 1):
    rows = {k: jax.make_array_from_process_local_data(model.batch_sharding, batch[k])
            for k in ROW_KEYS}
    out, rows = model.predict_step(model.params, model.to_device(batch), rows)
    for i in np.flatnonzero(rows['weight']):
      windows[int(rows['conversation'][i])].append((int(rows['frame'][i]),
                                                    {k: v[i] for k, v in out.items()}))
  return [_stitch(windows[c], va_lib.num_frames(d, spec.frame_hz), model.objective.horizon_frames,
                  context) for c, d in enumerate(corpus.durations)]


def _stitch(windows, frames: int, horizon: int, context: int) -> dict[str, np.ndarray]:
  """One dialog's window outputs -> whole-dialog arrays; later windows win after their first
  `context` frames (the first window counts from its start)."""
  windows = sorted(windows, key=lambda w: w[0])
  dialog = {k: np.zeros((frames + (horizon if k == 'va' else 0), 2), np.float32)
            for k in windows[0][1]}
  for i, (first, out) in enumerate(windows):
    own = first if i == 0 else first + context
    for key, value in out.items():
      end = min(first + len(value), len(dialog[key]))
      if end > own:
        dialog[key][own:end] = value[own - first:end - first]
  return dialog


class Evaluation:
  """Events and samples of one corpus split, shared by every model scored on it."""

  @classmethod
  def for_config(cls, config) -> 'Evaluation':
    """The evaluation of `config`'s events (`config.eval.events`, seconds)."""
    return cls(TurnTakingEvents(config.model.frame_hz, **config.eval.events))

  def __init__(self, events: TurnTakingEvents):
    self.events_fn = events
    self.events = {}  # (split, swap) -> per-dialog event masks
    self.counts = collections.defaultdict(collections.Counter)  # split -> event regions

  def samples(self, split: str, swap: bool, dialogs: list[dict[str, np.ndarray]]):
    """The frame samples of every event over `dialogs` (events extracted on first use)."""
    key = (split, swap)
    if key not in self.events:
      rng = np.random.default_rng(self.events_fn.seed + 2 * SPLITS.index(split) + int(swap))
      self.events[key] = [self.events_fn(d['va'], max_frame=len(d['p']), rng=rng)
                          for d in dialogs]
      for events in self.events[key]:
        for name, (pos, neg) in metrics.event_counts(events).items():
          self.counts[split].update({(name, 1): pos, (name, 0): neg})
    return metrics.merge_samples([metrics.event_samples(e, d['p'], d.get('p_bc'))
                   for e, d in zip(self.events[key], dialogs)])


# The names the reference logs during training (vap_spec.md 5.6), per `metrics.score` entry.
TRAINING_NAMES = {('shift_hold', 'f1_weighted'): 'f1_hold_shift',
                  ('shift_prediction', 'f1_weighted'): 'f1_predict_shift',
                  ('short_long', 'f1_weighted'): 'f1_short_long',
                  ('backchannel_prediction', 'f1_weighted'): 'f1_bc_prediction',
                  **{('shift_hold', f'{stat}_{c}'): f'{name}_{stat}'
                     for c, name in (('pos', 'shift'), ('neg', 'hold'))
                     for stat in ('f1', 'precision', 'recall')}}


def training_scores(model: ModelState, config, corpus: pipeline.Corpus,
                    evaluation: Evaluation) -> dict[str, float]:
  """The turn-taking scores a validation during training logs, under the reference's names:
  the validation dialogs' events in one speaker order (extracted once, kept in `evaluation`), the
  fixed `config.eval.training_thresholds`."""
  dialogs = predict_dialogs(model, config, corpus)
  scores = metrics.score(evaluation.samples('validation', False, dialogs),
                         dict(config.eval.training_thresholds))
  return {name: scores[event][key] for (event, key), name in TRAINING_NAMES.items()}


def _rule_samples(samples, rule: str, rng: np.random.Generator):
  """The trivial rules on the model's events: 'always hold' scores 0 (hold, no shift, no
  backchannel, long), 'chance' uniform random scores."""
  def scores(s):
    return (np.zeros_like(s) if rule == 'always hold'
            else rng.uniform(size=s.shape).astype(np.float32))
  return {name: (scores(s), labels) for name, (s, labels) in samples.items()}


def evaluate(config, workdir, baselines: dict[str, tuple[Any, Any]] | None = None,
             data: dict[str, pipeline.Corpus] | None = None) -> dict[str, Any]:
  """Scores `workdir`'s model (and trained `baselines`: name -> (config, workdir)) on the
  validation and test splits; writes `workdir/eval/<split>/{metrics.json,table.md}` and plots.

  Returns {split: {model name: metrics.score(...)}} plus the thresholds per model.
  """
  workdir = pathlib.Path(workdir)
  # Turn-taking is scored on dialogs: a monologue has holds only, and no VAP term in training.
  data = {s: c.dialogs() for s, c in (data or corpora.open_corpora(config, SPLITS)).items()}
  evaluation = Evaluation.for_config(config)
  samples, steps, excerpt = {}, {}, None
  for name, (cfg, wd) in {'model': (config, workdir), **(baselines or {})}.items():
    model, steps[name] = trainer_lib.restore_model(cfg, wd, config.eval.checkpoint)
    samples[name] = {}
    for split in SPLITS:
      per_order = []
      for swap in ORDERS:
        dialogs = predict_dialogs(model, cfg, data[split], swap,
                                  desc=f'{name} {split}' + ' (speakers swapped)' * swap)
        per_order.append(evaluation.samples(split, swap, dialogs))
        if name == 'model' and split == 'test' and not swap:
          excerpt = (dialogs[0], evaluation.events[(split, swap)][0])
      samples[name][split] = metrics.merge_samples(per_order)
  rng = np.random.default_rng(config.eval.events.seed)
  for rule in ('always hold', 'chance'):
    samples[rule] = {s: _rule_samples(samples['model'][s], rule, rng) for s in SPLITS}
  thresholds = {name: metrics.find_thresholds(s['validation']) for name, s in samples.items()}
  counts = {split: {e: (evaluation.counts[split][e, 1], evaluation.counts[split][e, 0])
                     for e in metrics.EVENTS} for split in SPLITS}
  results = {split: {name: metrics.score(s[split], thresholds[name], counts[split])
                     for name, s in samples.items()} for split in SPLITS}
  if jax.process_index() == 0:
    (workdir / 'eval').mkdir(parents=True, exist_ok=True)
    (workdir / 'eval' / 'thresholds.json').write_text(json.dumps(  # the reference's file
        {ref: thresholds['model'][name] for name, ref in metrics.REFERENCE_THRESHOLD_NAMES.items()},
        indent=2))
    for split in SPLITS:
      out = workdir / 'eval' / split
      out.mkdir(parents=True, exist_ok=True)
      (out / 'metrics.json').write_text(json.dumps(
          {'checkpoint_steps': steps, 'thresholds': thresholds, 'scores': results[split]},
          indent=2, default=float))
      (out / 'table.md').write_text(metrics.report_table(
          results[split], title=f'{split} split ({config.data.name})') + '\n')
      plots.threshold_curves(samples['model'][split], thresholds['model'],
                             out / 'thresholds.png')
    plots.excerpt(*excerpt, frame_hz=config.model.frame_hz, seconds=config.eval.excerpt_s,
                  path=workdir / 'eval' / 'test' / 'excerpt.png')
  return {'thresholds': thresholds, **results}

