"""parallelism.OnEveryProcess: a step's outputs reach the host exactly, through one all-gather;
and the batch-sharded model's forward pass sends nothing between devices (each example's two
speakers sit side by side in its [2B] batch, layers.speakers_as_batch)."""
import json
import re

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from convssl_jax import parallelism
from tests import processes


def _outputs(x):
  """Outputs of every kind a step returns: float32 specials, int32 extremes, narrower types."""
  i32 = jax.lax.bitcast_convert_type(x, jnp.int32)
  return {'f32': x, 'i32': i32, 'u32': jax.lax.bitcast_convert_type(x, jnp.uint32)[:, :1],
          'bool': x > 0, 'i8': (i32 % 251 - 125).astype(jnp.int8), 'bf16': x.astype(jnp.bfloat16),
          'nested': ({'wide': jnp.repeat(x[:, None], 3, axis=1)},)}


def test_outputs_come_back_bit_exact_in_their_shapes_and_dtypes():
  mesh = parallelism.make_mesh()
  x = np.array([[0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, -3.4e38, 0.1]] * 2, np.float32)
  x[1] = np.frombuffer(np.array([0, -1, 2**31 - 1, -2**31, 7, -7, 1, 123456789], np.int32)
                       .tobytes(), np.float32)  # integers stored in float32 words, NaNs included
  got = parallelism.OnEveryProcess(_outputs, NamedSharding(mesh, P()), mesh)(x)
  want = jax.device_get(jax.jit(_outputs)(x))
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    assert isinstance(g, np.ndarray) and g.shape == w.shape and g.dtype == w.dtype
    assert g.tobytes() == np.asarray(w).tobytes()
  assert got['bf16'].dtype == ml_dtypes.bfloat16


ONE_ALL_GATHER_SCRIPT = '''
import re, json
import jax, numpy as np
from configs import vap
from convssl_jax import model_state, parallelism
assert jax.device_count() == 4
config = vap.get_config('tiny')
model = model_state.ModelState.create(config, parallelism.make_mesh())
frames, horizon = 100, model.objective.horizon_frames
local = {'audio': np.zeros((4, 2, 16000 * frames // config.model.frame_hz), np.float32),
         'va': np.zeros((4, frames + horizon, 2), np.float32),
         'va_history': np.zeros((4, frames + horizon, config.model.va_cond.history_bins),
                                np.float32)}
batch = model.to_device({k: local[k] for k in model.inputs + ('va',) if k in local})
rows = {k: jax.make_array_from_process_local_data(model.batch_sharding, np.arange(4, dtype=t))
        for k, t in (('conversation', np.int32), ('frame', np.int32), ('weight', np.float32))}
step = model.predict_step
hlo = step.step.lower(model.params, batch, rows).compile().as_text()
out, back = step(model.params, batch, rows)
collective = r'= \\S+ (all-gather|all-reduce|all-to-all|collective-permute|reduce-scatter)(?:-start)?\\('
print(json.dumps({'collectives': re.findall(collective, hlo),
                  'rows': {k: v.tolist() for k, v in back.items()},
                  'p_now': list(out['p_now'].shape)}))
'''


def test_the_evaluation_step_over_four_devices_has_one_collective_its_all_gather():
  out = processes.run('-c', ONE_ALL_GATHER_SCRIPT, JAX_PLATFORMS='cpu',
                      XLA_FLAGS='--xla_force_host_platform_device_count=4')
  assert out.returncode == 0, out.stderr[-3000:]
  result = json.loads(re.findall(r'^\{.*\}$', out.stdout, re.M)[-1])
  # With A's rows then B's, the cross layers' partner rows were on other devices: 9 more.
  assert result['collectives'] == ['all-gather']
  assert result['rows'] == {'conversation': [0, 1, 2, 3], 'frame': [0, 1, 2, 3],
                            'weight': [0.0, 1.0, 2.0, 3.0]}
  assert result['p_now'] == [4, 100, 2]
