"""Test-wide JAX settings: CPU, full-precision matmuls so parity tolerances mean something, and a
persistent compilation cache shared by the test processes (many tests compile the same steps)."""
import pathlib

import jax

jax.config.update("jax_default_matmul_precision", "highest")
jax.config.update("jax_compilation_cache_dir",
                  str(pathlib.Path(__file__).parent.parent / ".pytest_cache" / "jax"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
