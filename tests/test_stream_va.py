"""`--mode=stream --va`: the mono model streams with the VA it reads, a model that hears audio only
refuses a VA list before anything is loaded, and the VA's times never size memory."""

import csv
import json

import numpy as np
import pytest
import soundfile as sf
from flax import nnx

from configs import vap
from convssl_jax import checkpoints, errors, inference, live, model_state, trainer
from convssl_jax.data import audio as audio_lib
from convssl_jax.data import va as va_lib
from tests import processes

RATE, HZ = 16000, 50


@pytest.mark.parametrize('blocks', [[1] * 40, [3, 0, 7, 1, 29], [150]])
def test_va_frames_block_by_block_equal_the_whole_lists_frames(blocks):
  rng = np.random.default_rng(len(blocks))
  va_list = [np.sort(rng.uniform(0, 3.2, 12)).reshape(-1, 2).tolist() for _ in range(2)]
  va_list[0].append([3.2, 1e300])  # a time too large for integer frames
  stream = va_lib.VAFrameStream(va_list, HZ, source='t')
  got = np.concatenate([stream.take(n) for n in blocks])
  np.testing.assert_array_equal(got, va_lib.va_frames(va_list, sum(blocks), HZ))


def test_va_frames_of_a_stream_cost_the_frames_taken_not_the_lists_last_time():
  # A segment to 2e7 s is 1e9 frames (8 GB as [T, 2] float32, the old stream's VA): the stream
  # hands over 1 s blocks for an hour within 50 MB.
  script = """
      from convssl_jax.data import va
      limit_memory(50)
      stream = va.VAFrameStream([[[0.5, 2e7]], [[1.0, 2.0]]], 50, source='t')
      print(int(sum(stream.take(50)[:, 0].sum() for _ in range(3600))))
  """
  run = processes.run_limited(script)
  assert run.returncode == 0, run.stderr[-2000:]
  assert run.stdout.split() == [str(3600 * 50 - 25)]


def _mono_config():
  return vap.get_config('tiny,mono')


@pytest.fixture(scope='module')
def mono_workdir(tmp_path_factory):
  """A workdir whose best checkpoint is the `tiny,mono` model as initialised (no training: the
  stream is compared with a Streamer over the same weights)."""
  workdir = tmp_path_factory.mktemp('mono')
  model = model_state.ModelState.create(_mono_config())
  store = checkpoints.Checkpoints(workdir / 'checkpoints')
  store.save_best(1, model_state.stored(nnx.State({trainer.MODEL: model.params})), {}, value=1.0)
  store.close()
  return workdir


def test_the_mono_model_streams_stdin_with_va_in_bounded_memory(mono_workdir, tmp_path):
  """3 s of PCM on stdin with a VA list whose last segment ends at 2e7 s, in a run.py capped at
  3 GiB of address space (the old stream allocated the VA's 1e9 frames, 7.45 GiB, and died):
  the outputs equal a Streamer's over the same audio and VA frames."""
  rng = np.random.default_rng(3)
  pcm = audio_lib.to_int16(rng.uniform(0, 0.3, (3 * RATE, 2)) * rng.standard_normal((3 * RATE, 2)))
  va_list = [[[0.5, 1.5], [2.0, 2e7]], [[1.0, 1.2]]]  # B's VA ends before the audio does
  (tmp_path / 'va.json').write_text(json.dumps(va_list))
  done = processes.run_capped(3072, 'run.py', '--config=configs/vap.py:tiny,mono',
                              f'--workdir={mono_workdir}', '--mode=stream', '--audio=-',
                              f'--va={tmp_path / "va.json"}', f'--output={tmp_path / "out"}',
                              input=pcm.tobytes())
  assert done.returncode == 0, done.stderr.decode()[-3000:]
  with open(tmp_path / 'out' / 'stream.csv') as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 150  # every frame, also after B's VA ends
  va = va_lib.va_frames(va_list, 150, HZ)
  np.testing.assert_array_equal([[float(r['va_A']), float(r['va_B'])] for r in rows], va)

  model, _ = trainer.restore_model(_mono_config(), mono_workdir, 'best')
  streamer = inference.streamer_for(model.model(), model.objective, _mono_config())
  want = streamer.push(audio_lib.from_int16(pcm).T, va=va)
  for key in want:
    got = np.array([[float(r[f'{key}_A']), float(r[f'{key}_B'])] for r in rows])
    np.testing.assert_allclose(got, want[key], atol=1e-4, err_msg=key)


def test_a_files_va_past_its_end_is_refused_before_the_stream_starts(tmp_path):
  path = tmp_path / 'd.wav'
  sf.write(path, np.zeros((2 * RATE, 2), np.float32), RATE)
  # No model: the refusal comes before one is used.
  with pytest.raises(errors.InputError, match=f'^{path}: channel 0 segment 0 \\[0.5, 2000000.0\\]: '
                     r'ends after the end of the audio \(2.00 s\)'):
    live.stream(None, _mono_config(), str(path), va_list=[[[0.5, 2e6]], []], pace=False)


def test_a_model_that_hears_audio_only_refuses_va_in_one_line_before_loading(tmp_path):
  (tmp_path / 'va.json').write_text('[[[0.5, 1.0]], []]')
  # The workdir holds no checkpoint: the refusal comes before any loading.
  out = processes.run('run.py', '--config=configs/vap.py:tiny', f'--workdir={tmp_path / "none"}',
                      '--mode=stream', '--audio=-', f'--va={tmp_path / "va.json"}')
  assert out.returncode == 2
  assert out.stderr.strip().splitlines() == [
      'error: --va: this model hears audio only (the stereo model); stream without --va']


def test_a_converted_models_kind_is_read_from_its_config_before_its_weights(tmp_path):
  converted = tmp_path / 'converted'
  converted.mkdir()  # config.json only: loading its weights would fail
  (converted / 'config.json').write_text(json.dumps({'model': vap.get_config('tiny').model.to_dict()}))
  assert live.model_config(vap.get_config('tiny'), converted).kind == 'stereo'
  with pytest.raises(errors.UserError, match='hears audio only'):
    live.check_va(live.model_config(vap.get_config('tiny'), converted), [[], []])
