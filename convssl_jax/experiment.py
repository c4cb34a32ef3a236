"""A whole experiment as functions a notebook can call: what `run.py`'s summary, train and eval
modes do.

  summary(config)          the configured model on one second of audio: shapes and parameters
  train(config, workdir)   record the config in the workdir (workdir_config.py), train (resuming),
                           then `evaluate`
  evaluate(config, workdir)
                           the turn-taking evaluation with the trained baselines (the VA-only
                           model, trained first in WORKDIR/va_only) and the trivial rules
  report(config, results)  its tables, as run.py prints them
"""

import pathlib
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from convssl_jax import evaluate as evaluate_lib, metrics, recipes, train as train_lib
from convssl_jax import workdir_config
from convssl_jax.data.audio import SAMPLE_RATE
from convssl_jax.models import factory


def summary(config) -> str:
  """The model of `config.model` run on one second of silence: its outputs' shapes, and its
  parameter counts (total, trainable, per part)."""
  cfg = config.model
  model = factory.build_model(cfg, rngs=nnx.Rngs(config.seed))
  model.eval()
  frames = cfg.frame_hz
  batch = {'audio': jnp.zeros((1, 2, SAMPLE_RATE), jnp.float32),
           'units': jnp.zeros((1, 2, frames), jnp.int32), 'va': jnp.zeros((1, frames, 2)),
           'va_history': jnp.zeros((1, frames, cfg.va_cond.history_bins))}
  out = model.forward({k: batch[k] for k in type(model).inputs if k in batch}, frames)
  lines = [f'model: {cfg.kind}, {cfg.frame_hz} Hz, head {cfg.vap.head}, dtype {cfg.dtype}']
  for name, value in jax.tree_util.tree_flatten_with_path(out)[0]:
    lines.append(f'  output {jax.tree_util.keystr(name)}: {value.shape} {value.dtype} '
                 '(1 s of audio)')
  trainable = factory.trainable_filter(cfg)
  lines.append(f'  parameters: {factory.count_params(model):,} total, '
               f'{factory.count_params(model, trainable):,} trainable')
  lines += [f'    {name}: {factory.count_params(part):,}' for name, part in vars(model).items()
            if isinstance(part, nnx.Module)]
  return '\n'.join(lines)


def train_baselines(config, workdir) -> dict[str, tuple[Any, pathlib.Path]]:
  """{name: (config, workdir)} of the trained baselines scored beside the model: with
  `eval.va_only_baseline` the VA-only model, trained once in WORKDIR/va_only (later calls only
  resume, which does nothing once it is done)."""
  if not config.eval.va_only_baseline:
    return {}
  va_only, directory = recipes.va_only(config), pathlib.Path(workdir) / 'va_only'
  workdir_config.record(va_only, directory)
  train_lib.train_and_evaluate(va_only, directory, label='va_only')
  return {'VA only': (va_only, directory)}


def evaluate(config, workdir) -> dict[str, Any]:
  """The turn-taking evaluation of `workdir`'s model with the baselines (`evaluate.evaluate`)."""
  return evaluate_lib.evaluate(config, workdir, train_baselines(config, workdir))


def train(config, workdir) -> tuple[dict[str, Any], dict[str, Any] | None]:
  """(training results, evaluation results): trains `config` in `workdir` (which records it; a
  workdir trained with another model is refused), then evaluates it unless the run was
  preempted."""
  workdir_config.record(config, workdir)
  results = train_lib.train_and_evaluate(config, workdir)
  if 'preempted_at_step' in results:
    return results, None
  return results, evaluate(config, workdir)


def report(config, results: dict[str, Any]) -> str:
  """An evaluation's tables per split and, with the VA-only baseline, what the audio adds."""
  lines = [metrics.report_table(results[split], title=f'{split} split ({config.data.name})')
           for split in evaluate_lib.SPLITS]
  test = results['test']
  if 'VA only' in test:
    audio, va = (test[m]['shift_hold']['f1_weighted'] for m in ('model', 'VA only'))
    lines.append(f'S/H weighted F1 on test: model {audio:.3f}, VA only {va:.3f}: the audio adds '
                 f'{audio - va:+.3f}')
  return '\n'.join(lines)
