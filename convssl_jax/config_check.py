"""A config's values checked before a run does any work: every count, size, period, rate, fraction
and choice, and the rules between fields, each refused with one line naming the field, the value
and the rule (`errors.ConfigError`).

Unchecked, such values failed late and far from their cause: data.batch_size=0 or train.steps=-5
deep in the input pipeline ('need at least one array to concatenate'), train.checkpoint_every=0
or train.log_every=0 by dividing by zero after start-up, train.keep_checkpoints=0 by training to
the end and keeping no checkpoint. `check(config)` runs at the start of every run.py mode (and in
`convssl_jax.load`), `check_devices` once the devices are known. A field a config does not have
is skipped (each config file has its own sections: `units` for configs/ulm.py, `model.cpc` for
configs/cpc_pretrain.py).
"""

import dataclasses
import fnmatch
import math
import typing
from collections.abc import Callable
from typing import Any

from convssl_jax import errors, objective
from convssl_jax.config_fields import flatten, lookup
from convssl_jax.models import downsample, factory, ssl_encoders, transformer, vap

# The turn-taking scores a validation during training logs (evaluate.TRAINING_NAMES' F1s) that
# may choose the best checkpoint.
BEST_SCORES = ('f1_hold_shift', 'f1_predict_shift', 'f1_short_long', 'f1_bc_prediction')


@dataclasses.dataclass(frozen=True)
class Rule:
  """`test(value)` is true for the values a field may take; `text` says which those are."""
  test: Callable[[Any], bool]
  text: str


def _is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
  return (isinstance(value, (int, float)) and not isinstance(value, bool)
          and math.isfinite(value))


def integer(low: int) -> Rule:
  return Rule(lambda v: _is_int(v) and v >= low, f'must be an integer >= {low}')


def number(low: float | None = None, high: float | None = None, *, above: bool = False,
           below: bool = False) -> Rule:
  """A finite number in [low, high] (`above`: > low; `below`: < high)."""
  def test(v):
    return (_is_number(v) and (low is None or (v > low if above else v >= low))
            and (high is None or (v < high if below else v <= high)))
  if high is None:
    return Rule(test, f'must be a finite number {">" if above else ">="} {low:g}')
  return Rule(test, f'must be a number in {"(" if above else "["}{low:g}, {high:g}'
                    f'{")" if below else "]"}')


def choice(options) -> Rule:
  options = tuple(options)
  return Rule(lambda v: v in options, f'must be one of {", ".join(map(repr, options))}')


def optional(rule: Rule) -> Rule:
  return Rule(lambda v: v is None or rule.test(v), f'must be None or {rule.text[len("must be "):]}')


def decreasing_positive() -> Rule:
  return Rule(lambda v: (isinstance(v, (tuple, list)) and len(v) > 0 and all(map(_is_number, v))
                         and all(a > b for a, b in zip(v, v[1:])) and v[-1] > 0),
              'must be positive numbers, decreasing (at least one)')


def positive_numbers() -> Rule:
  return Rule(lambda v: (isinstance(v, (tuple, list)) and len(v) > 0
                         and all(_is_number(x) and x > 0 for x in v)),
              'must be positive numbers (at least one)')


POSITIVE, COUNT, FRACTION = number(0, above=True), integer(1), number(0, 1)
SECONDS = number(0, above=True)

DATA = {  # also the rules of units.data (configs/ulm.py: the audio the units come from)
    'window_s': SECONDS,
    'overlap_s': number(0),
    'batch_size': COUNT,
    'channel_swap': FRACTION,
    'jitter_grid_s': number(0),
    'history_times': decreasing_positive(),
    'synthetic.train': COUNT, 'synthetic.validation': COUNT, 'synthetic.test': COUNT,
    'synthetic.duration_s': SECONDS,
    'synthetic.cue_reliability': FRACTION,
}

RULES = {
    'seed': integer(0),
    'model.kind': choice(factory.KINDS),
    'model.frame_hz': choice(downsample.FRAME_RATES),
    'model.dim': COUNT,
    'model.dtype': choice(vap.DTYPES),
    'model.units': integer(2),
    'model.encoder.name': choice(('cpc', *ssl_encoders.NAMES, 'none')),
    'model.encoder.padding': choice(('causal', 'reference')),
    'model.encoder.input_gain': POSITIVE,
    'model.encoder.lstm_layers': COUNT,
    'model.encoder.unroll': COUNT,
    'model.encoder.unfreeze_step': integer(-1),
    'model.encoder.output_layer': integer(0),
    'model.transformer.num_heads': COUNT,
    'model.transformer.ffn_mult': COUNT,
    'model.transformer.num_layers': integer(0),
    'model.transformer.self_layers': integer(0),
    'model.transformer.cross_layers': integer(0),
    'model.transformer.dropout': number(0, 1, below=True),
    'model.transformer.scale': choice(('model', 'head')),
    'model.transformer.context': optional(COUNT),
    'model.transformer.attention': choice(typing.get_args(transformer.AttentionImpl)),
    'model.va_cond.history_bins': integer(0),
    'model.vap.head': choice(objective.HEADS),
    'model.vap.bin_times': positive_numbers(),
    'model.vap.threshold': number(0, 1, above=True, below=True),
    'model.vap.pre_frames': integer(0),
    'model.cpc.predict_steps': COUNT,
    'model.cpc.negatives': COUNT,
    'model.cpc.negatives_from': choice(('batch', 'sequence')),
    **{f'data.{k}': rule for k, rule in DATA.items()},
    **{f'units.data.{k}': rule for k, rule in DATA.items()},
    'train.steps': COUNT,
    'train.learning_rate': POSITIVE,
    'train.b1': number(0, 1, below=True),
    'train.b2': number(0, 1, below=True),
    'train.weight_decay': number(0),
    'train.grad_clip': number(0),
    'train.schedule': choice(('plateau', 'cosine', 'constant')),
    'train.warmup_steps': integer(0),
    'train.cosine_stairs': COUNT,
    'train.cosine_stair_steps': COUNT,
    'train.plateau_factor': number(0, 1, above=True),
    'train.plateau_patience': integer(0),
    'train.early_stopping_patience': COUNT,
    'train.best_metric': choice(('loss', *BEST_SCORES)),
    'train.*_loss_weight': number(0),
    'train.fsdp': COUNT,
    'train.log_every': COUNT,
    'train.eval_every': Rule(_is_int, 'must be an integer (<= 0: once per epoch)'),
    'train.checkpoint_every': COUNT,
    'train.keep_checkpoints': COUNT,
    'eval.checkpoint': choice(('best', 'latest')),
    'eval.context_s': number(0),
    'eval.excerpt_s': SECONDS,
    'eval.training_thresholds.*': FRACTION,
    'eval.events.seed': integer(0),
    'eval.events.*': number(0),
    'units.encoder_dim': COUNT,
    'units.chunk_s': SECONDS,
    'units.batch_conversations': COUNT,
    'units.kmeans.max_frames': COUNT,
    'units.kmeans.batch_size': integer(0),
    'units.kmeans.iterations': COUNT,
    'units.kmeans.tol': number(0),
}


def _rule(path: str) -> Rule | None:
  """The rule of `path`: its own, else the first pattern that matches it."""
  if path in RULES:
    return RULES[path]
  return next((rule for pattern, rule in RULES.items()
               if '*' in pattern and fnmatch.fnmatchcase(path, pattern)), None)


def _between_fields(config) -> None:
  """The rules that tie fields together."""
  best = lookup(config, 'train.best_metric')
  if best in BEST_SCORES and not lookup(config, 'eval.during_training'):
    raise errors.ConfigError(f'train.best_metric={best!r} needs eval.during_training=True (the '
                             "validation's turn-taking scores), or give 'loss'")
  model = config.get('model')
  if model is not None:
    dim, heads = model.get('dim'), lookup(model, 'transformer.num_heads')
    if dim is not None and heads is not None and dim % heads:
      raise errors.ConfigError(f'model.dim={dim} is not divisible by model.transformer.num_heads='
                               f'{heads} (each head gets dim / num_heads)')
    if 'vap' in model:
      try:
        objective.for_model(model)
      except ValueError as err:
        raise errors.ConfigError(f'model.vap (bin_times {tuple(model.vap.bin_times)}, head '
                                 f'{model.vap.head!r}, pre_frames {model.vap.pre_frames}, '
                                 f'model.frame_hz {model.frame_hz}): {err}') from None
  for data in ('data', 'units.data'):
    window, overlap = lookup(config, f'{data}.window_s'), lookup(config, f'{data}.overlap_s')
    if window is not None and overlap is not None and overlap >= window:
      raise errors.ConfigError(f'{data}.overlap_s={overlap!r} must be below {data}.window_s='
                               f'{window!r} (consecutive training windows move by the difference)')
  context, window = lookup(config, 'eval.context_s'), lookup(config, 'data.window_s')
  if context is not None and window is not None and context >= window:
    raise errors.ConfigError(f'eval.context_s={context!r} must be below data.window_s={window!r}: '
                             'each evaluation window scores its frames after that much context')
  history = lookup(config, 'model.va_cond.history_bins')
  times = lookup(config, 'data.history_times')
  if (lookup(config, 'model.kind') == 'mono' and history and times is not None
      and history != len(times) + 1):
    raise errors.ConfigError(f'model.va_cond.history_bins={history} must be len(data.history_times)'
                             f' + 1 = {len(times) + 1} (or 0: no VA history)')


def check_devices(config, devices: int) -> None:
  """Refuses a global batch or parameter sharding that does not divide the `devices` evenly (for
  the modes that batch: after the processes have joined, when the devices are known)."""
  fsdp, batch = lookup(config, 'train.fsdp'), lookup(config, 'data.batch_size')
  if fsdp is not None and devices % fsdp:
    raise errors.ConfigError(f'train.fsdp={fsdp} must divide the {devices} devices')
  if batch is not None and batch % devices:
    raise errors.ConfigError(f'data.batch_size={batch} must be a multiple of the {devices} '
                             f'devices (each gets an equal share; --config.data.batch_size=...)')


def check(config) -> None:
  """Refuses (ConfigError, one line) the first field of `config` that breaks its rule."""
  for path, value in flatten(config):
    rule = _rule(path)
    if rule is not None and not rule.test(value):
      raise errors.ConfigError(f'{path}={value!r}: {rule.text}')
  _between_fields(config)
