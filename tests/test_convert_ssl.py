"""wav2vec2 / HuBERT / WavLM conversion: parity with torchaudio's models in every file layout, the
CLI, the known conversion mistakes, refusals.

The fixtures (tests/fixtures/torch_writers/ssl.py) are torchaudio's own models at a tiny
size (16-channel extractor with the released kernels and strides, width 32, 4 heads, 2 layers,
every parameter perturbed), saved as torchaudio, fairseq and unilm files, with torch's outputs of
the conv extractor, each layer and `forward`; no torch is needed here.
"""

import os
import pathlib

import jax
import numpy as np
import pytest
from flax import nnx

from checkpoints_convert import __main__ as cli
from checkpoints_convert import keys, ssl, torch_file
from configs import vap
from convssl_jax import inference, models
from convssl_jax.models import pretrained, ssl_encoders
from tests import frozen_training

FIXTURES = pathlib.Path(__file__).parent / 'fixtures' / 'torch' / 'ssl'
TOL = dict(atol=1e-4, rtol=1e-4)
INPUTS = dict(np.load(FIXTURES / 'inputs.npz'))
# A torchaudio file does not store the head count (nor WavLM's max_distance) of a tiny model.
TA_OVERRIDES = {'hubert': {'num_heads': 4}, 'wav2vec2': {'num_heads': 4},
                'wavlm': {'max_distance': 40}}
# file -> (format, the model it holds: its torch outputs are MODEL.out.npz)
FILES = {
    'hubert_base.pth': ('hubert', 'hubert_base'),  # torchaudio, parametrizations.weight.*
    'hubert_base_weight_g.pth': ('hubert', 'hubert_base'),  # torchaudio, weight_g/v, legacy
    'hubert_base_fairseq.pt': ('hubert', 'hubert_base'),  # fairseq hydra cfg + HuBERT extras
    'wav2vec2_large.pth': ('wav2vec2', 'wav2vec2_large'),  # LN extractor, conv bias, pre-LN
    'wav2vec2_large_fairseq.pt': ('wav2vec2', 'wav2vec2_large'),  # 2020 Namespace args, legacy
    'wavlm_base.pth': ('wavlm', 'wavlm_base'),  # torchaudio WavLM (packed q/k/v)
    'wavlm_base_unilm.pt': ('wavlm', 'wavlm_base'),
    'wavlm_large_unilm.pt': ('wavlm', 'wavlm_large'),
}


def _outputs(encoder, wave):
  """{features, layer1.., final} of `encoder` for `wave`, in one pass."""
  features, hidden = encoder.extract(wave)
  out = {'features': features, 'final': encoder.final(hidden[-1])}
  out.update({f'layer{i + 1}': x for i, x in enumerate(hidden)})
  return out


_forward = nnx.jit(_outputs)
_call = nnx.jit(lambda module, wave: module(wave))
# Inputs for the mistakes (2 shapes, 2 compilations): 2 frames, and the quiet input.
MISTAKE_INPUTS = ('len720', 'quiet')


def _convert(file: str, **overrides):
  family = FILES[file][0]
  if file.endswith('.pth'):
    overrides = {**TA_OVERRIDES[family], **overrides}
  return ssl.convert(FIXTURES / file, family, overrides)


def _encoder(config: dict, params: dict) -> ssl_encoders.SSLEncoder:
  encoder = ssl_encoders.SSLEncoder(ssl_encoders.SSLConfig.from_dict(config['architecture']),
                                    rngs=nnx.Rngs(0))
  pretrained.assign(encoder, params)
  return encoder


def _expected(model: str) -> dict[str, np.ndarray]:
  return dict(np.load(FIXTURES / f'{model}.out.npz'))


def _max_excess(encoder, model: str, forward=_forward, cases=tuple(INPUTS)
                ) -> tuple[float, float]:
  """(max |ours - torch|, max of |ours - torch| - rtol |torch|) over `cases` and every output."""
  expected, diff, excess = _expected(model), 0.0, -np.inf
  for case in cases:
    for key, ours in forward(encoder, INPUTS[case]).items():
      ref = expected[f'{key}_{case}']
      assert ours.shape == ref.shape, (case, key, ours.shape, ref.shape)
      error = np.abs(np.asarray(ours) - ref)
      diff, excess = max(diff, float(error.max())), max(excess, float(
          (error - TOL['rtol'] * np.abs(ref)).max()))
  return diff, excess


# 1 frame, 9 frames (loud and quiet: one shape), 49 frames (WavLM offsets past max_distance);
# the slow test adds the 719/720-sample frame boundary (one compilation per shape and model).
FAST_INPUTS = ('len400', 'len3200', 'quiet', 'len16000')


def _assert_parity(file: str, cases):
  config, params = _convert(file)
  encoder = _encoder(config, params)
  diff, excess = _max_excess(encoder, FILES[file][1], cases=cases)
  print(file, f'max |diff| {diff:.1e}')
  assert excess <= TOL['atol']
  return encoder


@pytest.mark.slow
@pytest.mark.parametrize('file', FILES)
def test_each_file_layout_matches_torchaudio_on_all_inputs(file):
  _assert_parity(file, tuple(INPUTS))


@pytest.mark.parametrize('file', FILES)
def test_each_file_layout_matches_torchaudio_on_every_layer(file):
  encoder = _assert_parity(file, FAST_INPUTS)
  for case, wave in INPUTS.items():  # torchaudio's frame counts, down to a single frame
    frames = _expected(FILES[file][1])[f'final_{case}'].shape[1]
    assert frames == ssl_encoders.num_frames(encoder.config, wave.shape[-1])


def test_the_architecture_is_read_from_each_layout():
  tiny = dict(conv_layers=[[16, 10, 5]] + [[16, 3, 2]] * 4 + [[16, 2, 2]] * 2, dim=32,
              num_layers=2, num_heads=4, ffn_dim=64, pos_conv_kernel=8, pos_conv_groups=4)
  base = dict(tiny, extractor_mode='group_norm', conv_bias=False, layer_norm_first=False,
              normalize_waveform=False, num_buckets=0, max_distance=0)
  large = dict(base, extractor_mode='layer_norm', layer_norm_first=True, normalize_waveform=True)
  wavlm = dict(num_buckets=20, max_distance=40)
  expected = {'hubert_base': base, 'wav2vec2_large': dict(large, conv_bias=True),
              'wavlm_base': dict(base, **wavlm), 'wavlm_large': dict(large, **wavlm)}
  layouts = {'.pth': 'torchaudio', '_fairseq.pt': 'fairseq', '_unilm.pt': 'unilm'}
  for file, (_, model) in FILES.items():
    config = _convert(file)[0]
    assert config['architecture'] == expected[model], file
    assert config['format'] == next(v for k, v in layouts.items() if file.endswith(k)), file
  ignored = _convert('hubert_base_fairseq.pt')[0]['ignored_keys']
  assert sorted(ignored) == ['final_proj.bias', 'final_proj.weight', 'label_embs_concat',
                             'mask_emb']


def test_the_cli_writes_a_checkpoint_that_load_encoder_reads(tmp_path, capsys):
  dst = tmp_path / 'hubert'
  cli.main(['hubert', str(FIXTURES / 'hubert_base.pth'), str(dst), '--set', 'num_heads=4'])
  printed = capsys.readouterr().out
  config, params = _convert('hubert_base.pth')
  leaves = jax.tree.leaves(params)
  assert f'{len(leaves)} tensors, {sum(x.size for x in leaves):,} parameters' in printed
  assert '"num_heads": 4' in printed
  encoder = models.load_encoder(dst)
  assert isinstance(encoder, ssl_encoders.SSLEncoder)
  wave = INPUTS['len3200']
  np.testing.assert_array_equal(_call(encoder, wave), _call(_encoder(config, params), wave))
  np.testing.assert_allclose(_call(encoder, wave), _expected('hubert_base')['final_len3200'],
                             **TOL)
  # Any layer's output: torchaudio's extract_features()[layer - 1].
  first = models.load_encoder(dst, output_layer=1)
  np.testing.assert_allclose(_call(first, wave), _expected('hubert_base')['layer1_len3200'],
                             **TOL)
  with pytest.raises(ValueError, match=r'output_layer=3 is outside 1..2'):
    models.load_encoder(dst, output_layer=3)


def test_the_cli_refuses_set_for_cpc(tmp_path):
  with pytest.raises(SystemExit):
    cli.main(['cpc', 'x.pt', str(tmp_path), '--set', 'dim=3'])


# Known conversion mistakes: each, applied to our converted model, exceeds the tolerance.

def _mistaken_encoder(monkeypatch, file: str, mistake: str):
  if mistake == 'weight norm not folded (v used)':
    monkeypatch.setattr(ssl, 'fold_weight_norm', lambda g, v: v)
  elif mistake == 'weight norm over the wrong dims':
    monkeypatch.setattr(ssl, 'fold_weight_norm', lambda g, v: g * v / np.sqrt(
        np.square(v).sum(axis=(1, 2), keepdims=True)))
  elif mistake == 'tanh GELU':
    monkeypatch.setattr(ssl_encoders, 'gelu', lambda x: jax.nn.gelu(x, approximate=True))
  elif mistake == 'norm eps 1e-6':
    monkeypatch.setattr(ssl_encoders, 'LAYER_NORM_EPS', 1e-6)
  config, params = _convert(file)
  convs, layers = params['feature_extractor']['convs'], params['layers']
  if mistake == 'transposed conv kernel':  # (O, I, K) -> (K, O, I) instead of (K, I, O)
    for i in range(1, len(convs)):
      convs[i]['kernel'] = convs[i]['kernel'].transpose(0, 2, 1)
  elif mistake == 'q and k swapped':
    for layer in layers.values():
      attention = layer['attention']
      attention['q_proj'], attention['k_proj'] = attention['k_proj'], attention['q_proj']
  return _encoder(config, params)


MISTAKES = ('tanh GELU', 'norm eps 1e-6', 'transposed conv kernel',
            'weight norm not folded (v used)', 'weight norm over the wrong dims', 'q and k swapped')


@pytest.mark.parametrize('file, mistake', [('hubert_base.pth', m) for m in MISTAKES] + [
    # the Large layout (standardised waveform, pre-LN), where these two move the least
    ('wavlm_large_unilm.pt', 'tanh GELU'), ('wavlm_large_unilm.pt', 'norm eps 1e-6')])
def test_each_known_conversion_mistake_exceeds_the_tolerance(monkeypatch, file, mistake):
  encoder = _mistaken_encoder(monkeypatch, file, mistake)
  final = nnx.jit(lambda encoder, wave: {'final': encoder(wave)})  # traced afresh
  diff, excess = _max_excess(encoder, FILES[file][1], final, MISTAKE_INPUTS)
  print(file, mistake, f'max |diff| {diff:.1e}')
  assert excess > TOL['atol']


def test_the_weight_norm_fold_is_g_times_v_over_its_norm_per_tap():
  v = np.zeros((2, 1, 2))
  v[:, 0, 0], v[:, 0, 1] = (3.0, 4.0), (0.0, 2.0)  # per-tap norms over (out, in): 5 and 2
  g = np.array([10.0, -1.0]).reshape(1, 1, 2)
  expected = np.array([[[6.0, 0.0]], [[8.0, -1.0]]])
  np.testing.assert_allclose(ssl.fold_weight_norm(g, v), expected)


# Refusals, each naming what is wrong.

def _load_patched(monkeypatch, file: str, change):
  checkpoint = torch_file.load(FIXTURES / file, inert_modules=('fairseq',))
  change(checkpoint)
  monkeypatch.setattr(torch_file, 'load', lambda path, **kwargs: checkpoint)


def test_missing_unknown_and_misshapen_keys_are_named(monkeypatch):
  def change(checkpoint):
    weights = checkpoint['model']
    del weights['encoder.layers.1.fc2.bias']
    weights['encoder.layers.0.fc1.weight'] = weights['encoder.layers.0.fc1.weight'][:, :8]
  _load_patched(monkeypatch, 'hubert_base_fairseq.pt', change)
  with pytest.raises(keys.ConversionError) as error:
    _convert('hubert_base_fairseq.pt')
  for text in ('missing encoder.transformer.layers.1.feed_forward.output_dense.bias',
               'encoder.layers.0.fc1.weight has shape (64, 8), expected (64, 32)'):
    assert text in str(error.value)


def test_an_unknown_fairseq_key_is_named(monkeypatch):
  _load_patched(monkeypatch, 'hubert_base_fairseq.pt',
                lambda c: c['model'].update({'encoder.extra.weight': np.zeros(2, np.float32)}))
  with pytest.raises(keys.ConversionError, match=r'unknown keys .*encoder\.extra\.weight'):
    _convert('hubert_base_fairseq.pt')


def test_an_extra_torchaudio_layer_is_named_by_its_file_key(monkeypatch):
  def change(checkpoint):
    checkpoint['encoder.transformer.layers.0.attention.extra.weight'] = np.zeros(2, np.float32)
  _load_patched(monkeypatch, 'wavlm_base.pth', change)
  with pytest.raises(keys.ConversionError,
                     match=r'unknown encoder\.transformer\.layers\.0\.attention\.extra\.weight'):
    _convert('wavlm_base.pth')


def test_half_a_weight_norm_is_refused(monkeypatch):
  _load_patched(monkeypatch, 'hubert_base_weight_g.pth',
                lambda c: c.pop('encoder.transformer.pos_conv_embed.conv.weight_g'))
  with pytest.raises(keys.ConversionError, match=r'pos_conv_embed\.conv\.weight_v but not'):
    _convert('hubert_base_weight_g.pth')


@pytest.mark.parametrize('file, family, match', [
    ('wavlm_base_unilm.pt', 'hubert', 'convert it as wavlm'),
    ('wavlm_base.pth', 'hubert', "a WavLM relative position bias, which does not fit format"),
    ('hubert_base.pth', 'wavlm', "no WavLM relative position bias"),
    ('hubert_base_fairseq.pt', 'wav2vec2', 'a fairseq hubert checkpoint; convert it as hubert'),
])
def test_a_file_of_another_family_is_refused(file, family, match):
  with pytest.raises(keys.ConversionError, match=match):
    ssl.convert(FIXTURES / file, family, TA_OVERRIDES[family] if file.endswith('.pth') else {})


def test_a_torchaudio_file_of_an_unknown_width_needs_num_heads():
  with pytest.raises(keys.ConversionError, match='give num_heads as an override'):
    ssl.convert(FIXTURES / 'hubert_base.pth', 'hubert')


@pytest.mark.parametrize('field, value, match', [
    ('activation_fn', 'relu', "activation_fn='relu' is not supported"),
    ('extractor_mode', 'batch_norm', "extractor_mode='batch_norm' is not supported"),
    ('conv_feature_layers', "__import__('os').system('touch x')", 'conv_feature_layers='),
    ('encoder_embed_dim', '${task.dim}', 'unresolved interpolation'),
    ('w2v_args', {}, 'fine-tuned fairseq checkpoint'),
])
def test_an_unsupported_stored_config_is_refused_naming_the_field(monkeypatch, field, value,
                                                                  match):
  _load_patched(monkeypatch, 'hubert_base_fairseq.pt',
                lambda c: c['cfg']['model'].update({field: value}))
  with pytest.raises(keys.ConversionError, match=match):
    _convert('hubert_base_fairseq.pt')


def test_conv_feature_layers_are_evaluated_without_eval():
  assert ssl.conv_layers_from_string('[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2',
                                     'x') == ssl_encoders.BASE_CONV_LAYERS


def test_a_file_of_no_known_layout_is_refused(monkeypatch):
  monkeypatch.setattr(torch_file, 'load', lambda path, **kwargs: {'weights': {}})
  with pytest.raises(keys.ConversionError, match=r"found \['weights'\]"):
    ssl.convert('x.pt', 'hubert')


# A converted HuBERT as the frozen VAP encoder.

def test_a_converted_frozen_hubert_trains_with_tiny_and_stays_unchanged(tmp_path):
  dst = tmp_path / 'hubert'
  cli.main(['hubert', str(FIXTURES / 'hubert_base_fairseq.pt'), str(dst)])
  config = vap.get_config('tiny')
  config.model.update(encoder_checkpoint=str(dst))
  config.model.encoder.update(name='hubert', freeze=True)
  frozen_training.assert_trains_with_frozen_encoder(
      config, _convert('hubert_base_fairseq.pt')[1], trained_parts=('project', 'vap_head'))


def test_the_encoder_gives_one_frame_per_50_hz_va_frame(tmp_path):
  dst = tmp_path / 'wavlm'
  cli.main(['wavlm', str(FIXTURES / 'wavlm_base_unilm.pt'), str(dst)])
  config = vap.get_config('tiny').model
  config.update(encoder_checkpoint=str(dst))
  config.encoder.update(name='wavlm', output_layer=1)
  model = models.build_model(config, rngs=nnx.Rngs(0))
  assert model.encoder.output_layer == 1
  encode = nnx.jit(lambda model, wave: model.encode(wave))
  for seconds in (1, 2):
    frames = encode(model, np.zeros((1, 16000 * seconds), np.float32))
    assert frames.shape == (1, 50 * seconds, config.dim)
  with pytest.raises(ValueError, match='streaming needs the causal CPC encoder'):
    inference.StreamingEncoder(model, 50)


def test_an_ssl_encoder_needs_a_checkpoint_and_50_hz(tmp_path):
  config = vap.get_config('tiny').model
  config.encoder.name = 'hubert'
  with pytest.raises(ValueError, match='model.encoder_checkpoint'):
    models.build_model(config, rngs=nnx.Rngs(0))
  cli.main(['hubert', str(FIXTURES / 'hubert_base_fairseq.pt'), str(tmp_path / 'h')])
  config.update(encoder_checkpoint=str(tmp_path / 'h'), frame_hz=20)
  with pytest.raises(ValueError, match='frame_hz=20: the hubert encoder gives 50 Hz'):
    models.build_model(config, rngs=nnx.Rngs(0))
  config.update(frame_hz=50)
  config.encoder.name = 'wavlm'
  with pytest.raises(ValueError, match="encoder in .* does not fit the model: name='hubert'"):
    models.build_model(config, rngs=nnx.Rngs(0))


FULL_SIZE = pathlib.Path(os.environ.get('FULL_SIZE_DIR', '/tmp/convssl_full_size'))


@pytest.mark.slow
@pytest.mark.skipif(not (FULL_SIZE / 'inputs.npz').exists(),
                    reason='run `python -m tests.fixtures.torch_writers full` (needs torch) first')
@pytest.mark.parametrize('file, family', [('hubert_base.pth', 'hubert'),
                                          ('hubert_base_fairseq.pt', 'hubert'),
                                          ('wavlm_base_unilm.pt', 'wavlm'),
                                          ('hubert_large.pth', 'hubert')])
def test_full_size_parity(file, family):
  """Released Base/Large sizes (random weights, made by tests/fixtures/torch_writers/full.py): max
  |diff| per output over 2 s, a quiet 2 s and (WavLM) 20 s of audio."""
  config, params = ssl.convert(FULL_SIZE / file, family)
  encoder = _encoder(config, params)
  model = file.split('.')[0].removesuffix('_fairseq').removesuffix('_unilm')
  expected = dict(np.load(FULL_SIZE / f'{model}.out.npz'))
  inputs = dict(np.load(FULL_SIZE / 'inputs.npz'))
  worst = {}
  for case, wave in inputs.items():
    if f'final_{case}' not in expected:
      continue
    for key, ours in _forward(encoder, wave).items():
      ref = expected[f'{key}_{case}']
      worst[key] = max(worst.get(key, 0.0), float(np.abs(np.asarray(ours) - ref).max()))
      np.testing.assert_allclose(ours, ref, **TOL, err_msg=f'{key} {case}')
  print(file, {k: f'{v:.1e}' for k, v in worst.items()})
