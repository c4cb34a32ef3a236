"""CPC pretraining (`configs/cpc_pretrain.py`) and the export of its encoder.

`pretrain(config, workdir)` trains with the common loop (`train.train_and_evaluate`: sharded
step, checkpoints, resume) and writes the encoder of the best (or, with
`eval.checkpoint='latest'`, the latest) checkpoint to WORKDIR/encoder in the format of
`python -m checkpoints_convert`, so `configs/vap.py` loads it with
`--config.model.encoder_checkpoint=WORKDIR/encoder` and `models.load_encoder` returns it.
"""

import pathlib
import shutil
from typing import Any

import jax
from flax import nnx

from convssl_jax import errors, parallelism, train, trainer
from convssl_jax.models import pretrained

ENCODER_DIR = 'encoder'


def export_encoder(config, workdir, which: str = 'best') -> pathlib.Path:
  """Writes the encoder of `workdir`'s `which` checkpoint to WORKDIR/encoder (replacing it)."""
  model, step = trainer.restore_model(config, workdir, which)
  params = jax.device_get(nnx.to_pure_dict(nnx.state(model.model().encoder, nnx.Param)))
  out = pathlib.Path(workdir) / ENCODER_DIR
  if jax.process_index() == 0:
    shutil.rmtree(out, ignore_errors=True)
  parallelism.sync_processes('export_encoder')  # Orbax saves with every process taking part
  m = config.model
  pretrained.save(out, {'name': 'cpc', 'dim': m.dim, 'lstm_layers': m.encoder.lstm_layers,
                        'padding': m.encoder.padding, 'input_gain': m.encoder.input_gain,
                        'source': str(pathlib.Path(workdir)),
                        'step': step, 'checkpoint': which}, params)
  return out


def pretrain(config, workdir) -> dict[str, Any]:
  """Trains `config` (kind 'cpc') in `workdir`, then exports its encoder; returns the losses
  (and 'encoder': the export's directory)."""
  if config.model.kind != 'cpc':
    raise errors.ConfigError("--mode=pretrain trains model.kind='cpc' (configs/cpc_pretrain.py), "
                             f'got {config.model.kind!r}')
  results = train.train_and_evaluate(config, workdir)
  if 'preempted_at_step' not in results:
    results['encoder'] = str(export_encoder(config, workdir, config.eval.checkpoint))
  return results
