"""The torch-free reader of torch.save files, against fixtures and expectations written by torch.

The fixtures come from tests/fixtures/torch_writers/reader.py (run once with torch installed);
these tests need no torch.
"""

import collections
import io
import json
import pathlib
import pickle
import re
import shutil
import struct
import zipfile

import numpy as np
import pytest

from checkpoints_convert import torch_file

FIXTURES = pathlib.Path(__file__).parent / 'fixtures' / 'torch'
GROUPS = ('tensors', 'views', 'parameters', 'namespace', 'dictconfig')
FORMATS = {'zip': '', 'legacy': '_legacy'}
MARKER = 'PWNED_BY_CHECKPOINT'


def _fixture(name: str, fmt: str = 'zip') -> pathlib.Path:
  return FIXTURES / f'{name}{FORMATS[fmt]}.pt'


def _at(path: pathlib.Path) -> str:
  """A regex matching the path that error messages start with."""
  return re.escape(str(path))


def _expected(name: str):
  """The expectation torch wrote: JSON tree, tensors from the .npz, tuples rebuilt."""
  arrays = np.load(FIXTURES / f'{name}.expected.npz')

  def build(node):
    if isinstance(node, dict):
      if '__tensor__' in node:
        return arrays[node['__tensor__']]
      if '__tuple__' in node:
        return tuple(build(v) for v in node['__tuple__'])
      return {k: build(v) for k, v in node.items()}
    if isinstance(node, list):
      return [build(v) for v in node]
    return node

  return build(json.loads((FIXTURES / f'{name}.expected.json').read_text()))


def _assert_same(actual, expected, where='root'):
  """Exact equality: array dtype, shape and bits; container types, key order; leaf types."""
  if isinstance(expected, np.ndarray):
    assert isinstance(actual, np.ndarray), where
    assert (actual.dtype, actual.shape) == (expected.dtype, expected.shape), where
    np.testing.assert_array_equal(actual, expected, err_msg=where)
  elif isinstance(expected, dict):
    assert isinstance(actual, dict) and list(actual) == list(expected), where
    for key in expected:
      _assert_same(actual[key], expected[key], f'{where}/{key}')
  elif isinstance(expected, (list, tuple)):
    assert type(actual) is type(expected) and len(actual) == len(expected), where
    for i, (a, e) in enumerate(zip(actual, expected)):
      _assert_same(a, e, f'{where}/{i}')
  else:
    assert type(actual) is type(expected) and actual == expected, where


def _plain_types_only(tree) -> bool:
  if isinstance(tree, dict):
    return all(_plain_types_only(k) and _plain_types_only(v) for k, v in tree.items())
  if isinstance(tree, (list, tuple)):
    return all(_plain_types_only(v) for v in tree)
  return isinstance(tree, (np.ndarray, str, int, float, bool, type(None)))


def _write_zip(path: pathlib.Path, data_pkl: bytes, records=None, byteorder=b'little'):
  """A torch-style zip archive written by hand: archive/data.pkl, data/<key>, byteorder."""
  with zipfile.ZipFile(path, 'w') as archive:
    archive.writestr('archive/data.pkl', data_pkl)
    archive.writestr('archive/byteorder', byteorder)
    for key, raw in (records or {}).items():
      archive.writestr(f'archive/data/{key}', raw)
  return path


@pytest.mark.parametrize('fmt', FORMATS)
@pytest.mark.parametrize('name', GROUPS)
def test_fixture_loads_to_the_values_torch_wrote(name, fmt):
  tree = torch_file.load(_fixture(name, fmt))
  _assert_same(tree, _expected(name))
  assert _plain_types_only(tree)


@pytest.mark.parametrize('fmt', FORMATS)
def test_views_honour_strides_offsets_and_a_shared_storage(fmt):
  t = torch_file.load(_fixture('views', fmt))
  base = t['base']
  np.testing.assert_array_equal(t['transposed'], base.T)
  np.testing.assert_array_equal(t['row1'], base[1])
  np.testing.assert_array_equal(t['tail'], base[2:])
  np.testing.assert_array_equal(t['column'], base[:, 2])
  np.testing.assert_array_equal(t['every_other'], base.ravel()[1::2])
  np.testing.assert_array_equal(t['expanded'], np.broadcast_to([1.0, 2.0, 3.0], (2, 3)))
  assert not np.shares_memory(base, t['row1']) and t['row1'].flags.writeable


@pytest.mark.parametrize('fmt', FORMATS)
def test_dtypes_are_kept_and_bfloat16_becomes_exact_float32(fmt):
  nested = torch_file.load(_fixture('tensors', fmt))['nested']
  assert {k: v.dtype.name for k, v in nested.items()} == {
      'float16': 'float16', 'bfloat16': 'float32', 'int64': 'int64', 'bool': 'bool',
      'float64': 'float64', 'int8': 'int8', 'uint8': 'uint8', 'uint16': 'uint16'}
  assert not np.any(nested['bfloat16'].view(np.uint32) & 0xFFFF)  # bfloat16 bits, zero-padded


@pytest.mark.parametrize('fmt', FORMATS)
def test_parameters_and_sizes_become_arrays_and_tuples(fmt):
  t = torch_file.load(_fixture('parameters', fmt))
  assert isinstance(t['param'], np.ndarray) and isinstance(t['tagged'], np.ndarray)
  assert t['size'] == (2, 3) and type(t['size']) is tuple
  assert type(t['state_dict']) is collections.OrderedDict
  assert list(t['state_dict']) == ['0.weight', '0.bias', '1.weight', '1.bias']


@pytest.mark.parametrize('fmt', FORMATS)
def test_namespace_config_becomes_a_plain_dict(fmt):
  config = torch_file.load(_fixture('namespace', fmt))['config']
  assert type(config) is dict
  assert config['hiddenEncoder'] == 256 and config['cpc_mode'] is None
  assert config['nested'] == {'a': 1, 'b': [2.5, 'c']}


@pytest.mark.parametrize('fmt', FORMATS)
def test_omegaconf_dictconfig_becomes_plain_dicts_with_interpolations_unresolved(fmt):
  cfg = torch_file.load(_fixture('dictconfig', fmt))['cfg']
  assert type(cfg) is dict and type(cfg['model']) is dict and type(cfg['task']['labels']) is list
  assert cfg['model']['encoder_embed_dim'] == '${task.dim}'
  assert cfg['task']['data'] == '???' and cfg['empty'] == {}


@pytest.mark.parametrize('fmt', FORMATS)
def test_malicious_file_is_refused_and_runs_nothing(fmt, tmp_path, monkeypatch):
  path = _fixture('malicious', fmt)
  raw = path.read_bytes()
  assert b'system' in raw and f'touch {MARKER}'.encode() in raw  # the attack is really there
  monkeypatch.chdir(tmp_path)
  with pytest.raises(torch_file.UnsafeCheckpointError,
                     match=rf"{_at(path)}: refusing to load global '(os|posix)\.system'"):
    torch_file.load(path)
  assert not (tmp_path / MARKER).exists()


def test_inert_modules_capture_objects_without_running_them(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  evil = torch_file.load(_fixture('malicious'), inert_modules=('posix', 'os'))['evil']
  assert evil['__global__'] in ('posix.system', 'os.system')
  assert evil['args'] == [f'touch {MARKER}'] and not (tmp_path / MARKER).exists()
  date = torch_file.load(_fixture('unknown_global', 'legacy'), inert_modules=('datetime',))
  assert date['date'] == {'__global__': 'datetime.date', 'args': [b'\x07\xe4\x01\x01'],
                          'state': None}  # bytes arrive through the latin-1 _codecs.encode


@pytest.mark.parametrize('fmt', FORMATS)
def test_unknown_global_is_refused_naming_it(fmt):
  with pytest.raises(torch_file.UnsafeCheckpointError, match="global 'datetime.date'"):
    torch_file.load(_fixture('unknown_global', fmt))


@pytest.mark.parametrize('fmt', FORMATS)
def test_unknown_storage_type_is_an_error_naming_it(fmt):
  path = _fixture('unknown_storage', fmt)
  with pytest.raises(torch_file.CheckpointFormatError,
                     match=f"{_at(path)}: unknown storage type 'torch.QInt8Storage'"):
    torch_file.load(path)


@pytest.mark.parametrize('cut', [0.5, 0.98])
@pytest.mark.parametrize('fmt', FORMATS)
def test_truncated_file_is_an_error_naming_it(fmt, cut, tmp_path):
  raw = _fixture('tensors', fmt).read_bytes()
  path = tmp_path / 'cut.pt'
  path.write_bytes(raw[:int(len(raw) * cut)])
  with pytest.raises(torch_file.CheckpointFormatError, match=f'{_at(path)}: .*(truncated|corrupt)'):
    torch_file.load(path)


@pytest.mark.parametrize('content', [b'', b'hello, not a checkpoint\n',
                                     pickle.dumps({'a': 1}, protocol=2)])
def test_non_torch_file_is_an_error_naming_it(content, tmp_path):
  path = tmp_path / 'x.pt'
  path.write_bytes(content)
  with pytest.raises(torch_file.CheckpointFormatError, match=f'{_at(path)}: not a torch file'):
    torch_file.load(path)


def test_zip_without_a_torch_pickle_is_an_error_naming_it(tmp_path):
  path = tmp_path / 'arrays.npz'
  np.savez(path, a=np.ones(2))
  with pytest.raises(torch_file.CheckpointFormatError, match=f'{_at(path)}: .*not a torch.save'):
    torch_file.load(path)


class _PersistentPickler(pickle.Pickler):
  """Pickles `ids`' objects as the given persistent ids (what a crafted file can hold)."""

  def __init__(self, file, ids):
    super().__init__(file, protocol=2)
    self._ids = ids

  def persistent_id(self, obj):
    return self._ids.get(id(obj))


def _crafted_pickle(obj, ids) -> bytes:
  buffer = io.BytesIO()
  _PersistentPickler(buffer, ids).dump(obj)
  return buffer.getvalue()


def test_persistent_ids_other_than_storages_are_refused(tmp_path):
  marker = object()
  path = _write_zip(tmp_path / 'x.pt', _crafted_pickle([marker], {id(marker): ('module', 'x')}))
  with pytest.raises(torch_file.CheckpointFormatError, match=f'{_at(path)}: not a storage record'):
    torch_file.load(path)


def _text(value: str) -> bytes:
  return pickle.SHORT_BINUNICODE + bytes([len(value)]) + value.encode()


def _tensor_pickle(numel: int = 3, legacy_view: bytes | None = None, then: bytes = b'') -> bytes:
  """Opcodes written by hand: `_rebuild_tensor_v2` of 3 elements of FloatStorage '0'.

  `legacy_view`: the legacy persistent id's sixth item (opcodes); `then`: opcodes before STOP.
  """
  op = pickle
  return b''.join([
      op.PROTO, b'\x04', op.GLOBAL, b'torch._utils\n_rebuild_tensor_v2\n', op.MARK,
      op.MARK, _text('storage'), op.GLOBAL, b'torch\nFloatStorage\n', _text('0'), _text('cpu'),
      op.BININT1, bytes([numel]), legacy_view or b'', op.TUPLE, op.BINPERSID,
      op.BININT1, b'\x00', op.BININT1, b'\x03', op.TUPLE1, op.BININT1, b'\x01', op.TUPLE1,
      op.NEWFALSE, op.EMPTY_DICT, op.TUPLE, op.REDUCE, then, op.STOP])


def _write_legacy(path: pathlib.Path, main_pickle: bytes, storage: np.ndarray,
                  little_endian: bool = True) -> pathlib.Path:
  """A legacy-format file written by hand around `main_pickle`, with storage '0'."""
  sys_info = {'protocol_version': 1001, 'little_endian': little_endian,
              'type_sizes': {'short': 2, 'int': 4, 'long': 4}}
  path.write_bytes(b''.join([
      pickle.dumps(torch_file.LEGACY_MAGIC, protocol=2), pickle.dumps(1001, protocol=2),
      pickle.dumps(sys_info, protocol=2), main_pickle, pickle.dumps(['0'], protocol=2),
      struct.pack('<q', storage.size), storage.astype('<f4').tobytes()]))
  return path


def test_legacy_storage_view_is_honoured(tmp_path):
  """Old torch saved views of a storage: (view key, element offset, element count)."""
  values = np.arange(6, dtype=np.float32) / 4
  view = b''.join([pickle.MARK, _text('v'), pickle.BININT1, b'\x02', pickle.BININT1, b'\x03',
                   pickle.TUPLE])
  path = _write_legacy(tmp_path / 'view.pt', _tensor_pickle(6, view), values)
  np.testing.assert_array_equal(torch_file.load(path), values[2:5])
  path = _write_legacy(tmp_path / 'plain.pt', _tensor_pickle(6, pickle.NONE), values)
  np.testing.assert_array_equal(torch_file.load(path), values[:3])


def test_legacy_file_from_a_big_endian_machine_is_refused(tmp_path):
  path = _write_legacy(tmp_path / 'be.pt', _tensor_pickle(3, pickle.NONE), np.ones(3), False)
  with pytest.raises(torch_file.CheckpointFormatError, match=f'{_at(path)}: .*big-endian'):
    torch_file.load(path)


def test_pickle_cannot_rewrite_a_tensor_record(tmp_path):
  """BUILD on a rebuilt tensor would bypass the view checks: it is refused."""
  values = np.array([1.5, -2.0, 3.25], '<f4')
  path = _write_zip(tmp_path / 'ok.pt', _tensor_pickle(), {'0': values.tobytes()})
  np.testing.assert_array_equal(torch_file.load(path), values)
  tamper = b''.join([pickle.EMPTY_DICT, pickle.SHORT_BINUNICODE, b'\x06offset',
                     pickle.BININT, struct.pack('<i', 10 ** 6), pickle.SETITEM, pickle.BUILD])
  path = _write_zip(tmp_path / 'bad.pt', _tensor_pickle(then=tamper), {'0': values.tobytes()})
  with pytest.raises(torch_file.CheckpointFormatError, match=f'{_at(path)}: .*sets the state'):
    torch_file.load(path)


def test_tensor_view_outside_its_storage_is_refused(tmp_path):
  """A crafted stride must not make the reader look past the storage's bytes."""
  with zipfile.ZipFile(_fixture('views')) as archive:
    pkl = archive.read('views/data.pkl')
    records = {n.rsplit('/', 1)[1]: archive.read(n) for n in archive.namelist() if '/data/' in n}
  # base is 3x4 float32 with stride (4, 1); claim stride (40, 1) instead.
  crafted = pkl.replace(b'K\x04K\x01\x86', b'K(K\x01\x86', 1)
  assert crafted != pkl
  path = _write_zip(tmp_path / 'x.pt', crafted, records)
  with pytest.raises(torch_file.CheckpointFormatError, match=f'{_at(path)}: tensor view'):
    torch_file.load(path)


def test_big_endian_zip_is_byteswapped(tmp_path):
  """The views fixture holds float32 only: swap every storage's words and mark it 'big'."""
  with zipfile.ZipFile(_fixture('views')) as archive:
    pkl = archive.read('views/data.pkl')
    records = {n.rsplit('/', 1)[1]: np.frombuffer(archive.read(n), '<f4').astype('>f4').tobytes()
               for n in archive.namelist() if '/data/' in n}
  path = _write_zip(tmp_path / 'big.pt', pkl, records, byteorder=b'big')
  tree = torch_file.load(path)
  _assert_same(tree, _expected('views'))
  assert tree['base'].dtype == np.dtype(np.float32)  # native order, not '>f4'


def test_archive_folder_name_is_found_not_assumed(tmp_path):
  path = tmp_path / 'renamed.pt'
  shutil.copy(_fixture('namespace'), path)  # the archive folder stays 'namespace/'
  _assert_same(torch_file.load(path), _expected('namespace'))


def test_as_float32_casts_floating_arrays_only():
  tree = torch_file.as_float32(torch_file.load(_fixture('tensors')))
  assert tree['nested']['float16'].dtype == np.float32
  assert tree['nested']['float64'].dtype == np.float32
  assert tree['nested']['int64'].dtype == np.int64 and tree['nested']['bool'].dtype == bool
  assert type(tree['tuple']) is tuple and tree['list'][1:] == [3, 'text', None, 1.5, True]
