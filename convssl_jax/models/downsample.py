"""conv_ssl's causal downsampler from the 100-Hz CPC output to the model's frame rate.

Output frame i sees input frames [i*s - (k - 1), i*s]: it ends at 100-Hz frame s*i, so a 50-Hz frame
does not see the second 100-Hz frame of its own interval. Output length is ceil(T / s).
Streaming keeps the last k - 1 input frames (`init_stream_state`, `stream_step`).
"""

import jax
import jax.numpy as jnp
from flax import nnx

from convssl_jax.models.layers import conv1d, gelu, layer_norm, valid_conv, with_context

_KERNEL_STRIDE = {50: (5, 2), 20: (11, 5), 100: None}  # conv_ssl's discrete_{50,20,100}hz configs
FRAME_RATES = tuple(sorted(_KERNEL_STRIDE))  # the model frame rates (Hz)


def downsample_for(frame_hz: float) -> tuple[int, int] | None:
  """(kernel, stride) that takes 100-Hz CPC frames to `frame_hz`, or None at 100 Hz."""
  if frame_hz not in _KERNEL_STRIDE:
    raise ValueError(f'No downsampling defined for frame rate {frame_hz} Hz; expected one of '
                     f'{sorted(_KERNEL_STRIDE)}.')
  return _KERNEL_STRIDE[frame_hz]


class CausalDownsample(nnx.Module):
  """Left-padded strided conv -> LayerNorm (eps 1e-5) -> exact GELU, channels-last [B, T, dim]."""

  def __init__(self, dim: int = 256, kernel: int = 5, stride: int = 2, *, dtype=None,
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    self.conv = conv1d(dim, dim, kernel, stride, [(kernel - 1, 0)], dtype=dtype,
                       param_dtype=param_dtype, rngs=rngs)
    self.norm = layer_norm(dim, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [B, T, dim] -> [B, ceil(T / stride), dim]."""
    return gelu(self.norm(self.conv(x)))

  def init_stream_state(self, batch: int) -> jax.Array:
    """The last k - 1 input frames [B, k - 1, dim] before any audio: zeros, the offline padding."""
    return jnp.zeros((batch, self.conv.kernel_size[0] - 1, self.conv.in_features),
                     self.norm.dtype or jnp.float32)

  def stream_step(self, context: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """x [B, s n, dim] (n output frames' inputs) -> (new context, [B, n, dim])."""
    x, context = with_context(context, x)
    return context, gelu(self.norm(valid_conv(self.conv, x)))
