"""A few tiny training steps on a VAP model whose encoder holds converted, frozen weights."""

import jax
import numpy as np
from flax import nnx

from convssl_jax import parallelism, trainer as trainer_lib


def _params(trainer, part):
  model = trainer.model.model()
  return jax.device_get(nnx.to_pure_dict(nnx.state(getattr(model, part), nnx.Param)))


def assert_trains_with_frozen_encoder(config, converted: dict, trained_parts=('vap_head',),
                                      steps: int = 3) -> None:
  """Trains `steps` steps on random 1-s stereo batches: the encoder equals `converted` before and
  after, every parameter of `trained_parts` changes, and the loss stays finite."""
  trainer = trainer_lib.Trainer(config, parallelism.make_mesh(1))
  jax.tree.map(np.testing.assert_array_equal, _params(trainer, 'encoder'), converted)
  before = {part: _params(trainer, part) for part in trained_parts}
  rng = np.random.default_rng(0)
  for _ in range(steps):
    batch = {'audio': rng.uniform(-0.5, 0.5, (2, 2, 16000)).astype(np.float32),
             'va': (rng.uniform(size=(2, 150, 2)) > 0.5).astype(np.float32)}
    metrics = trainer.train_step(trainer.model.to_device(batch))
    assert np.isfinite(float(metrics['loss']))
  jax.tree.map(np.testing.assert_array_equal, _params(trainer, 'encoder'), converted)
  for part, params in before.items():
    changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), _params(trainer, part), params)
    assert all(jax.tree.leaves(changed)), part
