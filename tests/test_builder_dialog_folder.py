"""The dialog_folder builder: layout discovery, splits, stored examples, and every bad input."""

import dataclasses
import fcntl
import io
import json
import os
import pathlib
import re
import threading
import time

import numpy as np
import pytest
import soundfile as sf
import soxr

from configs import vap
from convssl_jax import errors
from convssl_jax.data import audio as audio_lib
import data_builders
from data_builders import conversation
from data_builders.dialog_folder import DialogFolder, DialogFolderConfig
from data_builders.dialog_folder import dialog_folder_dataset_builder as dialog_folder
from tests import corpus_fixtures as fx
from tests import processes


@pytest.fixture
def folder(tmp_path):
  root = tmp_path / 'dialogs'
  return root, fx.write_dialog_folder(root)


def _dataset_dir(data_dir, config='default'):
  return data_dir / 'dialog_folder' / config / str(DialogFolder.VERSION)


def test_stores_audio_va_words_and_index(folder, tmp_path):
  root, written = folder
  builder = fx.prepare(DialogFolder, tmp_path / 'data', root)
  # 4 sessions at (0.8, 0.1, 0.1): 2 train, and one each for validation and test.
  assert {s: i.num_examples for s, i in builder.info.splits.items()} == {
      'train': 2, 'validation': 1, 'test': 1}
  examples = {k: v for split in dialog_folder.SPLITS for k, v in fx.examples(builder, split).items()}
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
  assert builder.info.metadata['skipped'] == {'train': [], 'validation': [], 'test': []}


def _monologues(builder) -> dict[str, bool]:
  return {s: m for v in builder.info.metadata['splits'].values()
          for s, m in zip(v['sessions'], v['monologue'], strict=True)}


def test_a_mono_file_without_b_or_a_listed_session_is_a_monologue(folder, tmp_path, caplog):
  root, _ = folder
  builder = fx.prepare(DialogFolder, tmp_path / 'data', root)
  # 'mono': a mono file, no VA for B; the stereo files have B's VA.
  assert _monologues(builder) == {'stereo': False, 'mono': True, 'extra_0': False,
                                  'extra_1': False}
  examples = {k: v for split in dialog_folder.SPLITS for k, v in fx.examples(builder, split).items()}
  assert {k: bool(v['monologue']) for k, v in examples.items()} == _monologues(builder)
  # A listed stereo recording without VA for B is one too; its B channel (here a tone) is stored
  # as silence, with a warning.
  (root / 'extra_1.json').write_text('[[[0.1, 0.4]], []]')
  (root / 'monologues.txt').write_text('extra_1\n')
  caplog.set_level('WARNING')
  builder = fx.prepare(DialogFolder, tmp_path / 'data', root)  # a changed folder: rebuilt
  assert _monologues(builder)['extra_1'] and not _monologues(builder)['extra_0']
  [stored] = [v for split in dialog_folder.SPLITS
              for k, v in fx.examples(builder, split).items() if k == 'extra_1']
  assert not stored['audio'][:, 1].any() and stored['audio'][:, 0].any()
  assert "a monologue whose channel B is not silent; B is stored as silence" in caplog.text


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


@pytest.mark.parametrize('name, content, match', [
    ('train.txt', 'stereo\nnope\n', r'train\.txt:2: session .nope. has no audio file'),
    ('train.txt', 'stereo\nstereo\n',
     r'train\.txt:2: session .stereo. is already listed in train\.txt:1'),
    ('monologues.txt', 'mono\nnope\n', r"monologues\.txt:2: session 'nope' has no audio file"),
    ('monologues.txt', 'extra_0\n',
     r'extra_0\.json: a monologue, but speaker B has voice activity'),
])
def test_a_bad_split_or_monologue_list_is_refused_naming_the_line(folder, tmp_path, name, content,
                                                                  match):
  root, _ = folder
  (root / name).write_text(content)
  with pytest.raises(errors.InputError, match=match):
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


def _wav(samples, subtype='PCM_16') -> bytes:
  """A 16 kHz WAV file's bytes."""
  out = io.BytesIO()
  sf.write(out, np.asarray(samples), 16000, format='WAV', subtype=subtype)
  return out.getvalue()


_NAN = np.where(np.arange(16000)[:, None] == 800, np.nan, 0.1 * np.ones((16000, 2)))

# case: (file to break, its new content, the file the error names, what the error says)
BAD_INPUTS = {
    'missing VA list': ('extra_0.json', None, 'extra_0.wav',
                        r'its VA list is missing \(no extra_0.json or extra_0.TextGrid beside it\)'),
    'VA not JSON': ('extra_0.json', '[[0, 1', 'extra_0.json', 'not valid JSON'),
    'VA nested too deeply': ('extra_0.json', '[' * 100_000 + ']' * 100_000, 'extra_0.json',
                             'nested too deeply'),
    'VA with a 5000-digit integer': ('extra_0.json', '[[[0, 1' + '0' * 4999 + ']], []]',
                                     'extra_0.json', 'an integer of 5000 digits'),
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
    # pYIN failed on these inside librosa, naming no file, and skip_bad did not skip them.
    'NaN audio': ('extra_0.wav', _wav(_NAN, 'FLOAT'), 'extra_0.wav', 'NaN or infinite samples'),
    # Accepted, then training failed "labels need more than the horizon", naming no file.
    'empty audio': ('extra_0.wav', _wav(np.zeros((0, 2))), 'extra_0.wav', 'holds no samples'),
    'sub-frame audio': ('extra_0.wav', _wav(np.full((480, 2), 0.1)), 'extra_0.wav',
                        r'0.030 s of audio, shorter than a dialog can be \(0.05 s\)'),
    'three channels': ('extra_0.wav', _wav(np.zeros((16000, 3))), 'extra_0.wav', '3 channels'),
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


@pytest.mark.parametrize('samples', [0, 480])
def test_audio_without_a_frame_is_refused_even_with_an_empty_va(folder, tmp_path, samples):
  """An empty WAV with an empty VA list was built; training then failed naming no file."""
  root, _ = folder
  (root / 'extra_0.wav').write_bytes(_wav(np.full((samples, 2), 0.1)))
  (root / 'extra_0.json').write_text('[[], []]')
  with pytest.raises(errors.InputError, match=re.escape(str(root / 'extra_0.wav'))):
    fx.prepare(DialogFolder, tmp_path / 'data', root)


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


@pytest.mark.parametrize('case', ['reversed segment', 'NaN audio', 'empty audio'])
def test_skip_bad_lists_the_bad_conversation(folder, tmp_path, case):
  root, _ = folder
  broken, content, named, match = BAD_INPUTS[case]
  _replace(root / broken, content)
  builder = fx.prepare(DialogFolder, tmp_path / 'data', root, skip_bad=True)
  skipped = [entry for entries in builder.info.metadata['skipped'].values() for entry in entries]
  assert [entry['session'] for entry in skipped] == ['extra_0']
  assert re.match(re.escape(str(root / named)) + '.*' + match, skipped[0]['error'])
  built = [s for v in builder.info.metadata['splits'].values() for s in v['sessions']]
  assert sorted(built) == ['extra_1', 'mono', 'stereo']


def _all_examples(builder) -> dict[str, dict]:
  return {k: v for split in builder.info.splits for k, v in fx.examples(builder, split).items()}


def _textgrid(path, tiers, xmax=1.0):
  path.write_text(fx.textgrid_text(tiers, xmax=xmax))


def test_a_textgrid_or_predicts_json_beside_the_audio_is_its_va(folder, tmp_path, caplog):
  """A TextGrid beside the wav was "VA list missing"; predict's JSON was not a VA list."""
  root, _ = folder
  (root / 'extra_0.json').unlink()
  _textgrid(root / 'extra_0.TextGrid', [('left', [(0, 0.25, 'hi'), (0.25, 1, '')]),
                                        ('right', [(0, 0.5, ''), (0.5, 0.75, 'yo'), (0.75, 1, '')])])
  (root / 'extra_1.json').unlink()  # MFA, one speaker: words is A, B silent
  _textgrid(root / 'extra_1.textgrid', [('words', [(0, 0.2, ''), (0.2, 0.6, 'hello'),
                                                   (0.6, 1, '')]),
                                        ('phones', [(0, 0.2, ''), (0.2, 0.4, 'HH'),
                                                    (0.4, 0.6, 'OW'), (0.6, 1, '')])])
  (root / 'sub' / 'mono.json').write_text(json.dumps(
      {'frame_hz': 50, 'time': [0.0], 'vad_list': [[[0.3, 1.2]], []]}))  # predict's output
  caplog.set_level('WARNING')
  examples = _all_examples(fx.prepare(DialogFolder, tmp_path / 'data', root))
  fx.assert_va(examples['extra_0']['va'], [[[0.0, 0.25]], [[0.5, 0.75]]])
  fx.assert_va(examples['extra_1']['va'], [[[0.2, 0.6]], []])
  fx.assert_va(examples['mono']['va'], [[[0.3, 1.2]], []])
  fx.assert_va(examples['stereo']['va'], fx.DIALOG_VA['stereo'])
  assert any('extra_1.textgrid: one speaker' in r.getMessage() for r in caplog.records)


def test_ambiguous_textgrid_tiers_are_refused_then_chosen_by_the_va_tiers_option(folder,
                                                                                 tmp_path):
  root, _ = folder
  (root / 'extra_0.json').unlink()
  tiers = [('notes', [(0, 1, 'x')]), ('Ann', [(0, 0.4, 'a'), (0.4, 1, '')]),
           ('Bob', [(0, 0.6, ''), (0.6, 0.9, 'b'), (0.9, 1, '')])]
  _textgrid(root / 'extra_0.TextGrid', tiers)
  data_dir = tmp_path / 'data'
  with pytest.raises(errors.InputError, match=re.escape(str(root / 'extra_0.TextGrid')) +
                     r": cannot tell speakers A and B among 3 interval tiers \('notes', 'Ann', "
                     r"'Bob'\); name the speaker tiers with --va_tiers="):
    fx.prepare(DialogFolder, data_dir, root)
  va = _all_examples(fx.prepare(DialogFolder, data_dir, root, va_tiers='Ann,Bob'))['extra_0']['va']
  fx.assert_va(va, [[[0.0, 0.4]], [[0.6, 0.9]]])
  # Another choice of tiers is another dataset: rebuilt, not reused.
  va = _all_examples(fx.prepare(DialogFolder, data_dir, root, va_tiers=('Bob', '')))['extra_0']['va']
  fx.assert_va(va, [[[0.6, 0.9]], []])


@pytest.mark.parametrize('ratios', [(0.8, 0.1, 0.1), (0.98, 0.01, 0.01), (1 / 3, 1 / 3, 1 / 3),
                                    (0.6, 0.4, 0.0), (0.05, 0.9, 0.05)])
def test_every_split_with_a_positive_ratio_gets_a_session_from_three_on(ratios):
  for n in range(3, 60):
    sizes = dialog_folder.split_sizes(n, ratios)
    assert sum(sizes) == n
    for size, ratio in zip(sizes, ratios):
      assert (size >= 1) if ratio > 0 else (size == 0)
      if all(n * r >= 1 or r == 0 for r in ratios):  # no split raised: plain rounding
        assert abs(size - n * ratio) < 1


def test_six_dialogs_give_every_split_one(folder, tmp_path):
  """80/10/10 of 6 dialogs was 5/0/1: training then failed for want of a validation split."""
  root, _ = folder
  for i in (2, 3):
    sf.write(root / f'extra_{i}.wav', fx.tones(1.0, 16000, seed=i), 16000)
    (root / f'extra_{i}.json').write_text(json.dumps(fx.DIALOG_VA['extra_0']))
  builder = fx.prepare(DialogFolder, tmp_path / 'data', root)
  assert {s: i.num_examples for s, i in builder.info.splits.items()} == {
      'train': 4, 'validation': 1, 'test': 1}


def test_fewer_dialogs_than_splits_is_one_error_suggesting_split_lists(folder, tmp_path):
  root, _ = folder
  for session in ('extra_0', 'extra_1'):
    (root / f'{session}.wav').unlink()
  with pytest.raises(errors.InputError, match=re.escape(str(root)) + ': 2 sessions cannot give '
                     'each of the 3 splits with a positive ratio one; add sessions, or name each '
                     r"split's sessions in train.txt, validation.txt, test.txt"):
    fx.prepare(DialogFolder, tmp_path / 'data', root)
  assert not _dataset_dir(tmp_path / 'data').exists()


def _splits(builder) -> dict[str, list[str]]:
  return {s: v['sessions'] for s, v in builder.info.metadata['splits'].items()}


def test_a_changed_folder_is_rebuilt_never_silently_reused(folder, tmp_path, monkeypatch, caplog):
  """Adding split lists printed "Reusing dataset dialog_folder" and kept the old splits."""
  root, _ = folder
  data_dir = tmp_path / 'data'
  loads = []
  load = dialog_folder.load_session
  monkeypatch.setattr(dialog_folder, 'load_session', lambda s, *a: loads.append(s) or load(s, *a))
  caplog.set_level('WARNING')

  def build(expected_loads):
    loads.clear()
    caplog.clear()
    builder = fx.prepare(DialogFolder, data_dir, root)
    assert len(loads) == expected_loads
    return builder, ' '.join(r.getMessage() for r in caplog.records)

  first, _ = build(4)
  _, said = build(0)  # unchanged: reused
  assert 'rebuilding' not in said
  (root / 'train.txt').write_text('stereo\nmono\nextra_0\n')
  (root / 'validation.txt').write_text('extra_1\n')
  builder, said = build(4)
  assert _splits(builder) == {'train': ['stereo', 'mono', 'extra_0'], 'validation': ['extra_1']}
  assert 'the folder changed: 2 files added (train.txt, validation.txt); rebuilding it' in said
  assert set(builder.info.splits) == {'train', 'validation'}  # the old test split is gone
  (root / 'train.txt').write_text('extra_0\nmono\nstereo\n')  # same size, same second
  builder, said = build(4)
  assert _splits(builder)['train'] == ['extra_0', 'mono', 'stereo']
  assert '1 file changed (train.txt)' in said
  (root / 'extra_0.json').write_text('[[[0.25, 0.5]], []]')
  builder, said = build(4)
  fx.assert_va(fx.examples(builder, 'train')['extra_0']['va'], [[[0.25, 0.5]], []])
  assert '1 file changed (extra_0.json)' in said
  (root / 'extra_1.words.json').write_text('[]')
  assert '1 file added (extra_1.words.json)' in build(4)[1]
  # The same files reached by another path are the same input; other files are not.
  moved = tmp_path / 'moved'
  root.rename(moved)
  loads.clear()
  fx.prepare(DialogFolder, data_dir, moved)
  assert not loads
  other = tmp_path / 'other'
  fx.write_dialog_folder(other)
  fx.prepare(DialogFolder, data_dir, other)
  assert len(loads) == 4 and 'files changed (extra_0.json, extra_0.wav, extra_1.json, ...)' in (
      caplog.text)


def test_a_dataset_that_skipped_sessions_is_rebuilt_without_skip_bad(folder, tmp_path):
  root, _ = folder
  _replace(root / 'extra_0.json', '[[[0.5, 0.2]], []]')
  data_dir = tmp_path / 'data'
  fx.prepare(DialogFolder, data_dir, root, skip_bad=True)
  fx.prepare(DialogFolder, data_dir, root, skip_bad=True)  # reused
  with pytest.raises(ValueError, match='extra_0.json.*reversed'):
    fx.prepare(DialogFolder, data_dir, root)  # rebuilt: the bad file stops it now


def test_a_missing_folder_is_refused_over_a_built_dataset(folder, tmp_path):
  root, _ = folder
  fx.prepare(DialogFolder, tmp_path / 'data', root)
  with pytest.raises(errors.InputError, match=f'^{tmp_path / "gone"}: no such folder .*built'):
    fx.prepare(DialogFolder, tmp_path / 'data', tmp_path / 'gone')


def test_non_utf8_file_names_are_read_and_named_escaped(folder, tmp_path):
  """A name that is not UTF-8 failed in soundfile, naming no file."""
  root, _ = folder
  raw = os.fsencode(root) + b'/caf\xe9'
  for suffix in (b'.wav', b'.json'):
    os.rename(root / f'extra_0{suffix.decode()}', raw + suffix)
  (root / 'train.txt').write_bytes(b'stereo\nmono\ncaf\xe9\n')  # raw bytes ...
  (root / 'test.txt').write_bytes(b'extra_1\n')
  builder = fx.prepare(DialogFolder, tmp_path / 'data', root)
  assert _splits(builder) == {'train': ['stereo', 'mono', 'caf\\xe9'], 'test': ['extra_1']}
  fx.assert_va(fx.examples(builder, 'train')['caf\\xe9']['va'], fx.DIALOG_VA['extra_0'])
  (root / 'train.txt').write_bytes(b'stereo\nmono\ncaf\\xe9\n')  # ... or escaped
  assert _splits(fx.prepare(DialogFolder, tmp_path / 'data', root))['train'][2] == 'caf\\xe9'
  os.rename(raw + b'.json', raw + b'.json.bak')
  with pytest.raises(ValueError, match=re.escape(f'{root}/caf\\xe9.wav: its VA list is missing')):
    fx.prepare(DialogFolder, tmp_path / 'data2', root)
  skipped = fx.prepare(DialogFolder, tmp_path / 'data3', root, skip_bad=True).info.metadata[
      'skipped']['train']
  assert [e['session'] for e in skipped] == ['caf\\xe9']
  assert skipped[0]['error'].startswith(f'{root}/caf\\xe9.wav: its VA list is missing')


def test_an_unexpected_error_keeps_its_traceback_and_names_the_file(folder, tmp_path,
                                                                    monkeypatch):
  root, _ = folder

  def broken(path, **_):
    raise ZeroDivisionError('a bug')

  monkeypatch.setattr(audio_lib, 'read_stereo', broken)
  with pytest.raises(ZeroDivisionError) as raised:
    fx.prepare(DialogFolder, tmp_path / 'data', root)
  assert any(str(root / 'extra_0.wav') in note for note in raised.value.__notes__)


def _lock(data_dir) -> pathlib.Path:
  return data_dir / 'dialog_folder' / 'default' / f'.build-{DialogFolder.VERSION}.lock'


def test_stale_incomplete_folders_are_removed_but_not_a_live_builds(folder, tmp_path):
  """Killed builds left `incomplete.*` folders that no build ever removed. A folder is stale
  when no build holds the version's lock: a live build (here: the lock taken by the test) is
  waited for, and only then are the folders it leaves removed."""
  root, _ = folder
  data_dir = tmp_path / 'data'
  stale = data_dir / 'dialog_folder' / 'default' / f'incomplete.K1LLED_{DialogFolder.VERSION}'
  (stale / 'sub').mkdir(parents=True)
  (stale / 'sub' / 'dialog_folder-train.array_record-00000-of-00001').write_bytes(b'x' * 100)
  other_version = stale.with_name('incomplete.OLDONE_1.0.0')
  other_version.mkdir()
  with open(_lock(data_dir), 'a+') as held:
    fcntl.flock(held, fcntl.LOCK_EX)
    build = threading.Thread(target=fx.prepare, args=(DialogFolder, data_dir, root))
    build.start()
    time.sleep(1.0)
    assert build.is_alive() and stale.exists()  # waiting for the live build
  build.join(timeout=60)
  assert not build.is_alive() and not stale.exists() and other_version.exists()
  assert _dataset_dir(data_dir).is_dir()
  assert _lock(data_dir).read_text().startswith(f'pid {os.getpid()} on ')


def test_prepare_passes_the_va_tiers_of_the_data_config(folder, tmp_path, monkeypatch):
  root, _ = folder
  monkeypatch.setattr(conversation.multiprocessing, 'cpu_count', lambda: 1)  # the cheap F0
  (root / 'extra_0.json').unlink()
  _textgrid(root / 'extra_0.TextGrid', [('x', [(0, 0.5, 'a'), (0.5, 1, '')]),
                                        ('y', [(0, 1, 'b')]), ('z', [(0, 1, '')])])
  data = vap.data_config()
  data.update(name='dialog_folder', manual_dir=str(root), data_dir=str(tmp_path / 'data'),
              va_tiers='y,x')
  [builder] = data_builders.prepare(data)
  fx.assert_va(_all_examples(builder)['extra_0']['va'], [[[0.0, 1.0]], [[0.0, 0.5]]])


def test_two_builds_at_once_build_once(folder, tmp_path, monkeypatch):
  """The second build waits for the first, then finds its dataset current and reuses it (as
  every process of a multi-host run calling `prepare` at once does)."""
  root, _ = folder
  loads = []
  load = dialog_folder.load_session
  monkeypatch.setattr(dialog_folder, 'load_session',
                      lambda s, *a: loads.append(s) or time.sleep(0.2) or load(s, *a))
  builders = [DialogFolder(data_dir=str(tmp_path / 'data'), num_workers=1) for _ in range(2)]
  config = dataclasses.replace(conversation.download_config(), manual_dir=str(root))
  failures = []

  def build(builder):
    try:
      builder.download_and_prepare(download_config=config)
    except Exception as err:  # surfaced by the assertion below
      failures.append(err)

  threads = [threading.Thread(target=build, args=(b,)) for b in builders]
  for t in threads:
    t.start()
  for t in threads:
    t.join(timeout=120)
  assert not failures and len(loads) == 4
  assert [b.info.splits.total_num_examples for b in builders] == [4, 4]


def test_the_build_command_takes_va_tiers_and_refuses_in_one_line(folder, tmp_path):
  root, _ = folder
  (root / 'extra_0.json').unlink()
  _textgrid(root / 'extra_0.TextGrid', [('x', [(0, 1, 'a')]), ('y', [(0, 1, '')])])
  done = processes.run('-m', 'data_builders', 'dialog_folder', f'--manual_dir={root}',
                       f'--data_dir={tmp_path / "data"}', '--num_workers=1', '--va_tiers=y,nope',
                       timeout=300)
  assert done.returncode == 2, done.stderr[-3000:]
  assert done.stderr.splitlines()[-1] == (
      f"error: {root / 'extra_0.TextGrid'}: no interval tier named 'nope' (its interval tiers: "
      "'x', 'y'); name the speaker tiers with --va_tiers=A_TIER,B_TIER (a corpus: data.va_tiers),"
      " e.g. --va_tiers=x,y (an empty name is a silent speaker)")
  assert 'Traceback' not in done.stderr


def test_a_built_dataset_where_no_lock_can_be_written_is_used_as_it_is(folder, tmp_path,
                                                                      monkeypatch):
  """A shared, read-only corpus (simulated: the tests run as root, whom permissions do not stop)."""
  root, _ = folder
  data_dir = tmp_path / 'data'
  fx.prepare(DialogFolder, data_dir, root)

  def read_only(path, *args, **kwargs):
    if str(path).endswith('.lock'):
      raise PermissionError(13, 'Permission denied')
    return open(path, *args, **kwargs)

  monkeypatch.setattr(conversation, 'open', read_only, raising=False)
  assert fx.prepare(DialogFolder, data_dir, root).info.splits.total_num_examples == 4
  with pytest.raises(errors.InputError, match='/elsewhere/dialog_folder/default: cannot build '
                     r'the dataset there \(Permission denied\)'):
    fx.prepare(DialogFolder, tmp_path / 'elsewhere', root)
