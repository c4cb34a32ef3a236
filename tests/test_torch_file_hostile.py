"""The torch-file reader under hostile files (issue 17): each is refused, or read, within the load's
memory budget and quickly, without running code or changing the reader.

Memory is checked in a child process whose address space may grow by only LIMIT_MB once its
imports are done: an allocation the budget did not stop fails there with MemoryError (which the
reader never turns into a format error).
"""

import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from checkpoints_convert import torch_file
from tests import processes
from tests import torch_files as tf

LIMIT_MB = 256
BOMB_BYTES = 384 << 20  # inflated size of the zip bombs: past the child's limit
MARKER = 'PWNED_BY_CHECKPOINT'

# Loads argv[2] with the keyword arguments of argv[3] (JSON) under the memory limit; prints
# 'loaded <sum of the arrays>' or the TorchFileError. Anything else is a traceback and exit 1.
_CHILD = """
import json, sys
import numpy as np
from checkpoints_convert import torch_file
from tests.torch_files import limit_memory

def total(tree, seen):
  if id(tree) in seen:  # shared references count once
    return 0.0
  seen.add(id(tree))
  if isinstance(tree, np.ndarray):
    return float(tree.sum())
  if isinstance(tree, dict):
    return sum(total(v, seen) for v in tree.values())
  if isinstance(tree, (list, tuple)):
    return sum(total(v, seen) for v in tree)
  return 0.0

limit_memory(int(sys.argv[1]) << 20)
try:
  print('loaded', total(torch_file.load(sys.argv[2], **json.loads(sys.argv[3])), set()))
except torch_file.TorchFileError as error:
  print(f'{type(error).__name__}: {error}')
"""


def _load_limited(path, timeout: float = 60, **kwargs) -> str:
  """What the child prints for `torch_file.load(path, **kwargs)` under the memory limit."""
  result = processes.run('-c', _CHILD, str(LIMIT_MB), str(path), json.dumps(kwargs),
                         timeout=timeout, OPENBLAS_NUM_THREADS='1')
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stdout.strip()


def test_a_stride_0_view_is_refused_before_it_is_expanded(tmp_path):
  """A 1-element storage viewed as 20000 x 20000 (1.6 GB) by strides (0, 0)."""
  path = tf.write_zip(tmp_path / 'stride0.pt', {'w': tf.Tensor('0', 1, (20000, 20000), (0, 0))})
  assert path.stat().st_size < 1000
  assert _load_limited(path).startswith(
      f'CheckpointTooLargeError: {path}: tensor of shape (20000, 20000)')
  many = tf.write_zip(tmp_path / 'many.pt',
                      [tf.Tensor('0', 1, (2000, 2000), (0, 0)) for _ in range(200)])
  assert _load_limited(many).startswith('CheckpointTooLargeError')


def test_max_bytes_moves_the_budget_and_views_count_what_they_materialise(tmp_path):
  expanded = tf.write_zip(tmp_path / 'expanded.pt', tf.Tensor(
      '0', 1, (1000, 1000), (0, 0), data=np.float32([2.5]).tobytes()))
  np.testing.assert_array_equal(torch_file.load(expanded), np.full((1000, 1000), 2.5, np.float32))
  with pytest.raises(torch_file.CheckpointTooLargeError, match='raise it with max_bytes'):
    torch_file.load(expanded, max_bytes=3 << 20)  # the 4 MB the view materialises
  honest = tf.write_zip(tmp_path / 'honest.pt', tf.tensor(np.ones(1 << 18, np.float32), '0'))
  assert torch_file.load(honest, max_bytes=4 << 20).sum() == 1 << 18
  with pytest.raises(torch_file.CheckpointTooLargeError, match='storage 0'):
    torch_file.load(honest, max_bytes=1 << 20)


def _write_bomb(archive: zipfile.ZipFile, name: str, head: bytes) -> None:
  """Member `name`: `head`, then zeros up to BOMB_BYTES, deflated (about 2 MB)."""
  with archive.open(name, 'w', force_zip64=True) as member:
    member.write(head)
    zeros = bytes(16 << 20)
    for _ in range(BOMB_BYTES // len(zeros)):
      member.write(zeros)


@pytest.fixture(scope='module')
def storage_bomb(tmp_path_factory):
  """A zip holding only the storage member 'archive/data/0' of BOMB_BYTES, deflated, whose first
  float is 1.5 (the tests append their data.pkl)."""
  path = tmp_path_factory.mktemp('bomb') / 'storage_bomb.zip'
  with zipfile.ZipFile(path, 'w', zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
    _write_bomb(archive, 'archive/data/0', np.float32(1.5).tobytes())
  return path


@pytest.mark.parametrize('offset, expected', [(0, 'loaded 1.5'),
                                              (BOMB_BYTES // 4 - 1, 'CheckpointTooLargeError')])
def test_a_zip_member_is_inflated_only_as_far_as_its_tensors_reach(storage_bomb, tmp_path, offset,
                                                                   expected):
  """A tensor of the bomb's first element loads; one of its last would inflate it all, past the
  budget."""
  path = tmp_path / 'bomb.pt'
  shutil.copy(storage_bomb, path)
  with zipfile.ZipFile(path, 'a') as archive:
    archive.writestr('archive/data.pkl', tf.dumps(
        [tf.Tensor('0', BOMB_BYTES // 4, (1,), (1,), offset=offset)]))
  assert path.stat().st_size < 4 << 20
  assert _load_limited(path).startswith(expected)


def test_a_data_pkl_that_inflates_past_the_budget_is_not_inflated(tmp_path):
  path = tmp_path / 'pickle_bomb.pt'
  with zipfile.ZipFile(path, 'w', zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
    _write_bomb(archive, 'archive/data.pkl', tf.dumps({'a': 1}))
  assert path.stat().st_size < 4 << 20
  assert _load_limited(path).startswith(f'CheckpointTooLargeError: {path}: data.pkl')


@pytest.mark.parametrize('outer, inner, count', [('list', 'bytes', 200_000_000),
                                                 ('frozenset', 'bytes', 10 ** 9),
                                                 ('set', 'bytes', 10 ** 9),
                                                 ('Size', 'bytes', 10 ** 9)])
def test_admitted_builtins_cannot_make_large_objects(tmp_path, outer, inner, count):
  module = 'torch' if outer == 'Size' else 'builtins'
  path = tf.write_zip(tmp_path / 'x.pt', tf.call(module, outer, tf.call('builtins', inner, count)))
  out = _load_limited(path, timeout=30)
  assert out.startswith(f'CheckpointFormatError: {path}: builtins.bytes called with ({count},)')


@pytest.mark.parametrize('target', [
    tf.global_('torch._utils', '_rebuild_tensor_v2'), tf.global_('collections', 'OrderedDict'),
    tf.global_('argparse', 'Namespace'), tf.global_('torch', 'FloatStorage'),
    tf.global_('builtins', 'list'), tf.opcodes(tf.Tensor('0', 1, (1,), (1,))),
])
@pytest.mark.parametrize('state', [{'__defaults__': (1, 2, 3, 4)},
                                   (None, {'__defaults__': (1, 2, 3, 4), 'dtype': 'float64'})])
def test_build_cannot_change_the_reader_or_its_records(tmp_path, target, state):
  before = tf.reader_state()
  path = tf.write_zip(tmp_path / 'x.pt', tf.Raw(target + tf.opcodes(state) + pickle.BUILD))
  with pytest.raises(torch_file.CheckpointFormatError, match=f'{path}: the pickle sets the state'):
    torch_file.load(path)
  assert tf.reader_state() == before
  honest = tf.write_zip(tmp_path / 'honest.pt', {'w': tf.tensor(np.arange(4.0), '0')})
  np.testing.assert_array_equal(torch_file.load(honest)['w'], np.arange(4.0))


def test_a_global_used_as_a_value_becomes_its_name(tmp_path):
  globals_ = [('torch._utils', '_rebuild_tensor_v2'), ('builtins', 'list'),
              ('torch', 'HalfStorage')]
  path = tf.write_zip(tmp_path / 'x.pt', [tf.Raw(tf.global_(*g)) for g in globals_])
  assert torch_file.load(path) == ['torch._utils._rebuild_tensor_v2', 'builtins.list',
                                   'torch.HalfStorage']


def test_non_regular_files_are_refused_without_reading_them(tmp_path):
  fifo = tmp_path / 'fifo.pt'
  os.mkfifo(fifo)
  for path in ('/dev/zero', fifo, tmp_path):
    assert _load_limited(path, timeout=30) == (
        f'CheckpointFormatError: {path}: not a regular file (a device, FIFO or directory)')


def test_a_deeply_nested_dict_key_is_refused_without_crashing(tmp_path):
  """Hashing a tuple nested 300,000 deep overflows CPython's C stack (a segfault)."""
  deep = pickle.EMPTY_DICT + pickle.NONE + pickle.TUPLE1 * 300_000 + pickle.NONE + pickle.SETITEM
  path = tf.write_zip(tmp_path / 'deep.pt', tf.Raw(deep))
  assert _load_limited(path, max_bytes=1 << 30).startswith(
      f'CheckpointFormatError: {path}: truncated or corrupt (ValueError: a dict key (')


def test_colliding_int_keys_are_refused_at_once(tmp_path):
  """Ints k * (2**61 - 1) share one hash: 8000 of them took the old reader seconds (quadratic)."""
  keys = b''.join(tf.opcodes(k * (2 ** 61 - 1)) + pickle.NONE for k in range(1, 8001))
  path = tf.write_zip(tmp_path / 'collide.pt',
                      tf.Raw(pickle.EMPTY_DICT + pickle.MARK + keys + pickle.SETITEMS))
  assert _load_limited(path, timeout=10).startswith(
      f'CheckpointFormatError: {path}: truncated or corrupt (ValueError: a dict key 2305')


@pytest.mark.parametrize('opcodes', [
    pickle.BINBYTES8 + struct.pack('<Q', 1 << 40), pickle.BINUNICODE8 + struct.pack('<Q', 1 << 40),
    pickle.BYTEARRAY8 + struct.pack('<Q', 1 << 40), pickle.FRAME + struct.pack('<Q', 1 << 40),
    pickle.LONG4 + struct.pack('<i', 2 ** 31 - 1),
])
def test_declared_lengths_past_the_input_allocate_nothing(tmp_path, opcodes):
  main = pickle.PROTO + b'\x04' + opcodes + b'\0' * 100 + pickle.STOP
  for path in (tf.write_legacy(tmp_path / 'legacy.pt', {}, main_pickle=main),
               tf.write_zip(tmp_path / 'zip.pt', None, data_pkl=main)):
    out = _load_limited(path)
    assert out.startswith(f'CheckpointFormatError: {path}:') and 'MemoryError' not in out


def test_the_zip_directory_is_charged_before_it_is_read(tmp_path):
  path = tmp_path / 'entries.pt'
  with zipfile.ZipFile(path, 'w') as archive:
    archive.writestr('archive/data.pkl', tf.dumps(None))
    for i in range(3000):
      archive.writestr(f'archive/extra/{i}', b'')
  assert torch_file.load(path) is None
  with pytest.raises(torch_file.CheckpointTooLargeError, match='the zip directory'):
    torch_file.load(path, max_bytes=2 << 20)


def test_shared_references_are_built_once(tmp_path):
  """10,000 references to one 10,000-item tuple: copied per reference that is 800 MB."""
  ints = b''.join(tf.opcodes(i) for i in range(10_000))
  ops = (pickle.EMPTY_LIST + pickle.MARK + pickle.MARK + ints + pickle.TUPLE + pickle.BINPUT + b'\1'
         + (pickle.BINGET + b'\1') * 9_999 + pickle.APPENDS)
  path = tf.write_zip(tmp_path / 'dag.pt', tf.Raw(ops))
  assert _load_limited(path) == 'loaded 0.0'
  tree = torch_file.load(path)
  assert len(tree) == 10_000 and all(t is tree[0] for t in tree) and tree[0] == tuple(range(10_000))


def test_ext_opcodes_are_refused_even_when_the_process_registered_them(tmp_path):
  """The pure-Python unpickler's EXT takes an object from copyreg's extension cache, which an
  earlier pickle filled (here with os.system), without asking find_class: EXT is refused."""
  path = tf.write_zip(tmp_path / 'ext.pt', tf.Raw(
      pickle.EXT1 + b'\xf0' + tf.opcodes((f'touch {MARKER}',)) + pickle.REDUCE))
  script = f"""
import copyreg, os, pickle, sys
from checkpoints_convert import torch_file
copyreg.add_extension(os.system.__module__, 'system', 240)
assert pickle.loads(pickle.dumps(os.system, protocol=2)) is os.system  # now in the cache
try:
  torch_file.load(sys.argv[1])
except torch_file.TorchFileError as error:
  print(error)
"""
  done = subprocess.run([sys.executable, '-c', script, str(path)], cwd=tmp_path,
                        env=processes.env(), capture_output=True, text=True, timeout=60,
                        check=False)
  assert done.returncode == 0, done.stderr[-2000:]
  assert f'{path}: the pickle uses an opcode torch files never use (EXT' in done.stdout
  assert not (tmp_path / MARKER).exists()
