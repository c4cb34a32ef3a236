"""The torch-file reader on full-size checkpoints: time and peak memory of `torch_file.load`
against its default budget (3x the file's size + 64 MiB).

Writes a torchaudio-style state dict with the tensor shapes of HuBERT Base (94.4 M parameters,
378 MB) or Large (315 M, 1.26 GB), float32 zeros, streamed into a zip (no copy held in memory),
then loads it in a fresh process and reports the file size, the default budget, the load's peak
RSS growth (VmHWM - VmRSS before the load) and seconds.

  python benchmarks/torch_file_budget.py --model=base
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import zipfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import results  # pylint: disable=wrong-import-position
from checkpoints_convert import ssl, torch_file  # pylint: disable=wrong-import-position
from convssl_jax.models.ssl_encoders import SSLConfig  # pylint: disable=wrong-import-position
from tests import torch_files  # pylint: disable=wrong-import-position

MODELS = {
    'base': SSLConfig(),
    'large': SSLConfig(extractor_mode='layer_norm', dim=1024, num_layers=24, num_heads=16,
                       ffn_dim=4096, layer_norm_first=True, normalize_waveform=True),
}
_CHUNK = 16 << 20

# Loads argv[1] and prints {'seconds', 'peak_growth_mb'} from /proc/self/status.
_CHILD = """
import json, sys, time
from checkpoints_convert import torch_file

def status(field):
  with open('/proc/self/status') as f:
    return next(int(l.split()[1]) / 1024 for l in f if l.startswith(field + ':'))

before = status('VmRSS')
start = time.perf_counter()
tree = torch_file.load(sys.argv[1])
seconds = time.perf_counter() - start
print(json.dumps({'seconds': round(seconds, 2), 'tensors': len(tree),
                  'peak_growth_mb': round(status('VmHWM') - before, 1)}))
"""


def write(path: str, config: SSLConfig) -> int:
  """A zip state dict of zeros with the encoder's tensor shapes; its parameter count."""
  shapes = ssl.expected_shapes(config)
  tree = {name: torch_files.Tensor(str(i), int(np.prod(shape)), shape,
                                   tuple(int(np.prod(shape[d + 1:])) for d in range(len(shape))))
          for i, (name, shape) in enumerate(shapes.items())}
  with zipfile.ZipFile(path, 'w') as archive:
    archive.writestr('archive/data.pkl', torch_files.dumps(tree))
    for t in tree.values():
      with archive.open(f'archive/data/{t.key}', 'w', force_zip64=True) as member:
        left = t.numel * 4
        while left:
          member.write(bytes(min(left, _CHUNK)))
          left -= min(left, _CHUNK)
  return sum(t.numel for t in tree.values())


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--model', choices=sorted(MODELS), default='base')
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as directory:
    path = os.path.join(directory, f'{args.model}.pt')
    parameters = write(path, MODELS[args.model])
    size = os.path.getsize(path)
    child = subprocess.run([sys.executable, '-c', _CHILD, path], capture_output=True, text=True,
                           check=True, env={**os.environ, 'PYTHONPATH': os.getcwd()})
  result = {'benchmark': 'torch_file_budget', 'model': args.model, 'parameters': parameters,
            'file_mb': round(size / 2 ** 20, 1),
            'default_budget_mb': round(torch_file.default_budget(size) / 2 ** 20, 1),
            **json.loads(child.stdout)}
  results.record('torch_file_budget', result, ('numpy',))


if __name__ == '__main__':
  main()
