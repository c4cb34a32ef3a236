"""`run.py --mode=serve` under N simulated clients over WebSocket on localhost.

  python benchmarks/serve.py [--clients=3] [--seconds=600] [--config=configs/vap.py:reference]

The server (convssl_jax/serve.py, in a child process: `--role=server`) runs a randomly initialised
model of the config (latency does not depend on the weights) with the encoder's causal padding
and `context_s` of attention. Each client, an asyncio task of this process, streams stereo noise as
a two-channel microphone at 16 kHz would: one 20 ms block (a stamp and int16 samples) every
20 ms on an absolute schedule, for `seconds`. Reported per run:
- step: the server's push of a client's waiting audio through its Streamer (`step_ms`);
- round trip: from a block sent to the frames it completed back at the client (the stamp echoed);
- queue: audio waiting in the server's per-client queue when each push was sent, its maximum in
  the first and last tenth of the run (a growing backlog would show), and audio dropped;
- frames received against frames sent, and the machine's load average before and after (the
  machine is shared: other work inflates latency).
Prints one JSON line and appends a row to benchmarks/RESULTS.md.
"""

import asyncio
import json
import os
import pathlib
import struct
import subprocess
import sys
import time

import numpy as np
from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks import results  # noqa: E402

config_flags.DEFINE_config_file('config', 'configs/vap.py:reference', 'Config file[:variant,...].')
flags.DEFINE_integer('clients', 3, 'Simultaneous clients.')
flags.DEFINE_float('seconds', 600.0, 'Seconds each client streams.')
flags.DEFINE_float('context_s', 20.0, 'Attention context in seconds.')
flags.DEFINE_float('queue_s', 0.5, "The server's per-client queue bound in seconds.")
flags.DEFINE_integer('workers', 2, "The server's threads stepping the models.")
flags.DEFINE_enum('role', 'bench', ['bench', 'server'], 'server: the child that serves.')
flags.DEFINE_integer('port', 0, 'server: the port.')
FLAGS = flags.FLAGS
RATE, HOP = 16000, 320


def run_server() -> None:
  """The child: the model's server on FLAGS.port until killed; says 'ready' on stdout."""
  from flax import nnx

  from convssl_jax import inference, models, objective as objective_lib, serve
  cfg = FLAGS.config.model
  cfg.encoder.padding = 'causal'
  model = models.build_model(cfg, rngs=nnx.Rngs(0))
  model.eval()
  streamer = inference.Streamer(model, objective_lib.for_model(cfg),
                                context=int(FLAGS.context_s * cfg.frame_hz))
  serve.warm_up(streamer)
  server = serve.Server(streamer, cfg.frame_hz, port=FLAGS.port, queue_s=FLAGS.queue_s,
                        max_clients=FLAGS.clients, workers=FLAGS.workers)

  async def forever():
    await server.start()
    print('ready', flush=True)
    await asyncio.Event().wait()

  asyncio.run(forever())


async def client(url: str, seconds: float, seed: int) -> dict:
  """One client streaming in real time; what it measured."""
  import aiohttp  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(seed)
  noise = (rng.standard_normal((RATE, 2)) * 3000).astype('<i2')  # 1 s, looped
  blocks = int(seconds * RATE / HOP)
  rtt, steps, queue, times, dropped, frames = [], [], [], [], 0.0, 0
  async with aiohttp.ClientSession() as session:
    async with session.ws_connect(f'{url}ws') as ws:
      await ws.send_json({'type': 'start', 'rate': RATE, 'channels': 2, 'partner': None})
      assert (await ws.receive_json())['type'] == 'ready'
      start = time.perf_counter()

      async def receive():
        nonlocal dropped, frames
        async for message in ws:
          m = json.loads(message.data)
          if m['type'] != 'frames':
            continue
          now = time.perf_counter()
          rtt.append(now * 1000 - m['stamp'])
          steps.append(m['step_ms'])
          queue.append(m['queue_s'])
          times.append(now - start)
          dropped, frames = m['dropped_s'], frames + len(m['level'])

      receiver = asyncio.create_task(receive())
      for i in range(blocks):
        await asyncio.sleep(max(0.0, start + i * HOP / RATE - time.perf_counter()))
        first = (i * HOP) % (RATE - HOP)
        await ws.send_bytes(struct.pack('<d', time.perf_counter() * 1000)
                            + noise[first:first + HOP].tobytes())
      await ws.send_json({'type': 'stop'})
      await asyncio.wait_for(receiver, 120)
  return {'rtt': rtt, 'steps': steps, 'queue': queue, 'times': times, 'dropped_s': dropped,
          'frames': frames, 'frames_sent': blocks}


def summary(measured: list[dict], seconds: float) -> dict:
  ms = lambda key, q: round(float(np.percentile(np.concatenate([m[key] for m in measured]), q)), 2)
  times = np.concatenate([m['times'] for m in measured])
  queue = np.concatenate([m['queue'] for m in measured])
  tenth = seconds / 10
  return {'step_ms_median': ms('steps', 50), 'step_ms_p99': ms('steps', 99),
          'rtt_ms_median': ms('rtt', 50), 'rtt_ms_p99': ms('rtt', 99), 'rtt_ms_max': ms('rtt', 100),
          'queue_s_max_first_tenth': float(queue[times < tenth].max(initial=0)),
          'queue_s_max_last_tenth': float(queue[times >= seconds - tenth].max(initial=0)),
          'dropped_s': [m['dropped_s'] for m in measured],
          'frames': [m['frames'] for m in measured],
          'frames_sent': measured[0]['frames_sent']}


def main(_):
  if FLAGS.role == 'server':
    run_server()
    return
  from tests import processes  # pylint: disable=import-outside-toplevel
  port = processes.free_port()
  args = [sys.executable, __file__, '--role=server', f'--port={port}',
          f'--clients={FLAGS.clients}', f'--context_s={FLAGS.context_s}',
          f'--queue_s={FLAGS.queue_s}', f'--workers={FLAGS.workers}',
          *[a for a in sys.argv[1:] if a.startswith('--config')]]
  server = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
  try:
    if server.stdout.readline().strip() != 'ready':
      raise SystemExit('the server did not start')
    url = f'http://127.0.0.1:{port}/'
    load_before = os.getloadavg()[0]

    async def all_clients():
      return await asyncio.gather(*(client(url, FLAGS.seconds, seed)
                                    for seed in range(FLAGS.clients)))

    measured = asyncio.run(all_clients())
    load_after = os.getloadavg()[0]
  finally:
    server.kill()
    server.wait()
  cfg = FLAGS.config.model
  results.record('serve', {
      'benchmark': 'serve', 'model': cfg.kind, 'dim': cfg.dim, 'frame_hz': cfg.frame_hz,
      'context_s': FLAGS.context_s, 'clients': FLAGS.clients, 'seconds': FLAGS.seconds,
      'queue_bound_s': FLAGS.queue_s, 'workers': FLAGS.workers, 'cpus': os.cpu_count(),
      'load_average': [round(load_before, 2), round(load_after, 2)],
      **summary(measured, FLAGS.seconds)}, ('jax', 'aiohttp'))


if __name__ == '__main__':
  app.run(main)
