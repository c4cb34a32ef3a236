"""Training from one CPU to a pod: `train_and_evaluate(config, workdir)`.

One mesh over all devices with axes ('data', 'fsdp'); batches are sharded over both, parameters
and optimizer state are replicated, or sharded over 'fsdp' when it is > 1. One `jax.jit` step
with explicit shardings and donated state. Checkpoints (Orbax) hold the model, the optimizer and
the grain iterator together, so a resumed run sees exactly the batches it would have seen. The
loop never waits on the device between log steps: metrics stay on the device until then.
"""

import json
import pathlib
import signal
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from convssl_jax import cpc_objective, models
from convssl_jax.models import heads, ulm
from convssl_jax.objective import VAPObjective

BATCH_AXES = ('data', 'fsdp')
DEVICE_KEYS = ('audio', 'features', 'units', 'va', 'va_history', 'f0')  # what the model reads


def objective_for(model_cfg) -> VAPObjective:
  v = model_cfg.vap
  return VAPObjective(bin_times=tuple(v.bin_times), frame_hz=model_cfg.frame_hz,
                      threshold=v.threshold, head=v.head, pre_frames=v.pre_frames)


# The mesh and the shardings.

def make_mesh(fsdp: int = 1) -> jax.sharding.Mesh:
  """All devices as (data, fsdp); data parallel by default."""
  n = jax.device_count()
  if fsdp < 1 or n % fsdp:
    raise ValueError(f'train.mesh.fsdp={fsdp} does not divide the {n} devices')
  auto = (jax.sharding.AxisType.Auto,) * 2
  return jax.make_mesh((n // fsdp, fsdp), BATCH_AXES, axis_types=auto)


def connect_processes(fsdp: int = 1) -> None:
  """One collective over every device group of the (data, fsdp) mesh, so that a multi-process
  run connects them all now. Call it right after `jax.distributed.initialize` (a rendezvous),
  while the processes are in step.

  On CPU, JAX's gloo collectives connect a group at its first collective and give the other
  processes 30 s to arrive, whatever `--xla_cpu_collective_timeout_seconds` says; a first
  train step that one process compiles half a minute later than another (a loaded machine)
  then fails with 'Gloo context initialization failed'. Connected groups wait as long as needed.
  """
  if jax.process_count() == 1:
    return
  mesh = make_mesh(fsdp)
  spec = P(BATCH_AXES)
  ones = jax.make_array_from_process_local_data(NamedSharding(mesh, spec),
                                                np.ones(jax.local_device_count(), np.float32))
  sums = lambda x: sum(jax.lax.psum(x, axes) for axes in (BATCH_AXES, 'data', 'fsdp'))
  jax.block_until_ready(jax.jit(jax.shard_map(sums, mesh=mesh, in_specs=spec,
                                              out_specs=spec))(ones))


def sync_processes(name: str) -> None:
  """Waits until every process of a multi-process run reaches this `name`d point (no-op alone)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def state_sharding(mesh: jax.sharding.Mesh, state: Any) -> Any:
  """Replicated leaves, or with fsdp > 1 each array sharded over 'fsdp' along its largest
  divisible axis (small arrays stay replicated: sharding them saves nothing)."""
  fsdp = mesh.shape['fsdp']

  def spec(leaf):
    shape = getattr(leaf, 'shape', ())
    if fsdp == 1 or np.prod(shape, dtype=np.int64) < 4096:
      return NamedSharding(mesh, P())
    axes = [a for a in np.argsort(shape)[::-1] if shape[a] % fsdp == 0]
    if not axes:
      return NamedSharding(mesh, P())
    parts = [None] * len(shape)
    parts[axes[0]] = 'fsdp'
    return NamedSharding(mesh, P(*parts))

  return jax.tree.map(spec, state)


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(BATCH_AXES))


def to_device(batch: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
  """This process's share of the batch -> global arrays sharded over the batch axes."""
  return {k: jax.make_array_from_process_local_data(sharding, batch[k])
          for k in DEVICE_KEYS if k in batch}


# The optimizer.

def learning_rate(train_cfg, start: int = 0) -> optax.Schedule:
  """After `warmup_steps` of linear warmup: 'constant', 'plateau' (constant, scaled on plateaus by
  the loop) or 'cosine', conv_ssl's CosineAnnealingLR stepped every `cosine_stair_steps`: the
  rate is lr * (1 + cos(pi * stair / cosine_stairs)) / 2 with stair = step // cosine_stair_steps
  (2500 stairs of 100 steps: one half-cosine over 250,000 steps, a staircase). An optimizer made
  at step `start` (when the encoder unfreezes) counts from 0 but continues the schedule there."""
  t = train_cfg
  if t.schedule in ('constant', 'plateau'):
    schedule = optax.constant_schedule(t.learning_rate)
  elif t.schedule == 'cosine':
    def schedule(count):
      stair = jnp.floor_divide(count, t.cosine_stair_steps)
      return t.learning_rate * 0.5 * (1 + jnp.cos(jnp.pi * stair / t.cosine_stairs))
  else:
    raise ValueError(f"train.schedule must be 'constant', 'plateau' or 'cosine', got "
                     f'{t.schedule!r}')
  if t.warmup_steps:  # (optax logs about a zero-step linear schedule)
    schedule = optax.join_schedules(
        [optax.linear_schedule(0.0, t.learning_rate, t.warmup_steps), schedule], [t.warmup_steps])
  return schedule if not start else lambda count: schedule(count + start)


def optimizer_transform(train_cfg, start: int = 0) -> optax.GradientTransformation:
  """AdamW (decoupled weight decay on every trained parameter), optional global-norm clipping, and
  a final `plateau_scale` the loop lowers when the validation loss stops improving; made at step
  `start`, it continues the learning-rate schedule from there."""
  t = train_cfg
  parts = [optax.clip_by_global_norm(t.grad_clip)] if t.grad_clip > 0 else []
  parts += [optax.adamw(learning_rate(t, start), b1=t.b1, b2=t.b2, weight_decay=t.weight_decay),
            optax.inject_hyperparams(optax.scale)(step_size=1.0)]
  return optax.chain(*parts)


def set_plateau_scale(state: nnx.State, value: float) -> nnx.State:
  """The state with the optimizer's plateau scale (the `step_size` hyperparameter) set."""
  def update(path, leaf):
    return jnp.full_like(leaf, value) if 'step_size' in jax.tree_util.keystr(path) else leaf
  return jax.tree_util.tree_map_with_path(update, state)


# Losses.

def model_input(batch: dict[str, jax.Array]) -> jax.Array | None:
  """What the model hears: the batch's 'units' (unit LM), else its 'audio' (None where a feature
  cache's 'features' stand in for it)."""
  return batch['units'] if 'units' in batch else batch.get('audio')


def forward(model, audio: jax.Array | None, va: jax.Array, va_history: jax.Array | None, n: int,
            features: jax.Array | None = None):
  """The model's outputs for a batch; the mono model also reads the first `n` frames of VA.
  `features` (from a feature cache) stand in for the audio."""
  cached = {} if features is None else {'features': features}
  if isinstance(model, models.MonoVAP):
    return model(audio, va[:, :n], va_history, **cached)
  return model(audio, **cached)


def losses(model, batch: dict[str, jax.Array], objective: VAPObjective, train_cfg):
  """Per-example total loss [B] and metrics [B]: each term the model has an output for (VAP; VAD
  for stereo; F0 with the F0 head; InfoNCE for CPC pretraining; next unit for the unit LM),
  unweighted, and the frame or prediction accuracies. The total weighs the terms by
  `train.<term>_loss_weight` (1 where the config has none)."""
  va = batch['va']
  n = va.shape[1] - objective.horizon_frames
  out = forward(model, model_input(batch), va, batch.get('va_history'), n, batch.get('features'))
  per_example = lambda f, *xs: jax.vmap(lambda *x: f(*jax.tree.map(lambda a: a[None], x)))(*xs)
  terms, metrics = {}, {}
  if 'logits' in out:
    labels = objective.labels(va)
    terms['vap'] = per_example(objective.loss, out['logits'][:, :n], labels)
    if objective.head == 'discrete':
      hit = jnp.argmax(out['logits'][:, :n], axis=-1) == labels
      metrics['frame_accuracy'] = hit.mean(axis=-1)
  if 'vad' in out:
    terms['vad'] = per_example(heads.vad_loss, out['vad'][:, :n], va[:, :n])
  if 'f0' in out:
    terms['f0'] = per_example(
        heads.f0_loss, jax.tree.map(lambda x: x[:, :n], out['f0']), batch['f0'][:, :n])
  if 'cpc' in out:
    active = out['cpc']['active'][:, :, None, None]  # a silent channel has no CPC term
    scores = out['cpc']['scores']  # [B, 2, W, K, 1 + n]
    terms['cpc'], metrics['cpc_accuracy'] = per_example(cpc_objective.infonce, scores, active)
    _, metrics['cpc_next_accuracy'] = per_example(cpc_objective.infonce, scores[..., :1, :],
                                                  active)  # step 1: the next 10 ms frame
  if 'units' in out:
    terms['unit'], metrics['unit_accuracy'] = per_example(ulm.next_unit_loss, out['units'],
                                                          batch['units'])
  total = sum(train_cfg.get(f'{k}_loss_weight', 1.0) * v for k, v in terms.items())
  return total, {**{f'{k}_loss': v for k, v in terms.items()}, **metrics}


class Trainer:
  """The model and optimizer state on the mesh, and the jitted train and eval steps."""

  def __init__(self, config, mesh: jax.sharding.Mesh, step: int = 0,
               model_state: nnx.State | None = None):
    """`model_state`: the model's values to start from (e.g. a converted model's)."""
    self.config, self.mesh = config, mesh
    self.objective = objective_for(config.model)
    self.batch_sharding = batch_sharding(mesh)
    self.state = None
    self.build(step, model_state)

  def build(self, step: int, model_state: nnx.State | None = None) -> None:
    """(Re)builds for `step`: the trained parameters change when the encoder unfreezes. A state
    already held (or `model_state`) keeps its model values; the optimizer then starts fresh."""
    cfg = self.config
    self.trainable = trainable = models.trainable_filter(cfg.model, step)
    self.encoder_frozen = models.encoder_frozen(cfg.model, step)
    # The optimizer in use was made at the start or, once a frozen encoder unfroze, at that step.
    unfrozen_at = cfg.model.encoder.unfreeze_step
    start = unfrozen_at if cfg.model.encoder.freeze and not self.encoder_frozen else 0

    def make(model_state=None):
      model = models.build_model(cfg.model, rngs=nnx.Rngs(params=cfg.seed, dropout=cfg.seed + 1))
      if model_state is not None:
        nnx.update(model, model_state)
      return model, nnx.Optimizer(model, optimizer_transform(cfg.train, start), wrt=trainable)

    model, optimizer = nnx.eval_shape(make)
    self.graphdef, abstract = nnx.split((model, optimizer))
    self.sharding = state_sharding(self.mesh, abstract)
    # Created on the devices in their shardings: with several processes, no host holds it all.
    previous = model_state if self.state is None else self.state[0]
    self.state = jax.jit(lambda m: nnx.state(make(m)), out_shardings=self.sharding)(previous)
    self.param_counts = (models.count_params(model), models.count_params(model, trainable))
    self._compile()

  def set_plateau_scale(self, value: float) -> None:
    self.state = jax.jit(set_plateau_scale, out_shardings=self.sharding)(self.state, value)

  def stored_state(self) -> nnx.State:
    """The state as checkpoints hold it: typed PRNG keys as their raw uint32 data."""
    return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, self.state)

  def abstract_stored_state(self) -> nnx.State:
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        self.stored_state(), self.sharding)

  def load_stored_state(self, stored: nnx.State) -> None:
    self.state = jax.tree.map(
        lambda new, old: jax.random.wrap_key_data(new, impl=jax.random.key_impl(old))
        if _is_key(old) else new, stored, self.state)

  def _compile(self) -> None:
    graphdef, objective, train_cfg = self.graphdef, self.objective, self.config.train
    wrt = self.trainable

    def train_step(state, batch):
      model, optimizer = nnx.merge(graphdef, state)
      model.train()

      def loss_fn(model):
        total, metrics = losses(model, batch, objective, train_cfg)
        return total.mean(), {k: v.mean() for k, v in metrics.items()}

      # Only the trained parameters are differentiated: a frozen encoder gets no gradient.
      grad_fn = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, wrt), has_aux=True)
      (loss, metrics), grads = grad_fn(model)
      grad_norm = optax.tree.norm(grads)
      optimizer.update(model, grads)
      # A non-finite loss or gradient leaves the state as it was; the loop stops on the flag.
      finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
      new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old),
                               nnx.state((model, optimizer)), state)
      return new_state, {'loss': loss, 'grad_norm': grad_norm, 'finite': finite, **metrics}

    def eval_step(state, batch, weight):
      model, _ = nnx.merge(graphdef, state)
      model.eval()
      total, metrics = losses(model, batch, objective, train_cfg)
      return {k: jnp.sum(v * weight) for k, v in {'loss': total, **metrics}.items()}

    self.train_step = jax.jit(train_step, in_shardings=(self.sharding, self.batch_sharding),
                              out_shardings=(self.sharding, None), donate_argnums=0)
    self.eval_step = jax.jit(eval_step, in_shardings=(self.sharding, self.batch_sharding,
                                                      self.batch_sharding))


def checkpoint_build_step(step: int) -> int:
  """The step to build a Trainer for to restore the checkpoint of `step` completed steps: the last
  step run (a checkpoint saved at the unfreeze step holds the frozen optimizer; the loop then
  rebuilds before running that step)."""
  return max(step - 1, 0)


def _is_key(x) -> bool:
  return jnp.issubdtype(getattr(x, 'dtype', None), jax.dtypes.prng_key)


class NonFiniteError(RuntimeError):
  """A training step produced a non-finite loss or gradient."""


class Preemption:
  """Turns SIGTERM into a flag the loop checks, so a preempted run saves and exits cleanly."""

  def __init__(self):
    self.requested = False
    self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning('SIGTERM: saving a checkpoint and stopping')
    self.requested = True

  def close(self):
    signal.signal(signal.SIGTERM, self._previous)


def evaluate_loss(trainer: Trainer, dataset) -> dict[str, float]:
  """Mean losses and frame accuracy over every window of `dataset` (`eval_dataset`'s batches)."""
  sums, count = {}, 0.0
  for batch in dataset:
    out = trainer.eval_step(trainer.state, to_device(batch, trainer.batch_sharding),
                            jax.make_array_from_process_local_data(trainer.batch_sharding,
                                                                   batch['weight']))
    sums = {k: sums.get(k, 0.0) + v for k, v in out.items()}
    count += float(batch['weight'].sum())
  count = _global_sum(count)
  return {k: float(v) / count for k, v in jax.device_get(sums).items()}


def _global_sum(x: float) -> float:
  if jax.process_count() == 1:
    return x
  from jax.experimental import multihost_utils
  return float(np.sum(multihost_utils.process_allgather(np.float32(x))))


def class_frequency_loss(objective: VAPObjective, train, validation, frame_hz: int,
                         max_conversations: int = 128) -> float:
  """Cross-entropy on the validation frames of always predicting the training-set class
  frequencies: the loss a model that ignores its input can reach (discrete head). Large corpora
  are represented by a fixed random sample of `max_conversations` per split."""
  from convssl_jax.data import va as va_lib

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


def corpus_checks(config) -> dict[str, Any]:
  """What a units dataset must match: the model's frame rate and codebook size."""
  return dict(frame_hz=config.model.frame_hz, n_units=config.model.get('units'))


def window_spec(config, objective: VAPObjective):
  from convssl_jax.data import pipeline
  d = config.data
  return pipeline.WindowSpec(window_s=d.window_s, frame_hz=config.model.frame_hz,
                             horizon_frames=objective.horizon_frames,
                             history_times=tuple(d.history_times), normalize=d.normalize,
                             mono=config.model.kind == 'mono',
                             **(dict(signal='units', signal_hz=config.model.frame_hz)
                                if d.name == 'units' else {}))


class _Logger:
  """Console progress bar and TensorBoard events (process 0 only)."""

  def __init__(self, workdir, steps: int, start: int):
    self.main = jax.process_index() == 0
    self.writer = None
    if self.main:
      import tqdm
      from tensorboardX import SummaryWriter
      workdir.mkdir(parents=True, exist_ok=True)
      self.writer = SummaryWriter(str(workdir / 'tensorboard'))
      self.jsonl = open(workdir / 'train_log.jsonl', 'a')  # one line per log step
      self.bar = tqdm.tqdm(total=steps, initial=start, unit='step', dynamic_ncols=True)
    self.time, self.step = time.perf_counter(), start

  def train(self, step: int, means: dict[str, float], audio_seconds: float) -> None:
    now = time.perf_counter()
    rate = (step - self.step) / max(now - self.time, 1e-9)
    self.time, self.step = now, step
    if self.main:
      scalars = {**means, 'steps_per_s': rate, 'audio_s_per_s': rate * audio_seconds}
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
      self.bar.write(f'step {step} {split}: ' + ', '.join(f'{k} {v:.4f}' for k, v in metrics.items()))

  def close(self):
    if self.main:
      self.bar.close()
      self.writer.close()
      self.jsonl.close()


def train_and_evaluate(config, workdir) -> dict[str, Any]:
  """Trains `config` in `workdir` (resuming from its latest checkpoint) and evaluates the result.

  Returns (and writes to workdir/metrics.json) the final validation and test losses.
  """
  from convssl_jax import checkpoints
  from convssl_jax.data import pipeline

  workdir = pathlib.Path(workdir)
  t, d = config.train, config.data
  mesh = make_mesh(t.fsdp)
  if d.batch_size % jax.device_count():
    raise ValueError(f'data.batch_size={d.batch_size} is not divisible by the '
                     f'{jax.device_count()} devices')
  local_batch = d.batch_size // jax.process_count()
  store = checkpoints.Checkpoints(workdir / 'checkpoints', keep=t.keep_checkpoints)
  start = store.latest_step() or 0
  trainer = Trainer(config, mesh, step=checkpoint_build_step(start))
  spec = window_spec(config, trainer.objective)
  corpora = pipeline.open_corpora(d, ('train', 'validation', 'test'), **corpus_checks(config))
  n_windows = len(pipeline.window_table(corpora['train'], d.window_s, d.overlap_s, cover=False))
  # eval_every <= 0: once per epoch (the training windows' batches), as the references validate.
  eval_every = t.eval_every if t.eval_every > 0 else max(1, n_windows // d.batch_size)
  shard = dict(process_index=jax.process_index(), process_count=jax.process_count())
  features = None
  if d.features:  # the frozen encoder's features, cached: the step skips the encoder
    from convssl_jax import feature_cache
    features = feature_cache.open_for(config, corpora['train'], trainer)
  train_iter = iter(pipeline.train_dataset(
      corpora['train'], spec, batch_size=local_batch, seed=config.seed, overlap_s=d.overlap_s,
      channel_swap=d.channel_swap, epochs=min(100, -(-t.steps * d.batch_size // n_windows)),
      jitter_grid_s=d.jitter_grid_s, features=features, **shard))
  eval_data = lambda split: pipeline.eval_dataset(corpora[split], spec, batch_size=local_batch,
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
  has_vap = config.model.kind != 'cpc' or config.model.cpc.heads  # pure CPC has no VAP head
  turn_taking = None  # scores the validation dialogs' turn-taking events at each evaluation
  if config.model.kind in ('stereo', 'mono') and config.eval.get('during_training'):
    from convssl_jax import evaluate  # it builds on this module
    evaluate.check_context(config)  # now, not at the first validation
    events = evaluate.Evaluation.for_config(config)
    turn_taking = lambda: evaluate.training_scores(trainer, config, corpora['validation'], events)
  if has_vap and trainer.objective.head == 'discrete':
    baseline = class_frequency_loss(trainer.objective, corpora['train'], corpora['validation'],
                                    config.model.frame_hz)
    logging.info('validation VAP loss of predicting the training class frequencies: %.4f',
                 baseline)

  logger = _Logger(workdir, t.steps, start)
  preemption = Preemption()
  pending = []  # (step, device metrics, conversation ids) not yet fetched from the device

  def flush():
    """Fetches pending metrics (the loop's only device sync); stops on a non-finite step."""
    if not pending:
      return
    fetched = jax.device_get([m for _, m, _ in pending])
    for (step, _, conversations), m in zip(pending, fetched):
      if not m['finite']:
        sessions = [corpora['train'].sessions[i] for i in conversations]
        raise NonFiniteError(
            f'non-finite loss or gradient at step {step + 1} (loss {m["loss"]}, gradient norm '
            f'{m["grad_norm"]}); batch conversations {sessions}. The step was not applied and '
            f'no checkpoint was written after it; the last good checkpoint is step '
            f'{store.latest_step()}.')
    means = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0] if k != 'finite'}
    logger.train(pending[-1][0] + 1, means, d.batch_size * d.window_s)
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
      trainer.state, metrics = trainer.train_step(trainer.state,
                                                  to_device(batch, trainer.batch_sharding))
      pending.append((step, metrics, batch['conversation']))
      final_val = None
      done = step + 1
      last = done == t.steps
      if done % t.log_every == 0 or last or preemption.requested:
        flush()
      if done % eval_every == 0 or last:
        flush()
        val = evaluate_loss(trainer, eval_data('validation'))
        if turn_taking is not None:
          val.update(turn_taking())
        logger.eval(done, 'validation', val)
        final_val = val
        if val['loss'] < meta['best_val_loss']:
          meta.update(best_val_loss=val['loss'], evals_since_best=0, evals_since_plateau=0)
          store.save_best(done, trainer.stored_state(), meta, value=val['loss'])
        else:
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
    preemption.close()
    logger.close()
    store.wait()
  if preemption.requested:
    return {'preempted_at_step': done}

  results = {'step': done, 'baseline_val_vap_loss': baseline}
  for split in ('validation', 'test'):
    if split == 'validation' and final_val is not None:  # evaluated at the last step already
      results[split] = final_val
    else:
      results[split] = evaluate_loss(trainer, eval_data(split))
  if jax.process_index() == 0:
    (workdir / 'metrics.json').write_text(json.dumps(results, indent=2))
  store.close()
  return results
