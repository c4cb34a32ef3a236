"""A folder of your own two-speaker recordings, each with its voice activity, as a TFDS builder.

The folder is searched recursively for audio files (any format soundfile reads, any sample rate).
A stereo file holds one speaker per channel (channel 0 = speaker A); a mono file gets a silent
partner channel, as the reference does for monologues. Beside each `<stem>.<ext>` lies its VA:
`<stem>.json` (a VA list `[[[start, end], ...], [[start, end], ...]]` in seconds, or predict's
output JSON, whose `vad_list` is used) or `<stem>.TextGrid` (Praat; speaker tiers by name,
`va_tiers`, or recognised: `convssl_jax.data.textgrid`), found by `va_files.read_va_beside`'s
precedence; optionally its words `<stem>.words.json` (`[[channel, start, end, word], ...]`). The
session is the file stem (non-UTF-8 bytes of a name written `\\xNN`).

A recording is a monologue (stored as such: training leaves its turn-taking terms out) when
`monologues.txt` at the folder's top lists its session (one stem a line; B must then have no VA),
or when speaker B has no VA and a silent channel (a mono file).

Splits: the session lists `train.txt`, `validation.txt`, `test.txt` at the folder's top (one stem
a line) where any exists, else a seeded random split by the config's ratios that gives every
split with a positive ratio at least one session. Audio is read at 16 kHz, so F0 (`data.f0_tracker`)
is tracked at 16 kHz whatever the file's rate. The dataset records a fingerprint of its inputs (`fingerprint`);
a build over an existing dataset whose files or options changed rebuilds it.
"""

import dataclasses
import functools
import hashlib
import json
import math
import pathlib
from collections.abc import Sequence

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from convssl_jax import errors
from convssl_jax.data import audio as audio_lib
from convssl_jax.data import json_file
from convssl_jax.data import textgrid
from convssl_jax.data import va as va_lib
from convssl_jax.data import va_files
from convssl_jax.data import f0 as f0_lib
from data_builders import conversation

SPLITS = ('train', 'validation', 'test')
AUDIO_SUFFIXES = ('.aif', '.aiff', '.au', '.caf', '.flac', '.mp3', '.ogg', '.opus', '.rf64',
                  '.w64', '.wav')
# Shorter audio has no frame at 20 Hz, the slowest frame rate the models use.
MIN_DURATION_S = 0.05
MONOLOGUES = 'monologues.txt'  # at the folder's top: the sessions that are monologues


@dataclasses.dataclass(kw_only=True)
class DialogFolderConfig(tfds.core.BuilderConfig):
  """The random split used when the folder has no session lists: (train, validation, test)."""
  ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)
  seed: int = 0

  @classmethod
  def with_ratios(cls, ratios: tuple[float, float, float], seed: int = 0) -> 'DialogFolderConfig':
    name = 'r' + '-'.join(f'{r:g}' for r in ratios) + f'_s{seed}'
    return cls(name=name, ratios=tuple(ratios), seed=seed)


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
  entries = json_file.read_json(path)
  if not isinstance(entries, list):
    raise errors.InputError(f'{path}: expected a list of [channel, start, end, word]')
  for i, entry in enumerate(entries):
    if not _is_word(entry):
      raise errors.InputError(f'{path}: entry {i} {entry!r}: expected [channel (0 or 1), start, '
                              'end, word] with 0 <= start <= end')
  return entries


def load_session(session: str, audio_path: pathlib.Path,
                 va_tiers: Sequence[str] | None = None,
                 f0_tracker: str = f0_lib.DEFAULT_TRACKER, listed_monologue: bool = False) -> dict:
  """One recording with its VA (and words) -> a stored example; ValueError naming the file if
  any is bad: no VA file, empty, too short, NaN or infinite audio, more than two channels. It is
  a monologue when `listed_monologue` or when speaker B has no VA and a silent channel."""
  va, va_path = va_files.read_va_beside(audio_path, tiers=va_tiers)
  words = read_words(audio_path.with_suffix('.words.json'))
  audio = audio_lib.read_stereo(audio_path, sample_rate=conversation.SAMPLE_RATE)
  if len(audio) < MIN_DURATION_S * conversation.SAMPLE_RATE:
    raise audio_lib.AudioError(f'{audio_path}: {len(audio) / conversation.SAMPLE_RATE:.3f} s of '
                               f'audio, shorter than a dialog can be ({MIN_DURATION_S} s)')
  channels = va_lib.validate_va_list(va, source=str(va_path),
                                     duration_s=len(audio) / conversation.SAMPLE_RATE)
  silent_partner = not len(channels[1]) and not audio[:, 1].any()
  return conversation.conversation(
      session=session, dataset='dialog_folder', audio=audio, sample_rate=conversation.SAMPLE_RATE,
      va=va, source=str(va_path), words=words, f0_tracker=f0_tracker,
      monologue=listed_monologue or silent_partner)


def find_audio(root: pathlib.Path) -> dict[str, pathlib.Path]:
  """Session (file stem, `printable`) -> path of every audio file under `root`; stems must be
  unique."""
  found = {}
  for path in sorted(root.rglob('*')):
    if path.suffix.lower() not in AUDIO_SUFFIXES or path.is_dir():
      continue
    session = conversation.printable(path.stem)
    if session in found:
      raise errors.InputError(conversation.printable(
          f'{path}: session {session!r} is also {found[session]}; audio file names (without '
          'extension) must be unique'))
    found[session] = path
  return found


def _split_list_paths(root: pathlib.Path) -> dict[str, pathlib.Path]:
  return {split: root / f'{split}.txt' for split in SPLITS}


def _session_list(path: pathlib.Path, sessions, listed: dict[str, str]):
  """(line number, session) of each non-blank line of the list `path` (absent: none). A line is a
  session name as `find_audio` gives it (a non-UTF-8 name raw or `\\xNN`-escaped); one without
  audio, or one already in `listed` (session -> where, updated), is an error naming the line."""
  text = path.read_bytes().decode('utf-8', 'surrogateescape') if path.exists() else ''
  for number, line in enumerate(text.splitlines(), 1):
    session = conversation.printable(line.strip())
    if not session:
      continue
    if session not in sessions:
      raise errors.InputError(f'{path}:{number}: session {session!r} has no audio file under '
                              f'{path.parent}')
    if session in listed:
      raise errors.InputError(f'{path}:{number}: session {session!r} is already listed in '
                              f'{listed[session]}')
    listed[session] = f'{path.name}:{number}'
    yield number, session


def read_monologues(root: pathlib.Path, sessions) -> set[str]:
  """The sessions `monologues.txt` at the folder's top lists (one a line; errors as the split
  lists'); none without the file."""
  return {session for _, session in _session_list(root / MONOLOGUES, sessions, {})}


def read_split_lists(root: pathlib.Path, sessions) -> dict[str, list[str]] | None:
  """Each split's sessions from `<split>.txt` at the folder's top; None when there are no lists.

  A listed session without audio, or one listed twice, is an error naming the list and line
  (`_session_list`); sessions that no list names are left out (and logged).
  """
  paths = _split_list_paths(root)
  if not any(path.exists() for path in paths.values()):
    return None
  splits, listed = {}, {}
  for split, path in paths.items():
    splits[split] = [session for _, session in _session_list(path, sessions, listed)]
  unlisted = sorted(set(sessions) - set(listed))
  if unlisted:
    logging.warning('%d sessions are in no split list, left out: %s', len(unlisted), unlisted)
  return splits


def split_sizes(n: int, ratios) -> list[int]:
  """Sessions per split: the largest-remainder rounding of n x ratios, then each split with a
  positive ratio raised to at least one session, taken from the largest. InputError when n is
  smaller than the number of such splits (ValueError for ratios that are not ratios)."""
  ratios = np.asarray(ratios, np.float64)
  if ratios.shape != (3,) or (ratios < 0).any() or not np.isclose(ratios.sum(), 1.0):
    raise ValueError(f'ratios must be 3 non-negative numbers summing to 1, got {ratios.tolist()}')
  wanted = int((ratios > 0).sum())
  if n < wanted:
    raise errors.InputError(f'{n} session{"s" * (n != 1)} cannot give each of the {wanted} splits '
                            'with a positive ratio one')
  target = ratios / ratios.sum() * n
  sizes = np.floor(target).astype(int)
  remainder_order = np.argsort(-(target - sizes), kind='stable')
  sizes[remainder_order[:n - sizes.sum()]] += 1
  for i in np.flatnonzero((ratios > 0) & (sizes == 0)):
    sizes[np.argmax(sizes)] -= 1
    sizes[i] = 1
  return sizes.tolist()


def ratio_split(sessions: list[str], ratios, seed: int) -> dict[str, list[str]]:
  """A seeded random split of `sessions` by (train, validation, test) ratios (`split_sizes`),
  each split sorted."""
  sizes = split_sizes(len(sessions), ratios)
  order = np.random.default_rng(seed).permutation(len(sessions))
  chunks = np.split(order, np.cumsum(sizes)[:2])
  return {split: sorted(sessions[i] for i in chunk)
          for split, chunk in zip(SPLITS, chunks, strict=True)}


def fingerprint(root: pathlib.Path, audio: dict[str, pathlib.Path], options: dict) -> dict:
  """What a built dataset depends on: each audio file and the VA/words files beside it, by path
  in the folder, size and modification time (the way `make` decides), the split lists by content,
  and the builder's options. Not the folder's own path: the same files reached another way (a
  moved folder, another mount) are the same dataset. JSON-ready."""
  files = {}
  for path in audio.values():
    neighbours = [path.with_suffix(s) for s in ('.json', '.words.json',
                                                *va_files.TEXTGRID_SUFFIXES)]
    for p in [path] + [p for p in neighbours if p.is_file()]:
      try:
        stat = p.stat()
      except OSError:  # a dangling link: loading it fails, naming it
        stat = None
      files[conversation.printable(str(p.relative_to(root)))] = (
          stat and [stat.st_size, stat.st_mtime_ns])
  for path in [*_split_list_paths(root).values(), root / MONOLOGUES]:
    if path.is_file():
      files[path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
  return {'options': options, 'files': dict(sorted(files.items()))}


def _changes(old: dict, new: dict) -> str:
  """What differs between two fingerprints, briefly."""
  if old.get('options') != new['options']:
    return f'its options were {old.get("options")}, now {new["options"]}'
  before, after = old.get('files', {}), new['files']
  parts = []
  for what, names in (('added', after.keys() - before.keys()),
                      ('removed', before.keys() - after.keys()),
                      ('changed', {n for n in after.keys() & before.keys()
                                   if after[n] != before[n]})):
    if names:
      shown = sorted(names)
      parts.append(f'{len(shown)} file{"s" * (len(shown) > 1)} {what} '
                   f'({", ".join(shown[:3])}{", ..." if len(shown) > 3 else ""})')
  return 'the folder changed: ' + '; '.join(parts)


class DialogFolder(conversation.ConversationBuilder):
  """Your own two-speaker recordings with their voice activity (see data_builders/README.md).

  `va_tiers`: the TextGrid tiers of speakers A and B (`textgrid.parse_tiers`: 'A_TIER,B_TIER' or
  a pair of names); None recognises them in each file (`textgrid.choose`).
  """

  VERSION = tfds.core.Version('1.3.0')
  RELEASE_NOTES = {
      '1.3.0': 'each conversation records whether it is a monologue (feature and metadata '
               '`monologue`): listed in monologues.txt, or a silent B without VA (a mono file)',
      '1.2.0': conversation.F0_RELEASE_NOTE,
      '1.1.0': 'TextGrids and predict\'s JSON beside the audio; every split gets a session (3 or '
               'more); empty, NaN and sub-frame audio refused; non-UTF-8 names; a changed folder '
               'is rebuilt (input fingerprint)',
      '1.0.0': 'Audio files with VA-list JSON beside them.',
  }
  BUILDER_CONFIGS = [DialogFolderConfig(name='default')]
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  A folder (searched recursively) of audio files, one conversation each (stereo: channel 0 =
  speaker A, channel 1 = speaker B; mono: a single speaker), each with its VA beside it:
    <stem>.wav|.flac|...   any sample rate
    <stem>.json            [[[start, end], ...], [[start, end], ...]] seconds, per channel
                           (or predict's output JSON: its "vad_list")
    <stem>.TextGrid        or a Praat TextGrid: one interval tier per speaker (or MFA's tiers)
    <stem>.words.json      optional: [[channel, start, end, word], ...]
  Optional split lists at the top: train.txt, validation.txt, test.txt (one stem a line), and
  monologues.txt: the recordings of one speaker (B silent), besides the mono files.
  """

  def __init__(self, *, va_tiers: str | Sequence[str] | None = None, **kwargs):
    self.va_tiers = textgrid.parse_tiers(va_tiers)
    super().__init__(**kwargs)

  def _options(self) -> dict:
    """The builder's options that shape the dataset, as the fingerprint records them."""
    config = self.builder_config
    return {'version': str(self.version), 'ratios': list(config.ratios), 'seed': config.seed,
            'va_tiers': list(self.va_tiers) if self.va_tiers else None,
            'f0_tracker': self.f0_tracker}

  def _changed_since_built(self, manual_dir, metadata: dict) -> str | None:
    if manual_dir is None:
      logging.warning('%s: no folder given (manual_dir), so the dataset is used as built, '
                      'unchecked', self.data_dir)
      return None
    root = pathlib.Path(manual_dir)
    if not root.is_dir():
      raise errors.InputError(f'{root}: no such folder (the dialog_folder dataset at '
                              f'{self.data_dir} was built from it); give the folder, or no '
                              'manual_dir to use the dataset as built')
    old = metadata.get('fingerprint')
    new = json.loads(json.dumps(fingerprint(root, find_audio(root), self._options())))
    if old is None:
      return 'it has no fingerprint of its inputs'
    if old != new:
      return _changes(old, new)
    skipped = sum(len(v) for v in metadata.get('skipped', {}).values())
    if skipped and not self.skip_bad:
      return f'it left out {skipped} sessions that failed to load, and skip_bad is off now'
    return None

  def _split_generators(self, dl_manager):
    root = pathlib.Path(dl_manager.manual_dir)
    audio = find_audio(root)
    if not audio:
      raise errors.InputError(f'{root}: no audio files ({" ".join(AUDIO_SUFFIXES)}) found')
    self.info.metadata['fingerprint'] = fingerprint(root, audio, self._options())  # before reading
    splits = read_split_lists(root, audio)
    if splits is None:
      try:
        splits = ratio_split(sorted(audio), self.builder_config.ratios, self.builder_config.seed)
      except errors.InputError as err:
        raise errors.InputError(
            f'{root}: {err}; add sessions, or name each split\'s sessions in train.txt, '
            'validation.txt, test.txt there (a split without a list is left out)') from err
    for split in [s for s, sessions in splits.items() if not sessions]:
      logging.warning('split %s has no sessions; it is left out', split)
    monologues = read_monologues(root, audio)
    return {split: self._generate_examples(split, [
        (s, functools.partial(load_session, s, audio[s], self.va_tiers, self.f0_tracker,
                              s in monologues))
        for s in sessions])
            for split, sessions in splits.items() if sessions}
