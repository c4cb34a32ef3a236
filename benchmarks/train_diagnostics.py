"""Per-step training diagnostics of a stereo VAP config (CPC encoder): what moves when a loss spikes.

Trains exactly as `run.py` (the same Trainer step, data order and validation) and writes
WORKDIR/diagnostics.jsonl, one line per step: the losses, the gradient norm and each module
group's update norm. A step whose gradient norm exceeds --spike_factor times the median of the
previous 50 is a spike; on the state before it (and every --probe_every steps, as a control) the
line also holds a `probe`:

* `grad`: each module group's gradient norm (each CPC conv layer on its own) of the VAP term, the
  VAD term, the VAD term on the frames whose target is silence / speech only (the loss masked),
  and the VAD term through the encoder's silent / speech audio frames only (at every conv layer
  the conv output is a stop-gradient outside the channel's silent / speech frames, by its VA);
* `layers`: per CPC layer, ChannelNorm's input variance over channels (median on silent and on
  speech frames, the share of frames below its eps, i.e. where rsqrt(var + eps) is eps-bound) and
  the share of dead channels (ReLU output zero on every frame of the batch).

  python benchmarks/train_diagnostics.py --config=configs/vap.py --workdir=/tmp/diag \
      --config.seed=1 --config.train.steps=170 --config.train.eval_every=170
"""

import functools
import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags
from flax import nnx
from ml_collections import config_flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from convssl_jax import corpora, evaluate, model_state, parallelism
from convssl_jax import train as train_lib
from convssl_jax import trainer as trainer_lib
from convssl_jax.data import pipeline
from convssl_jax.models import cpc, vap

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', 'configs/vap.py', 'Config file[:variant,...].')
flags.DEFINE_string('workdir', None, 'Where diagnostics.jsonl goes.', required=True)
flags.DEFINE_float('spike_factor', 4.0, 'A spike: gradient norm > this x the median of the '
                   'previous 50 steps.')
flags.DEFINE_integer('probe_every', 15, 'Also probe every this many steps (control; 0 = never).')
flags.DEFINE_string('compilation_cache', '', 'Persistent XLA compilation cache directory.')

N_CONVS = len(cpc.KERNELS)
GROUPS = (*(('encoder', 'convs', str(i)) for i in range(N_CONVS)), ('encoder', 'norms'),
          ('encoder', 'lstm'), ('downsample',), ('transformer',), ('vap_head',), ('vad_head',))
# (term, which frames): the probed gradients. 'target': the VAD loss masked to the frames whose
# target is silence/speech; 'audio': the gradient only through the encoder's silent/speech frames.
PROBES = (('vap', 'all'), ('vad', 'all'), ('vad', 'target_silent'), ('vad', 'target_speech'),
          ('vad', 'audio_silent'), ('vad', 'audio_speech'))


def group_norms(tree) -> dict[str, jax.Array]:
  """The L2 norm of `tree`'s float leaves per module group."""
  sums = {'.'.join(g): 0.0 for g in GROUPS}
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    keys = tuple(str(getattr(k, 'key', getattr(k, 'idx', k))) for k in path)
    if jnp.issubdtype(leaf.dtype, jnp.floating):
      for g in GROUPS:
        if keys[:len(g)] == g:
          sums['.'.join(g)] += jnp.sum(jnp.square(leaf.astype(jnp.float32)))
  return {k: jnp.sqrt(v) for k, v in sums.items()}


def silent_frames(va: jax.Array, frames: int, n: int) -> jax.Array:
  """va [B, N + H, 2] -> [2B, n] True where the channel's speaker is silent, for n encoder frames
  over the first `frames` VA frames (rows as `vap.both`: speaker A's first)."""
  rows = jnp.concatenate([va[:, :frames, 0], va[:, :frames, 1]], axis=0)
  index = jnp.minimum(jnp.arange(n) * frames // n, frames - 1)
  return rows[:, index] < 0.5


def probe_forward(model, batch, frames: int, keep: str | None):
  """The stereo model's outputs computed layer by layer through its CPC encoder (as
  `StereoVAP.__call__`), with each ChannelNorm's input variance [2B, T_i] and each layer's
  post-ReLU channel activity. `keep` ('silent'/'speech'): the gradient flows through those
  frames of every conv output only."""
  enc = model.encoder
  x = enc.conv_input(vap.both(batch['audio']))
  variances, alive = [], []
  for conv, norm in zip(enc.convs, enc.norms):
    h = conv(x)
    silent = silent_frames(batch['va'], frames, h.shape[1])
    if keep is not None:
      mask = (silent if keep == 'silent' else ~silent)[..., None]
      h = jnp.where(mask, h, jax.lax.stop_gradient(h))
    variances.append(h.astype(jnp.float32).var(-1, ddof=1))
    x = jax.nn.relu(norm(h))
    alive.append((x > 0).any(axis=(0, 1)))
  z = enc.lstm(x)
  z = z if model.downsample is None else model.downsample(z)
  return model.body_outputs(z), variances, alive


def make_probe(trainer, config):
  """jit: (params, device batch, term, frames) -> (group grad norms, loss, layer stats)."""
  graphdef, objective = trainer.model.graphdef, trainer.objective
  weights = model_state.loss_weights(config.train, ('vap', 'vad'))

  @functools.partial(jax.jit, static_argnames=('term', 'which'))
  def probe(params, batch, term, which):
    frames = batch['va'].shape[1] - objective.horizon_frames

    def loss_fn(model):
      model.train()
      keep = which.removeprefix('audio_') if which.startswith('audio_') else None
      out, variances, alive = probe_forward(model, batch, frames, keep)
      if term == 'vap':
        vap_term = model.losses(out, batch, objective, frames)[0]['vap']  # vap.Masked: dialogs
        loss = jnp.sum(vap_term.value * vap_term.present) / jnp.maximum(
            jnp.sum(vap_term.present), 1)
      else:
        target = batch['va'][:, :frames]
        bce = optax.sigmoid_binary_cross_entropy(out['vad'][:, :frames].astype(jnp.float32),
                                                 target)
        mask = {'target_silent': target < 0.5, 'target_speech': target >= 0.5}.get(which, 1.0)
        loss = jnp.sum(bce * mask) / bce.size  # the two masked parts sum to the full term
      return weights[term] * loss, (variances, alive)

    model = nnx.merge(graphdef, params)
    (loss, (variances, alive)), grads = nnx.value_and_grad(
        loss_fn, argnums=nnx.DiffState(0, trainer.trainable), has_aux=True)(model)
    silent = [silent_frames(batch['va'], frames, v.shape[1]) for v in variances]
    return group_norms(grads), loss, variances, silent, alive

  return probe


def layer_stats(variances, silent, alive) -> list[dict[str, float]]:
  """Per CPC layer: ChannelNorm input variance on silent / speech frames, eps-bound shares, the
  largest rsqrt gain, dead channels."""
  out = []
  for var, sil, live in zip(variances, silent, alive):
    var, sil = np.asarray(var), np.asarray(sil)
    row = {}
    for name, m in (('silent', sil), ('speech', ~sil)):
      v = var[m]
      row[f'var_median_{name}'] = float(np.median(v)) if v.size else None
      row[f'below_eps_{name}'] = float(np.mean(v < cpc.CHANNEL_NORM_EPS)) if v.size else None
      row[f'max_gain_{name}'] = (float(1 / np.sqrt(v.min() + cpc.CHANNEL_NORM_EPS))
                                 if v.size else None)
    row['dead_channels'] = float(1 - np.mean(live))
    out.append(row)
  return out


def main(argv):
  del argv
  config = FLAGS.config
  if FLAGS.compilation_cache:
    jax.config.update('jax_compilation_cache_dir', FLAGS.compilation_cache)
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 1.0)
  workdir = pathlib.Path(FLAGS.workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  t, d = config.train, config.data
  trainer = trainer_lib.Trainer(config, parallelism.make_mesh(t.fsdp))
  model = trainer.model
  spec = corpora.window_spec(config, trainer.objective)
  data = corpora.open_corpora(config, ('train', 'validation'))
  n_windows = len(pipeline.window_table(data['train'], d.window_s, d.overlap_s, cover=False))
  train_iter = iter(pipeline.train_dataset(  # as train.train_and_evaluate
      data['train'], spec, batch_size=d.batch_size, seed=config.seed, overlap_s=d.overlap_s,
      channel_swap=d.channel_swap, epochs=min(100, -(-t.steps * d.batch_size // n_windows)),
      jitter_grid_s=d.jitter_grid_s))
  events = evaluate.Evaluation.for_config(config)
  probe = make_probe(trainer, config)
  floating = lambda x: jnp.issubdtype(x.dtype, jnp.floating)
  update_norms = jax.jit(lambda old, new: group_norms(jax.tree.map(
      lambda a, b: b - a if floating(a) else jnp.zeros(()), old, new)))
  copy = jax.jit(lambda tree: jax.tree.map(jnp.copy, tree))

  def run_probe(params, device_batch, metrics):
    row = {}
    for term, which in PROBES:
      norms, loss, variances, silent, alive = jax.device_get(
          probe(params, device_batch, term, which))
      row[f'{term}_{which}'] = {'loss': float(loss), **{k: float(v) for k, v in norms.items()}}
      if (term, which) == ('vad', 'all'):
        row['layers'] = layer_stats(variances, silent, alive)
    # The probe's forward is the model's: its full terms match the step's losses.
    for term in ('vap', 'vad'):
      np.testing.assert_allclose(row[f'{term}_all']['loss'], metrics[f'{term}_loss'], rtol=1e-3)
    return row

  with open(workdir / 'diagnostics.jsonl', 'w') as log:
    norms = []
    for step in range(t.steps):
      batch = next(train_iter)
      device_batch = model.to_device(batch)
      before = copy(model.params)  # the step donates the state
      metrics = {k: float(v) for k, v in jax.device_get(trainer.train_step(device_batch)).items()}
      row = {'step': step + 1, **metrics, 'update': {k: float(v) for k, v in jax.device_get(
          update_norms(before, model.params)).items()}}
      median = float(np.median(norms[-50:])) if len(norms) >= 10 else None
      spike = median is not None and metrics['grad_norm'] > FLAGS.spike_factor * median
      if spike or (FLAGS.probe_every and (step + 1) % FLAGS.probe_every == 0):
        row['median_grad_norm'] = median
        row['spike'] = spike
        row['probe'] = run_probe(before, device_batch, metrics)
      if spike:
        p = row['probe']
        print(f"step {step + 1}: spike, gradient norm {metrics['grad_norm']:.1f} (median "
              f"{median:.2f}); VAD grad on convs.0 from silent/speech audio frames "
              f"{p['vad_audio_silent']['encoder.convs.0']:.2f}/"
              f"{p['vad_audio_speech']['encoder.convs.0']:.2f}", flush=True)
      norms.append(metrics['grad_norm'])
      if (step + 1) % t.eval_every == 0 or step + 1 == t.steps:
        val = train_lib.evaluate_loss(model, pipeline.eval_dataset(
            data['validation'], spec, batch_size=d.batch_size, overlap_s=0.0))
        val.update(evaluate.training_scores(model, config, data['validation'], events))
        row['validation'] = val
        print(f'step {step + 1} validation: ' + ', '.join(
            f'{k} {v:.4f}' for k, v in val.items() if not k.startswith(('shift_', 'hold_'))),
            flush=True)
      log.write(json.dumps(row) + '\n')
      log.flush()


if __name__ == '__main__':
  app.run(main)
