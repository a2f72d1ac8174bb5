"""`jr.weight_drop`: DropConnect on `w_h` with one mask per call (or per sequence), pinned to
the inner cell run with the documented masked weight."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jaxrnn as jr

H, D, T, RATE = 4, 3, 5, 0.5


def _setup(inner=None):
  inner = inner or jr.lstm(H)
  cell = jr.weight_drop(inner, RATE)
  params = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64),
                                  cell.init(jax.random.key(0), D))
  xs = jax.random.normal(jax.random.key(1), (3, T, D), jnp.float64)
  return inner, cell, params, xs


def _mask(key, shape):
  return jax.random.bernoulli(key, 1.0 - RATE, shape).astype(jnp.float64) / (1.0 - RATE)


@pytest.mark.parametrize("inner", [jr.lstm(H), jr.gru(H, reset_after=False)], ids=["lstm", "gru"])
def test_equals_inner_cell_with_masked_weight(inner):
  """One mask for the whole call: the inner cell with `w_h * M` (`M` as documented), at every
  step and for every sequence; without a key, the inner cell itself."""
  inner, cell, params, xs = _setup(inner)
  key = jax.random.key(3)
  lengths = jnp.array([T, 2, 0])
  got = jax.jit(lambda p, k: jr.scan(cell, {**p, "key": k}, xs, lengths=lengths))(params, key)
  w_h = params["cell"]["w_h"]
  masked = {**params["cell"], "w_h": w_h * _mask(key, w_h.shape).astype(w_h.dtype)}
  want = jr.scan(inner, masked, xs, lengths=lengths)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12),
                         got, want)
  # (The inner cell alone may take its fused path: equal up to summation order.)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12),
                         jr.scan(cell, params, xs), jr.scan(inner, params["cell"], xs))


def test_per_sequence_masks():
  inner, _, params, xs = _setup()
  cell = jr.weight_drop(inner, RATE, per_sequence=True)
  key = jax.random.key(4)
  _, ys = jr.scan(cell, {**params, "key": key}, xs)
  w_h = params["cell"]["w_h"]
  masks = _mask(key, (3,) + w_h.shape).astype(w_h.dtype)
  for b in range(3):
    _, want = jr.scan(inner, {**params["cell"], "w_h": w_h * masks[b]}, xs[b])
    np.testing.assert_allclose(ys[b], want, rtol=1e-12, atol=1e-12)
  # Two copies of one sequence get different masks, hence different outputs.
  _, twins = jr.scan(cell, {**params, "key": key}, jnp.stack([xs[0], xs[0]]))
  assert not np.allclose(twins[0], twins[1])


def test_layer_key_gradients_and_dropped_connections():
  """Through `jr.rnn` the layer's key drops weights (train=False does not); the gradient of a
  dropped entry of `w_h` is exactly zero; float64 gradients pass check_grads."""
  inner, cell, params, xs = _setup()
  layer = jr.rnn(cell)
  key = jax.random.key(5)
  np.testing.assert_array_equal(layer.apply(params, xs, key=key)[1],
                                jr.scan(cell, {**params, "key": key}, xs)[1])
  np.testing.assert_allclose(layer.apply(params, xs, key=key, train=False)[1],
                             jr.scan(inner, params["cell"], xs)[1], rtol=1e-12, atol=1e-12)
  loss = lambda p: jnp.sum(jnp.sin(layer.apply(p, xs, key=key)[1]))
  grad_w_h = jax.grad(loss)(params)["cell"]["w_h"]
  dropped = _mask(key, grad_w_h.shape) == 0
  assert dropped.any() and (~dropped).any()
  np.testing.assert_array_equal(grad_w_h[dropped], 0.0)
  assert np.all(grad_w_h[~dropped] != 0.0)
  check_grads(lambda p, x: layer.apply(p, x[:, :3], key=key), (params, xs), order=1,
              modes=("rev",), eps=1e-6, rtol=1e-5, atol=1e-5)


def test_bad_arguments():
  with pytest.raises(ValueError, match="rate"):
    jr.weight_drop(jr.lstm(H), 1.0)
  with pytest.raises(TypeError, match="per_sequence must be a bool"):
    jr.weight_drop(jr.lstm(H), 0.1, per_sequence="True")
  with pytest.raises(TypeError, match="jr.Cell"):
    jr.weight_drop(jr.rnn(jr.lstm(H)), 0.1)
  cell = jr.weight_drop(jr.indrnn(H), 0.1)
  params = cell.init(jax.random.key(0), D)
  with pytest.raises(TypeError, match="no 'w_h'"):
    jr.scan(cell, {**params, "key": jax.random.key(1)}, jnp.ones((2, T, D)))
