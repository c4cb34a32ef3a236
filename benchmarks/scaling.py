"""Communication per training step and the expected scaling efficiency, from the reference models'
actual parameter counts (docs/scaling.md prints this script's tables).

  python benchmarks/scaling.py

The bandwidths and step times are assumptions, stated in ASSUMED; change them there. The model:
data parallel all-reduces the trained parameters' fp32 gradients once a step (ring: each chip
sends and receives 2 (n - 1) / n of them); fsdp all-gathers every sharded parameter (the frozen
encoder's too, unless a feature cache takes the encoder out of the step) and reduce-scatters the
gradients ((n - 1) / n each). Time = bytes / bus bandwidth + log2(n) latency hops, with no
overlap with compute (XLA's async collectives overlap some of it: a lower bound).
"""

import math

import jax
from flax import nnx

from configs import vap
from convssl_jax import models

ASSUMED = {
    # NCCL bus bandwidth per GPU for ~16 MB all-reduces: NVLink 4 / NVSwitch inside one 8-GPU
    # H100/H200 node (900 GB/s link peak), and 400 Gb/s InfiniBand NDR per GPU between nodes.
    'nvlink_bus_gb_s': 250.0,
    'ib_bus_gb_s': 30.0,
    'latency_us_per_hop': 10.0,
    # Step times per chip at 16 windows a chip if the targets are met (H200, bf16):
    # stereo 16 x 20 s at 8,400 audio-s/s on the fly and 12,140 (5 x the fp32 reference) cached;
    # mono 16 x 10 s at 17,600 and 28,470.
    'step_ms': {('stereo', 'on the fly'): 320 / 8400 * 1e3, ('stereo', 'cached'): 320 / 12140 * 1e3,
                ('mono', 'on the fly'): 160 / 17600 * 1e3, ('mono', 'cached'): 160 / 28470 * 1e3},
}
CHIPS = (8, 64, 256)


def parameter_bytes(kind: str) -> dict[str, int]:
  """fp32 bytes of the reference model's trained and frozen (encoder) parameters."""
  config = vap.get_config('reference' if kind == 'stereo' else 'mono,reference')
  config.model.encoder.freeze = True
  model = nnx.eval_shape(lambda: models.build_model(config.model, rngs=nnx.Rngs(0)))
  total = models.count_params(model)
  trained = models.count_params(model, models.trainable_filter(config.model))
  return {'trained': 4 * trained, 'frozen': 4 * (total - trained)}


def seconds(bytes_per_chip: float, n: int) -> float:
  bandwidth = ASSUMED['nvlink_bus_gb_s'] if n <= 8 else ASSUMED['ib_bus_gb_s']
  return bytes_per_chip / (bandwidth * 1e9) + math.log2(n) * ASSUMED['latency_us_per_hop'] * 1e-6


def main():
  print('| model | trained params (fp32 MB) | frozen encoder (MB) | DP bytes/chip/step at 8, 64, 256 '
        '| FSDP bytes/chip/step at 8, 64, 256 (cached: encoder not gathered) |')
  print('|---|---|---|---|---|')
  sizes = {}
  for kind in ('stereo', 'mono'):
    b = sizes[kind] = parameter_bytes(kind)
    dp = [2 * (n - 1) / n * b['trained'] / 1e6 for n in CHIPS]
    fsdp = [(n - 1) / n * (2 * b['trained'] + b['frozen']) / 1e6 for n in CHIPS]
    fsdp_cached = [(n - 1) / n * 2 * b['trained'] / 1e6 for n in CHIPS]
    print(f'| {kind} | {b["trained"] / 1e6:.2f} | {b["frozen"] / 1e6:.2f} | '
          + ', '.join(f'{x:.1f}' for x in dp) + ' MB | '
          + ', '.join(f'{x:.1f} ({y:.1f})' for x, y in zip(fsdp, fsdp_cached)) + ' MB |')
  print()
  print('| model, step | step ms/chip | DP all-reduce ms at 8, 64, 256 | efficiency at 8, 64, 256 |')
  print('|---|---|---|---|')
  for (kind, how), step_ms in ASSUMED['step_ms'].items():
    comm = [seconds(2 * (n - 1) / n * sizes[kind]['trained'], n) * 1e3 for n in CHIPS]
    eff = [step_ms / (step_ms + c) for c in comm]
    print(f'| {kind}, {how} | {step_ms:.1f} | ' + ', '.join(f'{c:.2f}' for c in comm) + ' | '
          + ', '.join(f'{e:.1%}' for e in eff) + ' |')


if __name__ == '__main__':
  jax.config.update('jax_platforms', 'cpu')
  main()
