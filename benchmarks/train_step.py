"""Step speed of the stereo and mono models: training, training from cached features, inference.

  python benchmarks/train_step.py                    # reference shapes (GPU): stereo 16 x 20 s,
                                                     # mono 16 x 10 s, fp32 and bf16
  python benchmarks/train_step.py --small            # CPU: the same models at batch 2 x 4 s
  python benchmarks/train_step.py --kinds=stereo --dtypes=bfloat16 --cases=train,attention \\
      --set=model.transformer.dropout=0.0
  python benchmarks/train_step.py --cases=train --profile_dir=/tmp/prof   # + top device ops

Per case, one JSON line (and a row in benchmarks/RESULTS.md): step time (mean over `--steps`
calls after `--warmup` calls, blocked on the result), audio-seconds per second, the compiled
step's FLOPs from XLA's cost analysis, FLOP/s, and on a known accelerator the model FLOP
utilisation (FLOP/s over the chip's dense peak for the compute dtype). The models are the
references' (configs/vap.py:reference, frozen CPC encoder, random weights: speed does not depend
on them); the batches are random arrays already on the device, so the input pipeline is not timed.

Cases:
  train       one optimizer step from audio (the frozen encoder runs forward inside the step)
  cached      one optimizer step from the encoder's features (a feature cache)
  infer       the forward pass in eval mode (offline inference)
  attention   every attention call of one training step (forward + backward of
              softmax(q k^T + ALiBi) v at the step's shapes), einsum path and fused path, and
              their share of the `train` step's time when that case ran before in this call.
"""

import ast
import collections
import gzip
import json
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks import results  # noqa: E402
from configs import vap  # noqa: E402
from convssl_jax import parallelism, trainer as trainer_lib  # noqa: E402
from convssl_jax.models import cpc, transformer  # noqa: E402

flags.DEFINE_bool('small', False, 'CPU shapes: batch 2 x 4 s (unless --batch/--window_s say).')
flags.DEFINE_integer('batch', None, 'Batch size (default: 16, or 2 with --small).')
flags.DEFINE_float('window_s', None, 'Window seconds (default: stereo 20, mono 10; 4 with --small).')
flags.DEFINE_list('kinds', ['stereo', 'mono'], 'Models.')
flags.DEFINE_list('dtypes', ['float32', 'bfloat16'], 'Compute dtypes (parameters stay float32).')
flags.DEFINE_list('cases', ['train', 'cached', 'infer', 'attention'], 'What to time.')
flags.DEFINE_integer('warmup', 2, 'Untimed calls (the first compiles).')
flags.DEFINE_integer('steps', 10, 'Timed calls.')
flags.DEFINE_multi_string('set', [], 'Config override KEY=VALUE (e.g. model.encoder.unroll=8).')
flags.DEFINE_bool('record', True, 'Append rows to benchmarks/RESULTS.md.')
flags.DEFINE_string('label', '', "Added to every row as 'section' (gpu_all.sh's sections).")
flags.DEFINE_string('profile_dir', '', 'If set: trace 3 more calls of each train/cached/infer '
                    'case with jax.profiler into DIR/<case> and add the top device ops to the row.')
FLAGS = flags.FLAGS

SAMPLE_RATE = 16_000
# Dense peak FLOP/s per chip (vendor figures, SXM parts). fp32 matmuls run as TF32 on these
# under JAX's default precision, so the fp32 peak is the TF32 tensor-core figure.
PEAK_FLOPS = {
    'H100': {'bfloat16': 989.4e12, 'float32': 494.7e12},
    'H200': {'bfloat16': 989.4e12, 'float32': 494.7e12},
}


def peak_flops(device, dtype: str) -> float | None:
  """The chip's dense peak for `dtype`, or None (CPU, unknown chips: report FLOP/s only)."""
  kind = getattr(device, 'device_kind', '')
  return next((p[dtype] for name, p in PEAK_FLOPS.items() if name in kind), None)


def config_for(kind: str, dtype: str):
  config = vap.get_config('reference' if kind == 'stereo' else 'mono,reference')
  config.model.dtype = dtype
  config.model.encoder.freeze = True  # as in the PyTorch references' figures
  config.data.batch_size = FLAGS.batch or (2 if FLAGS.small else 16)
  config.data.window_s = FLAGS.window_s or (4.0 if FLAGS.small else config.data.window_s)
  for item in FLAGS.set:
    key, value = item.split('=', 1)
    *parents, leaf = key.split('.')
    node = config
    for p in parents:
      node = node[p]
    try:
      value = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      pass  # a plain string
    node[leaf] = value
  return config


def random_batch(config, objective, cached: bool) -> dict[str, np.ndarray]:
  """A batch of the pipeline's shapes and dtypes (features: the encoder's output shape)."""
  rng = np.random.default_rng(0)
  b, m = config.data.batch_size, config.model
  samples = int(config.data.window_s * SAMPLE_RATE)
  n = int(config.data.window_s * m.frame_hz)
  stereo = m.kind == 'stereo'
  batch = {
      'va': (rng.random((b, n + objective.horizon_frames, 2)) < 0.4).astype(np.float32),
      'va_history': rng.random((b, n, m.va_cond.history_bins)).astype(np.float32),
  }
  if cached:
    frames = cpc.num_frames(samples, m.encoder.padding)
    shape = (b, 2, frames, m.dim) if stereo else (b, frames, m.dim)
    batch['features'] = rng.normal(size=shape).astype(jnp.dtype(m.dtype))
  else:
    batch['audio'] = rng.normal(0, 0.1, (b, 2, samples) if stereo else (b, samples)).astype(
        np.float32)
  return batch


def timed(fn, args, carry: int) -> tuple[float, tuple]:
  """(mean seconds per call after warm-up, the arguments for a next call); the first `carry`
  outputs are fed back as the first arguments (the donated train state)."""
  def call(args):
    out = fn(*args)
    return (*out[:carry], *args[carry:]), out

  for _ in range(FLAGS.warmup):
    args, out = call(args)
  jax.block_until_ready(out)
  start = time.perf_counter()
  for _ in range(FLAGS.steps):
    args, out = call(args)
  jax.block_until_ready(out)
  return (time.perf_counter() - start) / FLAGS.steps, args


def compile_with_flops(jitted, *args):
  """(the compiled function, called in place of `jitted`: it compiles once, its FLOPs from XLA's
  cost analysis)."""
  compiled = jitted.lower(*args).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return compiled, float(cost.get('flops', 0.0)) if cost else 0.0


def profile(fn, args, carry: int, directory: pathlib.Path, calls: int = 3) -> list:
  """Traces `calls` calls into `directory` (a Perfetto trace too) and returns the 12 ops with the
  most time on the device (all traced threads on a CPU): [name, ms per call, share]."""
  with jax.profiler.trace(str(directory), create_perfetto_trace=True):
    for _ in range(calls):
      out = fn(*args)
      args = (*out[:carry], *args[carry:])
    jax.block_until_ready(out)
  trace = max(directory.rglob('perfetto_trace.json.gz'), key=lambda p: p.stat().st_mtime)
  events = json.load(gzip.open(trace))
  events = events['traceEvents'] if isinstance(events, dict) else events
  names = {e['pid']: e.get('args', {}).get('name', '') for e in events
           if e.get('ph') == 'M' and e.get('name') == 'process_name'}
  devices = {pid for pid, name in names.items() if 'device:' in name.lower() or 'gpu' in name.lower()}
  totals = collections.Counter()
  for e in events:
    if e.get('ph') == 'X' and (not devices or e.get('pid') in devices):
      totals[e['name']] += e.get('dur', 0) / 1e3 / calls
  whole = sum(totals.values()) or 1.0
  return [[name, round(ms, 3), round(ms / whole, 3)] for name, ms in totals.most_common(12)]


def infer_fn(model_state):
  """jit: (params, batch) -> the model's VAP logits for the batch."""
  graphdef, objective = model_state.graphdef, model_state.objective

  def infer(params, batch):
    model = nnx.merge(graphdef, params)
    model.eval()
    return model.forward(batch, batch['va'].shape[1] - objective.horizon_frames)['logits']

  return jax.jit(infer, in_shardings=(model_state.sharding, model_state.batch_sharding))


def attention_calls(config) -> tuple[int, int]:
  """(attention calls in one forward pass, their batch): stereo runs both speakers as one batch,
  and each cross layer has a self- and a cross-attention."""
  t, b = config.model.transformer, config.data.batch_size
  if config.model.kind == 'stereo':
    return t.self_layers + 2 * t.cross_layers, 2 * b
  return t.num_layers, b


def attention_case(config, implementation: str) -> tuple[float, float]:
  """(seconds, FLOPs) of forward + backward through every attention call of one step."""
  calls, batch = attention_calls(config)
  t, m = config.model.transformer, config.model
  frames = int(config.data.window_s * m.frame_hz)
  head_dim = m.dim // t.num_heads
  dtype = jnp.dtype(m.dtype)
  shape = (calls, batch, t.num_heads, frames, head_dim)
  q, k, v = (jax.random.normal(jax.random.key(i), shape, dtype) for i in range(3))
  bias = transformer.causal_alibi_bias(transformer.alibi_slopes(t.num_heads), frames, t.context)
  scale = 1.0 / np.sqrt(m.dim if t.scale == 'model' else head_dim)
  dropout = nnx.Dropout(0.0)

  def loss(q, k, v):
    one = lambda q, k, v: transformer.attention(q, k, v, bias, scale, dropout, implementation)
    return jnp.sum(jax.lax.map(lambda x: one(*x), (q, k, v)).astype(jnp.float32))

  step = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
  step, flops = compile_with_flops(step, q, k, v)
  return timed(step, (q, k, v), 0)[0], flops


def run_case(kind: str, dtype: str, case: str, train_ms: dict) -> list[dict]:
  config = config_for(kind, dtype)
  d, m = config.data, config.model
  device = jax.devices()[0]
  base = {'benchmark': 'train_step', 'case': case, 'model': kind, 'dtype': dtype,
          'batch': d.batch_size, 'window_s': d.window_s, 'dim': m.dim,
          'unroll': m.encoder.unroll, 'attention': m.transformer.attention,
          'dropout': m.transformer.dropout, 'platform': device.platform,
          'device': getattr(device, 'device_kind', device.platform),
          'devices': jax.device_count()}
  audio_s = d.batch_size * d.window_s
  if case == 'attention':
    rows = []
    for implementation in ('einsum', 'auto'):
      seconds, flops = attention_case(config, implementation)
      row = {**base, 'implementation': implementation,
             'attention_ms': round(seconds * 1e3, 3), 'flops': flops}
      if (kind, dtype) in train_ms:
        row['share_of_train_step'] = round(seconds * 1e3 / train_ms[kind, dtype], 3)
      rows.append(row)
    return rows
  trainer = trainer_lib.Trainer(config, parallelism.make_mesh(config.train.fsdp))
  model = trainer.model
  batch = {k: jax.device_put(v, model.batch_sharding)
           for k, v in random_batch(config, model.objective, case == 'cached').items()}
  if case == 'infer':
    fn, args, carry = infer_fn(model), (model.params, batch), 0
  else:
    fn, args, carry = trainer.step_fn, (model.params, trainer.opt_state, batch), 2
  fn, flops = compile_with_flops(fn, *args)
  seconds, args = timed(fn, args, carry)
  if case == 'train':
    train_ms[kind, dtype] = seconds * 1e3
  row = {**base, 'step_ms': round(seconds * 1e3, 2),
         'audio_s_per_s': round(audio_s / seconds, 1), 'flops': flops,
         'tflop_per_s': round(flops / seconds / 1e12, 4),
         'params_trained': trainer.param_counts[1], 'params_total': trainer.param_counts[0]}
  peak = peak_flops(device, dtype)
  if peak:
    row['mfu'] = round(flops / seconds / (peak * jax.device_count()), 4)
  if FLAGS.profile_dir:
    directory = pathlib.Path(FLAGS.profile_dir) / f'{kind}_{dtype}_{case}'
    row['profile_top_ops'] = profile(fn, args, carry, directory)
  return [row]


def main(_):
  train_ms = {}
  for kind in FLAGS.kinds:
    for dtype in FLAGS.dtypes:
      for case in FLAGS.cases:
        try:
          rows = run_case(kind, dtype, case, train_ms)
        except Exception as e:  # one failing case (say, a kernel the GPU refuses) ends no others
          rows = [{'benchmark': 'train_step', 'case': case, 'model': kind, 'dtype': dtype,
                   'error': f'{type(e).__name__}: {str(e)[:500]}'}]
        for row in rows:
          row = {'section': FLAGS.label, **row} if FLAGS.label else row
          if FLAGS.record:
            results.record('train_step', row, ('jax', 'flax'))
          else:
            print(json.dumps(row), flush=True)


if __name__ == '__main__':
  app.run(main)
