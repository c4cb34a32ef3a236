"""convssl-jax: Voice Activity Projection (continuous conversational SSL) in JAX/Flax."""
