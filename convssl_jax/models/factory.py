"""Every model from its `config.model`: `build_model`, converted models (`load_model`), and which
parameters train (`trainable_filter`).

The one module that knows every model class; the classes know nothing of each other beyond the
front-ends and bodies they compose.
"""

import functools

import jax
import ml_collections
from absl import logging
from flax import nnx

from convssl_jax.models import cpc_pretrain, pretrained, ulm, vap
from convssl_jax.models.frontends import ENCODER

KINDS = {'mono': vap.MonoVAP, 'stereo': vap.StereoVAP, 'cpc': cpc_pretrain.CPCPretrain,
         'ulm': ulm.UnitLM}


def model_class(cfg) -> type[nnx.Module]:
  """The class of `cfg.kind`."""
  if cfg.kind not in KINDS:
    raise ValueError(f'model.kind must be one of {sorted(KINDS)}, got {cfg.kind!r}')
  return KINDS[cfg.kind]


def build_model(cfg, *, rngs: nnx.Rngs) -> nnx.Module:
  """The model named by `cfg.kind` ('mono', 'stereo', 'cpc' for CPC pretraining, 'ulm' for the
  unit LM), from a `config.model` ConfigDict.

  With `cfg.encoder_checkpoint` (a `python -m checkpoints_convert` output) the encoder starts from
  those converted weights instead of random ones.
  """
  model = model_class(cfg)(cfg, rngs=rngs)
  if cfg.get('encoder_checkpoint') and getattr(model, ENCODER, None) is not None:
    expected = {'name': cfg.encoder.name}
    if cfg.encoder.name == 'cpc':
      expected.update(dim=cfg.dim, lstm_layers=cfg.encoder.lstm_layers,
                      input_gain=model.encoder.input_gain)
    stored = pretrained.load_into(model.encoder, cfg.encoder_checkpoint, expected=expected)
    trained_padding = stored.get('padding', 'reference')
    if cfg.encoder.name == 'cpc' and trained_padding != cfg.encoder.padding:
      _warn_padding(cfg.encoder.padding, cfg.encoder_checkpoint, trained_padding)
  return model


@functools.cache  # once per process: a model is built more than once (abstract, then real)
def _warn_padding(padding: str, checkpoint: str, trained_padding: str) -> None:
  logging.warning(
      'model.encoder.padding=%r, but the CPC weights in %s were trained with %r padding: its '
      'convolutions see other samples than in training, so its features differ '
      '(--config.model.encoder.padding=%s reproduces them)', padding, checkpoint,
      trained_padding, trained_padding)


def load_model(directory) -> tuple[vap.MonoVAP | vap.StereoVAP, ml_collections.ConfigDict]:
  """(the model, its `config.model`) of a converted VAP model (`python -m checkpoints_convert vap
  SRC DIR`), in eval mode."""
  config, params = pretrained.load(directory)
  if 'model' not in config:
    raise ValueError(f'{directory}: a converted {config.get("name")!r} encoder, not a VAP model '
                     '(use load_encoder)')
  cfg = ml_collections.ConfigDict(config['model'])
  model = build_model(cfg, rngs=nnx.Rngs(0))
  pretrained.assign(model, params)
  model.eval()
  return model, cfg


def encoder_frozen(cfg, step: int = 0) -> bool:
  """Whether the encoder is frozen at `step`: `freeze`, until `unfreeze_step` (-1 = never)."""
  enc = cfg.encoder
  return bool(enc.freeze) and (enc.unfreeze_step < 0 or step < enc.unfreeze_step)


def trainable_filter(cfg, step: int = 0) -> nnx.filterlib.Filter:
  """The parameters trained at `step`: all of them, or all but the encoder's while it is frozen."""
  if encoder_frozen(cfg, step):
    return nnx.All(nnx.Param, nnx.Not(nnx.PathContains(ENCODER)))
  return nnx.Param


def count_params(module: nnx.Module, wrt: nnx.filterlib.Filter = nnx.Param) -> int:
  """Number of parameter values in `module` selected by the filter `wrt`."""
  return sum(x.size for x in jax.tree.leaves(nnx.state(module, wrt)))
