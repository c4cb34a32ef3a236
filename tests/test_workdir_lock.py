"""The workdir lock: a second run on a workdir in use stops at once naming the holder, before
writing anything; the lock of a killed run is taken over; a multi-process run locks once."""

import json
import re
import signal
import socket
import time

import pytest

from tests import processes

# Holds the lock of ARGV[1] until killed, as a run does.
HOLD_SCRIPT = """
import os, sys, time
from convssl_jax import workdir_lock
with workdir_lock.hold(sys.argv[1]):
  print('held', os.getpid(), flush=True)
  time.sleep(600)
"""


def _hold(workdir):
  proc = processes.start('-c', HOLD_SCRIPT, str(workdir))
  line = proc.stdout.readline()
  assert line == f'held {proc.pid}\n', proc.stderr.read()[-3000:]
  return proc


def _refusal(workdir, pid):
  return (rf'error: {re.escape(str(workdir))} is in use by process {pid} on '
          rf'{re.escape(socket.gethostname())} \(started [\d: -]+: -c {re.escape(str(workdir))}\); '
          rf'wait for it to finish or stop it, or give another --workdir '
          rf'\(lock: {re.escape(str(workdir / ".lock"))}\)')


@pytest.mark.parametrize('mode', ['train', 'eval'])
def test_a_run_on_a_workdir_in_use_stops_at_once_naming_the_holder(tmp_path, mode):
  workdir = tmp_path / 'run'
  holder = _hold(workdir)
  try:
    out = processes.run('run.py', '--config=configs/vap.py:tiny', f'--mode={mode}',
                        f'--workdir={workdir}', f'--config.data.data_dir={tmp_path / "data"}',
                        timeout=120)
  finally:
    holder.kill()
    holder.communicate()
  assert out.returncode == 2, out.stderr[-3000:]
  assert 'Traceback' not in out.stderr
  assert re.fullmatch(_refusal(workdir, holder.pid), out.stderr.strip().splitlines()[-1])
  assert [p.name for p in workdir.iterdir()] == ['.lock']  # nothing written, nothing built
  assert not (tmp_path / 'data').exists()


def test_the_lock_of_a_killed_run_is_taken_over(tmp_path):
  first = _hold(tmp_path)
  first.send_signal(signal.SIGKILL)  # no clean-up runs: the kernel drops its lock
  first.communicate()
  assert json.loads((tmp_path / '.lock').read_text())['pid'] == first.pid  # stale contents
  second = _hold(tmp_path)
  try:
    assert json.loads((tmp_path / '.lock').read_text())['pid'] == second.pid
  finally:
    second.kill()
    second.communicate()


def test_every_process_of_a_multi_process_run_on_a_workdir_in_use_stops(tmp_path):
  workdir = tmp_path / 'run'
  holder = _hold(workdir)
  port = processes.free_port()
  procs = [processes.start('run.py', '--config=configs/vap.py:tiny', f'--workdir={workdir}',
                           f'--config.data.data_dir={tmp_path / "data"}',
                           '--config.data.batch_size=4',  # a share for each of the 4 devices
                           f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2',
                           f'--process_id={i}', JAX_PLATFORMS='cpu',
                           XLA_FLAGS='--xla_force_host_platform_device_count=2')
           for i in range(2)]
  try:
    outputs = [p.communicate(timeout=300) for p in procs]
  finally:
    for p in (*procs, holder):
      p.kill()
    holder.communicate()
  for p, (_, stderr) in zip(procs, outputs):
    assert p.returncode == 2, stderr[-3000:]
    assert f'is in use by process {holder.pid} on ' in stderr.strip().splitlines()[-1]
  assert [p.name for p in workdir.iterdir()] == ['.lock']


@pytest.mark.slow
def test_a_second_training_run_leaves_the_first_one_alone(tmp_path):
  flags = ['--config=configs/vap.py:tiny', f'--workdir={tmp_path / "run"}',
           f'--config.data.data_dir={tmp_path / "data"}', '--config.train.log_every=1',
           '--config.train.checkpoint_every=100000']
  first = processes.start('run.py', *flags, '--config.train.steps=100000')
  log = tmp_path / 'run' / 'train_log.jsonl'
  deadline = time.time() + 300
  while not (log.exists() and log.read_text().count('\n') >= 2):
    assert first.poll() is None and time.time() < deadline, first.communicate()[1][-2000:]
    time.sleep(0.2)
  second = processes.run('run.py', *flags, '--config.train.steps=3', timeout=120)
  first.send_signal(signal.SIGTERM)
  _, stderr = first.communicate(timeout=300)
  assert first.returncode == 0, stderr[-2000:]
  assert second.returncode == 2 and f'in use by process {first.pid} ' in second.stderr
  steps = [json.loads(line)['step'] for line in log.read_text().splitlines()]
  assert steps == list(range(1, len(steps) + 1))  # one run's lines only
