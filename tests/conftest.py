"""Test-wide JAX settings: silent broadcasting and silent dtype promotion fail loudly.

x64 is on for the whole suite so that float64 gradient checks run, and so that every test also
checks that float32 inputs stay float32 when x64 is enabled (DESIGN.md's dtype convention).
"""

import jax

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")
