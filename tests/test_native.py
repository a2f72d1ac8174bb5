"""The native loops (`jaxrnn.drivers._native`) are pinned to the plain autodiff path.

The fused driver runs the built-in float32 LSTM's, GRU's and simple RNN's sequential loops in
C++ on CPU. Their sigmoid and tanh are their own (about 1 ulp), so values agree with XLA's to
float32 rounding, not bitwise: float32 tolerances are 1e-5 relative to each output's scale, as
for the fused driver's gradients (tests/test_fused.py).
"""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrnn as jr
from jaxrnn.drivers import _library, _native, _onednn, _plan

needs_kernel = pytest.mark.skipif(
    not _onednn.available(), reason="the native library is not built here (an optional "
    f"extension for Linux x86-64): {_onednn.unavailable_reason()}")
TOL = 1e-5


@pytest.fixture(autouse=True)
def _one_mib_l2_cache(monkeypatch):
  """The paths below were measured on a machine with AVX-512 and 1 MiB of L2 cache a core,
  whose native loops multiply with oneDNN's sgemm; the native loops' smallest batch and largest
  weights depend on all three (`_plan.native_min_batch`, `_plan.native_max_l2_multiple`), so
  they are fixed here."""
  monkeypatch.setattr(_plan, "_L2_BYTES", 1 << 20)
  monkeypatch.setattr(_plan, "_AVX512", True)
  monkeypatch.setattr(_plan, "_STEP_MATMUL", "sgemm")


# Every cell a native loop serves, with the kernel name it runs.
CELLS = {
    "lstm": (lambda h: jr.lstm(h), "lstm"),
    "gru": (lambda h: jr.gru(h), "gru"),
    "gru-no-bias": (lambda h: jr.gru(h, use_bias=False), "gru"),
    "rnn-tanh": (lambda h: jr.simple_rnn(h), "rnn"),
    "rnn-relu": (lambda h: jr.simple_rnn(h, activation="relu"), "rnn"),
}


def _inputs(hidden, batch, steps, d=3, seed=0, kind="lstm"):
  cell = CELLS[kind][0](hidden)
  k1, k2, k3, k4 = jax.random.split(jax.random.key(seed), 4)
  params = cell.init(k1, d)
  # Nonzero biases, different per key, so that a bias in the wrong place shows.
  for i, key in enumerate(k for k in sorted(params) if k.startswith("b")):
    params[key] = 0.3 * jax.random.normal(jax.random.fold_in(k4, i), params[key].shape,
                                          jnp.float32)
  xs = jax.random.normal(k2, batch + (steps, d), jnp.float32)
  leaves, tree = jax.tree_util.tree_flatten(cell.initial_carry(batch))
  keys = jax.random.split(k3, len(leaves))
  carry = tree.unflatten([0.5 * jax.random.normal(k, a.shape, jnp.float32)
                          for k, a in zip(keys, leaves)])
  return cell, params, xs, carry


def _assert_close(a, b, tol=TOL):
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
    assert x.shape == y.shape and x.dtype == y.dtype
    scale = max(1.0, float(jnp.max(jnp.abs(y))))
    np.testing.assert_allclose(np.asarray(x, np.float64), np.asarray(y, np.float64), rtol=0,
                               atol=tol * scale)


def _loss(cell, impl, kw):
  def loss(params, xs, carry):
    carry, ys = jr.scan(cell, params, xs, carry=carry, implementation=impl, **kw)
    return jnp.sum(ys * ys) + sum(jnp.sum(jnp.sin(a)) for a in jax.tree_util.tree_leaves(carry))
  return loss


def _loop_names(kind):
  return _library.LOOPS[CELLS[kind][1]]


def _uses_kernel(fn, *args, kind="lstm") -> bool:
  return _loop_names(kind)[0] in jax.jit(fn).lower(*args).as_text()


@needs_kernel
@pytest.mark.parametrize("kind", CELLS)
def test_default_path_runs_the_native_loops(kind):
  cell, params, xs, carry = _inputs(4, (16,), 5, kind=kind)
  assert _plan.why_not_native(cell, cell.fused, params, jnp.swapaxes(xs, 0, 1),
                              carry, None) is None
  assert _uses_kernel(lambda p, x: jr.scan(cell, p, x)[1], params, xs, kind=kind)
  grad_hlo = jax.jit(jax.grad(_loss(cell, "auto", {}))).lower(params, xs, carry).as_text()
  # Reverse mode runs both native loops and, with the steps in one span (`_native.time_spans`),
  # no XLA loop at all.
  forward, transpose = _loop_names(kind)
  assert forward in grad_hlo and transpose in grad_hlo
  assert "while" not in grad_hlo
  assert not _uses_kernel(lambda p, x: jr.scan(cell, p, x, implementation="reference")[1],
                          params, xs, kind=kind)


# Shapes: a batch split unevenly between threads (17 examples), batch dimensions (2, 8), a
# hidden size that fills no vector register (5), T = 1, one that runs the gates' vector loops
# with a remainder (37). Batches below the kernel's one-thread threshold (3 examples) and below
# the families' NATIVE_MIN_BATCH run with it lowered for every family.
SHAPES = [(5, (17,), 7), (8, (16,), 4), (6, (2, 8), 3), (16, (20,), 1), (7, (3,), 5),
          (37, (10,), 3)]
OPTIONS = [{}, {"reverse": True}, {"lengths": "mixed"}, {"lengths": "mixed", "reverse": True}]


# Every family's native loop at every batch size.
ALL_BATCHES = {family: (1, 1) for family in ("lstm", "gru", "simple_rnn")}


def _lengths(batch, steps):
  n = int(np.prod(batch))
  return jnp.asarray(np.arange(n) % (steps + 2), jnp.int32).reshape(batch)  # 0 .. T + 1


def _check_native_equals_reference(kind, shape, opts):
  hidden, batch, steps = shape
  cell, params, xs, carry = _inputs(hidden, batch, steps, kind=kind)
  kw = dict(opts)
  if "lengths" in kw:
    kw["lengths"] = jnp.minimum(_lengths(batch, steps), steps)

  def outputs_and_grads(p, x, c, impl):
    out = jr.scan(cell, p, x, carry=c, implementation=impl, **kw)
    return out, jax.grad(_loss(cell, impl, kw), (0, 1, 2))(p, x, c)

  run = jax.jit(outputs_and_grads, static_argnums=3)
  assert _uses_kernel(lambda p, x, c: outputs_and_grads(p, x, c, "fused"), params, xs, carry,
                      kind=kind)
  _assert_close(run(params, xs, carry, "fused"), run(params, xs, carry, "reference"))


@needs_kernel
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: "-".join(sorted(o)) or "plain")
@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn-tanh"])
def test_native_equals_reference(kind, shape, opts, monkeypatch):
  monkeypatch.setattr(_plan, "NATIVE_MIN_BATCH", ALL_BATCHES)
  _check_native_equals_reference(kind, shape, opts)


@needs_kernel
@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: "-".join(sorted(o)) or "plain")
@pytest.mark.parametrize("kind", ["gru-no-bias", "rnn-relu"])
def test_native_equals_reference_other_variants(kind, opts, monkeypatch):
  monkeypatch.setattr(_plan, "NATIVE_MIN_BATCH", ALL_BATCHES)
  for shape in (SHAPES[0], SHAPES[4]):  # uneven thread split; one thread
    _check_native_equals_reference(kind, shape, opts)


@needs_kernel
@pytest.mark.parametrize("kind", CELLS)
def test_native_without_initial_carry_time_major_and_vmap(kind):
  cell, params, xs, _ = _inputs(6, (16,), 5, kind=kind)
  want = jr.scan(cell, params, xs, implementation="reference")
  _assert_close(jr.scan(cell, params, xs), want)
  _assert_close(jr.scan(cell, params, jnp.swapaxes(xs, 0, 1), time_major=True)[1],
                jnp.swapaxes(want[1], 0, 1))
  batched = jnp.stack([xs, 2 * xs])
  run = lambda impl: jax.vmap(lambda x: jr.scan(cell, params, x, implementation=impl))(batched)
  _assert_close(jax.jit(lambda: run("auto"))(), run("reference"))
  grads = lambda impl: jax.grad(lambda p: jnp.sum(jax.vmap(
      lambda x: jr.scan(cell, p, x, implementation=impl)[1])(batched) ** 2))(params)
  _assert_close(grads("auto"), grads("reference"))


GATES = {"lstm": 4, "gru": 3, "rnn": 1}


@needs_kernel
@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn-tanh"])
def test_reverse_mode_reuses_buffers(kind):
  """Reverse mode's native backward writes its results over the cotangents it reads (declared
  to XLA as aliases), and the weight gradients take the gates' cotangent as it lies: no copy of
  it in a transposed `(G, T * B)` layout (which XLA:CPU made while the forcing kept time and
  batch as two axes). Values and gradients are the reference's (tests above)."""
  steps, batch, hidden = 7, 16, 5
  cell, params, xs, carry = _inputs(hidden, (batch,), steps, kind=kind)
  lowered = jax.jit(jax.grad(_loss(cell, "auto", {}), (0, 1))).lower(params, xs, carry)
  stablehlo = lowered.as_text()
  transpose_call = next(line for line in stablehlo.splitlines()
                        if _loop_names(kind)[1] in line and "custom_call" in line)
  assert "output_operand_alias" in transpose_call
  gates = GATES[CELLS[kind][1]] * hidden
  assert f"f32[{gates},{steps * batch}]" not in lowered.compile().as_text()


def test_time_spans():
  # The fewest equal spans that fit SPAN_BYTES; one step a span when no span of more does.
  assert _native.time_spans(100, 32, 32 * 4096) == 4  # 25 steps, 3.3 MB, 800 rows a span
  assert _native.time_spans(100, 32, 1000) == 1
  assert _native.time_spans(7, 1000, _native.SPAN_BYTES) == 7
  assert _native.time_spans(7, 1000, _native.SPAN_BYTES + 1) == 7
  assert _native.time_spans(0, 1, 1) == 1
  # Spans shorter than MIN_SPAN_ROWS rows are not worth a loop: fewer, longer spans.
  assert _native.MIN_SPAN_ROWS == 512
  assert _native.time_spans(97, 64, 64 * 4096) == 1  # a prime: spans of one step, 64 rows
  assert _native.time_spans(100, 8, 8 * 4096 * 16) == 1  # 800 rows in all: one span
  # 20 spans of 5 steps fit SPAN_BYTES, but have 320 rows: 10 spans of 640 rows instead.
  assert _native.time_spans(100, 64, 64 * 8192) == 10
  assert _native.time_spans(100, 100, 1) == 1  # everything fits one span
  assert _native.time_spans(96, 16, 16 * 4096 * 16) == 3  # 32 steps, 512 rows a span


def _spans_of_two_steps(monkeypatch, kind, batch, hidden):
  per_step = int(np.prod(batch)) * GATES[CELLS[kind][1]] * hidden * 4
  monkeypatch.setattr(_native, "SPAN_BYTES", 2 * per_step)
  monkeypatch.setattr(_native, "MIN_SPAN_ROWS", 1)


@needs_kernel
@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: "-".join(sorted(o)) or "plain")
@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn-tanh"])
def test_backward_over_spans_of_steps_equals_reference(kind, opts, monkeypatch):
  """Reverse mode forms the gates' cotangent a span of steps at a time, in a loop over spans
  (`_native.time_spans`): its values and gradients are the reference's, for every family,
  direction and lengths."""
  monkeypatch.setattr(_plan, "NATIVE_MIN_BATCH", ALL_BATCHES)
  hidden, batch, steps = 5, (2, 8), 6
  _spans_of_two_steps(monkeypatch, kind, batch, hidden)
  cell, params, xs, carry = _inputs(hidden, batch, steps, kind=kind)
  grad_hlo = jax.jit(jax.grad(_loss(cell, "auto", {}))).lower(params, xs, carry).as_text()
  assert "while" in grad_hlo  # the loop over 3 spans
  _check_native_equals_reference(kind, (hidden, batch, steps), opts)
  f = lambda impl: lambda x: jr.scan(cell, params, x, carry=carry, implementation=impl,
                                     **{k: v for k, v in opts.items() if k == "reverse"})[1]
  _assert_close(jax.jvp(f("auto"), (xs,), (jnp.cos(xs),)),
                jax.jvp(f("reference"), (xs,), (jnp.cos(xs),)))


@needs_kernel
@pytest.mark.parametrize("spans", [1, 3])
@pytest.mark.parametrize("opts", OPTIONS[::3], ids=lambda o: "-".join(sorted(o)) or "plain")
@pytest.mark.parametrize("kind", ["lstm", "gru", "gru-no-bias", "rnn-tanh"])
def test_weight_gradients_from_transposed_rows_equal_reference(kind, opts, spans, monkeypatch):
  """Wide weight gradients contract a transposed copy of the rows (`_native.rows_matmul`, made
  in the backward loop over spans): values, gradients and forward-mode tangents are the
  reference's, in one span and over spans; narrow ones keep the plain product."""
  monkeypatch.setattr(_plan, "NATIVE_MIN_BATCH", ALL_BATCHES)
  hidden, batch, steps = 5, (2, 8), 6
  cell, params, xs, carry = _inputs(hidden, batch, steps, kind=kind)
  grad_text = lambda: jax.jit(jax.grad(_loss(cell, "auto", {}))).lower(
      params, xs, carry).as_text()
  # The rows' transposed copies: inputs (3, rows) and hidden states (5, rows) of a span.
  copies = [f"tensor<{n}x{steps // spans * 16}xf32>" for n in (3, hidden)]
  assert not any(c in grad_text() for c in copies)  # 20 columns or fewer: the plain product
  monkeypatch.setattr(_native, "TRANSPOSED_ROWS_MIN_WIDTH", 1)
  if spans > 1:
    _spans_of_two_steps(monkeypatch, kind, batch, hidden)
  assert all(c in grad_text() for c in copies)
  _check_native_equals_reference(kind, (hidden, batch, steps), opts)
  f = lambda impl: lambda p, x: jr.scan(cell, p, x, carry=carry, implementation=impl,
                                        **{k: v for k, v in opts.items() if k == "reverse"})[1]
  tangents = (jax.tree_util.tree_map(jnp.sin, params), jnp.cos(xs))
  _assert_close(jax.jvp(f("auto"), (params, xs), tangents),
                jax.jvp(f("reference"), (params, xs), tangents))


@needs_kernel
def test_transposed_rows_are_made_a_span_at_a_time(monkeypatch):
  """The transposed copies of the rows are made in the backward loop over spans: the working
  memory grows by less than one span's copies, not by the copies of all the steps' rows."""
  hidden, batch, steps = 32, (16,), 64
  cell, params, xs, carry = _inputs(hidden, batch, steps, d=24)
  _spans_of_two_steps(monkeypatch, "lstm", batch, hidden)

  def temp_bytes():
    grad = jax.jit(jax.grad(_loss(cell, "auto", {}), (0, 1)))
    return grad.lower(params, xs, carry).compile().memory_analysis().temp_size_in_bytes

  plain = temp_bytes()
  monkeypatch.setattr(_native, "TRANSPOSED_ROWS_MIN_WIDTH", 1)
  all_rows = steps * 16 * (24 + hidden) * 4
  assert temp_bytes() < plain + all_rows // 4


@needs_kernel
def test_native_transpose():
  """`_native.transposed` (the native library's transpose): 8 x 8 blocks and the edges around
  them, under jit and vmap, and its derivatives (the transpose of the tangent)."""
  for shape in [(1, 1), (3, 8), (8, 8), (17, 29), (64, 40), (9, 130)]:
    a = jax.random.normal(jax.random.key(shape[0]), shape, jnp.float32)
    np.testing.assert_array_equal(jax.jit(_native.transposed)(a), np.asarray(a).T)
  b = jax.random.normal(jax.random.key(1), (3, 17, 29), jnp.float32)
  np.testing.assert_array_equal(jax.vmap(_native.transposed)(b), np.swapaxes(b, 1, 2))
  t = jnp.cos(b[0])
  out, d_out = jax.jvp(_native.transposed, (b[0],), (t,))
  np.testing.assert_array_equal(d_out, np.asarray(t).T)
  ct = jax.random.normal(jax.random.key(2), (29, 17), jnp.float32)
  np.testing.assert_array_equal(jax.vjp(_native.transposed, b[0])[1](ct)[0], np.asarray(ct).T)


@needs_kernel
def test_rows_matmul():
  a = jax.random.normal(jax.random.key(0), (7, 3), jnp.float32)
  w = jax.random.normal(jax.random.key(1), (3, 4), jnp.float32)
  ct = jax.random.normal(jax.random.key(2), (7, 4), jnp.float32)
  want = (a @ w, a.T @ ct)
  for width in (1, 5):  # transposed rows, and the plain product below 5 columns
    with pytest.MonkeyPatch.context() as m:
      m.setattr(_native, "TRANSPOSED_ROWS_MIN_WIDTH", width)
      out, vjp = jax.vjp(lambda w: _native.rows_matmul(a, w), w)
      np.testing.assert_allclose(out, want[0], rtol=1e-6, atol=1e-6)
      np.testing.assert_allclose(vjp(ct)[0], want[1], rtol=1e-6, atol=1e-6)


@needs_kernel
@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn-tanh"])
def test_backward_over_spans_needs_less_working_memory(kind, monkeypatch):
  """Over spans, XLA holds one span's gate cotangent at a time instead of all steps': the
  compiled gradient's working memory shrinks by a quarter of that cotangent's size or more."""
  hidden, batch, steps = 32, (16,), 64
  cell, params, xs, carry = _inputs(hidden, batch, steps, kind=kind)

  def temp_bytes():
    grad = jax.jit(jax.grad(_loss(cell, "auto", {}), (0, 1)))
    return grad.lower(params, xs, carry).compile().memory_analysis().temp_size_in_bytes

  monkeypatch.setattr(_native, "SPAN_BYTES", 1 << 40)
  whole = temp_bytes()
  _spans_of_two_steps(monkeypatch, kind, batch, hidden)
  gates_bytes = steps * 16 * GATES[CELLS[kind][1]] * hidden * 4
  assert temp_bytes() <= whole - gates_bytes // 4


@needs_kernel
@pytest.mark.parametrize("kind", CELLS)
def test_native_forward_mode_and_second_order(kind):
  cell, params, xs, carry = _inputs(5, (16,), 4, kind=kind)
  lengths = jnp.arange(16, dtype=jnp.int32) % 5
  for impl_kw in ({}, {"lengths": lengths, "reverse": True}):
    f = lambda impl: lambda x: jr.scan(cell, params, x, carry=carry, implementation=impl,
                                       **impl_kw)[1]
    tangent = jnp.cos(xs)
    _assert_close(jax.jvp(f("auto"), (xs,), (tangent,)),
                  jax.jvp(f("reference"), (xs,), (tangent,)))
    hess = lambda impl: jax.grad(lambda x: jnp.sum(jax.grad(
        lambda x: jnp.sum(f(impl)(x) ** 2))(x) ** 2))(xs)
    _assert_close(hess("auto"), hess("reference"))


@needs_kernel
@pytest.mark.parametrize("kind", CELLS)
def test_extreme_inputs_saturate_and_propagate_like_xla(kind):
  cell, params, xs, carry = _inputs(4, (16,), 3, kind=kind)
  xs = xs.at[0].multiply(1e4)  # saturated gates
  xs = xs.at[1, 0].set(jnp.inf).at[2, 1, 0].set(jnp.nan)  # inf * (+w, -w) is nan, then nan
  got = jr.scan(cell, params, xs, carry=carry)
  want = jr.scan(cell, params, xs, carry=carry, implementation="reference")
  for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
    np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
    _assert_close(jnp.nan_to_num(a), jnp.nan_to_num(b))  # relu's outputs grow without bound
  ys = got[1]
  assert bool(jnp.all(jnp.isfinite(ys[0]))) and bool(jnp.all(jnp.isfinite(ys[2, 0])))
  assert bool(jnp.all(jnp.isnan(ys[2, 1:])))


@needs_kernel
def test_native_tanh_across_its_range():
  # With w_x = I, w_h = 0 and b = 0 the simple RNN's outputs are tanh(x) exactly (the matmul
  # adds only zeros), so the native loop's own tanh is compared with NumPy's in float64.
  hidden, batch = 64, 16
  cell = jr.simple_rnn(hidden)
  params = {"w_x": jnp.eye(hidden, dtype=jnp.float32),
            "w_h": jnp.zeros((hidden, hidden), jnp.float32),
            "b": jnp.zeros((hidden,), jnp.float32)}
  values = np.concatenate([np.linspace(-30.0, 30.0, batch * hidden - 8),
                           [-1e-30, 1e-30, -1e-6, 1e-6, 60.0, -60.0, 1e4, -1e4]])
  xs = jnp.asarray(values.reshape(batch, 1, hidden), jnp.float32)
  fn = lambda p, x: jr.scan(cell, p, x)[1]
  assert _uses_kernel(fn, params, xs, kind="rnn-tanh")
  got = np.asarray(fn(params, xs), np.float64)
  want = np.tanh(np.asarray(xs, np.float64))
  # Within 3 units in the last place of float32 (2^-24 relative, about 6e-8) everywhere.
  np.testing.assert_allclose(got, want, rtol=3 * 2.0**-24, atol=0)


def test_where_the_native_loop_does_not_apply():
  cell, params, xs, carry = _inputs(4, (2,), 3)
  _, gru_params, _, gru_carry = _inputs(4, (2,), 3, kind="gru")
  spec = cell.fused
  xs_t = jnp.swapaxes(xs, 0, 1)
  indrnn = jr.indrnn(4)
  cases = {
      "resets": (cell, spec, params, xs_t, carry, jnp.zeros((3, 2), bool)),
      "float64": (cell, spec, params, xs_t.astype(jnp.float64), carry, None),
      "indrnn": (indrnn, indrnn.fused, params, xs_t, carry, None),
      "bf16 matmul": (cell, jr.lstm(4, matmul_dtype=jnp.bfloat16).fused, params,
                      xs_t, carry, None),
      "gru bf16 matmul": (jr.gru(4), jr.gru(4, matmul_dtype=jnp.bfloat16).fused,
                          params, xs_t, carry, None),
      "empty": (cell, spec, params, xs_t[:0], carry, None),
      "small gru batch": (jr.gru(4), jr.gru(4).fused, gru_params, xs_t, gru_carry,
                          None),
  }
  expected = {"resets": "resets", "float64": "float32", "indrnn": "LSTM, GRU and simple RNN",
              "bf16 matmul": "float32 matmuls", "gru bf16 matmul": "float32 matmuls",
              "empty": "empty", "small gru batch": "smaller than 8, where the gru loop starts"}
  for name, args in cases.items():  # x64 is on for the suite (conftest.py)
    why = _plan.why_not_native(*args)
    assert why is not None and expected[name] in why, (name, why)
  # With a backward pass, the GRU's loop runs from a batch of 1, and the LSTM's always.
  assert _plan.why_not_native(*cases["small gru batch"], training=True) is None
  assert _plan.why_not_native(cell, spec, params, xs_t[:, :1], carry.__class__(
      *(a[:1] for a in carry)), None) is None


def test_disabled_by_its_environment_variable(monkeypatch):
  cell, params, xs, carry = _inputs(4, (16,), 3)
  monkeypatch.setenv("JAXRNN_NATIVE", "0")
  why = _plan.why_not_native(cell, cell.fused, params, jnp.swapaxes(xs, 0, 1),
                             carry, None)
  assert why == "disabled by the environment variable JAXRNN_NATIVE=0"
  got = jax.jit(lambda p, x: jr.scan(cell, p, x)[1])
  assert _loop_names("lstm")[0] not in got.lower(params, xs).as_text()
  _assert_close(got(params, xs), jr.scan(cell, params, xs, implementation="reference")[1])
  assert os.environ["JAXRNN_NATIVE"] == "0"


_SHARDED = """
import jax, jax.numpy as jnp, numpy as np
import jaxrnn as jr
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

assert len(jax.devices()) == 2
cell = jr.lstm(8)
params = cell.init(jax.random.key(0), 4)
xs = jax.random.normal(jax.random.key(1), (32, 5, 4))  # 16 examples a device: native there too
loss = lambda impl: lambda p, x: jnp.mean(jr.scan(cell, p, x, implementation=impl)[1] ** 2)
grad = lambda impl: jax.grad(loss(impl), argnums=(0, 1))
want = jax.jit(grad("reference"))(params, xs)
mesh = Mesh(np.array(jax.devices()), ("batch",))
xs_sharded = jax.device_put(xs, NamedSharding(mesh, P("batch")))
sharded = jax.jit(grad("auto"))
assert "jaxrnn_lstm_loop" in sharded.lower(params, xs_sharded).compile().as_text()
# Per device, the loss is the mean over its half of the batch: twice the global gradients.
per_device = jax.jit(jax.shard_map(grad("auto"), mesh=mesh, in_specs=(P(), P("batch")),
                                   out_specs=(P(), P("batch")), check_vma=False))
assert "jaxrnn_lstm_loop" in per_device.lower(params, xs_sharded).compile().as_text()
for got, factor in ((sharded(params, xs_sharded), 1.0), (per_device(params, xs_sharded), 2.0)):
  _, d_xs = got
  scale = float(jnp.max(jnp.abs(want[1])))
  assert float(jnp.max(jnp.abs(d_xs - factor * want[1]))) <= 1e-5 * scale
  if factor == 1.0:
    for a, b in zip(jax.tree_util.tree_leaves(got[0]), jax.tree_util.tree_leaves(want[0])):
      assert float(jnp.max(jnp.abs(a - b))) <= 1e-5 * max(1.0, float(jnp.max(jnp.abs(b))))
print("ok")
"""


@needs_kernel
def test_native_loops_under_a_sharded_batch_and_shard_map():
  # A subprocess: the two host devices must be asked for before JAX starts.
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
             JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", _SHARDED], capture_output=True, text=True,
                        env=env, timeout=600)
  assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-4000:]


_HUGE_PAGES = """
import hashlib, jax, jax.numpy as jnp, numpy as np, jaxrnn as jr
jax.config.update("jax_enable_x64", False)
out = []
# Residuals of at least 4 MiB each (256 steps x 32 examples x 128 units), so that each holds a
# whole 2 MiB page to advise, whatever its alignment.
for cell in (jr.lstm(128), jr.gru(128), jr.simple_rnn(128)):
  params = cell.init(jax.random.key(0), 8)
  xs = jax.random.normal(jax.random.key(1), (32, 256, 8), jnp.float32)
  assert jr.scan_plan(cell, params, xs, training=True).driver == "native"
  loss = lambda p, x: jnp.mean(jnp.square(jr.scan(cell, p, x)[1]))
  got = jax.jit(jax.value_and_grad(loss, (0, 1)))(params, xs)
  for leaf in jax.tree_util.tree_leaves(got):
    out.append(hashlib.sha256(np.asarray(leaf).tobytes()).hexdigest())
print(" ".join(out))
"""


@needs_kernel
def test_huge_page_advice_changes_no_value():
  # The native forward loops advise huge pages for their large outputs when training (a Linux
  # paging hint, its setting read once per process): values and gradients must be bit for bit
  # those without it.
  digests = []
  for setting in ("1", "0"):
    env = dict(os.environ, JAXRNN_NATIVE_HUGEPAGES=setting, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", _HUGE_PAGES], capture_output=True, text=True,
                          env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    digests.append(proc.stdout.split())
  # The loss, then the gradients of the parameters (LSTM 3, GRU 4, simple RNN 3) and inputs.
  assert len(digests[0]) == 5 + 6 + 5 and digests[0] == digests[1]


_STEP_KERNELS = """
import sys, jax, jax.numpy as jnp, numpy as np, jaxrnn as jr
from jaxrnn.drivers import _library, _plan
print(_library.step_matmul())
_plan.NATIVE_MIN_BATCH = {f: (1, 1) for f in ("lstm", "gru", "simple_rnn")}
out = {}
# Hidden sizes 5 and 20: gate columns 20/15/5 and 80/60/20, so whole 16-column panels and
# zero-padded last ones; batches of 13 (two threads of 6 and 7 rows: tiles of 6, 4 and 3) and 8
# (4 rows a thread); mixed lengths and both directions, batch-major.
for name, make in (("lstm", jr.lstm), ("gru", jr.gru), ("rnn", jr.simple_rnn)):
  for hidden, batch, reverse in ((5, 13, False), (20, 8, True)):
    cell = make(hidden)
    params = cell.init(jax.random.key(0), 7)
    for i, k in enumerate(sorted(k for k in params if k.startswith("b"))):
      params[k] = 0.3 * jax.random.normal(jax.random.key(10 + i), params[k].shape)
    xs = jax.random.normal(jax.random.key(1), (batch, 6, 7), jnp.float32)
    lengths = jnp.asarray(np.minimum(np.arange(batch) % 8, 6), jnp.int32)
    kw = dict(lengths=lengths, reverse=reverse)
    assert jr.scan_plan(cell, params, xs, training=True, **kw).driver == "native"
    def loss(p, x, impl):
      return jnp.sum(jr.scan(cell, p, x, implementation=impl, **kw)[1] ** 2)
    run = jax.jit(jax.value_and_grad(loss, (0, 1)), static_argnums=2)
    tag = f"{name}-{hidden}-{batch}"
    for impl in ("auto", "reference"):
      for j, leaf in enumerate(jax.tree_util.tree_leaves(run(params, xs, impl))):
        out[f"{tag}-{impl}-{j}"] = np.asarray(leaf)
    # The forward of the first 4 examples alone, and within the whole batch.
    forward = jax.jit(lambda p, x: jr.scan(cell, p, x)[1])
    out[f"{tag}-rows-alone"] = np.asarray(forward(params, xs[:4]))
    out[f"{tag}-rows-within"] = np.asarray(forward(params, xs))[:4]
np.savez(sys.argv[1], **out)
"""


@needs_kernel
@pytest.mark.parametrize("kernel", ["packed", "sgemm"])
def test_both_step_kernels_equal_reference(kernel, tmp_path):
  """The native loops' step matmuls run on jaxrnn's packed AVX2 kernel or on oneDNN's sgemm,
  by CPU (`JAXRNN_NATIVE_GEMM` overrides, read once per process): each, in a process of its
  own, must give the reference's values and gradients; the packed kernel also gives an
  example's outputs bit for bit whatever the batch around it."""
  if kernel == "packed" and not {"avx2", "fma"} <= _plan.cpu_flags():
    pytest.skip("this CPU lacks AVX2 or FMA, which the packed kernel's instructions need")
  path = tmp_path / "out.npz"
  env = dict(os.environ, JAXRNN_NATIVE_GEMM=kernel, JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", _STEP_KERNELS, str(path)], capture_output=True,
                        text=True, env=env, timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert proc.stdout.split()[0] == kernel
  out = np.load(path)
  tags = sorted({k.rsplit("-", 2)[0] for k in out if k.endswith("-auto-0")})
  assert len(tags) == 6
  for tag in tags:
    leaves = sorted(k for k in out if k.startswith(f"{tag}-auto-"))
    assert len(leaves) >= 4  # the loss, the parameters' gradients, the inputs'
    for key in leaves:
      _assert_close(out[key], out[key.replace("-auto-", "-reference-")])
    if kernel == "packed":
      np.testing.assert_array_equal(out[f"{tag}-rows-alone"], out[f"{tag}-rows-within"])
