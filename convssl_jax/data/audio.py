"""Audio I/O and the reference's waveform normalisation, as pure numpy on [S, C] float32 arrays.

The reference (datasets_turntaking `load_waveform`) processes each loaded window in this order:
per-channel peak normalisation, optional mono mix (normalised again), then resampling to 16 kHz.
"""

import os
import struct

import numpy as np
import soundfile as sf
import soxr
from absl import logging

from convssl_jax import errors
from convssl_jax.data import va as va_lib

SAMPLE_RATE = 16_000  # what the models hear; other rates are resampled when read
INT16_SCALE = 32768.0
_MAX_WAV_CHUNKS = 64
_MAX_EXPANSION = 64  # decoded float32 bytes per file byte believed before decoding (FLAC: ~5)
_READ_BLOCK = 4096  # frames a BlockReader decodes at a time


class AudioError(errors.InputError):
  """An audio file that is missing or cannot be decoded; the message starts with its path."""


def read_audio(path, *, sample_rate: int = 16000) -> np.ndarray:
  """Any file soundfile decodes -> [S, C] float32 in [-1, 1], resampled to `sample_rate`.

  A file holding less audio than its header declares (a cut download or copy) is read as far as
  it goes, with a warning naming it and both durations.
  """
  if not os.path.isfile(path):
    raise AudioError(f'{path}: no such file')
  try:
    with sf.SoundFile(os.fsencode(path)) as f:  # any file name's bytes
      declared, sr = f.frames, f.samplerate
      x = _decode(f, os.path.getsize(path))
  except RuntimeError as err:  # soundfile's LibsndfileError and friends
    raise AudioError(f'{path}: cannot decode audio ({err})') from err
  # libsndfile quietly shortens a WAV's frame count to the bytes present: ask the header itself.
  declared = max(declared, round(len(x) * _wav_data_ratio(path)))
  if declared > len(x):
    logging.warning('%s: the header declares %.2f s of audio but the file holds %.2f s '
                    '(truncated?); using the %.2f s present', path, declared / sr, len(x) / sr,
                    len(x) / sr)
  return resample(x, sr, sample_rate)


def _decode(f: sf.SoundFile, file_bytes: int) -> np.ndarray:
  """Every frame of `f` as [S, C] float32. The header's frame count sizes the buffer only as far
  as the file's size makes it plausible (a 30 kB FLAC may claim 2**36 frames); past that the
  buffer grows as frames are actually decoded, so memory follows the audio, not the header."""
  trusted = _MAX_EXPANSION * file_bytes // (4 * f.channels)
  out = np.empty((max(min(f.frames, trusted), 1), f.channels), np.float32)
  n = 0
  while n < f.frames:
    if n == len(out):
      out = np.concatenate([out, np.empty((min(n, f.frames - n), f.channels), np.float32)])
    got = len(f.read(dtype='float32', always_2d=True, out=out[n:]))
    if not got:
      break
    n += got
  return out[:n]


def _wav_data_ratio(path) -> float:
  """A RIFF WAV's declared data size over the data bytes the file holds (> 1: truncated); 1 for
  other files and for sizes a streaming writer left unknown (0 or 0xFFFFFFFF)."""
  with open(path, 'rb') as f:
    riff = f.read(12)
    if len(riff) < 12 or riff[:4] not in (b'RIFF', b'RIFX') or riff[8:] != b'WAVE':
      return 1.0
    order = '<' if riff[:4] == b'RIFF' else '>'
    for _ in range(_MAX_WAV_CHUNKS):  # fmt, fact, LIST, bext, ... come before the data
      header = f.read(8)
      if len(header) < 8:
        return 1.0
      (size,) = struct.unpack(order + 'I', header[4:])
      if header[:4] == b'data':
        present = os.fstat(f.fileno()).st_size - f.tell()
        return size / present if size not in (0, 0xFFFFFFFF) and present > 0 else 1.0
      f.seek(size + (size & 1), os.SEEK_CUR)
  return 1.0


def check_length(n_samples: int, sample_rate: int, frame_hz: float, *, source) -> None:
  """Refuses (AudioError naming `source`) audio shorter than one model frame at `frame_hz`: a
  prediction over it has no frame. The frame count is the models' (`va.num_frames`)."""
  if va_lib.num_frames(n_samples / sample_rate, frame_hz) < 1:
    raise AudioError(f'{source}: {1000 * n_samples / sample_rate:g} ms of audio, shorter than '
                     f'one model frame; give at least {1000 / frame_hz:g} ms ({frame_hz:g} Hz '
                     'frames)')


def read_stereo(path, *, sample_rate: int = 16000) -> np.ndarray:
  """A recording for the models: [S, 2] float32, one speaker per channel (a mono file is speaker
  A with a silent B). Refuses, naming the file, an empty file, NaN or infinite samples and more
  than two channels."""
  return as_stereo(read_audio(path, sample_rate=sample_rate), source=path)


def as_stereo(wave, *, source) -> np.ndarray:
  """Samples [S] or [S, C] (C = 1 or 2) -> [S, 2] float32 for the models (mono: speaker A, B
  silent); refuses, naming `source`, no samples, NaN or infinite ones and other shapes."""
  wave = np.asarray(wave, np.float32)
  if wave.ndim == 1:
    wave = wave[:, None]
  if wave.ndim != 2:
    raise AudioError(f'{source}: shape {wave.shape}; expected samples [S] or [S, channels]')
  if wave.shape[1] > 2:
    raise AudioError(f'{source}: {wave.shape[1]} channels; expected 1 or 2 (one speaker per '
                     'channel)')
  if not len(wave):
    raise AudioError(f'{source}: holds no samples')
  if not np.isfinite(wave).all():
    raise AudioError(f'{source}: the audio contains NaN or infinite samples')
  if wave.shape[1] == 1:
    wave = np.concatenate([wave, np.zeros_like(wave)], axis=1)
  return wave


class BlockReader:
  """An audio file read forward in pieces at 16 kHz (resampled as it goes), so memory stays bounded
  whatever its length (a live session's partner or file): `take(n)` -> the next [channels, n]
  float32, fewer at the end (`ended` then). At 16 kHz its samples are `read_audio`'s."""

  def __init__(self, path):
    self.path = path
    try:
      self._file = sf.SoundFile(os.fsencode(path))
    except RuntimeError as err:  # soundfile's LibsndfileError and friends
      raise AudioError(f'{path}: cannot decode audio ({err})') from err
    self.channels = self._file.channels
    rate = self._file.samplerate
    self._resampler = (None if rate == SAMPLE_RATE else soxr.ResampleStream(
        rate, SAMPLE_RATE, self.channels, dtype='float32', quality='HQ'))
    self._pending = np.zeros((0, self.channels), np.float32)
    self._read_all = False
    self.ended = False

  def take(self, n: int) -> np.ndarray:
    while len(self._pending) < n and not self._read_all:
      block = self._file.read(_READ_BLOCK, dtype='float32', always_2d=True)
      self._read_all = len(block) < _READ_BLOCK
      if self._resampler is not None:
        block = self._resampler.resample_chunk(block, last=self._read_all)
      if not np.isfinite(block).all():
        raise AudioError(f'{self.path}: the audio contains NaN or infinite samples')
      self._pending = np.concatenate([self._pending, block])
    out, self._pending = self._pending[:n], self._pending[n:]
    self.ended = len(out) < n
    return np.ascontiguousarray(out.T)

  def close(self) -> None:
    self._file.close()


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
