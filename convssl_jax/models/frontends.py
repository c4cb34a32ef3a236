"""Front-ends: what turns one speaker's channel of the model's input into frames [B, N, D].

A model composes one front-end with a body (models/vap.py): `AudioFrontend` hears 16 kHz audio
(the CPC encoder at 100 Hz and the causal downsampler to the frame rate; or a converted HuBERT /
wav2vec2 / WavLM and a projection to the model dim; or, for the VA-only baseline, nothing);
`UnitFrontend` embeds k-means units. They are mixins: their modules are the model's own
attributes (`encoder`, `downsample`, `project`, `embedding`), so parameter paths, checkpoints and
converted weights stay as they are, and the model calls their `init_*` in its constructor.

The audio front-end also streams (`init_encoder_stream`, `encoder_stream_step`): the CPC
encoder's and the downsampler's own streaming steps, hop after hop equal to `encode`.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from convssl_jax.data.audio import SAMPLE_RATE
from convssl_jax.models import cpc, downsample, layers, pretrained, ssl_encoders

ENCODER = 'encoder'  # the attribute holding the (pretrained) encoder: the part that is frozen


class AudioFrontend(nnx.Module):
  """16 kHz audio -> frames at the model's frame rate (mixin: `init_audio_frontend` sets
  `encoder`, `downsample` and `project`)."""

  def init_audio_frontend(self, cfg, dtype, rngs: nnx.Rngs, *, allow_none: bool = False):
    """The encoder `cfg.encoder.name` names: 'cpc', a converted SSL encoder, or with `allow_none`
    'none' (no audio: the VA-only baseline)."""
    enc = cfg.encoder
    encoder = down = project = None
    if enc.name in ssl_encoders.NAMES:
      encoder, project = _ssl_encoder(cfg, dtype, rngs)
    elif enc.name == 'cpc':
      encoder = cpc.CPCEncoder(dim=cfg.dim, lstm_layers=enc.lstm_layers, padding=enc.padding,
                               input_gain=enc.get('input_gain', 1.0), unroll=enc.unroll,
                               dtype=dtype, rngs=rngs)
      ks = downsample.downsample_for(cfg.frame_hz)
      down = None if ks is None else downsample.CausalDownsample(cfg.dim, *ks, dtype=dtype,
                                                                 rngs=rngs)
    elif enc.name != 'none' or not allow_none:
      raise ValueError(f'model.encoder.name {enc.name!r} is not available; expected one of '
                       f"{['cpc', *ssl_encoders.NAMES]} (or 'none' for a mono VA-only model)")
    self.encoder, self.downsample, self.project = encoder, down, project
    self.frame_hz = cfg.frame_hz

  def encode(self, wave: jax.Array | None, features: jax.Array | None = None) -> jax.Array:
    """wave [B, S] at 16 kHz -> frames [B, N, D] at the model's frame rate. `features` [B, T, D],
    the encoder's output computed beforehand (a feature cache), replace the encoder."""
    if self.project is not None:
      if features is None:
        # Right-pad by field - hop (80 samples) so that S samples give S / hop frames, frame t
        # covering samples [hop t, hop t + field), like the VA frames [hop t, hop (t + 1)).
        c = self.encoder.config
        features = self.encoder(jnp.pad(wave, ((0, 0), (0, c.receptive_field - c.hop))))
      return self.project(features)
    z = self.encoder(wave) if features is None else features
    return z if self.downsample is None else self.downsample(z)

  @property
  def frame_samples(self) -> int:
    """Waveform samples per model frame (320 at 50 Hz)."""
    return SAMPLE_RATE // self.frame_hz

  def init_encoder_stream(self, rows: int):
    """The encoder's streaming state for `rows` channels before any audio; refuses, with the
    reason, an encoder that cannot stream."""
    if not isinstance(self.encoder, cpc.CPCEncoder):
      raise ValueError(f'streaming needs the causal CPC encoder, not '
                       f'{type(self.encoder).__name__} (HuBERT-family encoders attend over the '
                       'whole input)')
    down = None if self.downsample is None else self.downsample.init_stream_state(rows)
    return self.encoder.init_stream_state(rows), down

  def encoder_stream_step(self, state, wave: jax.Array) -> tuple[tuple, jax.Array]:
    """One hop wave [rows, hop] (hop a multiple of `frame_samples`) -> (new state, the next
    hop / frame_samples frames [rows, n, D]), continuing `encode` of the whole stream exactly."""
    hop = wave.shape[1]
    if hop % self.frame_samples:
      raise ValueError(f'hop {hop} is not a multiple of the model frame ({self.frame_samples} '
                       'samples)')
    encoder_state, down = state
    encoder_state, z = self.encoder.stream_step(encoder_state, wave)
    if self.downsample is not None:
      down, z = self.downsample.stream_step(down, z)
    return (encoder_state, down), z


def _ssl_encoder(cfg, dtype, rngs: nnx.Rngs) -> tuple[ssl_encoders.SSLEncoder, nnx.Linear]:
  """The converted HuBERT-family encoder of `cfg.encoder_checkpoint` and its projection."""
  enc = cfg.encoder
  if not cfg.get('encoder_checkpoint'):
    raise ValueError(f'model.encoder.name={enc.name!r} takes its architecture and weights from '
                     'model.encoder_checkpoint (a `python -m checkpoints_convert '
                     f'{enc.name} SRC DIR` output), which is not set')
  config = pretrained.ssl_config(cfg.encoder_checkpoint)
  if cfg.frame_hz * config.hop != SAMPLE_RATE:
    raise ValueError(f'model.frame_hz={cfg.frame_hz}: the {enc.name} encoder gives '
                     f'{SAMPLE_RATE / config.hop:g} Hz frames, so frame_hz must be that')
  encoder = ssl_encoders.SSLEncoder(config, output_layer=enc.get('output_layer') or None,
                                    dtype=dtype, rngs=rngs)
  return encoder, layers.linear(config.dim, cfg.dim, dtype=dtype, rngs=rngs)


class UnitFrontend(nnx.Module):
  """k-means units -> their embeddings (mixin: `init_unit_frontend` sets `embedding`)."""

  def init_unit_frontend(self, cfg, dtype, rngs: nnx.Rngs):
    if cfg.units < 2:
      raise ValueError(f'model.units (the codebook size) must be >= 2, got {cfg.units}')
    self.embedding = nnx.Embed(cfg.units, cfg.dim, dtype=dtype, rngs=rngs)

  def encode(self, units: jax.Array) -> jax.Array:
    """units [B', N] int -> embeddings [B', N, D] (the units are the frames)."""
    return self.embedding(units)
