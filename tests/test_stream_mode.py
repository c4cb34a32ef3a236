"""Live streaming: sources, the terminal bar, and `run.py --mode=stream`."""

import csv
import io
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf

from convssl_jax import inference, live, predict, trainer
from convssl_jax.data import audio as audio_lib
from tests import processes

RATE = 16000


def test_pcm_source_decodes_interleaved_int16_stereo_in_blocks():
  pcm = np.arange(-1000, 1000, dtype='<i2').reshape(-1, 2)  # 1000 stereo frames
  data = pcm.tobytes() + b'\x01'  # a stray trailing byte is dropped
  blocks = list(live.pcm_source(io.BytesIO(data), block_s=0.02))
  assert [b.shape for b in blocks] == [(2, 320)] * 3 + [(2, 40)]
  np.testing.assert_array_equal(np.concatenate(blocks, axis=1), pcm.T / 32768.0)


def test_a_file_source_is_paced_in_real_time_and_a_mono_file_is_speaker_a(tmp_path):
  path = tmp_path / 'a.wav'
  wave = (0.1 * np.random.default_rng(0).standard_normal(int(0.3 * RATE))).astype(np.float32)
  sf.write(path, wave, RATE, subtype='FLOAT')
  start = time.perf_counter()
  blocks = list(live.file_source(path, block_s=0.05, pace=True))
  assert time.perf_counter() - start >= 0.28  # 0.3 s of audio released as it would be heard
  joined = np.concatenate(blocks, axis=1)
  np.testing.assert_array_equal(joined[0], wave)
  assert not joined[1].any()


@pytest.mark.parametrize('samples, message', [
    (np.full((1600, 2), np.nan, np.float32), 'NaN or infinite'),
    (np.zeros((0, 2), np.float32), 'no samples'),
])
def test_a_file_source_refuses_bad_audio_naming_the_file(tmp_path, samples, message):
  path = tmp_path / 'bad.wav'
  sf.write(path, samples, RATE, subtype='FLOAT')
  with pytest.raises(audio_lib.AudioError, match=f'{path}.*{message}'):
    next(live.file_source(path, pace=False))


def test_a_file_at_another_rate_is_resampled_with_a_notice(tmp_path, capsys):
  path = tmp_path / 'low.wav'
  sf.write(path, np.zeros((800, 2), np.float32), 8000)
  predict.notice_rate(path)
  assert f'{path}: 8000 Hz, resampled to 16000 Hz' in capsys.readouterr().err
  assert sum(b.shape[1] for b in live.file_source(path, pace=False)) == 1600


def test_the_microphone_source_names_its_missing_dependency(monkeypatch):
  monkeypatch.setitem(sys.modules, 'sounddevice', None)  # as if not installed
  with pytest.raises(RuntimeError, match='sounddevice'):
    next(live.mic_source())


def test_the_bar_points_to_the_likely_next_speaker():
  frame = {'p_future': np.array([0.8, 0.2]), 'vad': np.array([0.9, 0.1])}
  line = live.bar(frame, 1.5, width=10)
  assert '1.50s  A ########.. B  p_future A 0.80' in line and 'vad A 0.90 B 0.10' in line


@pytest.fixture(scope='module')
def stream_audio(tmp_path_factory):
  """3 s of stereo speech-like noise as int16 PCM."""
  rng = np.random.default_rng(3)
  gain = np.repeat(rng.uniform(0, 0.4, (30, 2)), RATE // 10, axis=0)
  return audio_lib.to_int16(gain * rng.standard_normal((3 * RATE, 2)))


def test_stream_mode_on_stdin_pcm_equals_the_streamer(tiny_run, stream_audio, tmp_path):
  """`run.py --mode=stream --audio=-` over a trained model: its CSV equals a Streamer over the
  same audio with the same 2 s context, and it reports its latency."""
  config, workdir = tiny_run
  args = [sys.executable, 'run.py', '--config=configs/vap.py:tiny', f'--workdir={workdir}',
          f'--config.data.data_dir={config.data.data_dir}', '--mode=stream', '--audio=-',
          '--context_s=2', f'--output={tmp_path}']
  done = subprocess.run(args, cwd=processes.REPO, env=processes.env(), capture_output=True,
                        input=stream_audio.tobytes(), timeout=300, check=False)
  stderr = done.stderr.decode()
  assert done.returncode == 0, stderr[-3000:]
  assert 'latency median' in stderr and '2 s of attention context' in stderr
  lines = done.stdout.decode().splitlines()
  assert len(lines) == 30 and lines[0].strip().startswith('0.00s  A')  # a line per 0.1 s

  model, _ = trainer.restore_model(config, workdir, 'best')
  streamer = inference.Streamer(model.model(), model.objective, context=2 * config.model.frame_hz)
  want = streamer.push(audio_lib.from_int16(stream_audio).T)
  with open(tmp_path / 'stream.csv') as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 150
  for key in ('p_now', 'p_future', 'p_bc', 'vad'):
    for i, speaker in enumerate('AB'):
      got = np.array([float(r[f'{key}_{speaker}']) for r in rows])
      np.testing.assert_allclose(got, want[key][:, i], atol=1e-4, err_msg=key)


def test_stream_mode_refuses_the_mono_model_without_va(tiny_run, tmp_path):
  config, workdir = tiny_run
  out = processes.run('run.py', '--config=configs/vap.py:tiny,mono', f'--workdir={workdir}',
                      '--mode=stream', '--audio=-')
  assert out.returncode != 0 and 'give --va' in out.stderr
