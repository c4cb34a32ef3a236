"""A model on the mesh, ready to run: (graphdef, params, mesh, objective, config) and its compiled
eval and predict steps.

Evaluation, prediction, export, streaming and the feature cache take a `ModelState`; the trainer
(convssl_jax/trainer.py) holds one and adds the optimizer. The model is whatever `config.model`
builds (models/factory.py); it is used only through the model interface (`reads`, `forward`,
`losses`), so no code here asks which model it is.
"""

import copy
import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding

from convssl_jax import errors, objective as objective_lib, parallelism
from convssl_jax.models import factory, pretrained, vap

TARGETS = ('va', 'f0', 'speakers')  # what every model's losses read besides its inputs


def loss_weights(train_cfg, terms) -> dict[str, float]:
  """`train.<term>_loss_weight` of each loss term a model computes; every one must be declared."""
  missing = [f'train.{k}_loss_weight' for k in terms if f'{k}_loss_weight' not in train_cfg]
  if missing:
    raise errors.ConfigError(f'the model computes loss terms {list(terms)}, but the config '
                             f'declares no {", ".join(missing)}')
  return {k: train_cfg[f'{k}_loss_weight'] for k in terms}


def _sums(values, weight) -> dict[str, tuple[jax.Array, jax.Array]]:
  """{name: (sum of the values of the examples that have it, their count)}, each example
  counted with `weight` [B]."""
  out = {}
  for name, v in values.items():
    value, present = (v.value, v.present) if isinstance(v, vap.Masked) else (v, None)
    counted = weight if present is None else weight * present
    out[name] = (jnp.sum(jnp.where(counted > 0, value * counted, 0.0)), jnp.sum(counted))
  return out


def loss_sums(model, batch: dict[str, jax.Array], objective: objective_lib.VAPObjective,
              weight: jax.Array | None = None) -> dict[str, dict[str, tuple]]:
  """{'terms': ..., 'metrics': ...}: per name, (sum, count) over the examples of the batch that
  have it (`model.losses`; a `Masked` value only where present), each example counted with
  `weight` [B] (default 1). Sums of several batches add up; `summary` turns them into means."""
  frames = batch['va'].shape[1] - objective.horizon_frames
  out = model.forward(batch, frames)
  terms, metrics = model.losses(out, batch, objective, frames)
  weight = jnp.ones(batch['va'].shape[0], jnp.float32) if weight is None else weight
  return {'terms': _sums(terms, weight), 'metrics': _sums(metrics, weight)}


def summary(sums: dict[str, dict[str, tuple]], train_cfg) -> dict[str, jax.Array]:
  """`loss_sums` -> {'loss', '<term>_loss' per term, the metrics}: each the mean over the
  examples that have it (NaN where none has), as the reference would average a term that only
  some examples have; 'loss' is the sum of the term means weighed by `train.<term>_loss_weight`,
  a term no example has adding nothing. A monologue's window thus adds to the CPC, F0 and VAD
  means but not to the VAP mean, whatever else is in its batch."""
  weights = loss_weights(train_cfg, sums['terms'])
  means = {name: (jnp.where(count > 0, total / jnp.maximum(count, 1e-9), jnp.nan), count > 0)
           for kind in ('terms', 'metrics') for name, (total, count) in sums[kind].items()}
  loss = sum(weights[k] * jnp.where(has, mean, 0.0)
             for k, (mean, has) in means.items() if k in sums['terms'])
  return {'loss': loss, **{f'{k}_loss': means[k][0] for k in sums['terms']},
          **{k: means[k][0] for k in sums['metrics']}}


def is_key(x) -> bool:
  return jnp.issubdtype(getattr(x, 'dtype', None), jax.dtypes.prng_key)


def stored(state: nnx.State) -> nnx.State:
  """A state as checkpoints hold it: typed PRNG keys as their raw uint32 data."""
  return jax.tree.map(lambda x: jax.random.key_data(x) if is_key(x) else x, state)


def unstored(stored_state: nnx.State, like: nnx.State) -> nnx.State:
  """`stored_state` with the PRNG keys of `like` (a state of the same tree) typed again."""
  return jax.tree.map(lambda new, old: jax.random.wrap_key_data(new, impl=jax.random.key_impl(old))
                      if is_key(old) else new, stored_state, like)


def abstract_stored(state: nnx.State, sharding) -> nnx.State:
  """The tree of ShapeDtypeStructs (with shardings) that a checkpoint of `state` restores into."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      stored(state), sharding)


@dataclasses.dataclass(eq=False)
class ModelState:
  """The model of `config.model` on `mesh`: `graphdef` and `params` (every model variable:
  parameters and RNG streams, in their shardings), with its compiled steps."""
  config: Any
  mesh: jax.sharding.Mesh
  graphdef: nnx.GraphDef
  params: nnx.State
  sharding: Any  # of `params`

  @classmethod
  def create(cls, config, mesh: jax.sharding.Mesh | None = None,
             params: nnx.State | None = None) -> 'ModelState':
    """The model of `config.model` initialised from `config.seed` (its encoder from
    `model.encoder_checkpoint`), with `params` (e.g. a converted model's, a subset) replacing
    those values; created on the devices in its shardings, so no host holds it all."""
    mesh = mesh or parallelism.make_mesh(config.train.fsdp)
    make = functools.partial(init_model, config)
    graphdef, abstract = nnx.split(nnx.eval_shape(make))
    sharding = parallelism.state_sharding(mesh, abstract)
    placed = jax.jit(lambda p: nnx.state(make(p)), out_shardings=sharding)(params)
    return cls(config, mesh, graphdef, placed, sharding)

  @functools.cached_property
  def objective(self) -> objective_lib.VAPObjective:
    return objective_lib.for_model(self.config.model)

  @functools.cached_property
  def batch_sharding(self) -> NamedSharding:
    return parallelism.batch_sharding(self.mesh)

  @property
  def inputs(self) -> tuple[str, ...]:
    """The batch keys the model's forward reads (its class's `inputs`)."""
    return factory.model_class(self.config.model).inputs

  def model(self) -> nnx.Module:
    """The model itself with these values, in eval mode (streaming, export)."""
    model = nnx.merge(self.graphdef, self.params)
    model.eval()
    return model

  def param_counts(self, trainable=nnx.Param) -> tuple[int, int]:
    """(all parameters, those selected by the filter `trainable`)."""
    model = nnx.merge(self.graphdef, self.params)
    return factory.count_params(model), factory.count_params(model, trainable)

  def abstract_stored(self) -> nnx.State:
    return abstract_stored(self.params, self.sharding)

  def to_device(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """This process's share of a batch's model inputs -> global arrays over the batch axes."""
    return parallelism.to_device(batch, self.batch_sharding, (*self.inputs, *TARGETS))

  @functools.cached_property
  def eval_step(self):
    """jit: (params, batch, weight [B]) -> `loss_sums` of the batch, each example counted with
    its weight (0 for padding)."""
    graphdef, objective = self.graphdef, self.objective

    def eval_step(params, batch, weight):
      model = nnx.merge(graphdef, params)
      model.eval()
      return loss_sums(model, batch, objective, weight)

    return jax.jit(eval_step, in_shardings=(self.sharding, self.batch_sharding,
                                            self.batch_sharding))

  @functools.cached_property
  def predict_step(self):
    """(params, batch, rows) -> per-window curves [B, N, 2] (`objective.frame_outputs`), the VA
    [B, N + H, 2] and the rows' ids, as numpy on every process, so each can stitch every dialog."""
    graphdef, objective = self.graphdef, self.objective

    def predict(params, batch, rows):
      model = nnx.merge(graphdef, params)
      model.eval()
      va = batch['va']
      frames = va.shape[1] - objective.horizon_frames
      out = model.forward(batch, frames)
      return {'va': va, **objective_lib.frame_outputs(objective, out, va[:, :frames], frames)}, rows

    return parallelism.OnEveryProcess(
        predict, (self.sharding, self.batch_sharding, self.batch_sharding), self.mesh)


def init_model(config, params: nnx.State | None = None) -> nnx.Module:
  """The model of `config.model` from `config.seed` (dropout and sampling streams from seed + 1),
  with `params` replacing those values."""
  model = factory.build_model(config.model,
                              rngs=nnx.Rngs(params=config.seed, dropout=config.seed + 1))
  if params is not None:
    nnx.update(model, params)
  return model


def converted(config, directory, keep_data=()) -> tuple[ModelState, Any]:
  """(the converted VAP model of `directory` as a ModelState, `config` with that model's
  `config.model` and its recipe's windows and normalisation in `config.data`, but for the
  `keep_data` fields, e.g. the ones given on the command line): a `python -m checkpoints_convert
  vap|conv_ssl` output used like a trained run."""
  model, model_cfg = factory.load_model(directory)
  config = copy.deepcopy(config)
  recipe = pretrained.read_config(directory).get('data', {})
  with config.unlocked():
    config.model = model_cfg
    config.data.update({k: v for k, v in recipe.items() if k not in keep_data})
  return ModelState.create(config, params=nnx.state(model, nnx.Param)), config
