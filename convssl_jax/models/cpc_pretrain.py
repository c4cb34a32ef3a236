"""CPC pretraining of the causal CPC encoder, alone (CPC_audio) or with the VAP heads ("SCPC+").

Each speaker's channel is one CPC sequence: the conv stack gives z (100 Hz), the LSTM the
context c, and K linear predictors (one matmul) predict z_{t+1..t+K} from c_t, scored against
negatives drawn from the batch's sequences (`convssl_jax.cpc_objective`). With `cpc.heads` the
model also carries the stereo VAP body on the same encoder (downsampler, per-speaker and cross
transformers, VAP, VAD and optionally F0 heads), so one loss trains the encoder on predicting its
own future and the conversation's. A channel that is digital silence (a monologue's partner)
gives no CPC term. `encoder` is the CPC encoder `configs/vap.py` loads after `--mode=pretrain`
exports it.
"""

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from convssl_jax import cpc_objective
from convssl_jax.models import frontends, layers
from convssl_jax.models.vap import StereoBody, both, compute_dtype, per_example
from convssl_jax.objective import VAPObjective


class CPCPretrain(frontends.AudioFrontend, StereoBody):
  """The causal CPC encoder with its InfoNCE predictors (and, with `cfg.cpc.heads`, the stereo
  body on top of it)."""

  inputs = ('audio',)
  mono_mix = False

  def __init__(self, cfg, *, rngs: nnx.Rngs):
    dtype = compute_dtype(cfg.dtype)
    c = cfg.cpc
    if cfg.encoder.name != 'cpc':
      raise ValueError(f"CPC pretraining needs model.encoder.name='cpc', got {cfg.encoder.name!r}")
    if c.negatives_from not in ('batch', 'sequence'):
      raise ValueError(f"model.cpc.negatives_from must be 'batch' or 'sequence', got "
                       f'{c.negatives_from!r}')
    self.init_audio_frontend(cfg, dtype, rngs)
    self.steps, self.n_negatives = c.predict_steps, c.negatives
    self.within_sequence = c.negatives_from == 'sequence'
    self.predictor = layers.linear(cfg.dim, c.predict_steps * cfg.dim, dtype=dtype, rngs=rngs)
    self.negatives = rngs.dropout.fork()  # a fresh draw of negatives every step
    self.heads = bool(c.heads)
    if self.heads:
      self.init_stereo_body(cfg, dtype, rngs)
    else:
      self.downsample = None  # the encoder alone: nothing after its 100-Hz output

  def cpc_scores(self, z: jax.Array, c: jax.Array) -> jax.Array:
    """z, c [S, T, D] -> InfoNCE scores [S, W, K, 1 + n] over anchors t < W = T - K."""
    sequences, length, dim = z.shape
    window = length - self.steps
    if window < 1:
      raise ValueError(f'{self.steps} CPC prediction steps need more than {self.steps} frames '
                       f'(100 Hz) per window, got {length}')
    predictions = self.predictor(c[:, :window]).reshape(sequences, window, self.steps, dim)
    negatives = cpc_objective.sample_negatives(self.negatives(), sequences, length, window,
                                               self.n_negatives, self.within_sequence)
    return cpc_objective.logits(predictions, z, negatives)

  def __call__(self, waveform: jax.Array) -> dict[str, Any]:
    """waveform [B, 2, S] -> {'cpc': {'scores' [B, 2, W, K, 1 + n], 'active' [B, 2]}, and with
    the heads 'logits', 'vad' (and 'f0') as the stereo model gives them}."""
    if waveform.ndim != 3 or waveform.shape[1] != 2:
      raise ValueError(f'CPC pretraining takes waveform [B, 2, samples], got {waveform.shape}')
    z = self.encoder.conv_features(both(waveform))  # [2B, T, D]
    c = self.encoder.lstm(z)
    scores = self.cpc_scores(z, c)
    out = {'cpc': {'scores': jnp.stack(layers.speakers_apart(scores), axis=1),
                   'active': jnp.any(waveform != 0, axis=-1)}}
    if self.heads:
      # c is the encoder output: only the downsampler runs.
      out.update(self.body_outputs(self.encode(None, features=c)))
    return out

  def forward(self, batch, frames: int) -> dict[str, Any]:
    del frames  # it hears audio only
    return self(batch['audio'])

  def losses(self, out, batch, objective: VAPObjective, frames: int):
    """InfoNCE (a silent channel has no CPC term) with its accuracies, after the body's terms."""
    terms, metrics = self.body_losses(out, batch, objective, frames) if self.heads else ({}, {})
    active = out['cpc']['active'][:, :, None, None]
    scores = out['cpc']['scores']  # [B, 2, W, K, 1 + n]
    terms['cpc'], metrics['cpc_accuracy'] = per_example(cpc_objective.infonce, scores, active)
    _, metrics['cpc_next_accuracy'] = per_example(cpc_objective.infonce, scores[..., :1, :],
                                                  active)  # step 1: the next 10 ms frame
    return terms, metrics
