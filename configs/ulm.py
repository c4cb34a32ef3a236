"""The unit LM: VAP from k-means units instead of audio (reference/vap_spec.md section 9).

  python run.py --config=configs/ulm.py --mode=units --config.data.units_dir=UNITS \
      --config.units.encoder_checkpoint=ENCODER   # features -> k-means -> units dataset
      [--config.units.layer=6]                    # a converted HuBERT / wav2vec2 / WavLM
  python run.py --config=configs/ulm.py --config.data.units_dir=UNITS --workdir=W
                                                  # train on units, evaluate like configs/vap.py

`units` says how the units are made (the audio corpus, the encoder and its layer, k-means);
`data` reads the units dataset (data.name='units'), never audio. The model is the stereo VAP
model with a unit embedding in place of the encoder and a next-unit head on each speaker's stream;
total = 0.6 VAP + 0.4 next-unit cross-entropy, the reference's weighting (train.vap_loss_weight,
train.unit_loss_weight; the VAD head is kept but not trained, train.vad_loss_weight=0).
Variants (comma-separated):
  (default)    sized for a 2-core CPU: dim 32, 100 units, 10 s windows, 450 steps.
  reference    the reference ULM's sizes: dim 256 (the reference used 768), 100 units, 20 s
               windows, batch 16.
  swb, fisher, swb_fisher, folder
               the audio corpus the units come from (units.data.manual_dir needed).
  tiny         a very small model, codebook and corpus for tests.
"""

import ml_collections

from configs import cpc_pretrain, vap


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variants = [v for v in (arg or '').split(',') if v]
  known = {'reference', 'tiny', *cpc_pretrain.CORPORA}
  if unknown := [v for v in variants if v not in known]:
    raise ValueError(f'unknown config variant(s) {unknown}; known: {sorted(known)}')
  if len(corpora := [v for v in variants if v in cpc_pretrain.CORPORA]) > 1:
    raise ValueError(f'config variants {corpora} each choose the corpus; use one')
  config = vap.get_config('reference' if 'reference' in variants else None)
  config.model.kind = 'ulm'
  config.model.units = 100  # the codebook size: k of k-means and the LM's vocabulary
  config.data.name = 'units'
  config.data.units_dir = ''  # the units dataset (written by --mode=units, read by training)
  config.train.update(vap_loss_weight=0.6, unit_loss_weight=0.4, vad_loss_weight=0.0)
  config.units = ml_collections.ConfigDict(dict(
      data=vap.data_config(vap.STEREO),  # the audio corpus the units come from
      # A `checkpoints_convert` output (cpc, hubert, wav2vec2, wavlm) or a `--mode=pretrain`
      # WORKDIR/encoder; '' = a random causal CPC of width encoder_dim (a baseline).
      encoder_checkpoint='',
      encoder_dim=256,  # the random CPC's width (without encoder_checkpoint)
      padding='',  # CPC: '' = the checkpoint's own ('reference' for converted CPC_audio weights)
      # CPC: 'lstm' (c) | 'conv' (z); HuBERT / wav2vec2 / WavLM: a transformer layer '1'..'L'
      # (torchaudio's extract_features()[k - 1]; conv_ssl took '6' of HuBERT Base).
      layer='lstm',
      chunk_s=20.0,  # encoder pass length: memory is bounded by batch x chunk
      context_s=2.0,  # HuBERT family: audio heard on either side of a chunk (not kept)
      batch_conversations=4,  # conversations per encoder pass
      kmeans=ml_collections.ConfigDict(dict(
          max_frames=200_000,  # frames sampled evenly from the training split ...
          # ... and no more than this many GB (10^9 bytes) of float32 features: conv_ssl's
          # --kmeans_max_feature_memory (its default 20)
          max_feature_memory_gb=20.0,
          batch_size=0,  # 0 = full-batch Lloyd; > 0 = mini-batch k-means with batches this big
          iterations=100,  # Lloyd (or mini-batch) steps at most ...
          tol=1e-4)),  # ... stopping once the inertia improves by less than this (relative)
  ))
  for corpus in corpora:
    config.units.data.name = cpc_pretrain.CORPORA[corpus]
  if 'tiny' in variants:
    config.model.dim = 32
    config.model.units = 16
    config.model.transformer.update(num_heads=2, num_layers=1, cross_layers=1, dropout=0.0)
    config.units.update(encoder_dim=16, chunk_s=5.0)
    config.units.kmeans.max_frames = 4000
    config.units.data.synthetic.update(train=4, validation=2, test=2, duration_s=20.0)
    config.data.update(window_s=5.0, batch_size=2)
    config.train.update(steps=20, log_every=5, eval_every=10, checkpoint_every=10)
  return config
