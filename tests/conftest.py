"""Test-wide JAX settings: CPU, full-precision matmuls so parity tolerances mean something."""
import jax

jax.config.update("jax_default_matmul_precision", "highest")
