"""Audio I/O and normalisation (convssl_jax/data/audio.py), against hand-derived numbers."""

import logging

import numpy as np
import pytest
import soundfile as sf

from convssl_jax.data import audio
from tests import processes


def test_peak_normalize_scales_only_channels_above_threshold():
  x = np.zeros((4, 3), np.float32)
  x[:, 0] = [0.0, 0.2, -0.4, 0.1]  # peak 0.4 > 0.05: divided by 0.4
  x[:, 1] = [0.05, -0.05, 0.0, 0.01]  # peak exactly 0.05: not strictly above, unchanged
  x[:, 2] = [0.0, 0.0501, 0.0, 0.0]  # just above: scaled to peak 1
  y = audio.peak_normalize(x)
  np.testing.assert_allclose(y[:, 0], [0.0, 0.5, -1.0, 0.25], rtol=1e-6)
  np.testing.assert_array_equal(y[:, 1], x[:, 1])
  np.testing.assert_allclose(y[:, 2], [0.0, 1.0, 0.0, 0.0], rtol=1e-6)
  assert y.dtype == np.float32


def test_peak_normalize_batched_and_custom_threshold():
  x = np.array([[[0.5], [0.25]], [[0.02], [-0.01]]], np.float32)  # [2, S=2, C=1]
  np.testing.assert_allclose(audio.peak_normalize(x)[:, :, 0], [[1.0, 0.5], [0.02, -0.01]])
  np.testing.assert_allclose(audio.peak_normalize(x, threshold=0.01)[1, :, 0], [1.0, -0.5])


def test_mono_mix_averages_then_renormalises():
  x = np.array([[0.5, 0.1], [0.0, -0.3], [0.2, 0.2]], np.float32)
  # mean: [0.3, -0.15, 0.2], peak 0.3 > 0.05 -> [1, -0.5, 2/3]
  np.testing.assert_allclose(audio.mono_mix(x), [1.0, -0.5, 2 / 3], rtol=1e-6)
  quiet = np.array([[0.04, 0.0], [0.0, -0.02]], np.float32)  # mean peak 0.02: unchanged
  np.testing.assert_allclose(audio.mono_mix(quiet), [0.02, -0.01], rtol=1e-6)


def test_mono_mix_of_opposite_channels_is_silent():
  x = np.stack([np.linspace(-1, 1, 8), -np.linspace(-1, 1, 8)], axis=1).astype(np.float32)
  np.testing.assert_array_equal(audio.mono_mix(x), np.zeros(8, np.float32))


def test_resample_doubles_length_and_keeps_sine_frequency():
  sr_in, sr_out, seconds, hz = 8000, 16000, 1.0, 440.0
  t = np.arange(int(sr_in * seconds)) / sr_in
  x = np.stack([np.sin(2 * np.pi * hz * t), 0.5 * np.sin(2 * np.pi * 2 * hz * t)], 1)
  y = audio.resample(x.astype(np.float32), sr_in, sr_out)
  assert y.shape == (16000, 2) and y.dtype == np.float32
  for c, expected_hz in enumerate([hz, 2 * hz]):
    spectrum = np.abs(np.fft.rfft(y[:, c]))
    assert np.argmax(spectrum) * sr_out / len(y) == pytest.approx(expected_hz, abs=1.0)
  # Away from the edges the upsampled signal is the analytic sine at the new rate.
  t_out = np.arange(16000) / sr_out
  np.testing.assert_allclose(y[2000:14000, 0], np.sin(2 * np.pi * hz * t_out)[2000:14000],
                             atol=1e-3)


def test_resample_same_rate_is_identity():
  x = np.random.default_rng(0).standard_normal((100, 2)).astype(np.float32)
  np.testing.assert_array_equal(audio.resample(x, 16000, 16000), x)


def test_int16_round_trip_and_clipping():
  x = np.array([0.0, 0.5, -0.5, -1.0, 1.0, 2.0, -2.0, 1 / 32768], np.float32)
  q = audio.to_int16(x)
  np.testing.assert_array_equal(q, [0, 16384, -16384, -32768, 32767, 32767, -32768, 1])
  assert q.dtype == np.int16
  np.testing.assert_array_equal(audio.from_int16(q)[:4], x[:4])
  grid = np.arange(-32768, 32768, 7, dtype=np.int16)
  np.testing.assert_array_equal(audio.to_int16(audio.from_int16(grid)), grid)
  noise = np.random.default_rng(0).uniform(-0.99, 0.99, 1000).astype(np.float32)
  assert np.max(np.abs(audio.from_int16(audio.to_int16(noise)) - noise)) <= 0.5 / 32768 + 1e-9


def test_read_audio_resamples_stereo_wav(tmp_path):
  path = tmp_path / 'dialog.wav'
  x = np.zeros((8000, 2), np.float32)
  x[:, 0] = 0.5
  sf.write(path, x, 8000, subtype='PCM_16')
  y = audio.read_audio(path)
  assert y.shape == (16000, 2) and y.dtype == np.float32
  np.testing.assert_allclose(y[1000:15000, 0], 0.5, atol=1e-3)
  np.testing.assert_allclose(y[:, 1], 0.0, atol=1e-6)
  same = audio.read_audio(path, sample_rate=8000)
  np.testing.assert_array_equal(same, x)


def test_read_audio_mono_file_is_2d(tmp_path):
  path = tmp_path / 'mono.flac'
  sf.write(path, np.full(160, 0.25, np.float32), 16000)
  assert audio.read_audio(path).shape == (160, 1)


def test_read_audio_missing_file_names_path(tmp_path):
  path = tmp_path / 'missing.wav'
  with pytest.raises(audio.AudioError, match='missing.wav'):
    audio.read_audio(path)


def test_read_audio_garbage_file_names_path(tmp_path):
  path = tmp_path / 'garbage.wav'
  path.write_bytes(b'not audio at all' * 8)
  with pytest.raises(ValueError, match='garbage.wav') as err:
    audio.read_audio(path)
  assert str(err.value).startswith(str(path))


def test_int16_normalised_fast_path_equals_peak_normalize_of_the_float_audio():
  rng = np.random.default_rng(0)
  loud = (rng.uniform(-0.6, 0.6, (2, 4000)) * 32768).astype(np.int16)
  quiet = (rng.uniform(-0.01, 0.01, (2, 4000)) * 32768).astype(np.int16)
  for x in (loud, quiet, np.stack([loud[0], quiet[1]])):
    expected = audio.peak_normalize(audio.from_int16(x), sample_axis=-1)
    np.testing.assert_allclose(audio.from_int16_normalized(x), expected, rtol=1e-6, atol=1e-9)
  extreme = np.array([[-32768, 0, 100]], np.int16)  # |min| has no int16 representation
  np.testing.assert_allclose(audio.from_int16_normalized(extreme), [[-1.0, 0.0, 100 / 32768]])


# Files that lie about their length, and audio too short for a frame.

def _truncated_wav(path, seconds: float, keep_s: float, **header):
  """A 16 kHz stereo PCM_16 WAV of `seconds` cut after `keep_s` (a cut download or copy)."""
  x = np.random.default_rng(0).uniform(-0.5, 0.5, (int(seconds * 16000), 2)).astype(np.float32)
  sf.write(path, x, 16000, subtype='PCM_16')
  data = path.read_bytes()
  assert data[36:40] == b'data'  # soundfile writes fmt then data: the data starts at byte 44
  path.write_bytes(data[:44 + int(keep_s * 16000) * 4])
  return x[:int(keep_s * 16000)]


def test_a_wav_holding_less_than_its_header_declares_is_read_with_a_warning(tmp_path, caplog):
  path = tmp_path / 'cut.wav'
  kept = _truncated_wav(path, 10.0, 3.3)
  with caplog.at_level(logging.WARNING):
    x = audio.read_audio(path)
  np.testing.assert_allclose(x, kept, atol=1 / 32768)
  (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert warning == (f'{path}: the header declares 10.00 s of audio but the file holds 3.30 s '
                     '(truncated?); using the 3.30 s present')


def test_whole_wavs_and_streamed_wavs_of_unknown_length_read_without_a_warning(tmp_path, caplog):
  whole, streamed = tmp_path / 'whole.wav', tmp_path / 'streamed.wav'
  x = _truncated_wav(whole, 2.0, 2.0)
  data = bytearray(whole.read_bytes())
  data[40:44] = b'\xff\xff\xff\xff'  # what a writer to a pipe leaves: the size is not known
  streamed.write_bytes(bytes(data))
  with caplog.at_level(logging.WARNING):
    for path in (whole, streamed):
      np.testing.assert_allclose(audio.read_audio(path), x, atol=1 / 32768)
  assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_header_claiming_huge_length_costs_no_memory_for_it(tmp_path):
  # A 1 s FLAC whose STREAMINFO claims 2**35 frames (24 days, 137 GB as float32) used to be
  # allocated up front (MemoryError). Now memory follows what decodes: read, or refused naming it.
  path = tmp_path / 'liar.flac'
  sf.write(path, np.random.default_rng(0).uniform(-0.5, 0.5, 16000).astype(np.float32), 16000)
  data = bytearray(path.read_bytes())
  assert data[:4] == b'fLaC' and data[4] & 0x7F == 0  # STREAMINFO: total samples in bits 108-143
  data[8 + 13] = (data[8 + 13] & 0xF0) | 0x08
  data[8 + 14:8 + 18] = b'\0\0\0\0'
  path.write_bytes(bytes(data))
  assert sf.info(path).frames == 2**35
  script = """
      import sys
      from convssl_jax.data import audio
      limit_memory(100)
      try:
        print('read', audio.read_audio(sys.argv[1]).shape)
      except audio.AudioError as err:
        print('refused', err)
  """
  run = processes.run_limited(script, str(path))
  assert run.returncode == 0, run.stderr[-2000:]
  assert run.stdout.startswith('read (16000, 1)') or run.stdout.startswith(f'refused {path}: ')


@pytest.mark.parametrize('samples, rate, hz, refused', [
    (1, 16000, 50, True), (319, 16000, 50, True), (320, 16000, 50, False),
    (159, 16000, 100, True), (160, 16000, 100, False), (799, 16000, 20, True),
    (800, 16000, 20, False), (399, 8000, 20, True),
])
def test_audio_shorter_than_one_frame_is_refused(samples, rate, hz, refused):
  # One frame is 1 / hz seconds: 320 samples at 16 kHz and 50 Hz.
  if not refused:
    audio.check_length(samples, rate, hz, source='a.wav')
    return
  with pytest.raises(audio.AudioError, match=f'^a.wav: .* ms of audio, shorter than one model '
                     f'frame; give at least {1000 // hz} ms'):
    audio.check_length(samples, rate, hz, source='a.wav')
