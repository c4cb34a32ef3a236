"""convssl-jax: Voice Activity Projection (continuous conversational SSL) in JAX/Flax.

`convssl_jax.load(path)`: a trained workdir or a converted model, ready to predict and stream
(convssl_jax/api.py; imported on first use, so `import convssl_jax` stays cheap).
"""


def __getattr__(name: str):
  if name == 'load':
    from convssl_jax.api import load
    return load
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
