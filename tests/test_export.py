"""Exported artifacts (jax.export) run without this package and equal the model they came from."""

import hashlib
import json
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import vap as vap_config
from convssl_jax import errors, export, inference, models, objective as objective_lib
from convssl_jax.data import va as va_lib
from convssl_jax.models import transformer

pytestmark = pytest.mark.gpu_image  # also under the accelerator image's versions (.ci/run)

RATE, CONTEXT = 16000, 20

# The loader export.py's docstring gives (read, check the SHA-256, deserialize), for `name`.
LOADER = re.search(r"\n  (blob, card = .*?exported = jax.export.deserialize\(blob\))\n",
                   export.__doc__, re.S)[1].replace('\n  ', '\n')

# Runs an artifact with jax and numpy only, loaded as documented: this package is not
# importable in the child (run in the artifacts' directory).
RUNNER = '''
import hashlib, json, sys
import jax, numpy as np
sys.path = [p for p in sys.path if p not in ('', '.')]
name = sys.argv[1]
exec(sys.argv[2].replace('stream_step', name))
inputs = np.load('inputs.npz')
if name == 'stream_step':
  state = [np.zeros(a.shape, a.dtype) for a in exported.in_avals[:card['state_leaves']]]
  wave, hop, outs = inputs['wave'], card['samples'][-1], []
  for start in range(0, wave.shape[-1] - hop + 1, hop):
    state, out = exported.call(state, wave[..., start:start + hop])
    outs.append(out)
  result = {k: np.concatenate([o[k] for o in outs], axis=1) for k in outs[0]}
else:
  result = exported.call(inputs['wave'])
assert not any(m.startswith('convssl_jax') for m in sys.modules)
np.savez('outputs.npz', **{k: np.asarray(v) for k, v in result.items()})
'''


def _model(variant='tiny'):
  cfg = vap_config.get_config(variant).model
  cfg.transformer.context = CONTEXT
  model = models.build_model(cfg, rngs=nnx.Rngs(0))
  model.eval()
  return model, objective_lib.for_model(cfg)


def _wave(seconds, seed=0):
  rng = np.random.default_rng(seed)
  return (0.2 * rng.standard_normal((1, 2, int(seconds * RATE)))).astype(np.float32)


def _run_alone(directory, name, wave):
  np.savez(directory / 'inputs.npz', wave=wave)
  done = subprocess.run([sys.executable, '-c', RUNNER, name, LOADER], cwd=directory,
                        capture_output=True, text=True, timeout=300, check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  return dict(np.load(directory / 'outputs.npz'))


def test_the_exported_stream_step_runs_alone_and_equals_the_streamer(tmp_path):
  model, objective = _model()
  wave = _wave(1.0)
  streamer = inference.Streamer(model, objective, batch=1)
  export.export_stream_step(streamer, tmp_path, objective.frame_hz)
  card = json.loads((tmp_path / 'stream_step.json').read_text())
  assert card['samples'] == [1, 2, 320] and card['outputs'] == ['p_bc', 'p_future', 'p_now', 'vad']
  assert card['platforms'] == ['cpu', 'cuda', 'tpu']
  got = _run_alone(tmp_path, 'stream_step', wave)  # the CPU lowering
  want = streamer.push(wave)
  for key in want:
    np.testing.assert_allclose(got[key], want[key], atol=1e-5, err_msg=key)


def test_the_exported_forward_runs_alone_and_equals_the_model(tmp_path):
  model, objective = _model()
  wave = _wave(2.0, seed=1)
  export.export_forward(model, objective, tmp_path, window_s=2.0)
  exported = jax.export.deserialize((tmp_path / 'forward.jaxexport').read_bytes())
  assert exported.platforms == ('cpu', 'cuda', 'tpu')
  got = _run_alone(tmp_path, 'forward', wave)
  out = model(jnp.asarray(wave))
  want = objective_lib.frame_outputs(objective, out, frames=100)
  for key in want:
    np.testing.assert_allclose(got[key], np.asarray(want[key]), atol=1e-5, err_msg=key)


def test_the_exported_mono_step_reads_va_and_history(tmp_path):
  model, objective = _model('tiny,mono')
  streamer = inference.Streamer(model, objective, batch=1)
  export.export_stream_step(streamer, tmp_path, objective.frame_hz)
  exported = jax.export.deserialize((tmp_path / 'stream_step.jaxexport').read_bytes())
  card = json.loads((tmp_path / 'stream_step.json').read_text())
  assert card['va_inputs'] == [[1, 1, 2], [1, 1, 5]] and 'p' in card['outputs']
  wave, frames = _wave(0.4, seed=2), 20
  va = np.zeros((1, frames, 2), np.float32)
  va[0, 3:12, 0] = va[0, 10:18, 1] = 1
  history = va_lib.va_history(va[0], objective.frame_hz)[None]
  state = [np.zeros(a.shape, a.dtype) for a in exported.in_avals[:card['state_leaves']]]
  outs = []
  for i in range(frames):
    state, out = exported.call(state, wave[..., i * 320:(i + 1) * 320], va[:, i:i + 1],
                               history[:, i:i + 1])
    outs.append(out)
  want = streamer.push(wave, va=va)
  for key in want:
    got = np.concatenate([o[key] for o in outs], axis=1)
    np.testing.assert_allclose(got, want[key], atol=1e-5, err_msg=key)


def test_a_damaged_artifact_is_refused_by_load_and_by_the_documented_loader(tmp_path):
  model, objective = _model()
  path = export.export_forward(model, objective, tmp_path, window_s=2.0)
  card = json.loads((tmp_path / 'forward.json').read_text())
  assert card['sha256'] == hashlib.sha256(path.read_bytes()).hexdigest()
  exported, loaded_card = export.load(path)
  assert loaded_card == card and exported.in_avals[0].shape == (1, 2, 32000)
  blob = bytearray(path.read_bytes())
  blob[len(blob) // 2] ^= 0x04  # one flipped bit
  path.write_bytes(bytes(blob))
  with pytest.raises(errors.InputError, match=rf'^{path}: damaged, its SHA-256 is not the one '
                     r'in forward.json; export it again'):
    export.load(path)
  np.savez(tmp_path / 'inputs.npz', wave=_wave(2.0))
  done = subprocess.run([sys.executable, '-c', RUNNER, 'forward', LOADER], cwd=tmp_path,
                        capture_output=True, text=True, timeout=300, check=False)
  assert done.returncode == 1
  assert done.stderr.strip().splitlines()[-1] == (
      "ValueError: forward.jaxexport is damaged (its SHA-256 is not its card's)")


def test_an_artifact_runs_only_on_the_platforms_it_was_exported_for(tmp_path):
  model, objective = _model()
  wave = _wave(1.0, seed=3)
  for platforms in (('tpu',), ('cuda', 'cpu')):
    (directory := tmp_path / '-'.join(platforms)).mkdir()
    export.export_forward(model, objective, directory, window_s=1.0, platforms=platforms)
  tpu, both = (jax.export.deserialize((tmp_path / name / 'forward.jaxexport').read_bytes())
               for name in ('tpu', 'cuda-cpu'))
  assert (tpu.platforms, both.platforms) == (('tpu',), ('cuda', 'cpu'))
  with pytest.raises(ValueError, match='exported for platforms'):
    tpu.call(wave)
  want = objective_lib.frame_outputs(objective, model(jnp.asarray(wave)), frames=50)
  for key, value in both.call(wave).items():
    np.testing.assert_allclose(value, want[key], atol=1e-5, err_msg=key)


def test_export_never_traces_the_cuda_only_attention_kernel(tmp_path, monkeypatch):
  # As on a GPU in bf16, 'auto' attention would take cuDNN's kernel, whose custom call lowers for
  # CUDA alone; an export for several platforms traces XLA's attention instead.
  traced = []
  monkeypatch.setattr(transformer, '_cudnn_backend', lambda dtype: True)
  monkeypatch.setattr(transformer, '_fused', lambda *args: traced.append(args) or args[0])
  model, objective = _model()
  export.export_forward(model, objective, tmp_path, window_s=1.0)
  assert not traced
  model(jnp.asarray(_wave(0.1)))  # (outside an export, 'auto' does try it)
  assert traced


@pytest.mark.parametrize('platforms', [('cpu', 'gpu'), ('cpu', 'cpu'), ()])
def test_unknown_or_repeated_platforms_are_refused_naming_the_flag(platforms):
  with pytest.raises(errors.ConfigError, match='--export_platforms=.*one or more of cpu, cuda'):
    export.check_platforms(platforms)
