"""Several corpora as one (`data.name='switchboard+fisher'`): splits concatenated, records intact."""

import numpy as np
import pytest

import data_builders
from configs import vap
from convssl_jax.data import pipeline
from tests import corpus_fixtures as fx


def _data(tmp_path, name, manual_dir):
  data = vap.get_config('tiny').data
  data.update(name=name, manual_dir=manual_dir, data_dir=str(tmp_path / 'data'))
  return data


def test_joined_corpora_concatenate_each_split_in_order(tmp_path):
  swb, fisher = tmp_path / 'swb', tmp_path / 'fisher'
  fx.write_switchboard(swb)
  fx.write_fisher(fisher)
  builders = data_builders.prepare(_data(tmp_path, 'switchboard+fisher', f'{swb},{fisher}'))
  assert [b.name for b in builders] == ['switchboard', 'fisher']
  for split in ('train', 'validation', 'test'):
    mixed = pipeline.Corpus.from_builders(builders, split)
    parts = [pipeline.Corpus.from_builder(b, split) for b in builders]
    assert mixed.sessions == tuple(f'{b.name}/{s}' for b, p in zip(builders, parts)
                                   for s in p.sessions)
    np.testing.assert_array_equal(mixed.durations, np.concatenate([p.durations for p in parts]))
    records = [p.source[i] for p in parts for i in range(len(p.source))]
    assert len(mixed.source) == len(records)
    for i, record in enumerate(records):
      assert mixed.source[i]['session'] == record['session']
      np.testing.assert_array_equal(mixed.source[i]['audio'], record['audio'])
    with pytest.raises(IndexError):
      mixed.source[len(records)]


@pytest.mark.parametrize('name, manual_dir, message', [
    ('switchboard+nope', 'a,b', "unknown corpus 'nope'"),
    ('fisher+fisher', 'a,b', 'names a corpus twice'),
    ('switchboard+fisher', '/only/one', 'one comma-separated value per corpus'),
])
def test_a_bad_corpus_list_is_an_error_naming_it(tmp_path, name, manual_dir, message):
  with pytest.raises(ValueError, match=message):
    data_builders.prepare(_data(tmp_path, name, manual_dir))
