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

Later fixture groups (models) add a function returning {name: object} and a line in `main`.
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
  for path in paths:
    print(f'{path.stat().st_size:7d}  {path.relative_to(OUT.parents[2])}')
  print(f'{sum(p.stat().st_size for p in paths):7d}  in total')


if __name__ == '__main__':
  main()
