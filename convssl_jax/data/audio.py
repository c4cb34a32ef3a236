"""Audio I/O and the reference's waveform normalisation, as pure numpy on [S, C] float32 arrays.

The reference (datasets_turntaking `load_waveform`) processes each loaded window in this order:
per-channel peak normalisation, optional mono mix (normalised again), then resampling to 16 kHz.
"""

import os

import numpy as np
import soundfile as sf
import soxr

from convssl_jax import errors

INT16_SCALE = 32768.0


class AudioError(errors.InputError):
  """An audio file that is missing or cannot be decoded; the message starts with its path."""


def read_audio(path, *, sample_rate: int = 16000) -> np.ndarray:
  """Any file soundfile decodes -> [S, C] float32 in [-1, 1], resampled to `sample_rate`."""
  if not os.path.isfile(path):
    raise AudioError(f'{path}: no such file')
  try:
    x, sr = sf.read(os.fsencode(path), dtype='float32', always_2d=True)  # any file name's bytes
  except RuntimeError as err:  # soundfile's LibsndfileError and friends
    raise AudioError(f'{path}: cannot decode audio ({err})') from err
  return resample(x, sr, sample_rate)


def read_stereo(path, *, sample_rate: int = 16000) -> np.ndarray:
  """A recording for the models: [S, 2] float32, one speaker per channel (a mono file is speaker
  A with a silent B). Refuses, naming the file, an empty file, NaN or infinite samples and more
  than two channels."""
  wave = read_audio(path, sample_rate=sample_rate)
  if not len(wave):
    raise AudioError(f'{path}: the file holds no samples')
  if not np.isfinite(wave).all():
    raise AudioError(f'{path}: the audio contains NaN or infinite samples')
  if wave.shape[1] > 2:
    raise AudioError(f'{path}: {wave.shape[1]} channels; expected 1 or 2 (one speaker per '
                     'channel)')
  if wave.shape[1] == 1:
    wave = np.concatenate([wave, np.zeros_like(wave)], axis=1)
  return wave


def resample(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
  """[S, C] at `sr_in` -> [S * sr_out / sr_in, C] float32 at `sr_out` (soxr HQ; unchanged when
  the rates agree)."""
  x = np.asarray(x, np.float32)
  if sr_in == sr_out:
    return x
  return soxr.resample(x, sr_in, sr_out, quality='HQ').astype(np.float32, copy=False)


def to_int16(x: np.ndarray) -> np.ndarray:
  """float in [-1, 1] -> int16 (x * 32768, rounded, clipped), the stored datasets' audio dtype."""
  scaled = np.round(np.asarray(x, np.float32) * INT16_SCALE)
  return np.clip(scaled, -INT16_SCALE, INT16_SCALE - 1).astype(np.int16)


def from_int16(x: np.ndarray) -> np.ndarray:
  """int16 -> float32 x / 32768, the inverse of `to_int16` on its grid."""
  return np.asarray(x, np.float32) / np.float32(INT16_SCALE)


def peak_normalize(x: np.ndarray, threshold: float = 0.05, *, sample_axis: int = -2) -> np.ndarray:
  """Each channel divided by its peak |x|, only where that peak exceeds `threshold`.

  x is [..., S, C] by default; pass `sample_axis=-1` for channels-first [..., C, S], which is
  much faster (numpy reduces a contiguous axis ~100x faster than a strided one). The threshold
  keeps near-silent channels (line noise) from being blown up to full scale.
  """
  x = np.asarray(x, np.float32)
  return x * _peak_scale(np.abs(x).max(axis=sample_axis, keepdims=True), threshold)


def _peak_scale(peak: np.ndarray, threshold: float) -> np.ndarray:
  """1 / peak where the peak exceeds the threshold, else 1."""
  loud = peak > threshold
  return np.where(loud, 1.0 / np.where(loud, peak, 1.0), 1.0).astype(np.float32)


def from_int16_normalized(x: np.ndarray, threshold: float = 0.05) -> np.ndarray:
  """Channels-first int16 [..., C, S] -> float32 peak-normalised like `peak_normalize`, in one
  pass over the samples (the input pipeline's hot path)."""
  peak = np.maximum(x.max(axis=-1, keepdims=True), -x.min(axis=-1, keepdims=True).astype(np.int32))
  out = x.astype(np.float32)
  out *= _peak_scale(peak / INT16_SCALE, threshold) / np.float32(INT16_SCALE)
  return out


def mono_mix(x: np.ndarray, threshold: float = 0.05, *, channel_axis: int = -1,
             normalize: bool = True) -> np.ndarray:
  """The channel mean, peak-normalised again under the same rule when `normalize`: [..., S, C]
  -> [..., S] (or channels-first [..., C, S] with `channel_axis=-2`).

  The reference normalises each channel first (`peak_normalize`), then mixes and normalises the
  mix; this function is the second half. Without normalisation it only mixes, as the reference.
  """
  mixed = np.mean(np.asarray(x, np.float32), axis=channel_axis)
  return peak_normalize(mixed, threshold, sample_axis=-1) if normalize else mixed
