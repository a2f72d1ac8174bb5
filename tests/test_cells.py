"""The built-in cells: equations against an independent NumPy loop, gradients by finite
differences, initialisers, dtypes. Every cell goes through the registry in `_util.CELLS`."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import _util
import jaxrnn as jr

H, D, T = 4, 3, 5


def _lstm_tuple(carry):
  return (np.asarray(carry.h), np.asarray(carry.c)) if isinstance(carry, jr.LSTMState) else (
      np.asarray(carry))


# ---------------------------------------------------------------------------------------------
# Equations: jr.scan against a NumPy loop written from each cell's docstring.


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("use_bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("name", _util.ALL_CELLS)
def test_scan_matches_numpy_loop(name, use_bias, reverse):
  cell = _util.make(name, H, use_bias=use_bias)
  k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
  params = _util.init_params(cell, k1, D)
  assert ("b" in params or "b_x" in params) == use_bias
  xs = _util.normal(k2, (3, T, D))
  carry = _util.random_carry(cell, k3, (3,), jnp.float64)
  lengths = np.array([T, 2, 0])
  got_carry, got_ys = jr.scan(cell, params, xs, carry=carry, lengths=jnp.asarray(lengths),
                              reverse=reverse)
  kind, kw = _util.NUMPY_SPEC[name]
  for b in range(3):
    c0 = jax.tree_util.tree_map(lambda a: np.asarray(a[b]), carry)
    want_carry, want_ys = _util.numpy_run(kind, params, np.asarray(xs[b]), _lstm_tuple(c0),
                                          length=lengths[b], reverse=reverse, **kw)
    got_b = jax.tree_util.tree_map(lambda a: a[b], got_carry)
    # float64 on both sides, 5 steps of O(1) values: only summation order differs.
    np.testing.assert_allclose(got_ys[b], want_ys, rtol=1e-12, atol=1e-12)
    _util.assert_tree_close(_lstm_tuple(got_b), want_carry, rtol=1e-12, atol=1e-12,
                            what=f"carry {b}")


def test_indrnn_bound_clips_and_zeroes_gradient_outside():
  """With `recurrent_bound`, entries of `u` outside the bound act as the bound, and their
  gradient is zero (the docstring's promise)."""
  cell = jr.indrnn(H, activation="tanh", recurrent_bound=0.5)
  params = _util.init_params(cell, jax.random.key(1), D)
  params["u"] = jnp.array([0.9, -0.7, 0.2, -0.3], jnp.float64)
  clipped = dict(params, u=jnp.array([0.5, -0.5, 0.2, -0.3], jnp.float64))
  xs = _util.normal(jax.random.key(2), (2, T, D))
  np.testing.assert_array_equal(jr.scan(cell, params, xs)[1], jr.scan(cell, clipped, xs)[1])
  grad_u = jax.grad(lambda p: jnp.sum(jr.scan(cell, p, xs)[1]))(params)["u"]
  np.testing.assert_array_equal(grad_u[:2], 0.0)
  assert np.all(grad_u[2:] != 0.0)


@pytest.mark.parametrize("name", _util.ALL_CELLS)
def test_step_is_recur_after_project(name):
  cell = _util.make(name, H)
  params = _util.init_params(cell, jax.random.key(3), D)
  x = _util.normal(jax.random.key(4), (2, D))
  carry = _util.random_carry(cell, jax.random.key(5), (2,), jnp.float64)
  want = cell.step(params, carry, x)
  got = cell.recur(params, carry, cell.project(params, x))
  _util.assert_tree_close(got, want, rtol=1e-14, atol=1e-14, what=name)


# ---------------------------------------------------------------------------------------------
# Gradients by finite differences (float64). Only smooth cells: relu (simple_rnn, indrnn) and
# a clip that bites have kinks where central differences are wrong, so tanh stands in for them
# (`simple_tanh`, `indrnn_tanh` with a bound the weights never reach). Every cell runs all four
# variants (with/without lengths x forward/reverse, resets with lengths), each at order 2 in
# forward and reverse mode (~7 s a call on 2 idle cores).

_GRAD_VARIANTS = [
    # (id, reverse, use lengths, use resets)
    ("plain-fwd", False, False, False),
    ("lengths-resets-rev", True, True, True),
    ("lengths-resets-fwd", False, True, True),
    ("plain-rev", True, False, False),
]


@pytest.mark.parametrize("variant", range(len(_GRAD_VARIANTS)),
                         ids=[v[0] for v in _GRAD_VARIANTS])
@pytest.mark.parametrize("name", _util.SMOOTH_CELLS)
def test_check_grads_through_scan(name, variant):
  _, reverse, use_lengths, use_resets = _GRAD_VARIANTS[variant]
  cell = _util.make(name, 3)
  k1, k2, k3 = jax.random.split(jax.random.key(6), 3)
  params = _util.init_params(cell, k1, 2)
  xs = _util.normal(k2, (2, 4, 2))
  carry = _util.random_carry(cell, k3, (2,), jnp.float64)
  lengths = jnp.array([4, 2], jnp.int32) if use_lengths else None
  resets = jnp.array([[False, False, True, False], [False, True, False, False]]) if (
      use_resets) else None

  @jax.jit
  def f(params, xs, carry):
    return jr.scan(cell, params, xs, carry=carry, lengths=lengths, resets=resets,
                   reverse=reverse)

  check_grads(f, (params, xs, carry), order=2, modes=("fwd", "rev"))


# ---------------------------------------------------------------------------------------------
# Initialisers


@pytest.mark.parametrize("name,gates", [("simple_tanh", 1), ("lstm", 4), ("gru", 3)])
def test_default_recurrent_blocks_are_orthogonal(name, gates):
  h = 6
  params = _util.make(name, h).init(jax.random.key(7), 5)
  w_h = np.asarray(params["w_h"], np.float64)
  assert w_h.shape == (h, gates * h)
  for g in range(gates):
    block = w_h[:, g * h:(g + 1) * h]
    # float32 storage: orthogonality holds to a few float32 eps.
    np.testing.assert_allclose(block.T @ block, np.eye(h), atol=1e-5, err_msg=f"gate {g}")


def test_lstm_forget_bias():
  h = 5
  b = _util.make("lstm", h).init(jax.random.key(8), 3)["b"]
  np.testing.assert_array_equal(b[h:2 * h], 1.0)                   # f slice (gate order i,f,g,o)
  np.testing.assert_array_equal(jnp.concatenate([b[:h], b[2 * h:]]), 0.0)
  b = jr.lstm(h, forget_bias=2.5).init(jax.random.key(8), 3)["b"]
  np.testing.assert_array_equal(b[h:2 * h], 2.5)
  # init="pytorch" adds nothing: the f slice is uniform like the others.
  b = jr.lstm(h, init="pytorch").init(jax.random.key(8), 3)["b"]
  assert np.all(np.abs(b) <= h ** -0.5)


@pytest.mark.parametrize("name", ["simple_tanh", "lstm", "gru", "indrnn_relu"])
def test_pytorch_init_bounds(name):
  h = 9
  params = _util.make(name, h, init="pytorch").init(jax.random.key(9), 4)
  bound = 1.0 / np.sqrt(h)
  for key, a in params.items():
    a = np.asarray(a)
    assert np.all(np.abs(a) <= bound), key
    # U(-k, k) with dozens of draws reaches beyond k/2 and on both sides.
    assert a.max() > bound / 2 and a.min() < -bound / 2, key


def test_indrnn_default_recurrent_weights():
  u = jr.indrnn(200).init(jax.random.key(10), 3)["u"]
  assert np.all((u >= 0) & (u <= 1)) and u.max() > 0.9
  u = jr.indrnn(200, recurrent_bound=0.4).init(jax.random.key(10), 3)["u"]
  assert np.all((u >= 0) & (u <= 0.4))


@pytest.mark.parametrize("param_dtype", [jnp.float64, jnp.bfloat16, jnp.float32])
@pytest.mark.parametrize("name", _util.ALL_CELLS)
def test_param_dtype(name, param_dtype):
  params = _util.make(name, 3, param_dtype=param_dtype).init(jax.random.key(11), 2)
  assert all(a.dtype == param_dtype for a in jax.tree_util.tree_leaves(params))


# ---------------------------------------------------------------------------------------------
# dtypes


@pytest.mark.parametrize("name", ["lstm", "gru", "simple_tanh", "indrnn_relu"])
def test_fixed_compute_dtype(name):
  """`dtype=float32` computes in float32 whatever the inputs and the params are stored in."""
  cell = _util.make(name, H, dtype=jnp.float32)
  params = _util.init_params(cell, jax.random.key(12), D, dtype=jnp.float64)
  for in_dtype in (jnp.float64, jnp.bfloat16, jnp.float32):
    xs = _util.normal(jax.random.key(13), (2, T, D), in_dtype)
    carry, ys = jr.scan(cell, params, xs)
    assert ys.dtype == jnp.float32
    assert all(a.dtype == jnp.float32 for a in jax.tree_util.tree_leaves(carry))
  assert all(a.dtype == jnp.float32
             for a in jax.tree_util.tree_leaves(cell.initial_carry((2,), jnp.float64)))
  # It computes what the float32 cell does on float32 inputs.
  plain = _util.make(name, H)
  p32 = jax.tree_util.tree_map(lambda a: a.astype(jnp.float32), params)
  xs = _util.normal(jax.random.key(13), (2, T, D), jnp.float32)
  _util.assert_tree_close(jr.scan(cell, params, xs.astype(jnp.float64)),
                          jr.scan(plain, p32, xs), rtol=1e-6, atol=1e-6, what=name)


@pytest.mark.parametrize("name", _util.ALL_CELLS)
def test_initial_carry(name):
  cell = _util.make(name, H)
  carry = cell.initial_carry((2, 3), jnp.bfloat16)
  for leaf in jax.tree_util.tree_leaves(carry):
    assert leaf.shape == (2, 3, H) and leaf.dtype == jnp.bfloat16
    assert not np.any(np.asarray(leaf, np.float32))
  assert jax.tree_util.tree_leaves(cell.initial_carry())[0].shape == (H,)
  assert jax.tree_util.tree_leaves(cell.initial_carry())[0].dtype == jnp.float32
  assert isinstance(carry, jr.LSTMState) == (name == "lstm")
