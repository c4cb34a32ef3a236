"""The switchboard builder: ms98 parsing and cleaning, VA, splits and folds, audio, bad inputs."""

import json
import pathlib
import re

import numpy as np
import pytest
import soxr

from convssl_jax.data import audio as audio_lib
from convssl_jax.data import f0 as f0_lib
from data_builders.switchboard import Switchboard, SwitchboardConfig
from data_builders.switchboard import switchboard_dataset_builder as swb
from tests import corpus_fixtures as fx

FIXTURES = pathlib.Path(__file__).parent / 'fixtures'

# What the fixture's word template (fx.SWB_WORDS) becomes.
EXPECTED_WORDS = [
    [1, 0.3, 0.5, 'uh-huh'], [0, 0.45, 0.7, 'okay'], [0, 0.7, 0.9, 'i'], [0, 0.92, 1.2, 'went'],
    [1, 1.0, 1.3, 'yeah'], [0, 1.3, 1.5, 'yes'], [1, 1.3, 1.6, 'right'],
    [0, 1.52, 1.8, 'space'], [0, 1.82, 2.1, 'that'], [1, 2.1, 2.4, 'bye'],
]
# Words < 0.05 s apart merge within an utterance; [1.3, 1.5] and [1.52, 2.1] are 0.02 s apart
# but in different utterances, so they stay apart.
EXPECTED_VA = [[[0.45, 1.2], [1.3, 1.5], [1.52, 2.1]], [[0.3, 0.5], [1.0, 1.6], [2.1, 2.4]]]



def _dataset_dir(data_dir, config='original'):
  return data_dir / 'switchboard' / config / str(Switchboard.VERSION)


@pytest.mark.parametrize('raw, clean', [
    ('[silence]', ''), ('[noise]', ''), ('[vocalized-noise]', ''), ('[laughter]', ''),
    ('[laughter-yes]', 'yes'),
    ('w[ent]-', 'went'), ('-[th]at', 'that'),
    ('i-', 'i'),
    ('okay_1', 'okay'),
    ('[splace/space]', 'space'),
    ('{yeah}', 'yeah'),
    ('uh-huh', 'uh-huh'),
    ('  so [noise]   i- {alright}  ', 'so i alright'),
])
def test_clean_word(raw, clean):
  assert swb.clean_word(raw) == clean


def test_original_split_va_words_audio_and_index(tmp_path):
  manual = tmp_path / 'swb'
  written = fx.write_switchboard(manual)
  builder = fx.prepare(Switchboard, tmp_path / 'data', manual)
  index = builder.info.metadata['splits']
  assert {s: v['sessions'] for s, v in index.items()} == {
      'train': ['2005', '3010'], 'validation': ['4150'], 'test': ['4700']}
  assert all(v['durations'] == [2.5] * len(v['sessions']) for v in index.values())
  assert all(v['monologue'] == [False] * len(v['sessions']) for v in index.values())  # dialogs
  examples = {**fx.examples(builder, 'train'), **fx.examples(builder, 'validation'),
              **fx.examples(builder, 'test')}
  for session, ex in examples.items():
    fx.assert_va(ex['va'], EXPECTED_VA)
    assert json.loads(ex['words']) == EXPECTED_WORDS
    assert ex['audio'].dtype == np.int16 and ex['audio'].shape == (40000, 2)
    assert ex['f0'].shape == (250, 2)
    expected = audio_lib.to_int16(soxr.resample(
        audio_lib.from_int16(written[session].samples), 8000, 16000, quality='HQ'))
    # pcm and wav are lossless; u-law quantises (steps of ~1.5% at this level).
    atol = 1 if session in ('3010', '4150') else 0.02 * 32768
    np.testing.assert_allclose(ex['audio'], expected, atol=atol)


@pytest.mark.parametrize('tracker', f0_lib.TRACKERS)
def test_f0_tracked_at_8khz_before_resampling(tmp_path, tracker):
  t = np.arange(8000) / 8000
  samples = np.zeros((8000, 2), np.int16)
  samples[:, 0] = np.round(0.3 * 32767 * np.sin(2 * np.pi * 220.0 * t))
  manual = tmp_path / 'swb'
  fx.write_switchboard(manual, sessions={'2010': ('swb1_d1', 'pcm')}, samples=samples)
  for speaker in 'AB':  # the template's words run to 2.4 s: keep those within the 1 s
    path = fx.swb_transcript_dir(manual, '2010') / f'sw2010{speaker}-ms98-a-word.text'
    path.write_text('\n'.join(fx.swb_word_lines('2010', speaker)[:2]) + '\n')
  builder = fx.prepare(Switchboard, tmp_path / 'data', manual, f0_tracker=tracker)
  assert builder.info.metadata['f0_tracker'] == tracker
  f0 = builder.as_data_source('train')[0]['f0']
  np.testing.assert_array_equal(f0, f0_lib.pyin_f0(audio_lib.from_int16(samples), 8000))
  voiced = f0[f0[:, 0] > 0, 0]
  assert len(voiced) >= 90 and abs(np.median(voiced) - 220.0) < 3.0
  assert not f0[:, 1].any()  # the silent channel is unvoiced


def test_unknown_f0_tracker(tmp_path):
  with pytest.raises(ValueError, match="unknown F0 tracker 'crepe'"):
    Switchboard(data_dir=str(tmp_path), f0_tracker='crepe')


def test_kfold_split_partitions_train_and_validation_without_the_aside_sessions():
  sessions = [str(i) for i in range(2001, 2025)] + ['4150', '4700', '4701']  # 25 + 2 test
  folds = [swb.kfold_split(sessions, k) for k in range(swb.N_FOLDS)]
  pool = [s for s in sessions[:25] if s != '2022']  # 2022 holds asides
  assert [len(f['validation']) for f in folds] == [3, 3] + [2] * 9  # 24 = 2 * 11 + 2
  assert sum((f['validation'] for f in folds), []) == pool  # contiguous, in order
  for f in folds:
    assert sorted(f['train'] + f['validation']) == pool and f['test'] == ['4700', '4701']
  assert folds[1]['validation'] == ['2004', '2005', '2006']


# The reference's fold lists (conv_ssl conf/swb_kfolds/{k}_fold_val.txt): size, lowest and highest
# session of each fold's validation chunk.
REFERENCE_FOLDS = [(201, 2001, 2293), (201, 2294, 2523), (201, 2524, 2749), (201, 2750, 2981),
                   (201, 2982, 3197), (200, 3198, 3416), (200, 3417, 3621), (200, 3622, 3825),
                   (200, 3826, 4033), (200, 4034, 4237), (200, 4238, 4633)]


def test_kfolds_of_the_real_sessions_are_the_reference_folds():
  # The 2000 + 300 train and validation sessions of the reference's split lists.
  sessions = (FIXTURES / 'switchboard_train_validation_sessions.txt').read_text().split()
  assert len(sessions) == 2300
  for k, (size, low, high) in enumerate(REFERENCE_FOLDS):
    fold = swb.kfold_split(sessions + ['4637'], k)
    assert (len(fold['validation']), fold['validation'][0], fold['validation'][-1]) == (
        size, str(low), str(high)), k
    assert len(fold['train']) == 2205 - size and fold['test'] == ['4637']
    assert not swb.ASIDE_SESSIONS & set(fold['train'] + fold['validation'])


def test_the_damsl_lists_split_the_sessions_of_the_original_split():
  lists = swb.damsl_split([str(i) for i in range(2001, 4941)])
  assert [len(lists[s]) for s in ('train', 'validation', 'test')] == [1283, 578, 577]
  damsl = set(sum(lists.values(), []))
  assert len(damsl) == 2438  # disjoint
  # Every train and validation session of the original split lists is in one of them.
  assert set((FIXTURES / 'switchboard_train_validation_sessions.txt').read_text().split()) <= damsl


def test_damsl_config_builds_the_sessions_of_its_lists(tmp_path):
  manual = tmp_path / 'swb'
  fx.write_switchboard(manual)
  builder = fx.prepare(Switchboard, tmp_path / 'data', manual, config='damsl')
  index = builder.info.metadata['splits']
  # The fixture's 2005, 3010 and 4150 are in the lists' validation, train and test; 4700 in none.
  assert {s: v['sessions'] for s, v in index.items()} == {
      'train': ['3010'], 'validation': ['2005'], 'test': ['4150']}


def test_fold_config_builds_its_folds(tmp_path):
  manual = tmp_path / 'swb'
  fx.write_switchboard(manual)
  builder = fx.prepare(Switchboard, tmp_path / 'data', manual, config='fold_1')
  assert isinstance(builder.builder_config, SwitchboardConfig) and builder.builder_config.fold == 1
  index = builder.info.metadata['splits']
  assert {s: v['sessions'] for s, v in index.items()} == {
      'train': ['2005', '4150'], 'validation': ['3010'], 'test': ['4700']}


def _session_file(manual, name):
  """The fixture's files of session 2005 by a short name."""
  transcripts = fx.swb_transcript_dir(manual, '2005')
  return {'audio': manual / 'swb1_d1' / 'data' / 'sw02005.sph',
          'words A': transcripts / 'sw2005A-ms98-a-word.text',
          'words B': transcripts / 'sw2005B-ms98-a-word.text',
          'transcripts': transcripts}[name]


def _truncate(path):
  path.write_bytes(path.read_bytes()[:-2000])


def _append(path, line):
  path.write_text(path.read_text() + line + '\n')


def _dangle(path):
  """Replaces the file by a link to a missing one."""
  path.unlink()
  path.symlink_to(path.parent / 'gone.sph')


def _remove(path):
  for child in path.iterdir():
    child.unlink()
  path.rmdir()


# case: (file of session 2005, how it is broken, what the error says after naming the file)
BAD_INPUTS = {
    'line with 3 fields': ('words A', lambda p: _append(p, 'sw2005A-ms98-a-0005 2.4 2.5'),
                           r':11: expected "utt_id start end word"'),
    'reversed word times': ('words B', lambda p: _append(p, 'sw2005B-ms98-a-0007 2.5 2.4 so'),
                            r':10: expected "utt_id start end word" with 0 <= start <= end'),
    'time not a number': ('words B', lambda p: _append(p, 'sw2005B-ms98-a-0007 2.5 x so'),
                          ':10: expected'),
    'missing word file': ('words B', lambda p: p.unlink(), 'missing ms98 word alignment'),
    'no transcripts': ('transcripts', _remove, r'/sw2005A-ms98-a-word\.text: missing ms98'),
    'truncated shorten': ('audio', _truncate, 'corrupt embedded Shorten stream'),
    'not SPHERE': ('audio', lambda p: p.write_bytes(b'RIFF'), 'not a NIST SPHERE file'),
    'missing audio file': ('audio', _dangle, 'cannot read'),
}


@pytest.mark.parametrize('case', BAD_INPUTS)
def test_bad_input_names_the_file_and_leaves_no_dataset(tmp_path, case):
  manual = tmp_path / 'swb'
  fx.write_switchboard(manual, sessions={'2005': fx.SWB_SESSIONS['2005']})
  name, breaks, match = BAD_INPUTS[case]
  path = _session_file(manual, name)
  breaks(path)
  data_dir = tmp_path / 'data'
  with pytest.raises(ValueError, match=re.escape(str(path)) + '.*' + match):
    fx.prepare(Switchboard, data_dir, manual)
  assert not _dataset_dir(data_dir).exists()


@pytest.mark.parametrize('coding', ['pcm', 'ulaw'])
def test_truncated_plain_sphere(tmp_path, coding):
  manual = tmp_path / 'swb'
  written = fx.write_switchboard(manual, sessions={'3010': ('swb1_d2', coding)})
  _truncate(written['3010'].path)
  with pytest.raises(ValueError, match=re.escape(str(written['3010'].path)) + '.*truncated'):
    fx.prepare(Switchboard, tmp_path / 'data', manual)


def test_mono_audio_is_an_error(tmp_path):
  manual = tmp_path / 'swb'
  mono = fx.tones(1.0, 8000, freqs=(200.0,))
  written = fx.write_switchboard(manual, sessions={'4150': ('swb1_d3', 'wav')}, samples=mono)
  with pytest.raises(ValueError, match=re.escape(str(written['4150'].path)) + '.*1 channels'):
    fx.prepare(Switchboard, tmp_path / 'data', manual)


def test_rerun_after_fixing_and_skip_bad(tmp_path):
  manual = tmp_path / 'swb'
  fx.write_switchboard(manual)
  words = _session_file(manual, 'words A')
  good = words.read_text()
  _append(words, 'garbage')
  data_dir = tmp_path / 'data'
  with pytest.raises(ValueError, match=re.escape(str(words)) + ':11:'):
    fx.prepare(Switchboard, data_dir, manual)

  builder = fx.prepare(Switchboard, tmp_path / 'skipping', manual, skip_bad=True)
  skipped = builder.info.metadata['skipped']
  assert [e['session'] for e in skipped['train']] == ['2005'] and str(words) in (
      skipped['train'][0]['error'])
  assert builder.info.metadata['splits']['train']['sessions'] == ['3010']

  words.write_text(good)
  builder = fx.prepare(Switchboard, data_dir, manual)
  assert builder.info.splits.total_num_examples == 4 and _dataset_dir(data_dir).is_dir()
