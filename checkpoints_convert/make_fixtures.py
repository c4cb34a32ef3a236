"""Write the torch-file fixtures in tests/fixtures/torch/, each with torch's own expected values.

Needs torch (and omegaconf 2.0.x, the version fairseq pinned, for the DictConfig fixture), which
the project itself never installs. In a throwaway venv, from the repository root:

  python3.12 -m venv /tmp/torchenv
  /tmp/torchenv/bin/pip install torch==2.13.0 numpy omegaconf==2.0.6
  /tmp/torchenv/bin/pip download torchaudio==2.9.1 --no-deps -d /tmp/ta  # for `ssl` and `full`
  /tmp/torchenv/bin/python checkpoints_convert/make_fixtures.py [GROUP ...]

Groups: reader, cpc, ssl, vap (the default: all four), full (never committed).

Reader fixtures (`reader_fixtures`): each group NAME is saved as NAME.pt (zip format) and
NAME_legacy.pt (`_use_new_zipfile_serialization=False`, the pre-1.6 format), next to
NAME.expected.json (the tree with every tensor replaced by {"__tensor__": KEY, "dtype", "shape"},
tuples by {"__tuple__": [...]}, config objects by the plain values torch/omegaconf give for them)
and NAME.expected.npz (KEY -> `tensor.numpy()`, bfloat16 as float32). Hostile files come without
expectations: malicious*.pt would run `touch PWNED_BY_CHECKPOINT` in the working directory if
unpickled naively; unknown_global.pt holds a `datetime.date`; unknown_storage.pt a qint8 storage.
uint16 tensors pickle as `_rebuild_tensor_v3` over an UntypedStorage; torch 2.13 itself cannot read
that back from tensors_legacy.pt (its legacy loader wants a typed storage), the reader can.

Model fixtures (`cpc_fixtures`): a PyTorch CPC written from reference/checkpoints_spec.md 1.4
(hidden 32, every parameter perturbed by 0.02 randn) saved in CPC_audio's hub format as
cpc/cpc_l1.pt (1 LSTM layer, legacy format like the real file) and cpc/cpc_l2.pt (2 layers, zip).
cpc/inputs.npz holds the waveforms CASE -> [2, S] (several lengths and a quiet, all-zero input);
cpc/NAME.out.npz torch's conv features `z_CASE` and LSTM output `c_CASE` [2, T, 32];
cpc/channel_norm.npz its first ChannelNorm on low-variance frames (where eps matters).

`ssl` (`write_ssl`): torchaudio's own wav2vec2/HuBERT/WavLM models, imported from the torchaudio
wheel's pure-Python `models/wav2vec2` (its native libraries do not load beside a CPU torch), at a
tiny size, saved as torchaudio, fairseq and unilm files with torch's per-layer outputs.
`vap` (`write_vap`): VoiceActivityProjection's stereo VapGPT written from
reference/data_and_stereo_spec.md, as a [main] state dict and a [newMaster] Lightning checkpoint.
`full` (`write_full_size`): full-size Base/Large models in FULL_SIZE_DIR for a slow test.
Legacy-format files are not byte-reproducible (storage keys change); their content is.

Later fixture groups add a writer returning its paths and an entry in `GROUPS`.
"""

import argparse
import collections
import datetime
import importlib
import json
import math
import os
import pathlib
import re
import sys
import tempfile
import types
import warnings
import zipfile

import numpy as np
import torch

OUT = pathlib.Path(__file__).resolve().parents[1] / 'tests' / 'fixtures' / 'torch'
MARKER = 'PWNED_BY_CHECKPOINT'


def _tensors() -> dict:
  """Every dtype the reader maps, nested in dicts, lists and tuples, with plain leaves beside."""
  return {
      'float32': torch.randn(3, 4),
      'nested': {
          'float16': torch.randn(2, 3).half(),
          'bfloat16': (torch.randn(5) * 100).bfloat16(),
          'int64': torch.tensor([-(2 ** 40), 0, 7]),
          'bool': torch.tensor([[True, False], [False, True]]),
          'float64': torch.randn(2).double(),
          'int8': torch.tensor([-128, 5, 127], dtype=torch.int8),
          'uint8': torch.tensor([0, 200, 255], dtype=torch.uint8),
          'uint16': torch.tensor([1, 65535, 7], dtype=torch.uint16),  # _rebuild_tensor_v3
      },
      'scalar': torch.tensor(2.5),
      'empty': torch.zeros(0, 3),
      'list': [torch.arange(4, dtype=torch.int32), 3, 'text', None, 1.5, True],
      'tuple': (torch.ones(2, dtype=torch.int16), 'x'),
  }


def _views() -> dict:
  """Tensors that are views: strides, storage offsets and one storage shared by several."""
  base = torch.arange(12, dtype=torch.float32).reshape(3, 4) / 8
  return {
      'base': base,
      'transposed': base.t(),
      'row1': base[1],
      'tail': base[2:],
      'column': base[:, 2],
      'every_other': base.flatten()[1::2],
      'expanded': torch.tensor([1.0, 2.0, 3.0]).expand(2, 3),
      'alone_transposed': torch.randn(2, 3).t(),
  }


def _parameters() -> dict:
  """nn.Parameter (with and without Python state), torch.Size and a module state dict."""
  tagged = torch.nn.Parameter(torch.randn(3))
  tagged.tag = 'weight norm g'  # a Python attribute: pickled via _rebuild_parameter_with_state
  torch.manual_seed(1)
  module = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.LayerNorm(2))
  return {
      'param': torch.nn.Parameter(torch.randn(2, 3)),
      'frozen': torch.nn.Parameter(torch.randn(2), requires_grad=False),
      'tagged': tagged,
      'size': torch.Size([2, 3]),
      'state_dict': module.state_dict(),
  }


def _namespace() -> dict:
  """A CPC_audio / 2020 fairseq-style file: an argparse.Namespace config beside the weights."""
  args = argparse.Namespace(hiddenEncoder=256, arMode='LSTM', nLevelsGRU=1, learningRate=2e-4,
                            normMode='layerNorm', cpc_mode=None, dropout=False,
                            conv_feature_layers='[(512,10,5)] + [(512,3,2)] * 4', layers=[1, 2],
                            nested={'a': 1, 'b': [2.5, 'c']})
  return {'config': args, 'weights': collections.OrderedDict(w=torch.randn(2, 2))}


def _dictconfig() -> dict:
  """A fairseq hydra-era file: the omegaconf DictConfig itself pickled (not to_container'ed)."""
  from omegaconf import OmegaConf  # pylint: disable=import-outside-toplevel
  cfg = OmegaConf.create({
      'model': {'_name': 'hubert', 'encoder_layers': 2, 'dropout': 0.1, 'layer_norm_first': False,
                'conv_feature_layers': '[(512,10,5)]', 'label_rate': None,
                'encoder_embed_dim': '${task.dim}'},
      'task': {'dim': 8, 'labels': ['km'], 'normalize': True, 'data': '???'},
      'empty': {},
  })
  return {'args': None, 'cfg': cfg, 'model': {'w': torch.randn(3)}}


class _Malicious:
  """Pickles as a call of os.system: what a hostile checkpoint would carry."""

  def __reduce__(self):
    return os.system, (f'touch {MARKER}',)


def reader_fixtures() -> dict:
  """The groups that tests/test_torch_file.py checks against their expectations."""
  torch.manual_seed(0)
  return {'tensors': _tensors(), 'views': _views(), 'parameters': _parameters(),
          'namespace': _namespace(), 'dictconfig': _dictconfig()}


def hostile_fixtures() -> dict:
  """Files the reader must refuse (no expectations: loading them is an error)."""
  with warnings.catch_warnings():  # quantized tensors and TypedStorage are deprecated
    warnings.simplefilter('ignore')
    qint8 = torch.quantize_per_tensor(torch.ones(2), 0.1, 0, torch.qint8).storage()
  return {
      'malicious': {'evil': _Malicious(), 'weights': torch.ones(2)},
      'unknown_global': {'date': datetime.date(2020, 1, 1), 'weights': torch.ones(2)},
      'unknown_storage': {'storage': qint8},
  }


CPC_HIDDEN = 32
# (name, samples, amplitude); amplitude 0 is the quiet input.
CPC_CASES = (('len465', 465, 1.0), ('len3200', 3200, 1.0), ('len3371', 3371, 1.0),
             ('quiet', 3200, 0.0))


class _ChannelNorm(torch.nn.Module):
  """CPC_audio's ChannelNorm: per-frame normalisation over channels, unbiased variance."""

  def __init__(self, channels: int, eps: float = 1e-5):
    super().__init__()
    self.eps = eps
    self.weight = torch.nn.Parameter(torch.ones(1, channels, 1))
    self.bias = torch.nn.Parameter(torch.zeros(1, channels, 1))

  def forward(self, x):
    mean, var = x.mean(dim=1, keepdim=True), x.var(dim=1, keepdim=True)
    return (x - mean) * torch.rsqrt(var + self.eps) * self.weight + self.bias


class _GEncoder(torch.nn.Module):
  """CPC_audio's CPCEncoder: 5 x (Conv1d -> ChannelNorm -> ReLU), 160x downsampling."""

  def __init__(self, hidden: int):
    super().__init__()
    for i, (k, s, p) in enumerate(((10, 5, 3), (8, 4, 2), (4, 2, 1), (4, 2, 1), (4, 2, 1))):
      setattr(self, f'conv{i}', torch.nn.Conv1d(1 if i == 0 else hidden, hidden, k, s, p))
      setattr(self, f'batchNorm{i}', _ChannelNorm(hidden))

  def forward(self, x):
    for i in range(5):
      x = torch.relu(getattr(self, f'batchNorm{i}')(getattr(self, f'conv{i}')(x)))
    return x


class _GAR(torch.nn.Module):
  """CPC_audio's CPCAR in LSTM mode: zero initial state, no time reversal."""

  def __init__(self, hidden_encoder: int, hidden_gar: int, levels: int):
    super().__init__()
    self.baseNet = torch.nn.LSTM(hidden_encoder, hidden_gar, num_layers=levels, batch_first=True)

  def forward(self, x):
    return self.baseNet(x)[0]


class _CPC(torch.nn.Module):
  """CPC_audio's CPCModel (gEncoder, gAR): waveform [B, S] -> (z, c), each [B, T, hidden]."""

  def __init__(self, hidden: int, levels: int):
    super().__init__()
    self.gEncoder = _GEncoder(hidden)
    self.gAR = _GAR(hidden, hidden, levels)

  def forward(self, wave):
    z = self.gEncoder(wave[:, None]).permute(0, 2, 1)
    return z, self.gAR(z)


def _cpc_config(hidden: int, levels: int) -> dict:
  """The argparse options CPC_audio stores under 'config' (defaults, at the fixture's size)."""
  return {'hiddenEncoder': hidden, 'hiddenGar': hidden, 'nLevelsGRU': levels, 'arMode': 'LSTM',
          'normMode': 'layerNorm', 'encoder_type': 'cpc', 'cpc_mode': None,
          'samplingType': 'samespeaker', 'nPredicts': 12, 'negativeSamplingExt': 128,
          'sizeWindow': 20480, 'rnnMode': 'transformer', 'dropout': False, 'abspos': False,
          'learningRate': 2e-4, 'pathCheckpoint': '/checkpoint/cpc/60k'}


def cpc_inputs() -> dict:
  """{CASE: waveform [2, samples]} shared by the CPC fixtures."""
  torch.manual_seed(0)
  return {case: amplitude * torch.randn(2, samples) for case, samples, amplitude in CPC_CASES}


def cpc_fixtures(inputs: dict) -> dict:
  """{name: (hub-format checkpoint, legacy serialization?, {z_CASE, c_CASE: torch outputs})}."""
  fixtures = {}
  for levels, legacy in ((1, True), (2, False)):
    torch.manual_seed(levels)
    model = _CPC(CPC_HIDDEN, levels).eval()
    outputs = {}
    with torch.no_grad():
      for p in model.parameters():
        p += 0.02 * torch.randn_like(p)
      for case, wave in inputs.items():
        outputs[f'z_{case}'], outputs[f'c_{case}'] = (x.numpy() for x in model(wave))
    checkpoint = {'config': _cpc_config(CPC_HIDDEN, levels), 'weights': model.state_dict(),
                  'BestValue': 0.25}  # a top-level key converters must ignore
    fixtures[f'cpc_l{levels}'] = (checkpoint, legacy, outputs)
  return fixtures


def write_cpc() -> list[pathlib.Path]:
  """cpc/inputs.npz, then per fixture cpc/NAME.pt (in its serialization) and cpc/NAME.out.npz."""
  (OUT / 'cpc').mkdir(exist_ok=True)
  inputs = cpc_inputs()
  paths = [OUT / 'cpc' / 'inputs.npz']
  np.savez(paths[0], **{k: v.numpy() for k, v in inputs.items()})
  for name, (checkpoint, legacy, outputs) in cpc_fixtures(inputs).items():
    paths += [OUT / 'cpc' / f'{name}.pt', OUT / 'cpc' / f'{name}.out.npz']
    torch.save(checkpoint, paths[-2], _use_new_zipfile_serialization=not legacy)
    np.savez(paths[-1], **outputs)
  return paths


def write_cpc_channel_norm() -> list[pathlib.Path]:
  """cpc/channel_norm.npz: cpc_l1's batchNorm0 on low-variance input (channel variances ~1e-6,
  where eps 1e-5 vs 1e-6 matters), x [2, T, C] and torch's y, channels-last."""
  torch.manual_seed(1)
  model = _CPC(CPC_HIDDEN, 1)
  with torch.no_grad():
    for p in model.parameters():  # the same draws as cpc_fixtures: the same batchNorm0
      p += 0.02 * torch.randn_like(p)
    x = 1e-3 * torch.randn(2, CPC_HIDDEN, 50) + 1e-2 * torch.randn(2, 1, 50)  # frame offsets
    y = model.gEncoder.batchNorm0(x)
  path = OUT / 'cpc' / 'channel_norm.npz'
  np.savez(path, x=x.permute(0, 2, 1).numpy(), y=y.permute(0, 2, 1).numpy())
  return [path]


# wav2vec 2.0 / HuBERT / WavLM: torchaudio's own models at a tiny size.
# The extractor keeps the released kernels and strides (400-sample field, 320 hop) at 16 channels.
SSL_CONV = [(16, 10, 5)] + [(16, 3, 2)] * 4 + [(16, 2, 2)] * 2
SSL_CONV_STRING = '[(16, 10, 5)] + [(16, 3, 2)] * 4 + [(16, 2, 2)] * 2'
SSL_SIZE = dict(encoder_embed_dim=32, encoder_num_layers=2, encoder_num_heads=4,
                encoder_ff_interm_features=64, encoder_pos_conv_kernel=8, encoder_pos_conv_groups=4)
WAVLM_BUCKETS = dict(encoder_num_buckets=20, encoder_max_distance=40)  # 49 frames pass both
# name -> (factory, extractor_mode, conv_bias, layer_norm_first = normalize_waveform)
SSL_MODELS = {
    'hubert_base': ('wav2vec2_model', 'group_norm', False, False),
    'wav2vec2_large': ('wav2vec2_model', 'layer_norm', True, True),
    'wavlm_base': ('wavlm_model', 'group_norm', False, False),
    'wavlm_large': ('wavlm_model', 'layer_norm', False, True),
}
# (name, batch, samples, amplitude): 1, 1, 2, 9, 9 and 49 frames; 'quiet' makes eps visible.
SSL_CASES = (('len400', 2, 400, 1.0), ('len719', 2, 719, 1.0), ('len720', 2, 720, 1.0),
             ('len3200', 2, 3200, 1.0), ('quiet', 2, 3200, 1e-3), ('len16000', 1, 16000, 1.0))
TORCHAUDIO_WHEEL = os.environ.get('TORCHAUDIO_WHEEL', '/tmp/ta/torchaudio-2.9.1-cp312-cp312-'
                                  'manylinux_2_28_x86_64.whl')


def torchaudio_wav2vec2(wheel: str = TORCHAUDIO_WHEEL):
  """torchaudio's pure-Python `models/wav2vec2` package, imported from its wheel on its own.

  torchaudio's PyPI wheels are CUDA builds whose native libraries do not load beside a CPU torch
  (reference/checkpoints_spec.md 0); the model code needs only torch. Get the wheel with
  `pip download torchaudio==2.9.1 --no-deps -d /tmp/ta` (2.11.0's wav2vec2 code is identical).
  """
  root = pathlib.Path(tempfile.mkdtemp())
  with zipfile.ZipFile(wheel) as archive:
    archive.extractall(root, [n for n in archive.namelist()
                              if n.startswith('torchaudio/models/wav2vec2/')])
  sys.path.insert(0, str(root / 'torchaudio' / 'models'))
  return importlib.import_module('wav2vec2')


def ssl_inputs() -> dict:
  """{CASE: waveform [batch, samples]} shared by the SSL fixtures."""
  torch.manual_seed(0)
  return {case: amplitude * torch.randn(batch, samples)
          for case, batch, samples, amplitude in SSL_CASES}


def _ssl_model(w2v, name: str):
  factory, mode, conv_bias, pre_ln = SSL_MODELS[name]
  extra = WAVLM_BUCKETS if factory == 'wavlm_model' else {}
  zero = dict(encoder_projection_dropout=0.0, encoder_attention_dropout=0.0,
              encoder_ff_interm_dropout=0.0, encoder_dropout=0.0, encoder_layer_drop=0.0)
  return getattr(w2v, factory)(
      extractor_mode=mode, extractor_conv_layer_config=SSL_CONV, extractor_conv_bias=conv_bias,
      encoder_layer_norm_first=pre_ln, aux_num_out=None, **SSL_SIZE, **zero, **extra).eval()


def _ssl_outputs(model, wave: torch.Tensor, normalize: bool, case: str) -> dict:
  """features_CASE (conv extractor), layerN_CASE (extract_features), final_CASE (forward)."""
  if normalize:  # per utterance, as fairseq's loader (the bundles' F.layer_norm spans the batch)
    wave = torch.nn.functional.layer_norm(wave, wave.shape[-1:])
  out = {f'features_{case}': model.feature_extractor(wave, None)[0]}
  for i, x in enumerate(model.extract_features(wave)[0]):
    out[f'layer{i + 1}_{case}'] = x
  out[f'final_{case}'] = model(wave)[0]
  return {k: v.numpy() for k, v in out.items()}


# torchaudio name -> fairseq name (inverse of torchaudio's import_fairseq._map_key, checked
# against it key by key in `_fairseq_state`).
_TO_FAIRSEQ = (
    (r'feature_extractor\.conv_layers\.(\d+)\.conv\.', r'feature_extractor.conv_layers.\1.0.'),
    (r'encoder\.feature_projection\.projection\.', 'post_extract_proj.'),
    (r'encoder\.feature_projection\.layer_norm\.', 'layer_norm.'),
    (r'encoder\.transformer\.pos_conv_embed\.conv\.parametrizations\.weight\.original0',
     'encoder.pos_conv.0.weight_g'),
    (r'encoder\.transformer\.pos_conv_embed\.conv\.parametrizations\.weight\.original1',
     'encoder.pos_conv.0.weight_v'),
    (r'encoder\.transformer\.pos_conv_embed\.conv\.', 'encoder.pos_conv.0.'),
    (r'encoder\.transformer\.layer_norm\.', 'encoder.layer_norm.'),
    (r'encoder\.transformer\.layers\.(\d+)\.attention\.attention\.out_proj\.',
     r'encoder.layers.\1.self_attn.out_proj.'),
    (r'encoder\.transformer\.layers\.(\d+)\.attention\.gru_rel_pos_linear\.',
     r'encoder.layers.\1.self_attn.grep_linear.'),
    (r'encoder\.transformer\.layers\.(\d+)\.attention\.gru_rel_pos_const',
     r'encoder.layers.\1.self_attn.grep_a'),
    (r'encoder\.transformer\.layers\.(\d+)\.attention\.rel_attn_embed\.',
     r'encoder.layers.\1.self_attn.relative_attention_bias.'),
    (r'encoder\.transformer\.layers\.(\d+)\.attention\.', r'encoder.layers.\1.self_attn.'),
    (r'encoder\.transformer\.layers\.(\d+)\.layer_norm\.',
     r'encoder.layers.\1.self_attn_layer_norm.'),
    (r'encoder\.transformer\.layers\.(\d+)\.feed_forward\.intermediate_dense\.',
     r'encoder.layers.\1.fc1.'),
    (r'encoder\.transformer\.layers\.(\d+)\.feed_forward\.output_dense\.',
     r'encoder.layers.\1.fc2.'),
    (r'encoder\.transformer\.layers\.(\d+)\.final_layer_norm\.',
     r'encoder.layers.\1.final_layer_norm.'),
)


def _fairseq_key(key: str, mode: str) -> str:
  if match := re.fullmatch(r'feature_extractor\.conv_layers\.(\d+)\.layer_norm\.(\w+)', key):
    # GroupNorm (group_norm mode, layer 0) is Sequential index 2; LayerNorm sits at 2.1 inside
    # Sequential(TransposeLast, LayerNorm, TransposeLast).
    return (f'feature_extractor.conv_layers.{match[1]}.2.{match[2]}' if mode == 'group_norm'
            else f'feature_extractor.conv_layers.{match[1]}.2.1.{match[2]}')
  for pattern, replacement in _TO_FAIRSEQ:
    if re.match(pattern, key):
      return re.sub(pattern, replacement, key, count=1)
  raise KeyError(key)


def _weight_g_names(state: dict) -> collections.OrderedDict:
  """The state dict with the pos-conv weight norm spelled weight_g / weight_v (pre-2.1 torch)."""
  return collections.OrderedDict(
      (k.replace('parametrizations.weight.original0', 'weight_g')
       .replace('parametrizations.weight.original1', 'weight_v'), v) for k, v in state.items())


def _fairseq_state(w2v, state: dict, mode: str) -> collections.OrderedDict:
  """torchaudio state -> fairseq module names; each key checked with torchaudio's own importer."""
  out = collections.OrderedDict()
  for key, value in _weight_g_names(state).items():
    fairseq = _fairseq_key(key, mode)
    assert w2v.utils.import_fairseq._map_key(fairseq) == key, (fairseq, key)
    out[fairseq] = value
  return out


def _unilm_state(state: dict, mode: str) -> collections.OrderedDict:
  """torchaudio WavLM state -> unilm names: in_proj split into q, k, v rows; grep_* renames."""
  out = collections.OrderedDict()
  for key, value in _weight_g_names(state).items():
    if match := re.fullmatch(r'encoder\.transformer\.layers\.(\d+)\.attention\.attention\.'
                             r'in_proj_(weight|bias)', key):
      for proj, part in zip('qkv', value.chunk(3, dim=0)):
        out[f'encoder.layers.{match[1]}.self_attn.{proj}_proj.{match[2]}'] = part.clone()
    else:
      out[_fairseq_key(key, mode)] = value
  q = out['encoder.layers.0.self_attn.q_proj.weight']
  assert torch.equal(q, state['encoder.transformer.layers.0.attention.attention.in_proj_weight']
                     [:q.shape[0]])  # nn.MultiheadAttention's rows are [q; k; v]
  return out


def _fairseq_model_cfg(name: str) -> dict:
  """The fairseq / unilm model config fields for a tiny model (the released ones' field names)."""
  _, mode, conv_bias, pre_ln = SSL_MODELS[name]
  cfg = {'extractor_mode': 'default' if mode == 'group_norm' else 'layer_norm',
         'conv_feature_layers': SSL_CONV_STRING, 'conv_bias': conv_bias,
         'encoder_layers': SSL_SIZE['encoder_num_layers'],
         'encoder_embed_dim': SSL_SIZE['encoder_embed_dim'],
         'encoder_ffn_embed_dim': SSL_SIZE['encoder_ff_interm_features'],
         'encoder_attention_heads': SSL_SIZE['encoder_num_heads'], 'activation_fn': 'gelu',
         'layer_norm_first': pre_ln, 'conv_pos': SSL_SIZE['encoder_pos_conv_kernel'],
         'conv_pos_groups': SSL_SIZE['encoder_pos_conv_groups'], 'dropout': 0.1,
         'attention_dropout': 0.1, 'activation_dropout': 0.0, 'encoder_layerdrop': 0.05,
         'dropout_input': 0.1, 'dropout_features': 0.1, 'final_dim': 8, 'mask_prob': 0.65,
         'mask_length': 10, 'feature_grad_mult': 0.1, 'untie_final_proj': False}
  if name.startswith('wavlm'):
    cfg.update(relative_position_embedding=True, num_buckets=WAVLM_BUCKETS['encoder_num_buckets'],
               max_distance=WAVLM_BUCKETS['encoder_max_distance'], gru_rel_pos=True,
               normalize=pre_ln)
  return cfg


class _Meter:
  """Stands in for a fairseq meter pickled in extra_state (its module is not installed)."""

  def __init__(self):
    self.avg, self.count = 1.5, 10


def _fake_fairseq_module():
  """Registers `fairseq.logging.meters` so that `_Meter` pickles under fairseq's module name."""
  for name in ('fairseq', 'fairseq.logging', 'fairseq.logging.meters'):
    sys.modules.setdefault(name, types.ModuleType(name))
  _Meter.__module__ = 'fairseq.logging.meters'
  _Meter.__qualname__ = 'AverageMeter'
  sys.modules['fairseq.logging.meters'].AverageMeter = _Meter


def _ssl_files(w2v, name: str, model) -> dict:
  """{file name: (object, legacy serialization?)} for one model, in its real file layouts."""
  state = model.state_dict()
  _, mode, _, pre_ln = SSL_MODELS[name]
  dim = SSL_SIZE['encoder_embed_dim']
  if name.startswith('wavlm'):
    unilm = _unilm_state(state, mode)
    unilm['mask_emb'] = torch.randn(dim)
    files = {f'{name}_unilm.pt': ({'cfg': _fairseq_model_cfg(name), 'model': unilm}, False)}
    if name == 'wavlm_base':
      files[f'{name}.pth'] = (state, False)
    return files
  fairseq = _fairseq_state(w2v, state, mode)
  history = [{'criterion_name': 'HubertCriterion' if name.startswith('hubert') else
              'Wav2vecCriterion', 'optimizer_name': 'FairseqAdam', 'num_updates': 400000,
              'lr_scheduler_state': {'best': None}}]
  extra_state = {'epoch': 289, 'previous_training_time': 1.5e5,
                 'metrics': {'train': [('loss', _Meter(), 0)]}}
  if name == 'hubert_base':  # hydra-era file: 'cfg' dict, HuBERT's pre-training extras
    fairseq.update(label_embs_concat=torch.randn(24, 8), mask_emb=torch.randn(dim))
    fairseq.update({'final_proj.weight': torch.randn(8, dim), 'final_proj.bias': torch.randn(8)})
    cfg = {'_name': None, 'common': {'fp16': True, 'seed': 1337},
           'model': {'_name': 'hubert', **_fairseq_model_cfg(name)},
           'task': {'_name': 'hubert_pretraining', 'normalize': pre_ln, 'labels': ['km'],
                    'sample_rate': 16000, 'label_rate': 50},
           'criterion': {'_name': 'hubert', 'pred_masked_weight': 1.0}}
    checkpoint = {'args': None, 'cfg': cfg, 'model': fairseq, 'optimizer_history': history,
                  'extra_state': extra_state, 'last_optimizer_state': None}
    return {f'{name}.pth': (state, False), f'{name}_weight_g.pth': (_weight_g_names(state), True),
            f'{name}_fairseq.pt': (checkpoint, False)}
  # 2020 wav2vec 2.0 file: an argparse.Namespace 'args' (model and task options together).
  fairseq.update({'mask_emb': torch.randn(dim), 'quantizer.vars': torch.randn(1, 20, 4),
                  'quantizer.weight_proj.weight': torch.randn(20, 16),
                  'quantizer.weight_proj.bias': torch.randn(20),
                  'project_q.weight': torch.randn(8, 8), 'project_q.bias': torch.randn(8),
                  'final_proj.weight': torch.randn(8, dim), 'final_proj.bias': torch.randn(8)})
  args = argparse.Namespace(arch='wav2vec2', task='audio_pretraining', normalize=pre_ln,
                            sample_rate=16000, criterion='wav2vec', **_fairseq_model_cfg(name))
  checkpoint = {'args': args, 'model': fairseq, 'optimizer_history': history,
                'extra_state': extra_state, 'last_optimizer_state': None}
  return {f'{name}.pth': (state, False), f'{name}_fairseq.pt': (checkpoint, True)}


def write_ssl() -> list[pathlib.Path]:
  """ssl/inputs.npz; per model ssl/NAME.out.npz and its files (see `_ssl_files`)."""
  w2v = torchaudio_wav2vec2()
  _fake_fairseq_module()
  folder = OUT / 'ssl'
  folder.mkdir(exist_ok=True)
  inputs = ssl_inputs()
  paths = [folder / 'inputs.npz']
  np.savez(paths[0], **{k: v.numpy() for k, v in inputs.items()})
  for index, name in enumerate(SSL_MODELS):
    torch.manual_seed(10 + index)
    model = _ssl_model(w2v, name)
    outputs = {}
    with torch.no_grad():
      for p in model.parameters():  # away from init (LN 1/0, weight-norm g = |v|)
        p += 0.02 * torch.randn_like(p)
      for case, wave in inputs.items():
        outputs.update(_ssl_outputs(model, wave, normalize=SSL_MODELS[name][3], case=case))
    paths.append(folder / f'{name}.out.npz')
    np.savez(paths[-1], **outputs)
    for file_name, (obj, legacy) in _ssl_files(w2v, name, model).items():
      paths.append(folder / file_name)
      torch.save(obj, paths[-1], _use_new_zipfile_serialization=not legacy)
  return paths


# VoiceActivityProjection's stereo VapGPT, written from reference/data_and_stereo_spec.md B.3-B.7.
VAP_DIM, VAP_HEADS, VAP_SELF, VAP_CROSS = 32, 4, 1, 2
VAP_CASES = (('len16000', 16000, 1.0), ('len4800', 4800, 1.0), ('quiet', 4800, 1e-3))


def _alibi_slopes(n: int) -> list[float]:
  start = 2.0 ** (-(2.0 ** -(math.log2(n) - 3)))
  return [start ** (i + 1) for i in range(n)]


class _VapMHA(torch.nn.Module):
  """No biases; scores scaled by 1/sqrt(dim); ALiBi m_h * (key index) plus a causal mask."""

  def __init__(self, dim: int, heads: int):
    super().__init__()
    self.heads = heads
    for name in ('key', 'query', 'value', 'proj'):
      setattr(self, name, torch.nn.Linear(dim, dim, bias=False))
    slopes = torch.tensor(_alibi_slopes(heads), dtype=torch.float32)
    self.m = torch.nn.Parameter(slopes.view(heads, 1, 1), requires_grad=False)

  def forward(self, q_in, kv_in):
    b, t, d = q_in.shape
    split = lambda x: x.view(b, t, self.heads, -1).transpose(1, 2)
    q, k, v = split(self.query(q_in)), split(self.key(kv_in)), split(self.value(kv_in))
    scores = q @ k.transpose(-1, -2) / d ** 0.5
    j = torch.arange(t, dtype=torch.float32)
    bias = self.m * j.view(1, 1, t) + torch.full((t, t), float('-inf')).triu(1)
    out = torch.softmax(scores + bias, dim=-1) @ v
    return self.proj(out.transpose(1, 2).reshape(b, t, d))


class _VapLayer(torch.nn.Module):
  """Pre-LN: self-attention, (cross-attention with un-normalised source), FFN; no final LN."""

  def __init__(self, dim: int, heads: int, cross: bool):
    super().__init__()
    self.ln_self_attn, self.ln_ffnetwork = torch.nn.LayerNorm(dim), torch.nn.LayerNorm(dim)
    self.mha = _VapMHA(dim, heads)
    if cross:
      self.ln_src_attn, self.mha_cross = torch.nn.LayerNorm(dim), _VapMHA(dim, heads)
    self.ffnetwork = torch.nn.Sequential(
        torch.nn.Linear(dim, 3 * dim, bias=False), torch.nn.GELU(), torch.nn.Dropout(0.1),
        torch.nn.Linear(3 * dim, dim, bias=False))

  def forward(self, x, src=None):
    h = self.ln_self_attn(x)
    x = x + self.mha(h, h)
    if src is not None:
      x = x + self.mha_cross(self.ln_src_attn(x), src)
    return x + self.ffnetwork(self.ln_ffnetwork(x))


class _Combinator(torch.nn.Module):
  def __init__(self, dim: int):
    super().__init__()
    self.h0_a = torch.nn.Linear(dim, dim, bias=False)
    self.h0_b = torch.nn.Linear(dim, dim, bias=False)
    self.ln = torch.nn.LayerNorm(dim)

  def forward(self, x1, x2):
    gelu = torch.nn.functional.gelu
    return gelu(self.ln(self.h0_a(x1))) + gelu(self.ln(self.h0_b(x2)))


class _Stereo(torch.nn.Module):
  """GPTStereo: shared layers, each updating both speakers from the layer's inputs."""

  def __init__(self, dim: int, heads: int, layers: int):
    super().__init__()
    self.layers = torch.nn.ModuleList([_VapLayer(dim, heads, True) for _ in range(layers)])
    self.combinator = _Combinator(dim)

  def forward(self, x1, x2):
    for layer in self.layers:
      x1, x2 = layer(x1, x2), layer(x2, x1)
    return self.combinator(x1, x2), x1, x2


class _Channel(torch.nn.Module):
  def __init__(self, dim: int, heads: int, layers: int):
    super().__init__()
    self.layers = torch.nn.ModuleList([_VapLayer(dim, heads, False) for _ in range(layers)])

  def forward(self, x):
    for layer in self.layers:
      x = layer(x)
    return x


class _Transpose(torch.nn.Module):  # einops Rearrange 'b t d -> b d t' (no parameters)
  def forward(self, x):
    return x.transpose(1, 2)


class _CConv1d(torch.nn.Conv1d):
  """Causal conv: (k - 1) zeros on the left only."""

  def forward(self, x):
    return super().forward(torch.nn.functional.pad(x, (self.kernel_size[0] - 1, 0)))


class _LNWrap(torch.nn.Module):  # LayerNorm over channels of (B, C, T), stored as `.ln`
  def __init__(self, dim: int):
    super().__init__()
    self.ln = torch.nn.LayerNorm(dim)

  def forward(self, x):
    return self.ln(x.transpose(1, 2)).transpose(1, 2)


class _EncoderCPC(torch.nn.Module):
  """CPC (gEncoder + gAR, always) then the 50-Hz causal downsampler."""

  def __init__(self, dim: int):
    super().__init__()
    self.encoder = _CPC(dim, 1)
    self.downsample = torch.nn.Sequential(_Transpose(), _CConv1d(dim, dim, 5, 2), _LNWrap(dim),
                                          torch.nn.GELU(), _Transpose())

  def forward(self, wave):
    return self.downsample(self.encoder(wave)[1])


class _VapGPT(torch.nn.Module):
  def __init__(self):
    super().__init__()
    self.encoder = _EncoderCPC(VAP_DIM)
    self.ar_channel = _Channel(VAP_DIM, VAP_HEADS, VAP_SELF)
    self.ar = _Stereo(VAP_DIM, VAP_HEADS, VAP_CROSS)
    self.objective = torch.nn.Module()
    self.objective.codebook = torch.nn.Module()
    codes = [[(c >> p) & 1 for p in range(8)] for c in range(256)]
    self.objective.codebook.emb = torch.nn.Embedding(256, 8)
    self.objective.codebook.emb.weight = torch.nn.Parameter(
        torch.tensor(codes, dtype=torch.float32), requires_grad=False)
    self.va_classifier = torch.nn.Linear(VAP_DIM, 1)
    self.vap_head = torch.nn.Linear(VAP_DIM, 256)

  def forward(self, waveform):
    x1 = self.ar_channel(self.encoder(waveform[:, 0]))
    x2 = self.ar_channel(self.encoder(waveform[:, 1]))
    x, x1, x2 = self.ar(x1, x2)
    vad = torch.cat([self.va_classifier(x1), self.va_classifier(x2)], dim=-1)
    return self.vap_head(x), vad


def _fake_lightning_module():
  """Registers `lightning_fabric.utilities.data.AttributeDict` (a dict subclass) for pickling."""
  for name in ('lightning_fabric', 'lightning_fabric.utilities', 'lightning_fabric.utilities.data'):
    sys.modules.setdefault(name, types.ModuleType(name))
  attribute_dict = type('AttributeDict', (dict,), {'__module__': 'lightning_fabric.utilities.data'})
  sys.modules['lightning_fabric.utilities.data'].AttributeDict = attribute_dict
  return attribute_dict


def write_vap() -> list[pathlib.Path]:
  """vap/inputs.npz (stereo [1, 2, S]), vap/out.npz (logits_CASE, vad_CASE), the model as
  VoiceActivityProjection [main]'s state dict (vap_state_dict.pt) and as a [newMaster] Lightning
  checkpoint (vap_lightning.ckpt: `model.transformer.` names, AttributeDict hyper_parameters)."""
  folder = OUT / 'vap'
  folder.mkdir(exist_ok=True)
  torch.manual_seed(30)
  model = _VapGPT().eval()
  inputs = {case: amplitude * torch.randn(1, 2, samples) for case, samples, amplitude in VAP_CASES}
  outputs = {}
  with torch.no_grad():
    for name, p in model.named_parameters():
      if not name.endswith('.m') and 'codebook' not in name:
        p += 0.02 * torch.randn_like(p)
    for case, wave in inputs.items():
      outputs[f'logits_{case}'], outputs[f'vad_{case}'] = (x.numpy() for x in model(wave))
  paths = [folder / 'inputs.npz', folder / 'out.npz', folder / 'vap_state_dict.pt',
           folder / 'vap_lightning.ckpt']
  np.savez(paths[0], **{k: v.numpy() for k, v in inputs.items()})
  np.savez(paths[1], **outputs)
  state = model.state_dict()
  torch.save(state, paths[2])
  renamed = collections.OrderedDict(  # [newMaster]: the stacks under transformer., model.
      ('model.' + re.sub(r'^(ar_channel|ar)\.', r'transformer.\1.', k), v)
      for k, v in state.items())
  hyper = _fake_lightning_module()(conf={'model': {'dim': VAP_DIM}}, lr=3.63e-4)
  torch.save({'epoch': 9, 'global_step': 1000, 'pytorch-lightning_version': '2.0.0',
              'state_dict': renamed, 'hyper_parameters': hyper, 'optimizer_states': [],
              'lr_schedulers': [], 'callbacks': {}}, paths[3])
  return paths


# conv_ssl's mono VPModel (paper B, 50 Hz), written from reference/vap_spec.md 2.1-2.6; module
# names from conv_ssl's code (net.encoder, net.vad_condition.{va_condition, va_history, ln},
# net.ar.ar.layers.N.{ln_multihead, multihead, ln_ffnetwork, ffnetwork},
# net.vap_head.projection_head). conv_ssl's later GPT layer names its first LayerNorm
# ln_self_attn and adds the attention residual once: the same weights are saved in that layout too.
CONV_SSL_LAYERS = 2
CONV_SSL_CASES = (('len16000', 16000, 1.0), ('quiet', 4800, 1e-3))


class _ConvSSLLayer(torch.nn.Module):
  """conv_ssl's 2022 GPT layer: pre-LN, the residual added twice (h = 2x + attn), ALiBi slopes
  kept out of the state dict; `double_residual=False` is the later layer's single residual."""

  def __init__(self, dim: int, heads: int):
    super().__init__()
    self.double_residual = True
    self.ln_multihead, self.ln_ffnetwork = torch.nn.LayerNorm(dim), torch.nn.LayerNorm(dim)
    self.multihead = _VapMHA(dim, heads)
    slopes = self.multihead.m.detach().clone()
    del self.multihead.m
    self.multihead.register_buffer('m', slopes, persistent=False)
    self.ffnetwork = torch.nn.Sequential(
        torch.nn.Linear(dim, 3 * dim, bias=False), torch.nn.GELU(), torch.nn.Dropout(0.4),
        torch.nn.Linear(3 * dim, dim, bias=False))

  def forward(self, x):
    z = self.ln_multihead(x)
    h = x + self.multihead(z, z)
    if self.double_residual:
      h = x + h
    return h + self.ffnetwork(self.ln_ffnetwork(h))


class _ConvSSLNet(torch.nn.Module):
  """ProjectionModel: encoder -> + LN(Linear(va) + Linear(va_history)) -> GPT -> VAP head."""

  def __init__(self):
    super().__init__()
    self.encoder = _EncoderCPC(VAP_DIM)
    self.vad_condition = torch.nn.Module()
    self.vad_condition.va_condition = torch.nn.Linear(2, VAP_DIM)
    self.vad_condition.va_history = torch.nn.Linear(5, VAP_DIM)
    self.vad_condition.ln = torch.nn.LayerNorm(VAP_DIM)
    self.ar = torch.nn.Module()
    self.ar.ar = torch.nn.Module()
    self.ar.ar.layers = torch.nn.ModuleList(
        [_ConvSSLLayer(VAP_DIM, VAP_HEADS) for _ in range(CONV_SSL_LAYERS)])
    self.vap_head = torch.nn.Module()
    self.vap_head.projection_head = torch.nn.Linear(VAP_DIM, 256)

  def forward(self, waveform, va, va_history):
    z = self.encoder(waveform)[:, :va.shape[1]]
    vc = self.vad_condition
    z = z + vc.ln(vc.va_condition(va) + vc.va_history(va_history))[:, :z.shape[1]]
    for layer in self.ar.ar.layers:
      z = layer(z)
    return self.vap_head.projection_head(z)


def write_conv_ssl() -> list[pathlib.Path]:
  """conv_ssl/inputs.npz (mono wave, va, va_history per case), conv_ssl/out.npz (logits_CASE of
  the 2022 layers, logits_later_CASE of the same weights with the later single residual),
  conv_ssl/conv_ssl.ckpt (2022 names) and conv_ssl/conv_ssl_later.ckpt (later names): Lightning
  checkpoints with `net.` weights, the frozen `VAP.codebook` and `hyper_parameters` {'conf': ...}
  (an AttributeDict) naming the architecture."""
  folder = OUT / 'conv_ssl'
  folder.mkdir(exist_ok=True)
  torch.manual_seed(40)
  model = torch.nn.Module()
  model.net = _ConvSSLNet().eval()
  model.VAP = torch.nn.Module()
  model.VAP.codebook = torch.nn.Module()
  model.VAP.codebook.emb = torch.nn.Embedding(256, 8)
  inputs, outputs = {}, {}
  with torch.no_grad():
    for p in model.net.parameters():
      p += 0.02 * torch.randn_like(p)
    for case, samples, amplitude in CONV_SSL_CASES:
      frames = samples // 320
      wave = amplitude * torch.randn(2, samples)
      va = (torch.rand(2, frames, 2) > 0.5).float()
      history = torch.rand(2, frames, 5)
      inputs.update({f'wave_{case}': wave, f'va_{case}': va, f'history_{case}': history})
      outputs[f'logits_{case}'] = model.net(wave, va, history).numpy()
      for layer in model.net.ar.ar.layers:
        layer.double_residual = False
      outputs[f'logits_later_{case}'] = model.net(wave, va, history).numpy()
      for layer in model.net.ar.ar.layers:
        layer.double_residual = True
  conf = {'model': {
      'encoder': {'name': 'cpc', 'output_layer': 1, 'frame_hz': 50,
                  'downsample': {'kernel': [5], 'stride': [2], 'dilation': [1],
                                 'dim': VAP_DIM, 'activation': 'GELU'}},
      'va_cond': {'history': True, 'history_bins': 5},
      'ar': {'type': 'gpt', 'dim': VAP_DIM, 'num_layers': CONV_SSL_LAYERS,
             'num_heads': VAP_HEADS, 'dff_k': 3, 'dropout': 0.4, 'use_pos_emb': 0},
      'vap': {'type': 'discrete', 'bin_times': [0.2, 0.4, 0.6, 0.8], 'pre_frames': 2,
              'bin_threshold': 0.5}}}
  hyper = _fake_lightning_module()(conf=conf)
  paths = [folder / 'inputs.npz', folder / 'out.npz', folder / 'conv_ssl.ckpt',
           folder / 'conv_ssl_later.ckpt']
  np.savez(paths[0], **{k: v.numpy() for k, v in inputs.items()})
  np.savez(paths[1], **outputs)
  state = model.state_dict()
  later = collections.OrderedDict((k.replace('.ln_multihead.', '.ln_self_attn.'), v)
                                  for k, v in state.items())
  for weights, path in ((state, paths[2]), (later, paths[3])):
    torch.save({'epoch': 20, 'global_step': 5000, 'pytorch-lightning_version': '1.6.0',
                'state_dict': weights, 'hyper_parameters': hyper,
                'optimizer_states': [], 'lr_schedulers': [], 'callbacks': {}}, path)
  return paths


FULL_SIZE_DIR = pathlib.Path(os.environ.get('FULL_SIZE_DIR', '/tmp/convssl_full_size'))
# name -> (torchaudio factory, files): released Base/Large architectures, random perturbed weights.
FULL_SIZE = {'hubert_base': ('hubert_base', ('hubert_base.pth', 'hubert_base_fairseq.pt')),
             'wavlm_base': ('wavlm_base', ('wavlm_base_unilm.pt',)),
             'hubert_large': ('hubert_large', ('hubert_large.pth',))}


def write_full_size() -> list[pathlib.Path]:
  """Full-size models in FULL_SIZE_DIR (hundreds of MB: never committed) for the slow test
  tests/test_convert_ssl.py::test_full_size_parity: inputs.npz (2 s, a quiet 2 s, 20 s), per
  model NAME.out.npz (every layer) and its files."""
  w2v = torchaudio_wav2vec2()
  _fake_fairseq_module()
  FULL_SIZE_DIR.mkdir(parents=True, exist_ok=True)
  torch.manual_seed(0)
  inputs = {'len32000': torch.randn(1, 32000), 'quiet': 1e-3 * torch.randn(1, 32000),
            'len320000': torch.randn(1, 320000)}  # 999 frames: WavLM offsets past 800
  paths = [FULL_SIZE_DIR / 'inputs.npz']
  np.savez(paths[0], **{k: v.numpy() for k, v in inputs.items()})
  for index, (name, (factory, files)) in enumerate(FULL_SIZE.items()):
    torch.manual_seed(20 + index)
    model = getattr(w2v, factory)().eval()
    large = model.encoder.transformer.layers[0].layer_norm_first  # pre-LN: Large
    outputs = {}
    with torch.no_grad():
      for p in model.parameters():
        p += 0.02 * torch.randn_like(p)
      for case, wave in inputs.items():
        if case == 'len320000' and not name.startswith('wavlm'):
          continue
        outputs.update(_ssl_outputs(model, wave, normalize=large, case=case))
    paths.append(FULL_SIZE_DIR / f'{name}.out.npz')
    np.savez(paths[-1], **outputs)
    state = model.state_dict()
    mode = 'layer_norm' if large else 'group_norm'
    for file in files:
      paths.append(FULL_SIZE_DIR / file)
      if file.endswith('_unilm.pt'):
        cfg = {'extractor_mode': 'default', 'encoder_layers': 12, 'encoder_embed_dim': 768,
               'encoder_ffn_embed_dim': 3072, 'encoder_attention_heads': 12,
               'layer_norm_first': False, 'relative_position_embedding': True,
               'num_buckets': 320, 'max_distance': 800, 'gru_rel_pos': True, 'normalize': False}
        torch.save({'cfg': cfg, 'model': _unilm_state(state, mode)}, paths[-1])
      elif file.endswith('_fairseq.pt'):
        cfg = {'model': {'_name': 'hubert', 'extractor_mode': 'default'},
               'task': {'normalize': False}}
        torch.save({'args': None, 'cfg': cfg, 'model': _fairseq_state(w2v, state, mode)},
                   paths[-1])
      else:
        torch.save(state, paths[-1])
  return paths


def _join(key: str, part) -> str:
  return f'{key}/{part}' if key else str(part)


def _expectation(obj, arrays: dict, key: str):
  """JSON form of `obj`; its tensors go to `arrays` under `key` paths."""
  if isinstance(obj, torch.Tensor):
    tensor = obj.detach()
    value = tensor.float() if tensor.dtype == torch.bfloat16 else tensor
    arrays[key] = value.numpy().copy()  # C order, 0-d kept
    return {'__tensor__': key, 'dtype': str(tensor.dtype).removeprefix('torch.'),
            'shape': list(tensor.shape)}
  if isinstance(obj, argparse.Namespace):
    return _expectation(vars(obj), arrays, key)
  if type(obj).__module__.startswith('omegaconf'):
    from omegaconf import OmegaConf  # pylint: disable=import-outside-toplevel
    return _expectation(OmegaConf.to_container(obj, resolve=False), arrays, key)
  if isinstance(obj, dict):
    return {k: _expectation(v, arrays, _join(key, k)) for k, v in obj.items()}
  if isinstance(obj, tuple):  # torch.Size included
    return {'__tuple__': [_expectation(v, arrays, _join(key, i)) for i, v in enumerate(obj)]}
  if isinstance(obj, list):
    return [_expectation(v, arrays, _join(key, i)) for i, v in enumerate(obj)]
  return obj


def write(name: str, obj, expect: bool) -> list[pathlib.Path]:
  """NAME.pt and NAME_legacy.pt, plus NAME.expected.{json,npz} when `expect`."""
  zip_path, legacy_path = OUT / f'{name}.pt', OUT / f'{name}_legacy.pt'
  torch.save(obj, zip_path)
  torch.save(obj, legacy_path, _use_new_zipfile_serialization=False)
  paths = [zip_path, legacy_path]
  if expect:
    arrays = {}
    tree = _expectation(obj, arrays, '')
    paths.append(OUT / f'{name}.expected.json')
    paths[-1].write_text(json.dumps(tree, indent=1) + '\n')
    paths.append(OUT / f'{name}.expected.npz')
    np.savez(paths[-1], **arrays)
  return paths


def _write_reader() -> list[pathlib.Path]:
  paths = [p for name, obj in reader_fixtures().items() for p in write(name, obj, expect=True)]
  return paths + [p for name, obj in hostile_fixtures().items()
                  for p in write(name, obj, expect=False)]


GROUPS = {'reader': _write_reader, 'cpc': lambda: write_cpc() + write_cpc_channel_norm(),
          'ssl': write_ssl, 'vap': lambda: write_vap() + write_conv_ssl(),
          'full': write_full_size}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('groups', nargs='*', choices=[[], *GROUPS],
                      default=['reader', 'cpc', 'ssl', 'vap'],
                      help='fixture groups to (re)write (default: all but full)')
  OUT.mkdir(parents=True, exist_ok=True)
  paths = [p for group in parser.parse_args().groups for p in GROUPS[group]()]
  for path in paths:
    print(f'{path.stat().st_size:7d}  {path}')
  print(f'{sum(p.stat().st_size for p in paths):7d}  in total')


if __name__ == '__main__':
  main()
