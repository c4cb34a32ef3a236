"""CPC_audio -> CPCEncoder conversion: parity with PyTorch, the CLI, refusals, frozen training.

The fixtures (tests/fixtures/torch_writers/cpc.py) are a PyTorch CPC (hidden 32, perturbed
weights) in CPC_audio's hub format with torch's outputs; no torch is needed here.
"""

import json
import logging
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from checkpoints_convert import __main__ as cli
from checkpoints_convert import cpc as convert_cpc
from checkpoints_convert import torch_file
from configs import vap
from convssl_jax import errors, models
from convssl_jax.models import cpc, pretrained
from tests import frozen_training

FIXTURES = pathlib.Path(__file__).parent / 'fixtures' / 'torch' / 'cpc'
NAMES = ('cpc_l1', 'cpc_l2')  # 1 and 2 LSTM layers
TOL = dict(atol=1e-4, rtol=1e-4)
INPUTS = dict(np.load(FIXTURES / 'inputs.npz'))

_forward = nnx.jit(lambda encoder, wave: (encoder.conv_features(wave), encoder(wave)))


def _expected(name: str) -> dict[str, np.ndarray]:
  return dict(np.load(FIXTURES / f'{name}.out.npz'))


def _encoder(config: dict, params: dict) -> cpc.CPCEncoder:
  encoder = cpc.CPCEncoder(**config, rngs=nnx.Rngs(0))
  pretrained.assign(encoder, params)
  return encoder


@pytest.fixture(scope='module', params=NAMES)
def converted(request):
  """(fixture name, encoder config, converted params)."""
  return (request.param, *convert_cpc.convert(FIXTURES / f'{request.param}.pt'))


def _max_diffs(encoder, expected, forward=_forward) -> dict[str, float]:
  """Max |ours - torch| of z and c over every fixture input."""
  diffs = {'z': 0.0, 'c': 0.0}
  for case, wave in INPUTS.items():
    for key, ours in zip('zc', forward(encoder, wave)):
      ref = expected[f'{key}_{case}']
      assert ours.shape == ref.shape, (case, key)
      diffs[key] = max(diffs[key], float(np.abs(np.asarray(ours) - ref).max()))
  return diffs


def _assert_parity(encoder, expected, forward=_forward):
  for case, wave in INPUTS.items():
    for key, ours in zip('zc', forward(encoder, wave)):
      np.testing.assert_allclose(ours, expected[f'{key}_{case}'], **TOL, err_msg=f'{key} {case}')


def test_converted_encoders_match_pytorch_on_every_input(converted):
  name, config, params = converted
  assert config == {'dim': 32, 'lstm_layers': int(name[-1]), 'padding': 'reference'}
  encoder = _encoder(config, params)
  _assert_parity(encoder, _expected(name))
  for case, wave in INPUTS.items():  # CPC_audio's frame counts
    assert _expected(name)[f'z_{case}'].shape[1] == cpc.num_frames(wave.shape[-1])
  print(name, 'max |diff|', _max_diffs(encoder, _expected(name)))


def test_the_cli_writes_a_checkpoint_that_load_encoder_reads(tmp_path, capsys):
  src, dst = FIXTURES / 'cpc_l2.pt', tmp_path / 'cpc'
  cli.main(['cpc', str(src), str(dst)])
  printed = capsys.readouterr().out
  assert '26 tensors, 37,920 parameters' in printed and '"lstm_layers": 2' in printed
  encoder = models.load_encoder(dst)
  assert encoder.padding == 'reference'
  _assert_parity(encoder, _expected('cpc_l2'))
  direct = _encoder(*convert_cpc.convert(src))
  wave = INPUTS['len3371']
  for ours, theirs in zip(_forward(encoder, wave), _forward(direct, wave)):
    np.testing.assert_array_equal(ours, theirs)
  assert models.load_encoder(dst, padding='causal').padding == 'causal'


# Known conversion mistakes: each must move the outputs beyond the tolerance.

def _channel_norm(x, norm, eps, ddof):
  mean, var = x.mean(-1, keepdims=True), x.var(-1, ddof=ddof, keepdims=True)
  return (x - mean) / jnp.sqrt(var + eps) * norm.scale[...] + norm.bias[...]


def _forward_with_norm(eps: float, ddof: int):
  """The encoder's forward with a ChannelNorm variant (eps, variance ddof)."""
  @nnx.jit
  def forward(encoder, wave):
    x = wave[..., None]
    for conv, norm in zip(encoder.convs, encoder.norms):
      x = jax.nn.relu(_channel_norm(conv(x), norm, eps, ddof))
    return x, encoder.lstm(x)
  return forward


def _swap_gates_i_f(w: np.ndarray) -> np.ndarray:
  i, f, g, o = np.split(w, 4, axis=-1)
  return np.concatenate([f, i, g, o], axis=-1)


def _mutated(params: dict, mistake: str) -> dict:
  params = jax.tree.map(np.array, params)
  if mistake == 'transposed conv kernel':  # (O, I, K) -> (K, O, I) instead of (K, I, O)
    for i in range(1, 5):
      params['convs'][i]['kernel'] = params['convs'][i]['kernel'].transpose(0, 2, 1)
  elif mistake == 'swapped LSTM gates i<->f':
    for layer in params['lstm']['layers'].values():
      for proj in layer.values():
        for k in proj:
          proj[k] = _swap_gates_i_f(proj[k])
  return params


def test_the_reference_norm_variant_is_the_modules_own(converted):
  name, config, params = converted
  _assert_parity(_encoder(config, params), _expected(name),
                 _forward_with_norm(cpc.CHANNEL_NORM_EPS, ddof=1))


@pytest.mark.parametrize('mistake', ['biased ChannelNorm variance', 'transposed conv kernel',
                                     'swapped LSTM gates i<->f'])
def test_each_known_conversion_mistake_exceeds_the_tolerance(converted, mistake):
  name, config, params = converted
  forward = (_forward_with_norm(cpc.CHANNEL_NORM_EPS, ddof=0)
             if mistake == 'biased ChannelNorm variance' else _forward)
  encoder = _encoder(config, _mutated(params, mistake))
  diffs = _max_diffs(encoder, _expected(name), forward)
  print(name, mistake, 'max |diff|', diffs)
  with pytest.raises(AssertionError):
    _assert_parity(encoder, _expected(name), forward)


def test_eps_1e6_is_within_the_tolerance_on_the_encoders_own_inputs(converted):
  """A ChannelNorm eps of 1e-6 moves z by up to 1.4e-4, ~60x our correct error, yet stays inside
  atol + rtol |z| at 1e-4: conv outputs here have channel variances far above 1e-5 (the quiet,
  all-zero input gives the conv biases, whose spread is also large). The next test catches it."""
  name, config, params = converted
  encoder = _encoder(config, params)
  diffs = _max_diffs(encoder, _expected(name), _forward_with_norm(1e-6, ddof=1))
  print(name, 'eps 1e-6 max |diff|', diffs)
  assert diffs['z'] > 20 * _max_diffs(encoder, _expected(name))['z']


def test_channel_norm_eps_1e6_is_caught_on_low_variance_frames():
  """cpc_l1's first ChannelNorm in torch on frames whose channel variance is ~1e-6
  (channel_norm.npz): eps 1e-5 matches, 1e-6 is off by ~1.3."""
  fixture = np.load(FIXTURES / 'channel_norm.npz')
  norm_params = convert_cpc.convert(FIXTURES / 'cpc_l1.pt')[1]['norms'][0]
  outputs = {}
  for eps in (cpc.CHANNEL_NORM_EPS, 1e-6):
    norm = cpc.ChannelNorm(32, epsilon=eps)
    norm.scale[...], norm.bias[...] = norm_params['scale'], norm_params['bias']
    outputs[eps] = np.asarray(norm(fixture['x']))
  np.testing.assert_allclose(outputs[cpc.CHANNEL_NORM_EPS], fixture['y'], **TOL)
  with pytest.raises(AssertionError):
    np.testing.assert_allclose(outputs[1e-6], fixture['y'], **TOL)
  print('eps 1e-6 on low-variance frames: max |diff|', np.abs(outputs[1e-6] - fixture['y']).max())


# Refusals.

def _checkpoint(**changes) -> dict:
  checkpoint = torch_file.load(FIXTURES / 'cpc_l1.pt')
  checkpoint['config'].update(changes.pop('config', {}))
  checkpoint['weights'] = changes.pop('weights', checkpoint['weights'])
  return checkpoint


def _convert(monkeypatch, checkpoint):
  monkeypatch.setattr(torch_file, 'load', lambda path, **kwargs: checkpoint)
  return convert_cpc.convert('cpc.pt')


def test_a_module_prefix_is_stripped(monkeypatch):
  checkpoint = _checkpoint()
  checkpoint['weights'] = {f'module.{k}': v for k, v in checkpoint['weights'].items()}
  config, params = _convert(monkeypatch, checkpoint)
  reference = convert_cpc.convert(FIXTURES / 'cpc_l1.pt')
  assert config == reference[0]
  jax.tree.map(np.testing.assert_array_equal, params, reference[1])


def test_a_missing_and_an_unknown_key_are_named(monkeypatch):
  weights = dict(_checkpoint()['weights'])
  del weights['gAR.baseNet.bias_hh_l0']
  weights['gAR.baseNet.weight_ih_l1'] = np.zeros((128, 32), np.float32)
  weights['gEncoder.extra'] = np.zeros(3, np.float32)
  with pytest.raises(convert_cpc.ConversionError) as error:
    _convert(monkeypatch, _checkpoint(weights=weights))
  for key in ('missing gAR.baseNet.bias_hh_l0', 'unknown gAR.baseNet.weight_ih_l1',
              'unknown gEncoder.extra'):
    assert key in str(error.value)


def test_a_wrong_shape_is_named(monkeypatch):
  weights = dict(_checkpoint()['weights'])
  weights['gEncoder.conv1.weight'] = np.zeros((32, 32, 4), np.float32)
  with pytest.raises(convert_cpc.ConversionError, match=r'gEncoder.conv1.weight has shape'):
    _convert(monkeypatch, _checkpoint(weights=weights))


@pytest.mark.parametrize('field, value', [('arMode', 'GRU'), ('arMode', 'transformer'),
                                          ('normMode', 'batchNorm'), ('cpc_mode', 'reverse'),
                                          ('hiddenGar', 64)])
def test_an_unsupported_architecture_is_refused_naming_the_field(monkeypatch, field, value):
  with pytest.raises(convert_cpc.ConversionError, match=rf'{field}={value!r}'):
    _convert(monkeypatch, _checkpoint(config={field: value}))


def test_a_file_without_config_and_weights_is_refused(monkeypatch):
  with pytest.raises(convert_cpc.ConversionError, match='not a CPC_audio checkpoint'):
    _convert(monkeypatch, {'weights': {}})


def test_a_cpc_train_checkpoint_with_its_options_file_converts_like_the_hub_file(
    monkeypatch, tmp_path):
  hub = _checkpoint()
  trained = {'gEncoder': hub['weights'], 'cpcCriterion': {'wPrediction.0.weight': np.zeros(3)},
             'optimizer': {'state': {}}, 'best': None}  # cpc/train.py's save_checkpoint
  monkeypatch.setattr(torch_file, 'load', lambda path, **kwargs: trained)
  with pytest.raises(convert_cpc.ConversionError, match='checkpoint_args.json'):
    convert_cpc.convert(tmp_path / 'checkpoint_4.pt')
  (tmp_path / 'checkpoint_args.json').write_text(json.dumps(dict(hub['config'])))
  config, params = convert_cpc.convert(tmp_path / 'checkpoint_4.pt')
  monkeypatch.undo()
  reference = convert_cpc.convert(FIXTURES / 'cpc_l1.pt')
  assert config == reference[0]
  jax.tree.map(np.testing.assert_array_equal, params, reference[1])


# Training VAP on top of a converted, frozen CPC.

def _tiny_config(dst, **model):
  config = vap.get_config('tiny')
  config.model.encoder_checkpoint = str(dst)
  # CPC_audio's weights hear the waveform as it is (the CPU-sized stereo configs lift it 10x).
  config.model.encoder.update(freeze=True, padding='reference', input_gain=1.0)
  config.model.update(**model)
  return config


def test_a_converted_frozen_cpc_trains_with_tiny_and_stays_unchanged(tmp_path):
  src, dst = FIXTURES / 'cpc_l1.pt', tmp_path / 'cpc'
  cli.main(['cpc', str(src), str(dst)])
  frozen_training.assert_trains_with_frozen_encoder(_tiny_config(dst), convert_cpc.convert(src)[1])


def test_a_padding_other_than_the_one_the_weights_were_trained_with_is_warned_about(tmp_path,
                                                                                   caplog):
  dst = tmp_path / 'cpc'
  cli.main(['cpc', str(FIXTURES / 'cpc_l1.pt'), str(dst)])
  assert pretrained.read_config(dst)['padding'] == 'reference'
  with caplog.at_level(logging.WARNING):
    models.build_model(_tiny_config(dst).model, rngs=nnx.Rngs(0))  # 'reference': no warning
    config = _tiny_config(dst)
    config.model.encoder.padding = 'causal'
    models.build_model(config.model, rngs=nnx.Rngs(0))
  (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert "model.encoder.padding='causal'" in warning and "trained with 'reference'" in warning


def test_an_input_gain_other_than_the_one_the_weights_were_trained_with_is_an_error(tmp_path):
  dst = tmp_path / 'cpc'
  cli.main(['cpc', str(FIXTURES / 'cpc_l1.pt'), str(dst)])
  assert 'input_gain' not in pretrained.read_config(dst)  # converted weights: gain 1, implied
  config = _tiny_config(dst)
  config.model.encoder.input_gain = 10.0
  with pytest.raises(errors.ConfigError,  # run.py: one line, exit code 2
                     match=r'input_gain=1.0 \(the model has 10.0\); give '
                           r'--config.model.encoder.input_gain=1.0$'):
    models.build_model(config.model, rngs=nnx.Rngs(0))
  assert models.load_encoder(dst).input_gain == 1.0


@pytest.mark.parametrize('gain', [0.0, -1.0, float('nan'), 'loud', True])
def test_a_stored_input_gain_that_is_no_positive_number_is_refused_naming_the_file(tmp_path,
                                                                                 gain):
  dst = tmp_path / 'cpc'
  cli.main(['cpc', str(FIXTURES / 'cpc_l1.pt'), str(dst)])
  stored = pretrained.read_config(dst)
  (dst / 'config.json').write_text(json.dumps({**stored, 'input_gain': gain}))
  message = f'{dst / "config.json"}: input_gain={gain!r} must be a finite number > 0'
  with pytest.raises(errors.InputError, match=re.escape(message)):
    models.load_encoder(dst)
  with pytest.raises(errors.InputError, match=re.escape(message)):  # also when a model loads it
    models.build_model(_tiny_config(dst).model, rngs=nnx.Rngs(0))


def test_a_model_dim_other_than_the_converted_width_is_an_error(tmp_path):
  dst = tmp_path / 'cpc'
  cli.main(['cpc', str(FIXTURES / 'cpc_l1.pt'), str(dst)])
  with pytest.raises(ValueError, match=r'dim=32 \(the model has 64\)'):
    models.build_model(_tiny_config(dst, dim=64).model, rngs=nnx.Rngs(0))
