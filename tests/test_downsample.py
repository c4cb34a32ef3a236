"""Causal downsampler: lengths, causal window, exact GELU, LayerNorm eps, rates, shapes, size."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from convssl_jax.models.downsample import CausalDownsample, downsample_for


def _frames(batch, length, dim, seed=0):
  return jnp.asarray(np.random.default_rng(seed).standard_normal((batch, length, dim)), jnp.float32)


@pytest.mark.parametrize('kernel,stride', [(5, 2), (11, 5)])
@pytest.mark.parametrize('length', [1, 9, 10, 11, 20, 999, 1000])
def test_output_length_is_ceil_of_length_over_stride(kernel, stride, length):
  down = CausalDownsample(8, kernel, stride, rngs=nnx.Rngs(0))
  assert down(_frames(1, length, 8)).shape == (1, math.ceil(length / stride), 8)


@pytest.mark.parametrize('kernel,stride', [(5, 2), (11, 5)])
@pytest.mark.parametrize('changed_input', [0, 7, 12])
def test_output_frame_depends_only_on_input_frames_i_s_minus_k_plus_1_to_i_s(kernel, stride,
                                                                             changed_input):
  down = CausalDownsample(8, kernel, stride, rngs=nnx.Rngs(0))
  x = _frames(2, 30, 8)
  y = np.asarray(down(x))
  y_perturbed = np.asarray(down(x.at[:, changed_input].add(1.0)))
  for i in range(y.shape[1]):
    if i * stride - (kernel - 1) <= changed_input <= i * stride:
      assert not np.array_equal(y[:, i], y_perturbed[:, i]), i
    else:
      np.testing.assert_array_equal(y[:, i], y_perturbed[:, i])


def test_gelu_is_exact_erf_and_layer_norm_eps_is_1e_minus_5():
  dim = 4
  down = CausalDownsample(dim, 5, 2, rngs=nnx.Rngs(0))
  down.conv.kernel[...] = jnp.zeros_like(down.conv.kernel[...])
  # Channels +-0.01: mean 0, biased variance 1e-4, so the LayerNorm gives +-0.01 / sqrt(1e-4 + eps).
  down.conv.bias[...] = jnp.asarray([0.01, -0.01, 0.01, -0.01])
  u = 0.01 / math.sqrt(1e-4 + 1e-5)  # 0.953462...
  gelu = lambda v: 0.5 * v * (1.0 + math.erf(v / math.sqrt(2.0)))
  want = np.array([gelu(u), gelu(-u), gelu(u), gelu(-u)], np.float32)
  y = np.asarray(down(_frames(1, 6, dim)))
  np.testing.assert_allclose(y, np.broadcast_to(want, y.shape), rtol=1e-5, atol=1e-6)


def test_downsample_for_maps_frame_rates_to_kernel_and_stride():
  assert downsample_for(50) == (5, 2)
  assert downsample_for(20) == (11, 5)
  assert downsample_for(100) is None
  with pytest.raises(ValueError, match='25'):
    downsample_for(25)


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize('batch', [1, 3])
def test_output_dtype_is_compute_dtype_and_params_stay_float32(dtype, batch):
  down = CausalDownsample(16, 5, 2, dtype=dtype, rngs=nnx.Rngs(0))
  y = down(_frames(batch, 13, 16))
  assert y.shape == (batch, 7, 16) and y.dtype == dtype
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(nnx.state(down, nnx.Param)))


def test_50hz_downsampler_parameter_count():
  expected = 256 * 256 * 5 + 256 + 256 + 256  # conv kernel, conv bias, LayerNorm scale and bias
  assert expected == 328_448
  down = CausalDownsample(rngs=nnx.Rngs(0))
  assert sum(leaf.size for leaf in jax.tree.leaves(nnx.state(down, nnx.Param))) == expected
