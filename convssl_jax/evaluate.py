"""Turn-taking evaluation: trained models over whole dialogs -> events -> metrics -> report.

Each model runs over every dialog in overlapping windows (jit, batched and sharded like
training); a frame's probabilities come from the latest window with at least `eval.context_s`
seconds of audio before it, so the windows join into whole-dialog curves. Events are extracted
once per dialog on its whole VA (`TurnTakingEvents`, `max_frame` = the dialog's frames, the
silent future after its end as horizon) and shared by every model and baseline. As in the
reference, every dialog is scored in both speaker orders, and the S-pred, BC-pred and S/L
thresholds are chosen on validation and applied unchanged on test (S/H stays at 0.5).

The reference scores events inside each 10 or 20 s training chunk instead, so events near chunk
borders are lost (they need 3 s of context inside the chunk) or counted twice; here every event
of a dialog counts once.
"""

import collections
import copy
import json
import pathlib
import weakref
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from convssl_jax import checkpoints, inference, metrics, models, train
from convssl_jax.data import pipeline
from convssl_jax.data import va as va_lib
from convssl_jax.events import TurnTakingEvents
from convssl_jax.models import pretrained

SPLITS = ('validation', 'test')
ORDERS = (False, True)  # speakers as recorded, then swapped
ROW_KEYS = ('conversation', 'frame', 'weight')


def restore_trainer(config, workdir, which: str = 'best') -> tuple[train.Trainer, int]:
  """The model state of `workdir`'s best (lowest validation loss) or latest checkpoint."""
  if which not in ('best', 'latest'):
    raise ValueError(f"eval.checkpoint must be 'best' or 'latest', got {which!r}")
  store = checkpoints.Checkpoints(pathlib.Path(workdir) / 'checkpoints')
  try:
    step = store.best_step() if which == 'best' else store.latest_step()
    if step is None:
      raise FileNotFoundError(f'no {which} checkpoint in {workdir}/checkpoints: train first '
                              f'(python run.py --workdir={workdir} ...)')
    trainer = train.Trainer(config, train.make_mesh(config.train.fsdp),
                            step=train.checkpoint_build_step(step))
    abstract = trainer.abstract_stored_state()
    _, stored, _ = store.restore_best(abstract) if which == 'best' else store.restore(abstract)
    trainer.load_stored_state(stored)
  finally:
    store.close()
  return trainer, step


def converted_trainer(config, directory, keep_data=()) -> tuple[train.Trainer, Any]:
  """(a Trainer holding the converted VAP model of `directory`, `config` with that model's
  `config.model` and its recipe's windows and normalisation in `config.data`, but for the
  `keep_data` fields, e.g. the ones given on the command line): a `python -m checkpoints_convert
  vap|conv_ssl` output used like a trained run."""
  model, model_cfg = models.load_model(directory)
  config = copy.deepcopy(config)
  recipe = pretrained.read_config(directory).get('data', {})
  with config.unlocked():
    config.model = model_cfg
    config.data.update({k: v for k, v in recipe.items() if k not in keep_data})
  trainer = train.Trainer(config, train.make_mesh(config.train.fsdp),
                          model_state=nnx.state(model, nnx.Param))
  return trainer, config


_PREDICT_FNS = weakref.WeakKeyDictionary()  # Trainer -> {swap: (graphdef, its predict)}


def _predict_fn(trainer: train.Trainer, swap: bool):
  """jit: (state, batch, rows) -> per-window probabilities [B, N, 2], the (swapped) VA
  [B, N + H, 2] and the rows' ids, all replicated so every process can stitch every dialog.

  One per trainer and model structure (`Trainer.build` makes a new graphdef), so the evaluations
  during training compile it once.
  """
  functions = _PREDICT_FNS.setdefault(trainer, {})
  if swap not in functions or functions[swap][0] is not trainer.graphdef:
    functions[swap] = (trainer.graphdef, _jit_predict(trainer, swap))
  return functions[swap][1]


def _jit_predict(trainer: train.Trainer, swap: bool):
  graphdef, objective = trainer.graphdef, trainer.objective

  def predict(state, batch, rows):
    model, _ = nnx.merge(graphdef, state)
    model.eval()
    audio, va, history = train.model_input(batch), batch['va'], batch.get('va_history')
    if swap:
      va = va[..., ::-1]
      history = None if history is None else 1 - history
      audio = audio[:, ::-1] if audio.ndim == 3 else audio  # a mono mix stays as it is
    n = va.shape[1] - objective.horizon_frames
    out = train.forward(model, audio, va, history, n)
    result = {'va': va, **inference.frame_outputs(objective, out, va[:, :n], n)}
    return result, rows

  replicated = NamedSharding(trainer.mesh, P())
  return jax.jit(predict, in_shardings=(trainer.sharding, trainer.batch_sharding,
                                        trainer.batch_sharding), out_shardings=replicated)


def check_context(config) -> None:
  """Refuses an `eval.context_s` that leaves the evaluation windows nothing to score."""
  if not 0 <= config.eval.context_s < config.data.window_s:
    raise ValueError(f'eval.context_s={config.eval.context_s} must be in [0, data.window_s)')


def predict_dialogs(trainer: train.Trainer, config, corpus: pipeline.Corpus,
                    swap: bool = False) -> list[dict[str, np.ndarray]]:
  """Per dialog of `corpus`: whole-dialog outputs [T, 2] ('p', 'p_bc', 'p_now', 'p_future',
  'vad' as the head has them) and 'va' [T + H, 2] (silence after the end)."""
  spec = train.window_spec(config, trainer.objective)
  check_context(config)
  context = int(config.eval.context_s * spec.frame_hz)
  local_batch = config.data.batch_size // jax.process_count()
  data = pipeline.eval_dataset(corpus, spec, batch_size=local_batch,
                               overlap_s=config.eval.context_s,
                               process_index=jax.process_index(),
                               process_count=jax.process_count())
  predict = _predict_fn(trainer, swap)
  windows = collections.defaultdict(list)  # conversation -> [(start frame, outputs)]
  for batch in data:
    rows = {k: jax.make_array_from_process_local_data(trainer.batch_sharding, batch[k])
            for k in ROW_KEYS}
    out, rows = jax.device_get(predict(trainer.state, train.to_device(batch,
                                                                      trainer.batch_sharding),
                                       rows))
    for i in np.flatnonzero(rows['weight']):
      windows[int(rows['conversation'][i])].append((int(rows['frame'][i]),
                                                    {k: v[i] for k, v in out.items()}))
  return [_stitch(windows[c], va_lib.num_frames(d, spec.frame_hz), trainer.objective.horizon_frames,
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


def training_scores(trainer: train.Trainer, config, corpus: pipeline.Corpus,
                    evaluation: Evaluation) -> dict[str, float]:
  """The turn-taking scores a validation during training logs, under the reference's names:
  the validation dialogs' events in one speaker order (extracted once, kept in `evaluation`), the
  fixed `config.eval.training_thresholds`."""
  dialogs = predict_dialogs(trainer, config, corpus)
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
             corpora: dict[str, pipeline.Corpus] | None = None) -> dict[str, Any]:
  """Scores `workdir`'s model (and trained `baselines`: name -> (config, workdir)) on the
  validation and test splits; writes `workdir/eval/<split>/{metrics.json,table.md}` and plots.

  Returns {split: {model name: metrics.score(...)}} plus the thresholds per model.
  """
  from convssl_jax import plots

  workdir = pathlib.Path(workdir)
  if corpora is None:
    corpora = pipeline.open_corpora(config.data, SPLITS, **train.corpus_checks(config))
  evaluation = Evaluation.for_config(config)
  samples, steps, excerpt = {}, {}, None
  for name, (cfg, wd) in {'model': (config, workdir), **(baselines or {})}.items():
    trainer, steps[name] = restore_trainer(cfg, wd, config.eval.checkpoint)
    samples[name] = {}
    for split in SPLITS:
      per_order = []
      for swap in ORDERS:
        dialogs = predict_dialogs(trainer, cfg, corpora[split], swap)
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
