"""Training: the loss falls, a resumed run continues exactly, a NaN stops the run cleanly."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from configs import vap
from convssl_jax import train


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('data'))


def _config(data_dir, **train_overrides):
  config = vap.get_config('tiny')
  config.data.data_dir = data_dir
  config.train.update(**train_overrides)
  return config


def _log(workdir):
  lines = (workdir / 'train_log.jsonl').read_text().splitlines()
  return {int(r['step']): r for r in map(json.loads, lines)}


def test_a_short_run_lowers_the_training_loss(tmp_path, data_dir):
  config = _config(data_dir, steps=30, log_every=5, eval_every=30, checkpoint_every=30,
                   learning_rate=2e-3)
  results = train.train_and_evaluate(config, tmp_path)
  log = _log(tmp_path)
  assert log[30]['loss'] < log[5]['loss'] - 0.5
  assert results['step'] == 30 and np.isfinite(results['validation']['vap_loss'])
  assert json.loads((tmp_path / 'metrics.json').read_text())['step'] == 30
  assert any((tmp_path / 'tensorboard').iterdir())


def test_a_resumed_run_continues_with_the_losses_of_an_uninterrupted_one(tmp_path, data_dir):
  whole = _config(data_dir, steps=12, log_every=1, eval_every=100, checkpoint_every=6)
  train.train_and_evaluate(whole, tmp_path / 'whole')
  first = _config(data_dir, steps=6, log_every=1, eval_every=100, checkpoint_every=6)
  train.train_and_evaluate(first, tmp_path / 'parts')
  train.train_and_evaluate(whole, tmp_path / 'parts')  # resumes at step 6
  a, b = _log(tmp_path / 'whole'), _log(tmp_path / 'parts')
  for step in range(7, 13):
    np.testing.assert_allclose(b[step]['loss'], a[step]['loss'], rtol=1e-5)


def test_a_non_finite_step_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, data_dir):
  good = _config(data_dir, steps=4, log_every=2, eval_every=100, checkpoint_every=4)
  train.train_and_evaluate(good, tmp_path)
  # A huge learning rate overflows the parameters, so the following steps' losses are not finite.
  bad = _config(data_dir, steps=12, log_every=2, eval_every=100, checkpoint_every=2,
                learning_rate=1e38, schedule='constant')
  with pytest.raises(train.NonFiniteError, match=r'at step \d+.*batch conversations \[.train_'):
    train.train_and_evaluate(bad, tmp_path)
  steps = sorted(int(p.name) for p in (tmp_path / 'checkpoints').iterdir() if p.name.isdigit())
  assert steps[-1] == 4  # nothing written after the good step
  restored = train.train_and_evaluate(_config(data_dir, steps=4), tmp_path)  # it still loads
  assert restored['step'] == 4
  assert all(np.isfinite(v) for v in restored['validation'].values())


MULTI_DEVICE_SCRIPT = textwrap.dedent('''
    import os, sys, json
    os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=8'
    import jax, numpy as np
    jax.config.update('jax_default_matmul_precision', 'highest')
    from configs import vap
    from convssl_jax import train

    def losses(devices, fsdp):
      config = vap.get_config('tiny')
      config.data.batch_size = 8
      mesh = jax.make_mesh((devices // fsdp, fsdp), train.BATCH_AXES,
                           axis_types=(jax.sharding.AxisType.Auto,) * 2,
                           devices=jax.devices()[:devices])
      trainer = train.Trainer(config, mesh)
      rng = np.random.default_rng(0)
      out = []
      for _ in range(3):
        batch = {'audio': rng.uniform(-0.5, 0.5, (8, 2, 16000)).astype(np.float32),
                 'va': (rng.uniform(size=(8, 150, 2)) > 0.5).astype(np.float32)}
        trainer.state, m = trainer.train_step(trainer.state,
                                              train.to_device(batch, trainer.batch_sharding))
        out.append(float(m['loss']))
      return out

    print(json.dumps({'1': losses(1, 1), '8': losses(8, 1), '8fsdp2': losses(8, 2)}))
''')


def test_one_device_data_parallel_and_fsdp_give_the_same_losses():
  env = {**os.environ,
         'PYTHONPATH': os.pathsep.join(filter(None, [os.getcwd(), os.environ.get('PYTHONPATH')]))}
  out = subprocess.run([sys.executable, '-c', MULTI_DEVICE_SCRIPT], capture_output=True,
                       text=True, env=env, timeout=600, check=True)
  losses = json.loads(out.stdout.strip().splitlines()[-1])
  np.testing.assert_allclose(losses['8'], losses['1'], rtol=2e-5)
  np.testing.assert_allclose(losses['8fsdp2'], losses['1'], rtol=2e-5)


def test_the_plateau_scale_scales_every_update():
  config = vap.get_config('tiny')
  tx = train.optimizer_transform(config.train)
  params = {'w': np.ones(3, np.float32)}
  grads = {'w': np.array([1.0, -2.0, 3.0], np.float32)}
  full, _ = tx.update(grads, tx.init(params), params)
  halved, _ = tx.update(grads, train.set_plateau_scale(tx.init(params), 0.5), params)
  np.testing.assert_allclose(halved['w'], 0.5 * np.asarray(full['w']), rtol=1e-6)
  assert np.all(np.asarray(full['w']) != 0)
