"""Tiny corpora in their real on-disk layouts, written into a test's tmp_path, and a build helper.

Each writer returns {session: Written} with the audio it stored (int16 at the file's rate), so
tests can compare the built dataset against the known signal.
"""

import dataclasses
import json
import pathlib

import numpy as np
import soundfile as sf

from tests.fixtures import sphere_write
from convssl_jax.data import va as va_lib
from data_builders import conversation

SWB_RATE = 8000


@dataclasses.dataclass(frozen=True)
class Written:
  """One written conversation: its audio file and samples [S, C] int16 at `sample_rate`."""
  path: pathlib.Path
  samples: np.ndarray
  sample_rate: int


def tones(seconds: float, sample_rate: int, freqs=(220.0, 330.0), amplitude: float = 0.3,
          seed: int = 0) -> np.ndarray:
  """[S, len(freqs)] int16: one sine per channel plus a little noise."""
  t = np.arange(int(seconds * sample_rate)) / sample_rate
  x = amplitude * np.sin(2 * np.pi * np.outer(t, freqs))
  x += 0.01 * np.random.default_rng(seed).standard_normal(x.shape)
  return np.round(x * 32767).astype(np.int16)


def assert_va(stored: np.ndarray, va_list):
  """Stored [n, 3] VA segments equal a VA list (TFDS keeps float features at float32)."""
  np.testing.assert_allclose(stored, va_lib.va_segments(va_list, source='expected'),
                             atol=1e-6)


def prepare(builder_cls, data_dir, manual_dir, **kwargs):
  """Builds `builder_cls` from `manual_dir` into `data_dir` (offline), returns the builder."""
  builder = builder_cls(data_dir=str(data_dir), num_workers=1, **kwargs)
  builder.download_and_prepare(download_config=dataclasses.replace(
      conversation.download_config(), manual_dir=str(manual_dir)))
  return builder


def examples(builder, split: str) -> dict[str, dict]:
  """A built split's examples by session."""
  source = builder.as_data_source(split)
  return {ex['session'].decode(): ex for ex in (source[i] for i in range(len(source)))}


def _write_json(path: pathlib.Path, value):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(value))


def textgrid_text(tiers, *, xmax: float, short: bool = False) -> str:
  """A Praat TextGrid in the long (Praat's default) or short text format. `tiers`: (name,
  [(start, end, label), ...]) interval tiers, or (name, [(time, mark), ...], 'points') point
  tiers; blank intervals are written as given (Praat's own files fill every gap)."""
  def q(text):
    return '"' + str(text).replace('"', '""') + '"'

  if short:
    lines = ['File type = "ooTextFile"', 'Object class = "TextGrid"', '', '0', f'{xmax:g}',
             '<exists>', str(len(tiers))]
    for name, items, *kind in tiers:
      lines += [q('TextTier' if kind else 'IntervalTier'), q(name), '0', f'{xmax:g}',
                str(len(items))]
      lines += [q(v) if isinstance(v, str) else f'{v:g}' for item in items for v in item]
    return '\n'.join(lines) + '\n'
  lines = ['File type = "ooTextFile"', 'Object class = "TextGrid"', '', 'xmin = 0',
           f'xmax = {xmax:g}', 'tiers? <exists>', f'size = {len(tiers)}', 'item []:']
  for t, (name, items, *kind) in enumerate(tiers, 1):
    what, fields = (('points', ('number', 'mark')) if kind else
                    ('intervals', ('xmin', 'xmax', 'text')))
    lines += [f'    item [{t}]:', f'        class = {q("TextTier" if kind else "IntervalTier")}',
              f'        name = {q(name)}', '        xmin = 0', f'        xmax = {xmax:g}',
              f'        {what}: size = {len(items)}']
    for i, item in enumerate(items, 1):
      lines.append(f'        {what} [{i}]:')
      lines += [f'            {f} = {q(v) if isinstance(v, str) else f"{v:g}"}'
                for f, v in zip(fields, item, strict=True)]
  return '\n'.join(lines) + '\n'


# ------------------------------------------------------------------------------------------------
# Dialog folder: stereo wav at 44.1 kHz, a mono flac in a subfolder, two short 16 kHz wavs.

DIALOG_VA = {
    'stereo': [[[0.1, 0.8], [1.2, 1.9]], [[0.7, 1.3]]],
    'mono': [[[0.2, 1.4]], []],
    'extra_0': [[[0.0, 0.5]], [[0.5, 1.0]]],
    'extra_1': [[[0.1, 0.4]], [[0.6, 0.9]]],
}
DIALOG_WORDS = {'stereo': [[0, 0.1, 0.8, 'hello'], [1, 0.7, 1.3, 'hi'], [0, 1.2, 1.9, 'bye']]}


def write_dialog_folder(root: pathlib.Path) -> dict[str, Written]:
  """Four sessions with VA lists (and words for 'stereo'), no split lists."""
  files = {
      'stereo': (root / 'stereo.wav', tones(2.0, 44100)),
      'mono': (root / 'sub' / 'mono.flac', tones(1.5, 22050, freqs=(180.0,))),
      'extra_0': (root / 'extra_0.wav', tones(1.0, 16000, seed=1)),
      'extra_1': (root / 'extra_1.wav', tones(1.0, 16000, seed=2)),
  }
  written = {}
  for session, (path, samples) in files.items():
    path.parent.mkdir(parents=True, exist_ok=True)
    rate = {'stereo': 44100, 'mono': 22050}.get(session, 16000)
    sf.write(path, samples, rate)
    _write_json(path.with_suffix('.json'), DIALOG_VA[session])
    if session in DIALOG_WORDS:
      _write_json(path.with_suffix('.words.json'), DIALOG_WORDS[session])
    written[session] = Written(path, samples, rate)
  return written


# ------------------------------------------------------------------------------------------------
# Switchboard-1 Release 2 with the MS-State ms98 word alignments.

# (utterance number, start, end, word) per speaker; one template serves every session.
SWB_WORDS = {
    'A': [
        (1, 0.0, 0.45, '[silence]'),
        (2, 0.45, 0.7, 'okay_1'), (2, 0.7, 0.9, 'i-'), (2, 0.92, 1.2, 'w[ent]-'),
        (2, 1.2, 1.3, '[noise]'), (2, 1.3, 1.5, '[laughter-yes]'),
        (3, 1.52, 1.8, '[splace/space]'), (3, 1.82, 2.1, '-[th]at'),
        (3, 2.1, 2.3, '[vocalized-noise]'),
        (4, 2.3, 2.5, '[silence]'),
    ],
    'B': [
        (1, 0.0, 0.3, '[silence]'),
        (2, 0.3, 0.5, 'uh-huh'), (2, 0.5, 0.52, '[laughter]'),
        (3, 0.52, 1.0, '[noise]'),
        (4, 1.0, 1.3, '{yeah}'), (4, 1.3, 1.6, 'right_1'),
        (5, 2.0, 2.1, '[noise]'), (5, 2.1, 2.4, 'bye'),
        (6, 2.4, 2.5, '[silence]'),
    ],
}
# Session -> (disc, audio coding): 'wav' is a pre-converted file. Ids span the original split:
# train 2001-4139, validation 4140-4633, test 4637-4940.
SWB_SESSIONS = {
    '2005': ('swb1_d1', 'ulaw,embedded-shorten-v2.00'),
    '3010': ('swb1_d2', 'pcm'),
    '4150': ('swb1_d3', 'wav'),
    '4700': ('swb1_d4', 'ulaw'),
}


def swb_transcript_dir(root: pathlib.Path, session: str) -> pathlib.Path:
  return root / 'swb_ms98_transcriptions' / session[:2] / session


def swb_word_lines(session: str, speaker: str) -> list[str]:
  return [f'sw{session}{speaker}-ms98-a-{utt:04d} {start:.6f} {end:.6f} {word}'
          for utt, start, end, word in SWB_WORDS[speaker]]


def _swb_trans_lines(session: str, speaker: str) -> list[str]:
  """The utterance-level `-trans.text` lines: utterance span and its words."""
  utterances = {}
  for utt, start, end, word in SWB_WORDS[speaker]:
    utterances.setdefault(utt, []).append((start, end, word))
  return [f'sw{session}{speaker}-ms98-a-{utt:04d} {words[0][0]:.6f} {words[-1][1]:.6f} '
          + ' '.join(w for _, _, w in words) for utt, words in utterances.items()]


def write_swb_transcripts(root: pathlib.Path, session: str):
  folder = swb_transcript_dir(root, session)
  folder.mkdir(parents=True, exist_ok=True)
  for speaker in 'AB':
    (folder / f'sw{session}{speaker}-ms98-a-word.text').write_text(
        '\n'.join(swb_word_lines(session, speaker)) + '\n')
    (folder / f'sw{session}{speaker}-ms98-a-trans.text').write_text(
        '\n'.join(_swb_trans_lines(session, speaker)) + '\n')


def write_telephone_audio(path: pathlib.Path, samples: np.ndarray, coding: str) -> pathlib.Path:
  """8 kHz audio as SPHERE with `coding`, or as a .wav file for coding 'wav'; returns its path."""
  path.parent.mkdir(parents=True, exist_ok=True)
  if coding == 'wav':
    path = path.with_suffix('.wav')
    sf.write(path, samples, SWB_RATE, subtype='PCM_16')
  else:
    sphere_write.write_sphere(path, samples, SWB_RATE, coding)
  return path


def write_switchboard(root: pathlib.Path, sessions=SWB_SESSIONS, seconds: float = 2.5,
                      samples: np.ndarray | None = None) -> dict[str, Written]:
  """Audio discs and ms98 transcripts of `sessions`; audio = `samples` or tones of `seconds`."""
  written = {}
  for i, (session, (disc, coding)) in enumerate(sessions.items()):
    audio = tones(seconds, SWB_RATE, seed=i) if samples is None else samples
    path = write_telephone_audio(root / disc / 'data' / f'sw0{session}.sph', audio, coding)
    write_swb_transcripts(root, session)
    written[session] = Written(path, audio, SWB_RATE)
  return written


# ------------------------------------------------------------------------------------------------
# Fisher English Part 1 (LDC2004S13 audio, LDC2004T19 transcripts).

FISHER_LINES = [
    '0.30 1.10 A: hi [noise] my name is ((mary))',
    '',
    '0.90 1.60 B: hello (( )) [laughter]',
    '1.20 2.00 A: i watch t._v. a lot-',
    '1.70 1.90 B: [lipsmack] [sigh]',
    '2.00 2.40 B: ((oh yeah)) [mn] really.',
]
# Session -> (disc by the LDC rule: d1 < 800, else (n - 800) // 900 + 2; audio coding).
FISHER_SESSIONS = {
    '00001': ('fisher_eng_tr_sp_d1', 'ulaw,embedded-shorten-v2.00'),
    '05100': ('fisher_eng_tr_sp_d6', 'pcm'),
    '05500': ('fisher_eng_tr_sp_d7', 'wav'),
}


def fisher_transcript_path(root: pathlib.Path, session: str) -> pathlib.Path:
  return root / 'fe_03_p1_tran' / 'data' / 'trans' / session[:3] / f'fe_03_{session}.txt'


def write_fisher_transcript(root: pathlib.Path, session: str, lines=FISHER_LINES):
  path = fisher_transcript_path(root, session)
  path.parent.mkdir(parents=True, exist_ok=True)
  header = [f'# fe_03_{session}.sph', '# Transcribed at the LDC', '']
  path.write_text('\n'.join(header + list(lines)) + '\n')


def write_fisher(root: pathlib.Path, sessions=FISHER_SESSIONS,
                 seconds: float = 2.5) -> dict[str, Written]:
  """Audio discs and transcripts of `sessions`."""
  written = {}
  for i, (session, (disc, coding)) in enumerate(sessions.items()):
    audio = tones(seconds, SWB_RATE, seed=i)
    sph = root / disc / 'audio' / session[:3] / f'fe_03_{session}.sph'
    written[session] = Written(write_telephone_audio(sph, audio, coding), audio, SWB_RATE)
    write_fisher_transcript(root, session)
  return written
