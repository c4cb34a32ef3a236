"""`python -m checkpoints_convert FORMAT SRC DST`: a PyTorch checkpoint -> a converted encoder.

DST gets `config.json` and an Orbax `params` checkpoint that
`convssl_jax.models.load_encoder(DST)` and `--config.model.encoder_checkpoint=DST` read.
Formats: cpc (CPC_audio, e.g. `60k_epoch4-d0f474de.pt`); hubert, wav2vec2 (torchaudio `.pth`
or fairseq `.pt`) and wavlm (torchaudio `.pth` or unilm `.pt`), Base and Large; vap (a whole
VoiceActivityProjection stereo model, state dict or Lightning `.ckpt`) and conv_ssl (a whole
conv_ssl mono model, Lightning `.ckpt`); read those back with `convssl_jax.models.load_model(DST)`.
`--set FIELD=VALUE` (hubert/wav2vec2/wavlm) sets an architecture field a file does not store,
e.g. `--set num_heads=16` for a torchaudio file of an unusual width (VALUE is JSON).
`--max_bytes` sets the reader's memory budget (default: 3x the file's size + 64 MiB), e.g. 8G.
A checkpoint refused (unsafe, corrupt, too large, not a model we convert) prints one line on
stderr and exits 2; `--verbose` shows the traceback.
"""

import argparse
import functools
import json
import os
import pathlib
import re
import sys

import jax
import numpy as np

from checkpoints_convert import cpc, ssl, vap
from convssl_jax import errors
from convssl_jax.models import pretrained

CONVERTERS = {'cpc': cpc.convert, 'vap': vap.convert, 'conv_ssl': vap.convert_conv_ssl,
              **{name: functools.partial(ssl.convert, family=name) for name in ssl.NAMES}}


def _override(text: str) -> tuple[str, object]:
  field, sep, value = text.partition('=')
  if not sep:
    raise argparse.ArgumentTypeError(f'expected FIELD=VALUE, got {text!r}')
  try:
    return field, json.loads(value)
  except json.JSONDecodeError:
    return field, value  # a bare string such as layer_norm


_UNITS = {'': 1, 'K': 1 << 10, 'M': 1 << 20, 'G': 1 << 30, 'T': 1 << 40}


def _byte_count(text: str) -> int:
  """'8G', '512M' or a plain count of bytes (binary units)."""
  match = re.fullmatch(r'(\d+(?:\.\d*)?)([KMGT]?)', text.strip().upper())
  if not match or not (count := int(float(match[1]) * _UNITS[match[2]])):
    raise argparse.ArgumentTypeError(f'expected a positive byte count such as 8G, got {text!r}')
  return count


def _convert(args) -> None:
  dst = pathlib.Path(args.dst)
  if (dst / pretrained.CONFIG_FILE).exists() or (dst / pretrained.PARAMS_DIR).exists():
    raise errors.UserError(f'{dst}: holds a conversion already; give a new directory')
  kwargs = {'overrides': dict(args.set)} if args.set else {}
  config, params = CONVERTERS[args.format](args.src, max_bytes=args.max_bytes, **kwargs)
  config = {'name': args.format, **config, 'source': os.path.abspath(args.src)}
  pretrained.save(args.dst, config, params)
  leaves = jax.tree.leaves(params)
  print(f'converted {args.src} -> {args.dst}: {len(leaves)} tensors, '
        f'{sum(int(np.size(x)) for x in leaves):,} parameters')
  print(json.dumps(config, indent=1))


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(prog='python -m checkpoints_convert', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('format', choices=sorted(CONVERTERS))
  parser.add_argument('src', help='the PyTorch file')
  parser.add_argument('dst', help='the output directory (must not hold a conversion already)')
  parser.add_argument('--set', type=_override, action='append', default=[], metavar='FIELD=VALUE',
                      help='override an architecture field (hubert, wav2vec2, wavlm)')
  parser.add_argument('--max_bytes', type=_byte_count, metavar='BYTES',
                      help="the reader's memory budget, e.g. 8G (default: 3x the file's size + "
                           '64 MiB); raise it only for a file you trust')
  parser.add_argument('--verbose', action='store_true',
                      help='show the traceback of a refused checkpoint too')
  args = parser.parse_args(argv)
  if args.set and args.format not in ssl.NAMES:
    parser.error(f'--set applies to {", ".join(ssl.NAMES)}, not {args.format}')
  try:
    _convert(args)
  except errors.UserError as error:
    if args.verbose:
      raise
    print(f'{parser.prog}: error: {error}', file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
  main()
