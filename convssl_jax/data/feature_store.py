"""The on-disk feature cache: one array_record record per training window, keyed by
(conversation index, start frame).

Layout of a cache directory:

  features-PPPPP-of-NNNNN.array_record   the records of process P (raw array bytes, all one
                                          shape and dtype)
  index-PPPPP-of-NNNNN.npy               [n, 2] int64 (conversation, start frame) of those records
  cache.json                             what was cached (the fingerprint), the record shape and
                                          dtype: written last, it marks the cache complete

A build writes into `<dir>.partial` and renames it to `<dir>` only after every process has
finished and `cache.json` is written, so an interrupted build never leaves a directory that
opens as a cache.
"""

import json
import pathlib
import shutil
from typing import Any

import numpy as np
from array_record.python import array_record_module

META = 'cache.json'


def partial_dir(directory: str | pathlib.Path) -> pathlib.Path:
  directory = pathlib.Path(directory)
  return directory.with_name(directory.name + '.partial')


def _shard_name(prefix: str, process: int, count: int, suffix: str) -> str:
  return f'{prefix}-{process:05d}-of-{count:05d}.{suffix}'


class ShardWriter:
  """Writes one process's records into the partial directory."""

  def __init__(self, directory: str | pathlib.Path, process_index: int, process_count: int):
    self.dir = partial_dir(directory)
    self.dir.mkdir(parents=True, exist_ok=True)
    self.index_path = self.dir / _shard_name('index', process_index, process_count, 'npy')
    self._writer = array_record_module.ArrayRecordWriter(
        str(self.dir / _shard_name('features', process_index, process_count, 'array_record')),
        'group_size:1,uncompressed')  # one window per chunk, raw: random reads, no codec
    self._keys: list[tuple[int, int]] = []
    self.shape = self.dtype = None

  def write(self, conversation: int, start_frame: int, features: np.ndarray) -> None:
    if self.shape is None:
      self.shape, self.dtype = features.shape, features.dtype
    elif (features.shape, features.dtype) != (self.shape, self.dtype):
      raise ValueError(f'feature record {features.shape} {features.dtype} differs from the '
                       f'first one, {self.shape} {self.dtype}')
    self._writer.write(np.ascontiguousarray(features).tobytes())
    self._keys.append((conversation, start_frame))

  def close(self) -> None:
    self._writer.close()
    np.save(self.index_path, np.asarray(self._keys, np.int64).reshape(-1, 2))


def finalize(directory: str | pathlib.Path, meta: dict[str, Any]) -> None:
  """Marks the partial build complete (writes cache.json) and moves it to `directory`,
  replacing an older cache there. Call once, after every process's writer has closed."""
  directory, partial = pathlib.Path(directory), partial_dir(directory)
  (partial / META).write_text(json.dumps(meta, indent=2))
  if directory.exists():
    shutil.rmtree(directory)
  partial.rename(directory)


def read_meta(directory: str | pathlib.Path) -> dict[str, Any] | None:
  """The cache's cache.json, or None where there is no complete cache."""
  path = pathlib.Path(directory) / META
  return json.loads(path.read_text()) if path.is_file() else None


class FeatureStore:
  """Random access to a complete cache: `store[conversation, start_frame]` -> array.

  Picklable (grain workers reopen the files themselves)."""

  def __init__(self, directory: str | pathlib.Path):
    self.dir = pathlib.Path(directory)
    self.meta = read_meta(self.dir)
    if self.meta is None:
      hint = (' (a build was interrupted: its partial output is in '
              f'{partial_dir(self.dir)})' if partial_dir(self.dir).exists() else '')
      raise FileNotFoundError(f'data.features={str(self.dir)!r} is not a complete feature cache: '
                              f'no {META}{hint}; build it with run.py --mode=cache_features')
    self.shape, self.dtype = tuple(self.meta['shape']), _dtype(self.meta['dtype'])
    self._where = {}  # (conversation, start frame) -> (shard, record)
    self._paths = sorted(self.dir.glob('features-*.array_record'))
    for shard, path in enumerate(self._paths):
      index = path.name.replace('features-', 'index-').replace('.array_record', '.npy')
      for record, (conversation, frame) in enumerate(np.load(self.dir / index)):
        self._where[int(conversation), int(frame)] = (shard, record)
    if len(self._where) != self.meta['records']:
      raise ValueError(f'feature cache {self.dir}: {len(self._where)} records indexed, '
                       f'{META} says {self.meta["records"]}')
    self._readers = {}

  def __getstate__(self):
    return {**self.__dict__, '_readers': {}}

  def __len__(self) -> int:
    return len(self._where)

  def keys(self):
    """The (conversation, start frame) of every record."""
    return self._where.keys()

  def __getitem__(self, key: tuple[int, int]) -> np.ndarray:
    if key not in self._where:
      raise KeyError(f'feature cache {self.dir} has no window of conversation {key[0]} at frame '
                     f'{key[1]}: it was built for other windows (data.window_s, overlap_s, '
                     'jitter_grid_s) or another corpus')
    shard, record = self._where[key]
    if shard not in self._readers:
      self._readers[shard] = array_record_module.ArrayRecordReader(
          str(self._paths[shard]), 'readahead_buffer_size:0')
    data = self._readers[shard].read([record])[0]
    return np.frombuffer(data, self.dtype).reshape(self.shape)


def _dtype(name: str) -> np.dtype:
  import ml_dtypes  # bfloat16 for numpy; a dependency of jax

  return np.dtype(getattr(ml_dtypes, name)) if name == 'bfloat16' else np.dtype(name)
