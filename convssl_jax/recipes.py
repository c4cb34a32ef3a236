"""The references' settings that the library itself needs, not only the config files.

`model_config(kind)` and `data_config(kind)` are the models' and their recipes' reference settings
(configs/ builds every config on them; the VAP converter records them for converted models);
`va_only(config)` derives the VA-only baseline of a config, which evaluation trains beside the
model. Only ml_collections: importing this is cheap.
"""

import ml_collections
from ml_collections import config_dict

STEREO, MONO = 'stereo', 'mono'


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
  d.va_tiers = ''  # dialog_folder TextGrids: 'A_TIER,B_TIER'; '' = recognised in each file
  d.synthetic = ml_collections.ConfigDict(dict(  # size of the built-in corpus
      train=96, validation=16, test=16, duration_s=60.0, cue_reliability=0.9,
      monologues=0))  # generated monologues added to train (the monologue rule's experiment)
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


def va_only(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The VA-only baseline of `config`: the same recipe, a mono model that hears no audio."""
  baseline = config.copy_and_resolve_references()
  baseline.model.kind = MONO
  baseline.model.encoder.name = 'none'
  baseline.model.f0_head = False
  baseline.data.features = ''  # it hears no audio
  baseline.eval.va_only_baseline = False
  return baseline
