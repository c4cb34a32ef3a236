"""Prediction results (predict_file's dict) for the viewer's tests, benchmark and screenshot, made
without a model: a synthetic dialog's audio, VA and events with smooth curves drawn from its VA,
or an hour of generated frames."""

import numpy as np

from convssl_jax import predict
from convssl_jax.data import audio as audio_lib
from convssl_jax.data import va as va_lib
from convssl_jax.events import TurnTakingEvents
from data_builders.synthetic_dialogs import generator

HZ = 50


def _smooth(x: np.ndarray, frames: int) -> np.ndarray:
  """x [T, ...] averaged over a centred window of `frames`."""
  kernel = np.ones(frames) / frames
  return np.apply_along_axis(np.convolve, 0, x, kernel, mode='same')


def _curves(va: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
  """Next-speaker, backchannel and VAD curves [T, 2] that follow a VA [T, 2] (with some noise)."""
  lead = np.roll(va, -25, axis=0)  # half a second ahead
  p_now = np.clip(0.5 + 0.45 * _smooth(lead[:, 0] - lead[:, 1], 15), 0, 1)
  p_future = np.clip(0.5 + 0.45 * _smooth(np.roll(va, -75, 0)[:, 0] - np.roll(va, -75, 0)[:, 1],
                                          50), 0, 1)
  vad = np.clip(_smooth(va, 5) * 0.9 + rng.uniform(0, 0.08, va.shape), 0, 1)
  p_bc = np.clip(_smooth(lead[:, ::-1] * (1 - va), 40) * 0.6 + rng.uniform(0, 0.05, va.shape), 0, 1)
  pair = lambda a: np.stack([a, 1 - a], 1).astype(np.float32)  # noqa: E731
  return {'p_now': pair(p_now), 'p_future': pair(p_future), 'p_bc': p_bc.astype(np.float32),
          'vad': vad.astype(np.float32)}


def _result(va: np.ndarray, envelope: np.ndarray, rng: np.random.Generator) -> dict:
  frames = len(va)
  padded = np.concatenate([va, np.zeros((100, 2), np.float32)])  # events look 2 s ahead
  events = TurnTakingEvents(HZ)(padded, max_frame=frames)
  return {'frame_hz': HZ, 'va': va, 'envelope': envelope, **_curves(va, rng),
          'events': {k: v[:frames] for k, v in events.items()}}


def dialog(seed: int = 3, seconds: float = 30.0) -> tuple[dict, np.ndarray]:
  """(result, stereo float32 audio [S, 2] at 16 kHz) of a synthetic dialog."""
  d = generator.generate_dialog(seed, generator.DialogConfig(duration_s=seconds))
  frames = va_lib.num_frames(seconds, HZ)
  va = va_lib.va_frames(d.va_list, frames, HZ)
  envelope = predict.envelope(audio_lib.to_int16(d.audio), frames)
  return _result(va, envelope, np.random.default_rng(seed)), d.audio


def generated(frames: int = 180_000, seed: int = 0) -> dict:
  """A result of `frames` generated frames (an hour at 50 Hz by default): talk spurts of 0.5-4 s
  alternating between the speakers with pauses and some overlap, noisy envelopes."""
  rng = np.random.default_rng(seed)
  va = np.zeros((frames, 2), np.float32)
  t, speaker = 0, 0
  while t < frames:
    length = int(rng.uniform(0.5, 4.0) * HZ)
    va[t:t + length, speaker] = 1
    t += length + int(rng.uniform(-0.3, 1.2) * HZ)
    speaker = speaker if rng.random() < 0.4 else 1 - speaker
  envelope = va * rng.uniform(0.2, 1.0, va.shape) + rng.uniform(0, 0.02, va.shape)
  return _result(va, envelope.astype(np.float32), rng)
