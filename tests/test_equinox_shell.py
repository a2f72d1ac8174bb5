"""The Equinox shell: field `params` exactly the core's, outputs and gradients equal to the
core's, filter_jit/filter_grad, dropout keys as eqx.nn.Dropout, an Optax step, clear errors."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxrnn as jr
import jaxrnn.equinox as jre

from _util import assert_tree_close, make, random_carry

D, H, B, T = 3, 4, 2, 5
F32 = {"rtol": 1e-6, "atol": 1e-6}  # the same float32 operations, at most reassociated by jit


def _data(seed=0):
  k1, k2 = jax.random.split(jax.random.key(seed))
  return (jax.random.normal(k1, (B, T, D), jnp.float32), jnp.array([T, 3]),
          jax.random.bernoulli(k2, 0.3, (B, T)))


def _loss(run, xs, **kw):
  carry, ys = run(xs, **kw)
  return jnp.sum(ys ** 2) + sum(jnp.sum(c) for c in jax.tree.leaves(carry))


@pytest.mark.parametrize("name", ("simple_tanh", "gru"))  # the Flax shells' tests cover more
def test_rnn_is_the_core_values_and_gradients(name):
  cell = make(name, H)
  model = jre.RNN(cell, D, key=jax.random.key(0))
  assert_tree_close(model.params, cell.init(jax.random.key(0), D), rtol=0, atol=0,
                    what="params are cell.init(key, input_size)")
  xs, lengths, resets = _data()
  kw = dict(carry=random_carry(cell, jax.random.key(3), (B,), jnp.float32), lengths=lengths,
            resets=resets)
  core = jr.rnn(cell)
  out = eqx.filter_jit(lambda m, x: m(x, **kw))(model, xs)
  assert_tree_close(out, core.apply(model.params, xs, **kw), **F32, what=name)
  grads = eqx.filter_jit(eqx.filter_grad(lambda m: _loss(m, xs, **kw)))(model)
  g_ref = jax.jit(jax.grad(lambda p: _loss(lambda x, **k: core.apply(p, x, **k), xs, **kw)))(
      model.params)
  assert_tree_close(grads.params, g_ref, **F32, what=f"{name} gradients")


def test_layers_are_the_core_and_dropout_follows_the_key():
  xs, lengths, resets = _data(1)
  stack = jre.Stack((jr.lstm(H), jr.gru(H)), D, dropout=0.5, key=jax.random.key(0))
  core = jr.stack(jr.rnn(jr.lstm(H)), jr.rnn(jr.gru(H)), dropout=0.5)
  assert_tree_close(stack.params, core.init(jax.random.key(0), D), rtol=0, atol=0)
  key = jax.random.key(2)
  run = eqx.filter_jit(lambda m, k: m(xs, lengths=lengths, resets=resets, key=k))
  assert_tree_close(run(stack, key), core.apply(stack.params, xs, lengths=lengths,
                                                resets=resets, key=key), **F32)
  with pytest.raises(ValueError, match="key="):
    stack(xs)
  evaluation = eqx.nn.inference_mode(stack)
  assert_tree_close(evaluation(xs, key=key), core.apply(stack.params, xs), **F32)
  assert_tree_close(stack(xs, key=key, inference=True), core.apply(stack.params, xs), **F32)
  bi = jre.Bidirectional(jr.lstm(H), D, key=jax.random.key(1))
  core_bi = jr.bidirectional(jr.rnn(jr.lstm(H)), jr.rnn(jr.lstm(H)))
  assert_tree_close(bi(xs, lengths=lengths), core_bi.apply(bi.params, xs, lengths=lengths),
                    **F32)


def test_with_params_and_an_optax_step(optax_promotion):
  model = jre.RNN(jr.gru(H), D, key=jax.random.key(0))
  params = jr.gru(H).init(jax.random.key(4), D)
  assert jax.tree.all(jax.tree.map(lambda a, b: a is b, jre.with_params(model, params).params,
                                   params))
  with pytest.raises(ValueError, match="shape"):
    jre.with_params(model, jr.gru(H).init(jax.random.key(4), D + 1))
  xs, _, _ = _data(2)
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-2))
  state = tx.init(eqx.filter(model, eqx.is_inexact_array))

  @eqx.filter_jit
  def step(model, state):
    loss, grads = eqx.filter_value_and_grad(lambda m: jnp.mean(m(xs)[1] ** 2))(model)
    updates, state = tx.update(grads, state, eqx.filter(model, eqx.is_inexact_array))
    return eqx.apply_updates(model, updates), state, loss

  losses = []
  for _ in range(5):
    model, state, loss = step(model, state)
    losses.append(float(loss))
  assert losses[-1] < losses[0]


def test_dtype_and_param_dtype():
  xs, _, _ = _data()
  model = jre.RNN(jr.lstm(H), D, key=jax.random.key(0), dtype=jnp.bfloat16,
                  param_dtype=jnp.float64)
  assert all(a.dtype == jnp.float64 for a in jax.tree.leaves(model.params))
  carry, ys = model(xs)
  assert ys.dtype == jnp.bfloat16 and carry.c.dtype == jnp.bfloat16


def test_errors_are_clear():
  model = jre.RNN(jr.lstm(H), D, key=jax.random.key(0))
  with pytest.raises(ValueError, match="input_size=3"):
    model(jnp.ones((B, T, D + 1)))
  with pytest.raises(TypeError, match="floating-point"):
    model(jnp.ones((B, T, D), jnp.int32))
  with pytest.raises(TypeError, match="jr.Cell"):
    jre.RNN(eqx.nn.LSTMCell(D, H, key=jax.random.key(0)), D, key=jax.random.key(0))
  with pytest.raises(TypeError, match="inference must be a bool"):
    model(jnp.ones((B, T, D)), inference="yes")
  with pytest.raises(TypeError, match="Stack: layers"):
    jre.Stack(jr.lstm(H), D, key=jax.random.key(0))
  np.testing.assert_array_equal(model(jnp.ones((T, D)))[1].shape, (T, H))
