"""`convssl_jax.load(path)`: a trained workdir or a converted model -> `.predict` (what the CLI's
prediction JSON holds) and `.streamer()`."""

import json

import numpy as np
import pytest
import soundfile as sf

import convssl_jax
from convssl_jax import errors, objective as objective_lib
from convssl_jax.data import audio
from tests import processes

FIELDS = ('va', 'p_now', 'p_future', 'p_bc', 'vad')


def _dialog() -> np.ndarray:
  """4 s of stereo noise bursts (speaker A, then B), [S, 2] float32 at 16 kHz, on the 16-bit grid
  (prediction hears recordings as 16-bit samples, as the corpora store them)."""
  rng = np.random.default_rng(1)
  wave = np.zeros((4 * 16000, 2), np.float32)
  wave[:24000, 0] = 0.3 * rng.standard_normal(24000)
  wave[28000:56000, 1] = 0.3 * rng.standard_normal(28000)
  return audio.from_int16(audio.to_int16(wave))


VA_LIST = [[[0.0, 1.5]], [[1.75, 3.5]]]


@pytest.fixture(scope='module')
def cli_prediction(tiny_cli_run, tmp_path_factory):
  """(wav path, the JSON `run.py --mode=predict --workdir=W` wrote) with a VA list: the workdir
  alone, no --config."""
  folder = tmp_path_factory.mktemp('api')
  wav, va = folder / 'talk.wav', folder / 'talk_va.json'
  sf.write(wav, _dialog(), 16000, subtype='FLOAT')
  va.write_text(json.dumps(VA_LIST))
  out = processes.run('run.py', '--mode=predict', f'--workdir={tiny_cli_run}', f'--audio={wav}',
                      f'--va={va}', f'--output={folder / "out"}')
  assert out.returncode == 0, out.stderr[-3000:]  # before: an Orbax shape mismatch, 86 lines
  return wav, va, json.loads((folder / 'out' / 'talk.json').read_text())


@pytest.fixture(scope='module')
def trained(tiny_cli_run):
  return convssl_jax.load(tiny_cli_run)


def test_predict_gives_what_the_clis_json_holds(trained, cli_prediction, tiny_cli_run):
  wav, va, written = cli_prediction
  got = trained.predict(wav, va=va)
  assert got['frame_hz'] == written['frame_hz'] == 50
  np.testing.assert_allclose(got['time'], written['time'], atol=1e-6)
  for key in (*FIELDS, 'p'):
    for i, speaker in enumerate('AB'):
      np.testing.assert_allclose(got[key][:, i], written[f'{key}_{speaker}'], atol=1e-5,
                                 err_msg=key)
  assert got['events'] == written['events'] and got['vad_list'] == written['vad_list']
  assert trained.source == f'{tiny_cli_run} (best checkpoint, step 2)'


def test_predict_takes_samples_and_a_va_list_as_well_as_files(trained, cli_prediction):
  wav, va, _ = cli_prediction
  from_files = trained.predict(wav, va=va)
  from_arrays = trained.predict(_dialog(), va=VA_LIST)
  for key in (*FIELDS, 'p'):
    np.testing.assert_allclose(from_arrays[key], from_files[key], atol=1e-6, err_msg=key)
  assert from_arrays['events'] == from_files['events']
  mono = trained.predict(_dialog()[:, 0])  # one channel: speaker A, B silent
  a_only = trained.predict(_dialog() * np.array([1, 0], np.float32))
  np.testing.assert_allclose(mono['vad'], a_only['vad'], atol=1e-6)
  assert 'p' not in mono and mono['events'] == []  # no VA list: no next-speaker curve, no events


def test_the_streamer_gives_the_offline_prediction(trained):
  """Audio shorter than the model's window (tiny: 5 s) sees the same context live and offline."""
  wave = _dialog()
  offline = trained.predict(wave)
  streamer = trained.streamer()
  live = {}
  for start in range(0, len(wave), 3000):  # uneven pushes
    for key, value in streamer.push(wave[start:start + 3000].T).items():
      live.setdefault(key, []).append(value)
  for key, tolerance in (('p_now', 1e-4), ('p_future', 1e-4), ('vad', 1e-4), ('p_bc', 1e-4)):
    assert np.ptp(offline[key]) > 20 * tolerance, key  # curves that move, or this shows nothing
    np.testing.assert_allclose(np.concatenate(live[key]), offline[key], atol=tolerance,
                               err_msg=key)


def test_bad_audio_is_refused_naming_it(trained):
  with pytest.raises(errors.InputError, match=r'the audio array: shape \(2, 3, 4\)'):
    trained.predict(np.zeros((2, 3, 4), np.float32))
  with pytest.raises(errors.InputError, match='the audio array: the audio contains NaN'):
    trained.predict(np.full((16000, 2), np.nan, np.float32))


def test_a_converted_model_predicts_like_its_own_forward(tmp_path):
  """A `python -m checkpoints_convert vap` directory (as tests/test_convert_vap.py makes one):
  its prediction over audio shorter than its 20 s window equals its forward on that audio
  zero-padded to the window; it cannot stream (CPC in 'reference' padding looks ahead)."""
  import jax.numpy as jnp
  from flax import nnx

  from checkpoints_convert import __main__ as convert
  from convssl_jax import models
  from tests.test_convert_vap import FIXTURES

  directory = tmp_path / 'model'
  convert.main(['vap', str(FIXTURES / 'vap_state_dict.pt'), str(directory)])
  model = convssl_jax.load(directory)
  assert model.source == f'{directory} (converted)'
  wave = _dialog()[:3 * 16000]
  got = model.predict(wave)
  module, cfg = models.load_model(directory)
  padded = np.zeros((1, 2, 20 * 16000), np.float32)
  padded[0, :, :len(wave)] = wave.T
  out = nnx.jit(lambda m, w: m(w))(module, jnp.asarray(padded))
  want = objective_lib.frame_outputs(objective_lib.for_model(cfg), out, frames=3 * cfg.frame_hz)
  for key in ('p_now', 'p_future', 'p_bc', 'vad'):
    np.testing.assert_allclose(got[key], np.asarray(want[key])[0], atol=1e-5, err_msg=key)
  with pytest.raises(ValueError, match="causal"):
    model.streamer()


def test_a_folder_that_is_neither_is_refused_saying_how_to_make_one(tmp_path):
  with pytest.raises(errors.NotFoundError, match='neither a trained workdir .* nor a converted'):
    convssl_jax.load(tmp_path)


def test_importing_the_package_stays_cheap():
  out = processes.run('-c', 'import sys, convssl_jax; assert "jax" not in sys.modules; '
                      'assert callable(convssl_jax.load); print("jax" in sys.modules)')
  assert out.returncode == 0 and out.stdout.strip() == 'True', out.stderr[-2000:]
