"""Config variants: the recipes they name, their aliases, and their consistency with the objective."""

import pytest

from configs import vap
from convssl_jax import objective as objective_lib

EVERY_VARIANT = sorted({*vap.HEADS, *vap.CORPORA, *vap.ALIASES, 'stereo', 'mono', 'reference',
                        'tiny'})


@pytest.mark.parametrize('variant', EVERY_VARIANT)
def test_every_variant_gives_labels_over_the_horizon_its_bins_span(variant):
  config = vap.get_config(variant)
  objective = objective_lib.for_model(config.model)
  seconds = sum(config.model.vap.bin_times)
  assert objective.horizon_frames == round(seconds * config.model.frame_hz)


@pytest.mark.parametrize('alias', sorted(vap.ALIASES))
def test_mono_head_aliases_equal_mono_plus_the_head(alias):
  head = alias.removeprefix('mono_')
  assert vap.get_config(alias) == vap.get_config(f'mono,{head}')
  assert vap.get_config(f'{alias},reference') == vap.get_config(f'reference,mono,{head}')


def test_mono_skantze_predicts_60_bins_of_50_ms_over_3_seconds():
  vap_cfg = vap.get_config('mono_skantze').model.vap
  objective = objective_lib.for_model(vap.get_config('mono_skantze').model)
  assert vap_cfg.head == 'independent' and objective.n_bins == 60
  assert objective.bin_frames == (5,) * 60 and objective.horizon_frames == 300  # 3 s at 100 Hz


@pytest.mark.parametrize('variant, corpus', [
    ('swb', 'switchboard'), ('fisher', 'fisher'), ('swb_fisher', 'switchboard+fisher')])
def test_ldc_variants_are_the_voice_activity_projection_recipe(variant, corpus):
  config = vap.get_config(variant)
  assert config.data.name == corpus
  assert (config.data.window_s, config.data.batch_size) == (20.0, 16)
  t = config.train
  assert (t.learning_rate, t.weight_decay, t.schedule, t.grad_clip) == (3.63e-4, 1e-3, 'plateau', 5.0)
  assert t.eval_every == 0  # validation once per epoch, as the references
  assert config.model.encoder.freeze and config.model.kind == 'stereo'
  assert config.model.encoder.padding == 'reference'  # the one converted CPC was trained with
  # VoiceActivityProjection's Switchboard split (DAMSL); the mono conv_ssl recipe the original.
  assert config.data.builder_config == {'swb': 'damsl', 'fisher': '', 'swb_fisher': 'damsl,'}[
      variant]
  assert (config.model.dim, config.model.transformer.cross_layers) == (256, 3)  # reference sizes
  mono = vap.get_config(f'{variant},mono')
  assert mono.data.name == corpus and mono.data.window_s == 10.0 and mono.data.normalize
  assert mono.data.builder_config == ''
  assert mono.model.transformer.num_layers == 4


def test_two_corpus_variants_are_an_error():
  with pytest.raises(ValueError, match='each choose the corpus'):
    vap.get_config('swb,fisher')
