"""Test-wide JAX settings: silent broadcasting and silent dtype promotion fail loudly.

x64 is on for the whole suite so that float64 gradient checks run, and so that every test also
checks that float32 inputs stay float32 when x64 is enabled (the library's dtype convention).

JAX's caches are cleared after each test module. Every compiled XLA:CPU program keeps a few
memory mappings for its code while a cache holds it, and the whole suite in one process compiled
enough programs (measured: about 20,000 mappings from tests/test_fused.py alone) to reach
Linux's default limit of 65,530 mappings a process (`vm.max_map_count`), where LLVM's next
allocation failed ("LLVM compilation error: Cannot allocate memory") and the process aborted.
"""

import gc

import jax
import pytest

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
  yield
  jax.clear_caches()
  gc.collect()


@pytest.fixture
def optax_promotion():
  """Optax's Adam raises a Python float to its int32 step count, which the suite's strict dtype
  promotion rejects; users run JAX's standard promotion, and so do the tests that use Adam."""
  with jax.numpy_dtype_promotion("standard"):
    yield
