"""Converters under hostile or malformed checkpoints (issue 17): config values that size a model
are bounded before anything is allocated, `--set` values the same, malformed content gives one
ConversionError line naming the file and the field, and the CLI prints user errors in one line
with exit 2. Memory bounds are checked in a child process under an address-space limit.
"""

import copy
import os
import pathlib
import subprocess

import hypothesis
import numpy as np
import pytest
from hypothesis import strategies as st

from checkpoints_convert import cpc, ssl, torch_file, vap
from checkpoints_convert.keys import ConversionError
from tests import processes
from tests import torch_files as tf

FIXTURES = pathlib.Path(__file__).parent / 'fixtures' / 'torch'
LIMIT_MB = 512
CONVERTERS = {'cpc': cpc.convert, 'hubert': lambda path: ssl.convert(path, 'hubert'),
              'wavlm': lambda path: ssl.convert(path, 'wavlm'), 'vap': vap.convert,
              'conv_ssl': vap.convert_conv_ssl}
FUZZ_EXAMPLES = int(os.environ.get('CONVSSL_FUZZ_EXAMPLES', 0))  # 0: each test's default


def _conv_ssl_with(**hyper_ar) -> dict:
  """The conv_ssl fixture's tree with conf.model.ar fields set (it has no stored ALiBi slopes)."""
  tree = torch_file.load(FIXTURES / 'conv_ssl' / 'conv_ssl.ckpt')
  tree['hyper_parameters'] = {'conf': {'model': {'ar': hyper_ar}}}
  return tree


def _stereo_with_layers(count: int) -> dict:
  weights = torch_file.load(FIXTURES / 'vap' / 'vap_state_dict.pt')
  weights.update({f'ar.layers.{i}.ln_self_attn.weight': np.zeros(1, np.float32)
                  for i in range(count)})
  return weights


_HUBERT = lambda **model: {'cfg': {'model': {'_name': 'hubert', **model}, 'task': {}}, 'model': {}}
# name -> (format, the checkpoint's tree, what the error must say)
SIZE_BOMBS = {
    'cpc_layers': ('cpc', {'config': {'nLevelsGRU': 3_000_000}, 'weights': {}},
                   'config nLevelsGRU=3000000 must be an integer in [1, 256]'),
    'cpc_width': ('cpc', {'config': {'hiddenEncoder': 10 ** 9, 'hiddenGar': 10 ** 9},
                          'weights': {}}, 'config hiddenEncoder=1000000000'),
    'hubert_layers': ('hubert', _HUBERT(encoder_layers=3_000_000), 'config encoder_layers=3000000'),
    'hubert_heads': ('hubert', _HUBERT(encoder_attention_heads=0),
                     'config encoder_attention_heads=0'),
    'conv_repeat': ('hubert', _HUBERT(conv_feature_layers='[(512,3,2)] * 3000000'),
                    'config conv_feature_layers='),
    'conv_literal': ('hubert', _HUBERT(conv_feature_layers='[' + '(512,3,2),' * 300_000 + ']'),
                     'config conv_feature_layers='),
    'wavlm_buckets': ('wavlm', {'cfg': {'encoder_layers': 12, 'relative_position_embedding': True,
                                        'num_buckets': 10 ** 9}, 'model': {}},
                      'config num_buckets=1000000000'),
    'conv_ssl_heads': ('conv_ssl', _conv_ssl_with(num_heads=10 ** 9),
                       "hyper_parameters['conf']['model']['ar']['num_heads']=1000000000"),
    'vap_layers': ('vap', _stereo_with_layers(300), 'cross_layers (read from the weights)=300'),
}

# Converts each argv[2:] file (FORMAT=PATH) under the memory limit; prints one line per file.
_CHILD = """
import sys
from checkpoints_convert import cpc, ssl, vap
from checkpoints_convert.keys import ConversionError
from tests.torch_files import limit_memory
CONVERTERS = {'cpc': cpc.convert, 'hubert': lambda path: ssl.convert(path, 'hubert'),
              'wavlm': lambda path: ssl.convert(path, 'wavlm'), 'vap': vap.convert,
              'conv_ssl': vap.convert_conv_ssl}
limit_memory(int(sys.argv[1]) << 20)
for arg in sys.argv[2:]:
  name, path = arg.split('=', 1)
  try:
    CONVERTERS[name](path)
    print('converted')
  except ConversionError as error:
    print(repr(str(error)))
"""


def test_config_values_that_size_models_are_bounded_before_anything_is_allocated(tmp_path):
  """Refused quickly, in one line, with the memory the child has: CPC nLevelsGRU=3,000,000 took
  4.7 GB and gave a 463 MB message; encoder_layers=3,000,000 7.7 GB; a conv list of 3,000,000
  entries 2.1 GB."""
  files = {name: tf.write_zip(tmp_path / f'{name}.pt', tf.writable(tree))
           for name, (_, tree, _) in SIZE_BOMBS.items()}
  result = processes.run('-c', _CHILD, str(LIMIT_MB),
                         *(f'{SIZE_BOMBS[n][0]}={p}' for n, p in files.items()), timeout=300,
                         OPENBLAS_NUM_THREADS='1')
  assert result.returncode == 0, result.stderr[-3000:]
  lines = result.stdout.splitlines()
  assert len(lines) == len(files)
  for (name, path), line in zip(files.items(), lines):
    message = eval(line)  # pylint: disable=eval-used  # the repr of a str the child printed
    assert message.startswith(f'{path}: ') and SIZE_BOMBS[name][2] in message, (name, message)
    assert len(message) < 1000, (name, len(message))


@pytest.mark.parametrize('overrides, field', [
    ({'num_heads': 0}, '--set num_heads=0 must be an integer in [1, 1024]'),
    ({'num_layers': 10 ** 7}, '--set num_layers=10000000'),
    ({'dim': 'abc'}, "--set dim='abc'"),
    ({'conv_layers': [[512, 10]]}, '--set conv_layers=[[512, 10]]'),
    ({'conv_layers': [[512, 10, 5]] * 1000}, '--set conv_layers='),
    ({'conv_bias': 'yes'}, "--set conv_bias='yes' must be true or false"),
    ({'extractor_mode': ['layer_norm']}, "--set extractor_mode=['layer_norm'] must be a string"),
])
def test_set_values_are_checked_before_the_file_is_read(monkeypatch, overrides, field):
  monkeypatch.setattr(torch_file, 'load', lambda *args, **kwargs: pytest.fail('file read'))
  with pytest.raises(ConversionError) as error:
    ssl.convert('x.pth', 'hubert', overrides)
  assert str(error.value).startswith('x.pth: ') and field in str(error.value)


_ARRAY = np.zeros(3, np.float32)
_CONV_SSL = FIXTURES / 'conv_ssl' / 'conv_ssl.ckpt'


def _with(path: pathlib.Path, change):
  tree = torch_file.load(path)
  change(tree)
  return tree


MALFORMED = [
    ('cpc', {'config': [1], 'weights': {}}, 'config is a list, not a dict'),
    ('cpc', {'config': {}, 'weights': [1]}, "'weights' is a list, not a dict"),
    ('cpc', {'config': {}, 'weights': {1: _ARRAY}}, "'weights' has the key 1, not a string"),
    ('cpc', {'config': {}, 'weights': {'a': 1}}, "'weights'['a'] is a int, not a tensor"),
    ('cpc', {'config': {'hiddenEncoder': 'abc'}, 'weights': {}}, "config hiddenEncoder='abc'"),
    ('cpc', {'gEncoder': {}, 1: 2}, 'checkpoint_args.json'),
    ('cpc', [1, 2], 'found list'),
    ('hubert', _HUBERT(encoder_layers='12'), "config encoder_layers='12'"),
    ('hubert', {'cfg': {'model': {}, 'task': [1]}, 'model': {}}, "'cfg'['task'] is a list"),
    ('hubert', {'cfg': {'model': {}}, 'model': [1]}, "'model' is a list, not a dict"),
    ('hubert', _HUBERT(conv_bias='yes'), "config conv_bias='yes' must be true or false"),
    ('hubert', _HUBERT(extractor_mode=['x']), "config extractor_mode=['x'] is not supported"),
    ('hubert', _HUBERT(conv_feature_layers=[(512, 10, 5)]), 'config conv_feature_layers=[(512'),
    ('hubert', _HUBERT(conv_feature_layers='[(512, 10)]'), 'config conv_feature_layers='),
    ('hubert', {'cfg': {'model': {'_name': ['hubert']}}, 'model': {}},
     "config _name=['hubert'] must be a string"),
    ('hubert', {1: _ARRAY, 'a': _ARRAY}, 'the state dict has the key 1, not a string'),
    ('hubert', {'a': 1, 2: 3}, "found ['2', 'a']"),
    ('hubert', {'encoder.transformer.layers.0.attention.attention.in_proj_weight': np.zeros(4)},
     'in_proj_weight has shape (4,), not 3 equal parts'),
    ('vap', {1: _ARRAY}, 'the state dict has the key 1, not a string'),
    ('vap', {'ar_channel.layers.0.ln_self_attn.weight': np.zeros((), np.float32)},
     'ar_channel.layers.0.ln_self_attn.weight has shape (), expected 1 non-empty'),
    ('conv_ssl', _with(_CONV_SSL, lambda t: t.update(hyper_parameters=[1])),
     'hyper_parameters is a list, not a dict'),
    ('conv_ssl', _with(_CONV_SSL, lambda t: t.update(hyper_parameters={'conf': [1]})),
     "hyper_parameters['conf'] is a list, not a dict"),
    ('conv_ssl', _with(_CONV_SSL, lambda t: t['hyper_parameters']['conf'].update(
        data={'audio_duration': 'abc'})),
     "hyper_parameters['conf']['data']['audio_duration']='abc' must be a duration"),
    ('conv_ssl', _with(_CONV_SSL, lambda t: t['hyper_parameters']['conf']['model']['ar'].update(
        num_heads='four')),
     "['num_heads']='four' must be an integer"),
]


@pytest.mark.parametrize('name, tree, field', MALFORMED)
def test_malformed_content_is_one_line_naming_the_file_and_the_field(monkeypatch, tmp_path, name,
                                                                     tree, field):
  monkeypatch.setattr(torch_file, 'load', lambda *args, **kwargs: tree)
  path = tmp_path / 'x.pt'
  with pytest.raises(ConversionError) as error:
    CONVERTERS[name](path)
  message = str(error.value)
  assert message.startswith(f'{path}: ') and '\n' not in message and field in message, message


def _cli(*args: str) -> subprocess.CompletedProcess:
  return processes.run('-m', 'checkpoints_convert', *args, timeout=120)


def test_the_cli_prints_a_user_error_in_one_line_and_exits_2(tmp_path):
  src = FIXTURES / 'ssl' / 'hubert_base.pth'
  args = ('hubert', str(src), str(tmp_path / 'out'), '--set', 'num_heads=0')
  result = _cli(*args)
  assert (result.returncode, result.stdout) == (2, '')
  assert result.stderr == (f'python -m checkpoints_convert: error: {src}: --set num_heads=0 must '
                           'be an integer in [1, 1024]\n')
  verbose = _cli(*args, '--verbose')
  assert verbose.returncode == 1 and 'Traceback' in verbose.stderr
  assert verbose.stderr.rstrip().endswith('must be an integer in [1, 1024]')


# Property: a real checkpoint with one node replaced by junk converts or is refused in one line.

_FUZZED = {'cpc': FIXTURES / 'cpc' / 'cpc_l1.pt', 'hubert': FIXTURES / 'ssl' / 'hubert_base.pth',
           'hubert_fairseq': FIXTURES / 'ssl' / 'hubert_base_fairseq.pt',
           'wavlm': FIXTURES / 'ssl' / 'wavlm_base_unilm.pt', 'vap': FIXTURES / 'vap' /
           'vap_lightning.ckpt', 'conv_ssl': _CONV_SSL}
_JUNK = st.one_of(
    st.none(), st.booleans(), st.integers(-2 ** 70, 2 ** 70), st.floats(), st.text(max_size=8),
    st.binary(max_size=8), st.lists(st.integers(-3, 10 ** 6), max_size=4),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=3),
    st.builds(lambda shape, value: np.full(shape, value, np.float32),
              st.lists(st.integers(0, 4), max_size=3).map(tuple), st.floats(-2, 2)),
    st.sampled_from(['${model.dim}', '[(512,10,5)] * 99', '[(0, 10, 5)]', 'gelu', 'layer_norm',
                     'hubert', 'wavlm', 'LSTM', 'gpt']))


def _paths(tree, prefix=()):
  """The path (keys, indices) of every node of `tree`, the root included."""
  yield prefix
  items = tree.items() if isinstance(tree, dict) else (
      enumerate(tree) if isinstance(tree, (list, tuple)) else ())
  for key, value in items:
    yield from _paths(value, prefix + (key,))


def _replaced(tree, path, junk, as_key: bool):
  """`tree` with the node at `path` replaced by `junk` (or, `as_key`, its key by `junk`)."""
  if not path:
    return junk
  tree = copy.copy(tree)
  head, rest = path[0], path[1:]
  if isinstance(tree, tuple):
    return tuple(_replaced(v, rest, junk, as_key) if i == head else v for i, v in enumerate(tree))
  if as_key and not rest and isinstance(tree, dict):
    value = tree.pop(head)
    try:
      tree[junk] = value
    except TypeError:  # an unhashable junk value cannot be a key
      tree[head] = value
    return tree
  tree[head] = _replaced(tree[head], rest, junk, as_key)
  return tree


@pytest.mark.parametrize('fixture', _FUZZED)
def test_fuzz_any_node_replaced_converts_or_is_refused_in_one_line(monkeypatch, fixture):
  tree = torch_file.load(_FUZZED[fixture], inert_modules=('fairseq',))
  paths = list(_paths(tree))
  name = fixture.split('_fairseq')[0]

  @hypothesis.settings(max_examples=FUZZ_EXAMPLES or 40, deadline=None, database=None,
                       suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture])
  @hypothesis.given(path=st.sampled_from(paths), junk=_JUNK, as_key=st.booleans())
  def check(path, junk, as_key):
    changed = _replaced(tree, path, junk, as_key)
    monkeypatch.setattr(torch_file, 'load', lambda *args, **kwargs: changed)
    try:
      CONVERTERS[name]('x.pt')
    except ConversionError as error:
      assert str(error).startswith('x.pt: ') and '\n' not in str(error), str(error)

  check()  # pylint: disable=no-value-for-parameter
