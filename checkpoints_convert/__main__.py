"""`python -m checkpoints_convert FORMAT SRC DST`: a PyTorch checkpoint -> a converted encoder.

DST gets `config.json` and an Orbax `params` checkpoint that
`convssl_jax.models.load_encoder(DST)` and `--config.model.encoder_checkpoint=DST` read.
Formats: cpc (CPC_audio, e.g. `60k_epoch4-d0f474de.pt`).
"""

import argparse
import json
import os

import jax
import numpy as np

from checkpoints_convert import cpc
from convssl_jax.models import pretrained

CONVERTERS = {'cpc': cpc.convert}


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(prog='python -m checkpoints_convert', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('format', choices=sorted(CONVERTERS))
  parser.add_argument('src', help='the PyTorch file')
  parser.add_argument('dst', help='the output directory (must not hold a conversion already)')
  args = parser.parse_args(argv)
  config, params = CONVERTERS[args.format](args.src)
  config = {'name': args.format, **config, 'source': os.path.abspath(args.src)}
  pretrained.save(args.dst, config, params)
  leaves = jax.tree.leaves(params)
  print(f'converted {args.src} -> {args.dst}: {len(leaves)} tensors, '
        f'{sum(int(np.size(x)) for x in leaves):,} parameters')
  print(json.dumps(config, indent=1))


if __name__ == '__main__':
  main()
