"""The fisher builder: transcript parsing and cleaning, VA, splits, audio, bad inputs."""

import json
import re

import numpy as np
import pytest
import soxr

from convssl_jax.data import audio as audio_lib
from data_builders.fisher import Fisher
from data_builders.fisher import fisher_dataset_builder as fisher
from tests import corpus_fixtures as fx

# What the fixture's transcript (fx.FISHER_LINES) becomes: B's "[lipsmack] [sigh]" is dropped.
EXPECTED_WORDS = [
    [0, 0.3, 1.1, 'hi my name is mary'], [1, 0.9, 1.6, 'hello'],
    [0, 1.2, 2.0, 'i watch tv a lot'], [1, 2.0, 2.4, 'oh yeah really'],
]
EXPECTED_VA = [[[0.3, 1.1], [1.2, 2.0]], [[0.9, 1.6], [2.0, 2.4]]]



@pytest.mark.parametrize('raw, clean', [
    ('[noise] [laughter] [lipsmack] [sigh] [mn]', ''),
    ('so [laughter] yes', 'so yes'),
    ('((oh yeah))', 'oh yeah'),
    ('um (( )) right', 'um right'),
    ('i watch t._v. and m._t._v.', 'i watch tv and mtv'),
    ('really. yes', 'really yes'),
    ('a lot- of h- uh-huh', 'a lot of h uh-huh'),
    ('  a \t  b ', 'a b'),
])
def test_clean_text(raw, clean):
  assert fisher.clean_text(raw) == clean


def test_utterance_va_keeps_spans_and_unites_overlaps():
  utterances = [(0, 1.0, 2.0, 'a'), (1, 1.5, 2.5, 'b'), (0, 1.9, 2.2, 'c'), (0, 2.2, 3.0, 'd'),
                (0, 0.0, 0.5, 'e'), (0, 0.52, 0.6, 'f')]
  # Gaps are never merged (0.5 -> 0.52), touching spans stay apart (2.2), overlaps unite.
  assert fisher.utterance_va(utterances) == [
      [[0.0, 0.5], [0.52, 0.6], [1.0, 2.2], [2.2, 3.0]], [[1.5, 2.5]]]


def test_splits_va_words_audio_and_index(tmp_path):
  manual = tmp_path / 'fisher'
  written = fx.write_fisher(manual)
  builder = fx.prepare(Fisher, tmp_path / 'data', manual)
  index = builder.info.metadata['splits']
  assert {s: v['sessions'] for s, v in index.items()} == {
      'train': ['00001'], 'validation': ['05100'], 'test': ['05500']}
  assert all(v['durations'] == [2.5] for v in index.values())
  assert all(v['monologue'] == [False] for v in index.values())  # dialogs
  for split, (session,) in [(s, v['sessions']) for s, v in index.items()]:
    ex = fx.examples(builder, split)[session]
    fx.assert_va(ex['va'], EXPECTED_VA)
    assert json.loads(ex['words']) == EXPECTED_WORDS
    assert ex['audio'].shape == (40000, 2) and ex['f0'].shape == (250, 2)
    expected = audio_lib.to_int16(soxr.resample(
        audio_lib.from_int16(written[session].samples), 8000, 16000, quality='HQ'))
    atol = 0.02 * 32768 if session == '00001' else 1  # u-law quantises; pcm and wav are exact
    np.testing.assert_allclose(ex['audio'], expected, atol=atol)


def test_audio_is_found_on_any_disc(tmp_path):
  manual = tmp_path / 'fisher'
  fx.write_fisher(manual, sessions={'05499': ('fisher_eng_tr_sp_d2', 'pcm')})  # d6 by the rule
  builder = fx.prepare(Fisher, tmp_path / 'data', manual)
  assert builder.info.metadata['splits']['validation']['sessions'] == ['05499']


# case: (transcript line appended to session 00001's, what the error says after file:line)
BAD_LINES = {
    'no speaker': ('2.5 2.6 hello', 'expected "start end A|B: text"'),
    'unknown speaker': ('2.5 2.6 C: hello', 'expected'),
    'time not a number': ('2.5 x A: hello', 'expected'),
    'reversed times': ('2.6 2.5 A: hello', 'with 0 <= start <= end'),
    'negative time': ('-0.5 0.5 B: hi', 'with 0 <= start <= end'),
}


@pytest.mark.parametrize('case', BAD_LINES)
def test_bad_transcript_line_names_file_and_line(tmp_path, case):
  manual = tmp_path / 'fisher'
  fx.write_fisher(manual, sessions={'00001': fx.FISHER_SESSIONS['00001']})
  line, match = BAD_LINES[case]
  fx.write_fisher_transcript(manual, '00001', fx.FISHER_LINES + [line])
  path = fx.fisher_transcript_path(manual, '00001')
  data_dir = tmp_path / 'data'
  with pytest.raises(ValueError, match=re.escape(f'{path}:10: ') + '.*' + match):
    fx.prepare(Fisher, data_dir, manual)
  assert not (data_dir / 'fisher' / str(Fisher.VERSION)).exists()


def test_bad_audio_and_missing_transcript(tmp_path):
  manual = tmp_path / 'fisher'
  written = fx.write_fisher(manual, sessions={k: fx.FISHER_SESSIONS[k] for k in ('00001', '05100')})
  sph = written['05100'].path
  sph.write_bytes(sph.read_bytes()[:-100])
  with pytest.raises(ValueError, match=re.escape(str(sph)) + '.*truncated sample data'):
    fx.prepare(Fisher, tmp_path / 'data', manual)
  transcript = fx.fisher_transcript_path(manual, '00001')
  transcript.unlink()
  with pytest.raises(ValueError, match=re.escape(str(transcript)) + ': missing transcript'):
    fx.prepare(Fisher, tmp_path / 'data', manual)


def test_skip_bad_then_rerun_after_fixing(tmp_path):
  manual = tmp_path / 'fisher'
  fx.write_fisher(manual, sessions={**fx.FISHER_SESSIONS, '05101': ('fisher_eng_tr_sp_d6', 'pcm')})
  fx.write_fisher_transcript(manual, '05100', fx.FISHER_LINES + ['garbage'])
  builder = fx.prepare(Fisher, tmp_path / 'skipping', manual, skip_bad=True)
  skipped = builder.info.metadata['skipped']
  assert [e['session'] for e in skipped['validation']] == ['05100']
  assert 'fe_03_05100.txt:10:' in skipped['validation'][0]['error']
  assert builder.info.metadata['splits']['validation']['sessions'] == ['05101']

  data_dir = tmp_path / 'data'
  with pytest.raises(ValueError, match='fe_03_05100.txt:10:'):
    fx.prepare(Fisher, data_dir, manual)
  assert not (data_dir / 'fisher' / str(Fisher.VERSION)).exists()
  fx.write_fisher_transcript(manual, '05100')
  builder = fx.prepare(Fisher, data_dir, manual)
  assert builder.info.splits.total_num_examples == 4
