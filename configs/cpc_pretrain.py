"""CPC pretraining of the causal CPC encoder: `run.py --config=configs/cpc_pretrain.py --mode=pretrain`.

Trains CPC_audio's objective (12 prediction steps, one linear predictor each, 128 negatives from
the batch) on each speaker's channel of any corpus of the project, then exports the encoder to
WORKDIR/encoder, which `configs/vap.py` takes as `--config.model.encoder_checkpoint=WORKDIR/encoder`
(same `model.dim`). Monologues (a `dialog_folder` of mono files) get a silent partner channel,
which adds no CPC term. Variants (comma-separated):
  (default)    CPC alone, sized for a 2-core CPU: dim 32, 5 s windows, 600 steps (the README's
               run: VAP on this encoder tells shifts from holds, on a random one it cannot).
  scpc_plus    the original design's "SCPC+": the same encoder also carries the stereo VAP body
               (VAP, VAD and F0 heads); total = CPC + VAP + VAD + F0 (train.*_loss_weight),
               10 s windows.
  reference    CPC_audio's sizes and optimiser: dim 256, Adam 2e-4, no weight decay, batch 16.
  swb, fisher, swb_fisher, folder
               the corpus (folder = data_builders' dialog_folder); needs --config.data.manual_dir.
  tiny         a very small model and corpus for tests (16 negatives).
Any field can be overridden, e.g. --config.model.encoder_checkpoint=DIR to start from converted
CPC_audio weights, --config.model.cpc.negatives_from=sequence for negatives from the anchor's own
channel only.
"""

import ml_collections

from configs import vap

CORPORA = {**vap.CORPORA, 'folder': 'dialog_folder'}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variants = [v for v in (arg or '').split(',') if v]
  known = {'scpc_plus', 'reference', 'tiny', *CORPORA}
  if unknown := [v for v in variants if v not in known]:
    raise ValueError(f'unknown config variant(s) {unknown}; known: {sorted(known)}')
  if len(corpora := [v for v in variants if v in CORPORA]) > 1:
    raise ValueError(f'config variants {corpora} each choose the corpus; use one')
  heads = 'scpc_plus' in variants
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.model = vap.model_config(vap.STEREO)
  config.model.kind = 'cpc'
  config.model.cpc = ml_collections.ConfigDict(dict(
      predict_steps=12,  # CPC_audio's nPredicts
      negatives=128,  # CPC_audio's negativeSamplingExt
      negatives_from='batch',  # 'batch' (CPC_audio) | 'sequence' (the anchor's own channel)
      heads=heads,  # the stereo VAP body and heads on the same encoder (SCPC+)
  ))
  config.model.f0_head = heads
  config.data = vap.data_config(vap.STEREO)
  # Per-window peak normalisation: on quiet audio (the synthetic corpus peaks near 0.4) the
  # conv biases swamp the input and CPC collapses to constant features without it.
  config.data.normalize = True
  config.train = vap.train_config(vap.STEREO)
  config.train.update(schedule='constant', grad_clip=0.0, weight_decay=0.0, learning_rate=2e-4)
  config.eval = vap.eval_config()  # eval.checkpoint: which checkpoint --mode=pretrain exports
  if 'reference' in variants:
    config.data.update(batch_size=16, window_s=10.0 if heads else 1.28)
    config.train.update(steps=100_000, eval_every=2_000, checkpoint_every=2_000, log_every=100)
  else:
    config.model.dim = 32
    config.model.encoder.unroll = 1
    config.model.transformer.update(cross_layers=1, dropout=0.0)
    config.data.window_s = 10.0 if heads else 5.0
    config.train.update(steps=600, learning_rate=1e-3, log_every=15, eval_every=150,
                        checkpoint_every=150)
  for corpus in corpora:
    config.data.name = CORPORA[corpus]
  if 'tiny' in variants:
    config.model.encoder.unroll = 4
    config.model.transformer.update(num_heads=2, num_layers=1, cross_layers=1)
    config.data.synthetic.update(train=4, validation=2, test=2, duration_s=20.0)
    config.model.cpc.negatives = 16
    config.data.update(window_s=5.0, batch_size=2)
    # 1e-3: at 2e-3 the InfoNCE loss fell back to chance within 40 steps for seeds 1 and 2 of 0..2;
    # at 1e-3 all three learn through 60 steps.
    config.train.update(steps=20, learning_rate=1e-3, log_every=5, eval_every=10,
                        checkpoint_every=10)
  return config
