"""`jr.interop.from_flax` on Flax NNX's own cells, whose parameters live on the module: the
converted cell reproduces the NNX cell called step by step, values and final carry."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest
from flax import nnx

import jaxrnn as jr

from _util import assert_tree_close

D, H, B, T = 3, 4, 2, 5
F32 = {"rtol": 1e-5, "atol": 1e-6}  # different float32 programs: the same sums, other order
F64 = {"rtol": 1e-12, "atol": 1e-12}
# NNX initialises its biases to zero: random ones check the bias layout too.
RANDOM_BIAS = jax.nn.initializers.normal(1.0)


def _nnx_cell(kind, dtype=jnp.float64, **options):
  make = getattr(nnx, kind.removesuffix("_relu"))
  if kind.endswith("_relu"):
    options["activation_fn"] = nnx.relu
  if dtype is not None:
    options.update(dtype=dtype, param_dtype=dtype)
  return make(D, H, bias_init=RANDOM_BIAS, rngs=nnx.Rngs(0), **options)


def _nnx_loop(module, xs):
  """The NNX cell called once a step over `xs (B, T, D)`: `(final carry, ys (B, T, H))`."""
  carry = module.initialize_carry(xs[:, 0].shape, rngs=nnx.Rngs(1))
  ys = []
  for t in range(xs.shape[1]):
    carry, y = module(carry, xs[:, t])
    ys.append(y)
  return carry, jnp.stack(ys, axis=1)


@pytest.mark.parametrize("kind", ("LSTMCell", "OptimizedLSTMCell", "GRUCell", "SimpleCell",
                                  "SimpleCell_relu"))
def test_nnx_cells_convert_to_what_the_nnx_cell_computes(kind):
  module = _nnx_cell(kind)
  xs = jax.random.normal(jax.random.key(2), (B, T, D), jnp.float64)
  nnx_carry, nnx_ys = _nnx_loop(module, xs)
  cell, params = jr.interop.from_flax(module)
  assert all(a.dtype == jnp.float64 for a in jax.tree.leaves(params))
  carry, ys = jax.jit(lambda p, xs: jr.scan(cell, p, xs))(params, xs)
  assert_tree_close(ys, nnx_ys, **F64, what=kind)
  if "LSTM" in kind:
    nnx_carry = jr.LSTMState(h=nnx_carry[1], c=nnx_carry[0])  # NNX's carry is (c, h)
  assert_tree_close(carry, nnx_carry, **F64, what=f"{kind} carry")


def test_nnx_gru_has_no_recurrent_bias_and_lstm_gates_are_in_order():
  """NNX's GRU, unlike linen's, has no bias on the recurrent side; its LSTMCell's per-gate
  layers join in the order i, f, g, o, as its OptimizedLSTMCell's columns do."""
  _, params = jr.interop.from_flax(_nnx_cell("GRUCell"))
  assert jnp.array_equal(params["b_h"], jnp.zeros(3 * H, jnp.float64))
  lstm = _nnx_cell("LSTMCell")
  _, params = jr.interop.from_flax(lstm)
  for k, name in enumerate(("hi", "hf", "hg", "ho")):
    block = slice(k * H, (k + 1) * H)
    assert jnp.array_equal(params["w_h"][:, block], getattr(lstm, name).kernel[...])
    assert jnp.array_equal(params["b"][block], getattr(lstm, name).bias[...])


def test_nnx_cells_compute_dtype_carries_over():
  """NNX's SimpleCell computes in float32 by default (its `dtype=float32`), even on float64
  inputs; the converted cell does the same."""
  module = _nnx_cell("SimpleCell", dtype=None)
  xs = jax.random.normal(jax.random.key(2), (B, T, D), jnp.float64)
  nnx_carry, nnx_ys = _nnx_loop(module, xs)
  cell, params = jr.interop.from_flax(module)
  carry, ys = jr.scan(cell, params, xs)
  assert ys.dtype == nnx_ys.dtype == jnp.float32
  assert_tree_close(ys, nnx_ys, **F32, what="SimpleCell float32")
  assert_tree_close(carry, nnx_carry, **F32, what="SimpleCell float32 carry")


def test_from_flax_nnx_errors():
  with pytest.raises(TypeError, match="LSTMCell"):
    jr.interop.from_flax(nnx.Linear(D, H, rngs=nnx.Rngs(0)))
  with pytest.raises(TypeError, match="without variables"):
    jr.interop.from_flax(_nnx_cell("GRUCell"), {"params": {}})
  with pytest.raises(TypeError, match="pass its variables"):
    jr.interop.from_flax(nn.LSTMCell(features=H))
  with pytest.raises(ValueError, match="residual"):
    jr.interop.from_flax(nnx.SimpleCell(D, H, residual=True, rngs=nnx.Rngs(0)))
  with pytest.raises(ValueError, match="activation_fn"):
    jr.interop.from_flax(nnx.LSTMCell(D, H, activation_fn=nnx.relu, rngs=nnx.Rngs(0)))
  with pytest.raises(ValueError, match="gate_fn"):
    jr.interop.from_flax(nnx.GRUCell(D, H, gate_fn=jnp.tanh, rngs=nnx.Rngs(0)))
  broken = nnx.OptimizedLSTMCell(D, H, rngs=nnx.Rngs(0))
  broken.dense_h = nnx.Linear(H, 4 * H, use_bias=False, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="'dense_h' lacks a bias"):
    jr.interop.from_flax(broken)
