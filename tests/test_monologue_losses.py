"""Monologues in training: a monologue's windows have CPC, F0 and its speaker's VAD terms but no VAP
term and no VAD term for the pretend partner, decided per example, so mixed batches work; each
term is averaged over the examples that have it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import vap as vap_configs
from convssl_jax import model_state, objective as objective_lib, trainer as trainer_lib
from convssl_jax.data import pipeline
from convssl_jax.models import ulm, vap

FRAMES = 10
LOG2 = np.log(2.0)


class Given:
  """A stand-in model whose forward returns given outputs, scored by the stereo body's losses."""
  losses = vap.StereoBody.body_losses

  def __init__(self, out):
    self.out = out

  def forward(self, batch, frames):
    del batch, frames
    return self.out


def _means(out, batch, config):
  objective = objective_lib.for_model(config.model)
  return model_state.summary(model_state.loss_sums(Given(out), batch, objective), config.train)


def _batch(speakers, horizon=100):
  """Two windows of FRAMES frames: example 0 both speakers talking now and then; example 1
  speaker A talking, B silent (a monologue's VA)."""
  va = np.zeros((2, FRAMES + horizon, 2), np.float32)
  va[0, ::3, 0] = 1.0
  va[0, 1::4, 1] = 1.0
  va[1, :60, 0] = 1.0
  return {'va': jnp.asarray(va), 'speakers': jnp.asarray(speakers, jnp.float32)}


@pytest.mark.parametrize('partner', [1, 0])  # the monologue's silent partner, as swapped or not
def test_a_mixed_batch_has_the_vap_loss_of_its_dialog_alone(partner):
  config = vap_configs.get_config('tiny')
  speaker = 1 - partner
  batch = _batch([[1, 1], [partner, speaker]])
  if partner == 0:  # the monologue's speaker is B after a channel swap
    batch['va'] = batch['va'].at[1].set(batch['va'][1, :, ::-1])
  # The dialog's logits are uniform: its VAP loss is log 256 at every frame. The monologue's put
  # all mass on one class, so its loss is ~100 wherever that class is wrong, which it is.
  logits = np.zeros((2, FRAMES, 256), np.float32)
  logits[1, :, 255] = 100.0
  # VAD logits 0 give BCE log 2 on every frame; the monologue's partner channel gets +50 against
  # its silence (BCE 50), which must not count.
  vad = np.zeros((2, FRAMES, 2), np.float32)
  vad[1, :, partner] = 50.0
  means = _means({'logits': jnp.asarray(logits), 'vad': jnp.asarray(vad)}, batch, config)
  np.testing.assert_allclose(means['vap_loss'], np.log(256.0), rtol=1e-6)
  np.testing.assert_allclose(means['vad_loss'], LOG2, rtol=1e-6)
  np.testing.assert_allclose(means['loss'], np.log(256.0) + LOG2, rtol=1e-6)
  # The frame accuracy is the dialog's too: a uniform argmax is class 0, right where the label is
  # 0 (both silent over the whole 2 s future), which is never for example 0's busy VA.
  labels = np.asarray(objective_lib.for_model(config.model).labels(batch['va']))
  np.testing.assert_allclose(means['frame_accuracy'], np.mean(labels[0] == 0))
  # The speaker's own VAD counts: a wrong logit on it does raise the VAD mean.
  vad[1, :, speaker] = 50.0 * (1 - 2 * np.asarray(batch['va'][1, :FRAMES, speaker]))
  means = _means({'logits': jnp.asarray(logits), 'vad': jnp.asarray(vad)}, batch, config)
  np.testing.assert_allclose(means['vad_loss'], (LOG2 + 50.0) / 2, rtol=1e-4)


def test_without_speakers_every_example_is_a_dialog():
  config = vap_configs.get_config('tiny')
  batch = _batch([[1, 1], [1, 0]])
  del batch['speakers']
  logits = np.zeros((2, FRAMES, 256), np.float32)
  logits[1, :, 255] = 100.0
  out = {'logits': jnp.asarray(logits), 'vad': jnp.zeros((2, FRAMES, 2))}
  labels = np.asarray(objective_lib.for_model(config.model).labels(batch['va']))[1]
  monologue = np.mean(100.0 * (labels != 255))  # logsumexp ~ 100 where the label is not 255
  np.testing.assert_allclose(_means(out, batch, config)['vap_loss'],
                             (np.log(256.0) + monologue) / 2, rtol=1e-4)


def test_a_batch_of_monologues_has_no_vap_term():
  config = vap_configs.get_config('tiny')
  batch = _batch([[1, 0], [1, 0]])
  out = {'logits': jnp.zeros((2, FRAMES, 256)), 'vad': jnp.zeros((2, FRAMES, 2))}
  means = _means(out, batch, config)
  assert np.isnan(means['vap_loss']) and np.isnan(means['frame_accuracy'])
  np.testing.assert_allclose(means['loss'], LOG2, rtol=1e-6)  # the VAD term alone


def test_evaluation_sums_weigh_each_term_over_the_windows_that_have_it():
  """Sums of batches add up before the means: a term is averaged over every window that has it,
  padding (weight 0) left out."""
  config = vap_configs.get_config('tiny')
  objective = objective_lib.for_model(config.model)
  logits = np.zeros((2, FRAMES, 256), np.float32)
  logits[1, :, 255] = 100.0
  out = Given({'logits': jnp.asarray(logits), 'vad': jnp.zeros((2, FRAMES, 2))})
  first = model_state.loss_sums(out, _batch([[1, 1], [1, 0]]), objective)
  second = model_state.loss_sums(out, _batch([[1, 1], [1, 1]]), objective,
                                 weight=jnp.asarray([1.0, 0.0]))  # example 1 is padding
  total = {kind: {k: tuple(np.add(first[kind][k], second[kind][k])) for k in first[kind]}
           for kind in first}
  assert total['terms']['vap'][1] == 2  # two dialog windows; the monologue and padding not
  np.testing.assert_allclose(model_state.summary(total, config.train)['vap_loss'],
                             np.log(256.0), rtol=1e-6)


def test_a_training_step_on_a_dialog_and_a_monologue_is_the_step_on_the_dialog_alone():
  """With the VAD term off, the monologue of a mixed batch changes nothing: the same loss and
  the same updated parameters as a batch of the dialog alone (the trainer's real step)."""
  config = vap_configs.get_config('tiny')
  config.train.vad_loss_weight = 0.0
  rng = np.random.default_rng(0)
  audio = rng.uniform(-0.5, 0.5, (2, 2, 16000)).astype(np.float32)
  audio[1, 1] = 0.0
  va = (rng.uniform(size=(2, 150, 2)) > 0.5).astype(np.float32)
  va[1, :, 1] = 0.0
  mixed = {'audio': audio, 'va': va, 'speakers': np.array([[1, 1], [1, 0]], np.float32)}
  alone = {k: v[:1] for k, v in mixed.items()}
  results = []
  for batch in (mixed, alone):
    trainer = trainer_lib.Trainer(config, trainer_lib.parallelism.make_mesh(1))
    metrics = trainer.train_step(trainer.model.to_device(batch))
    params = nnx.to_pure_dict(nnx.state(trainer.model.model(), nnx.Param))
    results.append((float(metrics['loss']), jax.tree.leaves(params)))
  np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-6)
  for a, b in zip(results[0][1], results[1][1], strict=True):
    # Adam moves each by ~1e-3 (the rate) whatever the gradient's size, so where a gradient is
    # near 0 float noise in it moves the step by up to ~1e-5 (seen: 1.2e-5 in one of 4096); a
    # wrong term moves the gradients themselves, and the step by ~1e-3.
    np.testing.assert_allclose(a, b, atol=1e-4)


def test_the_unit_lm_predicts_no_units_of_a_silent_partner():
  """Next-unit cross-entropy over the channels that hold a speaker: uniform logits give log K on
  the speaker's channel, whatever the partner's logits say."""
  k = 8
  logits = np.zeros((1, 6, 2, k), np.float32)
  logits[0, :, 1, 3] = 40.0  # the partner's: confidently wrong (its units are all 0)
  units = np.zeros((1, 2, 6), np.int32)
  loss, accuracy = ulm.next_unit_loss(jnp.asarray(logits), jnp.asarray(units),
                                      jnp.asarray([[1.0, 0.0]]))
  np.testing.assert_allclose(loss, np.log(k), rtol=1e-6)
  np.testing.assert_allclose(accuracy, 1.0)  # argmax of uniform logits is unit 0, the target
  both, _ = ulm.next_unit_loss(jnp.asarray(logits), jnp.asarray(units), jnp.ones((1, 2)))
  np.testing.assert_allclose(both, (np.log(k) + 40.0) / 2, rtol=1e-4)


class _Records:
  """Two stored conversations of 2 s: a dialog and a monologue (B silent)."""

  def __getitem__(self, index):
    audio = np.full((32000, 2), 1000, np.int16)
    va = [[0, 0.1, 1.0], [1, 1.2, 1.9]] if index == 0 else [[0, 0.1, 1.9]]
    if index == 1:
      audio[:, 1] = 0
    return {'audio': audio, 'va': np.asarray(va, np.float64), 'f0': np.zeros((200, 2), np.float32)}

  def __len__(self):
    return 2


def test_each_window_carries_which_channels_hold_a_speaker_and_swaps_them():
  corpus = pipeline.Corpus(_Records(), ('dialog', 'solo'), np.array([2.0, 2.0]),
                           np.array([False, True]))
  spec = pipeline.WindowSpec(window_s=1.0, frame_hz=50, horizon_frames=100)
  load = pipeline.LoadWindow(corpus, spec)
  np.testing.assert_array_equal(load(np.array([0, 0.0]))['speakers'], [1, 1])
  np.testing.assert_array_equal(load(np.array([1, 0.0]))['speakers'], [1, 0])
  swapped = pipeline.LoadWindow(corpus, spec, swap=True)(np.array([1, 0.0]))
  np.testing.assert_array_equal(swapped['speakers'], [0, 1])
  assert swapped['va'][:, 1].any() and not swapped['va'][:, 0].any()  # the speaker is B now
  dialogs = corpus.dialogs()
  assert dialogs.sessions == ('dialog',) and len(dialogs.source) == 1
  np.testing.assert_array_equal(dialogs.source[0]['audio'], corpus.source[0]['audio'])
  assert not pipeline.Corpus([None], ('x',), np.array([1.0])).monologue.any()  # by hand: dialogs
