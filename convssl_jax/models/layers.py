"""Building blocks with PyTorch's defaults (init, LayerNorm epsilon, exact GELU).

Flax's defaults differ from PyTorch's (LayerNorm eps 1e-6, tanh-approximate GELU, lecun-normal
init). The reference models were trained with PyTorch's, and converted weights are only
numerically equal when every norm and activation matches, so every model module builds its
layers through these helpers.
"""

import math

import jax
import jax.numpy as jnp
from flax import nnx

LAYER_NORM_EPS = 1e-5  # torch.nn.LayerNorm default
GPT_INIT_STD = 0.02  # the references' GPT._init_weights


def torch_uniform_init(fan_in: int) -> nnx.Initializer:
  """U(-1/sqrt(fan_in), 1/sqrt(fan_in)): PyTorch's default for Linear/Conv weights and biases."""
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def linear(in_features: int, out_features: int, *, rngs: nnx.Rngs, use_bias: bool = True,
           gpt_init: bool = False, dtype=None, param_dtype=jnp.float32) -> nnx.Linear:
  """A Linear layer initialised like PyTorch's default, or like the references' GPT (N(0, 0.02), zero bias)."""
  if gpt_init:
    kernel_init, bias_init = nnx.initializers.normal(GPT_INIT_STD), nnx.initializers.zeros
  else:
    kernel_init = bias_init = torch_uniform_init(in_features)
  return nnx.Linear(in_features, out_features, use_bias=use_bias, kernel_init=kernel_init,
                    bias_init=bias_init, dtype=dtype, param_dtype=param_dtype, rngs=rngs)


def conv1d(in_features: int, out_features: int, kernel: int, stride: int, padding, *,
           rngs: nnx.Rngs, dtype=None, param_dtype=jnp.float32) -> nnx.Conv:
  """A channels-last 1-D convolution initialised like torch.nn.Conv1d; `padding` is [(left, right)]."""
  init = torch_uniform_init(in_features * kernel)
  return nnx.Conv(in_features, out_features, kernel_size=(kernel,), strides=(stride,),
                  padding=padding, kernel_init=init, bias_init=init, dtype=dtype,
                  param_dtype=param_dtype, rngs=rngs)


def layer_norm(dim: int, *, rngs: nnx.Rngs, dtype=None, param_dtype=jnp.float32) -> nnx.LayerNorm:
  """torch.nn.LayerNorm: its epsilon and its two-pass variance (Flax's default E[x^2] - E[x]^2
  loses digits when the mean is large against the spread)."""
  return nnx.LayerNorm(dim, epsilon=LAYER_NORM_EPS, use_fast_variance=False, dtype=dtype,
                       param_dtype=param_dtype, rngs=rngs)


def gelu(x: jax.Array) -> jax.Array:
  """The exact (erf) GELU, PyTorch's default."""
  return jax.nn.gelu(x, approximate=False)


def valid_conv(conv: nnx.Conv, x: jax.Array) -> jax.Array:
  """`conv`'s weights over x [B, T, C_in] with no padding: a streaming step, whose context is
  already in front of x, equals the padded offline conv."""
  dtype = conv.dtype or jnp.result_type(x, conv.kernel[...])
  y = jax.lax.conv_general_dilated(
      x.astype(dtype), conv.kernel[...].astype(dtype), conv.strides, 'VALID',
      dimension_numbers=('NWC', 'WIO', 'NWC'), precision=conv.precision)
  return y + conv.bias[...].astype(dtype)


def with_context(context: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(context then x along time, the new context: as many of the latest steps as before)."""
  full = jnp.concatenate([context, x.astype(context.dtype)], axis=1)
  return full, full[:, full.shape[1] - context.shape[1]:]


def stream_context(conv: nnx.Conv) -> int:
  """Inputs a causal strided conv needs from before a hop: kernel - stride."""
  return conv.kernel_size[0] - conv.strides[0]


def speakers_as_batch(x1: jax.Array, x2: jax.Array) -> jax.Array:
  """Speakers A's and B's [B, ...] -> one [2B, ...] batch, each example's rows adjacent (A, B): the
  device holding an example holds both its speakers, so a batch-sharded model sends no
  activations between devices. `speakers_apart` takes them apart again."""
  return jnp.stack([x1, x2], axis=1).reshape(-1, *x1.shape[1:])


def speakers_apart(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """`speakers_as_batch`'s [2B, ...] -> (speaker A's, speaker B's) [B, ...]."""
  pairs = x.reshape(-1, 2, *x.shape[1:])
  return pairs[:, 0], pairs[:, 1]


def partners(x: jax.Array) -> jax.Array:
  """`speakers_as_batch`'s [2B, ...] -> each row's partner speaker's row in its place (A <-> B)."""
  return x.reshape(-1, 2, *x.shape[1:])[:, ::-1].reshape(x.shape)
