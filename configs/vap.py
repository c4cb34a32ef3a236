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
from ml_collections import config_dict

STEREO, MONO, REFERENCE = 'stereo', 'mono', 'reference'
HEADS = {
    'independent': dict(head='independent', bin_times=(0.2, 0.4, 0.6, 0.8), pre_frames=2),
    'independent40': dict(head='independent', bin_times=(0.05,) * 40, pre_frames=12, frame_hz=100),
    'skantze': dict(head='independent', bin_times=(0.05,) * 60, pre_frames=12, frame_hz=100),
    'comparative': dict(head='comparative', bin_times=(0.2, 0.4, 0.6, 0.8), pre_frames=2),
}
CORPORA = {'swb': 'switchboard', 'fisher': 'fisher', 'swb_fisher': 'switchboard+fisher'}
ALIASES = {f'{MONO}_{head}': (MONO, head) for head in HEADS}


def model_config(kind: str = STEREO) -> ml_collections.ConfigDict:
  """The model of `kind` with the reference's settings."""
  m = ml_collections.ConfigDict()
  m.kind = kind
  m.frame_hz = 50  # 20, 50 or 100; sets the downsampler and the VAP bin frames
  m.dim = 256
  m.dtype = 'float32'  # compute dtype ('float32' | 'bfloat16'); parameters stay float32
  m.f0_head = False
  m.encoder = ml_collections.ConfigDict(dict(
      name='cpc',  # 'cpc' | 'hubert' | 'wav2vec2' | 'wavlm' (converted) | 'none' (mono VA-only)
      padding='causal',  # 'causal' (real-time exact) | 'reference' (CPC_audio's, converted weights)
      lstm_layers=1,
      unroll=16,  # LSTM scan unroll
      freeze=False,
      unfreeze_step=-1,  # with freeze: the step at which the encoder starts training (-1 = never)
      output_layer=0,  # hubert/wav2vec2/wavlm: the transformer layer used (0 = the last)
  ))
  # A `python -m checkpoints_convert` output directory: the encoder starts from those weights
  # (use padding='reference' to reproduce them, usually with freeze=True); '' = random init.
  # hubert/wav2vec2/wavlm take their architecture from it too, so they need it.
  m.encoder_checkpoint = ''
  m.transformer = ml_collections.ConfigDict(dict(
      num_heads=4,
      ffn_mult=3,
      num_layers=4,  # mono GPT
      self_layers=1,  # stereo per-speaker layers
      cross_layers=3,  # stereo cross-attention layers
      dropout=0.1 if kind == STEREO else 0.4,
      scale='model',  # reference quirk: scores / sqrt(model dim); 'head' for the usual sqrt(head dim)
      double_residual=kind == MONO,  # conv_ssl quirk: h = 2x + attn
      norm_cross_kv=False,  # VAP quirk: cross-attention keys/values are not normalised
      final_norm=False,  # neither reference normalises after the last layer
      context=config_dict.placeholder(int),  # frames a frame may attend back; None = unbounded
      # 'auto': jax.nn.dot_product_attention (cuDNN on GPU in bf16) unless attention dropout is
      # active; 'einsum': always the explicit path. Same numbers.
      attention='auto',
  ))
  m.va_cond = ml_collections.ConfigDict(dict(history_bins=5))  # mono only
  m.vap = ml_collections.ConfigDict(dict(
      head='discrete', bin_times=(0.2, 0.4, 0.6, 0.8), threshold=0.5, pre_frames=2))
  return m


def data_config(kind: str = STEREO) -> ml_collections.ConfigDict:
  """The corpus and the windows cut from it (the reference recipe of `kind`)."""
  d = ml_collections.ConfigDict()
  d.name = 'synthetic_dialogs'  # or switchboard, fisher, dialog_folder (data_builders/README.md)
  d.data_dir = ''  # where built corpora live; '' = TFDS's default (~/tensorflow_datasets)
  d.manual_dir = ''  # the corpus as shipped, for switchboard / fisher / dialog_folder
  d.builder_config = ''  # e.g. 'fold_3' for switchboard; '' = the builder's default
  d.skip_bad = False  # leave out (and list) conversations that fail to load
  d.f0_tracker = 'pyin'  # or 'librosa_pyin' (librosa.pyin itself; data_builders/README.md)
  d.beam_runner = ''  # build through Apache Beam with this runner, e.g. 'DirectRunner'
  d.beam_options = ''  # Beam's pipeline flags as one string (data_builders/README.md)
  d.synthetic = ml_collections.ConfigDict(dict(  # size of the built-in corpus
      train=96, validation=16, test=16, duration_s=60.0, cue_reliability=0.9))
  d.window_s = 20.0 if kind == STEREO else 10.0
  d.overlap_s = 2.0  # between consecutive training windows (evaluation windows cover each dialog)
  d.batch_size = 8  # global, over all devices and hosts
  d.channel_swap = 0.5  # training-only speaker-swap probability
  # Training windows move by a random offset below window_s - overlap_s: any (0) or a multiple of
  # this many seconds (> 0; what a feature cache needs: it holds the windows of that grid).
  d.jitter_grid_s = 0.0
  # A frozen-encoder feature cache (run.py --mode=cache_features) to train from instead of audio;
  # '' = the encoder runs in every step. Built for this config's corpus, windows and encoder.
  d.features = ''
  d.normalize = kind == MONO  # per-window peak normalisation: conv_ssl yes, VAP stereo no
  d.history_times = (60, 30, 10, 5)  # VA history bin edges, seconds
  return d


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
  t.vad_loss_weight = 1.0  # stereo: total = VAP + VAD
  t.f0_loss_weight = 1.0  # with model.f0_head
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


def va_only(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The VA-only baseline of `config`: the same recipe, a mono model that hears no audio."""
  baseline = config.copy_and_resolve_references()
  baseline.model.kind = MONO
  baseline.model.encoder.name = 'none'
  baseline.model.f0_head = False
  baseline.data.features = ''  # it hears no audio
  baseline.eval.va_only_baseline = False
  return baseline


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
