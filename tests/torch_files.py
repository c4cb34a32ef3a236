"""torch.save files written by hand, without torch, for the reader's and converters' tests with
hostile or malformed input: pickle opcodes for the trees a checkpoint holds (dicts, OrderedDicts,
lists, tuples, scalars, tensors over storages) and any raw opcodes, in zip or legacy containers.
"""

import collections
import dataclasses
import pathlib
import pickle
import resource
import struct
import zipfile

import numpy as np

from checkpoints_convert import torch_file, torch_pickle

# numpy dtype -> torch storage class name
STORAGE_TYPES = {'float32': 'FloatStorage', 'float64': 'DoubleStorage', 'float16': 'HalfStorage',
                 'int64': 'LongStorage', 'int32': 'IntStorage', 'uint8': 'ByteStorage',
                 'bool': 'BoolStorage'}
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
MAX_ZEROS = 1 << 20


@dataclasses.dataclass(frozen=True)
class Raw:
  """Opcodes written as they are (each must push exactly one object)."""
  ops: bytes


@dataclasses.dataclass(frozen=True)
class Tensor:
  """`_rebuild_tensor_v2` of storage `key` (`numel` elements of `dtype`) viewed with `shape`,
  `stride` and `offset`; its bytes are `data` (None: zeros of the storage's size)."""
  key: str
  numel: int
  shape: tuple
  stride: tuple
  offset: int = 0
  dtype: str = 'float32'
  data: bytes | None = None


def tensor(array: np.ndarray, key: str) -> Tensor:
  """A contiguous tensor holding `array`."""
  array = np.array(array, order="C")  # ascontiguousarray would make a 0-d array 1-d
  strides = tuple(s // array.itemsize for s in array.strides)
  return Tensor(key, array.size, array.shape, strides, 0, array.dtype.name,
                array.astype(array.dtype.newbyteorder('<')).tobytes())


def text(value: str) -> bytes:
  data = value.encode('utf-8', 'surrogatepass')
  return pickle.BINUNICODE + struct.pack('<I', len(data)) + data


def global_(module: str, name: str) -> bytes:
  return pickle.GLOBAL + f'{module}\n{name}\n'.encode()


def call(module: str, name: str, *args) -> Raw:
  """`module.name(*args)` through REDUCE."""
  return Raw(global_(module, name) + opcodes(tuple(args)) + pickle.REDUCE)


def opcodes(obj, legacy: bool = False) -> bytes:
  """Opcodes that push `obj` (no memo, so shared objects are written once per reference);
  `legacy`: storage records with the legacy format's sixth item (no view)."""
  ops = lambda value: opcodes(value, legacy)
  if isinstance(obj, Raw):
    return obj.ops
  if obj is None:
    return pickle.NONE
  if isinstance(obj, bool):
    return pickle.NEWTRUE if obj else pickle.NEWFALSE
  if isinstance(obj, int):
    if -2 ** 31 <= obj < 2 ** 31:
      return pickle.BININT + struct.pack('<i', obj)
    data = pickle.encode_long(obj)
    return pickle.LONG4 + struct.pack('<i', len(data)) + data
  if isinstance(obj, float):
    return pickle.BINFLOAT + struct.pack('>d', obj)
  if isinstance(obj, str):
    return text(obj)
  if isinstance(obj, bytes):
    return pickle.BINBYTES + struct.pack('<I', len(obj)) + obj
  if isinstance(obj, Tensor):
    storage = b''.join([pickle.MARK, text('storage'), global_('torch', STORAGE_TYPES[obj.dtype]),
                        text(obj.key), text('cpu'), ops(obj.numel),
                        pickle.NONE if legacy else b'', pickle.TUPLE,
                        pickle.BINPERSID])
    return b''.join([global_('torch._utils', '_rebuild_tensor_v2'), pickle.MARK, storage,
                     ops(obj.offset), ops(tuple(obj.shape)), ops(tuple(obj.stride)),
                     pickle.NEWFALSE, ops(collections.OrderedDict()), pickle.TUPLE,
                     pickle.REDUCE])
  if isinstance(obj, tuple):
    return pickle.MARK + b''.join(map(ops, obj)) + pickle.TUPLE
  if isinstance(obj, list):
    items = b''.join(map(ops, obj))
    return pickle.EMPTY_LIST + (pickle.MARK + items + pickle.APPENDS if obj else b'')
  if isinstance(obj, dict):
    start = (global_('collections', 'OrderedDict') + pickle.EMPTY_TUPLE + pickle.REDUCE
             if isinstance(obj, collections.OrderedDict) else pickle.EMPTY_DICT)
    items = b''.join(ops(k) + ops(v) for k, v in obj.items())
    return start + (pickle.MARK + items + pickle.SETITEMS if obj else b'')
  raise TypeError(f'cannot write a {type(obj).__name__}')


def dumps(obj, legacy: bool = False) -> bytes:
  """A whole pickle of `obj`."""
  return pickle.PROTO + b'\x02' + opcodes(obj, legacy) + pickle.STOP


def _tensors(obj):
  if isinstance(obj, Tensor):
    yield obj
  elif isinstance(obj, dict):
    for k, v in obj.items():
      yield from _tensors(k)
      yield from _tensors(v)
  elif isinstance(obj, (list, tuple)):
    for v in obj:
      yield from _tensors(v)


def storages(obj) -> dict[str, bytes]:
  """Each storage key of `obj`'s tensors -> its bytes: the tensor's `data`, else zeros of the
  storage's size, at most MAX_ZEROS (a storage declared larger is written short)."""
  out = {}
  for t in _tensors(obj):
    zeros = lambda t=t: bytes(min(t.numel * np.dtype(t.dtype).itemsize, MAX_ZEROS))
    out.setdefault(t.key, t.data if t.data is not None else zeros())
  return out


def write_zip(path: pathlib.Path, obj, data_pkl: bytes | None = None,
              records: dict[str, bytes] | None = None,
              compression: int = zipfile.ZIP_STORED) -> pathlib.Path:
  """A torch zip file: `archive/data.pkl` (`data_pkl`, else `dumps(obj)`), `archive/byteorder`
  and `archive/data/<key>` for `records` (else `obj`'s storages)."""
  with zipfile.ZipFile(path, 'w', compression) as archive:
    archive.writestr('archive/data.pkl', dumps(obj) if data_pkl is None else data_pkl)
    archive.writestr('archive/byteorder', b'little')
    for key, raw in (storages(obj) if records is None else records).items():
      archive.writestr(f'archive/data/{key}', raw)
  return path


def write_legacy(path: pathlib.Path, obj, main_pickle: bytes | None = None) -> pathlib.Path:
  """A legacy torch file of `obj` (or of `main_pickle`, with `obj`'s storages)."""
  records = storages(obj)
  sys_info = {'protocol_version': 1001, 'little_endian': True,
              'type_sizes': {'short': 2, 'int': 4, 'long': 4}}
  parts = [pickle.dumps(LEGACY_MAGIC, protocol=2), pickle.dumps(1001, protocol=2),
           pickle.dumps(sys_info, protocol=2), main_pickle or dumps(obj, legacy=True),
           pickle.dumps(list(records), protocol=2)]
  itemsizes = {t.key: np.dtype(t.dtype).itemsize for t in _tensors(obj)}
  for key, raw in records.items():
    parts += [struct.pack('<q', len(raw) // itemsizes[key]), raw]
  path.write_bytes(b''.join(parts))
  return path


def writable(tree):
  """`tree` (as torch_file.load returns it) with each array a `Tensor` of its own storage, for
  `write_zip` / `write_legacy`."""
  keys = iter(range(1 << 62))

  def convert(node):
    if isinstance(node, np.ndarray):
      return tensor(node, str(next(keys)))
    if isinstance(node, dict):
      return type(node)((k, convert(v)) for k, v in node.items())
    if isinstance(node, (list, tuple)):
      return type(node)(convert(v) for v in node)
    return node

  return convert(tree)


def limit_memory(extra_bytes: int) -> None:
  """Caps this process's address space at what it maps now plus `extra_bytes`: an allocation past
  it raises MemoryError (for child processes that check a memory bound)."""
  with open('/proc/self/status', encoding='ascii') as status:
    mapped = next(int(line.split()[1]) * 1024 for line in status if line.startswith('VmSize:'))
  resource.setrlimit(resource.RLIMIT_AS,
                     (mapped + extra_bytes, resource.getrlimit(resource.RLIMIT_AS)[1]))


def reader_state() -> dict:
  """Every attribute of the reader's functions and classes that a pickle could try to set, to
  compare before and after loads."""
  state = {}
  for module in (torch_file, torch_pickle):
    for name, obj in vars(module).items():
      if callable(obj):
        state[module.__name__, name] = (id(obj), getattr(obj, '__defaults__', None),
                                        getattr(obj, '__kwdefaults__', None),
                                        dict(getattr(obj, '__dict__', {})))
  return state


def is_plain(tree, seen: set | None = None) -> bool:
  """Whether `tree` holds only what the reader promises: containers, arrays and plain values
  (each shared object checked once)."""
  seen = set() if seen is None else seen
  if id(tree) in seen:
    return True
  seen.add(id(tree))
  if isinstance(tree, dict):
    return all(is_plain(k, seen) and is_plain(v, seen) for k, v in tree.items())
  if isinstance(tree, (list, tuple, set, frozenset)):
    return all(is_plain(v, seen) for v in tree)
  return isinstance(tree, (np.ndarray, str, bytes, int, float, slice, type(None)))
