"""`matmul_dtype`: the matmuls' operands rounded to bfloat16, their products summed in float32,
the gates and the carry in float32; on every path (reference, fused) and in every gradient."""

import jax
import jax.extend
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import _util
import jaxrnn as jr
from jaxrnn.drivers import _onednn

BF16 = jnp.bfloat16
B, T, D, H = 3, 5, 3, 4
# The cells with a NumPy oracle (`_util.numpy_step`), and the layer-normalised ones.
ORACLE_CELLS = ("simple_tanh", "lstm", "gru", "indrnn_relu")
NORM_CELLS = {"layer_norm_lstm": jr.layer_norm_lstm, "layer_norm_gru": jr.layer_norm_gru}


def _make(name, **kw):
  if name in NORM_CELLS:
    return NORM_CELLS[name](H, **kw)
  return _util.make(name, H, **kw)


def _data(cell, seed=0):
  k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
  params = _util.init_params(cell, k1, D, dtype=jnp.float32)
  xs = _util.normal(k2, (B, T, D), jnp.float32)
  carry = _util.random_carry(cell, k3, (B,), jnp.float32)
  return params, xs, carry


def _to_bf16(a):
  return np.asarray(np.asarray(a, np.float32).astype(ml_dtypes.bfloat16), np.float64)


def _numpy_ys(name, params, xs, carry, operand_round):
  kind, kw = _util.NUMPY_SPEC[name]
  out = []
  for b in range(B):
    c0 = jax.tree_util.tree_map(lambda a: np.asarray(a[b], np.float64), carry)
    c0 = (c0.h, c0.c) if isinstance(c0, jr.LSTMState) else c0
    out.append(_util.numpy_run(kind, params, np.asarray(xs[b], np.float64), c0,
                               operand_round=operand_round, **kw)[1])
  return np.stack(out)


@pytest.mark.parametrize("name", ORACLE_CELLS)
def test_matches_numpy_loop_with_rounded_operands(name):
  cell = _make(name, matmul_dtype=BF16)
  params, xs, carry = _data(cell)
  _, ys = jax.jit(lambda p, x, c: jr.scan(cell, p, x, carry=c))(params, xs, carry)
  assert ys.dtype == jnp.float32
  want = _numpy_ys(name, params, xs, carry, _to_bf16)
  unrounded = _numpy_ys(name, params, xs, carry, None)
  err = np.max(np.abs(np.asarray(ys, np.float64) - want))
  # Products of bfloat16 numbers are exact in float32, so only the float32 sums and activations
  # differ from the float64 oracle: ~1e-7 on O(1) values.
  assert err < 2e-6, err
  # ... whereas not rounding the operands moves the outputs by bfloat16's resolution (~1e-3):
  # the rounding really happens.
  assert np.max(np.abs(unrounded - want)) > 100 * max(err, 1e-7)


@pytest.mark.parametrize("name", ORACLE_CELLS + tuple(NORM_CELLS))
def test_float32_matmul_dtype_is_the_default(name):
  params, xs, carry = _data(_make(name))
  run = lambda cell: jr.scan(cell, params, xs, carry=carry)[1]
  np.testing.assert_array_equal(run(_make(name, matmul_dtype=jnp.float32)), run(_make(name)))
  bf16 = run(_make(name, matmul_dtype=BF16))
  diff = float(jnp.max(jnp.abs(bf16 - run(_make(name)))))
  assert 1e-5 < diff < 5e-2, diff  # bfloat16 operand rounding: visible, but small


def _dot_operand_dtypes(fn, *args):
  """(lhs, rhs, out) dtypes of every dot_general in `fn`'s jaxpr, nested jaxprs included."""
  found = []

  def walk(jaxpr):
    for eqn in jaxpr.eqns:
      if eqn.primitive.name == "dot_general":
        found.append(tuple(v.aval.dtype for v in (*eqn.invars, *eqn.outvars)))
      for sub in jax.extend.core.jaxprs_in_params(eqn.params):
        walk(sub)

  walk(jax.make_jaxpr(fn)(*args).jaxpr)
  return found


# The layer-normalised cells have no fused form: only the reference path runs them.
@pytest.mark.parametrize("name,impl", [(n, i) for n in ORACLE_CELLS for i in ("fused", "reference")]
                         + [(n, "reference") for n in NORM_CELLS])
def test_every_matmul_takes_bf16_and_accumulates_in_float32(name, impl):
  cell = _make(name, matmul_dtype=BF16)
  params, xs, carry = _data(cell)

  def loss(p, x, c):
    c, ys = jr.scan(cell, p, x, carry=c, implementation=impl)
    return jnp.sum(ys ** 2) + sum(jnp.sum(l) for l in jax.tree_util.tree_leaves(c))

  forward = _dot_operand_dtypes(loss, params, xs, carry)
  assert forward, "no matmul found"
  assert all(d == (BF16, BF16, jnp.float32) for d in forward), forward
  # The backward is JAX's autodiff of those matmuls: each transposed matmul pairs the float32
  # cotangent with a bfloat16 operand. None runs wholly in float32 (which would mean some path
  # ignored matmul_dtype).
  backward = _dot_operand_dtypes(jax.grad(loss, (0, 1, 2)), params, xs, carry)
  assert len(backward) > len(forward)
  assert all(BF16 in d[:2] for d in backward), backward


@pytest.mark.parametrize("name", ORACLE_CELLS)
def test_fused_equals_reference(name):
  cell = _make(name, matmul_dtype=BF16)
  params, xs, carry = _data(cell)
  lengths = jnp.array([T, 2, 0], jnp.int32)
  resets = jnp.zeros((B, T), bool).at[0, 3].set(True)
  for kw in ({}, {"lengths": lengths, "reverse": True}, {"resets": resets}):
    def run(p, x, c, impl):
      def loss(p, x, c):
        c, ys = jr.scan(cell, p, x, carry=c, implementation=impl, **kw)
        return jnp.sum(ys ** 2) + sum(jnp.sum(jnp.sin(l)) for l in jax.tree_util.tree_leaves(c))
      return jax.value_and_grad(loss, (0, 1, 2))(p, x, c), jr.scan(
          cell, p, x, carry=c, implementation=impl, **kw)
    fused = jax.jit(run, static_argnums=3)(params, xs, carry, "fused")
    ref = jax.jit(run, static_argnums=3)(params, xs, carry, "reference")
    (f_loss, f_grads), f_out = fused
    (r_loss, r_grads), r_out = ref
    # The forward is the same arithmetic (bfloat16 operands, float32 sums).
    _util.assert_tree_close(f_out, r_out, rtol=0, atol=1e-6, what="outputs")
    np.testing.assert_allclose(f_loss, r_loss, rtol=1e-6)
    # Gradients. Autodiff of the cast rounds the cotangent of each bfloat16 operand to
    # bfloat16. For the matmul weights the fused path rounds the gradient once, summed over all
    # steps, and the reference step by step: they differ by bfloat16's resolution (measured
    # 2.3e-3 to 2.8e-3 of the largest entry; 2^-9 = 2e-3 is half a bfloat16 ulp). Every other
    # gradient (inputs, carry, biases, u) is the same float32 arithmetic: measured <= 1.5e-7.
    f_leaves = jax.tree_util.tree_leaves_with_path(f_grads)
    for (path, f), r in zip(f_leaves, jax.tree_util.tree_leaves(r_grads)):
      assert f.dtype == r.dtype == jnp.float32
      scale = max(float(jnp.max(jnp.abs(r))), 1.0)
      weight = jax.tree_util.keystr(path) in ("[0]['w_x']", "[0]['w_h']")
      np.testing.assert_allclose(f, r, rtol=0, atol=(2 ** -7 if weight else 1e-5) * scale,
                                 err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("name", ORACLE_CELLS + tuple(NORM_CELLS))
def test_carry_outputs_and_gradients_stay_float32(name):
  cell = _make(name, matmul_dtype=BF16)
  params, xs, carry = _data(cell)
  assert all(l.dtype == jnp.float32 for l in jax.tree_util.tree_leaves(cell.initial_carry((B,))))
  out = jr.scan(cell, params, xs)
  assert all(l.dtype == jnp.float32 for l in jax.tree_util.tree_leaves(out))
  grads = jax.grad(lambda p: jnp.sum(jr.scan(cell, p, xs)[1]))(params)
  assert all(g.dtype == jnp.float32 for g in jax.tree_util.tree_leaves(grads))
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree_util.tree_leaves(grads))


@pytest.mark.parametrize("bad", [jnp.int32, "bool", "not a dtype"])
@pytest.mark.parametrize("make", [jr.lstm, jr.gru, jr.simple_rnn, jr.indrnn, jr.layer_norm_lstm,
                                  jr.layer_norm_gru])
def test_bad_matmul_dtype_is_refused(make, bad):
  with pytest.raises(TypeError, match="matmul_dtype must be a floating dtype"):
    make(4, matmul_dtype=bad)


@pytest.mark.skipif(not _onednn.available(), reason="the oneDNN kernel is not built here "
                    "(an optional native extension for Linux x86-64)")
def test_onednn_refuses_a_bf16_matmul_lstm():
  cell = jr.lstm(H, matmul_dtype=BF16)
  params, xs, _ = _data(cell)
  with pytest.raises(ValueError, match="matmul_dtype"):
    jr.scan(cell, params, xs, implementation="onednn")


@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_forward_mode_and_vmap(name):
  cell = _make(name, matmul_dtype=BF16)
  params, xs, carry = _data(cell)
  tangents = jax.tree_util.tree_map(jnp.ones_like, params)
  run = lambda impl: lambda p: jr.scan(cell, p, xs, carry=carry, implementation=impl)[1]
  y_f, dy_f = jax.jvp(run("fused"), (params,), (tangents,))
  y_r, dy_r = jax.jvp(run("reference"), (params,), (tangents,))
  np.testing.assert_allclose(y_f, y_r, rtol=0, atol=1e-6)
  # The tangents pass through the same bfloat16 casts on both paths, in another order.
  scale = float(jnp.max(jnp.abs(dy_r)))
  np.testing.assert_allclose(dy_f, dy_r, rtol=0, atol=2 ** -7 * scale)
  assert float(jnp.max(jnp.abs(dy_r))) > 0
  # vmap over a leading axis equals the batched call.
  xs2 = jnp.stack([xs, 2 * xs])
  mapped = jax.vmap(lambda x: jr.scan(cell, params, x)[1])(xs2)
  np.testing.assert_allclose(mapped[1], jr.scan(cell, params, 2 * xs)[1], rtol=0, atol=1e-6)
