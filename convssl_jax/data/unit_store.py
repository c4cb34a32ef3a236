"""The units dataset on disk: one array_record file per split plus `meta.json`.

A record is one conversation: 'units' [T, 2] int16 (one k-means unit per speaker and frame at
`unit_hz`), 'va' [n, 3] (the corpus's VA segments, channel/start/end seconds, unchanged), 'f0'
[T0, 2] (100 Hz), 'session' and 'monologue' (the corpus's flag), stored as an `np.savez` archive
(no pickle). `meta.json` holds each split's sessions, durations and monologue flags (so windows
are planned without reading records), the codebook size, the frame rate and where the units came
from. `pipeline.open_corpora` reads it when
`data.name='units'`.
"""

import io
import json
import pathlib

import grain
import numpy as np

META = 'meta.json'
CODEBOOK = 'codebook.npy'
FIELDS = ('units', 'va', 'f0', 'session', 'monologue')


def encode(record: dict) -> bytes:
  buffer = io.BytesIO()
  np.savez(buffer, **{k: np.asarray(record[k]) for k in FIELDS})
  return buffer.getvalue()


def decode(data: bytes) -> dict[str, np.ndarray]:
  with np.load(io.BytesIO(data), allow_pickle=False) as archive:
    record = {k: archive[k] for k in FIELDS}
  record['session'] = str(record['session'])
  record['monologue'] = bool(record['monologue'])
  return record


class UnitsSource:
  """Random access to one split's records, decoded (picklable for grain workers)."""

  def __init__(self, path: pathlib.Path):
    self.path = str(path)
    self._source = grain.sources.ArrayRecordDataSource([self.path])

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    return decode(self._source[index])

  def __getstate__(self):
    return {'path': self.path}

  def __setstate__(self, state):
    self.__init__(pathlib.Path(state['path']))


def split_path(directory, split: str) -> pathlib.Path:
  return pathlib.Path(directory) / f'{split}.array_record'


def write_split(directory, split: str, records) -> dict:
  """Writes `records` (an iterable of (dict with FIELDS, the conversation's duration in seconds))
  as `split`; returns the split's index {'sessions', 'durations', 'monologue'} for meta.json."""
  from array_record.python.array_record_module import ArrayRecordWriter

  path = split_path(directory, split)
  path.parent.mkdir(parents=True, exist_ok=True)
  writer = ArrayRecordWriter(str(path), 'group_size:1')
  index = {'sessions': [], 'durations': [], 'monologue': []}
  try:
    for record, duration in records:
      writer.write(encode(record))
      index['sessions'].append(str(record['session']))
      index['durations'].append(float(duration))
      index['monologue'].append(bool(record['monologue']))
  finally:
    writer.close()
  return index


def write_meta(directory, meta: dict) -> None:
  (pathlib.Path(directory) / META).write_text(json.dumps(meta, indent=1) + '\n')


def read_meta(directory) -> dict:
  path = pathlib.Path(directory) / META
  if not directory or not path.is_file():
    raise FileNotFoundError(f'no units dataset in data.units_dir={str(directory)!r} ({META} '
                            'missing): build it with `python run.py --config=configs/ulm.py '
                            '--mode=units --config.data.units_dir=DIR`')
  return json.loads(path.read_text())


def open_splits(directory, splits, *, frame_hz: int, n_units: int | None = None) -> dict:
  """{split: (source, sessions, durations, monologue flags)}, after checking the units fit the
  model (meta.json read once for all splits)."""
  meta = read_meta(directory)
  if meta['unit_hz'] != frame_hz:
    raise ValueError(f'{directory}: units at {meta["unit_hz"]} Hz, the model runs at '
                     f'model.frame_hz={frame_hz}')
  if n_units is not None and meta['n_units'] != n_units:
    raise ValueError(f'{directory}: a codebook of {meta["n_units"]} units, the model has '
                     f'model.units={n_units}')
  if missing := [s for s in splits if s not in meta['splits']]:
    raise ValueError(f'{directory}: no split {missing[0]!r}; it has {sorted(meta["splits"])}')
  index = meta['splits']
  if any('monologue' not in index[s] for s in splits):
    raise ValueError(f'{directory}: a units dataset that does not record which conversations '
                     'are monologues; build it again (--mode=units)')
  return {s: (UnitsSource(split_path(directory, s)), tuple(index[s]['sessions']),
              np.asarray(index[s]['durations'], np.float64),
              np.asarray(index[s]['monologue'], bool)) for s in splits}
