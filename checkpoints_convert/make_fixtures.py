"""Write the torch-file fixtures in tests/fixtures/torch/, each with torch's own expected values.

Needs torch (and omegaconf 2.0.x, the version fairseq pinned, for the DictConfig fixture), which
the project itself never installs. In a throwaway venv, from the repository root:

  python3.12 -m venv /tmp/torchenv
  /tmp/torchenv/bin/pip install torch==2.13.0 numpy omegaconf==2.0.6
  /tmp/torchenv/bin/python checkpoints_convert/make_fixtures.py

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
cpc/NAME.out.npz torch's conv features `z_CASE` and LSTM output `c_CASE` [2, T, 32].

Later fixture groups add a function returning {name: object} and a line in `main`.
"""

import argparse
import collections
import datetime
import json
import os
import pathlib
import warnings

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


def main():
  OUT.mkdir(parents=True, exist_ok=True)
  paths = [p for name, obj in reader_fixtures().items() for p in write(name, obj, expect=True)]
  paths += [p for name, obj in hostile_fixtures().items() for p in write(name, obj, expect=False)]
  paths += write_cpc()
  for path in paths:
    print(f'{path.stat().st_size:7d}  {path.relative_to(OUT.parents[2])}')
  print(f'{sum(p.stat().st_size for p in paths):7d}  in total')


if __name__ == '__main__':
  main()
