"""Turn-taking evaluation: windows join into whole dialogs, the VA-only baseline hears no audio,
and a trained run writes its metrics, tables and plots."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import vap
from convssl_jax import corpora as corpora_lib, evaluate, metrics, models, train, trainer
from convssl_jax.data import va as va_lib
from convssl_jax.events import TurnTakingEvents


def test_windows_join_with_each_frame_from_the_latest_window_with_enough_context():
  # Two 10-frame windows (horizon 2) at frames 0 and 6 of a 14-frame dialog, context 3: window 0
  # gives frames 0..8; window 1 owns frames from 6 + 3 = 9 on and is cut at the dialog's end.
  first = {'p': np.full((10, 2), 1.0), 'va': np.full((12, 2), 1.0)}
  second = {'p': np.full((10, 2), 2.0), 'va': np.full((12, 2), 2.0)}
  dialog = evaluate._stitch([(6, second), (0, first)], frames=14, horizon=2, context=3)
  np.testing.assert_array_equal(dialog['p'][:, 0], [1] * 9 + [2] * 5)
  np.testing.assert_array_equal(dialog['va'][:, 1], [1] * 9 + [2] * 7)  # 14 + 2 horizon frames


def test_the_va_only_model_ignores_the_audio():
  cfg = vap.get_config('tiny,va_only').model
  model = models.build_model(cfg, rngs=nnx.Rngs(0))
  model.eval()
  va = (np.random.default_rng(0).uniform(size=(1, 50, 2)) > 0.5).astype(np.float32)
  history = np.full((1, 50, 5), 0.5, np.float32)
  quiet, loud = jnp.zeros((1, 16000)), jnp.ones((1, 16000))
  np.testing.assert_array_equal(model(quiet, va, history)['logits'],
                                model(loud, va, history)['logits'])
  assert models.count_params(model) < 50_000  # no encoder


def test_repeated_predictions_of_one_model_compile_once(tiny_run):
  config, workdir = tiny_run
  model, _ = trainer.restore_model(config, workdir, 'latest')
  corpora = corpora_lib.open_corpora(config, ('validation',))
  first = evaluate.predict_dialogs(model, config, corpora['validation'])
  second = evaluate.predict_dialogs(model, config, corpora['validation'])
  evaluate.predict_dialogs(model, config, corpora['validation'], swap=True)
  assert model.predict_step.step._cache_size() == 1  # both speaker orders, every call
  np.testing.assert_array_equal(first[0]['p'], second[0]['p'])


def test_validation_during_training_logs_turn_taking_scores_at_the_fixed_thresholds(tiny_run):
  config, workdir = tiny_run
  logged = json.loads((workdir / 'metrics.json').read_text())['validation']
  model, step = trainer.restore_model(config, workdir, 'latest')
  assert step == config.train.steps  # the state of the last validation
  corpora = corpora_lib.open_corpora(config, ('validation',))
  dialogs = evaluate.predict_dialogs(model, config, corpora['validation'])
  events = evaluate.Evaluation.for_config(config)
  # The reference's validation thresholds (vap_spec.md 5.3 step 5): S-pred 0.3, BC-pred 0.1, S/L 0.5.
  expected = metrics.score(events.samples('validation', False, dialogs),
                           {'shift_prediction': 0.3, 'backchannel_prediction': 0.1,
                            'short_long': 0.5})
  for key, event, stat in [('f1_hold_shift', 'shift_hold', 'f1_weighted'),
                           ('f1_predict_shift', 'shift_prediction', 'f1_weighted'),
                           ('f1_short_long', 'short_long', 'f1_weighted'),
                           ('f1_bc_prediction', 'backchannel_prediction', 'f1_weighted'),
                           ('shift_precision', 'shift_hold', 'precision_pos'),
                           ('hold_recall', 'shift_hold', 'recall_neg')]:
    np.testing.assert_allclose(logged[key], expected[event][stat], atol=1e-6, err_msg=key)
  assert expected['shift_hold']['n_frames'] > 0


@pytest.fixture(scope='module')
def evaluated(tiny_run):
  """The tiny model and its VA-only baseline (trained the same way), evaluated."""
  config, workdir = tiny_run
  baseline, baseline_dir = vap.va_only(config), workdir.parent / 'va_only'
  train.train_and_evaluate(baseline, baseline_dir)
  results = evaluate.evaluate(config, workdir, {'VA only': (baseline, baseline_dir)})
  return workdir, results


def test_evaluation_writes_metrics_tables_and_plots_per_split(evaluated):
  workdir, results = evaluated
  for split in ('validation', 'test'):
    out = workdir / 'eval' / split
    written = json.loads((out / 'metrics.json').read_text())
    assert set(written['scores']) == {'model', 'VA only', 'always hold', 'chance'}
    table = (out / 'table.md').read_text()
    rows = [line.split('|')[1].strip().split(' ')[0] for line in table.splitlines()
            if line.startswith('|')]
    assert [r for r in rows if r in ('S/H', 'S/L', 'S-pred', 'BC-pred')] == [
        'S/H', 'S/L', 'S-pred', 'BC-pred']
    assert (out / 'thresholds.png').stat().st_size > 0
  assert (workdir / 'eval' / 'test' / 'excerpt.png').stat().st_size > 0
  assert json.loads((workdir / 'eval' / 'thresholds.json').read_text()) == {
      'pred_shift': results['thresholds']['model']['shift_prediction'],
      'pred_bc': results['thresholds']['model']['backchannel_prediction'],
      'short_long': results['thresholds']['model']['short_long']}
  for thresholds in results['thresholds'].values():
    assert thresholds['shift_hold'] == 0.5
    assert all(0.01 <= t <= 0.99 for t in thresholds.values())


def test_every_model_and_rule_is_scored_on_the_same_events(evaluated):
  _, results = evaluated
  for split in ('validation', 'test'):
    counts = {name: {e: (r[e]['n_positive'], r[e]['n_negative']) for e in metrics.EVENTS}
              for name, r in results[split].items()}
    assert len({json.dumps(c, sort_keys=True) for c in counts.values()}) == 1
    assert counts['model']['shift_hold'][0] > 0  # the synthetic dialogs have shifts ...
    assert counts['model']['shift_hold'][1] > 0  # ... and holds


def test_both_speaker_orders_are_scored_at_the_validation_thresholds(evaluated, tiny_run):
  config, _ = tiny_run
  _, results = evaluated
  corpora = corpora_lib.open_corpora(config, ('test',))
  events = TurnTakingEvents(config.model.frame_hz, **config.eval.events)
  shifts = holds = 0  # S/H frames of every test dialog, as recorded and with speakers swapped
  for index, duration in enumerate(corpora['test'].durations):
    va_list = va_lib.channel_segments(corpora['test'].source[index]['va'])
    frames = va_lib.num_frames(duration, config.model.frame_hz)
    va = va_lib.va_frames(va_list, frames, config.model.frame_hz)
    va = np.concatenate([va, np.zeros((100, 2), np.float32)])
    for order in (va, va[:, ::-1]):
      found = events(order, max_frame=frames)
      shifts, holds = shifts + found['shift'].sum(), holds + found['hold'].sum()
  sh = results['test']['model']['shift_hold']
  assert (sh['n_positive'], sh['n_negative']) == (shifts, holds) and shifts > 0
  for event, threshold in results['thresholds']['model'].items():
    assert results['test']['model'][event]['threshold'] == threshold


def test_always_hold_predicts_every_shift_hold_frame_as_hold(evaluated):
  _, results = evaluated
  sh = results['test']['always hold']['shift_hold']
  n_pos, n_neg = sh['n_positive'], sh['n_negative']
  # Only holds predicted: F1(hold) = 2 n_neg / (2 n_neg + n_pos), F1(shift) = 0, recall 1 and 0.
  np.testing.assert_allclose(sh['f1_weighted'], n_neg / (n_pos + n_neg)
                             * 2 * n_neg / (2 * n_neg + n_pos), rtol=1e-6)
  np.testing.assert_allclose(sh['balanced_accuracy'], 0.5)


def test_the_latest_or_best_checkpoint_is_restored_and_a_missing_one_is_named(evaluated, tmp_path):
  workdir, _ = evaluated
  config = vap.get_config('tiny')
  _, step = trainer.restore_model(config, workdir, 'latest')
  assert step == 4
  with pytest.raises(FileNotFoundError, match=f'no best checkpoint in {tmp_path}'):
    trainer.restore_model(config, tmp_path, 'best')
  with pytest.raises(ValueError, match="eval.checkpoint must be 'best' or 'latest'"):
    trainer.restore_model(config, workdir, 'newest')
