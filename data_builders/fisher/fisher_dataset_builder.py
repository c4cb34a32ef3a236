"""Fisher English Training Speech Part 1 (LDC2004S13 audio, LDC2004T19 transcripts), as a TFDS
builder.

manual_dir holds the corpus as shipped (`.wav` files converted from the `.sph` are accepted too,
and preferred where both exist):
  fisher_eng_tr_sp_d1 .. d7/audio/NNN/fe_03_NNNNN.sph   8 kHz stereo, channel 0 = speaker A
  fe_03_p1_tran/data/trans/NNN/fe_03_NNNNN.txt          `start end A: text` lines
NNN is the first 3 digits of the 5-digit session id. LDC's discs hold sessions 1-799 (d1), then
900 each (d = (n - 800) // 900 + 2); audio files are found by globbing, so the disc never matters.

Transcripts are cleaned (`clean_text`, the reference's fisher_regexp) and utterances left empty
dropped. Without word alignments the reference's VA is one segment per utterance, and so is this
one: no gap merging. Overlapping utterances of one speaker are united, which yields the same VA
frames as the reference's one-hot of its (overlapping) list. The utterances are stored as the
`words` entries (channel, start, end, text). F0 is tracked at 8 kHz before the audio is resampled.

Splits by session id, as the reference: train 1-5099, validation 5100-5499, test 5500-5850.
"""

import functools
import pathlib
import re

import tensorflow_datasets as tfds

from convssl_jax.data import f0 as f0_lib
from convssl_jax.data import va as va_lib
from data_builders import conversation

RATE = conversation.TELEPHONE_RATE
SPLIT_RANGES = {'train': (1, 5099), 'validation': (5100, 5499), 'test': (5500, 5850)}
TRANSCRIPTS = pathlib.Path('fe_03_p1_tran', 'data', 'trans')
SPEAKER_CHANNEL = {'A': 0, 'B': 1}

_LINE = re.compile(r'(\S+)\s+(\S+)\s+([AB]):(.*)')
_CLEANING = (  # (pattern, replacement), applied in order
    (r'\[(noise|laughter|lipsmack|sigh|mn)\]', ''),
    (r'\(\(|\)\)', ' '),
    (r'\._', ''),
    (r'\.', ''),
    (r'(\S)-(?=\s|$)', r'\1'),
    (r'\s+', ' '),
)


def clean_text(text: str) -> str:
  """The reference's fisher_regexp, in order:

  annotations `[noise]`, `[laughter]`, `[lipsmack]`, `[sigh]`, `[mn]` -> removed; uncertain
  transcriptions `((oh yeah))` -> `oh yeah` (an empty `(( ))` vanishes); acronyms `t._v.` -> `tv`;
  other periods removed; restarts `lot-` -> `lot`; whitespace collapsed and stripped.
  """
  for pattern, replacement in _CLEANING:
    text = re.sub(pattern, replacement, text)
  return text.strip()


def _utterance(path: pathlib.Path, number: int, line: str) -> tuple[int, float, float, str]:
  """One `start end A: text` line, checked; ValueError naming the file and line."""
  match = _LINE.fullmatch(line.strip())
  try:
    start, end = float(match[1]), float(match[2])
  except (TypeError, ValueError):
    start = end = -1.0
  if not 0 <= start <= end:
    raise ValueError(f'{path}:{number}: expected "start end A|B: text" with 0 <= start <= end, '
                     f'got {line!r}')
  return SPEAKER_CHANNEL[match[3]], start, end, clean_text(match[4])


def read_transcript(path: pathlib.Path) -> list[tuple[int, float, float, str]]:
  """A transcript -> its (channel, start, end, cleaned text) utterances, in file order.

  Empty and `#` comment lines are skipped; utterances that clean to nothing are dropped.
  """
  if not path.is_file():
    raise ValueError(f'{path}: missing transcript')
  utterances = []
  for number, line in enumerate(path.read_text().splitlines(), 1):
    if line.strip() and not line.lstrip().startswith('#'):
      utterance = _utterance(path, number, line)
      if utterance[3]:
        utterances.append(utterance)
  return utterances


def utterance_va(utterances) -> list[list[list[float]]]:
  """Each speaker's utterance spans, sorted; spans of one speaker that overlap are united."""
  return [va_lib.unite_segments([(start, end) for c, start, end, _ in utterances if c == channel])
          for channel in (0, 1)]


def load_session(session: str, audio_path: pathlib.Path, transcript: pathlib.Path,
                 f0_tracker: str = f0_lib.DEFAULT_TRACKER) -> dict:
  """One conversation -> a stored example; ValueError naming the file for any bad input."""
  utterances = read_transcript(transcript)
  audio = conversation.read_telephone_audio(audio_path)
  return conversation.conversation(
      session=session, dataset='fisher', audio=audio, sample_rate=RATE,
      va=utterance_va(utterances), source=f'{audio_path} with {transcript}',
      f0=f0_lib.track_f0(audio, RATE, f0_tracker), words=utterances)


def find_audio(root: pathlib.Path) -> dict[str, pathlib.Path]:
  """Session id ('00001') -> its audio file under fisher_eng_tr_sp_d*/audio/, sorted; .wav over
  .sph."""
  found = {}
  for suffix in ('.sph', '.wav'):
    pattern = f'fisher_eng_tr_sp_d*/audio/*/fe_03_{"[0-9]" * 5}{suffix}'
    for path in sorted(root.glob(pattern)):
      found[path.stem[len('fe_03_'):]] = path
  return dict(sorted(found.items()))


def transcript_path(root: pathlib.Path, session: str) -> pathlib.Path:
  return root / TRANSCRIPTS / session[:3] / f'fe_03_{session}.txt'


class Fisher(conversation.ConversationBuilder):
  """Fisher English Part 1 (see data_builders/README.md)."""

  VERSION = tfds.core.Version('1.2.0')
  RELEASE_NOTES = {
      '1.2.0': ('each conversation records whether it is a monologue (feature and metadata '
                '`monologue`; here always a dialog).'),
      '1.1.0': conversation.F0_RELEASE_NOTE,
      '1.0.0': 'Initial release.',
  }
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
  Fisher English Training Speech Part 1: the audio (LDC2004S13, the two zip parts concatenated
  and unzipped) and the transcripts (LDC2004T19, fe_03_p1_tran_LDC2004T19.tgz), side by side:
    fisher_eng_tr_sp_d1/audio/000/fe_03_00001.sph ... fisher_eng_tr_sp_d7/...   (.wav accepted)
    {TRANSCRIPTS}/000/fe_03_00001.txt ...
  """

  def _split_generators(self, dl_manager):
    root = pathlib.Path(dl_manager.manual_dir)
    audio = find_audio(root)
    if not audio:
      raise ValueError(f'{root}: no fisher_eng_tr_sp_d*/audio/NNN/fe_03_NNNNN.sph (or .wav) '
                       'audio files')
    if not (root / TRANSCRIPTS).is_dir():
      raise ValueError(f'{root}: no {TRANSCRIPTS} folder (the LDC2004T19 transcripts)')
    splits = {split: [s for s in audio if low <= int(s) <= high]
              for split, (low, high) in SPLIT_RANGES.items()}
    return self._splits(splits, audio, lambda s: functools.partial(
        load_session, s, audio[s], transcript_path(root, s), self.f0_tracker))
