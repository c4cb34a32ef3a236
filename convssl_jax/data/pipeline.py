"""Grain input pipelines: stored conversations -> windows -> model batches.

conversation (TFDS array_record, one example per dialog)
  -> windows: training = sliding windows with a random offset, reshuffled every epoch;
     evaluation = sliding windows that cover the whole dialog
  -> per-channel peak normalisation (the reference's rule)
  -> VA frames at the model's frame rate + H horizon frames (silence past the dialog's end)
  -> VA history (5 bins, computed on the whole dialog) -> F0 at the frame rate
  -> which channels hold a speaker ('speakers' [2]: [1, 0] for a monologue, whose B is a pretend
     partner; the losses leave its turn-taking terms out)
  -> channel swap (training, probability p) -> mono mix (mono models)
  -> batches of this process's share of the global batch.

With a feature cache (`features`, a `FeatureStore`), a window carries the frozen encoder's
features of its audio (`'features'`, swapped with the speakers) instead of the audio. The cache
holds every window training can cut: the sliding starts moved by multiples of `jitter_grid_s`
(`cached_window_table`), so a cached run sees the batches an on-the-fly run with the same
`jitter_grid_s` sees.

The unit LM's windows come the same way from a units dataset (data.name='units', `unit_store`):
its units [2, N] (one per frame) stand where the audio would, with the same VA, history and F0.

Training reads conversations in groups (`grouped_order`) so one decoded record serves all of its
windows. Everything is a function of (seed, element index), so the iterator state that Orbax saves with a
checkpoint resumes on exactly the batches an uninterrupted run would have seen.
"""

import collections
import dataclasses
import functools
import threading
from typing import Any

import grain
import numpy as np

from convssl_jax.data import audio as audio_lib
from convssl_jax.data import va as va_lib
from convssl_jax.data import windows as windows_lib

SAMPLE_RATE = audio_lib.SAMPLE_RATE
F0_HZ = 100


@dataclasses.dataclass(frozen=True)
class Corpus:
  """One split of a built corpus: random-access conversations and their sessions, durations and
  monologue flags (a monologue's channel B is a pretend partner, always quiet; None: all are
  dialogs)."""
  source: Any
  sessions: tuple[str, ...]
  durations: np.ndarray
  monologue: np.ndarray | None = None

  def __post_init__(self):
    flags = np.zeros(len(self.durations), bool) if self.monologue is None else self.monologue
    object.__setattr__(self, 'monologue', np.asarray(flags, bool))
    if self.monologue.shape != (len(self.durations),):
      raise ValueError(f'{len(self.monologue)} monologue flags for {len(self.durations)} '
                       'conversations')

  @classmethod
  def from_builder(cls, builder, split: str) -> 'Corpus':
    index = builder.info.metadata.get('splits', {}).get(split)
    if index is None:
      raise ValueError(f'{builder.name}: split {split!r} has no window index in its metadata; '
                       f'known splits: {sorted(builder.info.metadata.get("splits", {}))}')
    if 'monologue' not in index:
      raise ValueError(f'{builder.name} {builder.version} at {builder.data_dir} does not record '
                       'which conversations are monologues; build it again with this version '
                       'of the builder')
    return cls(builder.as_data_source(split=split), tuple(index['sessions']),
               np.asarray(index['durations'], np.float64), np.asarray(index['monologue'], bool))

  @classmethod
  def from_builders(cls, builders, split: str) -> 'Corpus':
    """One builder's split, or several corpora's splits back to back (sessions then read
    'corpus/session')."""
    if len(builders) == 1:
      return cls.from_builder(builders[0], split)
    parts = [cls.from_builder(b, split) for b in builders]
    return cls(ConcatSource([p.source for p in parts]),
               tuple(f'{b.name}/{s}' for b, p in zip(builders, parts) for s in p.sessions),
               np.concatenate([p.durations for p in parts]),
               np.concatenate([p.monologue for p in parts]))

  def dialogs(self) -> 'Corpus':
    """The dialogs alone (turn-taking is scored on dialogs: a monologue has only holds)."""
    if not self.monologue.any():
      return self
    keep = np.flatnonzero(~self.monologue)
    return Corpus(SubsetSource(self.source, keep), tuple(self.sessions[i] for i in keep),
                  self.durations[keep], self.monologue[keep])


class SubsetSource:
  """Random access to the records `indices` of a source (picklable for grain workers)."""

  def __init__(self, source, indices):
    self.source, self.indices = source, np.asarray(indices, np.int64)

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, index: int):
    return self.source[int(self.indices[index])]


class ConcatSource:
  """Random access over several sources, one after the other (picklable for grain workers)."""

  def __init__(self, sources):
    self.sources = list(sources)
    self.ends = np.cumsum([len(s) for s in self.sources])

  def __len__(self) -> int:
    return int(self.ends[-1]) if len(self.ends) else 0

  def __getitem__(self, index: int):
    if not 0 <= index < len(self):
      raise IndexError(f'index {index} out of range for {len(self)} records')
    part = int(np.searchsorted(self.ends, index, side='right'))
    return self.sources[part][index - (int(self.ends[part - 1]) if part else 0)]


@dataclasses.dataclass(frozen=True)
class WindowSpec:
  """What one model input window holds."""
  window_s: float
  frame_hz: int
  horizon_frames: int
  history_times: tuple[float, ...] = (60, 30, 10, 5)
  normalize: bool = True
  mono: bool = False
  signal: str = 'audio'  # what the model hears: 'audio' (16 kHz), or 'units' (at frame_hz)
  signal_hz: int = SAMPLE_RATE

  @property
  def frames(self) -> int:
    return int(self.window_s * self.frame_hz)


def window_table(corpus: Corpus, window_s: float, overlap_s: float, *, cover: bool) -> np.ndarray:
  """[n, 2] (conversation index, start seconds): sliding windows, or with `cover` the evaluation
  windows that reach the end of every dialog."""
  starts = windows_lib.eval_starts if cover else windows_lib.sliding_starts
  rows = [np.column_stack([np.full(len(s), i, np.float64), s])
          for i, d in enumerate(corpus.durations)
          for s in [np.asarray(starts(d, window_s, overlap_s), np.float64)]]
  return np.concatenate(rows) if rows else np.zeros((0, 2))


class LoadWindow:
  """(conversation index, start) -> one model input (a picklable grain transform).

  Keeps the last `cache` conversations decoded, so windows that come grouped by conversation
  (`train_dataset`'s order, evaluation's) read each record once. grain's prefetch threads call
  it concurrently, so the cache is behind a lock.
  """

  def __init__(self, corpus: Corpus, spec: WindowSpec, channel_swap: float = 0.0, cache: int = 4,
               features=None, swap: bool = False):
    """`channel_swap`: the probability of swapping the speakers of a window loaded with an rng
    (training); `swap`: swap every window (evaluation's second speaker order)."""
    self.corpus, self.spec, self.channel_swap, self.cache = corpus, spec, channel_swap, cache
    self.swap = swap
    self.features = features  # a FeatureStore: windows carry its features instead of audio
    self._decoded = collections.OrderedDict()
    self._lock = threading.Lock()

  def __getstate__(self):  # worker processes start with an empty cache
    return {k: v for k, v in self.__dict__.items() if k not in ('_decoded', '_lock')}

  def __setstate__(self, state):
    self.__dict__.update(state, _decoded=collections.OrderedDict(), _lock=threading.Lock())

  def _conversation(self, index: int) -> dict[str, np.ndarray]:
    with self._lock:
      if index in self._decoded:
        self._decoded.move_to_end(index)
        return self._decoded[index]
    example = self.corpus.source[index]
    spec = self.spec
    va_list = va_lib.channel_segments(example['va'])
    n = va_lib.num_frames(self.corpus.durations[index], spec.frame_hz)
    va = va_lib.va_frames(va_list, n, spec.frame_hz)
    conversation = {
        spec.signal: example[spec.signal],
        'va': va,
        'va_history': va_lib.va_history(va, spec.frame_hz, spec.history_times),
        'f0': windows_lib.f0_at_frame_rate(example['f0'], F0_HZ, spec.frame_hz),
        # 1 for a channel that holds a speaker, 0 for a monologue's pretend partner (B)
        'speakers': np.array([1.0, 0.0 if self.corpus.monologue[index] else 1.0], np.float32),
    }
    with self._lock:
      self._decoded[index] = conversation
      if len(self._decoded) > self.cache:
        self._decoded.popitem(last=False)
    return conversation

  def __call__(self, row: np.ndarray, rng: np.random.Generator | None = None) -> dict[str, Any]:
    index, start = int(row[0]), float(row[1])
    spec, conv = self.spec, self._conversation(int(row[0]))
    signal, va = windows_lib.cut_window(
        conv[spec.signal], conv['va'], start, spec.window_s, sample_rate=spec.signal_hz,
        frame_hz=spec.frame_hz, horizon_frames=spec.horizon_frames)
    first = windows_lib.start_frame(start, spec.frame_hz)  # the frame cut_window starts at
    out = {
        'va': va,
        'va_history': windows_lib.cut_frames(conv['va_history'], first, spec.frames, pad_value=0.5),
        'f0': windows_lib.cut_frames(conv['f0'], first, spec.frames),
        'speakers': conv['speakers'],
    }
    signal = np.swapaxes(signal, 0, 1)  # channels-first [2, S]: all audio work is per channel
    swap = self.swap or (rng is not None and rng.uniform() < self.channel_swap)
    if swap:
      out = windows_lib.swap_channels(out)
      signal = signal[::-1]
    if self.features is not None:  # stereo [2, T, D] per channel; mono [T, D] of the mix
      features = self.features[index, first]
      out['features'] = np.ascontiguousarray(features[::-1]) if swap and not spec.mono else features
    elif spec.signal == 'audio':
      signal = np.ascontiguousarray(signal)
      signal = (audio_lib.from_int16_normalized(signal) if spec.normalize
                else audio_lib.from_int16(signal))
      out['audio'] = (audio_lib.mono_mix(signal, channel_axis=-2, normalize=spec.normalize)
                      if spec.mono else signal)
    else:
      out[spec.signal] = signal.astype(np.int32, order='C')  # one contiguous copy
    out['conversation'] = np.int32(index)
    out['start'] = np.float32(start)
    out['frame'] = np.int32(first)  # the window's first frame (exact, where start is float32)
    if len(row) > 2:  # evaluation rows carry a weight: 0 for padding
      out['weight'] = np.float32(row[2])
    return out


def _shifted(row: np.ndarray, offset: float, durations: np.ndarray, window_s: float) -> np.ndarray:
  """The window `row` moved later by `offset` seconds, but not past its dialog's last full window."""
  latest = max(0.0, durations[int(row[0])] - window_s)
  return np.array([row[0], min(row[1] + offset, latest)])


def _jitter(row: np.ndarray, rng: np.random.Generator, durations: np.ndarray, step: float,
            window_s: float, grid: float = 0.0) -> np.ndarray:
  """Moves a training window by a random offset in [0, step), inside its dialog; with `grid` > 0
  by one of `windows.jitter_offsets(step, grid)`."""
  if grid > 0:
    offsets = windows_lib.jitter_offsets(step, grid)
    offset = offsets[rng.integers(len(offsets))]
  else:
    offset = rng.uniform(0.0, step)
  return _shifted(row, offset, durations, window_s)


def cached_window_table(corpus: Corpus, spec: WindowSpec, overlap_s: float,
                        jitter_grid_s: float) -> np.ndarray:
  """[n, 2] (conversation, start seconds): every window `train_dataset` can cut with this
  `jitter_grid_s`, one row per distinct start frame (what a feature cache must hold)."""
  offsets = windows_lib.jitter_offsets(spec.window_s - overlap_s, jitter_grid_s)
  rows = {}
  for row in window_table(corpus, spec.window_s, overlap_s, cover=False):
    for offset in offsets:
      moved = _shifted(row, offset, corpus.durations, spec.window_s)
      rows.setdefault((int(moved[0]), windows_lib.start_frame(moved[1], spec.frame_hz)), moved)
  return np.array(list(rows.values()), np.float64).reshape(-1, 2)


def grouped_order(table: np.ndarray, n_conversations: int, rng: np.random.Generator,
                  group: int) -> np.ndarray:
  """A random order of the window table in which the windows of `group` conversations at a
  time come together (shuffled among themselves), so each conversation is read once an epoch."""
  block = rng.permutation(n_conversations)[table[:, 0].astype(int)] // group
  return np.lexsort((rng.random(len(table)), block))


def train_dataset(corpus: Corpus, spec: WindowSpec, *, batch_size: int, seed: int,
                  overlap_s: float = 0.0, channel_swap: float = 0.5, epochs: int = 1,
                  group: int = 16, process_index: int = 0, process_count: int = 1,
                  jitter_grid_s: float = 0.0, features=None,
                  read_options: grain.ReadOptions | None = None) -> grain.IterDataset:
  """An endless stream of batches of `batch_size` windows (this process's share), deterministic
  for `seed`: `epochs` differently shuffled passes over the windows, then the same again.
  Windows start at random offsets below the window step (on a grid with `jitter_grid_s` > 0);
  with `features` (a FeatureStore) they carry the cached encoder features instead of audio."""
  if features is not None and jitter_grid_s <= 0:
    raise ValueError('training from a feature cache needs data.jitter_grid_s > 0: the cache holds '
                     'the windows on that grid')
  table = window_table(corpus, spec.window_s, overlap_s, cover=False)
  if len(table) < process_count:
    raise ValueError(f'{len(table)} training windows cannot feed {process_count} processes')
  rng = np.random.default_rng(seed)
  order = np.concatenate([table[grouped_order(table, len(corpus.durations), rng, group)]
                          for _ in range(epochs)])
  load = LoadWindow(corpus, spec, channel_swap, cache=group, features=features)
  jitter = functools.partial(_jitter, durations=corpus.durations,
                             step=spec.window_s - overlap_s, window_s=spec.window_s,
                             grid=jitter_grid_s)
  # Random choices are drawn per global element before the process split, so a batch's windows do
  # not depend on how many processes share it.
  ds = (grain.MapDataset.source(order).random_map(jitter, seed=seed)
        .random_map(load, seed=seed + 1).repeat()[process_index::process_count])
  return ds.batch(batch_size, drop_remainder=True).to_iter_dataset(read_options)


def eval_dataset(corpus: Corpus, spec: WindowSpec, *, batch_size: int, overlap_s: float = 0.0,
                 process_index: int = 0, process_count: int = 1,
                 swap: bool = False) -> grain.IterDataset:
  """One pass over windows that cover every dialog of the split, in order, in full batches;
  with `swap`, speakers A and B exchanged in every window.

  Every process gets the same number of batches (collective steps need that): the table is
  padded with copies of its last window whose `weight` is 0 (real windows have 1).
  """
  table = window_table(corpus, spec.window_s, overlap_s, cover=True)
  if not len(table):
    raise ValueError('the split has no conversations to evaluate')
  return windows_dataset(corpus, spec, table, batch_size=batch_size, process_index=process_index,
                         process_count=process_count, swap=swap)


def batch_count(windows: int, batch_size: int, process_count: int = 1) -> int:
  """The batches each process reads of `windows` windows (`windows_dataset`): its share, padded to
  full batches, the same number on every process."""
  return -(-(-(-windows // process_count)) // batch_size)


def windows_dataset(corpus: Corpus, spec: WindowSpec, table: np.ndarray, *, batch_size: int,
                    process_index: int = 0, process_count: int = 1,
                    swap: bool = False) -> grain.IterDataset:
  """The windows of `table` ([n, 2] conversation, start) in order, this process's share, in full
  batches; every process gets the same number, padded with copies of the last window of
  `weight` 0 (real windows have 1)."""
  total = batch_count(len(table), batch_size, process_count) * batch_size * process_count
  weight = np.arange(total) < len(table)
  table = np.column_stack([table[np.minimum(np.arange(total), len(table) - 1)], weight])
  ds = grain.MapDataset.source(table)[process_index::process_count].map(
      LoadWindow(corpus, spec, swap=swap))
  return ds.batch(batch_size).to_iter_dataset()
