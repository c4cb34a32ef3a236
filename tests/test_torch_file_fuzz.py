"""Property-based tests of the torch-file reader (issue 17), with Hypothesis.

Hostile files: generated pickles (calls of admitted and forbidden globals with code-running
arguments, BUILD on globals and records, odd dict keys and set members, deep nesting, shared
references, declared lengths past the input, EXT, random opcodes, odd tensor views) in zip (stored
or deflated, storages dropped, short or inflating far) and legacy files, cut or not. Each is
refused with a one-line TorchFileError or loads to plain values; its peak memory (tracemalloc)
stays within the load's budget; no code runs (no marker file appears); the reader's functions and
classes are unchanged. They run in a child process whose address space may grow by only LIMIT_MB,
a backstop for allocations tracemalloc does not see.

Honest files: generated trees of containers, scalars and arrays load back exactly.

The default suite runs a few hundred examples; a longer run:
  CONVSSL_FUZZ_EXAMPLES=20000 python -m pytest tests/test_torch_file_fuzz.py -n 0
"""

import collections
import os
import pathlib
import pickle
import struct
import subprocess
import sys
import tracemalloc
import zipfile

import hypothesis
import numpy as np
from hypothesis import strategies as st

from checkpoints_convert import torch_file
from tests import processes
from tests import torch_files as tf

FUZZ_EXAMPLES = int(os.environ.get('CONVSSL_FUZZ_EXAMPLES', 0))  # 0: each test's default
BUDGET = 16 << 20
TRACED_SLACK = 1 << 20  # what a load allocates outside its budget: zipfile's and the reader's own
LIMIT_MB = 384  # beyond what the child maps once Hypothesis has started
MARKER = 'PWNED_BY_CHECKPOINT'

_ATTACKS = [f'touch {MARKER}', f"open('{MARKER}', 'w')",
            f"__import__('os').system('touch {MARKER}')", f'import os; os.system("touch {MARKER}")']
_GLOBALS = st.sampled_from([
    ('torch._utils', '_rebuild_tensor_v2'), ('torch._utils', '_rebuild_tensor_v3'),
    ('torch._utils', '_rebuild_parameter'), ('collections', 'OrderedDict'),
    ('collections', 'defaultdict'), ('builtins', 'set'), ('builtins', 'frozenset'),
    ('builtins', 'slice'), ('builtins', 'bytes'), ('__builtin__', 'bytes'), ('torch', 'Size'),
    ('_codecs', 'encode'), ('argparse', 'Namespace'), ('omegaconf.dictconfig', 'DictConfig'),
    ('omegaconf.nodes', 'AnyNode'), ('lightning_fabric.utilities.data', 'AttributeDict'),
    ('builtins', 'list'), ('builtins', 'dict'), ('__builtin__', 'long'), ('typing', 'Any'),
    ('torch', 'FloatStorage'), ('torch', 'float16'), ('torch', 'QInt8Storage'),
    ('os', 'system'), ('posix', 'system'), ('builtins', 'eval'), ('builtins', 'exec'),
    ('builtins', 'getattr'), ('builtins', '__import__'), ('builtins', 'open'),
    ('subprocess', 'Popen'), ('importlib', 'import_module'), ('copyreg', '_reconstructor'),
    ('numpy.core.multiarray', '_reconstruct'), ('pickle', 'loads'), ('sys', 'exit')])
_DIMS = st.one_of(st.integers(0, 6), st.sampled_from([1 << 20, 1 << 31, 1 << 62]))
_TENSORS = st.builds(
    tf.Tensor, key=st.sampled_from('0123'),
    numel=st.one_of(st.integers(0, 64), st.sampled_from([1 << 22, 1 << 40])),
    shape=st.lists(_DIMS, max_size=4).map(tuple), stride=st.lists(_DIMS, max_size=4).map(tuple),
    offset=st.one_of(st.integers(0, 8), st.sampled_from([1 << 30])),
    dtype=st.sampled_from(list(tf.STORAGE_TYPES)),
    data=st.one_of(st.none(), st.binary(max_size=64)))
_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-2 ** 70, 2 ** 70), st.floats(),
                     st.text(max_size=10), st.binary(max_size=10), st.sampled_from(_ATTACKS))


def _raw(*parts) -> tf.Raw:
  return tf.Raw(b''.join(p if isinstance(p, bytes) else tf.opcodes(p) for p in parts))


def _hostile(children):
  """Opcode fragments that each push one object (or break the stream trying)."""
  globals_ = _GLOBALS.map(lambda g: tf.global_(*g))
  items = st.lists(children, max_size=6)
  return st.one_of(
      st.builds(lambda g, args: _raw(g, tuple(args), pickle.REDUCE), globals_, items),
      st.builds(lambda g, args: _raw(g, tuple(args), pickle.NEWOBJ), globals_, items),
      st.builds(lambda target, state: _raw(target, state, pickle.BUILD),
                st.one_of(globals_, children.map(tf.opcodes)), children),
      globals_.map(tf.Raw),  # a global as a value
      items.map(lambda i: _raw(pickle.EMPTY_DICT, pickle.MARK, *i, pickle.SETITEMS)),
      items.map(lambda i: _raw(pickle.EMPTY_SET, pickle.MARK, *i, pickle.ADDITEMS)),
      items.map(lambda i: _raw(pickle.MARK, *i, pickle.FROZENSET)),
      st.builds(lambda c, n: _raw(c, pickle.TUPLE1 * n), children, st.integers(0, 3000)),
      st.builds(lambda c, n: _raw(pickle.MARK, c, pickle.BINPUT + b'\1',
                                  (pickle.BINGET + b'\1') * n, pickle.LIST),
                children, st.integers(0, 300)),  # shared references
      st.builds(lambda op, n: tf.Raw(op + struct.pack('<Q', n)),
                st.sampled_from([pickle.BINBYTES8, pickle.BINUNICODE8, pickle.BYTEARRAY8,
                                 pickle.FRAME]), st.sampled_from([0, 5, 1 << 40])),
      st.integers(1, 255).map(lambda code: tf.Raw(pickle.EXT1 + bytes([code]))),
      st.builds(lambda pid: _raw(pid, pickle.BINPERSID), children),
      st.binary(min_size=1, max_size=16).map(tf.Raw))


_TREES = st.recursive(
    st.one_of(_SCALARS, _TENSORS),
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.lists(children, max_size=4).map(tuple),
        st.dictionaries(st.text(max_size=6), children, max_size=4),
        st.dictionaries(st.text(max_size=6), children, max_size=4).map(collections.OrderedDict),
        _hostile(children)),
    max_leaves=12)


@st.composite
def _files(draw) -> dict:
  """How to write a hostile torch file (`_write`): kept small, Hypothesis holds many."""
  tree = draw(_TREES)
  data = tf.dumps(tree)
  if draw(st.integers(0, 3)) == 3:  # damage the pickle (Hypothesis favours 0: the usual case)
    at = draw(st.integers(0, len(data)))
    data = data[:at] + draw(st.binary(max_size=4)) + data[at + 1:]
  changes = {key: draw(st.sampled_from(['keep', 'keep', 'drop', 'short', 'long']))
             for key in tf.storages(tree)}
  return {'tree': tree, 'data': data, 'changes': changes,
          'kind': draw(st.sampled_from(['stored', 'deflated', 'legacy'])),
          'long': draw(st.sampled_from([1 << 20, 20 << 20])),
          'cut': draw(st.floats(0, 1)) if draw(st.integers(0, 9)) == 9 else None}


def _write(path: pathlib.Path, file: dict) -> None:
  tree, data = file['tree'], file['data']
  if file['kind'] == 'legacy':
    tf.write_legacy(path, tree, main_pickle=data)
  else:
    records = tf.storages(tree)
    for key, change in file['changes'].items():
      if change == 'drop':
        del records[key]
      elif change == 'short':
        records[key] = records[key][:len(records[key]) // 2]
      elif change == 'long':  # inflates far (deflated) or is simply big (stored)
        records[key] += bytes(file['long'])
    tf.write_zip(path, tree, data_pkl=data, records=records,
                 compression=zipfile.ZIP_DEFLATED if file['kind'] == 'deflated' else
                 zipfile.ZIP_STORED)
  if file['cut'] is not None:  # cut the file
    with open(path, 'r+b') as f:
      f.truncate(int(path.stat().st_size * file['cut']))


def fuzz(examples: int) -> None:
  """The hostile-file property over `examples` files, in the current directory (run by the test
  in a child process under a memory limit)."""
  before, path = tf.reader_state(), pathlib.Path('fuzz.pt').absolute()
  limited = []

  @hypothesis.settings(max_examples=examples, deadline=10_000, database=None,
                       suppress_health_check=list(hypothesis.HealthCheck))
  @hypothesis.given(file=_files())
  def check(file):
    if not limited:  # once Hypothesis has set itself up
      tf.limit_memory(LIMIT_MB << 20)
      limited.append(True)
    _write(path, file)
    tracemalloc.start()
    try:
      tree = torch_file.load(path, max_bytes=BUDGET)
      assert tf.is_plain(tree)
    except torch_file.TorchFileError as error:
      assert str(error).startswith(f'{path}: ') and '\n' not in str(error), str(error)
    finally:
      peak = tracemalloc.get_traced_memory()[1]
      tracemalloc.stop()
    assert peak <= BUDGET + TRACED_SLACK, peak
    assert not pathlib.Path(MARKER).exists()
    assert tf.reader_state() == before

  check()  # pylint: disable=no-value-for-parameter


def test_fuzz_hostile_files_are_refused_or_loaded_within_the_budget(tmp_path):
  script = f'from tests import test_torch_file_fuzz as t; t.fuzz({FUZZ_EXAMPLES or 250})'
  result = subprocess.run([sys.executable, '-c', script], cwd=tmp_path, env=processes.env(
      OPENBLAS_NUM_THREADS='1'), capture_output=True, text=True, timeout=3600, check=False)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
  assert not (tmp_path / MARKER).exists()


_ARRAYS = st.builds(
    lambda shape, dtype, seed: np.random.default_rng(seed).normal(size=shape).astype(dtype),
    st.lists(st.integers(0, 5), max_size=3).map(tuple),
    st.sampled_from(['float32', 'float64', 'float16', 'int64', 'int32', 'uint8', 'bool']),
    st.integers(0, 1000))
_PLAIN = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-2 ** 70, 2 ** 70),
              st.floats(allow_nan=False), st.text(max_size=10), _ARRAYS),
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.lists(children, max_size=4).map(tuple),
        st.dictionaries(st.text(max_size=6), children, max_size=4),
        st.dictionaries(st.text(max_size=6), children, max_size=4).map(collections.OrderedDict)),
    max_leaves=10)


def _same(actual, expected) -> bool:
  if isinstance(expected, np.ndarray):
    return (isinstance(actual, np.ndarray) and actual.dtype == expected.dtype
            and np.array_equal(actual, expected))
  if isinstance(expected, dict):
    return (type(actual) is type(expected) and list(actual) == list(expected)
            and all(_same(actual[k], v) for k, v in expected.items()))
  if isinstance(expected, (list, tuple)):
    return (type(actual) is type(expected) and len(actual) == len(expected)
            and all(map(_same, actual, expected)))
  return type(actual) is type(expected) and actual == expected


def _arrays(tree) -> list[np.ndarray]:
  if isinstance(tree, np.ndarray):
    return [tree]
  if isinstance(tree, dict):
    tree = list(tree.values())
  return [a for v in tree for a in _arrays(v)] if isinstance(tree, (list, tuple)) else []


@hypothesis.settings(max_examples=FUZZ_EXAMPLES or 100, deadline=None, database=None)
@hypothesis.given(tree=_PLAIN, legacy=st.booleans())
def test_fuzz_honest_files_load_back_exactly(tmp_path_factory, tree, legacy):
  """Each array its own, writable (some adopt their storage's bytes rather than copy them)."""
  path = tmp_path_factory.mktemp('honest') / 'x.pt'
  (tf.write_legacy if legacy else tf.write_zip)(path, tf.writable(tree))
  loaded = torch_file.load(path)
  assert _same(loaded, tree)
  arrays = _arrays(loaded)
  assert all(a.flags.writeable for a in arrays)
  assert not any(np.shares_memory(a, b) for i, a in enumerate(arrays) for b in arrays[:i])
