"""Beam builds (DirectRunner) make the same dataset as the process pool, on the tiny LDC trees.

Apache Beam is optional (`pip install apache-beam`): without it these tests skip, but for the one
checking that asking for Beam without it is refused in one line.
"""

import dataclasses
import importlib.util
import re
import sys

import numpy as np
import pytest

from data_builders import conversation
from data_builders.fisher import Fisher
from data_builders.switchboard import Switchboard
from tests import corpus_fixtures as fx
from tests import processes

needs_beam = pytest.mark.skipif(importlib.util.find_spec('apache_beam') is None,
                                reason='Apache Beam is not installed (pip install apache-beam)')
MULTI_PROCESSING = '--direct_running_mode=multi_processing --direct_num_workers=2'


def _prepare(builder_cls, data_dir, manual_dir, beam_options=None, **kwargs):
  """Builds in a pool of 2 processes, or through Beam's DirectRunner with `beam_options`."""
  from data_builders import beam_download_config

  beam = beam_download_config('DirectRunner', beam_options) if beam_options is not None else {}
  builder = builder_cls(data_dir=str(data_dir), num_workers=2, **kwargs)
  builder.download_and_prepare(download_config=dataclasses.replace(
      conversation.download_config(), manual_dir=str(manual_dir), **beam))
  return builder


def _assert_same_dataset(pool, beam):
  assert dict(beam.info.metadata) == dict(pool.info.metadata)
  assert {s: i.num_examples for s, i in beam.info.splits.items()} == {
      s: i.num_examples for s, i in pool.info.splits.items()}
  for split in pool.info.splits:
    ours, theirs = pool.as_data_source(split), beam.as_data_source(split)
    for i in range(len(ours)):  # the same records in the same order
      assert ours[i].keys() == theirs[i].keys()
      for feature in ours[i]:
        np.testing.assert_array_equal(theirs[i][feature], ours[i][feature])
  leftovers = [p.name for p in beam.data_path.iterdir() if p.name.endswith('.json')
               and p.name not in ('dataset_info.json', 'features.json', 'metadata.json')]
  assert not leftovers


@needs_beam
@pytest.mark.parametrize('builder_cls,write,options', [
    (Switchboard, fx.write_switchboard, MULTI_PROCESSING),
    (Fisher, fx.write_fisher, ''),  # the DirectRunner's default (in-process) mode
])
def test_beam_build_is_the_pool_build(tmp_path, builder_cls, write, options):
  write(tmp_path / 'corpus')
  pool = _prepare(builder_cls, tmp_path / 'pool', tmp_path / 'corpus')
  beam = _prepare(builder_cls, tmp_path / 'beam', tmp_path / 'corpus', options)
  assert sum(info.num_examples for info in beam.info.splits.values()) >= 3
  _assert_same_dataset(pool, beam)


@needs_beam
def test_beam_skip_bad_and_errors(tmp_path):
  manual = tmp_path / 'swb'
  written = fx.write_switchboard(manual)
  sph = written['2005'].path
  sph.write_bytes(sph.read_bytes()[:-100])
  pool = _prepare(Switchboard, tmp_path / 'pool', manual, skip_bad=True)
  beam = _prepare(Switchboard, tmp_path / 'beam', manual, MULTI_PROCESSING, skip_bad=True)
  assert [e['session'] for e in beam.info.metadata['skipped']['train']] == ['2005']
  _assert_same_dataset(pool, beam)
  with pytest.raises(ValueError,
                     match=re.escape(str(sph)) + ': corrupt embedded Shorten stream'):
    _prepare(Switchboard, tmp_path / 'failed', manual, '')
  assert not list((tmp_path / 'failed').glob('switchboard/original/1.*'))


@needs_beam
def test_cli_beam_build(tmp_path):
  fx.write_switchboard(tmp_path / 'swb', sessions={'2005': fx.SWB_SESSIONS['2005']})
  run = processes.run('-m', 'data_builders', 'switchboard', f'--manual_dir={tmp_path / "swb"}',
                      f'--data_dir={tmp_path / "data"}', '--beam_runner=DirectRunner',
                      f'--beam_options={MULTI_PROCESSING}')
  assert run.returncode == 0, run.stderr[-3000:]  # TensorFlow is not installed: never imported
  assert 'train: 1 conversations' in run.stdout


def test_cli_refuses_beam_without_apache_beam(tmp_path):
  script = ('import sys; sys.modules["apache_beam"] = None\n'
            'from absl import app\n'
            'from data_builders.__main__ import main\n'
            f'sys.argv = ["data_builders", "switchboard", "--data_dir={tmp_path}", '
            '"--beam_runner=DirectRunner"]\n'
            'app.run(main)\n')
  run = processes.run('-c', script)
  assert run.returncode == 2
  assert run.stderr.strip().splitlines()[-1] == (
      'error: --beam_runner/--beam_options need Apache Beam: pip install apache-beam (see '
      'data_builders/README.md, "Beam builds")')
  assert 'Traceback' not in run.stderr


def _data(tmp_path, **fields):
  from configs import vap

  data = vap.get_config('tiny').data
  data.update(name='switchboard', manual_dir=str(tmp_path / 'swb'), data_dir=str(tmp_path / 'd'),
              **fields)
  return data


def test_prepare_refuses_beam_without_apache_beam(tmp_path, monkeypatch):
  import data_builders
  from convssl_jax import errors

  monkeypatch.setitem(sys.modules, 'apache_beam', None)
  with pytest.raises(errors.ConfigError, match='need Apache Beam: pip install apache-beam'):
    data_builders.prepare(_data(tmp_path, beam_runner='DirectRunner'))


@needs_beam
def test_prepare_builds_through_the_configured_runner(tmp_path):
  """data.beam_runner reaches Beam (which refuses an unknown runner); data.f0_tracker the
  builder."""
  import data_builders

  fx.write_switchboard(tmp_path / 'swb', sessions={'2005': fx.SWB_SESSIONS['2005']})
  with pytest.raises(ValueError, match='NoSuchRunner'):
    data_builders.prepare(_data(tmp_path, beam_runner='NoSuchRunner'))
  builder, = data_builders.prepare(_data(tmp_path, beam_runner='DirectRunner',
                                         f0_tracker='librosa_pyin'))
  assert builder.info.metadata['f0_tracker'] == 'librosa_pyin'
