"""Streaming: chunk by chunk and step by step equal one call on the whole sequence."""

import jax
import jax.test_util
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrnn as jr
from jaxrnn._streaming import step_layer, stream

# float64, same arithmetic split across calls: 1e-12 is far above rounding.
TOL64 = dict(rtol=1e-12, atol=1e-12)


def _net():
  net = jr.stack(jr.rnn(jr.lstm(4)), jr.rnn(jr.gru(3)))
  params = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64),
                                  net.init(jax.random.key(0), 2))
  xs = jax.random.normal(jax.random.key(1), (2, 9, 2), jnp.float64)
  return net, params, xs


def test_chunks_equal_one_call_values_and_gradients():
  net, params, xs = _net()
  run = stream(net)
  carry, pieces = None, []
  for s, e in [(0, 4), (4, 5), (5, 9)]:
    carry, ys = run(params, carry, xs[:, s:e])
    pieces.append(ys)
  full_carry, full = net.apply(params, xs)
  np.testing.assert_allclose(jnp.concatenate(pieces, 1), full, **TOL64)
  for a, b in zip(jax.tree_util.tree_leaves(carry), jax.tree_util.tree_leaves(full_carry)):
    np.testing.assert_allclose(a, b, **TOL64)

  # Within the last chunk, a loss on its outputs has the same gradient with respect to the
  # chunk's inputs whether the earlier steps ran in this call or an earlier one.
  weights = jax.random.normal(jax.random.key(2), (2, 4, 3), jnp.float64)
  carry_in = run(params, run(params, None, xs[:, :4])[0], xs[:, 4:5])[0]
  chunk_loss = lambda x: jnp.sum(run(params, carry_in, x)[1] * weights)
  full_loss = lambda x: jnp.sum(
      net.apply(params, jnp.concatenate([xs[:, :5], x], 1))[1][:, 5:] * weights)
  np.testing.assert_allclose(jax.grad(chunk_loss)(xs[:, 5:]), jax.grad(full_loss)(xs[:, 5:]),
                             **TOL64)


def test_chunk_gradients_with_respect_to_params_and_incoming_carry():
  """Truncated BPTT: within a chunk, the gradient with respect to the params and the incoming
  carry is that of one call on the chunk from that carry (no gradient into earlier chunks), and
  it is the true derivative of the chunk's loss (finite differences, float64)."""
  net, params, xs = _net()
  run = stream(net)
  carry_in = run(params, None, xs[:, :5])[0]
  weights = jax.random.normal(jax.random.key(4), (2, 4, 3), jnp.float64)
  chunk_loss = lambda p, c: jnp.sum(run(p, c, xs[:, 5:])[1] * weights)
  one_call = lambda p, c: jnp.sum(net.apply(p, xs[:, 5:], carry=c)[1] * weights)
  got = jax.grad(chunk_loss, argnums=(0, 1))(params, carry_in)
  want = jax.grad(one_call, argnums=(0, 1))(params, carry_in)
  for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
    np.testing.assert_allclose(a, b, **TOL64)
  assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree_util.tree_leaves(got[1]))
  jax.test_util.check_grads(chunk_loss, (params, carry_in), order=1, modes=("rev",), eps=1e-6)


def test_step_by_step_equals_one_call():
  net, params, xs = _net()
  one = jax.jit(lambda p, c, x: step_layer(net, p, c, x))
  carry, ys = None, []
  for t in range(xs.shape[1]):
    carry, y = one(params, carry, xs[:, t])
    ys.append(y)
  np.testing.assert_allclose(jnp.stack(ys, 1), net.apply(params, xs)[1], **TOL64)
  cell = jr.gru(3)
  p = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), cell.init(jax.random.key(3), 2))
  c, y = step_layer(cell, p, None, xs[:, 0])
  np.testing.assert_allclose(y, cell.step(p, cell.initial_carry((2,), jnp.float64), xs[:, 0])[1],
                             **TOL64)


def test_bidirectional_cannot_stream():
  bi = jr.bidirectional(jr.rnn(jr.gru(2)), jr.rnn(jr.gru(2)))
  with pytest.raises(ValueError, match="cannot stream"):
    stream(bi)
  with pytest.raises(ValueError, match="cannot stream"):
    stream(jr.stack(jr.rnn(jr.gru(2)), bi))
  with pytest.raises(ValueError, match="cannot stream"):
    step_layer(bi, None, None, jnp.ones((2,), jnp.float32))
  with pytest.raises(TypeError, match="jr.Layer or jr.Cell"):
    stream(lambda p, x: x)
