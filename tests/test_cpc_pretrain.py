"""CPC pretraining: InfoNCE accuracy rises, the exported encoder is causal and loads into VAP."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import cpc_pretrain, vap
from convssl_jax import cpc_objective, model_state, models, objective as objective_lib, pretrain
from tests.test_cpc_encoder import assert_causal


@pytest.fixture(scope='module')
def pretrained_run(tmp_path_factory, tiny_data_dir):
  """(config, workdir) of `cpc_pretrain.py:tiny` trained for 60 steps, its encoder exported."""
  root = tmp_path_factory.mktemp('cpc')
  config = cpc_pretrain.get_config('tiny')
  config.data.data_dir = tiny_data_dir
  config.train.update(steps=60, eval_every=60, checkpoint_every=60)
  results = pretrain.pretrain(config, root / 'run')
  return config, root / 'run', results


def test_infonce_accuracy_rises_well_above_chance_in_a_short_run(pretrained_run):
  config, workdir, results = pretrained_run
  log = [json.loads(line) for line in (workdir / 'train_log.jsonl').read_text().splitlines()]
  chance = 1 / (config.model.cpc.negatives + 1)
  assert abs(log[0]['cpc_loss'] - np.log(1 / chance)) < 0.05  # starts at chance ...
  assert np.mean([r['cpc_accuracy'] for r in log[-2:]]) > 1.5 * chance  # ... and leaves it
  assert log[-1]['cpc_loss'] < log[0]['cpc_loss'] - 0.2
  assert results['validation']['cpc_accuracy'] > 1.5 * chance
  assert 'vap_loss' not in results['validation']  # CPC alone: no VAP head


def test_the_exported_encoder_is_causal_and_is_the_trained_one(pretrained_run):
  config, workdir, results = pretrained_run
  stored = json.loads((workdir / 'encoder' / 'config.json').read_text())
  assert stored['padding'] == 'causal' and stored['dim'] == config.model.dim
  assert stored['input_gain'] == config.model.encoder.input_gain
  encoder = models.load_encoder(results['encoder'], padding=stored['padding'])
  assert encoder.input_gain == stored['input_gain']
  for k in (1, 7):
    assert_causal(encoder, k)
  # The export is the trained encoder, not its initialisation.
  init = models.build_model(config.model, rngs=nnx.Rngs(params=config.seed,
                                                        dropout=config.seed + 1)).encoder
  trained = nnx.to_pure_dict(nnx.state(encoder, nnx.Param))
  assert not np.allclose(trained['convs'][1]['kernel'], nnx.to_pure_dict(
      nnx.state(init, nnx.Param))['convs'][1]['kernel'])


def test_vap_takes_the_pretrained_encoder(pretrained_run):
  config, _, results = pretrained_run
  vap_config = vap.get_config('tiny')
  vap_config.model.encoder_checkpoint = results['encoder']
  assert vap_config.model.encoder.input_gain == 10.0 != config.model.encoder.input_gain
  with pytest.raises(ValueError, match='input_gain'):  # it was pretrained hearing another scale
    models.build_model(vap_config.model, rngs=nnx.Rngs(5))
  vap_config.model.encoder.input_gain = config.model.encoder.input_gain
  model = models.build_model(vap_config.model, rngs=nnx.Rngs(5))
  expected = models.load_encoder(results['encoder'], padding='causal')
  jax.tree.map(np.testing.assert_array_equal, nnx.to_pure_dict(nnx.state(model.encoder, nnx.Param)),
               nnx.to_pure_dict(nnx.state(expected, nnx.Param)))


def test_scpc_plus_trains_cpc_vap_vad_and_f0_and_a_silent_partner_adds_no_cpc_term():
  config = cpc_pretrain.get_config('tiny,scpc_plus')
  model = models.build_model(config.model, rngs=nnx.Rngs(params=0, dropout=1))
  same_negatives = nnx.clone(model)  # its negatives' stream is where model's is now
  rng = np.random.default_rng(0)
  audio = rng.uniform(-0.5, 0.5, (2, 2, 16000)).astype(np.float32)
  audio[1, 1] = 0.0  # example 1: a monologue, its partner channel silent
  batch = {'audio': jnp.asarray(audio),
           'va': jnp.asarray(rng.uniform(size=(2, 150, 2)) > 0.5, jnp.float32),
           'f0': jnp.asarray(rng.uniform(0, 200, (2, 50, 2)), jnp.float32),
           'speakers': jnp.asarray([[1.0, 1.0], [1.0, 0.0]])}
  objective = objective_lib.for_model(config.model)
  means = nnx.jit(lambda m, b: model_state.summary(model_state.loss_sums(m, b, objective),
                                                   config.train))(model, batch)
  assert {'cpc_loss', 'vap_loss', 'vad_loss', 'f0_loss', 'cpc_accuracy'} <= means.keys()
  np.testing.assert_allclose(means['loss'], sum(means[f'{k}_loss']
                                                for k in ('cpc', 'vap', 'vad', 'f0')), rtol=1e-4)
  # The CPC term of the monologue is its speaker's channel alone; it has CPC, VAD and F0 terms
  # but no VAP term.
  out = nnx.jit(lambda m, a: m(a))(same_negatives, batch['audio'])
  np.testing.assert_array_equal(out['cpc']['active'], [[True, True], [True, False]])
  terms, _ = same_negatives.losses(out, batch, objective, 50)
  alone, _ = cpc_objective.infonce(out['cpc']['scores'][1, 0])
  np.testing.assert_allclose(terms['cpc'][1], alone, rtol=1e-4)
  np.testing.assert_allclose(means['cpc_loss'], np.mean(terms['cpc']), rtol=1e-4)
  np.testing.assert_array_equal(terms['vap'].present, [True, False])
  np.testing.assert_allclose(means['vap_loss'], terms['vap'].value[0], rtol=1e-5)
  np.testing.assert_allclose(means['f0_loss'], np.mean(terms['f0']), rtol=1e-5)


def test_config_variants_and_their_errors():
  assert cpc_pretrain.get_config('swb').data.name == 'switchboard'
  assert cpc_pretrain.get_config('folder').data.name == 'dialog_folder'
  plus = cpc_pretrain.get_config('scpc_plus')
  assert plus.model.cpc.heads and plus.model.f0_head and plus.data.window_s == 10.0
  reference = cpc_pretrain.get_config('reference')
  assert (reference.model.dim, reference.model.cpc.predict_steps, reference.model.cpc.negatives,
          reference.train.learning_rate) == (256, 12, 128, 2e-4)
  with pytest.raises(ValueError, match='scpc'):
    cpc_pretrain.get_config('scpc')
  with pytest.raises(ValueError, match='each choose the corpus'):
    cpc_pretrain.get_config('swb,fisher')


def test_run_py_pretrain_mode_refuses_a_vap_config():
  from tests import processes
  out = processes.run('run.py', '--config=configs/vap.py:tiny', '--mode=pretrain')
  assert out.returncode != 0 and "model.kind='cpc'" in out.stderr


def test_pretraining_on_monologues_of_a_dialog_folder(tmp_path):
  """Mono recordings get a silent partner channel; pretraining runs on them."""
  import soundfile

  from tests import corpus_fixtures as fx

  root = tmp_path / 'monologues'
  root.mkdir()
  names = {'train': ['a', 'b'], 'validation': ['c'], 'test': ['d']}
  for split, stems in names.items():
    (root / f'{split}.txt').write_text('\n'.join(stems) + '\n')
    for i, stem in enumerate(stems):
      soundfile.write(root / f'{stem}.wav', fx.tones(2.0, 16000, freqs=(220.0 + 50 * i,), seed=i),
                      16000)
      (root / f'{stem}.json').write_text(json.dumps([[[0.2, 0.9], [1.2, 1.8]], []]))
  config = cpc_pretrain.get_config('tiny,folder')
  config.data.update(manual_dir=str(root), data_dir=str(tmp_path / 'data'), window_s=1.0,
                     overlap_s=0.5)
  config.train.update(steps=3, log_every=1, eval_every=3, checkpoint_every=3)
  results = pretrain.pretrain(config, tmp_path / 'run')
  assert results['step'] == 3 and np.isfinite(results['validation']['cpc_loss'])
  assert (tmp_path / 'run' / 'encoder' / 'config.json').is_file()
