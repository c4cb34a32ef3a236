"""CPC_audio checkpoints (`60k_epoch4-d0f474de.pt` and its hub format) -> our `CPCEncoder`.

The hub file is `{'config': argparse options, 'weights': state dict, ...}`; a checkpoint written
by CPC_audio's cpc/train.py is `{'gEncoder': state dict, 'cpcCriterion', 'optimizer', 'best'}`
with its options beside it in `checkpoint_args.json` (reference/checkpoints_spec.md 1.3). The
architecture comes from the stored options; anything our encoder
cannot reproduce is refused. Every expected tensor must be present exactly once (a leading
`module.` is stripped) and no other key may sit in 'weights': CPC_audio loads with strict=False,
so a misnamed key would otherwise silently stay random.
"""

import json
import os
import pathlib

import numpy as np

from checkpoints_convert import keys, stored, torch_file
from checkpoints_convert.keys import ConversionError
from convssl_jax.models import cpc

# config field -> (value CPC_audio's hub config defaults to, the values our encoder supports).
_SUPPORTED = {
    'arMode': ('LSTM', ('LSTM',)),
    'normMode': ('layerNorm', ('layerNorm',)),
    'encoder_type': ('cpc', ('cpc',)),
    'cpc_mode': (None, (None, 'none')),
}


def encoder_config(config: dict, path: str) -> dict:
  """Our encoder's config {'dim', 'lstm_layers'} from CPC_audio's stored argparse options
  (`path`: the file that holds them), checked and bounded before anything is sized by them."""
  stored.mapping(config, 'config', path)
  for field, (default, supported) in _SUPPORTED.items():
    if not stored.one_of(value := config.get(field, default), supported):
      raise ConversionError(f'{path}: config {field}={stored.show(value)} is not supported (our '
                            f'CPC encoder reproduces {field} in {list(supported)})')
  width = lambda field: stored.integer(config.get(field, 256), f'config {field}', path, 1,
                                       stored.MAX_WIDTH)
  dim, hidden_gar = width('hiddenEncoder'), width('hiddenGar')
  if hidden_gar != dim:
    raise ConversionError(f'{path}: config hiddenGar={hidden_gar!r} differs from hiddenEncoder='
                          f'{dim!r}; our CPC encoder has one width')
  layers = stored.integer(config.get('nLevelsGRU', 1), 'config nLevelsGRU', path, 1,
                          stored.MAX_LAYERS)
  return {'dim': dim, 'lstm_layers': layers}


def expected_shapes(dim: int, lstm_layers: int) -> dict[str, tuple[int, ...]]:
  """CPC_audio's state-dict keys and shapes (spec 1.4) for this architecture."""
  shapes = {}
  for i, k in enumerate(cpc.KERNELS):
    shapes[f'gEncoder.conv{i}.weight'] = (dim, 1 if i == 0 else dim, k)
    shapes[f'gEncoder.conv{i}.bias'] = (dim,)
    shapes[f'gEncoder.batchNorm{i}.weight'] = shapes[f'gEncoder.batchNorm{i}.bias'] = (1, dim, 1)
  for layer in range(lstm_layers):
    for kind in ('ih', 'hh'):
      shapes[f'gAR.baseNet.weight_{kind}_l{layer}'] = (4 * dim, dim)
      shapes[f'gAR.baseNet.bias_{kind}_l{layer}'] = (4 * dim,)
  return shapes


def params_from_weights(w: dict[str, np.ndarray], lstm_layers: int) -> dict:
  """CPC_audio's state dict -> the pure dict of `nnx.state(CPCEncoder, nnx.Param)`.

  Conv (O, I, K) -> (K, I, O); ChannelNorm (1, C, 1) -> (C,); LSTM rows keep torch's gate order
  (i, f, g, o), which `LSTMLayer` splits in, so W -> W.T and the two biases are summed.
  """
  lstm = 'gAR.baseNet.'
  return {
      'convs': {i: {'kernel': w[f'gEncoder.conv{i}.weight'].transpose(2, 1, 0),
                    'bias': w[f'gEncoder.conv{i}.bias']} for i in range(len(cpc.KERNELS))},
      'norms': {i: {'scale': w[f'gEncoder.batchNorm{i}.weight'].reshape(-1),
                    'bias': w[f'gEncoder.batchNorm{i}.bias'].reshape(-1)}
                for i in range(len(cpc.KERNELS))},
      'lstm': {'layers': {
          l: {'input_proj': {'kernel': w[f'{lstm}weight_ih_l{l}'].T,
                             'bias': w[f'{lstm}bias_ih_l{l}'] + w[f'{lstm}bias_hh_l{l}']},
              'hidden_proj': {'kernel': w[f'{lstm}weight_hh_l{l}'].T}}
          for l in range(lstm_layers)}},
  }


TRAIN_ARGS_FILE = 'checkpoint_args.json'  # cpc/train.py's options, beside its checkpoints
_MAX_ARGS_BYTES = 1 << 20


def _read(path: str, max_bytes: int | None) -> tuple[dict, str, dict]:
  """(argparse options, the file holding them, state dict) of a hub file or of a cpc/train.py
  checkpoint."""
  checkpoint = torch_file.load(path, max_bytes=max_bytes)
  if isinstance(checkpoint, dict) and {'config', 'weights'} <= checkpoint.keys():
    return checkpoint['config'], path, stored.state_dict(checkpoint['weights'], "'weights'", path)
  if isinstance(checkpoint, dict) and 'gEncoder' in checkpoint:
    weights = stored.state_dict(checkpoint['gEncoder'], "'gEncoder'", path)
    args = pathlib.Path(path).parent / TRAIN_ARGS_FILE
    try:
      if not args.is_file() or args.stat().st_size > _MAX_ARGS_BYTES:
        raise OSError(f'not a file of at most {_MAX_ARGS_BYTES} bytes')
      return json.loads(args.read_text()), str(args), weights
    except (OSError, ValueError, RecursionError) as err:  # ValueError: not JSON, not UTF-8
      raise ConversionError(f"{path}: a cpc/train.py checkpoint ('gEncoder') needs its options "
                            f'in {args}: {err}') from err
  raise ConversionError(f"{path}: not a CPC_audio checkpoint (a hub file has 'config' and "
                        f"'weights', a cpc/train.py one 'gEncoder'; found "
                        f'{stored.found(checkpoint)})')


def convert(path: str | os.PathLike, *, max_bytes: int | None = None) -> tuple[dict, dict]:
  """(our encoder config {'dim', 'lstm_layers', 'padding'}, params pure dict) from a CPC_audio
  hub file or cpc/train.py checkpoint; `max_bytes`: the reader's budget (torch_file.load)."""
  path = os.fspath(path)
  options, options_path, state = _read(path, max_bytes)
  config = encoder_config(options, options_path)
  weights = keys.checked(keys.strip_module_prefix(state, path),
                         expected_shapes(**config), path, 'configured CPC')
  # The padding its weights were trained with, for models that load it (see build_model).
  return {**config, 'padding': 'reference'}, params_from_weights(weights, config['lstm_layers'])
