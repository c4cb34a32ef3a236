"""The dialog_folder builder: layout discovery, splits, stored examples, and every bad input."""

import json
import pathlib
import re

import numpy as np
import pytest
import soxr

from convssl_jax.data import audio as audio_lib
from data_builders.dialog_folder import DialogFolder, DialogFolderConfig
from data_builders.dialog_folder import dialog_folder_dataset_builder as dialog_folder
from tests import corpus_fixtures as fx


@pytest.fixture
def folder(tmp_path):
  root = tmp_path / 'dialogs'
  return root, fx.write_dialog_folder(root)


def _dataset_dir(data_dir, config='default'):
  return data_dir / 'dialog_folder' / config / '1.1.0'



def test_stores_audio_va_words_and_index(folder, tmp_path):
  root, written = folder
  builder = fx.prepare(DialogFolder, tmp_path / 'data', root)
  # 4 sessions at (0.8, 0.1, 0.1): 3 train, 1 validation, an empty test split is left out.
  assert set(builder.info.splits) == {'train', 'validation'}
  examples = {**fx.examples(builder, 'train'), **fx.examples(builder, 'validation')}
  assert sorted(examples) == sorted(fx.DIALOG_VA)
  for session, ex in examples.items():
    fx.assert_va(ex['va'], fx.DIALOG_VA[session])
    assert ex['audio'].dtype == np.int16 and ex['audio'].shape[1] == 2
    assert ex['f0'].shape == (len(ex['audio']) // 160, 2)
  stereo = written['stereo']
  expected = audio_lib.to_int16(soxr.resample(
      audio_lib.from_int16(stereo.samples), stereo.sample_rate, 16000, quality='HQ'))
  np.testing.assert_allclose(examples['stereo']['audio'], expected, atol=1)
  assert json.loads(examples['stereo']['words']) == fx.DIALOG_WORDS['stereo']
  mono = examples['mono']['audio']
  assert len(mono) == 24000 and np.abs(mono[:, 0]).max() > 1000 and not mono[:, 1].any()
  index = builder.info.metadata['splits']
  assert all(v['sessions'] == sorted(v['sessions']) for v in index.values())
  durations = {s: d for v in index.values() for s, d in zip(v['sessions'], v['durations'],
                                                            strict=True)}
  assert durations == {'stereo': 2.0, 'mono': 1.5, 'extra_0': 1.0, 'extra_1': 1.0}
  assert builder.info.metadata['skipped'] == {'train': [], 'validation': []}


def test_ratio_split_is_seeded_and_complete():
  sessions = [f's{i:02d}' for i in range(20)]
  split = dialog_folder.ratio_split(sessions, (0.6, 0.2, 0.2), seed=0)
  assert [len(split[s]) for s in dialog_folder.SPLITS] == [12, 4, 4]
  assert sorted(sum(split.values(), [])) == sessions
  assert all(split[s] == sorted(split[s]) for s in split)
  assert split == dialog_folder.ratio_split(sessions, (0.6, 0.2, 0.2), seed=0)
  assert split != dialog_folder.ratio_split(sessions, (0.6, 0.2, 0.2), seed=1)
  with pytest.raises(ValueError, match='summing to 1'):
    dialog_folder.ratio_split(sessions, (0.6, 0.2, 0.3), seed=0)


def test_ratio_config(folder, tmp_path):
  root, _ = folder
  config = DialogFolderConfig.with_ratios((0.5, 0.25, 0.25), seed=3)
  assert config.name == 'r0.5-0.25-0.25_s3'
  builder = fx.prepare(DialogFolder, tmp_path / 'data', root, config=config)
  assert {s: i.num_examples for s, i in builder.info.splits.items()} == {
      'train': 2, 'validation': 1, 'test': 1}


def test_split_lists(folder, tmp_path):
  root, _ = folder
  (root / 'train.txt').write_text('stereo\nmono\n\n')
  (root / 'test.txt').write_text('extra_1\n')
  builder = fx.prepare(DialogFolder, tmp_path / 'data', root)
  index = builder.info.metadata['splits']
  assert {s: v['sessions'] for s, v in index.items()} == {
      'train': ['stereo', 'mono'], 'test': ['extra_1']}  # extra_0 is in no list: left out


@pytest.mark.parametrize('content, match', [
    ('stereo\nnope\n', r'train\.txt:2: session .nope. has no audio file'),
    ('stereo\nstereo\n', r'train\.txt:2: session .stereo. is already listed in train\.txt:1'),
])
def test_bad_split_list(folder, tmp_path, content, match):
  root, _ = folder
  (root / 'train.txt').write_text(content)
  with pytest.raises(ValueError, match=match):
    fx.prepare(DialogFolder, tmp_path / 'data', root)


def test_duplicate_stems_are_an_error(folder, tmp_path):
  root, written = folder
  (root / 'sub' / 'stereo.flac').write_bytes(b'')
  with pytest.raises(ValueError, match=r"session 'stereo' is also .*stereo\.wav"):
    fx.prepare(DialogFolder, tmp_path / 'data', root)


def _replace(path, content):
  """Deletes `path` (None), writes text or bytes into it, or makes it a link to a missing file."""
  path.unlink(missing_ok=True)
  if isinstance(content, pathlib.Path):
    path.symlink_to(path.parent / content)
  elif isinstance(content, bytes):
    path.write_bytes(content)
  elif content is not None:
    path.write_text(content)


# case: (file to break, its new content, the file the error names, what the error says)
BAD_INPUTS = {
    'missing VA list': ('extra_0.json', None, 'extra_0.wav', 'VA list extra_0.json is missing'),
    'VA not JSON': ('extra_0.json', '[[0, 1', 'extra_0.json', 'not valid JSON'),
    'negative time': ('extra_0.json', '[[[-0.1, 0.5]], []]', 'extra_0.json', 'negative time'),
    'reversed segment': ('extra_0.json', '[[[0.5, 0.2]], []]', 'extra_0.json', 'reversed'),
    'overlapping segments': ('extra_0.json', '[[[0.1, 0.5], [0.4, 0.6]], []]', 'extra_0.json',
                             'starts before the previous segment ends'),
    'VA past the audio': ('extra_0.json', '[[[0.1, 3.0]], []]', 'extra_0.json',
                          'after the end of the audio'),
    'bad words entry': ('extra_0.words.json', '[[0, 0.5, 0.1, "hi"]]', 'extra_0.words.json',
                        r'entry 0 \[0, 0.5, 0.1'),
    'undecodable audio': ('extra_0.wav', b'RIFF junk', 'extra_0.wav', 'cannot decode audio'),
    'missing audio file': ('extra_0.wav', pathlib.Path('gone.wav'), 'extra_0.wav',
                           'no such file'),
}


@pytest.mark.parametrize('case', BAD_INPUTS)
def test_bad_input_names_the_file_and_leaves_no_dataset(folder, tmp_path, case):
  root, _ = folder
  broken, content, named, match = BAD_INPUTS[case]
  _replace(root / broken, content)
  data_dir = tmp_path / 'data'
  with pytest.raises(ValueError, match=re.escape(str(root / named)) + '.*' + match):
    fx.prepare(DialogFolder, data_dir, root)
  assert not _dataset_dir(data_dir).exists()


def test_rerun_after_fixing_the_input(folder, tmp_path):
  root, _ = folder
  good = (root / 'extra_0.json').read_text()
  _replace(root / 'extra_0.json', '[[[0.5, 0.2]], []]')
  data_dir = tmp_path / 'data'
  with pytest.raises(ValueError, match='reversed'):
    fx.prepare(DialogFolder, data_dir, root)
  (root / 'extra_0.json').write_text(good)
  builder = fx.prepare(DialogFolder, data_dir, root)
  assert builder.info.splits.total_num_examples == 4
  assert _dataset_dir(data_dir).is_dir()


def test_skip_bad_lists_the_bad_conversation(folder, tmp_path):
  root, _ = folder
  _replace(root / 'extra_0.json', '[[[0.5, 0.2]], []]')
  builder = fx.prepare(DialogFolder, tmp_path / 'data', root, skip_bad=True)
  skipped = [entry for entries in builder.info.metadata['skipped'].values() for entry in entries]
  assert [entry['session'] for entry in skipped] == ['extra_0']
  assert 'extra_0.json' in skipped[0]['error'] and 'reversed' in skipped[0]['error']
  built = [s for v in builder.info.metadata['splits'].values() for s in v['sessions']]
  assert sorted(built) == ['extra_1', 'mono', 'stereo']
