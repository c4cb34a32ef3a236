"""VAP configs. `--config=configs/vap.py[:variant,...]`; any field overridable as `--config.a.b=v`.

Variants (comma-separated, combinable):
  stereo (default)   VoiceActivityProjection 2023: CPC per speaker, self + cross-attention layers.
  mono               conv_ssl 2022: mono mix + VA conditioning, GPT.
  reference          the reference's sizes and windows (dim 256, stereo 1 self + 3 cross layers,
                     20 s windows, batch 16; mono 4 layers, 10 s windows). Without it the model is
                     sized for a 2-core CPU: dim 32, one cross layer (mono: 2 layers), no dropout,
                     10 s windows, stereo's CPC input x 10 (model.encoder.input_gain), 450
                     steps (the whole default run, VA-only baseline and evaluation included,
                     fits in 15 minutes there).
  independent        independent head (2 x 4 bins), pre_frames 2.
  independent40      paper A's Skantze-style baseline: 2 x 40 bins of 50 ms, pre_frames 12 (100 Hz).
  skantze            Skantze 2017's regression target: 2 x 60 bins of 50 ms (a 3 s horizon),
                     pre_frames 12, at 100 Hz; with `reference` a 1-layer GPT, dropout 0.1.
  comparative        one soft "A's share of the future" logit.
  swb, fisher,       the VoiceActivityProjection recipe on Switchboard (its DAMSL split; with mono
  swb_fisher         the original one), Fisher or both (splits concatenated): reference sizes,
                     frozen CPC encoder in reference padding (give it converted weights),
                     100k steps, validation once per epoch; needs --config.data.manual_dir
                     (for both: 'SWB_DIR,FISHER_DIR').
  mono_independent, mono_independent40, mono_comparative, mono_skantze
                     the conv_ssl 2022 recipe (mono) with that head: `mono,<head>`.
  va_only            the VA-only baseline: a mono model that hears no audio (VA + history).
  tiny               a very small model and corpus for tests.
50 ms bins need 100 Hz frames (at 50 Hz a bin would be 2.5 frames); the other heads run at
50 Hz with `--config.model.frame_hz=20` or `100` selectable.
"""

import ml_collections

# The sections' builders, also used by the other config files from here.
from convssl_jax.recipes import (MONO, STEREO, base_config, data_config, eval_config, model_config,
                                 train_config, va_only)

REFERENCE = 'reference'
HEADS = {
    'independent': dict(head='independent', bin_times=(0.2, 0.4, 0.6, 0.8), pre_frames=2),
    'independent40': dict(head='independent', bin_times=(0.05,) * 40, pre_frames=12, frame_hz=100),
    'skantze': dict(head='independent', bin_times=(0.05,) * 60, pre_frames=12, frame_hz=100),
    'comparative': dict(head='comparative', bin_times=(0.2, 0.4, 0.6, 0.8), pre_frames=2),
}
CORPORA = {'swb': 'switchboard', 'fisher': 'fisher', 'swb_fisher': 'switchboard+fisher'}
ALIASES = {f'{MONO}_{head}': (MONO, head) for head in HEADS}


def _size_for_cpu(config: ml_collections.ConfigDict) -> None:
  """The default run: small enough to train on the synthetic corpus on 2 CPU cores in ~15 min."""
  config.model.dim = 32
  config.model.encoder.unroll = 1  # on CPU the plain scan is fastest (1.03 vs 1.27 s/step at 16)
  config.model.transformer.update(cross_layers=1, num_layers=2, dropout=0.0)
  config.data.window_s = 10.0
  if config.model.kind == STEREO:
    # The CPC encoder trains from scratch on audio as recorded (speech RMS ~0.05, where the first
    # conv's bias swamps it): lifted 10x, the VAD loss stops spiking (docs/default_run.md). Mono
    # peak-normalises each window instead, as conv_ssl.
    config.model.encoder.input_gain = 10.0
  config.train.update(steps=450, learning_rate=1e-3, log_every=15, eval_every=150,
                      checkpoint_every=150)
  # Three validations: the best is the one the README's table reports on (S/H), not the lowest
  # loss, which a one-step excursion of the VAD loss can move (docs/default_run.md).
  config.train.best_metric = 'f1_hold_shift'


def _ldc_recipe(config: ml_collections.ConfigDict, corpus: str) -> None:
  """VoiceActivityProjection's training on LDC corpora (epochs of thousands of steps), with a
  frozen CPC in CPC_audio's padding, the one its converted weights were trained with."""
  config.data.name = corpus
  config.model.encoder.update(freeze=True, padding='reference')
  if config.model.kind == STEREO:  # VoiceActivityProjection's Switchboard split; conv_ssl's is
    #                                the original one
    config.data.builder_config = ','.join('damsl' if c == 'switchboard' else ''
                                          for c in corpus.split('+'))
  # Validation once per epoch, as the references (plateau and early-stopping patience in epochs).
  config.train.update(steps=100_000, eval_every=0, checkpoint_every=2_000, log_every=100)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variants = [v for name in (arg or '').split(',') if name for v in ALIASES.get(name, (name,))]
  known = {STEREO, MONO, REFERENCE, 'tiny', 'va_only', *HEADS, *CORPORA, *ALIASES}
  if unknown := [v for v in variants if v not in known]:
    raise ValueError(f'unknown config variant(s) {unknown}; known: {sorted(known)}')
  if len(corpora := [v for v in variants if v in CORPORA]) > 1:
    raise ValueError(f'config variants {corpora} each choose the corpus; use one (swb_fisher '
                     'for both)')
  reference = REFERENCE in variants or bool(corpora)
  config = base_config(MONO if MONO in variants else STEREO)
  if reference:
    config.data.batch_size = 16
  else:
    _size_for_cpu(config)
  for name, head in HEADS.items():
    if name in variants:
      head = dict(head)
      config.model.frame_hz = head.pop('frame_hz', config.model.frame_hz)
      config.model.vap.update(head)
  if 'skantze' in variants and reference:
    config.model.transformer.update(num_layers=1, dropout=0.1)
  for corpus in corpora:
    _ldc_recipe(config, CORPORA[corpus])
  if 'va_only' in variants:
    config = va_only(config)
  if 'tiny' in variants:
    config.model.dim = 32
    config.model.encoder.unroll = 4
    config.model.transformer.update(num_heads=2, num_layers=1, cross_layers=1)
    config.data.synthetic.update(train=4, validation=2, test=2, duration_s=20.0)
    config.data.update(window_s=5.0, batch_size=2)
    config.train.update(steps=20, log_every=5, eval_every=10, checkpoint_every=10,
                        best_metric='loss')
  return config
