"""The trainer: a `ModelState` plus the optimizer that trains it, with the jitted train step; and
restoring the models of a training run's checkpoints.

One `jax.jit` train step with explicit shardings and donated state; a non-finite loss or
gradient leaves the state as it was and raises the step's `finite` flag. A checkpoint holds
{0: the model's variables, 1: the optimizer's} (and the data iterator), so a resumed run
continues exactly; evaluation and prediction restore the model part alone.
"""

import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from convssl_jax import checkpoints, errors, model_state as model_state_lib, parallelism
from convssl_jax.models import factory

MODEL, OPTIMIZER = 0, 1  # the two parts of a training checkpoint's state


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
    raise errors.ConfigError(f"train.schedule must be 'constant', 'plateau' or 'cosine', got "
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
  """The optimizer state with its plateau scale (the `step_size` hyperparameter) set."""
  def update(path, leaf):
    return jnp.full_like(leaf, value) if 'step_size' in jax.tree_util.keystr(path) else leaf
  return jax.tree_util.tree_map_with_path(update, state)


class Trainer:
  """`model` (a ModelState) and the optimizer state on the mesh, and the jitted train step."""

  def __init__(self, config, mesh: jax.sharding.Mesh, step: int = 0,
               params: nnx.State | None = None):
    """`params`: the model's values to start from (e.g. a converted model's)."""
    self.config, self.mesh = config, mesh
    self.model = model_state_lib.ModelState.create(config, mesh, params)
    self.build(step)

  @property
  def objective(self):
    return self.model.objective

  def build(self, step: int) -> None:
    """(Re)builds the optimizer for `step`: the trained parameters change when the encoder
    unfreezes. The model keeps its values; the optimizer starts fresh."""
    cfg = self.config
    self.trainable = trainable = factory.trainable_filter(cfg.model, step)
    self.encoder_frozen = factory.encoder_frozen(cfg.model, step)
    # The optimizer in use was made at the start or, once a frozen encoder unfroze, at that step.
    unfrozen_at = cfg.model.encoder.unfreeze_step
    start = unfrozen_at if cfg.model.encoder.freeze and not self.encoder_frozen else 0
    graphdef = self.model.graphdef

    def make(params):
      return nnx.Optimizer(nnx.merge(graphdef, params), optimizer_transform(cfg.train, start),
                           wrt=trainable)

    self.optimizer_graphdef, abstract = nnx.split(nnx.eval_shape(make, self.model.params))
    self.optimizer_sharding = parallelism.state_sharding(self.mesh, abstract)
    self.opt_state = jax.jit(lambda p: nnx.state(make(p)),
                             out_shardings=self.optimizer_sharding)(self.model.params)
    self.param_counts = self.model.param_counts(trainable)
    self._compile()

  def set_plateau_scale(self, value: float) -> None:
    self.opt_state = jax.jit(set_plateau_scale, out_shardings=self.optimizer_sharding)(
        self.opt_state, value)

  def stored_state(self) -> nnx.State:
    """The state as checkpoints hold it ({0: model, 1: optimizer}, PRNG keys as raw data)."""
    return model_state_lib.stored(nnx.State({MODEL: self.model.params,
                                             OPTIMIZER: self.opt_state}))

  def abstract_stored_state(self) -> nnx.State:
    return nnx.State({MODEL: self.model.abstract_stored(),
                      OPTIMIZER: model_state_lib.abstract_stored(self.opt_state,
                                                                 self.optimizer_sharding)})

  def load_stored_state(self, stored: nnx.State) -> None:
    self.model.params = model_state_lib.unstored(stored[MODEL], self.model.params)
    self.opt_state = model_state_lib.unstored(stored[OPTIMIZER], self.opt_state)

  def _compile(self) -> None:
    graphdef, optimizer_graphdef = self.model.graphdef, self.optimizer_graphdef
    objective, train_cfg, wrt = self.model.objective, self.config.train, self.trainable

    def train_step(params, opt_state, batch):
      model = nnx.merge(graphdef, params)
      optimizer = nnx.merge(optimizer_graphdef, opt_state)
      model.train()

      def loss_fn(model):
        means = model_state_lib.summary(model_state_lib.loss_sums(model, batch, objective),
                                        train_cfg)
        return means.pop('loss'), means  # each term the mean over the examples that have it

      # Only the trained parameters are differentiated: a frozen encoder gets no gradient.
      grad_fn = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, wrt), has_aux=True)
      (loss, metrics), grads = grad_fn(model)
      grad_norm = optax.tree.norm(grads)
      optimizer.update(model, grads)
      # A non-finite loss or gradient leaves the state as it was; the loop stops on the flag.
      finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
      keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
      return (keep(nnx.state(model), params), keep(nnx.state(optimizer), opt_state),
              {'loss': loss, 'grad_norm': grad_norm, 'finite': finite, **metrics})

    shardings = (self.model.sharding, self.optimizer_sharding)
    # jit: (params, opt_state, batch) -> (params, opt_state, metrics), the state donated.
    self.step_fn = jax.jit(train_step, in_shardings=(*shardings, self.model.batch_sharding),
                           out_shardings=(*shardings, None), donate_argnums=(0, 1))

  def train_step(self, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """One optimizer step on a device batch (`model.to_device`); returns its device metrics."""
    self.model.params, self.opt_state, metrics = self.step_fn(self.model.params, self.opt_state,
                                                              batch)
    return metrics


def checkpoint_build_step(step: int) -> int:
  """The step to build a Trainer for to restore the checkpoint of `step` completed steps: the last
  step run (a checkpoint saved at the unfreeze step holds the frozen optimizer; the loop then
  rebuilds before running that step)."""
  return max(step - 1, 0)


def restore_model(config, workdir, which: str = 'best') -> tuple[model_state_lib.ModelState, int]:
  """(the model of `workdir`'s best (by train.best_metric) or latest checkpoint, its step); the
  optimizer's part of the checkpoint is not read."""
  if which not in ('best', 'latest'):
    raise errors.ConfigError(f"eval.checkpoint must be 'best' or 'latest', got {which!r}")
  model = model_state_lib.ModelState.create(config)
  restored = checkpoints.restore_part(pathlib.Path(workdir) / 'checkpoints', MODEL,
                                      model.abstract_stored(), best=which == 'best')
  if restored is None:
    raise errors.NotFoundError(f'no {which} checkpoint in {workdir}/checkpoints: train first '
                               f'(python run.py --workdir={workdir} ...)')
  step, stored = restored
  model.params = model_state_lib.unstored(stored, model.params)
  return model, step


def load(config, *, workdir=None, model_dir=None, keep_data=()
         ) -> tuple[model_state_lib.ModelState, Any, str]:
  """(model, config, description): the converted model of `model_dir` (its config.model, and its
  recipe's data fields but `keep_data`, replace the configured ones) or the trained model of
  `workdir` (`config.eval.checkpoint`: best or latest)."""
  if model_dir:
    model, config = model_state_lib.converted(config, model_dir, keep_data)
    return model, config, f'{model_dir} (converted)'
  model, step = restore_model(config, workdir, config.eval.checkpoint)
  return model, config, f'{workdir} ({config.eval.checkpoint} checkpoint, step {step})'
