"""Streaming latency: one `inference.Streamer.push` of a 20 ms stereo hop, end to end.

  python benchmarks/stream.py [--config=configs/vap.py:reference] [--audio_s=3600] [--context_s=20]

A randomly initialised model of the config (latency does not depend on the weights) with the
encoder's causal padding and `context_s` of attention, fed `audio_s` of stereo noise in `hop_ms`
pushes, as a live source would. Each push is timed from the samples in to the per-frame outputs
on the host (p_now, p_future, p_bc, vad). The first `warmup` pushes (compilation) are not timed.
Reports the median / p99 / max latency, the real-time factor (median / hop), the CPU time per
push (all threads) and the machine's load average (other work inflates latency), and the process's
resident memory after warm-up and at every tenth of the stream (flat = bounded state). Prints
one JSON line and appends a row to benchmarks/RESULTS.md.
"""

import gc
import os
import pathlib
import sys
import time

import jax
import numpy as np
from absl import app, flags
from flax import nnx
from ml_collections import config_flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks import results  # noqa: E402
from convssl_jax import inference, models, objective as objective_lib  # noqa: E402

config_flags.DEFINE_config_file('config', 'configs/vap.py:reference', 'Config file[:variant,...].')
flags.DEFINE_float('audio_s', 3600.0, 'Seconds of audio streamed.')
flags.DEFINE_float('hop_ms', 20.0, 'Milliseconds of audio per push.')
flags.DEFINE_float('context_s', 20.0, 'Attention context in seconds (the key/value cache size).')
flags.DEFINE_integer('warmup', 50, 'Untimed pushes first.')
FLAGS = flags.FLAGS
RATE = 16000


def rss_mb() -> float:
  """The process's resident memory now (not its peak)."""
  pages = int(pathlib.Path('/proc/self/statm').read_text().split()[1])
  return pages * 4096 / 2**20


def main(_):
  cfg = FLAGS.config.model
  cfg.encoder.padding = 'causal'
  model = models.build_model(cfg, rngs=nnx.Rngs(0))
  objective = objective_lib.for_model(cfg)
  context = int(FLAGS.context_s * cfg.frame_hz)
  streamer = inference.Streamer(model, objective, context=context)
  hop = int(FLAGS.hop_ms * RATE / 1000)
  source = (0.1 * np.random.default_rng(0).standard_normal((2, 10 * RATE))).astype(np.float32)
  pushes = int(FLAGS.audio_s * RATE / hop)

  def push(i):
    start = (i * hop) % (source.shape[1] - hop)
    return streamer.push(source[:, start:start + hop])

  for i in range(FLAGS.warmup):
    push(i)
  gc.freeze()  # as run.py --mode=stream: the startup's objects out of the collector's way
  memory = [round(rss_mb(), 1)]
  latency, cpu = np.empty(pushes), np.empty(pushes)
  for i in range(pushes):
    start, start_cpu = time.perf_counter(), time.process_time()
    push(FLAGS.warmup + i)
    latency[i], cpu[i] = time.perf_counter() - start, time.process_time() - start_cpu
    if (i + 1) % max(pushes // 10, 1) == 0:
      memory.append(round(rss_mb(), 1))
  ms = latency * 1000
  result = {
      'benchmark': 'stream', 'model': cfg.kind, 'dim': cfg.dim, 'frame_hz': cfg.frame_hz,
      'context_s': FLAGS.context_s, 'hop_ms': FLAGS.hop_ms, 'audio_s': FLAGS.audio_s,
      'device': jax.devices()[0].platform, 'cpus': len(os.sched_getaffinity(0)),
      'median_ms': round(float(np.median(ms)), 3), 'p99_ms': round(float(np.percentile(ms, 99)), 3),
      'max_ms': round(float(ms.max()), 3),
      'real_time_factor': round(float(np.median(ms)) / FLAGS.hop_ms, 4),
      'cpu_ms_median': round(float(np.median(cpu) * 1000), 3),
      'load_average': os.getloadavg()[0],
      'rss_mb': memory, 'compilations': streamer.compilations,
      'xla_flags': os.environ.get('XLA_FLAGS', ''),
  }
  results.record('stream', result, ('jax', 'flax'))


if __name__ == '__main__':
  app.run(main)
