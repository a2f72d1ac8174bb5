"""Carries at the layer level: `Layer.initial_carry` (rnn, stack, bidirectional, dropout),
`jr.learned_initial_carry`, and every step's carry out of a scan with `jr.with_carries`."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrnn as jr

D, T = 3, 4


def _layers():
  lstmp = jr.rnn(jr.lstm(5, proj_size=2))
  return {
      "rnn_gru": jr.rnn(jr.gru(4)),
      "stack": jr.stack(lstmp, jr.dropout(0.1), jr.rnn(jr.gru(3))),
      "bidirectional": jr.bidirectional(jr.rnn(jr.lstm(4)), jr.rnn(jr.lstm(4))),
      "stack_time_major": jr.stack(
          jr.bidirectional(jr.rnn(jr.gru(3), time_major=True),
                           jr.rnn(jr.gru(3), time_major=True)),
          jr.rnn(jr.simple_rnn(2), time_major=True)),
  }


def _assert_trees_equal(got, want):
  assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(want)
  for g, w in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
    assert g.shape == w.shape and g.dtype == w.dtype, (g.shape, g.dtype, w.shape, w.dtype)
    np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("name, dtype", [
    ("rnn_gru", jnp.float64), ("stack", jnp.float32), ("bidirectional", jnp.float32),
    ("stack_time_major", jnp.float64)])
def test_layer_initial_carry_is_what_a_call_starts_from(name, dtype):
  """`layer.initial_carry(batch, dtype)` equals the carry a call with `carry=None` builds: what
  a zero-step call returns, and a call given it equals a call without it."""
  layer = _layers()[name]
  params = layer.init(jax.random.key(0), D)
  batch = (2,)
  shape = (T,) + batch + (D,) if layer.time_major else batch + (T, D)
  xs = jax.random.normal(jax.random.key(1), shape, dtype)
  empty = xs[:0] if layer.time_major else xs[..., :0, :]
  given = layer.initial_carry(batch, dtype)
  _assert_trees_equal(given, layer.apply(params, empty)[0])
  _assert_trees_equal(layer.apply(params, xs, carry=given), layer.apply(params, xs))
  if dtype == jnp.float32:
    _assert_trees_equal(layer.initial_carry(batch), given)  # dtype=None: float32
  else:
    _assert_trees_equal(layer.initial_carry(batch), jax.tree_util.tree_map(
        lambda a: a.astype(jnp.float32), given))


def test_user_layer_has_no_initial_carry():
  layer = jr.Layer(lambda key, d: {}, lambda p, xs, **kw: (None, xs))
  assert layer.initial_carry is None
  assert jr.stack(layer, jr.rnn(jr.gru(2))).initial_carry is None
  with pytest.raises(TypeError, match="no initial_carry"):
    jr.learned_initial_carry(layer)


@pytest.mark.parametrize("name", ["bidirectional"])
def test_learned_initial_carry(name):
  """With `c0` in the params, the wrapper equals the layer started from `c0` broadcast over the
  batch, and the gradient with respect to `c0` is the initial carry's, summed over the batch."""
  inner = _layers()[name]
  layer = jr.learned_initial_carry(inner)
  params = layer.init(jax.random.key(0), D)
  _assert_trees_equal(params["carry"], inner.initial_carry(()))
  leaves, treedef = jax.tree_util.tree_flatten(params["carry"])
  keys = jax.random.split(jax.random.key(2), len(leaves))
  c0 = treedef.unflatten([jax.random.normal(k, a.shape, jnp.float64) for k, a in zip(keys, leaves)])
  params = {"layer": jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), params["layer"]),
            "carry": c0}
  xs = jax.random.normal(jax.random.key(1), (3, T, D), jnp.float64)
  lengths = jnp.array([T, 2, 0])
  broadcast = lambda c: jax.tree_util.tree_map(lambda a: jnp.broadcast_to(a, (3,) + a.shape), c)

  def loss_wrapped(p):
    return sum(jnp.sum(jnp.sin(a)) for a in jax.tree_util.tree_leaves(
        jax.jit(lambda p: layer.apply(p, xs, lengths=lengths))(p)))

  def loss_inner(p_layer, carry):
    return sum(jnp.sum(jnp.sin(a)) for a in jax.tree_util.tree_leaves(
        inner.apply(p_layer, xs, carry=carry, lengths=lengths)))

  np.testing.assert_allclose(loss_wrapped(params), loss_inner(params["layer"], broadcast(c0)),
                             rtol=1e-12)
  got = jax.grad(loss_wrapped)(params)["carry"]
  want = jax.grad(loss_inner, argnums=1)(params["layer"], broadcast(c0))
  jax.tree_util.tree_map(
      lambda g, w: np.testing.assert_allclose(g, jnp.sum(w, axis=0), rtol=1e-10, atol=1e-12),
      got, want)
  with pytest.raises(ValueError, match="resets"):
    layer.apply(params, xs, resets=jnp.zeros((3, T), bool))


def _python_loop_carries(cell, params, xs, carry, length):
  """Every step's carry for one sequence `xs (T, D)`, by a Python loop over `cell.step`."""
  carries = []
  for t in range(length):
    carry, _ = cell.step(params, carry, xs[t])
    carries.append(carry)
  return carries


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_with_carries_equals_python_loop(reverse):
  cell = jr.lstm(4)
  params = cell.init(jax.random.key(0), D)
  xs = jax.random.normal(jax.random.key(1), (3, T, D), jnp.float32)
  lengths = jnp.array([T, 2, 0])
  plain_carry, plain_ys = jr.scan(cell, params, xs, lengths=lengths, reverse=reverse)
  final, (ys, carries) = jax.jit(lambda p, x: jr.scan(
      jr.with_carries(cell), p, x, lengths=lengths, reverse=reverse))(params, xs)
  # The outputs and final carry are the plain scan's (fast path or not: float32 rounding).
  np.testing.assert_allclose(ys, plain_ys, rtol=1e-5, atol=1e-6)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                         final, plain_carry)
  assert carries.h.shape == carries.c.shape == (3, T, 4)
  for b, n in enumerate(np.asarray(lengths)):
    seq = xs[b, :n][::-1] if reverse else xs[b, :n]
    want = _python_loop_carries(cell, params, seq, cell.initial_carry((), jnp.float32), n)
    for k, c in enumerate(want):
      t = n - 1 - k if reverse else k
      np.testing.assert_allclose(carries.h[b, t], c.h, rtol=1e-5, atol=1e-6)
      np.testing.assert_allclose(carries.c[b, t], c.c, rtol=1e-5, atol=1e-6)
    # Padding steps output zeros, carries included.
    np.testing.assert_array_equal(carries.c[b, n:], 0.0)


def test_with_carries_keeps_the_cell_contract():
  cell = jr.gru(3)
  wrapped = jr.with_carries(cell)
  assert wrapped.init is cell.init and wrapped.initial_carry is cell.initial_carry
  assert wrapped.project is None and wrapped.recur is None
  with pytest.raises(TypeError, match="jr.Cell"):
    jr.with_carries(jr.rnn(cell))
