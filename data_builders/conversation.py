"""The schema every corpus builder writes (one example per conversation) and their base builder.

An example holds the whole conversation: 16 kHz int16 stereo audio (channel 0 = speaker A), the
VA segments and words of both speakers in seconds, and F0 per speaker at 100 Hz (0 = unvoiced),
computed once here so training never runs a pitch tracker. Builders write `array_record` without
TensorFlow, in generation order (`disable_shuffling`), and record each split's sessions and
durations in the dataset's metadata so the input pipeline can plan windows without reading audio.
A failed build leaves only TFDS's `incomplete.*` directory behind and can be re-run; with
`skip_bad=True` a conversation that fails is left out and listed in the metadata, never silently.
"""

import contextlib
import json
import multiprocessing
import pathlib
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from convssl_jax.data import audio as audio_lib
from convssl_jax.data import f0 as f0_lib
from convssl_jax.data import sphere
from convssl_jax.data import va as va_lib

SAMPLE_RATE = 16_000
TELEPHONE_RATE = 8_000  # Switchboard, Fisher: F0 is computed at this rate, before resampling
F0_HZ = f0_lib.F0_HZ
_RAW = tfds.features.Encoding.BYTES
F0_RELEASE_NOTE = ('F0 by the project\'s pYIN (convssl_jax.data.f0.fast_pyin_f0: librosa.pyin\'s '
                   'track, ~20x faster); f0_tracker=librosa_pyin keeps librosa\'s own. The '
                   'tracker is recorded in metadata["f0_tracker"].')


def features() -> tfds.features.FeaturesDict:
  return tfds.features.FeaturesDict({
      'session': tfds.features.Text(),
      'dataset': tfds.features.Text(),
      # Raw bytes: the default encoding would store int16 as int64 varints and float64 as float32.
      'audio': tfds.features.Tensor(shape=(None, 2), dtype=np.int16, encoding=_RAW),  # 16 kHz
      'va': tfds.features.Tensor(shape=(None, 3), dtype=np.float64, encoding=_RAW),  # [ch, s, e]
      'f0': tfds.features.Tensor(shape=(None, 2), dtype=np.float32, encoding=_RAW),  # Hz, 0 = unvoiced
      'words': tfds.features.Text(),  # JSON [[channel, start_s, end_s, word], ...]
  })


def va_list(segments: np.ndarray) -> list[list[list[float]]]:
  """The stored [n, 3] segments back in the reference's list format."""
  return [seg.tolist() for seg in va_lib.channel_segments(segments)]


def read_telephone_audio(path: pathlib.Path) -> np.ndarray:
  """A stereo telephone recording (SPHERE as LDC ships it, or a converted file) -> [S, 2] float32
  at 8 kHz; ValueError naming the file when it is missing, unreadable or not stereo."""
  if path.suffix == '.sph':
    try:
      samples, rate = sphere.read_sphere(path)
    except OSError as err:
      raise audio_lib.AudioError(f'{path}: cannot read ({err.strerror})') from err
    audio = audio_lib.resample(audio_lib.from_int16(samples), rate, TELEPHONE_RATE)
  else:
    audio = audio_lib.read_audio(path, sample_rate=TELEPHONE_RATE)
  if audio.shape[1] != 2:
    raise audio_lib.AudioError(f'{path}: {audio.shape[1]} channels, expected 2 (one a speaker)')
  return audio


def conversation(*, session: str, dataset: str, audio: np.ndarray, sample_rate: int, va,
                 source: str, f0: np.ndarray | None = None, words: Iterable = (),
                 f0_tracker: str = f0_lib.DEFAULT_TRACKER) -> dict:
  """One stored example. `audio` [S, C] (C = 1 gets a silent partner channel), any rate;
  `va` a VA list; `f0` [T, 2] at F0_HZ, or None to track it (`f0_tracker`, one of
  f0.TRACKERS) on the audio at its own rate."""
  audio = np.asarray(audio, np.float32)
  if audio.ndim != 2 or audio.shape[1] not in (1, 2):
    raise ValueError(f'{source}: expected mono or stereo audio, got shape {audio.shape}')
  if audio.shape[1] == 1:
    audio = np.concatenate([audio, np.zeros_like(audio)], axis=1)
  if f0 is None:
    f0 = f0_lib.track_f0(audio, sample_rate, f0_tracker)
  duration = audio.shape[0] / sample_rate
  segments = va_lib.va_segments(va, source=source)
  if len(segments) and segments[:, 2].max() > duration + 0.05:
    raise ValueError(f'{source}: VA segment ends at {segments[:, 2].max():.2f} s, after the end '
                     f'of the audio ({duration:.2f} s)')
  if sample_rate != SAMPLE_RATE:
    audio = audio_lib.resample(audio, sample_rate, SAMPLE_RATE)
  return {
      'session': session,
      'dataset': dataset,
      'audio': audio_lib.to_int16(audio),
      'va': segments,
      'f0': np.asarray(f0, np.float32).reshape(-1, 2),
      'words': json.dumps([[int(c), float(s), float(e), str(w)] for c, s, e, w in words]),
  }


def _load(load: Callable[[], dict]) -> tuple[dict | None, str | None]:
  """Runs one loader (in a worker process); a ValueError comes back as its message."""
  try:
    return load(), None
  except ValueError as error:
    return None, str(error)


class ConversationBuilder(tfds.core.GeneratorBasedBuilder):
  """Base of the corpus builders: the shared schema, generation order, metadata, `skip_bad`.

  Conversations load in `num_workers` processes (default: every core), in order. Loaders must
  be picklable (module-level functions or partials of them). F0 is tracked by `f0_tracker` (one
  of f0.TRACKERS), recorded in the metadata.
  """

  def __init__(self, *, skip_bad: bool = False, num_workers: int | None = None,
               f0_tracker: str = f0_lib.DEFAULT_TRACKER, **kwargs):
    if f0_tracker not in f0_lib.TRACKERS:
      raise ValueError(f'unknown F0 tracker {f0_tracker!r}; expected one of '
                       f'{", ".join(f0_lib.TRACKERS)}')
    self.skip_bad = skip_bad
    self.num_workers = num_workers or multiprocessing.cpu_count()
    self.f0_tracker = f0_tracker
    kwargs.setdefault('file_format', 'array_record')  # TFRecord would need TensorFlow
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(builder=self, description=self.__doc__, features=features(),
                                 metadata=tfds.core.MetadataDict(), disable_shuffling=True)

  def _splits(self, splits: dict[str, list[str]], sessions: Iterable[str],
              loader: Callable[[str], Callable[[], dict]]) -> dict[str, Iterator]:
    """The split generators: every non-empty split's sessions, loaded by `loader(session)`;
    sessions that fall in no split are logged as left out."""
    if outside := sorted(set(sessions) - {s for members in splits.values() for s in members}):
      logging.warning('sessions outside every split, left out: %s', outside)
    return {split: self._generate_examples(split, [(s, loader(s)) for s in members])
            for split, members in splits.items() if members}

  def _generate_examples(self, split: str, loaders):
    """TFDS's hook; builders that plan their splits with `_splits` need nothing else."""
    yield from self._conversations(split, loaders)

  def _conversations(self, split: str,
                     loaders: Iterable[tuple[str, Callable[[], dict]]]) -> Iterator[tuple[str, dict]]:
    """Runs each (session, load) pair; records the split's sessions and durations in metadata.

    A load that raises ValueError stops the build, unless `skip_bad`: then it is logged and
    listed under metadata['skipped'][split].
    """
    pairs = list(loaders)
    sessions, loads = [s for s, _ in pairs], [load for _, load in pairs]
    meta = self.info.metadata
    meta['f0_tracker'] = self.f0_tracker
    index = meta.setdefault('splits', {})[split] = {'sessions': [], 'durations': []}
    skipped = meta.setdefault('skipped', {})[split] = []
    with contextlib.ExitStack() as stack:
      if self.num_workers > 1 and len(loads) > 1:
        # 'spawn': forking a process that has started JAX can deadlock.
        pool = stack.enter_context(multiprocessing.get_context('spawn').Pool(
            min(self.num_workers, len(loads))))
        results = pool.imap(_load, loads)
      else:
        results = map(_load, loads)
      for session, (example, error) in zip(sessions, results):
        if error is not None:
          if not self.skip_bad:
            raise ValueError(error)
          logging.warning('skipping conversation %s: %s', session, error)
          skipped.append({'session': session, 'error': error})
          continue
        index['sessions'].append(session)
        index['durations'].append(len(example['audio']) / SAMPLE_RATE)
        yield session, example
    if not index['sessions']:
      raise ValueError(f'{self.name}: split {split!r} has no conversations'
                       + (f' (all {len(skipped)} failed to load)' if skipped else ''))


def download_config() -> tfds.download.DownloadConfig:
  """Local builds only: no GCS metadata lookups (the machines may have no network)."""
  return tfds.download.DownloadConfig(try_download_gcs=False)
