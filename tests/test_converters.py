"""Weights across frameworks: Flax's and Equinox's own cells into jaxrnn's layouts (their
outputs reproduced), and `to_torch`, the reverse of `from_torch` (identity, equal outputs)."""

import equinox as eqx
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import jaxrnn as jr

from _util import assert_tree_close

D, H, B, T = 3, 4, 2, 6
F32 = {"rtol": 1e-5, "atol": 1e-6}  # different float32 programs: the same sums, other order
F64 = {"rtol": 1e-12, "atol": 1e-12}


def _xs(seed=0, dtype=jnp.float32, shape=(B, T, D)):
  return jax.random.normal(jax.random.key(seed), shape, dtype)


@pytest.mark.parametrize("kind", ("LSTMCell", "OptimizedLSTMCell", "GRUCell", "SimpleCell",
                                  "SimpleCell_relu"))
def test_flax_cells_convert_to_what_flax_rnn_computes(kind):
  if kind == "SimpleCell_relu":
    module = nn.SimpleCell(features=H, activation_fn=nn.relu)
  else:
    module = getattr(nn, kind)(features=H)
  xs = _xs(1)
  runner = nn.RNN(module, return_carry=True)
  variables = runner.init(jax.random.key(0), xs)
  # Flax initialises its biases to zero: make them random, so the bias layout is checked too.
  variables = jax.tree_util.tree_map_with_path(
      lambda path, a: (jax.random.normal(jax.random.key(len(str(path))), a.shape, a.dtype)
                       if "bias" in str(path) else a), variables)
  flax_carry, flax_ys = runner.apply(variables, xs)
  cell, params = jr.interop.from_flax(module, variables["params"]["cell"])
  carry, ys = jr.scan(cell, params, xs)
  assert_tree_close(ys, flax_ys, **F32, what=kind)
  if "LSTM" in kind:
    flax_carry = jr.LSTMState(h=flax_carry[1], c=flax_carry[0])  # Flax's carry is (c, h)
  assert_tree_close(carry, flax_carry, **F32, what=f"{kind} carry")


def test_flax_converter_refuses_what_it_cannot_represent():
  z = lambda n: jnp.zeros(n, jnp.float32)
  variables = nn.SimpleCell(features=H, residual=True).init(jax.random.key(0), z(H), z(D))
  with pytest.raises(ValueError, match="residual"):
    jr.interop.from_flax(nn.SimpleCell(features=H, residual=True), variables)
  lstm = nn.LSTMCell(features=H, activation_fn=nn.relu)
  with pytest.raises(ValueError, match="activation_fn"):
    jr.interop.from_flax(lstm, lstm.init(jax.random.key(0), (z(H),) * 2, z(D)))
  with pytest.raises(TypeError, match="LSTMCell"):
    jr.interop.from_flax(nn.Dense(3), {})
  with pytest.raises(ValueError, match="no entry 'ir'"):
    jr.interop.from_flax(nn.GRUCell(features=H), {"params": {}})


@pytest.mark.parametrize("use_bias", (True, False))
@pytest.mark.parametrize("kind", ("LSTMCell", "GRUCell"))
def test_equinox_cells_convert_to_what_an_equinox_scan_computes(kind, use_bias):
  module = getattr(eqx.nn, kind)(D, H, use_bias=use_bias, key=jax.random.key(0))
  xs = _xs(2, jnp.float64, (T, D))
  module = jax.tree.map(lambda a: a.astype(jnp.float64) if eqx.is_array(a) else a, module)
  lstm = kind == "LSTMCell"
  init = (jnp.zeros(H, jnp.float64),) * 2 if lstm else jnp.zeros(H, jnp.float64)

  def step(state, x):
    state = module(x, state)
    return state, state[0] if lstm else state

  eqx_carry, eqx_ys = jax.lax.scan(step, init, xs)
  cell, params = jr.interop.from_equinox(module)
  assert (("b" in params) if lstm else ("b_x" in params)) == use_bias
  carry, ys = jr.scan(cell, params, xs)
  assert_tree_close(ys, eqx_ys, **F64, what=kind)
  assert_tree_close(tuple(carry) if lstm else carry, eqx_carry, **F64, what=f"{kind} carry")
  with pytest.raises(TypeError, match="LSTMCell and GRUCell"):
    jr.interop.from_equinox(eqx.nn.Linear(D, H, key=jax.random.key(0)))


@pytest.mark.parametrize("kind,num_layers,bidirectional,batch_first,bias", [
    ("LSTM", 2, True, True, True),
    ("GRU", 2, False, False, True),
    ("RNN_relu", 1, True, False, False),
    ("GRU", 1, True, True, False),
])
def test_to_torch_then_from_torch_is_the_identity(kind, num_layers, bidirectional, batch_first,
                                                  bias):
  make = {"LSTM": jr.lstm, "GRU": jr.gru,
          "RNN_relu": lambda h, **kw: jr.simple_rnn(h, activation="relu", **kw)}[kind]
  one = lambda: jr.rnn(make(H, use_bias=bias), time_major=not batch_first)
  layers = [jr.bidirectional(one(), one()) if bidirectional else one()
            for _ in range(num_layers)]
  layer = jr.stack(*layers)
  params = jax.tree.map(lambda a: a.astype(jnp.float64), layer.init(jax.random.key(0), D))
  params = jax.tree.map(lambda a: a + 0.1 * jax.random.normal(jax.random.key(1), a.shape,
                                                              a.dtype), params)
  module = jr.interop.to_torch(params, batch_first=batch_first,
                               nonlinearity="relu" if kind == "RNN_relu" else "tanh",
                               reset_after=True if kind == "GRU" else None)
  assert type(module).__name__ == kind.split("_")[0]
  assert (module.num_layers, module.bidirectional, module.bias) == (num_layers, bidirectional,
                                                                    bias)
  assert module.weight_ih_l0.dtype == torch.float64
  back_layer, back = jr.interop.from_torch(module)
  assert jax.tree.structure(back) == jax.tree.structure(params)
  assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), back, params))
  xs = _xs(3, jnp.float64, (B, T, D) if batch_first else (T, B, D))
  torch_ys = module(torch.from_numpy(np.array(xs)))[0].detach().numpy()
  assert_tree_close(layer.apply(params, xs)[1], torch_ys, **F64, what=kind)


def test_to_torch_single_layer_params_and_errors():
  params = jr.lstm(H).init(jax.random.key(0), D)
  module = jr.interop.to_torch(params)
  assert (type(module).__name__, module.num_layers, module.input_size) == ("LSTM", 1, D)
  with pytest.raises(ValueError, match="expected an LSTM, GRU or simple RNN"):
    jr.interop.to_torch(jr.indrnn(H).init(jax.random.key(0), D))
  with pytest.raises(ValueError, match="layout of jr.simple_rnn"):
    jr.interop.to_torch({"w_x": jnp.zeros((D, 2 * H)), "w_h": jnp.zeros((H, 2 * H))})
  with pytest.raises(ValueError, match="one kind"):
    jr.interop.to_torch((jr.lstm(H).init(jax.random.key(0), D),
                         jr.gru(H).init(jax.random.key(0), H)))
  with pytest.raises(ValueError, match="reads 5 features"):
    jr.interop.to_torch((jr.gru(H).init(jax.random.key(0), D),
                         jr.gru(H).init(jax.random.key(0), 5)))
  with pytest.raises(ValueError, match="nonlinearity"):
    jr.interop.to_torch(params, nonlinearity="sigmoid")
  with pytest.raises(TypeError, match="params must be"):
    jr.interop.to_torch(None)


@pytest.mark.parametrize("num_layers,bidirectional,batch_first,bias", [
    (2, True, True, True),
    (2, False, False, True),
    (1, True, False, False),
])
def test_to_torch_projected_lstm_round_trips_and_matches_torch(num_layers, bidirectional,
                                                                batch_first, bias):
  P = 3
  one = lambda: jr.rnn(jr.lstm(H, proj_size=P, use_bias=bias), time_major=not batch_first)
  layer = jr.stack(*[jr.bidirectional(one(), one(), time_major=not batch_first)
                     if bidirectional else one() for _ in range(num_layers)])
  params = jax.tree.map(lambda a: a.astype(jnp.float64), layer.init(jax.random.key(0), D))
  # Random biases too, so that a misplaced bias block shows.
  params = jax.tree.map(lambda a: a + 0.1 * jax.random.normal(jax.random.key(1), a.shape,
                                                              a.dtype), params)
  module = jr.interop.to_torch(params, batch_first=batch_first)
  assert (type(module).__name__, module.num_layers, module.bidirectional, module.bias,
          module.proj_size, module.hidden_size) == ("LSTM", num_layers, bidirectional, bias, P, H)
  assert module.weight_hr_l0.dtype == torch.float64
  _, back = jr.interop.from_torch(module)
  assert jax.tree.structure(back) == jax.tree.structure(params)
  assert jax.tree.all(jax.tree.map(
      lambda a, b: a.dtype == b.dtype and bool(jnp.array_equal(a, b)), back, params))
  xs = _xs(4, jnp.float64, (B, T, D) if batch_first else (T, B, D))
  torch_ys, (h_n, c_n) = module(torch.from_numpy(np.array(xs)))
  carry, ys = layer.apply(params, xs)
  assert_tree_close(ys, torch_ys.detach().numpy(), **F64, what="LSTMP outputs")
  ways = 2 if bidirectional else 1
  for l in range(num_layers):
    for d in range(ways):
      state = carry[l][d] if bidirectional else carry[l]
      assert state.h.shape == (B, P) and state.c.shape == (B, H)
      assert_tree_close(state.h, h_n[ways * l + d].detach().numpy(), **F64, what=f"h {l} {d}")
      assert_tree_close(state.c, c_n[ways * l + d].detach().numpy(), **F64, what=f"c {l} {d}")


def test_to_torch_refuses_what_torch_cannot_compute():
  key = jax.random.key(0)
  with pytest.raises(ValueError, match="peephole"):
    jr.interop.to_torch(jr.lstm(H, peephole=True).init(key, D))
  with pytest.raises(ValueError, match="peephole"):
    jr.interop.to_torch(jr.lstm(H, proj_size=2, peephole=True).init(key, D))
  with pytest.raises(ValueError, match="reset_after=False"):
    jr.interop.to_torch(jr.gru(H, reset_after=False).init(key, D))
  proj = jr.lstm(H, proj_size=2).init(key, D)
  with pytest.raises(ValueError, match="proj_size=P"):
    jr.interop.to_torch({**proj, "w_p": jnp.zeros((H, 3))})
  with pytest.raises(ValueError, match="proj sizes \\[0, 2\\]"):
    jr.interop.to_torch((jr.lstm(H).init(key, D), jr.lstm(H, proj_size=2).init(key, H)))
  with pytest.raises(ValueError, match="proj sizes \\[2, 3\\]"):
    jr.interop.to_torch({"forward": proj, "backward": jr.lstm(H, proj_size=3).init(key, D)})
  # A second projected layer reads P (not H) features a direction.
  with pytest.raises(ValueError, match="reads 4 features, but layer 0 outputs 2"):
    jr.interop.to_torch((proj, jr.lstm(H, proj_size=2).init(key, H)))
  with pytest.raises(ValueError, match="backward one 5"):
    jr.interop.to_torch({"forward": proj, "backward": jr.lstm(H, proj_size=2).init(key, 5)})


def test_to_torch_bias_free_gru_needs_reset_after_to_say_which_gru():
  """`jr.gru(H, use_bias=False)` and `jr.gru(H, reset_after=False, use_bias=False)` have the same
  keys and shapes: converting either without saying which would risk building torch's
  reset-after GRU from reset-before weights, a silently different model."""
  key = jax.random.key(0)
  before = jr.gru(H, reset_after=False, use_bias=False)
  after = jr.gru(H, use_bias=False)
  p_before, p_after = before.init(key, D), after.init(key, D)
  assert jax.tree_util.tree_structure(p_before) == jax.tree_util.tree_structure(p_after)
  for p in (p_before, p_after):
    with pytest.raises(ValueError, match="bias-free GRU params"):
      jr.interop.to_torch(p)
    with pytest.raises(ValueError, match="reset_after=False"):
      jr.interop.to_torch(p, reset_after=False)
  # Stated, the reset-after form converts, and torch computes what jaxrnn computes.
  module = jr.interop.to_torch(p_after, batch_first=True, reset_after=True).double()
  assert module.bias is False
  xs = jax.random.normal(jax.random.key(1), (2, 5, D), jnp.float64)
  carry, ys = jr.scan(after, p_after, xs)
  out, h_n = module(torch.from_numpy(np.array(xs)))
  assert_tree_close(ys, out.detach().numpy(), **F64, what="outputs")
  assert_tree_close(carry, h_n[0].detach().numpy(), **F64, what="h_n")
  # A GRU with biases says which it is by its keys; a contradicting flag is an error.
  with pytest.raises(ValueError, match="reset_after=False"):
    jr.interop.to_torch(jr.gru(H).init(key, D), reset_after=False)
  assert isinstance(jr.interop.to_torch(jr.gru(H).init(key, D), reset_after=True),
                    torch.nn.GRU)
  with pytest.raises(ValueError, match="reset_after is for GRU params"):
    jr.interop.to_torch(jr.lstm(H).init(key, D), reset_after=True)
  with pytest.raises(TypeError, match="reset_after"):
    jr.interop.to_torch(p_after, reset_after="yes")
