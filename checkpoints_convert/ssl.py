"""wav2vec 2.0 / HuBERT / WavLM checkpoints -> our `SSLEncoder` (reference/checkpoints_spec.md 2-3).

Three file layouts, told apart by their top level:

* torchaudio (`hubert_fairseq_base_ls960.pth`, `wav2vec2_fairseq_base_ls960.pth`, `wavlm_base.pth`,
  ...): a flat state dict, no config. The architecture is read from the shapes; what shapes do not
  show follows the released bundles: heads from the width (768 -> 12, 1024/1280 -> 16),
  pre-LN layers and a standardised waveform iff the extractor is the layer-norm (Large) one,
  strides from the kernels (10 -> 5, 3 -> 2, 2 -> 2), WavLM max_distance 800. `overrides` change
  any of them.
* fairseq (`hubert_base_ls960.pt`, `wav2vec_small.pt`, ...): {'cfg': {'model', 'task', ...}} (hydra)
  or {'args': Namespace} (2020) beside 'model', the state dict in fairseq's module names.
* unilm WavLM (`WavLM-Base.pt`, `WavLM-Base+.pt`, `WavLM-Large.pt`): {'cfg': flat dict, 'model'}.

Every file is first renamed to one canonical naming (torchaudio's, with WavLM's packed q/k/v
split into q_proj/k_proj/v_proj), the positional conv's weight norm g * v / |v| (norm over
dims 0, 1 per tap) is folded, and then every key is checked against the configured architecture:
missing, unknown and misshapen keys are all errors, except the pre-training-only tensors of each
layout (`IGNORED`), which are listed in the output config.
"""

import ast
import os
import re

import numpy as np

from checkpoints_convert import keys, stored, torch_file
from checkpoints_convert.keys import ConversionError
from convssl_jax.models.ssl_encoders import BASE_CONV_LAYERS, NAMES, SSLConfig

# Keys dropped on purpose, per layout: pre-training heads, quantizer, mask embedding, CTC head.
IGNORED = {
    'torchaudio': r'aux\.',
    'fairseq': r'(mask_emb|label_embs_concat|final_proj\.|quantizer\.|project_q\.)',
    'unilm': r'mask_emb',
}
_STRIDES = {10: 5, 3: 2, 2: 2}  # the released extractors' kernel -> stride
_HEADS = {768: 12, 1024: 16, 1280: 16}  # the released models' width -> heads
WAVLM_MAX_DISTANCE = 800
_LAYER = r'encoder\.transformer\.layers\.(\d+)\.'
_TA = r'encoder.transformer.layers.\1.'  # a layer's prefix as a replacement
_POS = 'encoder.transformer.pos_conv_embed.conv.'
_FIRST_LAYER = 'encoder.transformer.layers.0.'

# fairseq / unilm module name -> canonical name (torchaudio's import_fairseq._map_key, plus
# unilm's WavLM attention names: grep_linear, grep_a, relative_attention_bias).
_FROM_FAIRSEQ = (
    (r'feature_extractor\.conv_layers\.(\d+)\.0\.', r'feature_extractor.conv_layers.\1.conv.'),
    (r'feature_extractor\.conv_layers\.(\d+)\.2\.(1\.)?',
     r'feature_extractor.conv_layers.\1.layer_norm.'),
    (r'post_extract_proj\.', 'encoder.feature_projection.projection.'),
    (r'layer_norm\.', 'encoder.feature_projection.layer_norm.'),
    (r'encoder\.pos_conv\.0\.', _POS),
    (r'encoder\.layer_norm\.', 'encoder.transformer.layer_norm.'),
    (r'encoder\.layers\.(\d+)\.self_attn\.grep_linear\.',
     _TA + r'attention.gru_rel_pos_linear.'),
    (r'encoder\.layers\.(\d+)\.self_attn\.grep_a$',
     _TA + r'attention.gru_rel_pos_const'),
    (r'encoder\.layers\.(\d+)\.self_attn\.relative_attention_bias\.',
     _TA + r'attention.rel_attn_embed.'),
    (r'encoder\.layers\.(\d+)\.self_attn\.', _TA + 'attention.'),
    (r'encoder\.layers\.(\d+)\.self_attn_layer_norm\.', _TA + r'layer_norm.'),
    (r'encoder\.layers\.(\d+)\.fc1\.', _TA + r'feed_forward.intermediate_dense.'),
    (r'encoder\.layers\.(\d+)\.fc2\.', _TA + r'feed_forward.output_dense.'),
    (r'encoder\.layers\.(\d+)\.final_layer_norm\.', _TA + r'final_layer_norm.'),
)


def _layout(checkpoint, path: str) -> str:
  if isinstance(checkpoint, dict) and checkpoint and all(
      isinstance(v, np.ndarray) for v in checkpoint.values()):
    return 'torchaudio'
  if isinstance(checkpoint, dict) and 'model' in checkpoint:
    cfg = checkpoint.get('cfg')
    if isinstance(cfg, dict) and isinstance(cfg.get('model'), dict):
      return 'fairseq'
    if isinstance(cfg, dict) and 'encoder_layers' in cfg:
      return 'unilm'
    if isinstance(checkpoint.get('args'), dict):
      return 'fairseq'
  raise ConversionError(f'{path}: not a torchaudio state dict, a fairseq checkpoint ({{cfg or args,'
                        f' model}}) or a unilm WavLM checkpoint ({{cfg, model}}); found '
                        f'{stored.found(checkpoint)}')


def _canonical_name(key: str, layout: str) -> str | None:
  """The canonical name of a file key, or None if the layout has no such tensor."""
  if layout == 'torchaudio':
    key = re.sub(r'parametrizations\.weight\.original0$', 'weight_g', key)
    key = re.sub(r'parametrizations\.weight\.original1$', 'weight_v', key)
    return re.sub(_LAYER + r'attention\.attention\.out_proj\.',
                  _TA + r'attention.out_proj.', key)
  for pattern, replacement in _FROM_FAIRSEQ:
    if re.match(pattern, key):
      return re.sub(pattern, replacement, key, count=1)
  return None


def _canonical(weights: dict, layout: str, path: str) -> tuple[dict, dict, list[str]]:
  """(canonical weights, canonical -> file key, ignored file keys); unknown keys are errors."""
  out, source, ignored, unknown = {}, {}, [], []
  for key, value in keys.strip_module_prefix(weights, path).items():
    if re.match(IGNORED[layout], key):
      ignored.append(key)
      continue
    name = _canonical_name(key, layout)
    if name is None:
      unknown.append(key)
      continue
    if match := re.fullmatch(_LAYER + r'attention\.attention\.in_proj_(weight|bias)', name):
      if value.ndim not in (1, 2) or value.shape[0] % 3:
        raise ConversionError(f'{path}: {key} has shape {value.shape}, not 3 equal parts '
                              '(q; k; v)')
      for proj, part in zip('qkv', np.split(value, 3)):  # nn.MultiheadAttention rows: q; k; v
        split = f'encoder.transformer.layers.{match[1]}.attention.{proj}_proj.{match[2]}'
        out[split], source[split] = part, key
      continue
    out[name], source[name] = value, key
  if unknown:
    raise ConversionError(f'{path}: unknown keys for a {layout} checkpoint: {keys.listed(unknown)}')
  return out, source, ignored


def fold_weight_norm(g: np.ndarray, v: np.ndarray) -> np.ndarray:
  """torch weight_norm(dim=2): W = g * v / |v|, the norm over dims (0, 1) for each kernel tap."""
  return g * v / np.sqrt(np.square(v).sum(axis=(0, 1), keepdims=True))


def _fold_pos_conv(weights: dict, source: dict, path: str) -> None:
  parts = [k for k in (_POS + 'weight_g', _POS + 'weight_v') if k in weights]
  if not parts:
    return  # a folded `weight` (or nothing: then the key check names it)
  if len(parts) == 1:
    raise ConversionError(f'{path}: the positional conv has {source[parts[0]]} but not its '
                          'weight-norm partner (weight_g and weight_v go together)')
  g, v = weights.pop(_POS + 'weight_g'), weights.pop(_POS + 'weight_v')
  if v.ndim != 3:
    raise ConversionError(f'{path}: {source[_POS + "weight_v"]} has shape {v.shape}, expected '
                          '(channels, channels / groups, kernel)')
  if g.shape != (1, 1, v.shape[-1]):
    raise ConversionError(f'{path}: {source[_POS + "weight_g"]} has shape {g.shape}, expected '
                          f'(1, 1, {v.shape[-1]}) (weight norm over dims 0, 1)')
  weights[_POS + 'weight'] = fold_weight_norm(g.astype(np.float64), v.astype(np.float64))
  source[_POS + 'weight'] = source[_POS + 'weight_v']


# SSLConfig's sizes -> (fairseq config field, fairseq's default, low, high); WavLM's last two.
_SIZES = {
    'dim': ('encoder_embed_dim', 768, 1, stored.MAX_WIDTH),
    'num_layers': ('encoder_layers', 12, 1, stored.MAX_LAYERS),
    'num_heads': ('encoder_attention_heads', 12, 1, stored.MAX_HEADS),
    'ffn_dim': ('encoder_ffn_embed_dim', 3072, 1, stored.MAX_WIDTH),
    'pos_conv_kernel': ('conv_pos', 128, 1, stored.MAX_KERNEL),
    'pos_conv_groups': ('conv_pos_groups', 16, 1, stored.MAX_WIDTH),
    'num_buckets': ('num_buckets', 320, 0, stored.MAX_BUCKETS),
    'max_distance': ('max_distance', WAVLM_MAX_DISTANCE, 0, stored.MAX_BUCKETS),
}
_FLAGS = ('conv_bias', 'layer_norm_first', 'normalize_waveform')
_WAVLM_SIZES = ('num_buckets', 'max_distance')
_MAX_EXPRESSION = 4096  # characters of a conv_feature_layers expression (released ones: ~50)


def _conv_layers(layers, name: str, path: str) -> tuple[tuple[int, int, int], ...]:
  """`layers` if it is a list of at most MAX_CONV_LAYERS (channels, kernel, stride) int triples
  within the bounds."""
  bounds = (stored.MAX_WIDTH, stored.MAX_KERNEL, stored.MAX_KERNEL)
  if (not isinstance(layers, (list, tuple)) or not 0 < len(layers) <= stored.MAX_CONV_LAYERS
      or any(not isinstance(l, (list, tuple)) or len(l) != 3
             or any(type(v) is not int or not 1 <= v <= high for v, high in zip(l, bounds))
             for l in layers)):
    raise ConversionError(f'{path}: {name}={stored.show(layers)} is not a list of 1 to '
                          f'{stored.MAX_CONV_LAYERS} (channels, kernel, stride) ints, each at most '
                          f'{bounds}')
  return tuple(tuple(l) for l in layers)


def conv_layers_from_string(text, path: str) -> tuple[tuple[int, int, int], ...]:
  """fairseq's `conv_feature_layers` expression ('[(512,10,5)] + [(512,3,2)] * 4 + ...'),
  evaluated without `eval`: only int tuples, lists, + and *, no result longer than
  MAX_CONV_LAYERS (a repeat is checked before it is made)."""

  def value(node):
    if isinstance(node, ast.Constant) and type(node.value) is int:
      return node.value
    if isinstance(node, (ast.Tuple, ast.List)):
      items = [value(e) for e in node.elts]
      return tuple(items) if isinstance(node, ast.Tuple) else items
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
      left, right = value(node.left), value(node.right)
      if isinstance(node.op, ast.Add):
        result = left + right
      else:
        sequence, times = (left, right) if isinstance(left, (list, tuple)) else (right, left)
        if isinstance(sequence, (list, tuple)) and len(sequence) * max(times, 0) > limit:
          raise ValueError(f'a list of {len(sequence)} * {times} layers')
        result = left * right
      if isinstance(result, (list, tuple)) and len(result) > limit:
        raise ValueError(f'a list of {len(result)} layers')
      return result
    raise ValueError(ast.dump(node)[:100])

  name, limit = 'config conv_feature_layers', stored.MAX_CONV_LAYERS
  if not isinstance(text, str) or len(text) > _MAX_EXPRESSION:
    raise ConversionError(f'{path}: {name}={stored.show(text)} is not an expression of at most '
                          f'{_MAX_EXPRESSION} characters')
  try:
    layers = value(ast.parse(text, mode='eval').body)
  except (SyntaxError, ValueError, TypeError, RecursionError, MemoryError) as error:
    raise ConversionError(f'{path}: {name}={stored.show(text)} is not a list of (channels, '
                          f'kernel, stride) ints ({type(error).__name__}: {error})') from None
  return _conv_layers(layers, name, path)


def _checked_fields(fields: dict, path: str, name: str) -> dict:
  """`fields` (SSLConfig fields, e.g. overrides) if each has the type and bounds SSLConfig needs;
  `name` formats a field's name for the message ('--set {}')."""
  for field, value in fields.items():
    if field in _SIZES:
      stored.integer(value, name.format(field), path, *_SIZES[field][2:])
    elif field in _FLAGS:
      stored.flag(value, name.format(field), path)
    elif field == 'conv_layers':
      _conv_layers(value, name.format(field), path)
    elif field == 'extractor_mode':
      stored.text(value, name.format(field), path)
  return fields


def _from_stored_config(model: dict, normalize, family: str, path: str) -> dict:
  """SSLConfig fields from fairseq/unilm model config fields (fairseq's defaults if absent)."""
  for field, value in model.items():
    if isinstance(value, str) and value.startswith('${'):
      raise ConversionError(f'{path}: config {field}={stored.show(value)} is an unresolved '
                            'interpolation')
  if 'w2v_args' in model or 'w2v_path' in model:
    raise ConversionError(f'{path}: a fine-tuned fairseq checkpoint (config w2v_args); convert '
                          'the pre-trained one')
  if not stored.one_of(activation := model.get('activation_fn', 'gelu'), ('gelu',)):
    raise ConversionError(f'{path}: config activation_fn={stored.show(activation)} is not '
                          'supported (gelu)')
  modes = {'default': 'group_norm', 'layer_norm': 'layer_norm'}
  if not stored.one_of(mode := model.get('extractor_mode', 'default'), tuple(modes)):
    raise ConversionError(f'{path}: config extractor_mode={stored.show(mode)} is not supported '
                          f'(expected one of {list(modes)})')
  layers = model.get('conv_feature_layers')
  flag = lambda field: stored.flag(model.get(field, False), f'config {field}', path)
  size = lambda name: stored.integer(model.get(_SIZES[name][0], _SIZES[name][1]),
                                     f'config {_SIZES[name][0]}', path, 1, _SIZES[name][3])
  fields = dict(
      conv_layers=BASE_CONV_LAYERS if layers is None else conv_layers_from_string(layers, path),
      extractor_mode=modes[mode], conv_bias=flag('conv_bias'),
      layer_norm_first=flag('layer_norm_first'),
      normalize_waveform=stored.flag(normalize, 'config normalize', path),
      **{name: size(name) for name in _SIZES if name not in _WAVLM_SIZES})
  relative = flag('relative_position_embedding')
  if relative != (family == 'wavlm'):
    raise ConversionError(f'{path}: config relative_position_embedding={relative} does not fit '
                          f'format {family!r} (WavLM has it, HuBERT and wav2vec2 do not)')
  if relative:
    if not stored.flag(model.get('gru_rel_pos', True), 'config gru_rel_pos', path):
      raise ConversionError(f'{path}: config gru_rel_pos=False is not supported (WavLM gates its '
                            'position bias)')
    fields.update({name: size(name) for name in _WAVLM_SIZES})
  return fields


def _from_shapes(w: dict, path: str) -> dict:
  """SSLConfig fields read from a torchaudio state dict's shapes (plus the released rules)."""
  conv = 'feature_extractor.conv_layers.{}.'
  conv_layers = []
  for i in range(keys.count(w, r'feature_extractor\.conv_layers\.(\d+)\.conv\.weight\Z')):
    channels, _, kernel = keys.shape(w, conv.format(i) + 'conv.weight', path, 3)
    if kernel not in _STRIDES:
      raise ConversionError(f'{path}: conv layer {i} has kernel {kernel}, whose stride a '
                            f'torchaudio file does not say (known: {_STRIDES}); give '
                            'conv_layers as an override')
    conv_layers.append((channels, kernel, _STRIDES[kernel]))
  mode = 'layer_norm' if conv.format(1) + 'layer_norm.weight' in w else 'group_norm'
  dim = keys.shape(w, 'encoder.feature_projection.projection.weight', path, 2)[0]
  pos = keys.shape(w, _POS + 'weight', path, 3)
  ffn = keys.shape(w, f'{_FIRST_LAYER}feed_forward.intermediate_dense.weight', path, 2)[0]
  fields = dict(conv_layers=tuple(conv_layers), extractor_mode=mode,
                conv_bias=conv.format(0) + 'conv.bias' in w, dim=dim,
                num_layers=keys.count(w, _LAYER + r'final_layer_norm\.weight\Z'), ffn_dim=ffn,
                layer_norm_first=mode == 'layer_norm', normalize_waveform=mode == 'layer_norm',
                pos_conv_kernel=pos[2], pos_conv_groups=dim // pos[1])
  embed = f'{_FIRST_LAYER}attention.rel_attn_embed.weight'
  if embed in w:
    buckets, heads = keys.shape(w, embed, path, 2)
    fields.update(num_heads=heads, num_buckets=buckets, max_distance=WAVLM_MAX_DISTANCE)
  elif dim in _HEADS:
    fields['num_heads'] = _HEADS[dim]
  return _checked_fields(fields, path, '{} (read from the weights)')


def expected_shapes(c: SSLConfig) -> dict[str, tuple[int, ...]]:
  """The canonical keys and shapes of an encoder with config `c`."""
  shapes, in_channels = {}, 1
  for i, (channels, kernel, _) in enumerate(c.conv_layers):
    prefix = f'feature_extractor.conv_layers.{i}.'
    shapes[prefix + 'conv.weight'] = (channels, in_channels, kernel)
    if c.conv_bias:
      shapes[prefix + 'conv.bias'] = (channels,)
    if c.extractor_mode == 'layer_norm' or i == 0:
      shapes[prefix + 'layer_norm.weight'] = shapes[prefix + 'layer_norm.bias'] = (channels,)
    in_channels = channels
  d, f, h = c.dim, c.ffn_dim, c.num_heads
  shapes.update({
      'encoder.feature_projection.layer_norm.weight': (in_channels,),
      'encoder.feature_projection.layer_norm.bias': (in_channels,),
      'encoder.feature_projection.projection.weight': (d, in_channels),
      'encoder.feature_projection.projection.bias': (d,),
      _POS + 'weight': (d, d // c.pos_conv_groups, c.pos_conv_kernel), _POS + 'bias': (d,),
      'encoder.transformer.layer_norm.weight': (d,), 'encoder.transformer.layer_norm.bias': (d,)})
  for n in range(c.num_layers):
    p = f'encoder.transformer.layers.{n}.'
    for proj in ('q_proj', 'k_proj', 'v_proj', 'out_proj'):
      shapes[f'{p}attention.{proj}.weight'], shapes[f'{p}attention.{proj}.bias'] = (d, d), (d,)
    for norm in ('layer_norm', 'final_layer_norm'):
      shapes[f'{p}{norm}.weight'] = shapes[f'{p}{norm}.bias'] = (d,)
    shapes[f'{p}feed_forward.intermediate_dense.weight'] = (f, d)
    shapes[f'{p}feed_forward.intermediate_dense.bias'] = (f,)
    shapes[f'{p}feed_forward.output_dense.weight'] = (d, f)
    shapes[f'{p}feed_forward.output_dense.bias'] = (d,)
    if c.num_buckets:
      shapes[f'{p}attention.gru_rel_pos_linear.weight'] = (8, d // h)
      shapes[f'{p}attention.gru_rel_pos_linear.bias'] = (8,)
      shapes[f'{p}attention.gru_rel_pos_const'] = (1, h, 1, 1)
  if c.num_buckets:
    shapes['encoder.transformer.layers.0.attention.rel_attn_embed.weight'] = (c.num_buckets, h)
  return shapes


def params_from_weights(w: dict[str, np.ndarray], c: SSLConfig) -> dict:
  """Canonical weights -> the pure dict of `nnx.state(SSLEncoder(c), nnx.Param)`.

  Conv (O, I/g, K) -> (K, I/g, O); Linear (out, in) -> (in, out); norms weight/bias -> scale/bias.
  """
  dense = lambda p: {'kernel': w[p + '.weight'].T, 'bias': w[p + '.bias']}
  norm = lambda p: {'scale': w[p + '.weight'], 'bias': w[p + '.bias']}
  conv = 'feature_extractor.conv_layers.{}.'
  convs = {}
  for i in range(len(c.conv_layers)):
    convs[i] = {'kernel': w[conv.format(i) + 'conv.weight'].transpose(2, 1, 0)}
    if c.conv_bias:
      convs[i]['bias'] = w[conv.format(i) + 'conv.bias']
  n_norms = len(c.conv_layers) if c.extractor_mode == 'layer_norm' else 1
  layers = {}
  for n in range(c.num_layers):
    p = f'encoder.transformer.layers.{n}.'
    attention = {proj: dense(f'{p}attention.{proj}')
                 for proj in ('q_proj', 'k_proj', 'v_proj', 'out_proj')}
    if c.num_buckets:
      attention['gate'] = dense(f'{p}attention.gru_rel_pos_linear')
      attention['gate_const'] = w[f'{p}attention.gru_rel_pos_const'].reshape(-1)
    layers[n] = {'attention': attention, 'attention_norm': norm(p + 'layer_norm'),
                 'intermediate': dense(p + 'feed_forward.intermediate_dense'),
                 'output': dense(p + 'feed_forward.output_dense'),
                 'final_norm': norm(p + 'final_layer_norm')}
  params = {
      'feature_extractor': {'convs': convs, 'norms': {
          i: norm(conv.format(i) + 'layer_norm') for i in range(n_norms)}},
      'projection_norm': norm('encoder.feature_projection.layer_norm'),
      'projection': dense('encoder.feature_projection.projection'),
      'pos_conv': {'kernel': w[_POS + 'weight'].transpose(2, 1, 0), 'bias': w[_POS + 'bias']},
      'encoder_norm': norm('encoder.transformer.layer_norm'),
      'layers': layers,
  }
  if c.num_buckets:
    params['rel_pos_embed'] = {
        'embedding': w['encoder.transformer.layers.0.attention.rel_attn_embed.weight']}
  return params


def _stored_config(checkpoint: dict, layout: str, family: str, path: str) -> dict:
  if layout == 'unilm':
    if family != 'wavlm':
      raise ConversionError(f'{path}: a unilm WavLM checkpoint; convert it as wavlm, not {family}')
    return _from_stored_config(checkpoint['cfg'], checkpoint['cfg'].get('normalize', False),
                               family, path)
  cfg = checkpoint.get('cfg')
  if isinstance(cfg, dict) and isinstance(cfg.get('model'), dict):
    model = cfg['model']
    normalize = stored.section(cfg, ('task',), "'cfg'", path).get('normalize', False)
    name = stored.text(model.get('_name'), 'config _name', path)
  else:  # 2020: one Namespace with the model and task options
    model = checkpoint['args']
    normalize, name = model.get('normalize', False), stored.text(model.get('arch'), 'args arch',
                                                                 path)
  if family == 'wavlm' or (name and not name.startswith(family)):
    raise ConversionError(f'{path}: a fairseq {name or "wav2vec2/HuBERT"} checkpoint; convert it '
                          f'as {name if name in NAMES else "hubert or wav2vec2"}, not {family}')
  return _from_stored_config(model, normalize, family, path)


def convert(path: str | os.PathLike, family: str, overrides: dict | None = None, *,
            max_bytes: int | None = None) -> tuple[dict, dict]:
  """({'format', 'architecture', 'ignored_keys'}, params pure dict) from a `family` checkpoint
  ('hubert', 'wav2vec2' or 'wavlm'). `overrides` set SSLConfig fields the file does not say
  (checked before the file is read); `max_bytes`: the reader's budget (torch_file.load)."""
  path = os.fspath(path)
  if family not in NAMES:
    raise ValueError(f'family must be one of {list(NAMES)}, got {family!r}')
  overrides = _checked_fields(dict(overrides or {}), path, '--set {}')
  checkpoint = torch_file.load(path, inert_modules=('fairseq',), max_bytes=max_bytes)
  layout = _layout(checkpoint, path)
  weights = stored.state_dict(checkpoint if layout == 'torchaudio' else checkpoint['model'],
                              'the state dict' if layout == 'torchaudio' else "'model'", path)
  weights, source, ignored = _canonical(weights, layout, path)
  _fold_pos_conv(weights, source, path)
  if layout == 'torchaudio':
    fields = _from_shapes(weights, path)
    wavlm = 'num_buckets' in fields
    if wavlm != (family == 'wavlm'):
      raise ConversionError(f'{path}: {"a" if wavlm else "no"} WavLM relative position bias, '
                            f'which does not fit format {family!r}')
  else:
    fields = _stored_config(checkpoint, layout, family, path)
  fields.update(overrides)
  if 'num_heads' not in fields:
    raise ConversionError(f'{path}: the head count of a {fields["dim"]}-wide model is not stored '
                          'in a torchaudio file; give num_heads as an override')
  try:
    config = SSLConfig.from_dict(fields)
  except (TypeError, ValueError) as error:
    raise ConversionError(f'{path}: {error}') from None
  weights = keys.checked(weights, expected_shapes(config), path,
                         f'{family} architecture {config.to_dict()}', source)
  return ({'format': layout, 'architecture': config.to_dict(), 'ignored_keys': ignored},
          params_from_weights(weights, config))
