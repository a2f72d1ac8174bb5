"""Which path `jr.scan` takes, pinned case by case: the driver (reference, fused, native or
oneDNN), whether the input projection is hoisted out of the loop, and whether the fused loop
joins its two matmuls into one.

`PINNED` is the behaviour measured and chosen for CPU; a change to it must be deliberate. Each
case is checked twice: against what the dispatch decides, and against what `jr.scan` is seen to
do (the kernels and loops in its jaxpr), so that the decision and the path cannot drift apart.
"""

import ast
import os
import re
import subprocess
import sys

import jax
import jax.extend.core
import jax.numpy as jnp
import pytest

import jaxrnn as jr
from jaxrnn.drivers import _library, _plan

H, D, T = 4, 3, 3
IMPLEMENTATIONS = ("auto", "fused", "reference", "onednn")


@pytest.fixture(autouse=True)
def _one_mib_l2_cache(monkeypatch):
  """The paths below were measured on a machine with AVX-512 and 1 MiB of L2 cache a core,
  whose native loops multiply with oneDNN's sgemm; the native loops' smallest batch and largest
  weights depend on all three (`_plan.native_min_batch`, `_plan.native_max_l2_multiple`), so
  they are fixed here."""
  monkeypatch.setattr(_plan, "_L2_BYTES", 1 << 20)
  monkeypatch.setattr(_plan, "_AVX512", True)
  monkeypatch.setattr(_plan, "_STEP_MATMUL", "sgemm")


def _user_cell():
  """A cell of the user's own, whose display name happens to be a built-in family's."""

  def init(key, d):
    del key
    return {"w": jnp.ones((d, H), jnp.float32), "v": jnp.eye(H, dtype=jnp.float32)}

  def initial_carry(batch_shape=(), dtype=None):
    return jnp.zeros(tuple(batch_shape) + (H,), jnp.float32 if dtype is None else dtype)

  def step(p, c, x):
    h = jnp.tanh(x @ p["w"].astype(x.dtype) + c @ p["v"].astype(c.dtype))
    return h, h

  return jr.Cell(init=init, initial_carry=initial_carry, step=step, name="lstm")


def _replaced_step():
  cell = jr.lstm(H)
  return cell._replace(step=lambda p, c, x: cell.step(p, c, x))


def _replaced_recur():
  cell = jr.lstm(H)
  return cell._replace(recur=lambda p, c, z: cell.recur(p, c, z))


CELLS = {
    "simple_rnn": lambda: jr.simple_rnn(H),
    "simple_rnn_relu": lambda: jr.simple_rnn(H, activation="relu"),
    "lstm": lambda: jr.lstm(H),
    "lstm_nobias": lambda: jr.lstm(H, use_bias=False),
    "lstm_proj": lambda: jr.lstm(H, proj_size=2),
    "lstm_peephole": lambda: jr.lstm(H, peephole=True),
    "lstm_bf16_matmul": lambda: jr.lstm(H, matmul_dtype=jnp.bfloat16),
    "lstm_f32_compute": lambda: jr.lstm(H, dtype=jnp.float32),
    "gru": lambda: jr.gru(H),
    "gru_reset_before": lambda: jr.gru(H, reset_after=False),
    "gru_bf16_matmul": lambda: jr.gru(H, matmul_dtype=jnp.bfloat16),
    "indrnn": lambda: jr.indrnn(H),
    "layer_norm_lstm": lambda: jr.layer_norm_lstm(H),
    "layer_norm_gru": lambda: jr.layer_norm_gru(H),
    "min_gru": lambda: jr.min_gru(H),
    "variational_dropout_lstm": lambda: jr.variational_dropout(jr.lstm(H), 0.25),
    "variational_dropout_gru": lambda: jr.variational_dropout(jr.gru(H), 0.25),
    "zoneout_gru": lambda: jr.zoneout(jr.gru(H), 0.1),
    "weight_drop_lstm": lambda: jr.weight_drop(jr.lstm(H), 0.5),
    "with_carries_lstm": lambda: jr.with_carries(jr.lstm(H)),
    "user_cell_named_lstm": _user_cell,
    "lstm_replaced_step": _replaced_step,
    "lstm_replaced_recur": _replaced_recur,
    "lstm_renamed_indrnn": lambda: jr.lstm(H)._replace(name="indrnn(4)"),
    "indrnn_renamed_lstm": lambda: jr.indrnn(H)._replace(name="lstm(4)"),
}

# cell, dtype, batch, option (- / lengths / resets / remat) | the path for "auto", "fused",
# "reference" and "onednn": `driver[/hoist][/joint]`, or "error" where `jr.scan` raises;
# `inference>training` where the training forward (under `jax.grad`) takes another path.
# With the native library built (native loops and oneDNN).
PINNED = """
simple_rnn               f32 16 -       | native/hoist native/hoist reference/hoist error
simple_rnn_relu          f32 16 -       | native/hoist native/hoist reference/hoist error
lstm                     f32 16 -       | native/joint native/joint reference onednn
lstm_nobias              f32 16 -       | native/joint native/joint reference onednn
lstm_proj                f32 16 -       | reference error reference error
lstm_peephole            f32 16 -       | reference error reference error
lstm_bf16_matmul         f32 16 -       | fused fused reference error
lstm_f32_compute         f32 16 -       | native/joint native/joint reference onednn
gru                      f32 16 -       | native native reference error
gru_reset_before         f32 16 -       | reference error reference error
gru_bf16_matmul          f32 16 -       | fused fused reference error
indrnn                   f32 16 -       | reference/hoist fused/hoist reference/hoist error
layer_norm_lstm          f32 16 -       | reference error reference error
layer_norm_gru           f32 16 -       | reference error reference error
min_gru                  f32 16 -       | reference error reference error
variational_dropout_lstm f32 16 -       | reference error reference error
variational_dropout_gru  f32 16 -       | reference error reference error
zoneout_gru              f32 16 -       | reference error reference error
weight_drop_lstm         f32 16 -       | reference error reference error
with_carries_lstm        f32 16 -       | reference error reference error
user_cell_named_lstm     f32 16 -       | reference error reference error
lstm_replaced_step       f32 16 -       | reference error reference error
lstm_replaced_recur      f32 16 -       | reference/hoist error reference/hoist error
lstm_renamed_indrnn      f32 16 -       | native/joint native/joint reference onednn
indrnn_renamed_lstm      f32 16 -       | reference/hoist fused/hoist reference/hoist error
lstm                     f32  1 -       | native/joint native/joint reference onednn
lstm                     f32  8 -       | native/joint native/joint reference onednn
lstm                     f32 32 -       | native/joint native/joint reference onednn
lstm                     f64 16 -       | fused/joint fused/joint reference error
lstm                     f64  1 -       | fused/joint fused/joint reference error
lstm                     f32 16 lengths | native/joint native/joint reference error
lstm                     f32 16 resets  | fused/joint fused/joint reference error
lstm                     f32 16 remat   | native/joint native/joint reference error
lstm                     f64 32 lengths | fused/joint fused/joint reference error
lstm                     f32  1 remat   | native/joint native/joint reference error
lstm                     f32 32 resets  | fused/joint fused/joint reference error
gru                      f32  1 -       | fused>native fused>native reference error
gru                      f32  8 -       | native native reference error
gru                      f32 32 -       | native native reference error
gru                      f64 16 -       | fused fused reference error
gru                      f64  1 -       | fused fused reference error
gru                      f32 16 lengths | native native reference error
gru                      f32 16 resets  | fused fused reference error
gru                      f32 16 remat   | native native reference error
gru                      f64 32 lengths | fused fused reference error
gru                      f32  1 remat   | fused>native fused>native reference error
gru                      f32 32 resets  | fused fused reference error
simple_rnn               f32  1 -       | fused/hoist>native/hoist fused/hoist>native/hoist reference/hoist error
simple_rnn               f32  8 -       | native/hoist native/hoist reference/hoist error
simple_rnn               f32 32 -       | native/hoist native/hoist reference/hoist error
simple_rnn               f64 16 -       | fused/hoist fused/hoist reference/hoist error
simple_rnn               f64  1 -       | fused/hoist fused/hoist reference/hoist error
simple_rnn               f32 16 lengths | native/hoist native/hoist reference/hoist error
simple_rnn               f32 16 resets  | fused/hoist fused/hoist reference/hoist error
simple_rnn               f32 16 remat   | native/hoist native/hoist reference/hoist error
simple_rnn               f64 32 lengths | fused/hoist fused/hoist reference/hoist error
simple_rnn               f32  1 remat   | fused/hoist>native/hoist fused/hoist>native/hoist reference/hoist error
simple_rnn               f32 32 resets  | fused/hoist fused/hoist reference/hoist error
indrnn                   f32  1 -       | reference/hoist fused/hoist reference/hoist error
indrnn                   f32 32 -       | reference/hoist fused/hoist reference/hoist error
indrnn                   f64 16 -       | reference/hoist fused/hoist reference/hoist error
indrnn                   f32 16 lengths | reference/hoist fused/hoist reference/hoist error
indrnn                   f32 16 resets  | reference/hoist fused/hoist reference/hoist error
indrnn                   f32 16 remat   | reference/hoist fused/hoist reference/hoist error
lstm_bf16_matmul         f32  1 -       | fused fused reference error
lstm_bf16_matmul         f32 32 -       | fused fused reference error
lstm_bf16_matmul         f64 16 -       | fused fused reference error
lstm_bf16_matmul         f32 16 lengths | fused fused reference error
lstm_bf16_matmul         f32 16 resets  | fused fused reference error
lstm_bf16_matmul         f32 16 remat   | fused fused reference error
"""


def _pinned():
  rows = []
  for line in PINNED.strip().splitlines():
    key, paths = line.split("|")
    name, dtype, batch, option = key.split()
    rows.append(((name, dtype, int(batch), option), dict(zip(IMPLEMENTATIONS, paths.split()))))
  return rows


ROWS = _pinned()
ROW_IDS = ["-".join(map(str, key)) for key, _ in ROWS]


def _expected(path: str, training: bool) -> str:
  """`path` for inference or training, where the native library is not built here: the fused
  path's XLA loop instead of the native loop, and no oneDNN."""
  path = path.split(">")[-1 if training else 0]
  if _library.available():
    return path
  if path == "onednn":
    return "error"
  return path.replace("native", "fused")


def _call(name: str, dtype: str, batch: int, option: str):
  """`(cell, params, xs, kwargs)` of one case: tiny shapes, batch-major `xs (B, T, D)`."""
  cell = CELLS[name]()
  dt = {"f32": jnp.float32, "f64": jnp.float64}[dtype]
  params = cell.init(jax.random.key(0), D)
  params = jax.tree_util.tree_map(
      lambda a: a.astype(dt) if a.dtype == jnp.float32 else a, params)
  xs = jax.random.normal(jax.random.key(1), (batch, T, D), dt)
  kw = {"-": {}, "lengths": {"lengths": jnp.full((batch,), T - 1, jnp.int32)},
        "resets": {"resets": jnp.zeros((batch, T), bool).at[:, 1].set(True)},
        "remat": {"remat": 2}}[option]
  return cell, params, xs, kw


def _decided(cell, params, xs, kw, implementation: str, training: bool) -> str:
  """The path `jr.scan_plan` gives for a call, `driver[/hoist][/joint]` or "error"."""
  try:
    plan = jr.scan_plan(cell, params, xs, implementation=implementation, training=training, **kw)
  except ValueError as e:
    if re.search("does not apply|no fused implementation", str(e)):
      return "error"
    raise
  assert plan.driver in _plan.DRIVERS and plan.reasons
  return "/".join([plan.driver] + ["hoist"] * plan.hoist + ["joint"] * plan.joint)


def _equations(jaxpr):
  """Every equation of `jaxpr`, nested ones included, in order."""
  for eqn in jaxpr.eqns:
    yield eqn
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      yield from _equations(sub)


def _time_loop(jaxpr):
  """The first `scan` (in program order) with no scan inside: the time loop, or a chunk of it;
  under `jax.grad`, the forward one."""
  for eqn in _equations(jaxpr):
    if eqn.primitive.name == "scan":
      body = eqn.params["jaxpr"].jaxpr
      if not any(e.primitive.name == "scan" for e in _equations(body)):
        return eqn
  return None


def _observed(cell, params, xs, kw, implementation: str, training: bool) -> str:
  """The path `jr.scan` is seen to take, from its jaxpr: the kernels it calls, the size of
  the time loop's per-step input (the input size, or the projection's when hoisted) and the
  matmuls in its body (one where the fused loop joins them)."""
  run = lambda p, x: jr.scan(cell, p, x, implementation=implementation, **kw)
  if training:
    fn = jax.grad(lambda p, x: sum(jnp.sum(a.astype(jnp.float32) ** 2)
                                   for a in jax.tree_util.tree_leaves(run(p, x))), (0, 1))
  else:
    fn = run
  try:
    closed = jax.make_jaxpr(fn)(params, xs)
  except ValueError as e:
    if re.search("does not apply|no fused implementation", str(e)):
      return "error"
    raise
  text = str(closed)
  if "jaxrnn_lstm_forward" in text:
    return "onednn"
  if re.search(r"jaxrnn_\w+_loop", text):
    return "native"  # its loop is C++: no XLA loop to read hoisting or matmuls from
  driver = "fused" if re.search(r"custom_jvp_call\[\s*name=scan_fn", text) else "reference"
  loop = _time_loop(closed.jaxpr)
  inputs = loop.invars[loop.params["num_consts"] + loop.params["num_carry"]]
  hoist = inputs.aval.shape[-1] != D
  matmuls = sum(e.primitive.name == "dot_general"
                for e in _equations(loop.params["jaxpr"].jaxpr))
  joint = not hoist and matmuls == 1 and "w_h" in params
  return "/".join([driver] + ["hoist"] * hoist + ["joint"] * joint)


@pytest.mark.parametrize("training", [False, True], ids=["inference", "training"])
@pytest.mark.parametrize("key, paths", ROWS, ids=ROW_IDS)
def test_scan_plan_gives_the_pinned_path(key, paths, training):
  cell, params, xs, kw = _call(*key)
  for implementation in IMPLEMENTATIONS:
    got = _decided(cell, params, xs, kw, implementation, training)
    assert got == _expected(paths[implementation], training), implementation


@pytest.mark.parametrize("key, paths", ROWS, ids=ROW_IDS)
def test_scan_takes_the_pinned_path(key, paths):
  """What `jr.scan` runs, read from its jaxpr. Under `jax.grad` the fused driver's custom JVP
  is gone from the jaxpr, so the training forward is checked for its hoisting, joint matmul
  and native kernels only (the driver's own tests pin its gradients)."""
  cell, params, xs, kw = _call(*key)
  for implementation in IMPLEMENTATIONS:
    for training in (False, True):
      want = _expected(paths[implementation], training)
      if want.startswith("native"):
        want = "native"
      elif training:
        want = want.replace("fused", "reference")
      got = _observed(cell, params, xs, kw, implementation, training)
      assert got == want, (implementation, training)


# ---------------------------------------------------------------------------------------------
# The family a cell declares


def test_which_functions_run_is_read_from_the_cell_fields():
  """A built-in cell records the functions it was built with (`Cell.built_from`) and its fused
  form (`Cell.fused`); replacing any function, or assembling a new cell from built-in
  functions around a step of one's own, runs the user's functions."""
  cell = jr.lstm(H)
  assert cell.built_from == (cell.step, cell.project, cell.recur)
  assert cell.fused is not None and _plan.spec_for(cell) is cell.fused
  assert _plan.functions_run(cell) == "either"
  mine = lambda p, c, x: cell.step(p, c, x)
  assert _plan.functions_run(cell._replace(step=mine)) == "step"
  assert _plan.functions_run(cell._replace(recur=lambda p, c, z: cell.recur(p, c, z))) == "split"
  assembled = jr.Cell(init=cell.init, initial_carry=cell.initial_carry, step=mine,
                      project=cell.project, recur=cell.recur)
  assert _plan.functions_run(assembled) == "step" and _plan.spec_for(assembled) is None
  for changed in (cell._replace(step=mine), assembled):
    assert jr.scan_plan(changed, cell.init(jax.random.key(0), D),
                        jnp.zeros((2, T, D), jnp.float32)).driver == "reference"
  assert jr.indrnn(H).fused is not None and jr.min_gru(H).fused is None


def test_every_built_in_cell_declares_its_family():
  """The family is the constructor's explicit choice, not its display name's prefix: variants
  whose equations differ from their family's have their own."""
  families = {
      jr.simple_rnn(H): "simple_rnn", jr.simple_rnn(H, activation="relu"): "simple_rnn",
      jr.lstm(H): "lstm", jr.lstm(H, proj_size=2): "lstm_proj",
      jr.lstm(H, peephole=True): "lstm_peephole",
      jr.lstm(H, proj_size=2, peephole=True): "lstm_proj_peephole",
      jr.gru(H): "gru", jr.gru(H, reset_after=False): "gru_reset_before", jr.indrnn(H): "indrnn",
      jr.layer_norm_lstm(H): "layer_norm_lstm", jr.layer_norm_gru(H): "layer_norm_gru",
      jr.min_gru(H): "min_gru", jr.min_lstm(H): "min_lstm", jr.linear_indrnn(H): "linear_indrnn",
      jr.lru(H): "lru"}
  for cell, family in families.items():
    assert cell.family == family, cell.name
    gru_style = family in ("gru", "gru_reset_before", "layer_norm_gru")
    assert (cell.recur_in is not None) is gru_style, cell.name
  assert _user_cell().family is None and _user_cell().recur_in is None


@pytest.mark.parametrize("name", ["simple_rnn", "lstm", "lstm_bf16_matmul", "gru", "indrnn",
                                  "gru_reset_before", "layer_norm_gru"])
def test_renaming_a_cell_does_not_change_its_path(name):
  """The display name is for messages only: any name, another family's included, takes the
  same path for every implementation, inference and training."""
  cell, params, xs, kw = _call(name, "f32", 16, "-")
  for new_name in ("x", "indrnn(4)", "lstm(4)", "gru"):
    renamed = cell._replace(name=new_name)
    assert renamed.family == cell.family
    for implementation in IMPLEMENTATIONS:
      for training in (False, True):
        assert (_decided(renamed, params, xs, kw, implementation, training)
                == _decided(cell, params, xs, kw, implementation, training))


WRAPPERS = {
    "variational_dropout": lambda c: jr.variational_dropout(c, 0.25),
    "zoneout": lambda c: jr.zoneout(c, 0.1),
    "weight_drop": lambda c: jr.weight_drop(c, 0.5),
    "with_carries": jr.with_carries,
}


@pytest.mark.parametrize("wrapper, inner", [
    (w, c) for w in sorted(WRAPPERS) for c in ("lstm", "gru", "simple_rnn", "indrnn")
    if (w, c) != ("weight_drop", "indrnn")])  # the IndRNN has no w_h to drop from
def test_a_wrapper_that_changes_the_step_declares_no_family(wrapper, inner):
  """A wrapper's step is not its inner cell's: it must not keep a family that would send it to
  a kernel that ignores the wrapper. It runs the reference path, and "fused" and "onednn"
  refuse it."""
  cell = WRAPPERS[wrapper](CELLS[inner]())
  assert cell.family is None and cell.recur_in is None
  params = cell.init(jax.random.key(0), D)
  xs = jnp.ones((16, T, D), jnp.float32)
  plan = _plan.plan(cell, params, jnp.swapaxes(xs, 0, 1), cell.initial_carry((16,), xs.dtype))
  assert plan.driver == "reference" and plan.family is None and not plan.hoist
  for implementation in IMPLEMENTATIONS:
    want = "reference" if implementation in ("auto", "reference") else "error"
    assert _decided(cell, params, xs, {}, implementation, False) == want
    assert _observed(cell, params, xs, {}, implementation, False) == want


def test_a_replaced_function_keeps_the_family_field_but_not_its_choices():
  """`cell._replace(step=f)` keeps `family` (a field like any other), but the drivers use a
  family's choices only while the cell's functions are its own."""
  for make in (_replaced_step, _replaced_recur):
    cell = make()
    assert cell.family == "lstm"
    params = cell.init(jax.random.key(0), D)
    xs_t = jnp.ones((T, 16, D), jnp.float32)
    plan = _plan.plan(cell, params, xs_t, cell.initial_carry((16,), jnp.float32))
    assert plan.driver == "reference" and plan.family is None and not plan.joint
    assert any("replaced" in reason for reason in plan.reasons)


def test_variational_dropout_routes_its_mask_by_the_declared_fields():
  """How `jr.variational_dropout` applies the recurrent mask follows `Cell.recur_in` and
  `Cell.family` (not the name): the masked state through the GRUs' `recur_in`, the carried
  state for cells whose `h` enters only through the recurrent weight, and per-example weights
  for any other cell."""
  from jaxrnn.cells import _wrappers
  routes = {"gru": "split", "gru_reset_before": "split", "layer_norm_gru": "split",
            "lstm": "state", "lstm_proj": "state", "lstm_peephole": "state",
            "layer_norm_lstm": "state", "simple_rnn": "state", "indrnn": "state",
            "lstm_replaced_step": "weights", "lstm_replaced_recur": "weights",
            "user_cell_named_lstm": "weights", "min_gru": "weights",
            "lstm_renamed_indrnn": "state", "indrnn_renamed_lstm": "state"}
  for name, route in routes.items():
    assert _wrappers._masking_route(CELLS[name]()) == route, name
  assert _wrappers._masking_route(jr.gru(H)._replace(name="lstm(4)")) == "split"


# ---------------------------------------------------------------------------------------------
# jr.scan_plan


def test_native_min_batch_follows_the_weights_and_the_cache(monkeypatch):
  """Below `NATIVE_MIN_BATCH_UNCACHED`, a native loop runs only where a step's weights fit in
  one core's L2 cache: the LSTM at H = 64 does from one example (98 KiB of weights), at
  H = 256 (1.5 MiB) from 16 without a backward pass and from 4 with one; an unknown cache size
  counts as too small."""
  assert _plan.l2_cache_bytes() >= 0
  monkeypatch.setattr(_plan, "_L2_BYTES", 1 << 20)
  assert _plan.native_min_batch("lstm", 32, 64, False) == 1
  assert _plan.native_min_batch("lstm", 128, 256, False) == 16
  assert _plan.native_min_batch("lstm", 128, 256, True) == 4
  assert _plan.native_min_batch("gru", 32, 64, False) == 8
  assert _plan.native_min_batch("gru", 32, 64, True) == 1
  assert _plan.native_min_batch("simple_rnn", 128, 256, False) == 8
  monkeypatch.setattr(_plan, "_L2_BYTES", 0)
  assert _plan.native_min_batch("lstm", 32, 64, False) == 16
  assert _plan.native_min_batch("simple_rnn", 32, 64, True) == 4
  if _library.available():
    cell = jr.lstm(256)
    params = cell.init(jax.random.key(0), 128)
    xs = jnp.zeros((4, 3, 128), jnp.float32)
    monkeypatch.setattr(_plan, "_L2_BYTES", 1 << 20)
    plan = jr.scan_plan(cell, params, xs)
    assert plan.driver == "fused" and any("smaller than 16" in r for r in plan.reasons), plan
    assert jr.scan_plan(cell, params, xs, training=True).driver == "native"
    monkeypatch.setattr(_plan, "_L2_BYTES", 2 << 20)
    assert jr.scan_plan(cell, params, xs).driver == "native"
  # With the packed step kernel the weights beyond L2 ask for 4 examples either way (the loops
  # give calls of fewer to the sgemm).
  monkeypatch.setattr(_plan, "_STEP_MATMUL", "packed")
  monkeypatch.setattr(_plan, "_L2_BYTES", 1 << 20)
  assert _plan.native_min_batch("lstm", 128, 256, False) == 4
  assert _plan.native_min_batch("lstm", 128, 256, True) == 4
  assert _plan.native_min_batch("lstm", 32, 64, False) == 1
  assert _plan.native_min_batch("gru", 32, 64, False) == 8
  if _library.available():
    assert jr.scan_plan(cell, params, xs).driver == "native"
    plan = jr.scan_plan(cell, params, jnp.zeros((3, 3, 128), jnp.float32))
    assert plan.driver == "fused" and any("smaller than 4" in r for r in plan.reasons), plan


def test_without_avx512_large_weights_leave_the_native_loops(monkeypatch):
  """On a CPU without AVX-512 (an AVX2 machine, 512 KiB of L2 a core) whose native loops
  multiply with oneDNN's sgemm, XLA's loop was measured faster than the native one above a
  family's largest weights (`NATIVE_MAX_L2_MULTIPLE_WITHOUT_AVX512`): the LSTM's forward alone
  beyond the L2 cache, its training step beyond 4x it, the GRU's forward beyond 4x; the same
  calls stay native with AVX-512, and with the packed step kernel (the AVX2 default)."""
  monkeypatch.setattr(_plan, "_L2_BYTES", 512 << 10)
  multiple = _plan.native_max_l2_multiple
  monkeypatch.setattr(_plan, "_AVX512", True)
  assert [multiple(f, t) for f in ("lstm", "gru", "simple_rnn") for t in (False, True)] == \
      [None] * 6
  monkeypatch.setattr(_plan, "_AVX512", False)
  assert [multiple(f, t) for f in ("lstm", "gru", "simple_rnn") for t in (False, True)] == \
      [1, 4, 4, None, None, None]
  assert isinstance(_plan.cpu_has_avx512(), bool)

  def why(family, batch, d, h, training):
    cell = {"lstm": jr.lstm, "gru": jr.gru, "simple_rnn": jr.simple_rnn}[family](h)
    params = jax.eval_shape(lambda k: cell.init(k, d), jax.random.key(0))
    xs = jax.ShapeDtypeStruct((2, batch, d), jnp.float32)
    carry = jax.eval_shape(lambda: cell.initial_carry((batch,), jnp.float32))
    return _plan.why_not_native(cell, _plan.spec_for(cell), params, xs, carry, None, "cpu",
                                training)

  # (B, D, H): LSTM weights 96 KiB, 1.5 MiB, 6 MiB; GRU 1.1 MiB and 4.5 MiB.
  if _library.available():
    for avx512 in (True, False):
      monkeypatch.setattr(_plan, "_AVX512", avx512)
      assert why("lstm", 32, 32, 64, False) is None
      assert why("lstm", 32, 128, 256, True) is None
      assert why("gru", 32, 128, 256, False) is None
      assert why("gru", 64, 256, 512, True) is None
      assert why("simple_rnn", 64, 256, 512, False) is None
      big = [why("lstm", 32, 128, 256, False), why("lstm", 64, 256, 512, True),
             why("gru", 64, 256, 512, False)]
      if avx512:
        assert big == [None] * 3
      else:
        assert all("on a CPU without AVX-512" in w for w in big), big
        assert "(1.50 MiB) exceed 1x one core's L2 cache (512 KiB)" in big[0]
        assert "(6.00 MiB) exceed 4x" in big[1] and "training step" in big[1]
        assert "gru forward" in big[2]
    monkeypatch.setattr(_plan, "_STEP_MATMUL", "packed")
    assert why("lstm", 32, 128, 256, False) is None
    assert why("lstm", 64, 256, 512, True) is None
    assert why("gru", 64, 256, 512, False) is None
  monkeypatch.setattr(_plan, "_STEP_MATMUL", "packed")
  assert [multiple(f, t) for f in ("lstm", "gru", "simple_rnn") for t in (False, True)] == \
      [None] * 6


def _program(fn, *args) -> list:
  """The instructions of the program XLA compiles for `fn(*args)`, without the names,
  numbering and source locations that differ between two traces of the same computation."""
  text = jax.jit(fn).lower(*args).compile().as_text()
  lines = []
  for line in text.splitlines():
    if re.match(r"\s*(ROOT )?%\S+ = ", line):
      line = re.sub(r",? *metadata=\{[^}]*\}", "", line)
      lines.append(re.sub(r"%[\w.-]+", "%", line).strip())
  return lines


@pytest.mark.parametrize("name", ["gru", "simple_rnn"])
def test_auto_below_the_native_batch_compiles_to_the_reference_program(name):
  """Where the GRU's and the simple RNN's forward runs XLA's loop (one example: below the
  native loops' smallest batch without a backward pass), "auto" takes the fused driver, whose
  forward compiles to the very program of the reference scan; so it is not slower than the
  reference there by construction. (Timings of the two differ only by noise.)"""
  cell = getattr(jr, name)(8)
  params = cell.init(jax.random.key(0), 5)
  xs = jax.random.normal(jax.random.key(1), (1, 12, 5), jnp.float32)
  assert jr.scan_plan(cell, params, xs).driver == "fused"
  programs = [_program(lambda p, x: jr.scan(cell, p, x, implementation=implementation)[1],
                       params, xs) for implementation in ("auto", "reference")]
  assert any(" while(" in line for line in programs[0]), programs[0]
  assert programs[0] == programs[1]
  # The comparison has teeth: another program (here, with lengths) is told apart.
  lengths = jnp.array([7], jnp.int32)
  assert _program(lambda p, x: jr.scan(cell, p, x, lengths=lengths)[1], params, xs) != \
      programs[0]


def test_scan_plan_says_why():
  """Each choice comes with its reason, and a path that does not apply raises `jr.scan`'s own
  error, which says why."""
  gru, gru_params, gru_xs, _ = _call("gru", "f32", 4, "-")
  plan = jr.scan_plan(gru, gru_params, gru_xs)
  if _library.available():
    assert plan.driver == "fused", plan
    assert any("smaller than 8, where the gru loop starts without a backward pass" in r
               for r in plan.reasons), plan.reasons
    plan = jr.scan_plan(gru, gru_params, gru_xs, training=True)
    assert plan.driver == "native" and "native: the gru loop" in plan.reasons[1], plan
  cell, params, xs, _ = _call("lstm", "f32", 8, "-")
  plan = jr.scan_plan(cell, params, xs)
  assert plan.family == "lstm"
  assert any(r.startswith("joint matmul") for r in plan.reasons), plan.reasons
  plan = jr.scan_plan(cell, params, xs.astype(jnp.float64), implementation="reference")
  assert plan.driver == "reference" and "implementation='reference'" in plan.reasons[0]
  lengths = jnp.full((8,), T, jnp.int32)
  for implementation, match in (("onednn", "lengths is not supported"),
                                ("fused", "no fused implementation")):
    target = cell if implementation == "onednn" else jr.with_carries(cell)
    errors = []
    for fn in (jr.scan, jr.scan_plan):
      with pytest.raises(ValueError, match=match) as info:
        fn(target, params, xs, lengths=lengths, implementation=implementation)
      errors.append(str(info.value))
    assert errors[0] == errors[1]


def test_scan_plan_checks_arguments_as_scan_does():
  cell, params, xs, _ = _call("gru", "f32", 8, "-")
  for kw in ({"xs": xs[..., :2]}, {"lengths": jnp.ones((3,), jnp.int32)},
             {"implementation": "cudnn"}, {"reverse": "yes"}):
    args = {"xs": xs, **kw}
    errors = []
    for fn in (jr.scan, jr.scan_plan):
      with pytest.raises((ValueError, TypeError)) as info:
        fn(cell, params, **args)
      errors.append((info.type, str(info.value).replace("scan_plan:", "scan:")))
    assert errors[0] == errors[1]
  with pytest.raises(TypeError, match="training must be a bool"):
    jr.scan_plan(cell, params, xs, training="yes")


# ---------------------------------------------------------------------------------------------
# The drivers import one another in one direction only


def _driver_modules():
  import jaxrnn.drivers
  folder = os.path.dirname(jaxrnn.drivers.__file__)
  return {f[:-3]: os.path.join(folder, f) for f in sorted(os.listdir(folder))
          if f.startswith("_") and f.endswith(".py") and f != "__init__.py"}


def _imported_drivers(path: str) -> set:
  """The driver modules a file imports, at module level or inside functions."""
  found = set()
  for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
    if isinstance(node, ast.ImportFrom) and node.module == "jaxrnn.drivers":
      found |= {alias.name for alias in node.names}
    elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("jaxrnn.drivers."):
      found.add(node.module.split(".")[2])
    elif isinstance(node, ast.Import):
      found |= {a.name.split(".")[2] for a in node.names if a.name.startswith("jaxrnn.drivers.")}
  return found


def test_the_driver_modules_have_no_import_cycle():
  modules = _driver_modules()
  graph = {name: _imported_drivers(path) & set(modules) for name, path in modules.items()}
  done, path = set(), []

  def visit(name):
    if name in path:
      raise AssertionError("import cycle: " + " -> ".join(path[path.index(name):] + [name]))
    if name not in done:
      path.append(name)
      for dep in sorted(graph[name]):
        visit(dep)
      path.pop()
      done.add(name)

  for name in graph:
    visit(name)
  assert "_plan" in graph and not graph["_plan"] & {"_fused", "_native", "_onednn", "_scan"}


@pytest.mark.parametrize("module", ["_fused", "_native", "_onednn", "_plan", "_library"])
def test_each_driver_module_imports_first_in_a_fresh_interpreter(module):
  proc = subprocess.run([sys.executable, "-c", f"import jaxrnn.drivers.{module}"],
                        capture_output=True, text=True, timeout=300,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.returncode == 0, proc.stderr[-4000:]
