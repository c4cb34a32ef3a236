"""A folder of your own two-speaker recordings, each with its VA list, as a TFDS builder.

The folder is searched recursively for audio files (any format soundfile reads, any sample rate).
A stereo file holds one speaker per channel (channel 0 = speaker A); a mono file gets a silent
partner channel, as the reference does for monologues. Beside each `<stem>.<ext>` lies its VA list
`<stem>.json` (`[[[start, end], ...], [[start, end], ...]]`, seconds) and optionally its words
`<stem>.words.json` (`[[channel, start, end, word], ...]`). The session is the file stem.

Splits: the session lists `train.txt`, `validation.txt`, `test.txt` at the folder's top (one stem
a line) where any exists, else a seeded random split by the config's ratios. Audio is read at
16 kHz, so F0 (pYIN) is tracked at 16 kHz whatever the file's rate.
"""

import dataclasses
import functools
import json
import math
import pathlib

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from convssl_jax.data import audio as audio_lib
from convssl_jax.data import f0 as f0_lib
from data_builders import conversation

SPLITS = ('train', 'validation', 'test')
AUDIO_SUFFIXES = ('.aif', '.aiff', '.au', '.caf', '.flac', '.mp3', '.ogg', '.opus', '.rf64',
                  '.w64', '.wav')


@dataclasses.dataclass(kw_only=True)
class DialogFolderConfig(tfds.core.BuilderConfig):
  """The random split used when the folder has no session lists: (train, validation, test)."""
  ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)
  seed: int = 0

  @classmethod
  def with_ratios(cls, ratios: tuple[float, float, float], seed: int = 0) -> 'DialogFolderConfig':
    name = 'r' + '-'.join(f'{r:g}' for r in ratios) + f'_s{seed}'
    return cls(name=name, ratios=tuple(ratios), seed=seed)


def read_json(path: pathlib.Path):
  """A JSON file's content; ValueError naming the file when it does not parse."""
  try:
    return json.loads(path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as err:
    raise ValueError(f'{path}: not valid JSON ({err})') from err


def _is_word(entry) -> bool:
  times = entry[1:3] if isinstance(entry, list) and len(entry) == 4 else ()
  return (len(times) == 2 and entry[0] in (0, 1) and not isinstance(entry[0], bool)
          and all(isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t)
                  for t in times)
          and 0 <= times[0] <= times[1] and isinstance(entry[3], str))


def read_words(path: pathlib.Path) -> list:
  """`<stem>.words.json` -> [[channel, start, end, word], ...] (checked); [] when there is none."""
  if not path.exists():
    return []
  entries = read_json(path)
  if not isinstance(entries, list):
    raise ValueError(f'{path}: expected a list of [channel, start, end, word]')
  for i, entry in enumerate(entries):
    if not _is_word(entry):
      raise ValueError(f'{path}: entry {i} {entry!r}: expected [channel (0 or 1), start, end, '
                       'word] with 0 <= start <= end')
  return entries


def load_session(session: str, audio_path: pathlib.Path,
                 f0_tracker: str = f0_lib.DEFAULT_TRACKER) -> dict:
  """One recording with its VA list (and words) -> a stored example; ValueError if any is bad."""
  va_path = audio_path.with_suffix('.json')
  if not va_path.is_file():
    raise ValueError(f'{audio_path}: its VA list {va_path.name} is missing')
  va = read_json(va_path)
  words = read_words(audio_path.with_suffix('.words.json'))
  audio = audio_lib.read_audio(audio_path, sample_rate=conversation.SAMPLE_RATE)
  if audio.shape[1] > 2:
    raise ValueError(f'{audio_path}: {audio.shape[1]} channels; expected mono or stereo')
  return conversation.conversation(
      session=session, dataset='dialog_folder', audio=audio, sample_rate=conversation.SAMPLE_RATE,
      va=va, source=str(va_path), words=words, f0_tracker=f0_tracker)


def find_audio(root: pathlib.Path) -> dict[str, pathlib.Path]:
  """Session (file stem) -> path of every audio file under `root`; stems must be unique."""
  found = {}
  for path in sorted(root.rglob('*')):
    if path.suffix.lower() not in AUDIO_SUFFIXES or path.is_dir():
      continue
    if path.stem in found:
      raise ValueError(f'{path}: session {path.stem!r} is also {found[path.stem]}; audio file '
                       'names (without extension) must be unique')
    found[path.stem] = path
  return found


def read_split_lists(root: pathlib.Path, sessions) -> dict[str, list[str]] | None:
  """Each split's sessions from `<split>.txt` at the folder's top; None when there are no lists.

  A listed session without audio, or one listed twice, is an error naming the list and line;
  sessions that no list names are left out (and logged).
  """
  paths = {split: root / f'{split}.txt' for split in SPLITS}
  if not any(path.exists() for path in paths.values()):
    return None
  splits, listed = {}, {}
  for split, path in paths.items():
    lines = path.read_text().splitlines() if path.exists() else []
    splits[split] = []
    for number, line in enumerate(lines, 1):
      session = line.strip()
      if not session:
        continue
      if session not in sessions:
        raise ValueError(f'{path}:{number}: session {session!r} has no audio file under {root}')
      if session in listed:
        raise ValueError(f'{path}:{number}: session {session!r} is already listed in '
                         f'{listed[session]}')
      listed[session] = f'{path.name}:{number}'
      splits[split].append(session)
  unlisted = sorted(set(sessions) - set(listed))
  if unlisted:
    logging.warning('%d sessions are in no split list, left out: %s', len(unlisted), unlisted)
  return splits


def ratio_split(sessions: list[str], ratios, seed: int) -> dict[str, list[str]]:
  """A seeded random split of `sessions` by (train, validation, test) ratios, each split sorted."""
  ratios = np.asarray(ratios, np.float64)
  if ratios.shape != (3,) or (ratios < 0).any() or not np.isclose(ratios.sum(), 1.0):
    raise ValueError(f'ratios must be 3 non-negative numbers summing to 1, got {ratios.tolist()}')
  order = np.random.default_rng(seed).permutation(len(sessions))
  bounds = np.round(np.cumsum(ratios)[:2] * len(sessions)).astype(int)
  chunks = np.split(order, bounds)
  return {split: sorted(sessions[i] for i in chunk)
          for split, chunk in zip(SPLITS, chunks, strict=True)}


class DialogFolder(conversation.ConversationBuilder):
  """Your own two-speaker recordings with their VA lists (see data_builders/README.md)."""

  VERSION = tfds.core.Version('1.1.0')
  RELEASE_NOTES = {
      '1.1.0': conversation.F0_RELEASE_NOTE,
      '1.0.0': 'Initial release.',
  }
  BUILDER_CONFIGS = [DialogFolderConfig(name='default')]
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  A folder (searched recursively) of audio files, one conversation each (stereo: channel 0 =
  speaker A, channel 1 = speaker B; mono: a single speaker), each with its VA list beside it:
    <stem>.wav|.flac|...   any sample rate
    <stem>.json            [[[start, end], ...], [[start, end], ...]] seconds, per channel
    <stem>.words.json      optional: [[channel, start, end, word], ...]
  Optional split lists at the top: train.txt, validation.txt, test.txt (one stem a line).
  """

  def _split_generators(self, dl_manager):
    root = pathlib.Path(dl_manager.manual_dir)
    audio = find_audio(root)
    if not audio:
      raise ValueError(f'{root}: no audio files ({" ".join(AUDIO_SUFFIXES)}) found')
    config = self.builder_config
    splits = read_split_lists(root, audio) or ratio_split(sorted(audio), config.ratios,
                                                          config.seed)
    for split in [s for s, sessions in splits.items() if not sessions]:
      logging.warning('split %s has no sessions; it is left out', split)
    return {split: self._generate_examples(split, [
        (s, functools.partial(load_session, s, audio[s], self.f0_tracker)) for s in sessions])
            for split, sessions in splits.items() if sessions}
