"""VAP configs. `--config=configs/vap.py[:variant,...]`; any field overridable as `--config.a.b=v`.

Variants (comma-separated, combinable):
  stereo (default)   VoiceActivityProjection 2023: CPC per speaker, self + cross-attention layers.
  mono               conv_ssl 2022: mono mix + VA conditioning, GPT.
  reference          the reference's sizes and windows (dim 256, stereo 1 self + 3 cross layers,
                     20 s windows, batch 16; mono 4 layers, 10 s windows). Without it the model is
                     sized for a 2-core CPU: dim 32, one cross layer (mono: 2 layers), no dropout,
                     10 s windows, 450 steps (the whole default run, VA-only baseline and
                     evaluation included, fits in 15 minutes there).
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

from convssl_jax.recipes import MONO, STEREO, data_config, model_config, va_only

REFERENCE = 'reference'
HEADS = {
    'independent': dict(head='independent', bin_times=(0.2, 0.4, 0.6, 0.8), pre_frames=2),
    'independent40': dict(head='independent', bin_times=(0.05,) * 40, pre_frames=12, frame_hz=100),
    'skantze': dict(head='independent', bin_times=(0.05,) * 60, pre_frames=12, frame_hz=100),
    'comparative': dict(head='comparative', bin_times=(0.2, 0.4, 0.6, 0.8), pre_frames=2),
}
CORPORA = {'swb': 'switchboard', 'fisher': 'fisher', 'swb_fisher': 'switchboard+fisher'}
ALIASES = {f'{MONO}_{head}': (MONO, head) for head in HEADS}


def train_config(kind: str = STEREO) -> ml_collections.ConfigDict:
  """Optimisation (VoiceActivityProjection's recipe for stereo, conv_ssl's for mono) and the loop."""
  t = ml_collections.ConfigDict()
  t.steps = 3000
  t.learning_rate = 3.63e-4
  t.b1, t.b2 = 0.9, 0.999
  t.weight_decay = 1e-3  # decoupled (AdamW), on every trained parameter
  t.grad_clip = 5.0 if kind == STEREO else 0.0  # global norm; 0 = off
  t.schedule = 'plateau' if kind == STEREO else 'cosine'  # 'plateau' | 'cosine' | 'constant'
  t.warmup_steps = 0
  # 'cosine' (conv_ssl): CosineAnnealingLR(T_max=2500) stepped every 100 steps, a staircase over
  # a half-cosine of 250,000 steps (nearly flat over a run of tens of thousands).
  t.cosine_stairs = 2500
  t.cosine_stair_steps = 100
  t.plateau_factor = 0.5  # learning rate x factor when validation stops improving ...
  t.plateau_patience = 2  # ... for more than this many evaluations
  t.early_stopping_patience = 10  # evaluations without improvement before stopping
  # The total loss weighs each term the model computes (`Model.losses`) by its weight here.
  t.vap_loss_weight = 1.0
  t.vad_loss_weight = 1.0  # stereo: total = VAP + VAD
  t.f0_loss_weight = 1.0  # with model.f0_head
  t.cpc_loss_weight = 1.0  # CPC pretraining (configs/cpc_pretrain.py)
  t.unit_loss_weight = 1.0  # the unit LM's next-unit term (configs/ulm.py)
  t.fsdp = 1  # devices per parameter shard; the rest is data parallel
  t.log_every = 50
  t.eval_every = 500  # steps; <= 0: once per epoch of training windows
  t.checkpoint_every = 500
  t.keep_checkpoints = 3
  return t


def eval_config() -> ml_collections.ConfigDict:
  """Turn-taking evaluation (`--mode=eval`, and after training): events, windows, baselines."""
  e = ml_collections.ConfigDict()
  e.checkpoint = 'best'  # 'best' (lowest validation loss) | 'latest'
  e.context_s = 3.0  # overlap of the evaluation windows: every scored frame (but a dialog's
  #                    first window's) has at least this much audio before it
  e.va_only_baseline = True  # also train (same recipe) and score a VA-only model
  e.excerpt_s = 20.0  # length of the plotted excerpt
  # Every validation during training also scores the turn-taking events of the validation dialogs
  # (one speaker order) at the reference's fixed training thresholds (vap_spec.md 5.3 step 5).
  e.during_training = True
  e.training_thresholds = ml_collections.ConfigDict(dict(
      shift_prediction=0.3, backchannel_prediction=0.1, short_long=0.5))
  # TurnTakingEvents settings in seconds: the paper's (reference/vap_spec.md section 4).
  e.events = ml_collections.ConfigDict(dict(
      pad=0.05, dur=0.1, pre_label_dur=0.5, onset_dur=0.2, min_context=3.0,
      pre_offset_shift=1.0, post_onset_shift=1.0, pre_offset_hold=1.0, post_onset_hold=1.0,
      non_shift_horizon=2.0, non_shift_majority_ratio=1.0, bc_max_duration=1.0,
      bc_pre_silence=1.0, bc_post_silence=2.0, bc_min_duration=0.2, bc_metric_dur=0.2,
      bc_pre_label_dur=0.5, seed=0))
  return e


def _size_for_cpu(config: ml_collections.ConfigDict) -> None:
  """The default run: small enough to train on the synthetic corpus on 2 CPU cores in ~15 min."""
  config.model.dim = 32
  config.model.encoder.unroll = 1  # on CPU the plain scan is fastest (1.03 vs 1.27 s/step at 16)
  config.model.transformer.update(cross_layers=1, num_layers=2, dropout=0.0)
  config.data.window_s = 10.0
  config.train.update(steps=450, learning_rate=1e-3, log_every=15, eval_every=150,
                      checkpoint_every=150)


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
  config = ml_collections.ConfigDict()
  config.seed = 0
  kind = MONO if MONO in variants else STEREO
  config.model = model_config(kind)
  config.data = data_config(kind)
  config.train = train_config(kind)
  config.eval = eval_config()
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
    config.train.update(steps=20, log_every=5, eval_every=10, checkpoint_every=10)
  return config
