"""The training loop: `train_and_evaluate(config, workdir)`.

The trainer (convssl_jax/trainer.py) holds the model and optimizer on the mesh and its jitted step;
this loop feeds it batches, validates, saves checkpoints (Orbax: model, optimizer and the grain
iterator together, so a resumed run sees exactly the batches it would have seen), lowers the
learning rate on plateaus, stops early, and never waits on the device between log steps: metrics
stay on the device until then.
"""

import json
import pathlib
import signal
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from convssl_jax import checkpoints, corpora, evaluate, feature_cache, model_state, parallelism
from convssl_jax import progress
from convssl_jax import trainer as trainer_lib
from convssl_jax.data import pipeline
from convssl_jax.data import va as va_lib
from convssl_jax.objective import VAPObjective


class NonFiniteError(RuntimeError):
  """A training step produced a non-finite loss or gradient."""


class Preemption:
  """Turns SIGTERM into a flag the loop checks, so a preempted run saves and exits cleanly; a
  SIGTERM that comes again, while that checkpoint is written, waits for it too."""

  def __init__(self):
    self.requested = False
    self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning('SIGTERM again: stopping once the checkpoint is written' if self.requested
                    else 'SIGTERM: saving a checkpoint and stopping')
    self.requested = True

  def close(self):
    signal.signal(signal.SIGTERM, self._previous)


def evaluate_loss(model, dataset) -> dict[str, float]:
  """Mean losses and metrics of a ModelState over every window of `dataset` (`eval_dataset`'s
  batches), each over the windows that have it (`model_state.summary`: no VAP term from a
  monologue's windows)."""
  sums = None
  for batch in dataset:
    out = model.eval_step(model.params, model.to_device(batch),
                          jax.make_array_from_process_local_data(model.batch_sharding,
                                                                 batch['weight']))
    sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
  means = model_state.summary(jax.device_get(sums), model.config.train)
  return {k: float(v) for k, v in means.items()}


def _mean_of_steps(values) -> float:
  """The mean of a logged value over the steps that have it (NaN: no example of a step had it,
  e.g. the VAP term of a batch of monologues); NaN when none has."""
  values = np.asarray(values, np.float64)
  return float(values[~np.isnan(values)].mean()) if not np.isnan(values).all() else float('nan')


def best_value(val: dict[str, float], metric: str) -> float:
  """What ranks checkpoints for the best one, lower is better: the validation loss, or a
  turn-taking score negated."""
  return val[metric] if metric == 'loss' else -val[metric]


def class_frequency_loss(objective: VAPObjective, train, validation, frame_hz: int,
                         max_conversations: int = 128) -> float:
  """Cross-entropy on the validation frames of always predicting the training-set class
  frequencies: the loss a model that ignores its input can reach (discrete head). Large corpora
  are represented by a fixed random sample of `max_conversations` per split; monologues, which
  have no VAP term, are left out."""
  train, validation = train.dialogs(), validation.dialogs()

  def counts(corpus):
    total = np.zeros(objective.n_classes)
    n = len(corpus.durations)
    sample = np.sort(np.random.default_rng(0).permutation(n)[:max_conversations])
    for i in sample:
      duration, example = corpus.durations[i], corpus.source[int(i)]
      va = va_lib.va_frames(va_lib.channel_segments(example['va']),
                            va_lib.num_frames(duration, frame_hz), frame_hz)
      va = np.concatenate([va, np.zeros((objective.horizon_frames, 2), np.float32)])
      total += np.bincount(np.asarray(objective.labels(va)), minlength=objective.n_classes)
    return total

  train_counts, val = counts(train), counts(validation)
  p_train = (train_counts + 1) / (train_counts.sum() + objective.n_classes)
  return float(-(val * np.log(p_train)).sum() / val.sum())


class _Logger:
  """Console progress bar and TensorBoard events (process 0 only)."""

  def __init__(self, workdir, steps: int, start: int, label: str = ''):
    self.main = jax.process_index() == 0
    self.prefix = f'[{label}] ' if label else ''
    self.writer = None
    if self.main:
      from tensorboardX import SummaryWriter
      workdir.mkdir(parents=True, exist_ok=True)
      self.writer = SummaryWriter(str(workdir / 'tensorboard'))
      self.jsonl = open(workdir / 'train_log.jsonl', 'a')  # one line per log step
      self.bar = progress.bar(total=steps, initial=start, desc=label or None, unit='step')
    self.rate = progress.Rate(start)  # over the last 10 log steps: no spikes

  def train(self, step: int, means: dict[str, float], audio_seconds: float,
            learning_rate: float) -> None:
    rate = self.rate.update(step)
    if self.main:
      scalars = {**means, 'learning_rate': learning_rate, 'steps_per_s': rate,
                 'audio_s_per_s': rate * audio_seconds}
      for k, v in scalars.items():
        self.writer.add_scalar(f'train/{k}', v, step)
      self.jsonl.write(json.dumps({'step': step, **scalars}) + '\n')
      self.jsonl.flush()
      self.bar.set_postfix(loss=f'{means["loss"]:.3f}', steps_s=f'{rate:.2f}',
                           audio_s_s=f'{rate * audio_seconds:.0f}')
      self.bar.update(step - self.bar.n)

  def eval(self, step: int, split: str, metrics: dict[str, float]) -> None:
    if self.main:
      for k, v in metrics.items():
        self.writer.add_scalar(f'{split}/{k}', v, step)
      self.bar.write(f'{self.prefix}step {step} {split}: '
                     + ', '.join(f'{k} {v:.4f}' for k, v in metrics.items()))

  def close(self):
    if self.main:
      self.bar.close()
      self.writer.close()
      self.jsonl.close()


def train_and_evaluate(config, workdir, label: str = '') -> dict[str, Any]:
  """Trains `config` in `workdir` (resuming from its latest checkpoint) and evaluates the result.

  Returns (and writes to workdir/metrics.json) the final validation and test losses. `label`
  prefixes the run's console lines (e.g. the VA-only baseline's, trained after the model).
  """
  workdir = pathlib.Path(workdir)
  t, d = config.train, config.data
  mesh = parallelism.make_mesh(t.fsdp)
  local_batch = parallelism.check_batch_size(d.batch_size)
  store = checkpoints.Checkpoints(workdir / 'checkpoints', keep=t.keep_checkpoints)
  start = store.latest_step() or 0
  trainer = trainer_lib.Trainer(config, mesh, step=trainer_lib.checkpoint_build_step(start))
  model = trainer.model
  spec = corpora.window_spec(config, trainer.objective)
  data = corpora.open_corpora(config)
  n_windows = len(pipeline.window_table(data['train'], d.window_s, d.overlap_s, cover=False))
  # eval_every <= 0: once per epoch (the training windows' batches), as the references validate.
  eval_every = t.eval_every if t.eval_every > 0 else max(1, n_windows // d.batch_size)
  shard = dict(process_index=jax.process_index(), process_count=jax.process_count())
  features = None
  if d.features:  # the frozen encoder's features, cached: the step skips the encoder
    features = feature_cache.open_for(config, data['train'], model)
  train_iter = iter(pipeline.train_dataset(
      data['train'], spec, batch_size=local_batch, seed=config.seed, overlap_s=d.overlap_s,
      channel_swap=d.channel_swap, epochs=min(100, -(-t.steps * d.batch_size // n_windows)),
      jitter_grid_s=d.jitter_grid_s, features=features, **shard))
  eval_data = lambda split: pipeline.eval_dataset(data[split], spec, batch_size=local_batch,
                                                  overlap_s=0.0, **shard)

  meta = {'best_val_loss': float('inf'), 'evals_since_best': 0, 'plateau_scale': 1.0,
          'evals_since_plateau': 0}
  restored = store.restore(trainer.abstract_stored_state(), train_iter)
  if restored is not None:
    start, stored, meta = restored
    trainer.load_stored_state(stored)
    logging.info('resumed from step %d', start)
  total, trainable = trainer.param_counts
  logging.info('mesh %s over %d devices (%d processes): %s; global batch %d (%d per process); '
               'parameters %s total, %s trained', dict(mesh.shape), jax.device_count(),
               jax.process_count(), jax.devices()[0].platform, d.batch_size, local_batch,
               f'{total:,}', f'{trainable:,}')
  baseline = None
  has_vap = hasattr(model.model(), 'vap_head')  # pure CPC pretraining has none
  turn_taking = None  # scores the validation dialogs' turn-taking events at each evaluation
  if has_vap and config.eval.get('during_training'):
    evaluate.check_context(config)  # now, not at the first validation
    events = evaluate.Evaluation.for_config(config)
    turn_taking = lambda: evaluate.training_scores(model, config, data['validation'].dialogs(),
                                                   events)
  if has_vap and trainer.objective.head == 'discrete':
    baseline = class_frequency_loss(trainer.objective, data['train'], data['validation'],
                                    config.model.frame_hz)
    logging.info('validation VAP loss of predicting the training class frequencies: %.4f',
                 baseline)

  logger = _Logger(workdir, t.steps, start, label)
  schedule = trainer_lib.learning_rate(t)  # by step: an optimizer made later continues it
  preemption = Preemption()
  pending = []  # (step, device metrics, conversation ids) not yet fetched from the device

  def flush():
    """Fetches pending metrics (the loop's only device sync); stops on a non-finite step."""
    if not pending:
      return
    fetched = jax.device_get([m for _, m, _ in pending])
    for (step, _, conversations), m in zip(pending, fetched):
      if not m['finite']:
        if restored is not None and step == start:
          raise NonFiniteError(
              f'non-finite loss or gradient at step {step + 1} (loss {m["loss"]}, gradient norm '
              f'{m["grad_norm"]}), the first step after restoring checkpoint step {start} of '
              f'{workdir / "checkpoints"}: suspect the restored state, not the batch; delete '
              f'that step to resume from an earlier one (kept: {store.all_steps()}).')
        sessions = [data['train'].sessions[i] for i in conversations]
        raise NonFiniteError(
            f'non-finite loss or gradient at step {step + 1} (loss {m["loss"]}, gradient norm '
            f'{m["grad_norm"]}); batch conversations {sessions}. The step was not applied and '
            f'no checkpoint was written after it; the last good checkpoint is step '
            f'{store.latest_step()}.')
    means = {k: _mean_of_steps([m[k] for m in fetched]) for k in fetched[0] if k != 'finite'}
    last = pending[-1][0]  # the learning rate of the last step run, as its optimizer applied it
    logger.train(last + 1, means, d.batch_size * d.window_s,
                 float(schedule(last)) * meta['plateau_scale'])
    pending.clear()

  done = start  # steps completed
  final_val = None  # the validation losses of the state the loop ends with
  try:
    for step in range(start, t.steps):
      if step > 0 and step == config.model.encoder.unfreeze_step and trainer.encoder_frozen:
        flush()
        logging.info('step %d: unfreezing the encoder', step)
        trainer.build(step)
        trainer.set_plateau_scale(meta['plateau_scale'])  # the new optimizer's scale is 1
      batch = next(train_iter)
      metrics = trainer.train_step(model.to_device(batch))
      pending.append((step, metrics, batch['conversation']))
      final_val = None
      done = step + 1
      last = done == t.steps
      if done % t.log_every == 0 or last or preemption.requested:
        flush()
      if done % eval_every == 0 or last:
        flush()
        val = evaluate_loss(model, eval_data('validation'))
        if turn_taking is not None:
          val.update(turn_taking())
        logger.eval(done, 'validation', val)
        final_val = val
        improved = val['loss'] < meta['best_val_loss']
        if improved:
          meta.update(best_val_loss=val['loss'], evals_since_best=0, evals_since_plateau=0)
        # Kept where better than the stored best (by train.best_metric).
        store.save_best(done, trainer.stored_state(), meta, value=best_value(val, t.best_metric))
        if not improved:
          meta['evals_since_best'] += 1
          meta['evals_since_plateau'] += 1
          if t.schedule == 'plateau' and meta['evals_since_plateau'] > t.plateau_patience:
            meta.update(plateau_scale=meta['plateau_scale'] * t.plateau_factor,
                        evals_since_plateau=0)
            trainer.set_plateau_scale(meta['plateau_scale'])
            logging.info('step %d: validation loss plateaued; learning rate x%g', done,
                         meta['plateau_scale'])
      stop_early = meta['evals_since_best'] >= t.early_stopping_patience
      if done % t.checkpoint_every == 0 or last or preemption.requested or stop_early:
        flush()
        store.save(done, trainer.stored_state(), train_iter, meta)
      if preemption.requested or stop_early:
        if stop_early:
          logging.info('step %d: no validation improvement in %d evaluations; stopping', done,
                       t.early_stopping_patience)
        break
  finally:
    logger.close()
    store.wait()  # SIGTERM still caught: a second one must not kill the checkpoint being written
    preemption.close()
  if preemption.requested:
    return {'preempted_at_step': done}

  results = {'step': done, 'baseline_val_vap_loss': baseline}
  for split in ('validation', 'test'):
    if split == 'validation' and final_val is not None:  # evaluated at the last step already
      results[split] = final_val
    else:
      results[split] = evaluate_loss(model, eval_data(split))
  if jax.process_index() == 0:
    (workdir / 'metrics.json').write_text(json.dumps(results, indent=2))
  store.close()
  return results
