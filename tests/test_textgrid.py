"""Praat TextGrids as VA lists: both text formats, the encodings Praat writes, which tiers are the
speakers (by name, Montreal Forced Aligner layouts, refusals), malformed files, and memory."""

import codecs
import os
import textwrap

import pytest

from convssl_jax import errors
from convssl_jax.data import textgrid
from convssl_jax.data import va_files
from tests import corpus_fixtures as fx
from tests import processes

LONG_TEXTGRID = '''File type = "ooTextFile"
Object class = "TextGrid"

xmin = 0
xmax = 3.5
tiers? <exists>
size = 3
item []:
    item [1]:
        class = "IntervalTier"
        name = "speaker A"
        xmin = 0
        xmax = 3.5
        intervals: size = 4
        intervals [1]:
            xmin = 0
            xmax = 0.5
            text = ""
        intervals [2]:
            xmin = 0.5
            xmax = 1.25
            text = "say ""2"" [3]"
        intervals [3]:
            xmin = 1.25
            xmax = 2
            text = "again"
        intervals [4]:
            xmin = 2
            xmax = 3.5
            text = "  "
    item [2]:
        class = "TextTier"
        name = "points 1"
        xmin = 0
        xmax = 3.5
        points: size = 1
        points [1]:
            number = 1.5
            mark = "x"
    item [3]:
        class = "IntervalTier"
        name = "speaker B"
        xmin = 0
        xmax = 3.5
        intervals: size = 2
        intervals [1]:
            xmin = 0
            xmax = 2.1
            text = ""
        intervals [2]:
            xmin = 2.1
            xmax = 3.5
            text = "yes"
'''
# The same grid in Praat's short text format.
SHORT_TEXTGRID = '''File type = "ooTextFile"
Object class = "TextGrid"

0
3.5
<exists>
3
"IntervalTier"
"speaker A"
0
3.5
4
0
0.5
""
0.5
1.25
"say ""2"" [3]"
1.25
2
"again"
2
3.5
"  "
"TextTier"
"points 1"
0
3.5
1
1.5
"x"
"IntervalTier"
"speaker B"
0
3.5
2
0
2.1
""
2.1
3.5
"yes"
'''


@pytest.mark.parametrize('text', [LONG_TEXTGRID, SHORT_TEXTGRID], ids=['long', 'short'])
def test_a_textgrid_gives_the_speech_intervals_of_its_two_interval_tiers(tmp_path, text):
  path = tmp_path / 'talk.TextGrid'
  path.write_text(text)
  # Speaker A: "say..." and "again" touch and join; blank and whitespace labels are silence; the
  # point tier between the two interval tiers is read past.
  assert va_files.read_va_file(path) == [[[0.5, 2.0]], [[2.1, 3.5]]]


@pytest.mark.parametrize('text, message', [
    ('hello', 'not a Praat TextGrid'),
    (LONG_TEXTGRID.replace('size = 3', 'size = 1', 1),
     r"cannot tell speakers A and B among 1 interval tier \('speaker A'\)"),
    (LONG_TEXTGRID.split('item [3]')[0], 'ends early'),
    (LONG_TEXTGRID.replace('xmax = 1.25', 'xmax = "1.25"', 1), "'1.25' where a number"),
    # Sizes and counts are whole numbers (3.5 was read as 3).
    (LONG_TEXTGRID.replace('size = 3', 'size = 3.5', 1), 'size 3.5 is not a whole number'),
    (LONG_TEXTGRID.replace('intervals: size = 2', 'intervals: size = 2.0', 1),
     'size 2.0 is not a whole number'),
    (LONG_TEXTGRID.replace('intervals: size = 2', 'intervals: size = -1', 1),
     'size -1 is not a whole number >= 0'),
    (SHORT_TEXTGRID.replace('\n3\n"IntervalTier"', '\n3.5\n"IntervalTier"', 1),
     'size 3.5 is not a whole number'),
    (LONG_TEXTGRID.replace('tiers? <exists>', 'tiers? <absent>', 1), 'the TextGrid has no tiers'),
    (LONG_TEXTGRID.replace('"TextTier"', '"Tier"', 1), "class 'Tier'"),
    # Intervals out of order, or reversed.
    (LONG_TEXTGRID.replace('xmin = 1.25', 'xmin = 1.0', 1),
     r"tier 'speaker A': interval 3 \[1.0, 2.0\] starts before the previous one ends \(1.25\)"),
    (LONG_TEXTGRID.replace('xmax = 2.1', 'xmax = -1', 1), r'interval 1 \[0.0, -1.0\] ends before'),
])
def test_a_bad_textgrid_is_refused_naming_the_file(tmp_path, text, message):
  path = tmp_path / 'bad.TextGrid'
  path.write_text(text)
  with pytest.raises(errors.InputError, match=f'^{path}: .*{message}') as refused:
    va_files.read_va_file(path)
  assert '\n' not in str(refused.value)

# Praat's labels are free text; these are ASCII, Latin-1 and beyond.
LABELS = ('hello', 'café', '日本語')
GRID = [('speaker A', [(0, 0.5, ''), (0.5, 1.25, LABELS[0]), (1.25, 2, LABELS[1]), (2, 3, '')]),
        ('speaker B', [(0, 2.1, ''), (2.1, 3, LABELS[2])])]
GRID_VA = [[[0.5, 2.0]], [[2.1, 3.0]]]


@pytest.mark.parametrize('encoding', ['utf-8', 'utf-8-sig', 'utf-16-le', 'utf-16-be', 'latin-1'])
@pytest.mark.parametrize('short', [False, True], ids=['long', 'short'])
def test_the_encodings_praat_writes_are_read(tmp_path, encoding, short):
  """Praat writes UTF-16 (with a byte-order mark) when a label is not ASCII, UTF-8 (with or
  without one) by preference, and older versions Latin-1."""
  labels = LABELS[:2] if encoding == 'latin-1' else LABELS
  grid = [(name, [(s, e, labels[LABELS.index(t)] if t in LABELS[:len(labels)] else
                   ('x' if t else '')) for s, e, t in items]) for name, items in GRID]
  text = fx.textgrid_text(grid, xmax=3, short=short)
  bom = {'utf-16-le': codecs.BOM_UTF16_LE, 'utf-16-be': codecs.BOM_UTF16_BE}.get(encoding, b'')
  path = tmp_path / 'talk.TextGrid'
  path.write_bytes(bom + text.encode(encoding))
  assert va_files.read_textgrid(path) == GRID_VA


def test_a_damaged_utf16_textgrid_is_refused_naming_the_file(tmp_path):
  path = tmp_path / 'talk.TextGrid'
  path.write_bytes(codecs.BOM_UTF16_LE + fx.textgrid_text(GRID, xmax=3).encode('utf-16-le')[:-1])
  with pytest.raises(errors.InputError, match=f'^{path}: not valid UTF-16 after its byte-order'):
    va_files.read_textgrid(path)


def test_a_label_that_looks_like_an_item_index_is_speech(tmp_path):
  """"[2]" is a label (e.g. a transcriber's mark), not the long format's `item [2]`."""
  grid = [('A', [(0, 1, '[2]'), (1, 2, '')]), ('B', [(0, 1.5, ''), (1.5, 2, '[ ]')])]
  path = tmp_path / 'marks.TextGrid'
  path.write_text(fx.textgrid_text(grid, xmax=2))
  assert va_files.read_textgrid(path) == [[[0.0, 1.0]], [[1.5, 2.0]]]


def _mfa(speakers: dict[str, list]) -> list:
  """Montreal Forced Aligner's layout: per speaker a words tier and a phones tier, named
  `words`/`phones` for a single unnamed speaker (key ''), else `<speaker> - words`/`- phones`."""
  tiers = []
  for speaker, words in speakers.items():
    prefix = f'{speaker} - ' if speaker else ''
    phones = [(s + k * (e - s) / 2, s + (k + 1) * (e - s) / 2, 'AH' if t else '')
              for s, e, t in words for k in range(2)]
    tiers += [(prefix + 'words', words), (prefix + 'phones', phones)]
  return tiers


WORDS_1 = [(0, 0.3, ''), (0.3, 0.8, 'hello'), (0.8, 1.0, 'there'), (1.0, 2.0, ''),
           (2.0, 2.4, 'bye'), (2.4, 3.0, '')]
WORDS_2 = [(0, 1.1, ''), (1.1, 1.6, 'yes'), (1.6, 3.0, '')]
WORDS_VA_1, WORDS_VA_2 = [[0.3, 1.0], [2.0, 2.4]], [[1.1, 1.6]]


def test_mfa_one_speaker_is_speaker_a_with_b_silent_and_said(tmp_path, caplog):
  """MFA's one-speaker `words` + `phones` tiers were read as speakers A and B (equal VA)."""
  path = tmp_path / 'solo.TextGrid'
  path.write_text(fx.textgrid_text(_mfa({'': WORDS_1}), xmax=3))
  caplog.set_level('WARNING')
  assert va_files.read_textgrid(path) == [WORDS_VA_1, []]
  assert any(str(path) in r.getMessage() and "speaker A = tier 'words', speaker B silent"
             in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize('short', [False, True], ids=['long', 'short'])
def test_mfa_speakers_words_tiers_are_speech_and_phones_ignored(tmp_path, short):
  path = tmp_path / 'dialog.TextGrid'
  path.write_text(fx.textgrid_text(_mfa({'spk1': WORDS_1, 'spk2': WORDS_2}), xmax=3, short=short))
  assert va_files.read_textgrid(path) == [WORDS_VA_1, WORDS_VA_2]


@pytest.mark.parametrize('tiers, message', [
    (_mfa({'ann': WORDS_1, 'bob': WORDS_2, 'cy': WORDS_2}),
     r"among 3 speakers \(MFA words tiers 'ann - words', 'bob - words', 'cy - words'\); "
     r"name the speaker tiers with --va_tiers=A_TIER,B_TIER \(a corpus: data.va_tiers\), e\.g\. "
     r"'--va_tiers=ann - words,bob - words'"),
    ([('A', WORDS_1), ('B', WORDS_2), ('notes', WORDS_2)],
     r"among 3 interval tiers \('A', 'B', 'notes'\); .* e\.g\. --va_tiers=A,B "),
    ([('A', WORDS_1)], r"among 1 interval tier \('A'\); .* e\.g\. --va_tiers=A, \(an empty name is "
                       r'a silent speaker\)$'),
    ([('points', [(1.0, 'x')], 'points')], r'among 0 interval tiers \(none\)'),
])
def test_an_ambiguous_textgrid_is_refused_in_one_line_with_its_tiers_and_the_fix(
    tmp_path, tiers, message):
  path = tmp_path / 'many.TextGrid'
  path.write_text(fx.textgrid_text(tiers, xmax=3))
  with pytest.raises(errors.InputError, match=f'^{path}: cannot tell speakers A and B {message}'
                     ) as refused:
    va_files.read_textgrid(path)
  assert '\n' not in str(refused.value)


@pytest.mark.parametrize('tiers, expected', [
    (('bob - words', 'ann - words'), [WORDS_VA_2, WORDS_VA_1]),
    (('cy - words', ''), [WORDS_VA_2, []]),
    (('cy - words',), [WORDS_VA_2, []]),
    (('', 'ann - words'), [[], WORDS_VA_1]),
    (('ann - phones', 'bob - words'),  # phones have no blank between the words' halves
     [[[0.3, 1.0], [2.0, 2.4]], WORDS_VA_2]),
])
def test_tiers_chosen_by_name(tmp_path, tiers, expected):
  path = tmp_path / 'three.TextGrid'
  path.write_text(fx.textgrid_text(_mfa({'ann': WORDS_1, 'bob': WORDS_2, 'cy': WORDS_2}), xmax=3))
  assert va_files.read_textgrid(path, tiers=tiers) == expected
  assert va_files.read_va_file(path.rename(path.with_suffix('.textgrid')), tiers=tiers) == expected


def test_a_tier_name_that_is_not_there_is_refused_with_the_tiers(tmp_path):
  path = tmp_path / 'two.TextGrid'
  path.write_text(fx.textgrid_text([('A', WORDS_1), ('B', WORDS_2), ('A', WORDS_2)], xmax=3))
  with pytest.raises(errors.InputError, match=f"^{path}: no interval tier named 'C' "
                     r"\(its interval tiers: 'A', 'B', 'A'\); name the speaker tiers"):
    va_files.read_textgrid(path, tiers=('B', 'C'))
  with pytest.raises(errors.InputError, match="2 interval tiers named 'A'"):
    va_files.read_textgrid(path, tiers=('A', 'B'))


@pytest.mark.parametrize('value, expected', [
    ('A,B', ('A', 'B')), ('spk1 - words,spk2 - words', ('spk1 - words', 'spk2 - words')),
    ('words', ('words', '')), ('words,', ('words', '')), (',B', ('', 'B')), ('', None)])
def test_parse_tiers(value, expected):
  assert textgrid.parse_tiers(value) == expected


@pytest.mark.parametrize('value', ['A,B,C', ',', ' ,'[1:]])
def test_parse_tiers_refuses_what_names_no_speaker_tiers(value):
  with pytest.raises(errors.ConfigError, match='va_tiers=.*expected the tier names of speakers'):
    textgrid.parse_tiers(value)


def test_files_that_are_not_text_textgrids_are_refused(tmp_path):
  binary = tmp_path / 'b.TextGrid'
  binary.write_bytes(b'ooBinaryFile\x08TextGrid\x00\x01')
  with pytest.raises(errors.InputError, match=f'^{binary}: a binary Praat file; save the '):
    va_files.read_textgrid(binary)
  fifo = tmp_path / 'pipe.TextGrid'
  os.mkfifo(fifo)  # reading it would block forever
  with pytest.raises(errors.InputError, match=f'^{fifo}: not a regular file'):
    va_files.read_textgrid(fifo)
  with pytest.raises(errors.InputError, match=f'^{tmp_path / "gone.TextGrid"}: no such file'):
    va_files.read_textgrid(tmp_path / 'gone.TextGrid')


_MEMORY_CHILD = textwrap.dedent('''
    import resource, sys
    from convssl_jax.data import va_files
    path, factor = sys.argv[1], float(sys.argv[2])
    size = __import__('os').path.getsize(path)
    with open('/proc/self/status') as f:
      vm = next(int(l.split()[1]) * 1024 for l in f if l.startswith('VmSize:'))
    limit = int(vm + factor * size + 32e6)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    resource.setrlimit(resource.RLIMIT_CPU, (60, 60))
    va = va_files.read_textgrid(path)
    print(len(va[0]), len(va[1]))
''')


def test_memory_stays_a_small_multiple_of_the_file(tmp_path):
  """A 4 MB MFA TextGrid (phones and words of two speakers, every other word a pause: many
  segments per byte) reads in a child process whose address space may grow by 6x the file's size
  (plus 32 MB) past the interpreter's. (The parser that kept every token in a list needed 20-40x.)"""
  n = 20_000
  words = [(i * 0.1, i * 0.1 + 0.1, 'w' if i % 2 else '') for i in range(2 * n)]
  path = tmp_path / 'big.TextGrid'
  path.write_text(fx.textgrid_text(_mfa({'a': words, 'b': words}), xmax=8 * n, short=True))
  size = path.stat().st_size
  assert size > 4e6
  done = processes.run('-c', _MEMORY_CHILD, str(path), '6', timeout=120,
                       OPENBLAS_NUM_THREADS='1')
  assert done.returncode == 0, done.stderr[-2000:]
  assert done.stdout.split() == [str(n), str(n)]
