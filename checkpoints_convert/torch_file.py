"""A torch-free, safe reader of `torch.save` files: plain containers of numpy arrays.

Both serializations are read:
* zip (the default since torch 1.6): `<archive>/data.pkl`, each storage's raw bytes in
  `<archive>/data/<key>`, and `<archive>/byteorder` ('little' when absent); the archive folder is
  named after the saved file, so it is found, not assumed;
* legacy (`_use_new_zipfile_serialization=False` and every file written before torch 1.6): pickles
  of the magic number, the protocol version (1001) and a sys-info dict, the main pickle, a pickle of
  the storage keys, then per key an int64 element count and the storage's little-endian bytes.

Pickles go through `torch_pickle.Unpickler`, which admits only what rebuilds tensors and plain
containers. Config objects found in CPC and fairseq files (`argparse.Namespace`, omegaconf
`DictConfig`/`ListConfig` and their nodes) are never imported: inert stand-ins keep their pickled
state, which becomes plain dicts and lists. Any other global raises `UnsafeCheckpointError` naming
it, and `persistent_load` accepts storage records only, so loading a file never runs its code.

Tensors and parameters become numpy arrays with the stored dtype, shape, strides and storage
offset (each a copy: views of one storage become independent arrays); their `requires_grad`, hooks
and Python attributes are dropped. bfloat16, which numpy lacks, becomes float32 exactly (its bits
are the high half of a float32); `as_float32` casts the other floating dtypes on request.

A load holds a memory budget (`max_bytes`, by default `default_budget(file size)`): the pickle's
opcodes and objects, the storage bytes read and every array made are charged to it before they are
allocated, so a small file cannot make the reader allocate much (a stride-0 view is charged what it
would materialise; a storage is read only as far as its tensors reach, so a zip member that
inflates to a gigabyte is inflated no further than needed). Only regular files are read.
"""

import collections
import io
import math
import os
import stat
import zipfile
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from checkpoints_convert import torch_pickle
from checkpoints_convert.torch_pickle import (Budget, CheckpointFormatError,
                                              CheckpointTooLargeError, TorchFileError,
                                              UnsafeCheckpointError)

__all__ = ['load', 'as_float32', 'default_budget', 'TorchFileError', 'CheckpointFormatError',
           'CheckpointTooLargeError', 'UnsafeCheckpointError', 'LEGACY_MAGIC', 'LEGACY_PROTOCOL']

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001
_ZIP_MAGIC = b'PK\x03\x04'
BUDGET_SLACK = 64 << 20  # the default budget beyond 3x the file: pickles, small expanded views
_ZIP_ENTRY_BYTES = 1024  # what one central-directory entry costs in zipfile, beyond its name
_CHUNK = 1 << 20  # storages are read in chunks into one buffer: no whole-member temporaries
MAX_DEPTH = 100  # containers nested deeper are refused (checkpoints nest a few levels)


def default_budget(file_size: int) -> int:
  """Bytes a load may allocate unless `max_bytes` says otherwise: the storage bytes (at most the
  file's size), the arrays made from them (the same again, twice for bfloat16 made float32) and
  `BUDGET_SLACK` for the pickle and small expanded views."""
  return 3 * file_size + BUDGET_SLACK


class _Storages:
  """Storage bytes, read when a tensor needs them and only as far as the unpickled `tensors`
  reach, each read charged to the budget; a storage's bytes are let go once its last tensor is
  built."""

  def __init__(self, read: Callable[[str, int], bytearray],
               tensors: Iterable[torch_pickle.Tensor], budget: Budget):
    self._read, self._budget = read, budget
    self._data: dict[str, bytearray] = {}
    self._extents: dict[str, int] = {}  # key -> bytes its tensors reach, from its start
    self._uses: collections.Counter[str] = collections.Counter()  # key -> tensors not yet built
    for t in tensors:
      reach = t.storage.start + min(t.end, t.storage.nbytes)
      self._extents[t.storage.key] = max(self._extents.get(t.storage.key, 0), reach)
      self._uses[t.storage.key] += 1

  def get(self, key: str, stop: int) -> memoryview:
    data = self._data.get(key)
    if data is None or len(data) < stop:
      n = max(stop, self._extents.get(key, 0))
      self._budget.charge(n, f'storage {key}')
      data = self._data[key] = self._read(key, n)
    return memoryview(data)[:stop]

  def built(self, key: str) -> bool:
    """Counts one of the unpickled tensors of `key` built; True (the bytes let go, so that its
    array may keep them) once all are."""
    self._uses[key] -= 1
    if self._uses[key]:
      return False
    return self._data.pop(key, None) is not None


class _Builder:
  """Turns the unpickled tree into plain containers: tensors to arrays, stand-ins to values.

  Every object is converted once (shared references stay shared), so the tree is no larger than
  what the pickle built.
  """

  def __init__(self, path: str, storages: _Storages, byteorder: str, budget: Budget):
    self._path, self._storages, self._byteorder = path, storages, byteorder
    self._budget = budget
    self._memo: dict[int, tuple[Any, Any]] = {}  # id -> (original kept alive, result)

  def plain(self, obj, depth: int = 0):
    hit = self._memo.get(id(obj))
    if hit is not None:
      return hit[1]
    if depth > MAX_DEPTH:
      raise CheckpointFormatError(f'{self._path}: containers nested deeper than {MAX_DEPTH}')
    if isinstance(obj, torch_pickle.Tensor):
      return self._remember(obj, self._array(obj, unpickled=True))
    if isinstance(obj, torch_pickle.Storage):  # a storage saved on its own: its elements
      count = obj.nbytes // np.dtype(torch_pickle.DTYPES[obj.dtype]).itemsize
      return self._remember(obj, self._array(
          torch_pickle.Tensor(obj, obj.dtype, 0, (count,), (1,)), unpickled=False))
    if isinstance(obj, dict):
      result = self._remember(obj, collections.OrderedDict()
                              if isinstance(obj, collections.OrderedDict) else {})
      result.update((self.plain(k, depth + 1), self.plain(v, depth + 1))
                    for k, v in obj.items())
      return result
    if isinstance(obj, list):
      result = self._remember(obj, [])
      result.extend(self.plain(v, depth + 1) for v in obj)
      return result
    if isinstance(obj, (tuple, set, frozenset)):
      return self._remember(obj, type(obj)(self.plain(v, depth + 1) for v in obj))
    if isinstance(obj, torch_pickle.StandIn):
      return self._stand_in_value(obj, depth)
    if isinstance(obj, (torch_pickle.Admitted, torch_pickle.StorageType)):
      return obj.qualname  # a global used as a value (a defaultdict's factory): its name
    if isinstance(obj, (str, bytes, int, float, slice, type(None))):  # bool is an int
      return obj
    raise CheckpointFormatError(f'{self._path}: the pickle holds a {type(obj).__name__}')

  def _remember(self, obj, result):
    self._memo[id(obj)] = (obj, result)
    return result

  def _stand_in_value(self, obj: torch_pickle.StandIn, depth: int):
    """Namespace -> its attributes; DictConfig/ListConfig -> their content; nodes -> value."""
    state = obj.state
    if isinstance(state, tuple) and len(state) == 2:  # (__dict__, slots) from a BUILD
      if not all(isinstance(s, (dict, type(None))) for s in state):
        raise CheckpointFormatError(f'{self._path}: {obj.qualname} pickled with a bad state')
      state = {**(state[0] or {}), **(state[1] or {})}
    if not isinstance(state, (dict, type(None))):
      raise CheckpointFormatError(
          f'{self._path}: {obj.qualname} pickled with a {type(state).__name__} state')
    state = state or {}
    module = obj.qualname.rpartition('.')[0]
    if obj.qualname == 'argparse.Namespace':
      result = self._remember(obj, {})
      result.update((self.plain(k, depth + 1), self.plain(v, depth + 1))
                    for k, v in state.items())
      return result
    if module in ('omegaconf.dictconfig', 'omegaconf.listconfig'):
      # a dict, a list, None or a '${..}'/'???' str
      return self.plain(state.get('_content'), depth + 1)
    if module == 'omegaconf.nodes':
      return self.plain(state.get('_val'), depth + 1)
    if module == 'omegaconf.base':  # node metadata, only reachable through a node's state
      return None
    result = self._remember(obj, {'__global__': obj.qualname})  # an `inert_modules` object
    result.update(args=[self.plain(a, depth + 1) for a in obj.args],
                  state=self.plain(obj.state, depth + 1))
    return result

  def _array(self, tensor: torch_pickle.Tensor, unpickled: bool) -> np.ndarray:
    """The tensor's elements out of its storage, charged before anything is allocated: a copy,
    or the storage's own bytes when it is the last of the `unpickled` tensors to need them and
    views most of them in place (no other array shares them)."""
    storage, bfloat16 = tensor.storage, tensor.dtype == 'bfloat16'
    out = np.dtype(np.float32 if bfloat16 else torch_pickle.DTYPES[tensor.dtype])
    self._budget.charge(math.prod(tensor.shape) * out.itemsize,
                        f'tensor of shape {tensor.shape} (storage {storage.key})')
    if tensor.end > storage.nbytes:  # as_strided would read past the storage
      raise CheckpointFormatError(f'{self._path}: tensor view {tensor.shape} stride '
                                  f'{tensor.strides} + {tensor.offset} outside its storage')
    stored = self._storages.get(storage.key, storage.start + tensor.end)[storage.start:]
    dtype = np.dtype(torch_pickle.DTYPES[tensor.dtype])
    if self._byteorder == 'big':
      dtype = dtype.newbyteorder('>')
    flat = np.frombuffer(stored, dtype, count=len(stored) // dtype.itemsize)
    view = np.lib.stride_tricks.as_strided(
        flat[tensor.offset:], tensor.shape, [s * dtype.itemsize for s in tensor.strides])
    last = unpickled and self._storages.built(storage.key)
    if (last and view.flags.c_contiguous and dtype.isnative and not bfloat16
        and 2 * view.nbytes >= len(stored.obj)):
      return view
    if not bfloat16:
      return np.array(view, dtype.newbyteorder('='))
    array = np.empty(tensor.shape, np.uint32)  # bfloat16 bits are a float32's high half
    array[...] = view
    array <<= 16
    return array.view(np.float32)


def _read_exactly(f, n: int, path: str, what: str) -> bytearray:
  """`n` bytes from `f` into one buffer, read in chunks (a zip member's `read(n)` would hold
  another whole copy)."""
  buffer = bytearray(n)
  view, done = memoryview(buffer), 0
  while done < n:
    chunk = f.read(min(n - done, _CHUNK))
    if not chunk:
      raise CheckpointFormatError(f'{path}: truncated ({what} ends early)')
    view[done:done + len(chunk)] = chunk
    done += len(chunk)
  return buffer


def _load_zip(f, path: str, budget: Budget, inert_modules: Sequence[str]):
  # zipfile holds the whole central directory: bound it before it is read (from the end record,
  # through zipfile's own reader of it).
  end = zipfile._EndRecData(f)  # pylint: disable=protected-access
  if end is None:
    raise CheckpointFormatError(f'{path}: truncated or corrupt zip archive')
  entries, size = zipfile._ECD_ENTRIES_TOTAL, zipfile._ECD_SIZE  # pylint: disable=protected-access
  budget.charge(end[entries] * _ZIP_ENTRY_BYTES + 2 * end[size], 'the zip directory')
  with zipfile.ZipFile(f) as archive:
    members = {info.filename: info for info in archive.infolist()}
    pickles = [n for n in members if n.endswith('/data.pkl') and n.count('/') == 1]
    if len(pickles) != 1 or any(n.endswith('/constants.pkl') for n in members):
      raise CheckpointFormatError(
          f'{path}: a zip archive but not a torch.save file (TorchScript or other zip)')
    prefix = pickles[0].removesuffix('data.pkl')

    def read(name: str, n: int) -> bytearray:
      info = members.get(prefix + name)
      if info is None:
        raise CheckpointFormatError(f'{path}: {name} missing from the archive')
      if info.file_size < n:
        raise CheckpointFormatError(f'{path}: truncated ({name} holds {info.file_size} bytes, '
                                    f'its tensors reach {n})')
      with archive.open(info) as member:
        return _read_exactly(member, n, path, name)

    byteorder = 'little'
    if prefix + 'byteorder' in members:
      byteorder = bytes(read('byteorder', min(members[prefix + 'byteorder'].file_size, 8)))
      byteorder = byteorder.decode('ascii', 'replace')
    if byteorder not in ('little', 'big'):
      raise CheckpointFormatError(f'{path}: unknown byte order {byteorder!r}')
    size = members[pickles[0]].file_size
    budget.charge(2 * size, 'data.pkl')  # read, then copied once into bytes
    data = bytes(read('data.pkl', size))
    unpickler = torch_pickle.Unpickler(io.BytesIO(data), size, path, budget, inert_modules)
    tree = unpickler.load()
    del data
    storages = _Storages(lambda key, n: read(f'data/{key}', n), unpickler.tensors.values(),
                         budget)
    return _Builder(path, storages, byteorder, budget).plain(tree)


def _load_legacy(f, path: str, size: int, budget: Budget, inert_modules: Sequence[str]):
  def load_pickle(**kwargs):
    unpickler = torch_pickle.Unpickler(f, size - f.tell(), path, budget, **kwargs)
    return unpickler.load(), unpickler

  try:
    magic, _ = load_pickle()
  except TorchFileError:
    raise
  except Exception:  # pylint: disable=broad-exception-caught
    magic = None  # any unreadable start: not this format
  if magic != LEGACY_MAGIC:
    raise CheckpointFormatError(f'{path}: not a torch file (neither zip nor legacy format)')
  version, _ = load_pickle()
  if version != LEGACY_PROTOCOL:
    raise CheckpointFormatError(f'{path}: legacy protocol {torch_pickle.short(version)}, not '
                                f'{LEGACY_PROTOCOL}')
  sys_info, _ = load_pickle()
  if not isinstance(sys_info, dict) or not sys_info.get('little_endian', True):
    raise CheckpointFormatError(f'{path}: written on a big-endian machine (not supported)')
  tree, unpickler = load_pickle(inert_modules=inert_modules, legacy=True)
  keys, _ = load_pickle()
  if (not isinstance(keys, list)
      or any(type(k) is not str or k not in unpickler.storages for k in keys)):
    raise CheckpointFormatError(f'{path}: storage key list does not match the pickle')
  offsets = {}  # key -> where its bytes start in the file
  for key in keys:
    storage = unpickler.storages[key]
    count = int.from_bytes(_read_exactly(f, 8, path, f'storage {key}'), 'little')
    itemsize = np.dtype(torch_pickle.DTYPES[storage.dtype]).itemsize
    if count * itemsize != storage.nbytes or storage.nbytes > size - f.tell():
      raise CheckpointFormatError(f'{path}: storage {key} has {count} elements, not as recorded, '
                                  'or is truncated')
    offsets[key] = f.tell()
    f.seek(storage.nbytes, os.SEEK_CUR)

  def read(key: str, n: int) -> bytearray:
    if key not in offsets:
      raise CheckpointFormatError(f'{path}: storage {key} has no data')
    f.seek(offsets[key])
    return _read_exactly(f, n, path, f'storage {key}')

  storages = _Storages(read, unpickler.tensors.values(), budget)
  return _Builder(path, storages, 'little', budget).plain(tree)


def _open_regular(path: str):
  """`path` opened for reading, if it is a regular file (a device or FIFO never ends)."""
  try:  # O_NONBLOCK: opening a FIFO must not wait for a writer
    fd = os.open(path, os.O_RDONLY | getattr(os, 'O_NONBLOCK', 0))
  except OSError as error:
    raise TorchFileError(f'{path}: cannot open ({error.strerror})') from None
  if not stat.S_ISREG(os.fstat(fd).st_mode):
    os.close(fd)
    raise CheckpointFormatError(f'{path}: not a regular file (a device, FIFO or directory)')
  return os.fdopen(fd, 'rb')


def load(path: str | os.PathLike, *, inert_modules: Sequence[str] = (),
         max_bytes: int | None = None) -> Any:
  """Reads a `torch.save` file into dicts, lists, tuples, plain values and numpy arrays.

  Args:
    path: the file, zip or legacy format.
    inert_modules: module prefixes (e.g. 'fairseq') whose pickled objects become inert
      {'__global__': 'module.Class', 'args': [...], 'state': ...} dicts instead of being
      refused, for files that keep bookkeeping objects beside the weights. Nothing of them runs.
    max_bytes: the memory the load may allocate (see the module doc); default
      `default_budget(the file's size)`.

  Raises:
    UnsafeCheckpointError: the file asks for any other global, or calls one it may not.
    CheckpointTooLargeError: reading it would allocate more than the budget.
    CheckpointFormatError: not a regular file, not a torch file, truncated, corrupt, or an
      unknown storage type.
  """
  path = os.fspath(path)
  if max_bytes is not None and (type(max_bytes) is not int or max_bytes <= 0):
    raise ValueError(f'max_bytes must be a positive int, got {max_bytes!r}')
  with _open_regular(path) as f:
    size = os.fstat(f.fileno()).st_size
    hint = '' if max_bytes else f" (3x the file's size + {BUDGET_SLACK >> 20} MiB)"
    budget = Budget(path, max_bytes or default_budget(size), hint)
    try:
      if zipfile.is_zipfile(f):
        return _load_zip(f, path, budget, inert_modules)
      f.seek(0)
      if f.read(4) == _ZIP_MAGIC:
        raise CheckpointFormatError(f'{path}: truncated or corrupt zip archive')
      f.seek(0)
      return _load_legacy(f, path, size, budget, inert_modules)
    except (TorchFileError, MemoryError):  # a MemoryError would be a budget the reader broke
      raise
    except Exception as e:  # pylint: disable=broad-exception-caught
      # Untrusted bytes fail in many ways (pickle, zip, struct, type errors): name the file.
      raise CheckpointFormatError(
          f'{path}: truncated or corrupt ({type(e).__name__}: {str(e):.200})') from e


def as_float32(tree: Any) -> Any:
  """`tree` with every floating-point array cast to float32; other leaves unchanged."""
  if isinstance(tree, np.ndarray):
    return tree.astype(np.float32, copy=False) if np.issubdtype(tree.dtype, np.floating) else tree
  if isinstance(tree, dict):
    return type(tree)((k, as_float32(v)) for k, v in tree.items())
  if isinstance(tree, (list, tuple)):
    return type(tree)(as_float32(v) for v in tree)
  return tree
