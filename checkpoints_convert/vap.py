"""The released VAP models -> our `StereoVAP` / `MonoVAP`, CPC encoder included.

`vap`: VoiceActivityProjection's stereo VapGPT.
Two layouts (reference/data_and_stereo_spec.md B.7): the [main] state dict
(`VAP_3mmz3t0u_50Hz_ad20s_134-epoch9-val_2.56.pt`: `encoder.encoder.gEncoder.*`,
`encoder.downsample.*`, `ar_channel.*`, `ar.*`, `va_classifier.*`, `vap_head.*`), and the
[newMaster] ones (stacks under `transformer.`; a Lightning `.ckpt` adds `model.` and keeps the
weights under 'state_dict' beside bookkeeping, its `hyper_parameters` AttributeDict read as a
dict). The architecture is read from
the shapes: width, heads (the stored ALiBi slopes `mha.m`, which must be the standard ones), FFN
multiplier, per-speaker and cross layer counts, LSTM layers, the downsampler's kernel (5 -> 50 Hz,
11 -> 20 Hz; none -> 100 Hz). The CPC encoder keeps CPC_audio's padding ('reference'). The frozen
codebook `objective.codebook.emb.weight` is skipped (our objective computes the same codes).

`conv_ssl`: conv_ssl's mono VPModel Lightning `.ckpt` (`cpc_48_50hz_15gqq5s5.ckpt`; 50/20 Hz GPT
models): `net.encoder.*` (CPC + downsampler as above), `net.vad_condition.{va_condition,
va_history, ln}` (early files: `vad_condition, vad_history`), `net.ar.ar.layers.N.{ln_multihead,
multihead, ln_ffnetwork, ffnetwork}`, `net.vap_head.projection_head`; `VAP.codebook.*` skipped.
These names come from conv_ssl's code (reference/vap_spec.md names only `net.` and
`net.vap_head.projection_head`); `mha` is accepted for `multihead`. The 2022 layer
(`ln_multihead`) adds the attention residual twice, the later one (`ln_self_attn`) once. The head
count comes from stored ALiBi slopes if present, else from
`hyper_parameters['conf']['model']['ar']['num_heads']`. Only the discrete head is converted.

Both write `data` beside `model`: the windows and normalisation the model was trained with.
"""

import os
import re

import numpy as np

from checkpoints_convert import cpc as convert_cpc
from checkpoints_convert import keys, stored, torch_file
from checkpoints_convert.keys import ConversionError
from convssl_jax import recipes
from convssl_jax.models import downsample, transformer

IGNORED = r'objective\.codebook\.'
_FRAME_HZ = {downsample.downsample_for(hz)[0]: hz for hz in (50, 20)}  # kernel -> Hz
# the released code's Lightning / DataParallel / older-Lightning prefixes
_PREFIXES = ('module.', 'model.', 'net.')


def _canonical(weights: dict, path: str) -> tuple[dict, dict]:
  """([main] names -> values, [main] name -> file key)."""
  out, source = {}, {}
  for key, value in weights.items():
    name = key
    for prefix in _PREFIXES:
      name = name.removeprefix(prefix)
    name = re.sub(r'^transformer\.(ar_channel|ar)\.', r'\1.', name)
    if name in out:
      raise ConversionError(f'{path}: {key} and {source[name]} are the same tensor')
    if name.endswith('.m'):  # ALiBi slopes: (heads, 1, 1) whatever shape they were kept in
      value = np.reshape(value, (-1, 1, 1))
    out[name], source[name] = value, key
  return out, source


def _encoder_architecture(w: dict, path: str) -> dict:
  """{'lstm_layers', 'frame_hz'} from the CPC encoder and downsampler keys both models share."""
  down = 'encoder.downsample.1.weight'
  kernel = keys.shape(w, down, path, 3)[-1] if down in w else None
  if kernel is not None and kernel not in _FRAME_HZ:
    raise ConversionError(f'{path}: downsampler kernel {kernel} is none of the released ones '
                          f'{_FRAME_HZ} (kernel -> Hz)')
  return {'lstm_layers': keys.count(w, r'encoder\.encoder\.gAR\.baseNet\.weight_ih_l(\d+)$'),
          'frame_hz': 100 if kernel is None else _FRAME_HZ[kernel]}


def architecture(w: dict, path: str) -> dict:
  """{'dim', 'num_heads', 'ffn_mult', 'self_layers', 'cross_layers', 'lstm_layers', 'frame_hz'}."""
  if any(k.startswith('feature_projection.') for k in w):
    raise ConversionError(f'{path}: a feature_projection (encoder width != model width) is not '
                          'supported: our stereo model uses the CPC width')
  dim = keys.shape(w, 'ar_channel.layers.0.ln_self_attn.weight', path, 1)[0]
  encoder = _encoder_architecture(w, path)
  return _bounded({
      'dim': dim, 'num_heads': int(np.size(w.get('ar_channel.layers.0.mha.m', ()))),
      'ffn_mult': keys.shape(w, 'ar_channel.layers.0.ffnetwork.0.weight', path, 2)[0] // dim,
      'self_layers': keys.count(w, r'ar_channel\.layers\.(\d+)\.'),
      'cross_layers': keys.count(w, r'ar\.layers\.(\d+)\.'), **encoder}, path)


# Architecture sizes -> the most each may be: layer counts come from key names, as many as a file
# has keys, and every layer adds expected keys before any is checked.
_MOST = {'dim': stored.MAX_WIDTH, 'num_heads': stored.MAX_HEADS, 'ffn_mult': stored.MAX_WIDTH,
         'self_layers': stored.MAX_LAYERS, 'cross_layers': stored.MAX_LAYERS,
         'num_layers': stored.MAX_LAYERS, 'lstm_layers': stored.MAX_LAYERS,
         'history_bins': stored.MAX_WIDTH}


def _bounded(a: dict, path: str) -> dict:
  """The architecture `a`, if its sizes are within `_MOST`."""
  for field, most in _MOST.items():
    if field in a:
      stored.integer(a[field], f'{field} (read from the weights)', path, 0, most)
  return a


def _layer_shapes(prefix: str, dim: int, heads: int, ffn: int, cross: bool) -> dict:
  norms = ('ln_self_attn', 'ln_ffnetwork') + (('ln_src_attn',) if cross else ())
  shapes = {f'{prefix}{n}.{p}': (dim,) for n in norms for p in ('weight', 'bias')}
  for mha in ('mha', 'mha_cross') if cross else ('mha',):
    shapes.update({f'{prefix}{mha}.{p}.weight': (dim, dim)
                   for p in ('key', 'query', 'value', 'proj')})
    shapes[f'{prefix}{mha}.m'] = (heads, 1, 1)
  shapes[f'{prefix}ffnetwork.0.weight'] = (ffn, dim)
  shapes[f'{prefix}ffnetwork.3.weight'] = (dim, ffn)
  return shapes


def _encoder_shapes(a: dict) -> dict[str, tuple[int, ...]]:
  """The CPC encoder's and the downsampler's keys (both models keep conv_ssl's Encoder names)."""
  d = a['dim']
  shapes = {f'encoder.encoder.{k}': v
            for k, v in convert_cpc.expected_shapes(d, a['lstm_layers']).items()}
  if a['frame_hz'] != 100:
    kernel = downsample.downsample_for(a['frame_hz'])[0]
    shapes.update({'encoder.downsample.1.weight': (d, d, kernel), 'encoder.downsample.1.bias': (d,),
                   'encoder.downsample.2.ln.weight': (d,), 'encoder.downsample.2.ln.bias': (d,)})
  return shapes


def expected_shapes(a: dict) -> dict[str, tuple[int, ...]]:
  d, h, f = a['dim'], a['num_heads'], a['ffn_mult'] * a['dim']
  shapes = _encoder_shapes(a)
  for i in range(a['self_layers']):
    shapes.update(_layer_shapes(f'ar_channel.layers.{i}.', d, h, f, cross=False))
  for i in range(a['cross_layers']):
    shapes.update(_layer_shapes(f'ar.layers.{i}.', d, h, f, cross=True))
  shapes.update({'ar.combinator.h0_a.weight': (d, d), 'ar.combinator.h0_b.weight': (d, d),
                 'ar.combinator.ln.weight': (d,), 'ar.combinator.ln.bias': (d,),
                 'va_classifier.weight': (1, d), 'va_classifier.bias': (1,),
                 'vap_head.weight': (256, d), 'vap_head.bias': (256,)})
  return shapes


def _layer_params(w: dict, prefix: str, cross: bool) -> dict:
  norm = lambda p: {'scale': w[p + '.weight'], 'bias': w[p + '.bias']}
  mha = lambda p: {n: {'kernel': w[f'{p}.{n}.weight'].T} for n in ('key', 'query', 'value', 'proj')}
  out = {'ln_self_attn': norm(prefix + 'ln_self_attn'), 'mha': mha(prefix + 'mha'),
         'ln_ffn': norm(prefix + 'ln_ffnetwork'),
         'ffn': {'up': {'kernel': w[prefix + 'ffnetwork.0.weight'].T},
                 'down': {'kernel': w[prefix + 'ffnetwork.3.weight'].T}}}
  if cross:
    out.update(ln_src_attn=norm(prefix + 'ln_src_attn'), mha_cross=mha(prefix + 'mha_cross'))
  return out


def _encoder_params(w: dict[str, np.ndarray], a: dict) -> dict:
  """{'encoder': CPC params[, 'downsample': ...]} from the encoder's keys."""
  cpc_weights = {k.removeprefix('encoder.encoder.'): v for k, v in w.items()
                 if k.startswith('encoder.encoder.')}
  params = {'encoder': convert_cpc.params_from_weights(cpc_weights, a['lstm_layers'])}
  if a['frame_hz'] != 100:
    params['downsample'] = {
        'conv': {'kernel': w['encoder.downsample.1.weight'].transpose(2, 1, 0),
                 'bias': w['encoder.downsample.1.bias']},
        'norm': {'scale': w['encoder.downsample.2.ln.weight'],
                 'bias': w['encoder.downsample.2.ln.bias']}}
  return params


def params_from_weights(w: dict[str, np.ndarray], a: dict) -> dict:
  """[main]-named weights -> the pure dict of `nnx.state(StereoVAP, nnx.Param)`."""
  return {
      **_encoder_params(w, a),
      'transformer': {
          'ar_channel': {'layers': {i: _layer_params(w, f'ar_channel.layers.{i}.', False)
                                    for i in range(a['self_layers'])}},
          'cross_layers': {i: _layer_params(w, f'ar.layers.{i}.', True)
                           for i in range(a['cross_layers'])},
          'combinator': {'h0_a': {'kernel': w['ar.combinator.h0_a.weight'].T},
                         'h0_b': {'kernel': w['ar.combinator.h0_b.weight'].T},
                         'ln': {'scale': w['ar.combinator.ln.weight'],
                                'bias': w['ar.combinator.ln.bias']}}},
      'vap_head': {'proj': {'kernel': w['vap_head.weight'].T, 'bias': w['vap_head.bias']}},
      'vad_head': {'kernel': w['va_classifier.weight'].T, 'bias': w['va_classifier.bias']},
  }


def recipe_data(kind: str) -> dict:
  """The windows and normalisation of the reference recipe of `kind`, for `config.data`."""
  d = recipes.data_config(kind)
  return {'window_s': d.window_s, 'normalize': d.normalize}


def conv_ssl_data(hyper: dict, frame_hz: int, path: str) -> dict:
  """The windows and normalisation a conv_ssl checkpoint was trained with: its stored
  `conf['data']` (audio_duration, audio_normalize) where present, else the paper-B scripts' (20-s
  chunks at 20/50 Hz, 10 s at 100 Hz; normalised)."""
  data = stored.section(hyper, ('conf', 'data'), 'hyper_parameters', path)
  name = "hyper_parameters['conf']['data']"
  return {'window_s': stored.seconds(data.get('audio_duration', 20.0 if frame_hz < 100 else 10.0),
                                     f"{name}['audio_duration']", path),
          'normalize': stored.flag(data.get('audio_normalize', True),
                                   f"{name}['audio_normalize']", path)}


def _model_config(kind: str, a: dict):
  """The reference `config.model` of `kind` at the architecture's sizes, with its frozen CPC."""
  cfg = recipes.model_config(kind)
  cfg.update(dim=a['dim'], frame_hz=a['frame_hz'])
  cfg.encoder.update(name='cpc', padding='reference', lstm_layers=a['lstm_layers'], freeze=True)
  cfg.transformer.update(num_heads=a['num_heads'], ffn_mult=a['ffn_mult'])
  return cfg


def model_config(a: dict):
  """Our `config.model` for the architecture: the stereo reference settings at its sizes."""
  cfg = _model_config('stereo', a)
  cfg.transformer.update(self_layers=a['self_layers'], cross_layers=a['cross_layers'])
  return cfg


def _load(path: str, max_bytes: int | None) -> tuple[dict, dict, str]:
  """(weights, Lightning hyper_parameters or {}, the format: 'lightning' or 'state_dict')."""
  checkpoint = torch_file.load(path, inert_modules=('vap', 'conv_ssl', 'pytorch_lightning',
                                                    'lightning', 'lightning_fabric'),
                               max_bytes=max_bytes)
  lightning = isinstance(checkpoint, dict) and isinstance(checkpoint.get('state_dict'), dict)
  weights = checkpoint['state_dict'] if lightning else checkpoint
  if not isinstance(weights, dict) or not all(isinstance(v, np.ndarray) for v in weights.values()):
    raise ConversionError(f'{path}: not a VAP state dict or Lightning checkpoint; found '
                          f'{stored.found(weights)}')
  stored.state_dict(weights, "'state_dict'" if lightning else 'the state dict', path)
  hyper = checkpoint.get('hyper_parameters') if lightning else None
  return (weights, {} if hyper is None else stored.mapping(hyper, 'hyper_parameters', path),
          'lightning' if lightning else 'state_dict')


def _check_slopes(weights: dict, heads: int, source: dict, path: str) -> None:
  slopes = transformer.alibi_slopes(heads)
  for key in (k for k in weights if k.endswith('.m')):
    if not np.allclose(weights[key].reshape(-1), slopes, rtol=1e-6, atol=0):
      raise ConversionError(f'{path}: {source[key]} holds ALiBi slopes {weights[key].reshape(-1)}, '
                            f'not the standard {slopes} our model uses')


def _without_ignored(weights: dict, source: dict, pattern: str) -> tuple[dict, list[str]]:
  ignored = [source[k] for k in weights if re.match(pattern, k)]
  return {k: v for k, v in weights.items() if not re.match(pattern, k)}, ignored


def convert(path: str | os.PathLike, *, max_bytes: int | None = None) -> tuple[dict, dict]:
  """({'format', 'architecture', 'model' (our config.model as a dict), 'data' (windows and
  normalisation), 'ignored_keys'}, params); `max_bytes`: the reader's budget (torch_file.load)."""
  path = os.fspath(path)
  weights, _, file_format = _load(path, max_bytes)
  weights, source = _canonical(weights, path)
  weights, ignored = _without_ignored(weights, source, IGNORED)
  a = architecture(weights, path)
  weights = keys.checked(weights, expected_shapes(a), path, f'VAP architecture {a}', source)
  _check_slopes(weights, a['num_heads'], source, path)
  return ({'format': file_format, 'architecture': a, 'model': model_config(a).to_dict(),
           'data': recipe_data('stereo'),
           'ignored_keys': ignored},
          params_from_weights(weights, a))


# conv_ssl's mono model.

def _conv_ssl_canonical(weights: dict, path: str) -> tuple[dict, dict]:
  """conv_ssl names -> the [main]-like names used here: net. dropped, `ar.ar.layers` ->
  `gpt.layers`, `multihead` -> `mha`, `ln_multihead` -> `ln_self_attn`, and the VA conditioning's
  early `vad_condition`/`vad_history` -> `va_condition`/`va_history`."""
  out, source = _canonical(weights, path)
  renamed, renamed_source = {}, {}
  for name, value in out.items():
    new = re.sub(r'^ar\.ar\.layers\.', 'gpt.layers.', name).replace('.multihead.', '.mha.')
    new = new.replace('.ln_multihead.', '.ln_self_attn.')
    new = re.sub(r'^vad_condition\.vad_(condition|history)\.', r'vad_condition.va_\1.', new)
    if new in renamed:
      raise ConversionError(f'{path}: {source[name]} and {renamed_source[new]} are the same '
                            f'tensor ({new}) in two namings')
    renamed[new], renamed_source[new] = value, source[name]
  return renamed, renamed_source


def _double_residual(source: dict, path: str) -> bool:
  """Whether conv_ssl's GPT layers add the attention residual twice, told by their LayerNorm's
  name: the 2022 layer (`ln_multihead`, the released paper-B checkpoints) does, h = 2x + attn;
  the later one with optional cross-attention (`ln_self_attn`) does not."""
  names = {m[1] for name in source.values()
           if (m := re.search(r'\.layers\.\d+\.(ln_multihead|ln_self_attn)\.', name))}
  if len(names) != 1:
    raise ConversionError(f'{path}: GPT layers with attention LayerNorms {sorted(names)}; '
                          "expected either 'ln_multihead' (2022) or 'ln_self_attn' (later)")
  return names == {'ln_multihead'}


def conv_ssl_architecture(w: dict, source: dict, hyper: dict, path: str) -> dict:
  """{'dim', 'num_heads', 'ffn_mult', 'num_layers', 'history_bins', 'double_residual',
  'lstm_layers', 'frame_hz'} of canonical weights `w` (`source`: their names in the file)."""
  ar = stored.section(hyper, ('conf', 'model', 'ar'), 'hyper_parameters', path)
  dim = keys.shape(w, 'gpt.layers.0.ln_self_attn.weight', path, 1)[0]
  heads_field = "hyper_parameters['conf']['model']['ar']['num_heads']"
  if 'gpt.layers.0.mha.m' in w:
    heads = int(np.size(w['gpt.layers.0.mha.m']))
  elif ar.get('num_heads') is not None:
    heads = stored.integer(ar['num_heads'], heads_field, path, 1, stored.MAX_HEADS)
  else:
    raise ConversionError(f'{path}: the head count is neither in ALiBi slopes (mha.m) nor in '
                          f'{heads_field}')
  if not stored.one_of(ar.get('type', 'gpt'), ('gpt',)):
    raise ConversionError(f"{path}: conf ar.type={stored.show(ar['type'])} is not supported (the "
                          "50/20 Hz GPT models are; the 100 Hz 'transformer' ones are not)")
  head = keys.shape(w, 'vap_head.projection_head.weight', path, 2)[0]
  if head != 256:
    raise ConversionError(f'{path}: a VAP head of {head} outputs; only the discrete 256-class '
                          'head is converted')
  encoder = _encoder_architecture(w, path)
  history = ('vad_condition.va_history.weight' in w
             and keys.shape(w, 'vad_condition.va_history.weight', path, 2)[1])
  return _bounded({
      'dim': dim, 'num_heads': heads,
      'ffn_mult': keys.shape(w, 'gpt.layers.0.ffnetwork.0.weight', path, 2)[0] // dim,
      'num_layers': keys.count(w, r'gpt\.layers\.(\d+)\.'), 'history_bins': int(history or 0),
      'double_residual': _double_residual(source, path), **encoder}, path)


def conv_ssl_expected_shapes(a: dict, with_slopes: bool) -> dict[str, tuple[int, ...]]:
  d, f = a['dim'], a['ffn_mult'] * a['dim']
  shapes = _encoder_shapes(a)
  for i in range(a['num_layers']):
    layer = _layer_shapes(f'gpt.layers.{i}.', d, a['num_heads'], f, cross=False)
    shapes.update({k: v for k, v in layer.items() if with_slopes or not k.endswith('.m')})
  shapes.update({'vad_condition.va_condition.weight': (d, 2),
                 'vad_condition.va_condition.bias': (d,),
                 'vad_condition.ln.weight': (d,), 'vad_condition.ln.bias': (d,),
                 'vap_head.projection_head.weight': (256, d),
                 'vap_head.projection_head.bias': (256,)})
  if a['history_bins']:
    shapes['vad_condition.va_history.weight'] = (d, a['history_bins'])
    shapes['vad_condition.va_history.bias'] = (d,)
  return shapes


def conv_ssl_params(w: dict[str, np.ndarray], a: dict) -> dict:
  """conv_ssl weights (canonical names) -> the pure dict of `nnx.state(MonoVAP, nnx.Param)`."""
  dense = lambda p: {'kernel': w[p + '.weight'].T, 'bias': w[p + '.bias']}
  condition = {'va_proj': dense('vad_condition.va_condition'),
               'ln': {'scale': w['vad_condition.ln.weight'], 'bias': w['vad_condition.ln.bias']}}
  if a['history_bins']:
    condition['history_proj'] = dense('vad_condition.va_history')
  return {**_encoder_params(w, a), 'va_condition': condition,
          'transformer': {'layers': {i: _layer_params(w, f'gpt.layers.{i}.', False)
                                     for i in range(a['num_layers'])}},
          'vap_head': {'proj': dense('vap_head.projection_head')}}


def conv_ssl_model_config(a: dict):
  """Our mono `config.model` at the architecture's sizes and residual (conv_ssl's other quirks are
  its defaults)."""
  cfg = _model_config('mono', a)
  cfg.transformer.update(num_layers=a['num_layers'], double_residual=a['double_residual'])
  cfg.va_cond.history_bins = a['history_bins']
  return cfg


def convert_conv_ssl(path: str | os.PathLike, *, max_bytes: int | None = None
                     ) -> tuple[dict, dict]:
  """conv_ssl's mono Lightning checkpoint -> ({'format', 'architecture', 'model', 'data',
  'ignored_keys'}, MonoVAP params); `max_bytes`: the reader's budget (torch_file.load)."""
  path = os.fspath(path)
  weights, hyper, file_format = _load(path, max_bytes)
  weights, source = _conv_ssl_canonical(weights, path)
  weights, ignored = _without_ignored(weights, source, r'VAP\.codebook\.')
  a = conv_ssl_architecture(weights, source, hyper, path)
  with_slopes = any(k.endswith('.m') for k in weights)
  weights = keys.checked(weights, conv_ssl_expected_shapes(a, with_slopes), path,
                         f'conv_ssl architecture {a}', source)
  _check_slopes(weights, a['num_heads'], source, path)
  return ({'format': file_format, 'architecture': a,
           'model': conv_ssl_model_config(a).to_dict(),
           'data': conv_ssl_data(hyper, a['frame_hz'], path),
           'ignored_keys': ignored},
          conv_ssl_params(weights, a))
