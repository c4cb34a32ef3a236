"""The command line: config variants and overrides, unknown fields refused with their name."""

import os
import subprocess
import sys


def _run(*args):
  env = {**os.environ,
         'PYTHONPATH': os.pathsep.join(filter(None, [os.getcwd(), os.environ.get('PYTHONPATH')]))}
  return subprocess.run([sys.executable, 'run.py', *args], capture_output=True, text=True,
                        env=env, timeout=300)


def test_summary_reports_the_overridden_model():
  out = _run('--mode=summary', '--config=configs/vap.py:mono,tiny', '--config.model.frame_hz=20')
  assert out.returncode == 0, out.stderr[-2000:]
  assert 'model: mono, 20 Hz' in out.stdout and "output ['logits']: (1, 20, 256)" in out.stdout


def test_an_unknown_config_field_is_an_error_naming_it():
  out = _run('--mode=summary', '--config=configs/vap.py:tiny', '--config.model.dimm=8')
  assert out.returncode != 0 and 'dimm' in out.stderr


def test_an_unknown_variant_is_an_error_naming_it():
  out = _run('--mode=summary', '--config=configs/vap.py:stero')
  assert out.returncode != 0 and 'stero' in out.stderr


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path):
  import signal
  import time

  env = {**os.environ,
         'PYTHONPATH': os.pathsep.join(filter(None, [os.getcwd(), os.environ.get('PYTHONPATH')]))}
  workdir = tmp_path / 'work'
  proc = subprocess.Popen(
      [sys.executable, 'run.py', '--config=configs/vap.py:tiny', f'--workdir={workdir}',
       f'--config.data.data_dir={tmp_path / "data"}', '--config.train.steps=100000',
       '--config.train.log_every=1', '--config.train.checkpoint_every=100000'],
      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  log = workdir / 'train_log.jsonl'
  deadline = time.time() + 300
  while not (log.exists() and log.read_text().count('\n') >= 2):
    assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-2000:]
    time.sleep(0.5)
  proc.send_signal(signal.SIGTERM)
  _, stderr = proc.communicate(timeout=300)
  assert proc.returncode == 0, stderr[-2000:]
  saved = [int(p.name) for p in (workdir / 'checkpoints').iterdir() if p.name.isdigit()]
  assert saved and max(saved) >= 2  # the step it stopped at, not a scheduled checkpoint
