"""Cell variants: the GRU in its original reset-before form. Each is pinned to a NumPy loop of its docstring's equations, has float64
gradients checked by finite differences, and runs the same equations on every implementation
of `jr.scan` (no fast path serves them). The conformance battery runs them through
tests/test_registry.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrnn as jr
import jaxrnn.testing

H, D, T = 4, 3, 5


def _sigmoid(a):
  return 1.0 / (1.0 + np.exp(-a))


def _numpy_gru_reset_before(p, xs, h):
  """One sequence `xs (T, D)` through the reset-before GRU, in NumPy float64."""
  w_x, w_h, b = (np.asarray(p[k], np.float64) for k in ("w_x", "w_h", "b"))
  ys = []
  for x in xs:
    a_r, a_z, a_n = np.split(x @ w_x + b, 3)
    r = _sigmoid(a_r + h @ w_h[:, :H])
    z = _sigmoid(a_z + h @ w_h[:, H:2 * H])
    n = np.tanh(a_n + (r * h) @ w_h[:, 2 * H:])
    h = (1 - z) * n + z * h
    ys.append(h)
  return h, np.stack(ys)


VARIANTS = {
    "gru_reset_before": lambda **kw: jr.gru(H, reset_after=False, **kw),
}


def _setup(name, batch=(2,), dtype=jnp.float64, steps=T):
  # init="pytorch" draws every parameter (biases and peepholes included) at random.
  cell = VARIANTS[name](init="pytorch")
  k1, k2, k3 = jax.random.split(jax.random.key(7), 3)
  params = jax.tree_util.tree_map(lambda a: a.astype(dtype), cell.init(k1, D))
  xs = jax.random.normal(k2, batch + (steps, D), dtype)
  carry = jax.tree_util.tree_map(
      lambda a: jax.random.normal(k3, a.shape, dtype), cell.initial_carry(batch, dtype))
  return cell, params, xs, carry


@pytest.mark.parametrize("name", list(VARIANTS))
def test_scan_matches_numpy_loop(name):
  cell, params, xs, carry = _setup(name)
  got_carry, got_ys = jax.jit(lambda p, x, c: jr.scan(cell, p, x, carry=c))(params, xs, carry)
  for b in range(xs.shape[0]):
    x = np.asarray(xs[b])
    want_carry, want_ys = _numpy_gru_reset_before(params, x, np.asarray(carry[b]))
    got_b = np.asarray(got_carry[b])
    # float64 on both sides, 5 steps of O(1) values: only summation order differs.
    np.testing.assert_allclose(got_ys[b], want_ys, rtol=1e-12, atol=1e-12)
    jax.tree_util.tree_map(
        lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-12), got_b,
        want_carry)


@pytest.mark.parametrize("name", ["gru_reset_before"])
def test_auto_runs_the_variant_equations(name):
  """No fast path serves a variant: "auto" equals "reference" in values and gradients, at a
  float32 batch the native loop would take (16) and with lengths; "fused" and "onednn"
  refuse."""
  cell, params, xs, carry = _setup(name, batch=(16,), dtype=jnp.float32, steps=4)
  lengths = jnp.arange(16, dtype=jnp.int32) % 5
  run = lambda impl: lambda p, x, c: jr.scan(cell, p, x, carry=c, lengths=lengths,
                                             implementation=impl)
  jaxrnn.testing.assert_same_function(run("auto"), run("reference"), (params, xs, carry))
  with pytest.raises(ValueError, match="no fused implementation"):
    run("fused")(params, xs, carry)
  with pytest.raises(ValueError):
    jr.scan(cell, params, xs, carry=carry, implementation="onednn")


def test_variant_params_differ_from_base_cell():
  """Each variant's layout is its own: a base cell's params are refused, naming the layout."""
  base_gru = jr.gru(H).init(jax.random.key(0), D)
  xs = jnp.ones((2, T, D))
  with pytest.raises(ValueError, match="layout"):
    jr.scan(jr.gru(H, reset_after=False), base_gru, xs)


@pytest.mark.parametrize("make, error, match", [
    (lambda: jr.gru(H, reset_after="False"), TypeError, "reset_after must be a bool"),
])
def test_bad_arguments(make, error, match):
  with pytest.raises(error, match=match):
    make()
