"""VoiceActivityProjection stereo model -> StereoVAP: parity with a PyTorch VapGPT written from
reference/data_and_stereo_spec.md (torch_writers/vap.py: CPC hidden 32, 4 heads, 1 + 2 layers,
perturbed weights) in the [main] state-dict and [newMaster] Lightning layouts; refusals."""

import pathlib

import jax
import numpy as np
import pytest
from flax import nnx

from checkpoints_convert import __main__ as cli
from checkpoints_convert import keys, torch_file
from checkpoints_convert import vap as convert_vap
from convssl_jax import models, objective as objective_lib
from convssl_jax.models import pretrained

FIXTURES = pathlib.Path(__file__).parent / 'fixtures' / 'torch' / 'vap'
TOL = dict(atol=1e-4, rtol=1e-4)
INPUTS = dict(np.load(FIXTURES / 'inputs.npz'))
EXPECTED = dict(np.load(FIXTURES / 'out.npz'))
_forward = nnx.jit(lambda model, wave: model(wave))


@pytest.fixture(scope='module', params=['vap_state_dict.pt', 'vap_lightning.ckpt'])
def converted(request, tmp_path_factory):
  dst = tmp_path_factory.mktemp('vap') / 'model'
  cli.main(['vap', str(FIXTURES / request.param), str(dst)])
  return request.param, dst


def test_the_converted_model_matches_pytorch_logits_and_vad(converted):
  name, dst = converted
  model, cfg = models.load_model(dst)
  assert isinstance(model, models.StereoVAP)
  assert (cfg.dim, cfg.frame_hz, cfg.encoder.padding, cfg.encoder.lstm_layers) == (
      32, 50, 'reference', 1)
  assert (cfg.transformer.num_heads, cfg.transformer.self_layers,
          cfg.transformer.cross_layers, cfg.transformer.ffn_mult) == (4, 1, 2, 3)
  diff = 0.0
  for case, wave in INPUTS.items():
    out = _forward(model, wave)
    for key in ('logits', 'vad'):
      np.testing.assert_allclose(out[key], EXPECTED[f'{key}_{case}'], **TOL, err_msg=case)
      diff = max(diff, float(np.abs(np.asarray(out[key]) - EXPECTED[f'{key}_{case}']).max()))
  print(name, f'max |diff| {diff:.1e}')


def test_the_lightning_hyper_parameters_load_as_a_plain_dict():
  checkpoint = torch_file.load(FIXTURES / 'vap_lightning.ckpt')
  assert type(checkpoint['hyper_parameters']) is dict
  assert checkpoint['hyper_parameters']['conf'] == {'model': {'dim': 32}}
  assert convert_vap.convert(FIXTURES / 'vap_lightning.ckpt')[0]['ignored_keys'] == [
      'model.objective.codebook.emb.weight']


def test_the_attention_scale_quirk_is_needed(converted):
  """Scaling scores by 1/sqrt(head dim), the usual choice, misses the reference by far more."""
  _, dst = converted
  model, _ = models.load_model(dst)
  for _, module in nnx.iter_graph(model):
    if hasattr(module, 'scale') and hasattr(module, 'num_heads'):
      module.scale *= 2.0  # head dim 8 = dim 32 / 4 heads: sqrt(32 / 8) = 2
  out = nnx.jit(lambda model, wave: model(wave))(model, INPUTS['len16000'])
  with pytest.raises(AssertionError):
    np.testing.assert_allclose(out['logits'], EXPECTED['logits_len16000'], **TOL)


def _patched(monkeypatch, change):
  checkpoint = torch_file.load(FIXTURES / 'vap_state_dict.pt')
  change(checkpoint)
  monkeypatch.setattr(torch_file, 'load', lambda path, **kwargs: checkpoint)


def test_missing_and_unknown_keys_are_named(monkeypatch):
  def change(checkpoint):
    del checkpoint['ar.layers.1.mha_cross.value.weight']
    checkpoint['ar.extra.weight'] = np.zeros(3, np.float32)
  _patched(monkeypatch, change)
  with pytest.raises(keys.ConversionError) as error:
    convert_vap.convert('x.pt')
  assert 'missing ar.layers.1.mha_cross.value.weight' in str(error.value)
  assert 'unknown ar.extra.weight' in str(error.value)


def test_non_standard_alibi_slopes_are_refused(monkeypatch):
  _patched(monkeypatch, lambda c: c['ar.layers.0.mha.m'].__imul__(2.0))
  with pytest.raises(keys.ConversionError, match=r'ar\.layers\.0\.mha\.m holds ALiBi slopes'):
    convert_vap.convert('x.pt')


def test_a_feature_projection_is_refused(monkeypatch):
  _patched(monkeypatch, lambda c: c.update({'feature_projection.0.weight': np.zeros(2)}))
  with pytest.raises(keys.ConversionError, match='feature_projection'):
    convert_vap.convert('x.pt')


def test_load_model_refuses_an_encoder_and_load_encoder_a_model(tmp_path, converted):
  _, dst = converted
  with pytest.raises(ValueError, match="encoder 'vap' is not supported"):
    models.load_encoder(dst)
  cli.main(['cpc', str(FIXTURES.parent / 'cpc' / 'cpc_l1.pt'), str(tmp_path / 'cpc')])
  with pytest.raises(ValueError, match="a converted 'cpc' encoder, not a VAP model"):
    models.load_model(tmp_path / 'cpc')


# conv_ssl's mono Lightning checkpoint (torch_writers/vap.py `write_conv_ssl`: CPC hidden 32, 4
# heads, 2 GPT layers with the double residual, no slopes in the state dict), and the same weights
# in conv_ssl's later layer layout (ln_self_attn, a single residual).

CONV_SSL = FIXTURES.parent / 'conv_ssl'
CONV_SSL_INPUTS = dict(np.load(CONV_SSL / 'inputs.npz'))
CONV_SSL_EXPECTED = dict(np.load(CONV_SSL / 'out.npz'))
_mono = nnx.jit(lambda model, wave, va, history: model(wave, va, history)['logits'])


def _mono_logits(model, case):
  return _mono(model, *(CONV_SSL_INPUTS[f'{k}_{case}'] for k in ('wave', 'va', 'history')))


@pytest.mark.parametrize('layout, file, double_residual', [
    ('2022', 'conv_ssl.ckpt', True), ('later', 'conv_ssl_later.ckpt', False)])
def test_the_residual_follows_the_layer_layout(tmp_path, layout, file, double_residual):
  dst = tmp_path / 'model'
  cli.main(['conv_ssl', str(CONV_SSL / file), str(dst)])
  model, cfg = models.load_model(dst)
  assert cfg.transformer.double_residual == double_residual
  expected = 'logits_{}' if layout == '2022' else 'logits_later_{}'
  for case in ('len16000', 'quiet'):
    np.testing.assert_allclose(_mono_logits(model, case),
                               CONV_SSL_EXPECTED[expected.format(case)], **TOL, err_msg=case)


def test_the_early_va_conditioning_names_convert_to_the_same_model(monkeypatch):
  checkpoint = torch_file.load(CONV_SSL / 'conv_ssl.ckpt')
  _, params = convert_vap.convert_conv_ssl(CONV_SSL / 'conv_ssl.ckpt')
  state = checkpoint['state_dict']
  for k in [k for k in state if k.startswith('net.vad_condition.va_')]:
    state[k.replace('.va_', '.vad_')] = state.pop(k)  # conv_ssl's early vad_condition/vad_history
  monkeypatch.setattr(torch_file, 'load', lambda path, **kwargs: checkpoint)
  _, early = convert_vap.convert_conv_ssl('x.ckpt')
  jax.tree.map(np.testing.assert_array_equal, early, params)


def test_a_stored_data_conf_gives_the_converted_models_windows(monkeypatch):
  checkpoint = torch_file.load(CONV_SSL / 'conv_ssl.ckpt')
  checkpoint['hyper_parameters']['conf']['data'] = {'audio_duration': 10, 'audio_normalize': False}
  monkeypatch.setattr(torch_file, 'load', lambda path, **kwargs: checkpoint)
  converted, _ = convert_vap.convert_conv_ssl('x.ckpt')
  assert converted['data'] == {'window_s': 10.0, 'normalize': False}


def test_one_tensor_in_two_namings_is_refused(monkeypatch):
  checkpoint = torch_file.load(CONV_SSL / 'conv_ssl.ckpt')
  state = checkpoint['state_dict']
  state['net.vad_condition.vad_history.weight'] = state['net.vad_condition.va_history.weight']
  monkeypatch.setattr(torch_file, 'load', lambda path, **kwargs: checkpoint)
  with pytest.raises(keys.ConversionError, match=r'vad_history.weight and .* in two namings'):
    convert_vap.convert_conv_ssl('x.ckpt')


def test_mixed_layer_layouts_are_refused(monkeypatch):
  checkpoint = torch_file.load(CONV_SSL / 'conv_ssl.ckpt')
  state = checkpoint['state_dict']
  for k in [k for k in state if k.startswith('net.ar.ar.layers.1.ln_multihead.')]:
    state[k.replace('ln_multihead', 'ln_self_attn')] = state.pop(k)
  monkeypatch.setattr(torch_file, 'load', lambda path, **kwargs: checkpoint)
  with pytest.raises(keys.ConversionError, match=r"LayerNorms \['ln_multihead', 'ln_self_attn'\]"):
    convert_vap.convert_conv_ssl('x.ckpt')


@pytest.fixture(scope='module')
def conv_ssl_dir(tmp_path_factory):
  dst = tmp_path_factory.mktemp('conv_ssl') / 'model'
  cli.main(['conv_ssl', str(CONV_SSL / 'conv_ssl.ckpt'), str(dst)])
  return dst


def test_the_converted_mono_model_matches_pytorch(conv_ssl_dir):
  model, cfg = models.load_model(conv_ssl_dir)
  assert isinstance(model, models.MonoVAP)
  assert (cfg.transformer.num_heads, cfg.transformer.num_layers, cfg.va_cond.history_bins,
          cfg.transformer.double_residual) == (4, 2, 5, True)
  # The paper-B scripts' 20-s chunks at 50 Hz, peak-normalised (the file stores no conf['data']).
  assert pretrained.read_config(conv_ssl_dir)['data'] == {'window_s': 20.0, 'normalize': True}
  diff = 0.0
  for case in ('len16000', 'quiet'):
    logits = _mono_logits(model, case)
    np.testing.assert_allclose(logits, CONV_SSL_EXPECTED[f'logits_{case}'], **TOL, err_msg=case)
    diff = max(diff, float(np.abs(np.asarray(logits) - CONV_SSL_EXPECTED[f'logits_{case}']).max()))
  print(f'conv_ssl max |diff| {diff:.1e}')


def test_the_double_residual_quirk_is_needed(conv_ssl_dir):
  model, _ = models.load_model(conv_ssl_dir)
  for layer in model.transformer.layers:
    layer.double_residual = False
  logits = nnx.jit(lambda m, *a: m(*a)['logits'])(
      model, *(CONV_SSL_INPUTS[f'{k}_len16000'] for k in ('wave', 'va', 'history')))
  with pytest.raises(AssertionError):
    np.testing.assert_allclose(logits, CONV_SSL_EXPECTED['logits_len16000'], **TOL)


def test_conv_ssl_without_slopes_or_stored_heads_is_refused(monkeypatch):
  checkpoint = torch_file.load(CONV_SSL / 'conv_ssl.ckpt')
  checkpoint['hyper_parameters'] = {}
  monkeypatch.setattr(torch_file, 'load', lambda path, **kwargs: checkpoint)
  with pytest.raises(keys.ConversionError, match=r'head count is neither .*num_heads'):
    convert_vap.convert_conv_ssl('x.ckpt')


def test_a_converted_model_predicts_on_a_recording_like_its_own_forward(converted, tmp_path):
  """`run.py --mode=predict --model_dir=DIR`'s path: the converted model inside a Trainer, over a
  file shorter than one window, equals the model's forward on the same audio (zero-padded to the
  window, as the evaluation's windows are)."""
  import jax.numpy as jnp
  import soundfile as sf

  from configs import vap as vap_config
  from convssl_jax import model_state, predict

  _, directory = converted
  config = vap_config.get_config('tiny')
  model, config = model_state.converted(config, directory)
  # The stereo recipe's windows and normalisation replace the tiny config's (5 s, normalised) ...
  assert (config.data.window_s, config.data.normalize) == (20.0, False)
  # ... but for the fields given on the command line.
  _, kept = model_state.converted(vap_config.get_config('tiny'), directory, {'window_s'})
  assert (kept.data.window_s, kept.data.normalize) == (5.0, False)
  rng = np.random.default_rng(0)
  wave = (0.2 * rng.standard_normal((3 * 16000, 2))).astype(np.float32)
  sf.write(tmp_path / 'talk.wav', wave, 16000, subtype='FLOAT')
  got = predict.predict_file(model, config, tmp_path / 'talk.wav')
  converted, cfg = models.load_model(directory)
  padded = np.zeros((1, 2, 20 * 16000), np.float32)
  padded[0, :, :3 * 16000] = wave.T
  out = _forward(converted, jnp.asarray(padded))
  frames = 3 * cfg.frame_hz
  want = objective_lib.frame_outputs(model.objective, out, frames=frames)
  for key in ('p_now', 'p_future', 'p_bc', 'vad'):
    np.testing.assert_allclose(got[key], np.asarray(want[key])[0], atol=1e-5, err_msg=key)
