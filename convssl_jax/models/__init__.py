"""The Flax NNX model family: front-ends (CPC, HuBERT-family, units), transformers, heads, the
mono/stereo VAP models and the pretraining models, and the factory that builds them."""

from convssl_jax.models.factory import (build_model, count_params, encoder_frozen, load_model,
                                        trainable_filter)
from convssl_jax.models.pretrained import load_encoder
from convssl_jax.models.vap import MonoVAP, StereoVAP

__all__ = ['MonoVAP', 'StereoVAP', 'build_model', 'count_params', 'encoder_frozen',
           'load_encoder', 'load_model', 'trainable_filter']
