"""A torch-free, safe reader of `torch.save` files: plain containers of numpy arrays.

Both serializations are read:
* zip (the default since torch 1.6): `<archive>/data.pkl`, each storage's raw bytes in
  `<archive>/data/<key>`, and `<archive>/byteorder` ('little' when absent); the archive folder is
  named after the saved file, so it is found, not assumed;
* legacy (`_use_new_zipfile_serialization=False` and every file written before torch 1.6): pickles
  of the magic number, the protocol version (1001) and a sys-info dict, the main pickle, a pickle of
  the storage keys, then per key an int64 element count and the storage's little-endian bytes.

Pickles go through `_Unpickler`, whose `find_class` admits only what rebuilds tensors and plain
containers. Config objects found in CPC and fairseq files (`argparse.Namespace`, omegaconf
`DictConfig`/`ListConfig` and their nodes) are never imported: inert stand-ins keep their pickled
state, which becomes plain dicts and lists. Any other global raises `UnsafeCheckpointError` naming
it, and `persistent_load` accepts storage records only, so loading a file never runs its code.

Tensors and parameters become numpy arrays with the stored dtype, shape, strides and storage
offset (each a copy: views of one storage become independent arrays); their `requires_grad`, hooks
and Python attributes are dropped. bfloat16, which numpy lacks, becomes float32 exactly (its bits
are the high half of a float32); `as_float32` casts the other floating dtypes on request.
"""

import _compat_pickle
import collections
import dataclasses
import io
import math
import os
import pickle
import zipfile
from collections.abc import Sequence
from typing import Any

import numpy as np

from convssl_jax import errors

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001
_ZIP_MAGIC = b'PK\x03\x04'

# torch dtype name -> numpy dtype of its stored bytes (bfloat16 read as its raw 16 bits).
_DTYPES = {
    'float64': '<f8', 'float32': '<f4', 'float16': '<f2', 'bfloat16': '<u2',
    'complex128': '<c16', 'complex64': '<c8', 'int64': '<i8', 'int32': '<i4', 'int16': '<i2',
    'int8': 'i1', 'uint8': 'u1', 'uint16': '<u2', 'uint32': '<u4', 'uint64': '<u8', 'bool': '?',
}
# Storage classes named in persistent ids -> their dtype. UntypedStorage holds bytes that
# `_rebuild_tensor_v3` views as a newer dtype (torch.uint16 ...).
_STORAGES = {
    'DoubleStorage': 'float64', 'FloatStorage': 'float32', 'HalfStorage': 'float16',
    'BFloat16Storage': 'bfloat16', 'ComplexDoubleStorage': 'complex128',
    'ComplexFloatStorage': 'complex64', 'LongStorage': 'int64', 'IntStorage': 'int32',
    'ShortStorage': 'int16', 'CharStorage': 'int8', 'ByteStorage': 'uint8',
    'BoolStorage': 'bool', 'UntypedStorage': 'uint8',
}
# Config classes replaced by inert stand-ins (see `_Builder._stand_in_value`).
_CONFIG_CLASSES = ('argparse.Namespace',)
_CONFIG_MODULES = ('omegaconf.dictconfig', 'omegaconf.listconfig', 'omegaconf.nodes',
                   'omegaconf.base')
# Lightning's `hyper_parameters` container, a dict subclass: read as a plain dict.
_DICT_CLASSES = ('pytorch_lightning.utilities.parsing.AttributeDict',
                 'lightning_fabric.utilities.data.AttributeDict',
                 'lightning.fabric.utilities.data.AttributeDict')


class TorchFileError(errors.UserError):
  """A file that `load` cannot read; the message starts with the file's path."""


class CheckpointFormatError(TorchFileError):
  """Not a torch file, truncated or corrupt, or holding data this reader cannot rebuild."""


class UnsafeCheckpointError(TorchFileError):
  """The file's pickle asks for a global outside the allow-list."""


class _Record:
  """Base of the reader's own records: a pickle BUILD opcode must not rewrite their fields."""

  def __setstate__(self, state):
    raise ValueError(f'the pickle sets the state of a {type(self).__name__}')


@dataclasses.dataclass(frozen=True)
class _StorageType(_Record):
  """What a pickled `torch.<X>Storage` global resolves to: only its dtype."""
  dtype: str


@dataclasses.dataclass(frozen=True)
class _Storage(_Record):
  """Bytes [start, start + nbytes) of the file's storage `key`, holding `dtype` elements."""
  key: str
  dtype: str
  start: int
  nbytes: int


@dataclasses.dataclass(frozen=True, eq=False)
class _Tensor(_Record):
  """A tensor to build once the storages are read: a strided view of `storage` as `dtype`."""
  storage: _Storage
  dtype: str
  offset: int
  shape: tuple[int, ...]
  strides: tuple[int, ...]


def _index_tuple(values, what: str) -> tuple[int, ...]:
  if not isinstance(values, (tuple, list)) or any(type(v) is not int or v < 0 for v in values):
    raise ValueError(f'tensor {what} {values!r} is not a tuple of non-negative ints')
  return tuple(values)


def _tensor(storage, dtype: str, offset, size, stride) -> _Tensor:
  if not isinstance(storage, _Storage):
    raise ValueError(f'tensor rebuilt from a {type(storage).__name__}, not a storage')
  if type(offset) is not int or offset < 0:
    raise ValueError(f'tensor storage offset {offset!r} is not a non-negative int')
  shape, strides = _index_tuple(size, 'size'), _index_tuple(stride, 'stride')
  if len(shape) != len(strides):
    raise ValueError(f'tensor size {shape} and stride {strides} differ in length')
  return _Tensor(storage, dtype, offset, shape, strides)


# The stand-ins below take no defaults: the BUILD opcode can set a function's attributes, and
# `__defaults__` set by one file must not reach the next load.
def _rebuild_tensor_v2(storage, storage_offset, size, stride, *ignored) -> _Tensor:
  """Stands in for torch._utils._rebuild_tensor_v2: a view of a typed storage.

  `ignored`: requires_grad, backward hooks and (since torch 1.13) metadata.
  """
  del ignored
  dtype = storage.dtype if isinstance(storage, _Storage) else ''
  return _tensor(storage, dtype, storage_offset, size, stride)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks,
                       dtype, *ignored) -> _Tensor:
  """Stands in for torch._utils._rebuild_tensor_v3: bytes of an untyped storage as `dtype`."""
  del requires_grad, backward_hooks, ignored
  name = dtype.removeprefix('torch.') if isinstance(dtype, str) else None
  if name not in _DTYPES:
    raise ValueError(f'tensor dtype {dtype!r} is not a known torch dtype')
  return _tensor(storage, name, storage_offset, size, stride)


def _rebuild_parameter(data, *ignored) -> _Tensor:
  """Stands in for torch._utils._rebuild_parameter(_with_state): the parameter's tensor.

  `ignored`: requires_grad, backward hooks and, with state, the Python attributes.
  """
  del ignored
  if not isinstance(data, _Tensor):
    raise ValueError(f'parameter rebuilt from a {type(data).__name__}, not a tensor')
  return data


def _empty_dict(*default_factory) -> dict:
  """Stands in for collections.defaultdict (omegaconf metadata caches): a plain dict."""
  del default_factory
  return {}


def _latin1_bytes(text, encoding) -> bytes:
  """Stands in for _codecs.encode, which protocol-2 pickles use for bytes: latin-1 only."""
  if not isinstance(text, str) or encoding not in ('latin1', 'latin-1'):
    raise ValueError(f'_codecs.encode with a {type(text).__name__} as {encoding!r}')
  return text.encode('latin1')


_ADMITTED = {
    '_codecs.encode': _latin1_bytes,
    'collections.OrderedDict': collections.OrderedDict,
    'collections.defaultdict': _empty_dict,
    'torch._utils._rebuild_tensor_v2': _rebuild_tensor_v2,
    'torch._utils._rebuild_tensor_v3': _rebuild_tensor_v3,
    'torch._utils._rebuild_parameter': _rebuild_parameter,
    'torch._utils._rebuild_parameter_with_state': _rebuild_parameter,
    'torch.Size': tuple,  # a tuple subclass, pickled as Size((d0, d1, ...))
    'builtins.set': set,
    'builtins.frozenset': frozenset,
    'builtins.slice': slice,
    # Types that omegaconf records in node metadata (ref_type, object_type, key_type); the
    # metadata is dropped. typing.Any becomes its name: BUILD could set a class's attributes.
    'builtins.dict': dict,
    'builtins.list': list,
    'builtins.tuple': tuple,
    'builtins.int': int,
    'builtins.float': float,
    'builtins.str': str,
    'builtins.bool': bool,
    'builtins.bytes': bytes,
    'typing.Any': 'typing.Any',
}


class _DictStandIn(dict):
  """Stands in for a dict subclass (`_DICT_CLASSES`): its items, nothing else."""

  def __setstate__(self, state):
    del state  # an AttributeDict keeps its items as items, not in its __dict__


class _StandIn:
  """Inert stand-in for a config class: keeps the pickled arguments and state, runs nothing."""
  qualname = ''

  def __new__(cls, *args, **kwargs):
    del kwargs
    obj = super().__new__(cls)
    obj.args, obj.state = args, None
    return obj

  def __setstate__(self, state):
    self.state = state


def _py3_name(module: str, name: str) -> tuple[str, str]:
  """Python 2 names of protocol-2 pickles (`__builtin__.long`) -> Python 3 ones, as pickle does."""
  if (module, name) in _compat_pickle.NAME_MAPPING:
    return _compat_pickle.NAME_MAPPING[(module, name)]
  return _compat_pickle.IMPORT_MAPPING.get(module, module), name


def _within(module: str, prefixes: Sequence[str]) -> bool:
  return any(module == p or module.startswith(p + '.') for p in prefixes)


def _ascii(value):
  return value.decode('ascii') if isinstance(value, bytes) else value


class _Unpickler(pickle.Unpickler):
  """Admits `_ADMITTED`, storage types, dtypes and config stand-ins; refuses every other global."""

  def __init__(self, file, path: str, inert_modules: Sequence[str] = (), legacy: bool = False):
    super().__init__(file, encoding='utf-8')
    self._path, self._inert, self._legacy = path, tuple(inert_modules), legacy
    self.storages: dict[str, _Storage] = {}  # key -> the whole storage, as first recorded
    self._stand_ins: dict[str, type] = {}

  def find_class(self, module, name):
    module, name = _py3_name(module, name)
    qualname = f'{module}.{name}'
    if module in ('torch', 'torch.storage') and name.endswith('Storage'):
      if name not in _STORAGES:
        raise CheckpointFormatError(f"{self._path}: unknown storage type '{qualname}'")
      return _StorageType(_STORAGES[name])
    if module == 'torch' and name in _DTYPES:
      return qualname  # a dtype (`torch.float16`) stays its name
    if qualname in _ADMITTED:
      return _ADMITTED[qualname]
    if qualname in _DICT_CLASSES:
      return _DictStandIn
    if (qualname in _CONFIG_CLASSES or module in _CONFIG_MODULES
        or _within(module, self._inert)):
      if qualname not in self._stand_ins:
        self._stand_ins[qualname] = type(name, (_StandIn,), {'qualname': qualname})
      return self._stand_ins[qualname]
    raise UnsafeCheckpointError(f"{self._path}: refusing to load global '{qualname}'")

  def persistent_load(self, pid):
    """Storage records: ('storage', type, key, location, numel), + view metadata in legacy."""
    if (not isinstance(pid, tuple) or len(pid) != (6 if self._legacy else 5)
        or _ascii(pid[0]) != 'storage' or not isinstance(pid[1], _StorageType)
        or not isinstance(pid[2], str) or type(pid[4]) is not int or pid[4] < 0):
      raise CheckpointFormatError(f'{self._path}: not a storage record: {pid!r:.100}')
    dtype, key, numel = pid[1].dtype, pid[2], pid[4]
    itemsize = np.dtype(_DTYPES[dtype]).itemsize
    storage = self.storages.setdefault(key, _Storage(key, dtype, 0, numel * itemsize))
    if storage != _Storage(key, dtype, 0, numel * itemsize):
      raise CheckpointFormatError(f'{self._path}: storage {key} recorded twice, differently')
    view = pid[5] if self._legacy else None
    if view is None:
      return storage
    # Old torch versions saved views of a storage: (view key, element offset, element count).
    if (not isinstance(view, tuple) or len(view) != 3
        or any(type(v) is not int or v < 0 for v in view[1:]) or sum(view[1:]) > numel):
      raise CheckpointFormatError(f'{self._path}: bad storage view {view!r:.100}')
    return _Storage(key, dtype, view[1] * itemsize, view[2] * itemsize)


class _Builder:
  """Turns the unpickled tree into plain containers: tensors to arrays, stand-ins to values."""

  def __init__(self, path: str, data: dict[str, bytes], byteorder: str):
    self._path, self._data, self._byteorder = path, data, byteorder
    self._memo: dict[int, tuple[Any, Any]] = {}  # id -> (original kept alive, result)

  def plain(self, obj):
    hit = self._memo.get(id(obj))
    if hit is not None:
      return hit[1]
    if isinstance(obj, _Tensor):
      return self._remember(obj, self._array(obj))
    if isinstance(obj, _Storage):  # a storage saved on its own: its elements
      count = obj.nbytes // np.dtype(_DTYPES[obj.dtype]).itemsize
      return self._remember(obj, self._array(_Tensor(obj, obj.dtype, 0, (count,), (1,))))
    if isinstance(obj, dict):
      result = self._remember(obj, collections.OrderedDict()
                              if isinstance(obj, collections.OrderedDict) else {})
      result.update((self.plain(k), self.plain(v)) for k, v in obj.items())
      return result
    if isinstance(obj, list):
      result = self._remember(obj, [])
      result.extend(self.plain(v) for v in obj)
      return result
    if isinstance(obj, (tuple, set, frozenset)):
      return type(obj)(self.plain(v) for v in obj)
    if isinstance(obj, _StandIn):
      return self._stand_in_value(obj)
    return obj

  def _remember(self, obj, result):
    self._memo[id(obj)] = (obj, result)
    return result

  def _stand_in_value(self, obj: _StandIn):
    """Namespace -> its attributes; DictConfig/ListConfig -> their content; nodes -> value."""
    state = obj.state
    if isinstance(state, tuple) and len(state) == 2:  # (__dict__, slots) from a BUILD
      state = {**(state[0] or {}), **(state[1] or {})}
    if not isinstance(state, (dict, type(None))):
      raise CheckpointFormatError(
          f'{self._path}: {obj.qualname} pickled with a {type(state).__name__} state')
    state = state or {}
    module = obj.qualname.rpartition('.')[0]
    if obj.qualname == 'argparse.Namespace':
      return self._remember(obj, {k: self.plain(v) for k, v in state.items()})
    if module in ('omegaconf.dictconfig', 'omegaconf.listconfig'):
      return self.plain(state.get('_content'))  # a dict, a list, None or a '${..}'/'???' str
    if module == 'omegaconf.nodes':
      return self.plain(state.get('_val'))
    if module == 'omegaconf.base':  # node metadata, only reachable through a node's state
      return None
    result = self._remember(obj, {'__global__': obj.qualname})  # an `inert_modules` object
    result.update(args=[self.plain(a) for a in obj.args], state=self.plain(obj.state))
    return result

  def _array(self, tensor: _Tensor) -> np.ndarray:
    storage = tensor.storage
    raw = self._data.get(storage.key)
    if raw is None:
      raise CheckpointFormatError(f'{self._path}: storage {storage.key} has no data')
    stored = memoryview(raw)[storage.start:storage.start + storage.nbytes]
    if len(stored) < storage.nbytes:
      raise CheckpointFormatError(f'{self._path}: storage {storage.key} is truncated')
    dtype = np.dtype(_DTYPES[tensor.dtype])
    if self._byteorder == 'big':
      dtype = dtype.newbyteorder('>')
    flat = np.frombuffer(stored, dtype, count=len(stored) // dtype.itemsize)
    last = tensor.offset + sum((n - 1) * s for n, s in zip(tensor.shape, tensor.strides))
    if math.prod(tensor.shape) and last >= flat.size:  # as_strided would read past the buffer
      raise CheckpointFormatError(f'{self._path}: tensor view {tensor.shape} stride '
                                  f'{tensor.strides} + {tensor.offset} outside its storage')
    view = np.lib.stride_tricks.as_strided(
        flat[tensor.offset:], tensor.shape, [s * dtype.itemsize for s in tensor.strides])
    array = np.array(view, dtype.newbyteorder('='))
    if tensor.dtype == 'bfloat16':
      array = (array.astype(np.uint32) << 16).view(np.float32)
    return array


def _read(f, size: int, path: str) -> bytes:
  data = f.read(size)
  if len(data) < size:
    raise CheckpointFormatError(f'{path}: truncated (storage data ends early)')
  return data


def _load_zip(f, path: str, inert_modules: Sequence[str]):
  with zipfile.ZipFile(f) as archive:
    names = set(archive.namelist())
    pickles = [n for n in names if n.endswith('/data.pkl') and n.count('/') == 1]
    if len(pickles) != 1 or any(n.endswith('/constants.pkl') for n in names):
      raise CheckpointFormatError(
          f'{path}: a zip archive but not a torch.save file (TorchScript or other zip)')
    prefix = pickles[0].removesuffix('data.pkl')
    byteorder = 'little'
    if prefix + 'byteorder' in names:
      byteorder = archive.read(prefix + 'byteorder').decode('ascii', 'replace')
    if byteorder not in ('little', 'big'):
      raise CheckpointFormatError(f'{path}: unknown byte order {byteorder!r}')
    unpickler = _Unpickler(io.BytesIO(archive.read(pickles[0])), path, inert_modules)
    tree = unpickler.load()
    data = {}
    for key in unpickler.storages:
      if f'{prefix}data/{key}' not in names:
        raise CheckpointFormatError(f'{path}: storage {key} missing from the archive')
      data[key] = archive.read(f'{prefix}data/{key}')
  return _Builder(path, data, byteorder).plain(tree)


def _load_legacy(f, path: str, inert_modules: Sequence[str]):
  try:
    magic = _Unpickler(f, path).load()
  except TorchFileError:
    raise
  except Exception:  # pylint: disable=broad-exception-caught
    magic = None  # any unreadable start: not this format
  if magic != LEGACY_MAGIC:
    raise CheckpointFormatError(f'{path}: not a torch file (neither zip nor legacy format)')
  version = _Unpickler(f, path).load()
  if version != LEGACY_PROTOCOL:
    raise CheckpointFormatError(f'{path}: legacy protocol {version!r}, not {LEGACY_PROTOCOL}')
  sys_info = _Unpickler(f, path).load()
  if not isinstance(sys_info, dict) or not sys_info.get('little_endian', True):
    raise CheckpointFormatError(f'{path}: written on a big-endian machine (not supported)')
  unpickler = _Unpickler(f, path, inert_modules, legacy=True)
  tree = unpickler.load()
  keys = _Unpickler(f, path).load()
  if not isinstance(keys, list) or any(k not in unpickler.storages for k in keys):
    raise CheckpointFormatError(f'{path}: storage key list does not match the pickle')
  data = {}
  for key in keys:
    storage = unpickler.storages[key]
    count = int.from_bytes(_read(f, 8, path), 'little')
    if count * np.dtype(_DTYPES[storage.dtype]).itemsize != storage.nbytes:
      raise CheckpointFormatError(f'{path}: storage {key} has {count} elements, not as recorded')
    data[key] = _read(f, storage.nbytes, path)
  return _Builder(path, data, 'little').plain(tree)


def load(path: str | os.PathLike, *, inert_modules: Sequence[str] = ()) -> Any:
  """Reads a `torch.save` file into dicts, lists, tuples, plain values and numpy arrays.

  Args:
    path: the file, zip or legacy format.
    inert_modules: module prefixes (e.g. 'fairseq') whose pickled objects become inert
      {'__global__': 'module.Class', 'args': [...], 'state': ...} dicts instead of being
      refused, for files that keep bookkeeping objects beside the weights. Nothing of them runs.

  Raises:
    UnsafeCheckpointError: the file asks for any other global.
    CheckpointFormatError: not a torch file, truncated, corrupt, or an unknown storage type.
  """
  path = os.fspath(path)
  with open(path, 'rb') as f:
    try:
      if zipfile.is_zipfile(f):
        return _load_zip(f, path, inert_modules)
      f.seek(0)
      if f.read(4) == _ZIP_MAGIC:
        raise CheckpointFormatError(f'{path}: truncated or corrupt zip archive')
      f.seek(0)
      return _load_legacy(f, path, inert_modules)
    except TorchFileError:
      raise
    except Exception as e:  # pylint: disable=broad-exception-caught
      # Untrusted bytes fail in many ways (pickle, zip, struct, type errors): name the file.
      raise CheckpointFormatError(
          f'{path}: truncated or corrupt ({type(e).__name__}: {e})') from e


def as_float32(tree: Any) -> Any:
  """`tree` with every floating-point array cast to float32; other leaves unchanged."""
  if isinstance(tree, np.ndarray):
    return tree.astype(np.float32, copy=False) if np.issubdtype(tree.dtype, np.floating) else tree
  if isinstance(tree, dict):
    return type(tree)((k, as_float32(v)) for k, v in tree.items())
  if isinstance(tree, (list, tuple)):
    return type(tree)(as_float32(v) for v in tree)
  return tree
