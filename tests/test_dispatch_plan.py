"""Which path `jr.scan` takes, pinned case by case: the driver (reference, fused, native or
oneDNN), whether the input projection is hoisted out of the loop, and whether the fused loop
joins its two matmuls into one.

`PINNED` is the behaviour measured and chosen for CPU; a change to it must be deliberate. Each
case is checked twice: against what the dispatch decides, and against what `jr.scan` is seen to
do (the kernels and loops in its jaxpr), so that the decision and the path cannot drift apart.
"""

import re

import jax
import jax.extend.core
import jax.numpy as jnp
import pytest

import jaxrnn as jr
from jaxrnn.drivers import _library, _plan

H, D, T = 4, 3, 3
IMPLEMENTATIONS = ("auto", "fused", "reference", "onednn")


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
# "reference" and "onednn": `driver[/hoist][/joint]`, or "error" where `jr.scan` raises.
# The same with the native library built (native loops and oneDNN) and for the training
# forward (under `jax.grad`) in every case here.
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
lstm                     f32  1 -       | fused/joint fused/joint reference onednn
lstm                     f32  8 -       | fused/joint fused/joint reference onednn
lstm                     f32 32 -       | native/joint native/joint reference onednn
lstm                     f64 16 -       | fused/joint fused/joint reference error
lstm                     f64  1 -       | fused/joint fused/joint reference error
lstm                     f32 16 lengths | native/joint native/joint reference error
lstm                     f32 16 resets  | fused/joint fused/joint reference error
lstm                     f32 16 remat   | native/joint native/joint reference error
lstm                     f64 32 lengths | fused/joint fused/joint reference error
lstm                     f32  1 remat   | fused/joint fused/joint reference error
lstm                     f32 32 resets  | fused/joint fused/joint reference error
gru                      f32  1 -       | fused fused reference error
gru                      f32  8 -       | fused fused reference error
gru                      f32 32 -       | native native reference error
gru                      f64 16 -       | fused fused reference error
gru                      f64  1 -       | fused fused reference error
gru                      f32 16 lengths | native native reference error
gru                      f32 16 resets  | fused fused reference error
gru                      f32 16 remat   | native native reference error
gru                      f64 32 lengths | fused fused reference error
gru                      f32  1 remat   | fused fused reference error
gru                      f32 32 resets  | fused fused reference error
simple_rnn               f32  1 -       | fused/hoist fused/hoist reference/hoist error
simple_rnn               f32  8 -       | fused/hoist fused/hoist reference/hoist error
simple_rnn               f32 32 -       | native/hoist native/hoist reference/hoist error
simple_rnn               f64 16 -       | fused/hoist fused/hoist reference/hoist error
simple_rnn               f64  1 -       | fused/hoist fused/hoist reference/hoist error
simple_rnn               f32 16 lengths | native/hoist native/hoist reference/hoist error
simple_rnn               f32 16 resets  | fused/hoist fused/hoist reference/hoist error
simple_rnn               f32 16 remat   | native/hoist native/hoist reference/hoist error
simple_rnn               f64 32 lengths | fused/hoist fused/hoist reference/hoist error
simple_rnn               f32  1 remat   | fused/hoist fused/hoist reference/hoist error
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


def _expected(path: str) -> str:
  """`path` where the native library is not built here: the fused path's XLA loop instead of
  the native loop, and no oneDNN."""
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
  """The path the dispatch decides for a call, `driver[/hoist][/joint]` or "error"."""
  xs_t = jnp.swapaxes(xs, 0, 1)
  carry = cell.initial_carry(xs.shape[:1], xs.dtype)
  try:
    plan = _plan.plan(cell, params, xs_t, carry, implementation=implementation,
                      training=training, **kw)
  except ValueError as e:
    if re.search("does not apply|no fused implementation", str(e)):
      return "error"
    raise
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
def test_the_dispatch_decides_the_pinned_path(key, paths, training):
  cell, params, xs, kw = _call(*key)
  for implementation in IMPLEMENTATIONS:
    got = _decided(cell, params, xs, kw, implementation, training)
    assert got == _expected(paths[implementation]), implementation


@pytest.mark.parametrize("key, paths", ROWS, ids=ROW_IDS)
def test_scan_takes_the_pinned_path(key, paths):
  """What `jr.scan` runs, read from its jaxpr. Under `jax.grad` the fused driver's custom JVP
  is gone from the jaxpr, so the training forward is checked for its hoisting, joint matmul
  and native kernels only (the driver's own tests pin its gradients)."""
  cell, params, xs, kw = _call(*key)
  for implementation in IMPLEMENTATIONS:
    want = _expected(paths[implementation])
    if want.startswith("native"):
      want = "native"
    assert _observed(cell, params, xs, kw, implementation, False) == want, implementation
    got = _observed(cell, params, xs, kw, implementation, True)
    assert got == want.replace("fused", "reference"), implementation
