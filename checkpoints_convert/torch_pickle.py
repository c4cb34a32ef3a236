"""The restricted unpickler of torch files (`torch_file.load`): what a pickle may name, call, change
and allocate. Nothing here imports torch, and loading a pickle never runs code from it.

The pure-Python `pickle._Unpickler` runs the opcodes, with these replaced or checked:
* globals (`find_class`): the `_ADMITTED` callables (tensor and parameter rebuilds, the containers
  torch pickles through calls), storage types, dtypes and the types omegaconf keeps in its metadata
  (these two become their names), inert stand-ins for config classes; any other is refused;
* calls (REDUCE, NEWOBJ, NEWOBJ_EX, OBJ, INST) only of an admitted global, with its arguments
  checked; the pickle never holds a function or a class, so it cannot change one;
* BUILD (setting an object's state) only on the reader's config stand-ins and the dicts it made;
* containers grow only through their own opcodes; dict keys and set members are scalars (no
  tuples: hashing a deeply nested tuple overflows CPython's stack, and crafted ints or tuples
  collide into quadratic time);
* EXT (the process's copyreg registry), protocol 5's out-of-band buffers and BYTEARRAY8 (which
  allocates its declared length before reading) are refused;
* every opcode, every byte read and every object a call makes is charged to the load's `Budget`,
  and reads never ask for more bytes than the input holds.
"""

import _compat_pickle
import collections
import dataclasses
import functools
import math
import pickle
import reprlib
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

import numpy as np

from convssl_jax import errors

# torch dtype name -> numpy dtype of its stored bytes (bfloat16 read as its raw 16 bits).
DTYPES = {
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
# Config classes replaced by inert stand-ins (see `torch_file._Builder`).
_CONFIG_CLASSES = ('argparse.Namespace',)
_CONFIG_MODULES = ('omegaconf.dictconfig', 'omegaconf.listconfig', 'omegaconf.nodes',
                   'omegaconf.base')
# Lightning's `hyper_parameters` container, a dict subclass: read as a plain dict.
_DICT_CLASSES = ('pytorch_lightning.utilities.parsing.AttributeDict',
                 'lightning_fabric.utilities.data.AttributeDict',
                 'lightning.fabric.utilities.data.AttributeDict')
# Types that omegaconf records in node metadata (ref_type, object_type, key_type): their names.
_TYPE_NAMES = ('builtins.dict', 'builtins.list', 'builtins.tuple', 'builtins.int',
               'builtins.float', 'builtins.str', 'builtins.bool', 'typing.Any')

# Bytes charged per opcode: at least what the objects one opcode makes take, with their copy in
# the loaded tree and its memo entry (measured with tracemalloc: an empty set ~590, an empty dict
# or list ~290, a global's record ~370, a tuple ~250).
OPCODE_BYTES = 320
_OPCODE_BYTES = {**dict.fromkeys((pickle.EMPTY_SET, pickle.FROZENSET), 1024),
                 **dict.fromkeys((pickle.EMPTY_DICT, pickle.DICT, pickle.EMPTY_LIST, pickle.LIST,
                                  pickle.GLOBAL, pickle.STACK_GLOBAL, pickle.INST, pickle.OBJ,
                                  pickle.NEWOBJ, pickle.NEWOBJ_EX), 512)}
_MAX_DIMS = 64  # numpy's limit
_MAX_ARGS = 16  # no admitted call takes more
_HASH_MODULUS = sys.hash_info.modulus  # ints below it hash to themselves: no crafted collisions
_KEY_TYPES = (str, bytes, float, bool, type(None))


class _Short(reprlib.Repr):
  """Reprs of values from a file for messages, bounded in length and work: containers cut short,
  an array by its shape, an int too long to print by its size."""

  def repr_int(self, x, level):
    return super().repr_int(x, level) if x.bit_length() <= 64 else f'<int of {x.bit_length()} bits>'

  def repr_ndarray(self, x, level):
    del level
    return f'array of shape {x.shape} ({x.dtype})'


short = _Short(maxstring=60, maxother=60, maxlevel=3, maxlist=4, maxtuple=4, maxdict=4,
               maxset=4, maxfrozenset=4).repr


def one_line(message: str) -> str:
  """`message` with its unprintable characters escaped (a newline in a file name or a key from
  the file), so that it prints as one line."""
  return ''.join(c if c.isprintable() else repr(c)[1:-1] for c in message)


class TorchFileError(errors.UserError):
  """A file that `load` cannot read; the message (one line) starts with the file's path."""

  def __init__(self, message: str):
    super().__init__(one_line(message))


class CheckpointFormatError(TorchFileError):
  """Not a torch file, truncated or corrupt, or holding data this reader cannot rebuild."""


class UnsafeCheckpointError(TorchFileError):
  """The file's pickle asks for a global or a call outside the allow-list."""


class CheckpointTooLargeError(TorchFileError):
  """Reading the file would take more memory than the load's budget."""


class Budget:
  """The bytes one load may allocate; `charge` refuses the load once they are spent.

  `hint`: how the limit was set, for the message.
  """

  def __init__(self, path: str, limit: int, hint: str = ''):
    self.path, self.limit, self.used, self._hint = path, limit, 0, hint

  def charge(self, nbytes: int, what: str = 'the pickle') -> None:
    self.used += nbytes
    if self.used > self.limit:
      raise CheckpointTooLargeError(
          f"{self.path}: {what} takes the reader past its memory budget of {self.limit:,} bytes"
          f'{self._hint}; if you trust the file, raise it with max_bytes= (python -m '
          'checkpoints_convert --max_bytes)')


@dataclasses.dataclass(frozen=True)
class StorageType:
  """What a pickled `torch.<X>Storage` global resolves to: its name and dtype."""
  qualname: str
  dtype: str


@dataclasses.dataclass(frozen=True)
class Storage:
  """Bytes [start, start + nbytes) of the file's storage `key`, holding `dtype` elements."""
  key: str
  dtype: str
  start: int
  nbytes: int


@dataclasses.dataclass(frozen=True, eq=False)
class Tensor:
  """A tensor to build once the storages are read: a strided view of `storage` as `dtype`."""
  storage: Storage
  dtype: str
  offset: int
  shape: tuple[int, ...]
  strides: tuple[int, ...]

  @property
  def end(self) -> int:
    """Bytes of the storage (from its start) that the view reaches."""
    if not math.prod(self.shape):
      return 0
    last = self.offset + sum((n - 1) * s for n, s in zip(self.shape, self.strides))
    return (last + 1) * np.dtype(DTYPES[self.dtype]).itemsize


@dataclasses.dataclass(frozen=True)
class Admitted:
  """An admitted global: the pickle may call it (`make(*args)`), and can reach nothing else."""
  qualname: str
  make: Callable


class DictStandIn(dict):
  """Stands in for a dict subclass (`_DICT_CLASSES`): its items, nothing else."""


class StandIn:
  """Inert stand-in for a config (or `inert_modules`) object: its class name, the pickled
  arguments and state; nothing of it runs."""
  __slots__ = ('qualname', 'args', 'state')

  def __init__(self, qualname: str, *args):
    self.qualname, self.args, self.state = qualname, args, None


def _index_tuple(values, what: str) -> tuple[int, ...]:
  if (not isinstance(values, (tuple, list)) or len(values) > _MAX_DIMS
      or any(type(v) is not int or v < 0 for v in values)):
    raise ValueError(f'tensor {what} {short(values)} is not a tuple of at most {_MAX_DIMS} '
                     'non-negative ints')
  return tuple(values)


def _tensor(storage, dtype: str, offset, size, stride) -> Tensor:
  if not isinstance(storage, Storage):
    raise ValueError(f'tensor rebuilt from a {type(storage).__name__}, not a storage')
  if type(offset) is not int or offset < 0:
    raise ValueError(f'tensor storage offset {short(offset)} is not a non-negative int')
  shape, strides = _index_tuple(size, 'size'), _index_tuple(stride, 'stride')
  if len(shape) != len(strides):
    raise ValueError(f'tensor size {shape} and stride {strides} differ in length')
  return Tensor(storage, dtype, offset, shape, strides)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, *ignored) -> Tensor:
  """Stands in for torch._utils._rebuild_tensor_v2: a view of a typed storage.

  `ignored`: requires_grad, backward hooks and (since torch 1.13) metadata.
  """
  del ignored
  dtype = storage.dtype if isinstance(storage, Storage) else ''
  return _tensor(storage, dtype, storage_offset, size, stride)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks,
                       dtype, *ignored) -> Tensor:
  """Stands in for torch._utils._rebuild_tensor_v3: bytes of an untyped storage as `dtype`."""
  del requires_grad, backward_hooks, ignored
  name = dtype.removeprefix('torch.') if isinstance(dtype, str) else None
  if name not in DTYPES:
    raise ValueError(f'tensor dtype {short(dtype)} is not a known torch dtype')
  return _tensor(storage, name, storage_offset, size, stride)


def _rebuild_parameter(data, *ignored) -> Tensor:
  """Stands in for torch._utils._rebuild_parameter(_with_state): the parameter's tensor.

  `ignored`: requires_grad, backward hooks and, with state, the Python attributes.
  """
  del ignored
  if not isinstance(data, Tensor):
    raise ValueError(f'parameter rebuilt from a {type(data).__name__}, not a tensor')
  return data


def _checked_keys(items, what: str):
  """`items`, if each can key a dict or sit in a set without running long (see the module doc)."""
  for k in items:
    if not (type(k) in _KEY_TYPES or (type(k) is int and -_HASH_MODULUS < k < _HASH_MODULUS)):
      raise ValueError(f'{what} {short(k)}: keys and set members must be strings, bytes, '
                       'floats or ints below 2**61')
  return items


def _set_of(kind: type):
  def make(items=()):
    """Stands in for builtins.set / frozenset, which protocol-2 pickles call with a list."""
    if type(items) not in (list, tuple):
      raise ValueError(f'{kind.__name__} of a {type(items).__name__}, not a list')
    return kind(_checked_keys(items, f'a {kind.__name__} member'))
  return make


def _empty_dict(*default_factory) -> dict:
  """Stands in for collections.defaultdict (omegaconf metadata caches): a plain dict."""
  if len(default_factory) > 1:
    raise ValueError('defaultdict with more than a default factory')
  return {}


def _slice(*args) -> slice:
  if len(args) > 3 or any(a is not None and type(a) is not int for a in args):
    raise ValueError(f'slice{short(args)} is not of ints and None')
  return slice(*args)


def _size(dims) -> tuple[int, ...]:
  """Stands in for torch.Size, a tuple subclass pickled as Size((d0, d1, ...))."""
  if type(dims) not in (tuple, list) or len(dims) > _MAX_DIMS:
    raise ValueError(f'torch.Size of {short(dims)}')
  return tuple(dims)


def _latin1_bytes(text, encoding) -> bytes:
  """Stands in for _codecs.encode, which protocol-2 pickles use for bytes: latin-1 only."""
  if not isinstance(text, str) or encoding not in ('latin1', 'latin-1'):
    raise ValueError(f'_codecs.encode with a {type(text).__name__} as {short(encoding)}')
  return text.encode('latin1')


def _ordered_dict() -> collections.OrderedDict:
  """Stands in for collections.OrderedDict, which pickles call without arguments (then SETITEMS)."""
  return collections.OrderedDict()


def _dict_stand_in() -> 'DictStandIn':
  return DictStandIn()


def _empty_bytes() -> bytes:
  """Stands in for builtins.bytes, which protocol-2 pickles call without arguments for b''."""
  return b''


_ADMITTED = {
    '_codecs.encode': _latin1_bytes,
    'collections.OrderedDict': _ordered_dict,
    'collections.defaultdict': _empty_dict,
    'torch._utils._rebuild_tensor_v2': _rebuild_tensor_v2,
    'torch._utils._rebuild_tensor_v3': _rebuild_tensor_v3,
    'torch._utils._rebuild_parameter': _rebuild_parameter,
    'torch._utils._rebuild_parameter_with_state': _rebuild_parameter,
    'torch.Size': _size,
    'builtins.set': _set_of(set),
    'builtins.frozenset': _set_of(frozenset),
    'builtins.slice': _slice,
    'builtins.bytes': _empty_bytes,
}


def _py3_name(module: str, name: str) -> tuple[str, str]:
  """Python 2 names of protocol-2 pickles (`__builtin__.long`) -> Python 3 ones, as pickle does."""
  if (module, name) in _compat_pickle.NAME_MAPPING:
    return _compat_pickle.NAME_MAPPING[(module, name)]
  return _compat_pickle.IMPORT_MAPPING.get(module, module), name


def _within(module: str, prefixes: Sequence[str]) -> bool:
  return any(module == p or module.startswith(p + '.') for p in prefixes)


def _what(obj) -> str:
  """A global by its name, anything else by its type, for messages."""
  if isinstance(obj, (Admitted, StorageType)):
    return f"'{obj.qualname}'"
  return f'an object of type {type(obj).__name__}'


def _ascii(value):
  return value.decode('ascii') if isinstance(value, bytes) else value


class _Input:
  """`read`/`readline` of `file` that never ask for more than the `size` bytes left from where it
  is, so that no declared length allocates more than the input holds; each byte read is charged
  4 times (a string decoded from UTF-8 takes up to 4 bytes a character)."""

  def __init__(self, file, size: int, budget: Budget):
    self._file, self._left, self._budget = file, size, budget

  def _take(self, data: bytes) -> bytes:
    self._left -= len(data)
    self._budget.charge(4 * len(data))
    return data

  def read(self, n: int) -> bytes:
    return self._take(self._file.read(min(n, self._left)))

  def readline(self) -> bytes:
    line = self._take(self._file.readline(self._left))
    if not line.endswith(b'\n'):  # pickle's text opcodes would take a cut line for a whole one
      raise pickle.UnpicklingError('pickle data was truncated')
    return line


def _metered(handler, cost: int):
  @functools.wraps(handler)
  def run(self):
    self.budget.charge(cost)
    handler(self)
  return run


class Unpickler(pickle._Unpickler):  # pylint: disable=protected-access
  """One pickle of a torch file from `file` (at most `size` more bytes), as records and plain
  containers (see the module doc). `storages` and `tensors` say what storage bytes it refers to.
  """

  def __init__(self, file, size: int, path: str, budget: Budget,
               inert_modules: Sequence[str] = (), legacy: bool = False):
    super().__init__(_Input(file, size, budget), encoding='utf-8')
    self.budget, self._path = budget, path
    self._inert, self._legacy = tuple(inert_modules), legacy
    self.storages: dict[str, Storage] = {}  # key -> the whole storage, as first recorded
    self.tensors: dict[int, Tensor] = {}  # every tensor the pickle made, by id

  def _refuse(self, what: str) -> NoReturn:
    raise CheckpointFormatError(f'{self._path}: {what}')

  def find_class(self, module, name):
    module, name = _py3_name(module, name)
    qualname = f'{module}.{name}'
    if module in ('torch', 'torch.storage') and name.endswith('Storage'):
      if name not in _STORAGES:
        self._refuse(f"unknown storage type '{qualname}'")
      return StorageType(qualname, _STORAGES[name])
    if (module == 'torch' and name in DTYPES) or qualname in _TYPE_NAMES:
      return qualname  # a dtype (`torch.float16`) or a type in omegaconf metadata: its name
    if qualname in _ADMITTED:
      return Admitted(qualname, _ADMITTED[qualname])
    if qualname in _DICT_CLASSES:
      return Admitted(qualname, _dict_stand_in)
    if (qualname in _CONFIG_CLASSES or module in _CONFIG_MODULES
        or _within(module, self._inert)):
      return Admitted(qualname, functools.partial(StandIn, qualname))
    raise UnsafeCheckpointError(f"{self._path}: refusing to load global '{qualname}'")

  def persistent_load(self, pid):
    """Storage records: ('storage', type, key, location, numel), + view metadata in legacy."""
    if (not isinstance(pid, tuple) or len(pid) != (6 if self._legacy else 5)
        or _ascii(pid[0]) != 'storage' or not isinstance(pid[1], StorageType)
        or type(pid[2]) is not str or type(pid[4]) is not int or pid[4] < 0):
      self._refuse(f'not a storage record: {short(pid)}')
    dtype, key, numel = pid[1].dtype, pid[2], pid[4]
    nbytes = numel * np.dtype(DTYPES[dtype]).itemsize
    storage = self.storages.setdefault(key, Storage(key, dtype, 0, nbytes))
    if storage != Storage(key, dtype, 0, nbytes):
      self._refuse(f'storage {key} recorded twice, differently')
    view = pid[5] if self._legacy else None
    if view is None:
      return storage
    # Old torch versions saved views of a storage: (view key, element offset, element count).
    if (not isinstance(view, tuple) or len(view) != 3
        or any(type(v) is not int or v < 0 for v in view[1:]) or sum(view[1:]) > numel):
      self._refuse(f'bad storage view {short(view)}')
    itemsize = np.dtype(DTYPES[dtype]).itemsize
    return Storage(key, dtype, view[1] * itemsize, view[2] * itemsize)

  def _call(self, target, args, kwargs=None):
    """What calling `target` (an admitted global) with `args` makes, charged to the budget."""
    if not isinstance(target, Admitted):
      if isinstance(target, str):  # a global admitted as a value only (or any string)
        raise UnsafeCheckpointError(f"{self._path}: refusing to call '{target:.100}'")
      self._refuse(f'the pickle calls {_what(target)}')
    if type(args) is not tuple or len(args) > _MAX_ARGS or kwargs:
      self._refuse(f'{target.qualname} called with {short(args)} {short(kwargs or "")}')
    try:
      made = target.make(*args)
    except TypeError:  # the wrong number of arguments
      self._refuse(f'{target.qualname} called with {short(args)}')
    if isinstance(made, Tensor):
      self.tensors[id(made)] = made
    elif isinstance(made, (tuple, set, frozenset, bytes)):
      self.budget.charge(2 * sys.getsizeof(made))  # and its copy in the loaded tree
    return made

  # Opcode handlers replaced (see the module doc); `dispatch` charges each opcode's bytes.

  def _reduce(self):
    args = self.stack.pop()
    self.stack[-1] = self._call(self.stack[-1], args)

  def _newobj(self):
    args = self.stack.pop()
    self.stack[-1] = self._call(self.stack[-1], args)

  def _newobj_ex(self):
    kwargs, args = self.stack.pop(), self.stack.pop()
    self.stack[-1] = self._call(self.stack[-1], args, kwargs)

  def _instantiate(self, klass, args):  # OBJ and INST
    self.append(self._call(klass, tuple(args)))

  def _build(self):
    state = self.stack.pop()
    target = self.stack[-1]
    if isinstance(target, StandIn):
      target.state = state
    elif type(target) not in (collections.OrderedDict, DictStandIn):  # their state is dropped
      self._refuse(f'the pickle sets the state of {_what(target)}')

  def _dict_target(self):
    target = self.stack[-1]
    if type(target) not in (dict, collections.OrderedDict, DictStandIn):
      self._refuse(f'the pickle sets items of a {type(target).__name__}')
    return target

  def _setitem(self):
    value, key = self.stack.pop(), self.stack.pop()
    self._dict_target()[_checked_keys((key,), 'a dict key')[0]] = value

  def _pairs(self):
    items = self.pop_mark()
    if len(items) % 2:
      self._refuse('the pickle gives a dict key without a value')
    return zip(_checked_keys(items[::2], 'a dict key'), items[1::2])

  def _setitems(self):
    pairs = self._pairs()
    self._dict_target().update(pairs)

  def _dict(self):
    self.append(dict(self._pairs()))

  def _list_target(self):
    if type(self.stack[-1]) is not list:
      self._refuse(f'the pickle appends to a {type(self.stack[-1]).__name__}')
    return self.stack[-1]

  def _append(self):
    value = self.stack.pop()
    self._list_target().append(value)

  def _appends(self):
    items = self.pop_mark()
    self._list_target().extend(items)

  def _additems(self):
    items = self.pop_mark()
    if type(self.stack[-1]) is not set:
      self._refuse(f'the pickle adds set items to a {type(self.stack[-1]).__name__}')
    self.stack[-1].update(_checked_keys(items, 'a set member'))

  def _frozenset(self):
    self.append(frozenset(_checked_keys(self.pop_mark(), 'a frozenset member')))

  def _put(self):
    index = int(self.readline()[:-1])
    if not 0 <= index < 1 << 32:  # as LONG_BINPUT's; a crafted big int would collide in the memo
      self._refuse(f'memo index {short(index)}')
    self.memo[index] = self.stack[-1]

  def _unsupported(self):
    self._refuse('the pickle uses an opcode torch files never use (EXT, out-of-band buffers or '
                 'BYTEARRAY8)')

  _BASE = pickle._Unpickler.dispatch  # pylint: disable=protected-access
  dispatch = {op[0]: _metered(handler, _OPCODE_BYTES.get(op, OPCODE_BYTES)) for op, handler in {
      **{bytes([k]): v for k, v in _BASE.items()},
      pickle.REDUCE: _reduce, pickle.NEWOBJ: _newobj, pickle.NEWOBJ_EX: _newobj_ex,
      pickle.BUILD: _build, pickle.SETITEM: _setitem, pickle.SETITEMS: _setitems,
      pickle.DICT: _dict, pickle.APPEND: _append, pickle.APPENDS: _appends,
      pickle.ADDITEMS: _additems, pickle.FROZENSET: _frozenset, pickle.PUT: _put,
      **dict.fromkeys((pickle.EXT1, pickle.EXT2, pickle.EXT4, pickle.NEXT_BUFFER,
                       pickle.READONLY_BUFFER, pickle.BYTEARRAY8), _unsupported),
  }.items()}


