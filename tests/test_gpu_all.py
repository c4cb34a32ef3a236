"""benchmarks/gpu_all.sh, the one call to make on a GPU machine: it stops at once with one line when
the project does not import (the wheels missing), and its CPU dry run measures every section and
ends with the summary."""

import json
import os
import subprocess
import sys

import pytest

from tests import processes

SECTIONS = ['bf16', 'fp32', 'bf16_no_dropout', 'unroll8', 'unroll32', 'profile']
DRY_RUN = '--small --batch=1 --window_s=1 --warmup=1 --steps=1 --record=false'


def _gpu_all(out, timeout, **env):
  return subprocess.run(['bash', 'benchmarks/gpu_all.sh'], cwd=processes.REPO,
                        env=processes.env(OUT=str(out), **env), capture_output=True, text=True,
                        timeout=timeout, check=False)


def test_without_the_wheels_it_stops_at_once_saying_how_to_get_them(tmp_path):
  # `python -S` sees no site-packages: as the GPU image sees none of the packages it lacks.
  done = _gpu_all(tmp_path, 120, PYTHON=f'{sys.executable} -S')
  assert done.returncode == 2, done.stdout + done.stderr
  (line,) = [l for l in done.stdout.splitlines() if l.startswith('gpu_all.sh: stopped:')]
  assert "bash benchmarks/gpu_wheels.sh" in line
  assert not (tmp_path / 'train_step.jsonl').exists()  # no section ran


@pytest.mark.slow
def test_the_cpu_dry_run_measures_every_section_and_prints_the_summary_last(tmp_path):
  done = _gpu_all(tmp_path, 3600, PYTHON=sys.executable, BUDGET_S='3000', BENCH_FLAGS=DRY_RUN)
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
  summary = json.loads((tmp_path / 'summary.json').read_text())
  assert json.loads(done.stdout.strip().splitlines()[-1]) == summary
  assert summary['sections'] == [{'section': name, 'rc': 0} for name in SECTIONS]
  assert summary['failed'] == []
  cases = {(r['section'], r['model'], r['dtype'], r['case'], r.get('implementation'))
           for r in summary['rows']}
  for model in ('stereo', 'mono'):
    for case in ('train', 'cached', 'infer'):
      assert ('bf16', model, 'bfloat16', case, None) in cases
      assert ('fp32', model, 'float32', case, None) in cases
    for implementation in ('einsum', 'auto'):
      assert ('bf16', model, 'bfloat16', 'attention', implementation) in cases
      assert ('bf16_no_dropout', model, 'bfloat16', 'attention', implementation) in cases
  for row in summary['rows']:
    if 'step_ms' in row:  # batch 1 x 1 s of audio a step
      # Both rounded: audio-s/s to 0.1 (0.05), step_ms to 0.01 ms (1e3 * 0.005 / step_ms**2).
      slack = 0.05 + 5 / row['step_ms'] ** 2 + 1e-9
      assert row['audio_s_per_s'] == pytest.approx(1e3 / row['step_ms'], abs=slack)
      assert 'mfu' not in row  # a CPU has no known peak
    else:
      assert row['attention_ms'] > 0
  assert {p.name for p in tmp_path.iterdir()} == {
      'machine.txt', 'train_step.jsonl', 'RESULTS.md', 'stderr.log', 'summary.json',
      'stereo_bfloat16_train.perfetto.json.gz', 'stereo_bfloat16_cached.perfetto.json.gz'}
  assert os.path.getsize(tmp_path / 'RESULTS.md') > 0
