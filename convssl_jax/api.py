"""One call from Python: `convssl_jax.load(path)` -> a model that predicts and streams.

  model = convssl_jax.load('runs/vap')               # a trained workdir, or a converted model
  out = model.predict('dialog.wav', va='dialog.TextGrid')   # what predict's JSON holds
  streamer = model.streamer()                         # inference.Streamer: push audio hops

A trained workdir brings its own config (WORKDIR/config.json, recorded when it was trained); a
converted model directory (`python -m checkpoints_convert vap|conv_ssl SRC DIR`) its model and
recipe, completed with the references' evaluation settings (`recipes.base_config`).
"""

import dataclasses
import os
import pathlib
from typing import Any

import jax

from convssl_jax import config_check, errors, inference, model_state as model_state_lib
from convssl_jax import predict as predict_lib, recipes, trainer, workdir_config
from convssl_jax.models import pretrained


@dataclasses.dataclass
class Model:
  """A trained or converted VAP model ready to use: `state` (a ModelState), its `config`, and
  `source` (what it is: the workdir and checkpoint, or the converted directory)."""
  state: model_state_lib.ModelState
  config: Any
  source: str

  def predict(self, audio, va=None) -> dict[str, Any]:
    """The model over a whole recording, as `run.py --mode=predict` writes it to JSON (unrounded,
    `predict.described`): 'frame_hz', 'time' [T] in seconds, 'va', 'p_now', 'p_future', 'p_bc',
    'vad' [T, 2] as the head has them (column 0 = speaker A), and with a VA list 'p' (the
    next-speaker probability) and 'events' ({event, speaker, start, end} in seconds); with the
    model's VAD 'vad_list'.

    `audio`: a file path, or samples [S] (speaker A) or [S, 2] (one speaker per channel) float
    at 16 kHz. `va`: the voice activity, a VA list ([[[start, end], ...] of A, [...] of B] in
    seconds) or a file (JSON, predict's JSON or a TextGrid); the mono model needs it.
    """
    if isinstance(va, (str, os.PathLike)):
      va = predict_lib.read_va_list(va)
    return predict_lib.described(predict_lib.predict_file(self.state, self.config, audio, va))

  def streamer(self, context_s: float | None = None) -> inference.Streamer:
    """The model live (`inference.Streamer`): `push(samples [2, n])` at 16 kHz -> the outputs of
    the frames completed. `context_s`: attention in seconds (default: the model's own, else
    data.window_s, the longest it was trained on)."""
    return inference.streamer_for(self.state.model(), self.state.objective, self.config,
                                  context_s)


def load(path, *, checkpoint: str | None = None) -> Model:
  """The model of `path`: a trained workdir (its `checkpoint`, 'best' or 'latest'; default its
  config's eval.checkpoint) or a converted VAP model directory."""
  path = pathlib.Path(path)
  if (path / pretrained.PARAMS_DIR).is_dir():
    stored = pretrained.read_config(path)
    if 'model' not in stored:
      raise errors.InputError(f'{path}: a converted {stored.get("name")!r} encoder, not a VAP '
                              'model (convssl_jax.models.load_encoder reads it)')
    state, config = model_state_lib.converted(recipes.base_config(stored['model']['kind']), path)
    _checked(config)
    return Model(state, config, f'{path} (converted)')
  config = workdir_config.read(path)
  if config is None:
    raise errors.NotFoundError(
        f'{path}: neither a trained workdir (no {workdir_config.CONFIG_FILE}: train with '
        'python run.py --workdir=... first) nor a converted model (no '
        f'{pretrained.PARAMS_DIR}/: python -m checkpoints_convert vap|conv_ssl SRC DIR)')
  _checked(config)
  which = checkpoint or config.eval.checkpoint
  state, step = trainer.restore_model(config, path, which)
  return Model(state, config, f'{path} ({which} checkpoint, step {step})')


def _checked(config) -> None:
  config_check.check(config)
  config_check.check_devices(config, jax.device_count())

