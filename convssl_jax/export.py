"""Self-contained model artifacts: the streaming step and the offline forward through `jax.export`.

Each artifact is serialized StableHLO with the weights inside, plus a JSON card of its inputs,
outputs and SHA-256, so it runs wherever jax runs, without this package (`load` does the same
with this package):

  blob, card = open('stream_step.jaxexport', 'rb').read(), json.load(open('stream_step.json'))
  if hashlib.sha256(blob).hexdigest() != card['sha256']:
    raise ValueError("stream_step.jaxexport is damaged (its SHA-256 is not its card's)")
  exported = jax.export.deserialize(blob)
  state = [np.zeros(a.shape, a.dtype) for a in exported.in_avals[:card['state_leaves']]]
  state, outputs = exported.call(state, samples)  # samples [B, 2, hop] float32 at 16 kHz

The check matters: a flipped bit in the weights deserializes and runs, returning wrong numbers
(NaN, or plausible ones).

The streaming state is a flat list of arrays (all zeros at the start of a stream); outputs are a
dict of per-frame curves [B, n, 2] (`objective.frame_outputs`). The offline forward maps one
window `wave [B, 2, S]` (and for the mono model its VA [B, N, 2] and VA history) to the same curves
for each of its frames.

An artifact is lowered for every platform in `platforms` (default cpu, cuda and tpu; its card's
`platforms` and `exported.platforms` name them) and `call` runs the one of the device it is on.
Its attention is XLA's on every platform (`transformer.portable_attention`): cuDNN's custom call
would lower for CUDA alone.
"""

import hashlib
import json
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
from absl import logging
from flax import nnx

from convssl_jax import errors, inference
from convssl_jax.data.audio import SAMPLE_RATE
from convssl_jax.models import transformer
from convssl_jax.objective import VAPObjective, frame_outputs

STREAM_STEP, FORWARD = 'stream_step', 'forward'
PLATFORMS = ('cpu', 'cuda', 'tpu')
KNOWN_PLATFORMS = ('cpu', 'cuda', 'rocm', 'tpu')  # what jax.export lowers for


def check_platforms(platforms) -> tuple[str, ...]:
  """The platforms to export for, each known to jax.export, none twice."""
  platforms = tuple(platforms)
  unknown = [p for p in platforms if p not in KNOWN_PLATFORMS]
  if unknown or not platforms or len(set(platforms)) < len(platforms):
    raise errors.ConfigError(f'--export_platforms={",".join(platforms)}: give one or more of '
                             f'{", ".join(KNOWN_PLATFORMS)}, each once')
  return platforms


def _export(fn, platforms, *args) -> jax.export.Exported:
  """`fn` (jitted) traced with XLA's attention and lowered for `platforms`."""
  with transformer.portable_attention():
    return jax.export.export(jax.jit(fn), platforms=check_platforms(platforms))(*args)


def _write(directory: pathlib.Path, name: str, exported: jax.export.Exported,
           card: dict[str, Any]) -> pathlib.Path:
  path, blob = directory / f'{name}.jaxexport', exported.serialize()
  path.write_bytes(blob)
  card = {**card, 'platforms': list(exported.platforms),
          'sha256': hashlib.sha256(blob).hexdigest()}
  (directory / f'{name}.json').write_text(json.dumps(card, indent=2))
  return path


def load(path) -> tuple[jax.export.Exported, dict[str, Any]]:
  """(the artifact, its card) of `path` (a `.jaxexport` with its `.json` card beside it),
  checked against the card's SHA-256.

  Raises:
    errors.InputError: the artifact or its card is missing, unreadable or damaged.
  """
  path = pathlib.Path(path)
  card_path = path.with_suffix('.json')
  try:
    blob, card = path.read_bytes(), json.loads(card_path.read_text())
  except (OSError, ValueError) as e:
    raise errors.InputError(f'{path}: cannot read the artifact or its card {card_path.name}: '
                            f'{e}; export it again (--mode=export)') from e
  if 'sha256' not in card:
    logging.warning('%s: its card has no checksum (exported by an older version): loaded '
                    'unverified', path)
  elif hashlib.sha256(blob).hexdigest() != card['sha256']:
    raise errors.InputError(f'{path}: damaged, its SHA-256 is not the one in {card_path.name}; '
                            'export it again (--mode=export)')
  return jax.export.deserialize(blob), card


def export_stream_step(streamer: inference.Streamer, directory, frame_hz: int,
                       platforms=PLATFORMS) -> pathlib.Path:
  """The streamer's step with its weights: (state leaves, samples [B, 2, hop], *va) ->
  (state leaves, outputs), for `platforms`. Writes `stream_step.jaxexport` and `stream_step.json`."""
  leaves, treedef = jax.tree.flatten(streamer.initial_state)
  step, params = streamer.step_fn, streamer.params

  def stream_step(state_leaves, samples, *va):
    state, outputs = step(params, treedef.unflatten(state_leaves), samples, *va)
    return jax.tree.leaves(state), outputs

  rows = streamer.batch or 1
  exported = _export(
      stream_step, platforms, [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in leaves],
      jax.ShapeDtypeStruct((rows, 2, streamer.hop), jnp.float32), *streamer.va_inputs)
  card = {
      'function': 'stream_step(state, samples, *va) -> (state, outputs)',
      'state_leaves': len(leaves), 'initial_state': 'zeros of the first state_leaves in_avals',
      'samples': [rows, 2, streamer.hop], 'sample_rate': SAMPLE_RATE,
      'frame_hz': frame_hz, 'frames_per_step': streamer.frames_per_step,
      'va_inputs': [list(v.shape) for v in streamer.va_inputs],
      'outputs': sorted(exported.out_tree.unflatten(exported.out_avals)[1]),
  }
  return _write(pathlib.Path(directory), STREAM_STEP, exported, card)


def export_forward(model, objective: VAPObjective, directory, *, window_s: float,
                   batch: int = 1, platforms=PLATFORMS) -> pathlib.Path:
  """The offline model with its weights over one window: wave [B, 2, S] (and what else it reads,
  `model.va_inputs`: the mono model's VA [B, N, 2] and VA history [B, N, bins]) -> outputs
  [B, N, 2], for `platforms`. Writes `forward.jaxexport` and `forward.json`."""
  graphdef, params = nnx.split(model)
  samples = int(window_s * SAMPLE_RATE)
  frames = int(window_s * objective.frame_hz)  # the window's frames, as WindowSpec.frames

  def forward(wave, *va):
    model = nnx.merge(graphdef, params)
    model.eval()
    out = model(wave, *va)
    return frame_outputs(objective, out, va[0] if va else None, frames)

  inputs = [jax.ShapeDtypeStruct((batch, 2, samples), jnp.float32),
            *model.va_inputs(batch, frames)]
  exported = _export(forward, platforms, *inputs)
  card = {
      'function': 'forward(wave, *va) -> outputs', 'inputs': [list(x.shape) for x in inputs],
      'sample_rate': SAMPLE_RATE, 'frame_hz': objective.frame_hz,
      'outputs': sorted(exported.out_tree.unflatten(exported.out_avals)),
  }
  return _write(pathlib.Path(directory), FORWARD, exported, card)


def export_model(model, config, directory, context_s: float | None = None,
                 platforms=PLATFORMS) -> tuple[list[pathlib.Path], str | None]:
  """(the artifacts written, why the streaming step was not) of a ModelState: the offline
  forward over one `data.window_s` window and the streaming step (`inference.streamer_for`),
  each for `platforms`."""
  platforms = check_platforms(platforms)
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  module = model.model()
  written = [export_forward(module, model.objective, directory, window_s=config.data.window_s,
                            platforms=platforms)]
  try:
    streamer = inference.streamer_for(module, model.objective, config, context_s)
  except ValueError as err:  # e.g. the encoder's 'reference' padding looks ahead
    return written, str(err)
  written.append(export_stream_step(streamer, directory, config.model.frame_hz, platforms))
  return written, None
