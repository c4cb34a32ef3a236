"""Switchboard-1 Release 2 (LDC97S62) with the MS-State ms98 word alignments, as a TFDS builder.

manual_dir holds the corpus as shipped (`.wav` files converted from the `.sph` are accepted too,
and preferred where both exist):
  swb1_d1 .. swb1_d4/data/sw0NNNN.sph   8 kHz stereo (u-law, Shorten), channel 0 = speaker A
  swb_ms98_transcriptions/NN/NNNN/swNNNN{A,B}-ms98-a-word.text   `utt_id start end word` lines
Only the word files are read: the `-trans.text` utterances share their ids, and the reference
takes utterance times from the words anyway.

Each speaker's words are cleaned (`clean_word`, the reference's swb_regexp), noise and silence
tokens dropped, and grouped by utterance; VA segments merge words less than 0.05 s apart, never
across utterances (`va.words_to_va`). F0 is tracked at 8 kHz before the audio is resampled.

Splits: the reference's original contiguous split by session id (train 2001-4139, validation
4140-4633, test 4637-4940; its session lists are not shipped, every session in a range belongs
to it). Config `damsl`: VoiceActivityProjection's split (1283 / 578 / 577 sessions, the lists in
damsl/). Configs `fold_0` .. `fold_10`: 11 contiguous folds over the sorted train+validation
sessions without the ones holding asides (sklearn's KFold without shuffling, as the reference's
paper-A folds), fold k's chunk the validation split, test unchanged.
"""

import dataclasses
import functools
import pathlib
import re

import numpy as np
import tensorflow_datasets as tfds

from convssl_jax.data import f0 as f0_lib
from convssl_jax.data import va as va_lib
from data_builders import conversation

RATE = conversation.TELEPHONE_RATE
SPLIT_RANGES = {'train': (2001, 4139), 'validation': (4140, 4633), 'test': (4637, 4940)}
# VoiceActivityProjection's split of the same 2438 sessions (its dataset_swb/splits, the "DAMSL"
# split of datasets_turntaking), one session id per line.
DAMSL_DIR = pathlib.Path(__file__).parent / 'damsl'
N_FOLDS = 11
# The sessions the reference's k-folds leave out for their `<b_aside>` asides: datasets_turntaking's
# switchboard/kfold_dialogs.py INCLUDES_ASIDES (95 in train + validation, 3 in test). Without them
# the folds hold 2205 sessions, 2004 / 201 (folds 0-4) and 2005 / 200 (folds 5-10), the members of
# conv_ssl's conf/swb_kfolds lists.
ASIDE_SESSIONS = frozenset((
    '2022', '2054', '2057', '2067', '2078', '2149', '2164', '2203', '2220', '2260', '2264',
    '2277', '2299', '2334', '2347', '2381', '2386', '2401', '2420', '2432', '2447', '2473',
    '2480', '2491', '2517', '2550', '2566', '2569', '2584', '2585', '2640', '2662', '2689',
    '2701', '2709', '2744', '2819', '2856', '2867', '2879', '2892', '2894', '2913', '2924',
    '2953', '2960', '2963', '2984', '2988', '2999', '3028', '3045', '3046', '3051', '3063',
    '3068', '3081', '3109', '3122', '3165', '3220', '3230', '3245', '3265', '3285', '3324',
    '3338', '3350', '3357', '3364', '3373', '3376', '3396', '3400', '3443', '3490', '3539',
    '3549', '3629', '3634', '3657', '3712', '3835', '3968', '3978', '3995', '3997', '4003',
    '4004', '4031', '4070', '4086', '4219', '4265', '4288', '4702', '4812', '4905',
))
MIN_WORD_GAP = 0.05  # s: closer words share a VA segment
TRANSCRIPTS = 'swb_ms98_transcriptions'
SPEAKERS = ('A', 'B')  # channel 0, channel 1

_CLEANING = (  # (pattern, replacement), applied in order
    (r'\[(silence|noise|vocalized-noise|laughter)\]', ''),
    (r'\[laughter-([^\]]*)\]', r'\1'),
    (r'\[[^\]/]*/([^\]]*)\]', r'\1'),
    (r'-?\[([^\]]*)\]', r'\1'),
    (r'(\S)-(?=\s|$)', r'\1'),
    (r'_\d+', ''),
    (r'\{([^}]*)\}', r'\1'),
    (r'\s+', ' '),
)


@dataclasses.dataclass(kw_only=True)
class SwitchboardConfig(tfds.core.BuilderConfig):
  """fold: None for the original split, else the k-fold whose chunk is the validation split;
  damsl: VoiceActivityProjection's split instead."""
  fold: int | None = None
  damsl: bool = False


def clean_word(text: str) -> str:
  """The reference's swb_regexp, in order:

  noise and silence `[silence]`, `[noise]`, `[vocalized-noise]`, `[laughter]` -> removed;
  speech while laughing `[laughter-yes]` -> `yes`; mispronunciation `[splace/space]` -> `space`;
  partial words `w[ent]-` -> `went-`, `-[th]at` -> `that`; restarts `i-` -> `i`; pronunciation
  variants `okay_1` -> `okay`; coinages `{yeah}` -> `yeah`; whitespace collapsed and stripped.
  """
  for pattern, replacement in _CLEANING:
    text = re.sub(pattern, replacement, text)
  return text.strip()


def _word_line(path: pathlib.Path, number: int, line: str) -> tuple[str, float, float, str]:
  """One `utt_id start end word` line, checked; ValueError naming the file and line."""
  parts = line.split()
  try:
    utt, start, end, word = parts[0], float(parts[1]), float(parts[2]), parts[3]
  except (IndexError, ValueError):
    start = end = -1.0
  if len(parts) != 4 or not 0 <= start <= end:
    raise ValueError(f'{path}:{number}: expected "utt_id start end word" with 0 <= start <= '
                     f'end, got {line!r}')
  return utt, start, end, word


def read_utterances(path: pathlib.Path) -> list[list[tuple[float, float, str]]]:
  """A speaker's word file -> utterances in file order, each its cleaned (start, end, word)s.

  Words that clean to nothing (noise, silence, laughter) are dropped, and so are utterances left
  without words.
  """
  if not path.is_file():
    raise ValueError(f'{path}: missing ms98 word alignment')
  utterances = {}
  for number, line in enumerate(path.read_text().splitlines(), 1):
    if not line.strip():
      continue
    utt, start, end, word = _word_line(path, number, line)
    if word := clean_word(word):
      utterances.setdefault(utt, []).append((start, end, word))
  return list(utterances.values())


def load_session(session: str, audio_path: pathlib.Path, word_dir: pathlib.Path,
                 f0_tracker: str = f0_lib.DEFAULT_TRACKER) -> dict:
  """One conversation -> a stored example; ValueError naming the file for any bad input."""
  channels = [read_utterances(word_dir / f'sw{session}{speaker}-ms98-a-word.text')
              for speaker in SPEAKERS]
  va = va_lib.words_to_va([[[(s, e) for s, e, _ in utt] for utt in utterances]
                           for utterances in channels], min_gap=MIN_WORD_GAP)
  words = sorted(((c, s, e, w) for c, utterances in enumerate(channels)
                  for utt in utterances for s, e, w in utt), key=lambda w: (w[1], w[0]))
  audio = conversation.read_telephone_audio(audio_path)
  return conversation.conversation(
      session=session, dataset='switchboard', audio=audio, sample_rate=RATE, va=va,
      source=f'{audio_path} with {word_dir}', f0=f0_lib.track_f0(audio, RATE, f0_tracker),
      words=words)


def find_audio(root: pathlib.Path) -> dict[str, pathlib.Path]:
  """Session id ('2001') -> its audio file under swb1_d*/data/, sorted; .wav over .sph."""
  found = {}
  for suffix in ('.sph', '.wav'):
    for path in sorted(root.glob(f'swb1_d*/data/sw0[0-9][0-9][0-9][0-9]{suffix}')):
      found[path.stem[3:]] = path
  return dict(sorted(found.items()))


def original_split(sessions) -> dict[str, list[str]]:
  """The reference's contiguous split of (sorted) session ids."""
  return {split: [s for s in sessions if low <= int(s) <= high]
          for split, (low, high) in SPLIT_RANGES.items()}


def damsl_split(sessions) -> dict[str, list[str]]:
  """VoiceActivityProjection's split (DAMSL_DIR's lists) of the sessions present."""
  present = set(sessions)
  return {split: [s for s in (DAMSL_DIR / f'{split}.txt').read_text().split() if s in present]
          for split in ('train', 'validation', 'test')}


def kfold_split(sessions, fold: int) -> dict[str, list[str]]:
  """Fold `fold` of N_FOLDS over the original train+validation sessions but `ASIDE_SESSIONS`,
  sorted, in contiguous chunks (the first len % N_FOLDS one longer, as sklearn's KFold):
  validation = the fold's chunk, train = the rest, test unchanged."""
  split = original_split(sessions)
  pool = sorted(s for s in split['train'] + split['validation'] if s not in ASIDE_SESSIONS)
  sizes = np.full(N_FOLDS, len(pool) // N_FOLDS)
  sizes[:len(pool) % N_FOLDS] += 1
  stop = int(np.cumsum(sizes)[fold])
  start = stop - int(sizes[fold])
  return {'train': pool[:start] + pool[stop:], 'validation': pool[start:stop],
          'test': split['test']}


class Switchboard(conversation.ConversationBuilder):
  """Switchboard-1 Release 2 with ms98 word alignments (see data_builders/README.md)."""

  VERSION = tfds.core.Version('1.3.0')
  RELEASE_NOTES = {
      '1.3.0': ('each conversation records whether it is a monologue (feature and metadata '
                '`monologue`; here always a dialog).'),
      '1.2.0': conversation.F0_RELEASE_NOTE,
      '1.1.0': 'fold_k leave out the aside sessions; overlapping utterances are united; damsl.',
      '1.0.0': 'Initial release.',
  }
  BUILDER_CONFIGS = [
      SwitchboardConfig(name='original', description='The original split.'),
      SwitchboardConfig(name='damsl', damsl=True,
                        description="VoiceActivityProjection's DAMSL split.")] + [
      SwitchboardConfig(name=f'fold_{k}', fold=k, description=f'K-fold {k} of {N_FOLDS}.')
      for k in range(N_FOLDS)]
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
  Switchboard-1 Release 2 (LDC97S62) audio discs and the MS-State ms98 word alignments
  (switchboard_word_alignments.tar.gz from ISIP), extracted side by side:
    swb1_d1/data/sw02001.sph ... swb1_d4/data/sw04940.sph   (.wav conversions also accepted)
    {TRANSCRIPTS}/20/2001/sw2001A-ms98-a-word.text ...
  """

  def _split_generators(self, dl_manager):
    root = pathlib.Path(dl_manager.manual_dir)
    audio = find_audio(root)
    if not audio:
      raise ValueError(f'{root}: no swb1_d*/data/sw0NNNN.sph (or .wav) audio files')
    if not (root / TRANSCRIPTS).is_dir():
      raise ValueError(f'{root}: no {TRANSCRIPTS} folder (the ms98 word alignments)')
    config = self.builder_config
    splits = (damsl_split(audio) if config.damsl else
              original_split(audio) if config.fold is None else kfold_split(audio, config.fold))
    return self._splits(splits, audio, lambda s: functools.partial(
        load_session, s, audio[s], root / TRANSCRIPTS / s[:2] / s, self.f0_tracker))
