"""Pool builds: each worker writes its run of consecutive conversations to its own shard, and the
dataset reads back as the one-process build's, record for record and in order."""

import dataclasses

import numpy as np
import pytest

from data_builders import builder_class, conversation
from data_builders.dialog_folder.dialog_folder_dataset_builder import DialogFolder
from data_builders.synthetic_dialogs import SyntheticDialogsConfig
from tests import corpus_fixtures as fx


@pytest.mark.parametrize('n, per, count', [(1, 1, 1), (255, 1, 255), (256, 1, 256),
                                           (257, 2, 129), (2438, 10, 244), (11_700, 46, 255)])
def test_runs_are_consecutive_and_at_most_the_shard_limit(n, per, count):
  runs = conversation._runs(n)
  assert [i for run in runs for i in run] == list(range(n))
  assert len(runs) == count <= conversation.SHARDS
  assert {len(run) for run in runs[:-1]} <= {per} and 1 <= len(runs[-1]) <= per


def _build(builder_cls, data_dir, *, num_workers, manual_dir=None, **kwargs):
  builder = builder_cls(data_dir=str(data_dir), num_workers=num_workers, **kwargs)
  builder.download_and_prepare(download_config=dataclasses.replace(
      conversation.download_config(), manual_dir=manual_dir and str(manual_dir)))
  return builder


def _records(builder, split):
  source = builder.as_data_source(split)
  return [source[i] for i in range(len(source))]


def _assert_same_records(ours, theirs):
  assert dict(ours.info.metadata) == dict(theirs.info.metadata)
  assert list(ours.info.splits) == list(theirs.info.splits)
  for split in ours.info.splits:
    for a, b in zip(_records(ours, split), _records(theirs, split), strict=True):
      assert a.keys() == b.keys()
      for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=f'{split} {key}')


def _shard_files(builder, split):
  return sorted(p.name for p in builder.data_path.iterdir()
                if p.name.startswith(f'{builder.name}-{split}.array_record-'))


def test_a_pool_of_two_writes_the_one_process_dataset_in_runs(tmp_path, monkeypatch):
  config = SyntheticDialogsConfig.sized(5, 1, 1, 2.0)
  one = _build(builder_class('synthetic_dialogs'), tmp_path / 'one', num_workers=1, config=config)
  assert _shard_files(one, 'train') == [f'synthetic_dialogs-train.array_record-0000{i}-of-00005'
                                        for i in range(5)]
  monkeypatch.setattr(conversation, 'SHARDS', 3)  # runs of 2: [0, 1], [2, 3], [4]
  two = _build(builder_class('synthetic_dialogs'), tmp_path / 'two', num_workers=2, config=config)
  assert two.info.splits['train'].shard_lengths == [2, 2, 1]
  assert len(_shard_files(two, 'train')) == 3
  assert not [p for p in two.data_path.iterdir() if '.run-' in p.name]
  _assert_same_records(two, one)


@pytest.mark.parametrize('shards', [1, conversation.SHARDS])
def test_a_skipped_conversation_leaves_its_run_out_and_the_rest_in_order(tmp_path, monkeypatch,
                                                                         shards):
  """With one conversation per run the failed one's run is empty and its file is dropped; with
  one run per split its neighbours share the shard."""
  root = tmp_path / 'dialogs'
  fx.write_dialog_folder(root)
  (root / 'extra_0.json').write_text('[[[0.5, 0.2]], []]')  # reversed: extra_0 fails to load
  one = _build(DialogFolder, tmp_path / 'one', num_workers=1, manual_dir=root, skip_bad=True)
  monkeypatch.setattr(conversation, 'SHARDS', shards)
  two = _build(DialogFolder, tmp_path / 'two', num_workers=2, manual_dir=root, skip_bad=True)
  assert [e['session'] for e in two.info.metadata['skipped']['train']] == ['extra_0']
  for split, info in two.info.splits.items():
    assert len(_shard_files(two, split)) == len(info.shard_lengths)
    assert 0 not in info.shard_lengths
  _assert_same_records(two, one)
