"""The references' settings that the library itself needs, not only the config files.

`model_config(kind)`, `data_config(kind)`, `train_config(kind)` and `eval_config()` are the models'
and their recipes' reference settings, `base_config(kind)` all of them together (configs/ builds
every config on them; the VAP converter records the first two for converted models, which
`convssl_jax.load` completes with the others); `va_only(config)` derives the VA-only baseline of
a config, which evaluation trains beside the model. Only ml_collections: importing this is
cheap.
"""

import ml_collections
from ml_collections import config_dict

STEREO, MONO = 'stereo', 'mono'


def model_config(kind: str = STEREO) -> ml_collections.ConfigDict:
  """The model of `kind` with the reference's settings."""
  m = ml_collections.ConfigDict()
  m.kind = kind  # 'stereo' (VoiceActivityProjection) | 'mono' (conv_ssl) | 'cpc' | 'ulm'
  m.frame_hz = 50  # 20, 50 or 100; sets the downsampler and the VAP bin frames
  m.dim = 256  # model width: encoder output, transformer, heads
  m.dtype = 'float32'  # compute dtype ('float32' | 'bfloat16'); parameters stay float32
  m.f0_head = False  # also predict each speaker's F0 (an auxiliary loss term)
  m.encoder = ml_collections.ConfigDict(dict(  # the audio encoder (CPC at 100 Hz, downsampled)
      name='cpc',  # 'cpc' | 'hubert' | 'wav2vec2' | 'wavlm' (converted) | 'none' (mono VA-only)
      padding='causal',  # 'causal' (real-time exact) | 'reference' (CPC_audio's, converted weights)
      input_gain=1.0,  # CPC: the waveform's scale before the first conv (1 = CPC_audio's)
      lstm_layers=1,  # CPC's autoregressive LSTM layers
      unroll=16,  # LSTM scan unroll
      freeze=False,  # the encoder is not trained (no gradient, no optimizer state)
      unfreeze_step=-1,  # with freeze: the step at which the encoder starts training (-1 = never)
      output_layer=0,  # hubert/wav2vec2/wavlm: the transformer layer used (0 = the last)
  ))
  # A `python -m checkpoints_convert` output directory: the encoder starts from those weights
  # (use padding='reference' to reproduce them, usually with freeze=True); '' = random init.
  # hubert/wav2vec2/wavlm take their architecture from it too, so they need it.
  m.encoder_checkpoint = ''
  m.transformer = ml_collections.ConfigDict(dict(  # the causal transformer (ALiBi)
      num_heads=4,  # attention heads; must divide model.dim
      ffn_mult=3,  # feed-forward width = ffn_mult x dim
      num_layers=4,  # mono GPT
      self_layers=1,  # stereo per-speaker layers
      cross_layers=3,  # stereo cross-attention layers
      dropout=0.1 if kind == STEREO else 0.4,  # training only; in [0, 1)
      scale='model',  # reference quirk: scores / sqrt(model dim); 'head' for the usual sqrt(head dim)
      double_residual=kind == MONO,  # conv_ssl quirk: h = 2x + attn
      norm_cross_kv=False,  # VAP quirk: cross-attention keys/values are not normalised
      final_norm=False,  # neither reference normalises after the last layer
      context=config_dict.placeholder(int),  # frames a frame may attend back; None = unbounded
      # 'auto': jax.nn.dot_product_attention (cuDNN on GPU in bf16) unless attention dropout is
      # active; 'einsum': always the explicit path. Same numbers.
      attention='auto',
  ))
  # Mono only: the current VA and the VA history (len(data.history_times) + 1 bins; 0 = none).
  m.va_cond = ml_collections.ConfigDict(dict(history_bins=5))
  m.vap = ml_collections.ConfigDict(dict(  # the VAP head and its objective
      head='discrete',  # 'discrete' (256 classes) | 'independent' (a logit per bin) | 'comparative'
      bin_times=(0.2, 0.4, 0.6, 0.8),  # future bins of each speaker, seconds (whole frames)
      threshold=0.5,  # a bin is active when its speaker talks for at least this share of it
      pre_frames=2,  # independent head: leading bins its next-speaker probability leaves out
  ))
  return m


def data_config(kind: str = STEREO) -> ml_collections.ConfigDict:
  """The corpus and the windows cut from it (the reference recipe of `kind`)."""
  d = ml_collections.ConfigDict()
  d.name = 'synthetic_dialogs'  # or switchboard, fisher, dialog_folder (data_builders/README.md)
  d.data_dir = ''  # where built corpora live; '' = TFDS's default (~/tensorflow_datasets)
  d.manual_dir = ''  # the corpus as shipped, for switchboard / fisher / dialog_folder
  d.builder_config = ''  # e.g. 'fold_3' for switchboard; '' = the builder's default
  d.skip_bad = False  # leave out (and list) conversations that fail to load
  d.va_tiers = ''  # dialog_folder TextGrids: 'A_TIER,B_TIER'; '' = recognised in each file
  d.f0_tracker = 'pyin'  # or 'librosa_pyin' (librosa.pyin itself; data_builders/README.md)
  d.beam_runner = ''  # build through Apache Beam with this runner, e.g. 'DirectRunner'
  d.beam_options = ''  # Beam's pipeline flags as one string (data_builders/README.md)
  d.synthetic = ml_collections.ConfigDict(dict(  # size of the built-in corpus
      train=96, validation=16, test=16, duration_s=60.0, cue_reliability=0.9,
      monologues=0))  # generated monologues added to train (the monologue rule's experiment)
  d.window_s = 20.0 if kind == STEREO else 10.0  # model input windows, seconds
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
  t.steps = 3000  # optimizer steps in all (a resumed run continues to this many)
  t.learning_rate = 3.63e-4  # peak (after warmup)
  t.b1, t.b2 = 0.9, 0.999  # Adam's moment decays
  t.weight_decay = 1e-3  # decoupled (AdamW), on every trained parameter
  t.grad_clip = 5.0 if kind == STEREO else 0.0  # global norm; 0 = off
  t.schedule = 'plateau' if kind == STEREO else 'cosine'  # 'plateau' | 'cosine' | 'constant'
  t.warmup_steps = 0  # linear warmup from 0
  # 'cosine' (conv_ssl): CosineAnnealingLR(T_max=2500) stepped every 100 steps, a staircase over
  # a half-cosine of 250,000 steps (nearly flat over a run of tens of thousands).
  t.cosine_stairs = 2500
  t.cosine_stair_steps = 100  # steps per stair of 'cosine'
  t.plateau_factor = 0.5  # learning rate x factor when validation stops improving ...
  t.plateau_patience = 2  # ... for more than this many evaluations
  t.early_stopping_patience = 10  # evaluations without improvement before stopping
  # The best checkpoint (what eval and predict use): 'loss', the lowest validation loss (the
  # references'), or one of the turn-taking scores validation logs (eval.during_training), the
  # highest: 'f1_hold_shift', 'f1_predict_shift', 'f1_short_long', 'f1_bc_prediction'.
  t.best_metric = 'loss'
  # The total loss weighs each term the model computes (`Model.losses`) by its weight here.
  t.vap_loss_weight = 1.0
  t.vad_loss_weight = 1.0  # stereo: total = VAP + VAD
  t.f0_loss_weight = 1.0  # with model.f0_head
  t.cpc_loss_weight = 1.0  # CPC pretraining (configs/cpc_pretrain.py)
  t.unit_loss_weight = 1.0  # the unit LM's next-unit term (configs/ulm.py)
  t.fsdp = 1  # devices per parameter shard; the rest is data parallel
  t.log_every = 50  # steps between logged (and fetched) training metrics
  t.eval_every = 500  # steps; <= 0: once per epoch of training windows
  t.checkpoint_every = 500  # steps between checkpoints (and at the end, and on SIGTERM)
  t.keep_checkpoints = 3  # latest step checkpoints kept (besides the best)
  return t


def eval_config() -> ml_collections.ConfigDict:
  """Turn-taking evaluation (`--mode=eval`, and after training): events, windows, baselines."""
  e = ml_collections.ConfigDict()
  e.checkpoint = 'best'  # 'best' (by train.best_metric) | 'latest'
  e.context_s = 3.0  # overlap of the evaluation windows: every scored frame (but a dialog's
  #                    first window's) has at least this much audio before it
  e.va_only_baseline = True  # also train (same recipe) and score a VA-only model
  e.excerpt_s = 20.0  # length of the plotted excerpt
  # Every validation during training also scores the turn-taking events of the validation dialogs
  # (one speaker order) at the reference's fixed training thresholds (vap_spec.md 5.3 step 5).
  e.during_training = True
  e.training_thresholds = ml_collections.ConfigDict(dict(  # the reference's, for those scores
      shift_prediction=0.3, backchannel_prediction=0.1, short_long=0.5))
  # TurnTakingEvents settings in seconds: the paper's (reference/vap_spec.md section 4).
  e.events = ml_collections.ConfigDict(dict(
      pad=0.05, dur=0.1, pre_label_dur=0.5, onset_dur=0.2, min_context=3.0,
      pre_offset_shift=1.0, post_onset_shift=1.0, pre_offset_hold=1.0, post_onset_hold=1.0,
      non_shift_horizon=2.0, non_shift_majority_ratio=1.0, bc_max_duration=1.0,
      bc_pre_silence=1.0, bc_post_silence=2.0, bc_min_duration=0.2, bc_metric_dur=0.2,
      bc_pre_label_dur=0.5, seed=0))
  return e


def base_config(kind: str = STEREO) -> ml_collections.ConfigDict:
  """A whole config of `kind` with the references' settings: seed, model, data, train, eval."""
  config = ml_collections.ConfigDict()
  config.seed = 0  # parameters' initialisation (dropout, sampling: seed + 1) and the data order
  config.model = model_config(kind)
  config.data = data_config(kind)
  config.train = train_config(kind)
  config.eval = eval_config()
  return config


def va_only(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The VA-only baseline of `config`: the same recipe, a mono model that hears no audio."""
  baseline = config.copy_and_resolve_references()
  baseline.model.kind = MONO
  baseline.model.encoder.name = 'none'
  baseline.model.f0_head = False
  baseline.data.features = ''  # it hears no audio
  baseline.eval.va_only_baseline = False
  return baseline
