"""The schema every corpus builder writes (one example per conversation) and their base builder.

An example holds the whole conversation: 16 kHz int16 stereo audio (channel 0 = speaker A), the
VA segments and words of both speakers in seconds, and F0 per speaker at 100 Hz (0 = unvoiced),
computed once here so training never runs a pitch tracker, and whether it is a monologue: one
speaker in channel A and a pretend partner in B who is always quiet (conv_ssl's README, "Model"),
so that training leaves the turn-taking terms of its windows out. Builders write `array_record`
without TensorFlow, in generation order (`disable_shuffling`): each worker process encodes and
writes its own run of consecutive conversations, one shard file, so no process holds more than
the conversation it is on and nothing funnels through one writer. They record each split's sessions,
durations and monologue flags in the dataset's metadata so the input pipeline can plan windows
without reading audio.
One build of a dataset runs at a time (a lock file beside its version folders; a second waits),
and it first removes the `incomplete.*` folders that killed builds of that version left behind.
A builder that knows its inputs (`_changed_since_built`) rebuilds a dataset whose inputs changed.
With `skip_bad=True` a conversation that fails is left out and listed in the metadata, never
silently.
"""

import contextlib
import dataclasses
import fcntl
import functools
import json
import multiprocessing
import os
import pathlib
import shutil
import socket
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath

from convssl_jax import errors
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
      'monologue': tfds.features.Scalar(dtype=np.bool_),  # B is a pretend, silent partner
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
                 f0_tracker: str = f0_lib.DEFAULT_TRACKER, monologue: bool = False) -> dict:
  """One stored example. `audio` [S, C] (C = 1 gets a silent partner channel), any rate;
  `va` a VA list; `f0` [T, 2] at F0_HZ, or None to track it (`f0_tracker`, one of
  f0.TRACKERS) on the audio at its own rate. A `monologue` is speaker A's alone: its VA for B
  must be empty (InputError naming `source`), and its channel B is stored as digital silence
  (a warning if it was not)."""
  audio = np.asarray(audio, np.float32)
  if audio.ndim != 2 or audio.shape[1] not in (1, 2):
    raise errors.InputError(f'{source}: expected mono or stereo audio, got shape {audio.shape}')
  if audio.shape[1] == 1:
    audio = np.concatenate([audio, np.zeros_like(audio)], axis=1)
  duration = audio.shape[0] / sample_rate
  segments = va_lib.va_segments(va, source=source, duration_s=duration)
  if monologue:
    if np.any(segments[:, 0] == 1):
      raise errors.InputError(f'{source}: a monologue, but speaker B has voice activity; give '
                              'B an empty list, or do not count the recording as a monologue')
    if np.any(audio[:, 1]):
      logging.warning('%s: a monologue whose channel B is not silent; B is stored as silence',
                      source)
      audio[:, 1] = 0.0
  if f0 is None:
    f0 = f0_lib.track_f0(audio, sample_rate, f0_tracker)
  if sample_rate != SAMPLE_RATE:
    audio = audio_lib.resample(audio, sample_rate, SAMPLE_RATE)
  return {
      'session': session,
      'dataset': dataset,
      'audio': audio_lib.to_int16(audio),
      'va': segments,
      'f0': np.asarray(f0, np.float32).reshape(-1, 2),
      'words': json.dumps([[int(c), float(s), float(e), str(w)] for c, s, e, w in words]),
      'monologue': bool(monologue),
  }


def printable(text: str) -> str:
  """`text` with the undecodable bytes of non-UTF-8 file names (Python's surrogate escapes) as
  `\\xNN`: a form that can be stored, printed and logged (a session name, an error)."""
  return text.encode('utf-8', 'surrogateescape').decode('utf-8', 'backslashreplace')


def _load(load: Callable[[], dict]) -> tuple[dict | None, str | None]:
  """Runs one loader (in a worker process); a ValueError comes back as its message. Any other
  error (a bug) keeps its traceback, with a note naming the loader and so its file."""
  try:
    return load(), None
  except ValueError as error:
    return None, printable(str(error))
  except Exception as error:
    error.add_note(printable(f'while running {load!r}'))
    raise


def _load_indexed(item: tuple[int, tuple[str, Callable[[], dict]]]):
  """(index, session, example or None, error or None) of one (index, (session, load)): Beam's
  loading step."""
  index, (session, load) = item
  return (index, session, *_load(load))


def _summary(example: dict | None) -> tuple[float | None, bool | None]:
  """(duration in seconds, whether it is a monologue) of a loaded example; Nones if it failed."""
  if example is None:
    return None, None
  return len(example['audio']) / SAMPLE_RATE, bool(example['monologue'])


def _index_entry(loaded) -> tuple[int, str, float | None, bool | None, str | None]:
  """(index, session, duration, monologue, error) of a loaded conversation."""
  index, session, example, error = loaded
  return index, session, *_summary(example), error


def _keyed_example(loaded) -> Iterator[tuple[int, dict]]:
  """The (index, example) of a conversation that loaded: indices keep the generation order."""
  index, _, example, _ = loaded
  if example is not None:
    yield index, example


SHARDS = 256  # a split's shard files, at most: runs of ceil(n / SHARDS) consecutive conversations


def _runs(n: int) -> list[range]:
  """A split's n conversations as consecutive runs, one shard file each: one conversation per
  shard up to SHARDS conversations (the pool balances them), ceil(n / SHARDS) beyond."""
  per = -(-n // SHARDS)
  return [range(start, min(start + per, n)) for start in range(0, n, per)]


@functools.cache
def _encoder() -> tuple[tfds.features.FeaturesDict, tfds.core.example_serializer.ExampleSerializer]:
  """The schema and its serializer, made once per process."""
  schema = features()
  return schema, tfds.core.example_serializer.ExampleSerializer(schema.get_serialized_info())


def _write_run(task: tuple[str, tfds.core.FileFormat, list[Callable[[], dict]]]) -> list:
  """Runs a run's loaders in order (in a worker process) and writes the examples that load to
  one shard file at `path` (file format `file_format`): the (duration, monologue, error) of
  each, as `_summary` and `_load` give them."""
  path, file_format, loads = task
  schema, serializer = _encoder()
  entries = []

  def serialized():
    for load in loads:
      example, error = _load(load)
      entries.append((*_summary(example), error))
      if example is not None:
        yield None, serializer.serialize_example(schema.encode_example(example))

  # Not TFDS's ShardWriter: it tees the examples to count them, holding the run's whole audio.
  tfds.core.writer.ExampleWriter(file_format=file_format).write(path, serialized())
  return entries


def _write_index(entries: list, path: str):
  """A split's index entries (sorted) as JSON at `path`, for the builder to read back."""
  epath.Path(path).write_text(json.dumps(sorted(entries)))


class ConversationBuilder(tfds.core.GeneratorBasedBuilder):
  """Base of the corpus builders: the shared schema, generation order, metadata, `skip_bad`.

  Conversations load in `num_workers` processes (default: every core; one pool for the whole
  build), each process writing a run of consecutive ones to its own shard (`_runs`), or, when
  the download config names a Beam runner or Beam options, in an Apache
  Beam pipeline (`beam.Create` of the sessions, reshuffled over the workers, keyed by their
  index so the writer keeps the order): the same records and metadata either way. Loaders must
  be picklable (module-level functions or partials of them). F0 is tracked by `f0_tracker` (one
  of f0.TRACKERS), recorded in the metadata, in builders that track it (`tracks_f0`).
  """

  tracks_f0 = True

  def __init__(self, *, skip_bad: bool = False, num_workers: int | None = None,
               f0_tracker: str = f0_lib.DEFAULT_TRACKER, **kwargs):
    if f0_tracker not in f0_lib.TRACKERS:
      raise ValueError(f'unknown F0 tracker {f0_tracker!r}; expected one of '
                       f'{", ".join(f0_lib.TRACKERS)}')
    self.skip_bad = skip_bad
    self.num_workers = num_workers or multiprocessing.cpu_count()
    self.f0_tracker = f0_tracker
    self._pool = None  # the build's worker processes (not with Beam)
    self._beam_splits = None  # the splits Beam builds (None: no Beam)
    kwargs.setdefault('file_format', 'array_record')  # TFRecord would need TensorFlow
    super().__init__(**kwargs)

  def download_and_prepare(self, *, download_config=None, **kwargs):
    """TFDS's build, one at a time per dataset version, after removing the stale `incomplete.*`
    folders of killed builds; an existing dataset is reused unless `_changed_since_built` says
    its inputs changed, then it is rebuilt (logged, with the reason)."""
    download_config = download_config or tfds.download.DownloadConfig(try_download_gcs=False)
    with self._build_lock():
      if self.data_path.exists():
        self.info.read_from_directory(self.data_dir)  # as built (perhaps by the build waited for)
        built = dict(self.info.metadata.items())  # items() loads TFDS's lazy metadata
        if reason := self._changed_since_built(download_config.manual_dir, built):
          logging.warning('%s at %s: %s; rebuilding it', self.name, self.data_dir, reason)
          self.info.metadata.clear()
          download_config = dataclasses.replace(
              download_config, download_mode=tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS)
      super().download_and_prepare(download_config=download_config, **kwargs)

  def _log_download_bytes(self) -> None:
    """In place of TFDS's "Downloading and preparing dataset Unknown size ..." on stdout: these
    corpora are built from local files (or generated), nothing is downloaded."""
    logging.info('building %s in %s from local files', self.name, self.data_dir)

  def _log_download_done(self) -> None:
    """In place of TFDS's "Dataset ... downloaded and prepared to ..." on stdout."""
    logging.info('%s built in %s; later runs reuse it', self.name, self.data_dir)

  def _changed_since_built(self, manual_dir, metadata: dict) -> str | None:
    """Why the existing dataset (its `metadata`) no longer matches its inputs in `manual_dir`, or
    None to reuse it (the default: LDC releases and the synthetic corpus do not change under a
    version)."""
    del manual_dir, metadata
    return None

  @contextlib.contextmanager
  def _build_lock(self):
    """Holds `.build-VERSION.lock` in the config folder (an OS lock, freed by the kernel when its
    holder dies) and removes the `incomplete.*_VERSION` folders found there: while the lock is
    held no other build of this version runs, so they are the remains of killed builds. Where
    the lock file cannot be written (a read-only corpus) a built dataset is used as it is."""
    folder = pathlib.Path(os.fspath(self.data_path)).parent
    try:
      folder.mkdir(parents=True, exist_ok=True)
      lock = open(folder / f'.build-{self.version}.lock', 'a+')
    except OSError as err:
      if not self.data_path.exists():
        raise errors.InputError(f'{folder}: cannot build the dataset there ({err.strerror})'
                                ) from err
      logging.info('%s: not writable (%s), no build lock taken', folder, err.strerror)
      yield
      return
    with lock:
      try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        lock.seek(0)
        logging.warning('%s: waiting for the build of %s (%s) to finish', folder, self.version,
                        lock.read().strip() or 'another process')
        fcntl.flock(lock, fcntl.LOCK_EX)
      lock.seek(0)
      lock.truncate()
      lock.write(f'pid {os.getpid()} on {socket.gethostname()}\n')
      lock.flush()
      for stale in folder.glob(f'{tfds.core.constants.INCOMPLETE_PREFIX}*_{self.version}'):
        logging.warning('removing %s, left by a build that did not finish', stale)
        shutil.rmtree(stale)
      yield

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(builder=self, description=self.__doc__, features=features(),
                                 metadata=tfds.core.MetadataDict(), disable_shuffling=True)

  def _download_and_prepare(self, dl_manager, download_config):
    """Builds every split, in this build's process pool or Beam pipeline; with Beam, the
    splits' index (sessions, durations, failures) comes back from the pipeline afterwards."""
    beam = download_config.beam_runner is not None or download_config.beam_options is not None
    self._beam_splits = [] if beam else None
    if self.tracks_f0:
      self.info.metadata['f0_tracker'] = self.f0_tracker
    with contextlib.ExitStack() as stack:
      if not beam and self.num_workers > 1:
        # 'spawn': forking a process that has started JAX can deadlock.
        self._pool = stack.enter_context(
            multiprocessing.get_context('spawn').Pool(self.num_workers))
        stack.callback(setattr, self, '_pool', None)
      super()._download_and_prepare(dl_manager, download_config)
    for split in self._beam_splits or ():
      path = self._index_path(split)
      entries = json.loads(path.read_text())
      path.unlink()
      self._account(split, (entry[1:] for entry in entries))

  def _index_path(self, split: str) -> epath.Path:
    return epath.Path(self.data_dir) / f'{split}.conversations.json'

  def _splits(self, splits: dict[str, list[str]], sessions: Iterable[str],
              loader: Callable[[str], Callable[[], dict]]) -> dict:
    """The split generators: every non-empty split's sessions, loaded by `loader(session)`;
    sessions that fall in no split are logged as left out."""
    if outside := sorted(set(sessions) - {s for members in splits.values() for s in members}):
      logging.warning('sessions outside every split, left out: %s', outside)
    return {split: self._generate_examples(split, [(s, loader(s)) for s in members])
            for split, members in splits.items() if members}

  def _generate_examples(self, split: str, loaders: Iterable[tuple[str, Callable[[], dict]]]):
    """TFDS's hook: the split's (session, load) pairs, written by `_write_split`, or, with Beam,
    a PTransform of its examples for TFDS's writer."""
    pairs = list(loaders)
    if self._beam_splits is None:
      return pairs
    self._beam_splits.append(split)
    return self._beam_conversations(pairs, os.fspath(self._index_path(split)))

  def _generate_splits(self, dl_manager, download_config) -> list[tfds.core.SplitInfo]:
    """TFDS's hook: with Beam, TFDS's own split writing; otherwise each split by `_write_split`."""
    if self._beam_splits is not None:
      return super()._generate_splits(dl_manager, download_config)
    return [self._write_split(split, pairs)
            for split, pairs in self._split_generators(dl_manager).items()]

  def _write_split(self, split: str,
                   pairs: list[tuple[str, Callable[[], dict]]]) -> tfds.core.SplitInfo:
    """Loads and writes a split's (session, load) pairs, a run of consecutive ones per shard, in
    the build's pool if it has one; the runs' files that hold an example become the split's
    shards, in order."""
    template = self._get_filename_template(split_name=split)
    runs = _runs(len(pairs))
    parts = [epath.Path(f'{template.filepath_prefix()}.run-{k:05d}') for k in range(len(runs))]
    tasks = [(os.fspath(part), self.info.file_format, [pairs[i][1] for i in run])
             for part, run in zip(parts, runs)]
    results = (self._pool.imap(_write_run, tasks) if self._pool and len(tasks) > 1 else
               map(_write_run, tasks))
    lengths = []

    def entries():
      for run, written in zip(runs, results):
        lengths.append(sum(error is None for *_, error in written))
        for i, entry in zip(run, written):
          yield pairs[i][0], *entry

    self._account(split, tfds.core.utils.tqdm(
        entries(), desc=f'Writing {split}', unit=' conversations', total=len(pairs),
        leave=False, mininterval=1.0))
    shards = []  # (file, examples) of the runs that hold an example; the others are removed
    for part, n in zip(parts, lengths):
      if n:
        shards.append((part, n))
      else:
        part.unlink()
    for index, (part, _) in enumerate(shards):
      part.rename(template.sharded_filepath(shard_index=index, num_shards=len(shards)))
    return tfds.core.SplitInfo(
        name=split, shard_lengths=[n for _, n in shards], filename_template=template,
        num_bytes=sum(path.stat().length for path in template.sharded_filepaths(len(shards))))

  @staticmethod
  def _beam_conversations(pairs: list[tuple[str, Callable[[], dict]]], index_path: str):
    """A PTransform loading the pairs in Beam's workers: (index, example) of those that load,
    and the split's index entries written to `index_path` (read back after the pipeline)."""
    beam = tfds.core.lazy_imports.apache_beam

    @beam.ptransform_fn
    def load(pipeline):
      loaded = (pipeline
                | 'Sessions' >> beam.Create(list(enumerate(pairs)))
                | 'Spread' >> beam.Reshuffle()  # else Create's one bundle runs on one worker
                | 'Load' >> beam.Map(_load_indexed))
      _ = (loaded
           | 'IndexEntries' >> beam.Map(_index_entry)
           | 'CollectIndex' >> beam.combiners.ToList()
           | 'WriteIndex' >> beam.Map(_write_index, index_path))
      return loaded | 'Examples' >> beam.FlatMap(_keyed_example)

    return load()  # pylint: disable=no-value-for-parameter

  def _account(self, split: str, loaded: Iterable[tuple]):
    """Records (session, duration, monologue, error) in order as the split's sessions,
    durations and monologue flags in metadata.

    An error stops the build, unless `skip_bad`: then it is logged and listed under
    metadata['skipped'][split]. A split without a conversation is an error.
    """
    meta = self.info.metadata
    index = meta.setdefault('splits', {})[split] = {'sessions': [], 'durations': [],
                                                    'monologue': []}
    skipped = meta.setdefault('skipped', {})[split] = []
    for session, duration, monologue, error in loaded:
      if error is not None:
        if not self.skip_bad:
          raise errors.InputError(error)
        logging.warning('skipping conversation %s: %s', session, error)
        skipped.append({'session': session, 'error': error})
        continue
      index['sessions'].append(session)
      index['durations'].append(duration)
      index['monologue'].append(monologue)
    if not index['sessions']:
      raise errors.InputError(f'{self.name}: split {split!r} has no conversations'
                              + (f' (all {len(skipped)} failed to load)' if skipped else ''))


def download_config() -> tfds.download.DownloadConfig:
  """Local builds only: no GCS metadata lookups (the machines may have no network)."""
  return tfds.download.DownloadConfig(try_download_gcs=False)
