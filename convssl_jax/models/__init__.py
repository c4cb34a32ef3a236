"""The Flax NNX model family: encoders, transformers, heads and the mono/stereo VAP models."""

import jax
from flax import nnx

from convssl_jax.models.pretrained import load_encoder
from convssl_jax.models.vap import (MonoVAP, StereoVAP, build_model, encoder_frozen, load_model,
                                   trainable_filter)


def count_params(module: nnx.Module, wrt: nnx.filterlib.Filter = nnx.Param) -> int:
  """Number of parameter values in `module` selected by the filter `wrt`."""
  return sum(x.size for x in jax.tree.leaves(nnx.state(module, wrt)))


__all__ = ['MonoVAP', 'StereoVAP', 'build_model', 'count_params', 'encoder_frozen',
           'load_encoder', 'load_model', 'trainable_filter']
