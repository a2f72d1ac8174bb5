"""Layer-normalised LSTM and GRU cells against their equations written out in NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jaxrnn as jr
from jaxrnn.cells import layer_norm_gru, layer_norm_lstm

# float64 against a NumPy float64 transcription of the equations: same math, different order.
TOL64 = dict(rtol=1e-10, atol=1e-10)


def _sig(v):
  return 1 / (1 + np.exp(-v))


def _ln(v, eps):
  mu = v.mean(-1, keepdims=True)
  return (v - mu) / np.sqrt(((v - mu) ** 2).mean(-1, keepdims=True) + eps)


def _random_params(cell, key, d):
  """Init, then every parameter perturbed so gains and biases are not at their identity."""
  params = cell.init(jax.random.key(key), d)
  leaves, tree = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(jax.random.key(key + 100), len(leaves))
  return jax.tree_util.tree_unflatten(tree, [
      a.astype(jnp.float64) + 0.3 * jax.random.normal(k, a.shape, jnp.float64)
      for a, k in zip(leaves, keys)])


def test_layer_norm_lstm_equations():
  eps, hidden = 1e-5, 4
  cell = layer_norm_lstm(hidden, eps=eps)
  p = _random_params(cell, 0, 3)
  xs = np.asarray(jax.random.normal(jax.random.key(1), (2, 5, 3), jnp.float64))
  carry, ys = jax.jit(lambda p, x: jr.scan(cell, p, x))(p, jnp.asarray(xs))
  q = {k: np.asarray(v) for k, v in p.items()}
  h, c = np.zeros((2, hidden)), np.zeros((2, hidden))
  for t in range(5):
    gates = (q["gamma_x"] * _ln(xs[:, t] @ q["w_x"], eps) + q["gamma_h"] * _ln(h @ q["w_h"], eps)
             + q["b"])
    i, f, g, o = np.split(gates, 4, axis=-1)
    c = _sig(f) * c + _sig(i) * np.tanh(g)
    h = _sig(o) * np.tanh(q["gamma_c"] * _ln(c, eps) + q["beta_c"])
    np.testing.assert_allclose(ys[:, t], h, **TOL64)
  np.testing.assert_allclose(carry.c, c, **TOL64)


def test_layer_norm_gru_equations():
  eps, hidden = 1e-3, 4
  cell = layer_norm_gru(hidden, eps=eps)
  p = _random_params(cell, 2, 3)
  xs = np.asarray(jax.random.normal(jax.random.key(3), (2, 5, 3), jnp.float64))
  _, ys = jax.jit(lambda p, x: jr.scan(cell, p, x))(p, jnp.asarray(xs))
  q = {k: np.asarray(v) for k, v in p.items()}
  h = np.zeros((2, hidden))
  for t in range(5):
    a = q["gamma_x"] * _ln(xs[:, t] @ q["w_x"], eps) + q["b_x"]
    g = q["gamma_h"] * _ln(h @ q["w_h"], eps) + q["b_h"]
    a_r, a_z, a_n = np.split(a, 3, axis=-1)
    g_r, g_z, g_n = np.split(g, 3, axis=-1)
    r, z = _sig(a_r + g_r), _sig(a_z + g_z)
    h = (1 - z) * np.tanh(a_n + r * g_n) + z * h
    np.testing.assert_allclose(ys[:, t], h, **TOL64)


@pytest.mark.parametrize("make", [layer_norm_lstm, layer_norm_gru])
def test_layer_norm_cells_protocol(make):
  cell = make(3, eps=1e-12)
  p = _random_params(cell, 4, 2)
  xs = jax.random.normal(jax.random.key(5), (2, 4, 2), jnp.float64)
  x0, c0 = xs[:, 0], cell.initial_carry((2,), jnp.float64)
  for got, want in zip(jax.tree_util.tree_leaves(cell.step(p, c0, x0)),
                       jax.tree_util.tree_leaves(cell.recur(p, c0, cell.project(p, x0)))):
    np.testing.assert_allclose(got, want, **TOL64)
  np.testing.assert_allclose(jr.scan(cell, p, xs, lengths=jnp.array([4, 2]))[1],
                             jr.static_unroll(cell, p, xs, lengths=jnp.array([4, 2]))[1],
                             **TOL64)
  # LN makes the cell invariant to a positive rescaling of the input weights (eps = 1e-12 is
  # negligible next to the variances here, so equality holds to float64 rounding).
  scaled = {**p, "w_x": 3.0 * p["w_x"]}
  np.testing.assert_allclose(jr.scan(cell, scaled, xs)[1], jr.scan(cell, p, xs)[1],
                             rtol=1e-9, atol=1e-9)
  # Gradients with the default eps (1e-12 makes LN's second derivative needlessly stiff for
  # finite differences); a 1e-6 finite-difference step keeps float64 truncation error small.
  soft = make(3)
  check_grads(lambda p, x: jr.scan(soft, p, x)[1], (p, xs), order=2, modes=["fwd", "rev"],
              eps=1e-6)
  # float32 in, float32 out, with x64 enabled.
  p32 = cell.init(jax.random.key(0), 2)
  assert jr.scan(cell, p32, xs.astype(jnp.float32))[1].dtype == jnp.float32


def test_layer_norm_bad_input():
  for make in (layer_norm_lstm, layer_norm_gru):
    with pytest.raises(ValueError, match="eps"):
      make(3, eps=0.0)
    with pytest.raises(ValueError, match="hidden_size"):
      make(0)
