"""The tiny run as a user runs it: `run.py` trains (validating, with the VA-only baseline), evaluates,
prints the tables, then `--mode=export` writes artifacts for cpu, cuda and tpu, and the CPU one
equals the trained model. `.ci/run` also runs it under the accelerator image's versions (`-m gpu_image`,
.ci/constraints-gpu-image.txt)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import vap
from convssl_jax import objective as objective_lib, trainer
from tests import processes

pytestmark = [pytest.mark.slow, pytest.mark.gpu_image]


def test_the_tiny_run_trains_evaluates_and_exports_artifacts_that_equal_the_model(tmp_path):
  workdir, data_dir = tmp_path / 'run', tmp_path / 'data'
  flags = ['--config=configs/vap.py:tiny', f'--workdir={workdir}', f'--config.data.data_dir={data_dir}']
  out = processes.run('run.py', *flags, timeout=1200)
  assert out.returncode == 0, out.stderr[-3000:]
  metrics = json.loads((workdir / 'metrics.json').read_text())
  assert metrics['step'] == vap.get_config('tiny').train.steps
  assert all(np.isfinite(metrics[split]['loss']) for split in ('validation', 'test'))
  assert '### test split' in out.stdout and 'S/H weighted F1 on test: model' in out.stdout

  out = processes.run('run.py', *flags, '--mode=export', timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  assert '(for cpu, cuda, tpu)' in out.stdout
  card = json.loads((workdir / 'export' / 'forward.json').read_text())
  exported = jax.export.deserialize((workdir / 'export' / 'forward.jaxexport').read_bytes())
  assert card['platforms'] == ['cpu', 'cuda', 'tpu'] and exported.platforms == ('cpu', 'cuda', 'tpu')
  wave = (0.2 * np.random.default_rng(0).standard_normal(card['inputs'][0])).astype(np.float32)
  got = exported.call(wave)
  config = vap.get_config('tiny')
  config.data.data_dir = str(data_dir)
  model, _, _ = trainer.load(config, workdir=workdir)  # its best checkpoint, as the export's
  frames = card['inputs'][0][-1] * card['frame_hz'] // card['sample_rate']
  want = objective_lib.frame_outputs(model.objective, model.model()(jnp.asarray(wave)), frames=frames)
  for key in want:
    np.testing.assert_allclose(got[key], np.asarray(want[key]), atol=1e-5, err_msg=key)
