"""Training: the loss falls, a resumed run continues exactly, a NaN stops the run cleanly."""

import json
import re
import shutil
import signal
import textwrap
import time

import numpy as np
import pytest

from configs import vap
from convssl_jax import checkpoints, config_check, errors, parallelism, train
from convssl_jax import trainer as trainer_lib
from tests import checkpoint_damage, processes


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


def test_a_checkpoint_saved_at_the_unfreeze_step_resumes_and_evaluates(tmp_path, data_dir):
  # Saved at step 2 by the frozen encoder's optimizer, restored before the loop unfreezes.
  config = _config(data_dir, steps=2, log_every=2, eval_every=2, checkpoint_every=2)
  config.model.encoder.update(freeze=True, unfreeze_step=2)
  config.eval.during_training = False
  train.train_and_evaluate(config, tmp_path)
  config.train.steps = 4
  results = train.train_and_evaluate(config, tmp_path)
  assert results['step'] == 4 and np.isfinite(results['validation']['loss'])
  for which in ('best', 'latest'):
    _, step = trainer_lib.restore_model(config, tmp_path, which)
    assert step in (2, 4)


def test_eval_every_zero_validates_once_per_epoch(tmp_path, data_dir, capsys):
  config = _config(data_dir, steps=13, log_every=13, eval_every=0, checkpoint_every=13)
  config.eval.during_training = False
  train.train_and_evaluate(config, tmp_path)
  captured = capsys.readouterr()
  # :tiny trains on 4 dialogs of 20 s in 5 s windows overlapping 2 s: starts 0, 3, ..., 15, so 6
  # windows each, 24 an epoch, 12 batches of 2. Then the last step validates too.
  assert re.findall(r'step (\d+) validation', captured.out + captured.err) == ['12', '13']


@pytest.mark.parametrize('metric', ['loss', 'f1_hold_shift'])
def test_the_best_checkpoint_is_the_validation_with_the_best_metric(tmp_path, data_dir, capsys,
                                                                     metric):
  config = _config(data_dir, steps=6, log_every=6, eval_every=2, checkpoint_every=6,
                   learning_rate=2e-3, best_metric=metric)
  train.train_and_evaluate(config, tmp_path)
  text = capsys.readouterr()
  lines = re.findall(r'step (\d+) validation: (.*)', text.out + text.err)
  values = {int(step): float(re.search(rf'\b{metric} ([-\d.]+)', rest).group(1))
            for step, rest in lines}
  assert sorted(values) == [2, 4, 6]
  sign = 1 if metric == 'loss' else -1  # the lowest loss, the highest score
  best = min(sign * v for v in values.values())
  # The first of those that tie (as logged, to 4 decimals) at the best.
  expected = min(step for step, v in values.items() if sign * v <= best + 1e-4)
  got = checkpoints.Checkpoints(tmp_path / 'checkpoints').best_step()
  assert got == expected or abs(values[got] - values[expected]) <= 1e-4, (got, values)


def test_a_score_as_best_metric_needs_the_validation_scores():
  config = vap.get_config('tiny')
  config.train.best_metric = 'f1_hold_shift'
  config.eval.during_training = False
  with pytest.raises(errors.ConfigError, match=r"train.best_metric='f1_hold_shift' needs "
                     r'eval.during_training=True'):
    config_check.check(config)
  config.train.best_metric = 'shift_f1'
  with pytest.raises(errors.ConfigError, match=r"train.best_metric='shift_f1': "):
    config_check.check(config)


@pytest.fixture(scope='module')
def uninterrupted(data_dir, tmp_path_factory):
  """A 12-step run, logging every step and checkpointing at 6 and 12."""
  workdir = tmp_path_factory.mktemp('uninterrupted')
  train.train_and_evaluate(_config(data_dir, **UNINTERRUPTED), workdir)
  return workdir


UNINTERRUPTED = dict(steps=12, log_every=1, eval_every=100, checkpoint_every=6)


def _assert_same_losses(workdir, reference, steps, rtol=1e-5):
  a, b = _log(reference), _log(workdir)
  assert set(steps) <= set(b)
  for step in steps:
    np.testing.assert_allclose(b[step]['loss'], a[step]['loss'], rtol=rtol, err_msg=str(step))


def test_a_resumed_run_continues_with_the_losses_of_an_uninterrupted_one(tmp_path, data_dir,
                                                                        uninterrupted):
  train.train_and_evaluate(_config(data_dir, **{**UNINTERRUPTED, 'steps': 6}), tmp_path)
  train.train_and_evaluate(_config(data_dir, **UNINTERRUPTED), tmp_path)  # resumes at step 6
  _assert_same_losses(tmp_path, uninterrupted, range(7, 13))


def test_a_run_killed_with_sigkill_resumes_with_the_uninterrupted_losses(tmp_path, data_dir,
                                                                       uninterrupted):
  flags = [f'--config.data.data_dir={data_dir}', f'--workdir={tmp_path}',
           '--config.train.log_every=1', '--config.train.eval_every=100',
           '--config.train.checkpoint_every=6', '--config.eval.va_only_baseline=False']
  # Runs on (steps=10**6) until the step-6 checkpoint is complete, then is killed mid-training.
  proc = _run_py('--config.train.steps=1000000', *flags)
  first = tmp_path / 'checkpoints' / '6'
  deadline = time.time() + 300
  while not first.is_dir():
    assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-3000:]
    time.sleep(0.05)
  proc.kill()
  proc.communicate()
  logged = max(_log(tmp_path))
  assert (tmp_path / 'checkpoints' / '12').exists() is False and 6 <= logged < 12
  resumed = _run_py('--config.train.steps=12', *flags)
  _, stderr = resumed.communicate(timeout=300)
  assert resumed.returncode == 0, stderr[-3000:]
  assert 'resumed from step 6' in stderr
  assert 'checkpoint_manager.py' not in stderr  # Orbax's INFO lines are filtered out
  _assert_same_losses(tmp_path, uninterrupted, range(7, 13))


def test_a_latest_checkpoint_that_fails_to_restore_is_skipped_for_the_previous(
    tmp_path, data_dir, uninterrupted):
  shutil.copytree(uninterrupted / 'checkpoints', tmp_path / 'checkpoints')
  (tmp_path / 'checkpoints' / '12' / 'state' / 'manifest.ocdbt').unlink()
  train.train_and_evaluate(_config(data_dir, **UNINTERRUPTED), tmp_path)  # from 6: redoes 7..12
  assert sorted(_log(tmp_path)) == list(range(7, 13))
  _assert_same_losses(tmp_path, uninterrupted, range(7, 13))


def test_a_bit_flipped_latest_checkpoint_is_skipped_for_the_previous(tmp_path, data_dir,
                                                                    uninterrupted, caplog):
  shutil.copytree(uninterrupted / 'checkpoints', tmp_path / 'checkpoints')
  config = _config(data_dir, **UNINTERRUPTED)
  abstract = trainer_lib.Trainer(config, parallelism.make_mesh()).abstract_stored_state()
  checkpoint_damage.flip_a_stored_bit(tmp_path / 'checkpoints' / '12', abstract)
  with caplog.at_level('WARNING'):
    train.train_and_evaluate(config, tmp_path)  # from 6: redoes 7..12
  assert any('Checkpoint step 12' in r.getMessage() and 'differ from what was saved'
             in r.getMessage() for r in caplog.records)
  assert sorted(_log(tmp_path)) == list(range(7, 13))
  _assert_same_losses(tmp_path, uninterrupted, range(7, 13))


def _run_py(*flags, **env):
  return processes.start('run.py', '--config=configs/vap.py:tiny', *flags, **env)


def test_two_processes_of_two_devices_train_checkpoint_and_evaluate_like_one_process(tmp_path, data_dir):
  short = dict(steps=4, log_every=1, eval_every=100, checkpoint_every=2)
  config = _config(data_dir, **short)
  config.data.batch_size = 4
  one = train.train_and_evaluate(config, tmp_path / 'one')  # also builds the corpus first
  flags = [f'--config.data.data_dir={data_dir}', f'--workdir={tmp_path / "two"}',
           '--config.data.batch_size=4', *(f'--config.train.{k}={v}' for k, v in short.items()),
           '--config.eval.va_only_baseline=False']
  outputs = processes.run_together('run.py', '--config=configs/vap.py:tiny', *flags)
  assert 'mesh {\'data\': 4, \'fsdp\': 1} over 4 devices (2 processes)' in outputs[0][1]
  checkpoints = tmp_path / 'two' / 'checkpoints'
  assert {p.name for p in checkpoints.iterdir()} >= {'2', '4', 'best'}
  _assert_same_losses(tmp_path / 'two', tmp_path / 'one', range(1, 5), rtol=1e-4)
  two = json.loads((tmp_path / 'two' / 'metrics.json').read_text())
  for split in ('validation', 'test'):
    np.testing.assert_allclose(two[split]['loss'], one[split]['loss'], rtol=1e-4)
  # The turn-taking evaluation that follows training ran over both processes too.
  scores = json.loads((tmp_path / 'two' / 'eval' / 'test' / 'metrics.json').read_text())['scores']
  assert scores['model']['shift_hold']['n_frames'] > 0


LATE_FIRST_COLLECTIVE_SCRIPT = '''
    import time
    import jax, numpy as np
    from jax.experimental import multihost_utils
    from jax.sharding import NamedSharding, PartitionSpec as P
    from convssl_jax import parallelism
    parallelism.connect_processes(fsdp=2)
    if jax.process_index() == 1:
      time.sleep(35)  # a slow first compile: beyond gloo's 30 s for connecting a group
    mesh, spec = parallelism.make_mesh(fsdp=2), P(parallelism.BATCH_AXES)
    x = jax.make_array_from_process_local_data(NamedSharding(mesh, spec),
                                               np.arange(2.0) + 2 * jax.process_index())
    for axes in (parallelism.BATCH_AXES, 'data', 'fsdp'):
      sums = jax.jit(jax.shard_map(lambda x: jax.lax.psum(x, axes), mesh=mesh, in_specs=spec,
                                   out_specs=spec))(x)
      print('psum', axes, multihost_utils.process_allgather(sums, tiled=True).tolist())
'''


def test_processes_connected_at_startup_wait_for_a_late_first_collective():
  # The same script without connect_processes fails: 'Gloo context initialization failed'.
  outputs = processes.run_script_together(LATE_FIRST_COLLECTIVE_SCRIPT)
  # Device (d, f) of the (data 2, fsdp 2) mesh holds x[2d + f] = 2d + f.
  expected = ["('data', 'fsdp') [6.0, 6.0, 6.0, 6.0]", 'data [2.0, 4.0, 2.0, 4.0]',
              'fsdp [1.0, 1.0, 5.0, 5.0]']
  for stdout, _ in outputs:  # gloo's C++ logging shares stdout
    assert re.findall(r'^psum (.*)$', stdout, re.M) == expected


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


def test_a_non_finite_first_step_after_a_restore_blames_the_restored_checkpoint(tmp_path, data_dir):
  train.train_and_evaluate(_config(data_dir, steps=2, log_every=1, eval_every=100,
                                   checkpoint_every=2), tmp_path)
  # Learning rate 1e38: step 3 is finite and applied (parameters ~1e38) and saved; step 4 is not.
  bad = _config(data_dir, steps=12, log_every=1, eval_every=100, checkpoint_every=1,
                learning_rate=1e38, schedule='constant')
  with pytest.raises(train.NonFiniteError, match=r'at step 4 .*batch conversations'):
    train.train_and_evaluate(bad, tmp_path)
  with pytest.raises(train.NonFiniteError) as raised:  # resumes from that checkpoint
    train.train_and_evaluate(bad, tmp_path)
  message = str(raised.value)
  assert 'at step 4 ' in message and 'the first step after restoring checkpoint step 3' in message
  assert 'batch' not in message.replace('not the batch', '') and 'last good' not in message


# run.py whose checkpoint store receives a second SIGTERM as it starts waiting for the
# preempted run's final save (and reports whether that save was still in flight).
SECOND_SIGTERM_SCRIPT = textwrap.dedent('''
    import os, runpy, signal, sys
    from convssl_jax import checkpoints

    wait = checkpoints.Checkpoints.wait

    def wait_after_a_second_sigterm(self):
      saving = self._manager.is_saving_in_progress()
      print(f'second SIGTERM while saving: {saving}', file=sys.stderr, flush=True)
      os.kill(os.getpid(), signal.SIGTERM)
      wait(self)

    checkpoints.Checkpoints.wait = wait_after_a_second_sigterm
    sys.argv = ['run.py', *sys.argv[1:]]
    runpy.run_path('run.py', run_name='__main__')
''')


def test_sigterm_saves_a_checkpoint_and_exits_cleanly_a_second_one_waits_for_it(tmp_path,
                                                                               data_dir):
  proc = processes.start('-c', SECOND_SIGTERM_SCRIPT, '--config=configs/vap.py:tiny',
                         f'--workdir={tmp_path}', f'--config.data.data_dir={data_dir}',
                         '--config.train.steps=100000', '--config.train.log_every=1',
                         '--config.train.checkpoint_every=100000')
  log = tmp_path / 'train_log.jsonl'
  deadline = time.time() + 300
  while not (log.exists() and log.read_text().count('\n') >= 2):
    assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-2000:]
    time.sleep(0.2)
  proc.send_signal(signal.SIGTERM)
  _, stderr = proc.communicate(timeout=300)
  assert proc.returncode == 0, stderr[-2000:]
  assert 'second SIGTERM while saving: True' in stderr
  assert 'SIGTERM again: stopping once the checkpoint is written' in stderr
  directory = tmp_path / 'checkpoints'
  assert not [p.name for p in directory.iterdir() if 'tmp' in p.name]
  saved = max(int(p.name) for p in directory.iterdir() if p.name.isdigit())
  assert saved >= 2  # the step it stopped at, not a scheduled checkpoint
  config = _config(data_dir)
  store = checkpoints.Checkpoints(directory)  # complete, and its checksums verify
  abstract = trainer_lib.Trainer(config, parallelism.make_mesh()).abstract_stored_state()
  assert store.restore(abstract)[0] == saved
  store.close()


MULTI_DEVICE_SCRIPT = textwrap.dedent('''
    import os, sys, json
    os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=8'
    import jax, numpy as np
    jax.config.update('jax_default_matmul_precision', 'highest')
    from configs import vap
    from convssl_jax import parallelism, trainer

    def placement(state):
      """Each parameter's and optimizer leaf's global shape, PartitionSpec, and per device (in
      mesh order) the shape and start offsets of the shard it holds."""
      at = {device.id: i for i, device in enumerate(state.mesh.devices.flat)}
      out = {}
      for part, tree in (('params', state.model.params), ('opt', state.opt_state)):
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
          shards = sorted(leaf.addressable_shards, key=lambda s: at[s.device.id])
          name = jax.tree_util.keystr(path, simple=True, separator='/').removesuffix('/value')
          starts = lambda s: [i.start or 0 for i in s.index[:leaf.ndim]]  # (keys: + their data)
          out[f'{part}/{name}'] = {
              'shape': list(leaf.shape), 'spec': list(leaf.sharding.spec),
              'shards': [[list(s.data.shape), starts(s)] for s in shards]}
      return out

    def run(devices, fsdp):
      config = vap.get_config('tiny')
      config.data.batch_size = 8
      mesh = jax.make_mesh((devices // fsdp, fsdp), parallelism.BATCH_AXES,
                           axis_types=(jax.sharding.AxisType.Auto,) * 2,
                           devices=jax.devices()[:devices])
      state = trainer.Trainer(config, mesh)
      rng = np.random.default_rng(0)
      out = []
      for _ in range(3):
        batch = {'audio': rng.uniform(-0.5, 0.5, (8, 2, 16000)).astype(np.float32),
                 'va': (rng.uniform(size=(8, 150, 2)) > 0.5).astype(np.float32)}
        m = state.train_step(state.model.to_device(batch))
        out.append(float(m['loss']))
      return {'losses': out, 'placement': placement(state)}  # after the steps (donated state)

    print(json.dumps({'1': run(1, 1), '8': run(8, 1), '8fsdp2': run(8, 2)}))
''')


def _moments(placement, name):
  """The Adam first and second moments of parameter `name` (optimizer leaves .../mu/NAME, nu)."""
  return [v for k, v in placement.items()
          if k.startswith('opt/') and (k.endswith(f'/mu/{name}') or k.endswith(f'/nu/{name}'))]


def test_one_device_data_parallel_and_fsdp_give_the_same_losses_and_place_the_state():
  out = processes.run('-c', MULTI_DEVICE_SCRIPT, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  runs = json.loads(out.stdout.strip().splitlines()[-1])
  np.testing.assert_allclose(runs['8']['losses'], runs['1']['losses'], rtol=2e-5)
  np.testing.assert_allclose(runs['8fsdp2']['losses'], runs['1']['losses'], rtol=2e-5)
  fsdp, data_parallel = runs['8fsdp2']['placement'], runs['8']['placement']
  # By hand: the tiny model's head projection [32, 256] is split into 2 x 128 columns over 'fsdp';
  # on the (data 4, fsdp 2) mesh, device (d, f) (mesh order 2d + f) holds columns 128f..128f+127,
  # and so do its Adam moments. Its bias (256 values) and the LSTM's, under 4,096 values, stay whole.
  kernel = 'vap_head/proj/kernel'
  halves = [[[32, 128], [0, 128 * (i % 2)]] for i in range(8)]
  for leaf in [fsdp[f'params/{kernel}'], *_moments(fsdp, kernel)]:
    assert leaf['spec'] == [None, 'fsdp'] and leaf['shards'] == halves
  assert len(_moments(fsdp, kernel)) == 2
  assert fsdp['params/vap_head/proj/bias']['shards'] == [[[256], [0]]] * 8
  # A conv kernel [8, 32, 32] (width, in, out) splits its last largest axis: [8, 32, 16] a device.
  assert fsdp['params/encoder/convs/1/kernel']['shards'] == [
      [[8, 32, 16], [0, 0, 16 * (i % 2)]] for i in range(8)]
  # Every leaf: with fsdp=2 each array of >= 4,096 values is halved along one axis (device (d, f)
  # holding half f) and the rest are whole; a parameter's moments live where it does; data
  # parallel keeps every leaf whole on every device.
  split = 0
  for name, leaf in fsdp.items():
    shape, shards = leaf['shape'], leaf['shards']
    if np.prod(shape) < 4096:
      assert shards == [[shape, [0] * len(shape)]] * 8, name
      continue
    (axis,) = [a for a, p in enumerate(leaf['spec']) if p == 'fsdp']
    half = shape[axis] // 2
    want = [[shape[:axis] + [half] + shape[axis + 1:],
             [half * (i % 2) if a == axis else 0 for a in range(len(shape))]] for i in range(8)]
    assert shards == want, name
    split += 1
    if name.startswith('params/'):
      assert [m['shards'] for m in _moments(fsdp, name[len('params/'):])] == [want] * 2, name
  assert split == 3 * 8  # the tiny model's 8 large parameters and their 16 moments
  for name, leaf in data_parallel.items():
    assert leaf['shards'] == [[leaf['shape'], [0] * len(leaf['shape'])]] * 8, name


def test_the_plateau_scale_scales_every_update():
  config = vap.get_config('tiny')
  tx = trainer_lib.optimizer_transform(config.train)
  params = {'w': np.ones(3, np.float32)}
  grads = {'w': np.array([1.0, -2.0, 3.0], np.float32)}
  full, _ = tx.update(grads, tx.init(params), params)
  halved, _ = tx.update(grads, trainer_lib.set_plateau_scale(tx.init(params), 0.5), params)
  np.testing.assert_allclose(halved['w'], 0.5 * np.asarray(full['w']), rtol=1e-6)
  assert np.all(np.asarray(full['w']) != 0)


def test_the_constant_schedule_warms_up_linearly_then_holds():
  t = vap.train_config()
  t.update(schedule='constant', learning_rate=1e-3, warmup_steps=10)
  np.testing.assert_allclose([trainer_lib.learning_rate(t)(s) for s in (0, 5, 10, 100)],
                             [0.0, 5e-4, 1e-3, 1e-3], rtol=1e-6)
  t.warmup_steps = 0
  np.testing.assert_allclose([trainer_lib.learning_rate(t)(s) for s in (0, 100)], [1e-3, 1e-3])


def test_the_cosine_schedule_is_conv_ssls_staircase():
  # CosineAnnealingLR(T_max=2500) stepped every 100 steps: lr (1 + cos(pi k / 2500)) / 2 for
  # k = step // 100. Step 50,000 is stair 500: (1 + cos(pi / 5)) / 2 = 0.904508...
  t = vap.train_config('mono')
  assert (t.schedule, t.cosine_stairs, t.cosine_stair_steps) == ('cosine', 2500, 100)
  lr = trainer_lib.learning_rate(t)
  expected = {0: 1.0, 99: 1.0, 100: (1 + np.cos(np.pi / 2500)) / 2,
              50_000: (1 + np.cos(np.pi / 5)) / 2, 50_099: (1 + np.cos(np.pi / 5)) / 2,
              125_000: 0.5, 250_000: 0.0}
  for step, fraction in expected.items():
    np.testing.assert_allclose(lr(step), 3.63e-4 * fraction, rtol=1e-5, atol=1e-9, err_msg=step)


def test_an_optimizer_made_when_the_encoder_unfreezes_continues_the_schedule():
  t = vap.train_config('mono')
  t.warmup_steps = 1000
  restarted = trainer_lib.learning_rate(t, start=600)  # counts from 0 at step 600
  for count in (0, 300, 400, 60_000):
    np.testing.assert_allclose(restarted(count), trainer_lib.learning_rate(t)(600 + count), rtol=1e-6)
