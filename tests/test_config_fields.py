"""Config fields as a person reads them: comments read from the config sources, the printed config
(`--mode=config`), the nearest names of a field that does not exist."""

import textwrap

import ml_collections
import pytest

from configs import cpc_pretrain, ulm, vap
from convssl_jax import config_fields
from tests import processes

SOURCE = textwrap.dedent('''
    import ml_collections

    def part_config():
      """Docstrings are not comments."""
      p = ml_collections.ConfigDict()
      p.size = 3  # how big
      p.rate = 0.5  # a long comment that
      #               goes on here
      # Above the field, two lines
      # of comment.
      p.name = 'x'
      p.a, p.b = 1, 2  # both
      p.nested = ml_collections.ConfigDict(dict(  # a section
          inner=1,  # inside
          # above inner2
          inner2=2,
          plain=3,
      ))
      p.silent = 0
      return p

    def get_config():
      config = ml_collections.ConfigDict()
      config.part = part_config()
      config.copy = part_config()  # another one
      config.top = 1  # at the top
      other = 5  # not a field
      return config
''')


@pytest.fixture
def comments(tmp_path):
  path = tmp_path / 'my_config.py'
  path.write_text(SOURCE)
  return config_fields.comments([path])


@pytest.mark.parametrize('path, text', [
    ('part.size', 'how big'),
    ('part.rate', 'a long comment that goes on here'),  # an aligned continuation line
    ('part.name', 'Above the field, two lines of comment.'),
    ('part.a', 'both'), ('part.b', 'both'),
    ('part.nested', 'a section'),
    ('part.nested.inner', 'inside'),
    ('part.nested.inner2', 'above inner2'),
    ('part.nested.plain', ''),
    ('part.silent', ''),
    ('top', 'at the top'),
    ('copy', 'another one'),
    ('copy.size', 'how big'),  # a section built by part_config reads its comments
    ('copy.nested.inner', 'inside'),
    ('other', ''),
])
def test_a_fields_comment_is_its_lines_own_or_the_block_above(comments, path, text):
  assert comments.get(path) == text


def test_the_printed_config_follows_the_sources_order_with_comments(tmp_path):
  (tmp_path / 'my_config.py').write_text(SOURCE)
  config = ml_collections.ConfigDict(dict(
      top=1, part=dict(silent=0, size=3, nested=dict(plain=3, inner=1))))
  text = config_fields.describe(config, [tmp_path / 'my_config.py'], 'title')
  lines = [line.rstrip() for line in text.splitlines()]
  assert lines[0] == '# title'
  assert [line.split(' = ')[0] for line in lines if ' = ' in line] == [
      'part.size', 'part.nested.inner', 'part.nested.plain', 'part.silent', 'top']
  assert 'part.size = 3' in lines[1] and lines[1].endswith('# how big')
  assert '# part.nested: a section' in lines
  assert 'part.nested.plain = 3' in lines


CONFIGS = [(vap, 'configs/vap.py', v) for v in ('', 'mono', 'swb', 'va_only')]
CONFIGS += [(ulm, 'configs/ulm.py', ''), (cpc_pretrain, 'configs/cpc_pretrain.py', 'scpc_plus')]


@pytest.mark.parametrize('module, path, variant', CONFIGS)
def test_every_field_of_the_shipped_configs_is_described(module, path, variant):
  """Each field has a comment of its own or its section's, so --mode=config explains them all."""
  found = config_fields.comments([path])
  bare = [p for p, _ in config_fields.flatten(module.get_config(variant))
          if not found.get(p) and not found.get(p.rpartition('.')[0])]
  assert not bare


def test_the_sources_of_a_config_file_are_its_imports_first():
  names = [p.name for p in config_fields.sources(['configs/ulm.py'])]
  assert names == ['recipes.py', 'vap.py', 'cpc_pretrain.py', 'ulm.py']


@pytest.mark.parametrize('path, expected', [
    ('train.step', 'train.step is not a config field; nearest: train.steps'),
    ('trainn.steps', 'trainn is not a config field; nearest: train'),
    ('model.dim.x', "model.dim is a value (32), not a section with a field 'x'"),
    ('data.qqqqqq', 'data.qqqqqq is not a config field; data has: {data_fields} '),
])
def test_an_unknown_field_is_named_with_the_nearest_names(path, expected):
  config = vap.get_config('tiny')
  expected = expected.format(data_fields=', '.join(sorted(config.data)))
  assert expected in config_fields.unknown_field(config, path)


def test_mode_config_prints_the_resolved_config_with_comments(tmp_path):
  out = processes.run('run.py', '--mode=config', '--config=configs/vap.py:tiny',
                      '--config.train.steps=7', f'--workdir={tmp_path}')
  assert out.returncode == 0, out.stderr[-2000:]
  lines = out.stdout.splitlines()
  assert lines[0] == '# configs/vap.py:tiny --config.train.steps=7'
  steps = next(line for line in lines if line.startswith('train.steps = '))
  assert steps.startswith('train.steps = 7 ') and steps.endswith(
      '# optimizer steps in all (a resumed run continues to this many)')
  assert any(line.startswith('model.transformer.num_heads = 2 ') for line in lines)
  assert len([line for line in lines if not line.startswith('#')]) == len(
      list(config_fields.flatten(vap.get_config('tiny'))))


def test_mode_config_checks_what_it_prints(tmp_path):
  out = processes.run('run.py', '--mode=config', '--config=configs/vap.py:tiny',
                      '--config.train.log_every=0', f'--workdir={tmp_path}')
  assert out.returncode == 2 and 'train.log_every = 0' in out.stdout
  assert out.stderr.strip().splitlines() == ['error: train.log_every=0: must be an integer >= 1']
