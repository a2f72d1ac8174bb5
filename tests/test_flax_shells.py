"""The Flax linen and NNX shells: parameters exactly the core's, outputs and gradients equal to
the core's, randomness from Flax's RNG streams, jit and an Optax step, clear errors."""

import subprocess
import sys
import textwrap

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jaxrnn as jr
from jaxrnn.flax import linen as jrl
from jaxrnn.flax import nnx as jrx

from _util import assert_tree_close, make, random_carry

D, H, B, T = 3, 4, 2, 5
F32 = {"rtol": 1e-6, "atol": 1e-6}  # the same float32 operations, at most reassociated by jit
CELLS = ("simple_tanh", "lstm", "gru", "indrnn_tanh")


def _data(seed=0, dtype=jnp.float32):
  k1, k2 = jax.random.split(jax.random.key(seed))
  xs = jax.random.normal(k1, (B, T, D), dtype)
  return xs, jnp.array([T, 3]), jax.random.bernoulli(k2, 0.3, (B, T))


def _linen_loss(module, variables, xs, **kw):
  carry, ys = module.apply(variables, xs, **kw)
  return jnp.sum(ys ** 2) + sum(jnp.sum(c) for c in jax.tree.leaves(carry))


def _core_loss(layer, params, xs, **kw):
  carry, ys = layer.apply(params, xs, **kw)
  return jnp.sum(ys ** 2) + sum(jnp.sum(c) for c in jax.tree.leaves(carry))


@pytest.mark.parametrize("name", CELLS)
def test_linen_rnn_is_the_core_values_and_gradients(name):
  cell = make(name, H)
  module = jrl.RNN(cell)
  xs, lengths, resets = _data()
  variables = module.init(jax.random.key(0), xs)
  assert variables == {"params": variables["params"]}
  params = variables["params"]
  assert jax.tree.structure(params) == jax.tree.structure(cell.init(jax.random.key(0), D))
  carry0 = random_carry(cell, jax.random.key(3), (B,), jnp.float32)
  kw = dict(carry=carry0, lengths=lengths, resets=resets)
  out = jax.jit(lambda v, x: module.apply(v, x, **kw))(variables, xs)
  ref = jr.rnn(cell).apply(params, xs, **kw)
  assert_tree_close(out, ref, **F32, what=name)
  g_mod = jax.jit(jax.grad(lambda v: _linen_loss(module, v, xs, **kw)))(variables)["params"]
  g_ref = jax.jit(jax.grad(lambda p: _core_loss(jr.rnn(cell), p, xs, **kw)))(params)
  assert_tree_close(g_mod, g_ref, **F32, what=f"{name} gradients")


def test_linen_layers_are_the_core():
  xs, lengths, resets = _data(1)
  for module, layer in (
      (jrl.Bidirectional(jr.gru(H), jr.simple_rnn(H)),
       jr.bidirectional(jr.rnn(jr.gru(H)), jr.rnn(jr.simple_rnn(H)))),
      (jrl.Stack((jr.lstm(H), jr.bidirectional(jr.rnn(jr.gru(2)), jr.rnn(jr.gru(2)))),
                 dropout=0.3),
       jr.stack(jr.rnn(jr.lstm(H)), jr.bidirectional(jr.rnn(jr.gru(2)), jr.rnn(jr.gru(2))),
                dropout=0.3)),
  ):
    variables = module.init(jax.random.key(0), xs, deterministic=True)
    params = jrl.from_variables(
        variables, jax.eval_shape(lambda k, layer=layer: layer.init(k, D), jax.random.key(0)))
    kw = dict(lengths=lengths, resets=resets)
    out = jax.jit(lambda v: module.apply(v, xs, deterministic=True, **kw))(variables)
    assert_tree_close(out, jax.jit(lambda p: layer.apply(p, xs, **kw))(params), **F32)
    g_mod = jax.jit(jax.grad(
        lambda v: _linen_loss(module, v, xs, deterministic=True, **kw)))(variables)
    g_ref = jax.jit(jax.grad(lambda p: _core_loss(layer, p, xs, **kw)))(params)
    assert_tree_close(jrl.from_variables(g_mod, params), g_ref, **F32)


def test_linen_stack_dropout_comes_from_the_dropout_stream():
  module = jrl.Stack((jr.lstm(H), jr.lstm(H)), dropout=0.5)
  xs, _, _ = _data(2)
  variables = module.init(jax.random.key(0), xs, deterministic=True)
  run = jax.jit(lambda seed: module.apply(variables, xs, deterministic=False,
                                          rngs={"dropout": jax.random.key(seed)})[1])
  np.testing.assert_array_equal(run(1), run(1))
  assert not np.allclose(run(1), run(2))
  evaluation = module.apply(variables, xs, deterministic=True)[1]
  assert not np.allclose(run(1), evaluation)
  # The attribute form, as flax.linen.Dropout's.
  np.testing.assert_array_equal(jrl.Stack((jr.lstm(H), jr.lstm(H)), dropout=0.5,
                                          deterministic=True).apply(variables, xs)[1], evaluation)
  # Without a dropout stream, the mode must be said, and training needs the stream.
  with pytest.raises(ValueError, match="deterministic=True"):
    module.apply(variables, xs)
  with pytest.raises(ValueError, match="rngs=\\{'dropout': key\\}"):
    module.apply(variables, xs, deterministic=False)


def test_linen_variational_dropout_cell_follows_deterministic():
  cell = jr.variational_dropout(jr.lstm(H), 0.5)
  module = jrl.RNN(cell)
  xs, _, _ = _data(3)
  variables = module.init(jax.random.key(0), xs, deterministic=True)
  assert "key" not in variables["params"]
  evaluation = module.apply(variables, xs, deterministic=True)[1]
  np.testing.assert_array_equal(evaluation, jr.rnn(cell).apply(variables["params"], xs)[1])
  trained = module.apply(variables, xs, deterministic=False, rngs={"dropout": jax.random.key(1)})
  assert not np.allclose(trained[1], evaluation)


def test_linen_dtype_and_param_dtype():
  xs, _, _ = _data()
  module = jrl.RNN(jr.lstm(H), dtype=jnp.bfloat16, param_dtype=jnp.float64)
  variables = module.init(jax.random.key(0), xs)
  assert all(a.dtype == jnp.float64 for a in jax.tree.leaves(variables))
  carry, ys = module.apply(variables, xs)
  assert ys.dtype == jnp.bfloat16 and carry.h.dtype == jnp.bfloat16
  ys32 = jrl.RNN(jr.lstm(H)).apply(variables, xs)[1]
  assert ys32.dtype == jnp.float32  # dtype=None: the inputs' dtype, as the core computes


def test_linen_variables_round_trip_exactly():
  params = jr.stack(jr.rnn(jr.gru(H)), jr.rnn(jr.lstm(H))).init(jax.random.key(0), D)
  variables = jrl.to_variables(params)
  assert sorted(variables["params"]) == ["layers_0", "layers_1"]
  back = jrl.from_variables(variables, params)
  assert isinstance(back, tuple)
  assert jax.tree.all(jax.tree.map(lambda a, b: a is b, back, params))
  cell_params = jr.lstm(H).init(jax.random.key(0), D)
  assert jrl.from_variables(jrl.to_variables(cell_params)) == cell_params


def test_linen_inside_a_model_and_an_optax_step(optax_promotion):
  class Classifier(nn.Module):
    @nn.compact
    def __call__(self, xs, lengths):
      carry, _ = jrl.RNN(jr.gru(H))(xs, lengths=lengths)
      return nn.Dense(2)(carry)

  xs, lengths, _ = _data(4)
  labels = jnp.array([0, 1])
  model = Classifier()
  variables = model.init(jax.random.key(0), xs, lengths)
  assert sorted(variables["params"]["RNN_0"]) == ["b_h", "b_x", "w_h", "w_x"]
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-2))
  state = tx.init(variables)

  def loss(v):
    logits = model.apply(v, xs, lengths)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  @jax.jit
  def step(v, s):
    value, grads = jax.value_and_grad(loss)(v)
    updates, s = tx.update(grads, s, v)
    return optax.apply_updates(v, updates), s, value

  first = None
  for _ in range(5):
    variables, state, value = step(variables, state)
    first = value if first is None else first
  assert float(value) < float(first)


def test_linen_errors_are_clear():
  xs, _, _ = _data()
  module = jrl.RNN(jr.lstm(H))
  variables = module.init(jax.random.key(0), xs)
  with pytest.raises(flax.errors.ScopeParamShapeError, match="w_x.*shape"):
    module.apply(variables, jnp.ones((B, T, D + 1)))
  with pytest.raises(TypeError, match="floating-point"):
    module.apply(variables, jnp.ones((B, T, D), jnp.int32))
  with pytest.raises(ValueError, match=r"\(\.\.\., T, D\)"):
    module.apply(variables, jnp.ones((D,)))
  with pytest.raises(TypeError, match="jr.Cell"):
    jrl.RNN(nn.LSTMCell(H)).init(jax.random.key(0), xs)
  with pytest.raises(TypeError, match="deterministic must be a bool"):
    module.apply(variables, xs, deterministic="no")


# ---------------------------------------------------------------------------------------------
# NNX


@pytest.mark.parametrize("name", ("lstm", "indrnn_tanh"))  # linen's test covers all of CELLS
def test_nnx_rnn_is_the_core_values_and_gradients(name):
  cell = make(name, H)
  model = jrx.RNN(cell, D, rngs=nnx.Rngs(0))
  params = jrx.get_params(model)
  assert jax.tree.structure(params) == jax.tree.structure(cell.init(jax.random.key(0), D))
  xs, lengths, resets = _data(5)
  carry0 = random_carry(cell, jax.random.key(3), (B,), jnp.float32)
  kw = dict(carry=carry0, lengths=lengths, resets=resets)
  out = nnx.jit(lambda m, x: m(x, **kw))(model, xs)
  assert_tree_close(out, jr.rnn(cell).apply(params, xs, **kw), **F32, what=name)
  grads = nnx.grad(lambda m: _core_loss_of_module(m, xs, **kw))(model)
  g_ref = jax.jit(jax.grad(lambda p: _core_loss(jr.rnn(cell), p, xs, **kw)))(params)
  assert_tree_close(nnx.to_pure_dict(grads)["params"], g_ref, **F32, what=f"{name} gradients")


def _core_loss_of_module(module, xs, **kw):
  carry, ys = module(xs, **kw)
  return jnp.sum(ys ** 2) + sum(jnp.sum(c) for c in jax.tree.leaves(carry))


def test_nnx_layers_are_the_core_with_dropout_keys():
  xs, lengths, resets = _data(6)
  stack = jrx.Stack((jr.lstm(H), jr.gru(H)), D, dropout=0.5, rngs=nnx.Rngs(0))
  core = jr.stack(jr.rnn(jr.lstm(H)), jr.rnn(jr.gru(H)), dropout=0.5)
  params = jrx.get_params(stack)
  assert isinstance(params, tuple)
  key = jax.random.key(7)
  assert_tree_close(stack(xs, lengths=lengths, resets=resets, rngs=key),
                    core.apply(params, xs, lengths=lengths, resets=resets, key=key), **F32)
  # Its own stream: a new mask each call; eval() switches dropout off.
  assert not np.allclose(stack(xs)[1], stack(xs)[1])
  stack.eval()
  assert_tree_close(stack(xs), core.apply(params, xs), **F32)
  stack.train()
  assert stack.deterministic is False
  bi = jrx.Bidirectional(jr.gru(H), D, rngs=nnx.Rngs(1), merge="sum")
  core_bi = jr.bidirectional(jr.rnn(jr.gru(H)), jr.rnn(jr.gru(H)), merge="sum")
  assert_tree_close(bi(xs, lengths=lengths), core_bi.apply(jrx.get_params(bi), xs,
                                                           lengths=lengths), **F32)


def test_nnx_params_round_trip_and_optax_step(optax_promotion):
  model = jrx.RNN(jr.lstm(H), D, rngs=nnx.Rngs(0))
  params = jr.lstm(H).init(jax.random.key(5), D)
  jrx.set_params(model, params)
  assert jax.tree.all(jax.tree.map(lambda a, b: a is b, jrx.get_params(model), params))
  with pytest.raises(ValueError, match="shape"):
    jrx.set_params(model, jr.lstm(H).init(jax.random.key(5), D + 1))
  xs, _, _ = _data(7)
  optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)

  @nnx.jit
  def step(model, optimizer):
    loss, grads = nnx.value_and_grad(lambda m: jnp.mean(m(xs)[1] ** 2))(model)
    optimizer.update(model, grads)
    return loss

  losses = [float(step(model, optimizer)) for _ in range(5)]
  assert losses[-1] < losses[0]


def test_nnx_errors_are_clear():
  model = jrx.RNN(jr.gru(H), D, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="input_size=3"):
    model(jnp.ones((B, T, D + 1)))
  with pytest.raises(TypeError, match="nnx.Rngs"):
    jrx.RNN(jr.gru(H), D, rngs=0)
  with pytest.raises(TypeError, match="jr.Cell"):
    jrx.RNN("gru", D, rngs=nnx.Rngs(0))
  with pytest.raises(TypeError, match="input_size"):
    jrx.RNN(jr.gru(H), 2.5, rngs=nnx.Rngs(0))


def test_the_core_needs_no_framework_and_the_shells_name_their_extra():
  # A fresh interpreter in which flax, equinox and torch cannot be imported.
  code = textwrap.dedent("""
      import sys
      class Block:
          def find_spec(self, name, path=None, target=None):
              if name.split(".")[0] in ("flax", "equinox", "torch"):
                  raise ImportError(f"No module named {name!r} (blocked)")
      sys.meta_path.insert(0, Block())
      import jax, jaxrnn as jr
      layer = jr.rnn(jr.lstm(4))
      layer.apply(layer.init(jax.random.key(0), 3), jax.numpy.ones((2, 5, 3)))
      assert not any(m.split(".")[0] in ("flax", "equinox", "torch") for m in sys.modules)
      for shell in ("jaxrnn.flax.linen", "jaxrnn.flax.nnx", "jaxrnn.equinox"):
          try:
              __import__(shell)
          except ImportError as error:
              print(error)
      """)
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.splitlines() == [
      "jaxrnn.flax.linen needs Flax: pip install 'jaxrnn[flax]'",
      "jaxrnn.flax.nnx needs Flax: pip install 'jaxrnn[flax]'",
      "jaxrnn.equinox needs Equinox: pip install 'jaxrnn[equinox]'"]
