"""The fused driver is pinned to the plain autodiff path: values and gradients, every cell.

Tolerances: the fused path computes the same forward values, up to floating-point
reassociation where its loop joins the input and recurrent matmuls into one (the LSTM on CPU);
gradients differ only by reassociation (weight gradients summed as one matmul rather than step
by step), so float64 is held to 1e-12 and float32 to 1e-5 relative to the gradient's scale.
"""

import re

import jax
import jax.extend.core
import jax.numpy as jnp
import jax.test_util
import numpy as np
import pytest

import jaxrnn as jr
from jaxrnn.drivers import _plan

CELLS = {
    "simple_tanh": lambda: jr.simple_rnn(5),
    "simple_relu": lambda: jr.simple_rnn(5, activation="relu"),
    "lstm": lambda: jr.lstm(5),
    "lstm_nobias": lambda: jr.lstm(5, use_bias=False),
    "gru": lambda: jr.gru(5),
    "gru_nobias": lambda: jr.gru(5, use_bias=False),
    "indrnn": lambda: jr.indrnn(5),
    "indrnn_bounded_tanh": lambda: jr.indrnn(5, activation="tanh", recurrent_bound=0.6),
}
TOL = {jnp.float64: 1e-12, jnp.float32: 1e-5}
B, T, D = 3, 6, 4


@pytest.fixture(autouse=True)
def _xla_loop_below_a_batch_of_16(monkeypatch):
  """These tests pin the fused driver's XLA loop, which runs at their batch of 3 (and wherever
  the native library is not built); the native loops, which on CPU take small float32 batches
  too, start at 16 here, where a test asks for them. tests/test_native.py pins the native loops
  at every batch size."""
  monkeypatch.setattr(_plan, "NATIVE_MIN_BATCH",
                      {family: (16, 16) for family in _plan.NATIVE_MIN_BATCH})


def _inputs(cell, dtype, seed=0):
  k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
  params = jax.tree_util.tree_map(lambda a: a.astype(dtype), cell.init(k1, D))
  xs = jax.random.normal(k2, (B, T, D), dtype)
  carry = jax.tree_util.tree_map(lambda a: 0.5 * jax.random.normal(k3, a.shape, dtype),
                                 cell.initial_carry((B,), dtype))
  return params, xs, carry


def _plan_of(cell, implementation="fused", training=False):
  """The plan (`drivers/_plan.py`) of a float64 call of `cell` on the inputs of `_inputs`."""
  params, xs, carry = _inputs(cell, jnp.float64)
  return _plan.plan(cell, params, jnp.swapaxes(xs, 0, 1), carry, implementation=implementation,
                    training=training)


def _options():
  lengths = jnp.array([T, 2, 0], jnp.int32)
  resets = jnp.zeros((B, T), bool).at[0, 3].set(True).at[1, 1].set(True)
  return [
      {},
      {"lengths": lengths, "reverse": True, "unroll": 2},
      {"resets": resets, "lengths": lengths},
      {"resets": resets, "reverse": True},
  ]


def _loss(cell, impl, kw):
  def loss(params, xs, carry):
    carry, ys = jr.scan(cell, params, xs, carry=carry, implementation=impl, **kw)
    return jnp.sum(ys * ys) + sum(jnp.sum(jnp.sin(c)) for c in jax.tree_util.tree_leaves(carry))
  return loss


def _assert_close(a, b, tol):
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    scale = max(1.0, float(jnp.max(jnp.abs(y.astype(jnp.float64)))))
    np.testing.assert_allclose(np.asarray(x, np.float64), np.asarray(y, np.float64),
                               rtol=0, atol=tol * scale)


F32_CASES = [("lstm", jnp.float32), ("gru", jnp.float32), ("simple_relu", jnp.float32)]


@pytest.mark.parametrize("name,dtype", [(n, jnp.float64) for n in sorted(CELLS)] + F32_CASES)
def test_fused_equals_reference(name, dtype):
  cell = CELLS[name]()
  assert _plan.spec_for(cell) is not None
  params, xs, carry = _inputs(cell, dtype)
  for kw in _options():
    def outputs_and_grads(p, x, c, impl):
      out = jr.scan(cell, p, x, carry=c, implementation=impl, **kw)
      return out, jax.grad(_loss(cell, impl, kw), (0, 1, 2))(p, x, c)
    run = jax.jit(outputs_and_grads, static_argnums=3)
    _assert_close(run(params, xs, carry, "fused"), run(params, xs, carry, "reference"),
                  TOL[dtype])


@pytest.mark.parametrize("name", ["lstm", "gru", "simple_tanh", "indrnn_bounded_tanh"])
def test_fused_forward_mode_and_second_order(name):
  cell = CELLS[name]()
  params, xs, carry = _inputs(cell, jnp.float64)
  kw = {"lengths": jnp.array([T, 3, 1], jnp.int32)}
  f = lambda x: _loss(cell, "fused", kw)(params, x, carry)
  g = lambda x: _loss(cell, "reference", kw)(params, x, carry)
  tangent = jax.random.normal(jax.random.key(9), xs.shape, jnp.float64)
  _assert_close(jax.jvp(f, (xs,), (tangent,)), jax.jvp(g, (xs,), (tangent,)), 1e-12)
  hvp = lambda fn: jax.jvp(jax.grad(fn), (xs,), (tangent,))[1]
  _assert_close(hvp(f), hvp(g), 1e-11)
  _assert_close(jax.grad(lambda x: jnp.sum(jax.grad(f)(x) ** 2))(xs),
                jax.grad(lambda x: jnp.sum(jax.grad(g)(x) ** 2))(xs), 1e-10)
  jax.test_util.check_grads(
      lambda p, x: jr.scan(cell, p, x, implementation="fused", **kw)[1], (params, xs), order=2,
      modes=("fwd", "rev"))


def test_fused_is_the_default_and_time_major_and_vmap():
  cell = jr.lstm(5)
  params, xs, carry = _inputs(cell, jnp.float32)
  loss = lambda impl: lambda p, x: jnp.sum(jr.scan(cell, p, x, implementation=impl)[1] ** 2)
  assert "custom_jvp_call" in str(jax.make_jaxpr(lambda p, x: jr.scan(cell, p, x))(params, xs))
  ys_tm = jr.scan(cell, params, jnp.swapaxes(xs, 0, 1), time_major=True)[1]
  _assert_close(jnp.swapaxes(ys_tm, 0, 1), jr.scan(cell, params, xs, implementation="reference")[1],
                1e-6)
  per_example = jax.vmap(lambda x: jr.scan(cell, params, x)[1])(xs)
  _assert_close(per_example, jr.scan(cell, params, xs, implementation="reference")[1], 1e-6)
  g_vmap = jax.vmap(jax.grad(loss("auto")), (None, 0))(params, xs[:, None])
  g_loop = [jax.grad(loss("reference"))(params, xs[i:i + 1]) for i in range(B)]
  _assert_close(g_vmap, jax.tree_util.tree_map(lambda *a: jnp.stack(a), *g_loop), 1e-5)


@pytest.mark.parametrize("name", ["gru", "lstm"])
def test_fused_gradient_has_no_extra_loop(name):
  """Forward and backward: two loops, as for the plain scan (a third would mean the tangent
  loop holds known-only work that partial evaluation split off into another forward loop)."""
  cell = CELLS[name]()
  params, xs, _ = _inputs(cell, jnp.float32)
  kw = {"lengths": jnp.array([T, 2, 0], jnp.int32), "resets": jnp.zeros((B, T), bool)}
  f = jax.grad(lambda p, x: jnp.sum(jr.scan(cell, p, x, implementation="fused", **kw)[1]), (0, 1))
  assert str(jax.make_jaxpr(f)(params, xs)).count("scan[") == 2


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32, jnp.float64])
def test_fused_keeps_dtypes(dtype):
  cell = jr.gru(5)
  params, xs, _ = _inputs(cell, jnp.float32)
  carry, ys = jr.scan(cell, params, xs.astype(dtype), implementation="fused")
  assert ys.dtype == dtype and carry.dtype == dtype
  grads = jax.grad(lambda p: jnp.sum(jr.scan(cell, p, xs.astype(dtype),
                                             implementation="fused")[1].astype(jnp.float32)))(params)
  assert all(g.dtype == jnp.float32 for g in jax.tree_util.tree_leaves(grads))


def test_replaced_functions_are_run_not_the_fused_kernel():
  """The cell contract: a cell made with a new step/recur must run it, never the old kernel."""
  cell = jr.lstm(5)
  params, xs, _ = _inputs(cell, jnp.float32)

  def doubled_step(p, c, x):
    c, y = cell.step(p, c, x)
    return c, 2 * y

  def doubled_recur(p, c, z):
    c, y = cell.recur(p, c, z)
    return c, 2 * y

  want = 2 * jr.scan(cell, params, xs, implementation="reference")[1]
  for changed in (cell._replace(step=doubled_step), cell._replace(recur=doubled_recur)):
    assert _plan.spec_for(changed) is None
    _assert_close(jr.scan(changed, params, xs)[1], want, 1e-6)
    with pytest.raises(ValueError, match="no fused implementation"):
      jr.scan(changed, params, xs, implementation="fused")


@pytest.mark.parametrize("batch, dtype", [(3, jnp.float64), (16, jnp.float32)],
                         ids=["xla_loop", "native_loop"])
@pytest.mark.parametrize("name", ["lstm", "gru", "simple_rnn"])
def test_remat_on_the_fast_path_changes_memory_not_values_or_gradients(name, batch, dtype):
  """`remat` runs the fused driver (the native loops too) chunk by chunk under
  `jax.checkpoint`: the same values and gradients, much less memory kept for the backward."""
  cell = getattr(jr, name)(5, param_dtype=dtype)
  params = cell.init(jax.random.key(0), 3)
  xs = jax.random.normal(jax.random.key(1), (batch, 11, 3), dtype)
  lengths = jnp.asarray(np.arange(batch) % 12, jnp.int32)

  def loss(p, x, remat, impl, reverse):
    c, ys = jr.scan(cell, p, x, lengths=lengths, reverse=reverse, remat=remat,
                    implementation=impl)
    return jnp.sum(ys ** 2) + sum(jnp.sum(jnp.sin(a)) for a in jax.tree_util.tree_leaves(c))

  grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)), static_argnums=(2, 3, 4))
  tol = 1e-12 if dtype == jnp.float64 else 2e-5
  for reverse in (False, True):
    want = grad(params, xs, None, "fused", reverse)
    # Chunks of 4 (a shorter last one), of sqrt(11) ~ 3 by "auto", and one chunk longer than T.
    for remat, impl in ((4, "fused"), ("sqrt", "auto"), (20, "fused")):
      _assert_close(grad(params, xs, remat, impl, reverse), want, tol)
  text = jax.jit(grad, static_argnums=(2, 3, 4)).lower(params, xs, 4, "auto", False).as_text()
  assert ("jaxrnn_" in text) == (batch == 16)  # the native loop runs inside the chunks

  long_xs = jnp.ones((batch, 600, 3), dtype)
  memory = {remat: jax.jit(jax.grad(lambda p, x: jnp.sum(jr.scan(cell, p, x, remat=remat)[1])))
            .lower(params, long_xs).compile().memory_analysis().temp_size_in_bytes
            for remat in (None, "sqrt")}
  assert memory["sqrt"] < memory[None] / 3, memory


@pytest.mark.parametrize("hoisted", [False, True])
@pytest.mark.parametrize("name", sorted(CELLS))
def test_both_hoisting_choices_equal_the_reference(name, hoisted, monkeypatch):
  """The input projection before the loop (the GPU/TPU default, and the CPU default for some
  families) and inside it: both equal the plain scan run per step, fused and reference paths,
  values and gradients (float64), with lengths, resets and reverse."""
  cell = CELLS[name]()
  params, xs, carry = _inputs(cell, jnp.float64, seed=1)
  monkeypatch.setattr(_plan, "HOIST_BY_FAMILY", {})
  monkeypatch.setitem(_plan.HOIST_BY_BACKEND, jax.default_backend(), hoisted)
  assert _plan_of(cell).hoist is hoisted and _plan_of(cell, training=True).hoist is hoisted
  for kw in _options():
    got = {impl: (jr.scan(cell, params, xs, carry=carry, implementation=impl, **kw),
                  jax.grad(_loss(cell, impl, kw), (0, 1, 2))(params, xs, carry))
           for impl in ("fused", "reference")}
    want = jr.static_unroll(cell, params, xs, carry=carry, **{
        k: v for k, v in kw.items() if k != "unroll"})
    _assert_close(got["fused"], got["reference"], TOL[jnp.float64])
    _assert_close(got["reference"][0], want, TOL[jnp.float64])


def test_family_hoisting_defaults_on_cpu():
  """Which families hoist on CPU is a measured choice (drivers/_plan.py); pin it here so that a
  change is deliberate. User-replaced functions are never reordered."""
  if jax.default_backend() != "cpu":
    pytest.skip("the table pinned here is the CPU one")
  expect = {"lstm": (False, False), "gru": (False, False), "simple_tanh": (True, True),
            "indrnn": (True, True)}
  for name, (inference, training) in expect.items():
    cell = CELLS[name]()
    assert (_plan_of(cell).hoist, _plan_of(cell, training=True).hoist) == (inference, training)
  cell = CELLS["indrnn"]()
  user = cell._replace(step=lambda p, c, x: cell.step(p, c, x))
  assert not _plan_of(user, "auto").hoist and not _plan_of(user, "auto", training=True).hoist


def _loop_matmuls(cell, params, xs, carry):
  """How many matmuls the fused forward's loop body runs a step."""
  jaxpr = jax.make_jaxpr(lambda p, x, c: jr.scan(cell, p, x, carry=c, implementation="fused"))(
      params, xs, carry)
  scans = [e for e in _equations(jaxpr.jaxpr) if e.primitive.name == "scan"]
  assert len(scans) == 1
  return sum(e.primitive.name == "dot_general" for e in _equations(scans[0].params["jaxpr"].jaxpr))


def _equations(jaxpr):
  """Every equation of `jaxpr`, nested ones (custom_jvp, pjit) included."""
  for eqn in jaxpr.eqns:
    yield eqn
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      yield from _equations(sub)


@pytest.mark.parametrize("joined", [False, True])
@pytest.mark.parametrize("name", ["lstm", "lstm_nobias"])
def test_joint_and_separate_matmuls_equal_the_reference(name, joined, monkeypatch):
  """The LSTM step as one matmul of `[x_t, h]` by the joined weights (`FusedSpec.joint`, the
  CPU default) and as two: both equal the plain scan, values and gradients (float64), with
  lengths, resets and reverse; and the loop runs one matmul a step, or two."""
  cell = CELLS[name]()
  params, xs, carry = _inputs(cell, jnp.float64, seed=2)
  monkeypatch.setitem(_plan.JOINT_BY_FAMILY, ("lstm", jax.default_backend()), joined)
  assert _plan_of(cell).joint is joined
  assert _loop_matmuls(cell, params, xs, carry) == (1 if joined else 2)
  for kw in _options():
    got = {impl: (jr.scan(cell, params, xs, carry=carry, implementation=impl, **kw),
                  jax.grad(_loss(cell, impl, kw), (0, 1, 2))(params, xs, carry))
           for impl in ("fused", "reference")}
    _assert_close(got["fused"], got["reference"], TOL[jnp.float64])


def test_joint_step_applies_only_to_one_dtype(monkeypatch):
  """The joint step is offered only where the input's compute dtype, the carry's and the
  recurrent weight's agree: a bfloat16 `matmul_dtype` keeps the two matmuls (and a carry of
  another dtype would, though `jr.scan` refuses one), and the results equal the reference."""
  monkeypatch.setitem(_plan.JOINT_BY_FAMILY, ("lstm", jax.default_backend()), True)
  f32, f64 = jnp.dtype(jnp.float32), jnp.dtype(jnp.float64)
  spec = _plan.spec_for(jr.lstm(5))
  params = jr.lstm(5).init(jax.random.key(0), D)
  assert spec.joint(params, spec.rec_params(params, f64), f32, f64) is None
  for cell, x_dtype, carry_dtype, applies in [
      (jr.lstm(5), f32, f32, True), (jr.lstm(5), f64, f64, True),
      (jr.lstm(5, matmul_dtype=jnp.bfloat16), f32, f32, False),
      (jr.lstm(5, matmul_dtype=jnp.float32), f32, f32, True),
      (jr.lstm(5, dtype=jnp.float32), f64, f32, True)]:
    spec = _plan.spec_for(cell)
    params = cell.init(jax.random.key(0), D)
    rp = spec.rec_params(params, carry_dtype)
    assert (spec.joint(params, rp, x_dtype, carry_dtype) is not None) is applies
    xs = jax.random.normal(jax.random.key(1), (B, T, D), x_dtype)
    carry = jax.tree_util.tree_map(lambda a: a.astype(carry_dtype),
                                   cell.initial_carry((B,), carry_dtype))
    assert _loop_matmuls(cell, params, xs, carry) == (1 if applies else 2)
    _assert_close(jr.scan(cell, params, xs, carry=carry, implementation="fused"),
                  jr.scan(cell, params, xs, carry=carry, implementation="reference"), 1e-6)


def test_joint_step_raises_what_the_two_matmul_step_raises(monkeypatch):
  """Bad shapes fail as they do with two matmuls a step: the input's feature size (the cell's
  own check) and recurrent weights or bias of the wrong shape."""
  cell = jr.lstm(5)
  params, xs, _ = _inputs(cell, jnp.float32)
  cases = [(params, xs[..., :3]), (dict(params, w_h=params["w_h"][:4]), xs),
           (dict(params, w_h=params["w_h"][:, :12]), xs), (dict(params, b=params["b"][:12]), xs)]
  for p, x in cases:
    errors = []
    for joined in (True, False):
      monkeypatch.setitem(_plan.JOINT_BY_FAMILY, ("lstm", jax.default_backend()), joined)
      with pytest.raises((ValueError, TypeError)) as info:
        jr.scan(cell, p, x, implementation="fused")
      errors.append((info.type, str(info.value)))
    assert errors[0] == errors[1]


def test_which_families_join_their_matmuls_on_cpu():
  """Which families' XLA loop joins the two matmuls on CPU is a measured choice
  (drivers/_plan.py); pinned here so that a change is deliberate."""
  if jax.default_backend() != "cpu":
    pytest.skip("the table pinned here is the CPU one")
  for name in sorted(CELLS):
    cell = CELLS[name]()
    assert _plan_of(cell).joint is name.startswith("lstm"), name
    assert (_plan.spec_for(cell).joint is not None) is name.startswith("lstm"), name


def test_which_families_auto_fuses_on_cpu():
  """"auto" runs the fused driver for every built-in family with a fused form, except where
  measurement says the reference is as fast (drivers/_plan.py: the IndRNN on CPU, whose plain
  autodiff has no weight-gradient work in the loop once its projection is hoisted). Pinned here so
  that a change is deliberate; "fused" still runs the fused driver for it."""
  if jax.default_backend() != "cpu":
    pytest.skip("the table pinned here is the CPU one")
  # The fused driver is a custom_jvp named after its `scan_fn` (relu is a custom_jvp too).
  fused = lambda cell, impl: bool(re.search(r"custom_jvp_call\[\s*name=scan_fn", str(
      jax.make_jaxpr(lambda p, x: jr.scan(cell, p, x, implementation=impl))(
          *_inputs(cell, jnp.float32)[:2]))))
  for name in sorted(CELLS):
    cell = CELLS[name]()
    expect = not name.startswith("indrnn")
    assert (_plan_of(cell, "auto").driver != "reference") is expect, name
    assert fused(cell, "auto") is expect, name
    assert fused(cell, "fused") and not fused(cell, "reference"), name
  # The IndRNN's auto path is the reference path: the same values and gradients, bit for bit.
  cell = CELLS["indrnn_bounded_tanh"]()
  params, xs, carry = _inputs(cell, jnp.float32)
  run = lambda impl: jax.value_and_grad(_loss(cell, impl, {}), (0, 1, 2))(params, xs, carry)
  auto, reference = run("auto"), run("reference")
  for a, b in zip(jax.tree_util.tree_leaves(auto), jax.tree_util.tree_leaves(reference)):
    np.testing.assert_array_equal(a, b)
