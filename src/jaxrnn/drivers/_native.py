"""The native loops: the fused driver's sequential loops for the built-in LSTM, GRU and simple
RNN on CPU, in C++.

XLA:CPU runs each step of a `lax.scan` as one thread's small matmul followed by separately
scheduled elementwise kernels. The handlers `jaxrnn_{lstm,gru,rnn}_loop` (`_native/lstm_loop.cc`
and `_native/rnn_loops.cc`, in the optional native library that `jaxrnn.drivers._library` loads)
run the whole loop instead: the batch split into one row block per core, each block's steps on
its own thread, the matmuls by oneDNN's sgemm (batch-major, so nothing is transposed per step)
and the gates in one vectorised pass.

They serve the fused driver (`_fused.fused_scan`) in two places:

* `forward_loop`: the forward loop, for inference and the forward that keeps residuals for the
  backward pass, input projection included. The call is a `jax.custom_jvp` whose rule is the
  JVP of the fused driver's pure-JAX loop, so that derivatives of the fused driver's own JVP rule
  (higher orders) keep working.
* `tangent_loop`: the tangent recurrence of the fused JVP rule, posed as the linear system it
  is (`X_t - A_t X_prev = b_t` over the tangent states of all steps) and handed to
  `jax.lax.custom_linear_solve`. Its `solve` is the pure-JAX forward substitution (what
  `jax.jvp` runs); its `transpose_solve`, which reverse mode runs, is the native backward
  substitution `jaxrnn_*_loop_transpose`; its `matvec` (the system itself, parallel over time)
  is what JAX differentiates for higher orders. So reverse mode's sequential loop is native
  too, while forward mode and higher orders stay ordinary JAX.

A cell's `FusedSpec.native` names its family ("lstm", "gru", "rnn", "rnn_relu"); the residuals
the kernels write are the ones its `FusedSpec.step` returns. Whether a call runs here is the
plan's choice (`drivers/_plan.py`: `why_not_native`).
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp

from jaxrnn import _types
from jaxrnn.drivers import _library


def forward_loop(cell: _types.Cell, spec: _types.FusedSpec, params, xs_t, carry, lengths, *,
                 reverse: bool, with_residuals: bool, reference: Callable):
  """The fused driver's loop on time-major `xs_t (T, ..., D)`: `(carry, ys)`, or with
  `with_residuals` `(carry, (ys, carries_in, res))` as the pure-JAX loop `reference(params,
  xs_t, carry, lengths)` returns them (the same values up to float32 rounding; residuals past
  an example's length, which the backward pass masks, may differ). The LSTM's `carries_in`
  leaves out the cell states (`c` is None): the fused driver reads only the hidden states
  entering each step (`spec.rec_tangent`), so the kernel does not write them."""

  def trimmed_reference(*args):
    out = reference(*args)
    if with_residuals and spec.native == "lstm":
      carry_out, (ys, carries_in, res) = out
      out = carry_out, (ys, carries_in._replace(c=None), res)
    return out

  @jax.custom_jvp
  def loop(params, xs_t, carry, lengths):
    return _call(cell, spec, params, xs_t, carry, lengths, reverse, with_residuals)

  @loop.defjvp
  def loop_jvp(primals, tangents):
    return jax.jvp(trimmed_reference, primals, tangents)

  return loop(params, xs_t, carry, lengths)


def _call(cell, spec, params, xs_t, carry, lengths, reverse: bool, with_residuals: bool):
  family = spec.native
  steps, batch, d = xs_t.shape[0], tuple(xs_t.shape[1:-1]), xs_t.shape[-1]
  h0 = carry.h if family == "lstm" else carry
  hidden = h0.shape[-1]
  n = _types.prod(batch)
  h0 = h0.reshape(n, hidden)
  # The cell's own input projection of a zero input is its input bias (zeros without one).
  bias = cell.project(params, jnp.zeros((d,), jnp.float32))
  # Without residuals the kernels read the inputs and write the outputs batch-major: `jr.scan`
  # takes and returns batch-major arrays, and XLA cancels these transposes against its own.
  # The residuals, which the backward pass reads a step at a time, stay time-major.
  batch_major = not with_residuals
  x = xs_t.reshape(steps, n, d)
  x = jnp.swapaxes(x, 0, 1) if batch_major else x
  lens = _lengths(lengths, steps, n)
  f32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)
  per_h = f32(steps, n, hidden) if with_residuals else f32(0)
  loop_name = _library.LOOPS[family.partition("_")[0]][0]
  state_out = (f32(n, steps, hidden) if batch_major else f32(steps, n, hidden), f32(n, hidden))
  attrs = dict(reverse=reverse, training=with_residuals, batch_major=batch_major)
  if family == "lstm":
    c0 = carry.c.reshape(n, hidden)
    w_cat = jnp.concatenate([params["w_x"], params["w_h"]])
    coef = f32(steps, n, 4 * hidden) if with_residuals else f32(0)
    call = jax.ffi.ffi_call(loop_name, state_out + (f32(n, hidden), coef, per_h, per_h),
                            vmap_method="sequential")
    ys, h_t, c_t, *res = call(x, w_cat, bias, h0, c0, lens, **attrs)
  elif family == "gru":
    b_h = spec.rec_params(params, jnp.float32).get("b_h", jnp.zeros((3 * hidden,), jnp.float32))
    call = jax.ffi.ffi_call(loop_name, state_out + (per_h,) * 5, vmap_method="sequential")
    ys, h_t, *res = call(x, params["w_x"], params["w_h"], bias, b_h, h0, lens, **attrs)
  else:
    w_cat = jnp.concatenate([params["w_x"], params["w_h"]])
    call = jax.ffi.ffi_call(loop_name, state_out + (per_h,), vmap_method="sequential")
    ys, h_t, *res = call(x, w_cat, bias, h0, lens, relu=family == "rnn_relu", **attrs)
  per_step = lambda a: a.reshape((steps,) + batch + a.shape[2:])
  h_t_flat, h_t = h_t, h_t.reshape(batch + (hidden,))
  carry_out = _types.LSTMState(h_t, c_t.reshape(batch + (hidden,))) if family == "lstm" else h_t
  if not with_residuals:
    return carry_out, per_step(jnp.swapaxes(ys, 0, 1))

  # Training, the kernels write the hidden state each step is entered with (which the backward
  # pass reads) in place of the outputs: each output is the state the next step (in processing
  # order) is entered with, the last one `h_T`, and zero past an example's length. XLA forms
  # the outputs inside their consumers' fusions, so no `(T, B, H)` buffer of outputs is kept.
  h_in = ys
  ys = _unshift(h_in, h_t_flat, reverse)
  if lengths is not None:
    ys = jnp.where((jnp.arange(steps, dtype=jnp.int32)[:, None] < lens[None])[..., None], ys, 0)
  res = tuple(per_step(r) for r in res)
  carries_in = per_step(h_in)
  if family == "lstm":
    carries_in = _types.LSTMState(carries_in, None)
  return carry_out, (per_step(ys), carries_in, res[0] if family.startswith("rnn") else res)


def _unshift(a, a_last, reverse: bool):
  """`a (T, ...)` moved one step earlier in processing order, `a_last` leaving last."""
  if reverse:
    return jnp.concatenate([a_last[None], a[:-1]])
  return jnp.concatenate([a[1:], a_last[None]])


def _lengths(lengths, steps: int, n: int):
  """`lengths` flattened to `(n,)` int32 (all `steps` when None), as the kernels take them."""
  if lengths is None:
    return jnp.full((n,), steps, jnp.int32)
  return jnp.minimum(lengths.reshape(n), steps).astype(jnp.int32)


def _step_map(family: str, w):
  """`apply(res, x)`: `A_t x`, the part of a family's tangent step `X_t = A_t X_prev + b_t`
  that acts on the carry's tangent, for one step or for all steps at once (leading axis T on
  `res` and `x`); `w` is the recurrent weight `w_h`."""
  from jaxrnn.cells import _lstm as lstm_cell  # drivers do not import cells at module level

  if family == "lstm":
    return lambda res, x: lstm_cell.tangent_update(res, x.c, x.h @ w)
  if family == "gru":
    def apply(res, x):
      k_r, k_z, _, k_hn, u = res
      m_r, m_z, m_n = jnp.split(x @ w, 3, axis=-1)
      return k_r * m_r + k_z * m_z + k_hn * m_n + u * x
    return apply
  return lambda slope, x: slope * (x @ w)


# Reverse mode forms the gates' cotangent a span of steps at a time, spans of about this many
# bytes (see `_fused.fused_scan`'s `native_tangent`), but of at least `MIN_SPAN_ROWS` rows
# (steps times examples): the weight gradients contract a span's rows, and shorter
# contractions ran well below the machine's rate (benchmarks/DISPATCH.md).
SPAN_BYTES = 4 << 20
MIN_SPAN_ROWS = 512


def time_spans(steps: int, rows_per_step: int, bytes_per_step: int) -> int:
  """How many equal spans to cut `steps` into for the gates' cotangent: the fewest whose spans
  fit `SPAN_BYTES` (one step a span if none does), or where those spans would be shorter than
  `MIN_SPAN_ROWS` rows, the most spans (fewer than that) that are not; 1 when none is."""
  counts = [k for k in range(1, steps + 1) if steps % k == 0]
  fit = next((k for k in counts if steps // k * bytes_per_step <= SPAN_BYTES), steps)
  return max((k for k in counts if k <= fit and steps // k * rows_per_step >= MIN_SPAN_ROWS),
             default=1)


# `rows_matmul` transposes its rows only for weight tangents at least this wide, where the
# faster matmul of its reverse mode repays the transposed copy (benchmarks/DISPATCH.md).
TRANSPOSED_ROWS_MIN_WIDTH = 2048


@jax.custom_jvp
def transposed(a):
  """`a (R, K)`'s transpose `(K, R)`, float32, made by the native library (`jaxrnn_transpose`):
  a copy that XLA cannot fold back into the matmul that reads it."""
  if not _library.available():
    raise RuntimeError(f"jaxrnn: the native library is not available: "
                       f"{_library.loaded().get('error')}")
  out = jax.ShapeDtypeStruct(a.shape[::-1], a.dtype)
  return jax.ffi.ffi_call(_library.TRANSPOSE, out, vmap_method="sequential")(a)


transposed.defjvp(lambda primals, tangents: (transposed(primals[0]), tangents[0].T))


def rows_matmul(a, w):
  """`a (R, K) @ w (K, N)`, for `w` a weight tangent. From `TRANSPOSED_ROWS_MIN_WIDTH` columns
  on, written as `a^T`'s transpose (`transposed`) contracted with `w`, so that reverse mode's
  weight gradient `a^T @ ct` is a plain row-major matmul of that copy (XLA:CPU gives those to
  a faster matmul library than products with a transposed operand)."""
  if w.shape[-1] < TRANSPOSED_ROWS_MIN_WIDTH:
    return a @ w
  return jax.lax.dot_general(transposed(a), w, (((0,), (0,)), ((), ())))


def forcing_terms(project, params, x, d_params, d_x, d_rp, carries_in):
  """`(d_z, d_r)`: the tangent of the native cells' input projection `x @ w_x + bias` and of
  their recurrent term `h_in @ w_h` (`+ b_h` for the GRU), for rows `x (R, D)` and
  `carries_in` (leaves `(R, H)`), their weight tangents' products as `rows_matmul`."""
  rest = {k: v for k, v in params.items() if k != "w_x"}
  d_rest = {k: v for k, v in d_params.items() if k != "w_x"}
  _, d_z = jax.jvp(lambda p, x: project({**p, "w_x": params["w_x"]}, x), (rest, x), (d_rest, d_x))
  d_z = d_z + rows_matmul(x, d_params["w_x"])
  h = carries_in.h if isinstance(carries_in, _types.LSTMState) else carries_in
  d_r = rows_matmul(h, d_rp["w_h"])
  if "b_h" in d_rp:
    d_r = d_r + _types.last_axis(d_rp["b_h"], d_r)
  return d_z, d_r


def forced_gates(family: str, res, forcing):
  """The part of the tangent system's right-hand side `b_t` that the steps' `forcing` makes,
  before the LSTM's mixing of the cell state's tangent into the hidden state's
  (`forced_mix`): a sum over gates. Leading axis T (or a span of steps) on `res` and
  `forcing`."""
  if family == "lstm":
    p_i, p_f, p_g, p_o = jnp.split(res[0] * forcing, 4, axis=-1)
    return _types.LSTMState(p_o, p_i + p_f + p_g)
  if family == "gru":
    return sum(k * f for k, f in zip(res[:4], forcing))
  return res * forcing


def forced_mix(family: str, res, gates):
  """`b_t`'s part from the forcing, from `forced_gates`'s over all steps: for the LSTM
  `(p_o + d_tanh dc, dc)` (the two functions together are `cells._lstm.tangent_update` with a
  zero incoming cell tangent), for the others `gates` as it is. Done once over all steps, so
  that reverse mode adds the cell state's cotangent into the hidden state's once, not a span
  at a time."""
  if family == "lstm":
    return _types.LSTMState(gates.h + res[2] * gates.c, gates.c)
  return gates


def tangent_loop(spec: _types.FusedSpec, rp, res, forced, d_carry, valid, lengths, *,
                 reverse: bool):
  """The fused driver's tangent loop `(d_carry_out, d_ys)` from the step residuals `res` (as
  `spec.step` returns them, leaves `(T, ..., .)`), the steps' forcing as `forced_mix` returns
  it, the incoming carry's tangent and the step mask `valid (T, ..., H)` (None: every step is
  valid); as `_fused.fused_scan`'s tangent scan computes them."""
  family = spec.native
  w = rp["w_h"]
  steps = jax.tree_util.tree_leaves(forced)[0].shape[0]
  first, last = (steps - 1, 0) if reverse else (0, steps - 1)
  apply = _step_map(family, w)
  where = lambda m, new, old: jax.tree_util.tree_map(lambda a, b: jnp.where(m, a, b), new, old)
  masked = (lambda new, old: new) if valid is None else functools.partial(where, valid)

  def previous(x):
    """The state each step was entered with, zero for the first (in processing order)."""
    pad = lambda a: jnp.zeros_like(a[:1])
    if reverse:
      return jax.tree_util.tree_map(lambda a: jnp.concatenate([a[1:], pad(a)]), x)
    return jax.tree_util.tree_map(lambda a: jnp.concatenate([pad(a), a[:-1]]), x)

  def matvec(x):
    x_prev = previous(x)
    return jax.tree_util.tree_map(jnp.subtract, x, masked(apply(res, x_prev), x_prev))

  # b: the forcing's part of each step, plus the incoming carry's part at the first step.
  zeros = jax.tree_util.tree_map(lambda a: jnp.zeros((steps,) + a.shape, a.dtype), d_carry)
  b = masked(forced, zeros)
  entered = apply(jax.tree_util.tree_map(lambda r: r[first], res), d_carry)
  if valid is not None:
    entered = where(valid[first], entered, d_carry)
  b = jax.tree_util.tree_map(lambda a, e: a.at[first].add(e), b, entered)

  def solve(_, b):
    def body(x, inp):
      b_t, res_t, v_t = inp
      new = apply(res_t, x)
      if v_t is not None:
        new = where(v_t, new, x)
      x = jax.tree_util.tree_map(jnp.add, b_t, new)
      return x, x
    return jax.lax.scan(body, jax.tree_util.tree_map(lambda a: jnp.zeros_like(a[0]), b),
                        (b, res, valid), reverse=reverse)[1]

  def transpose_solve(_, ct):
    # The kernels write their results over the cotangents they read (`input_output_aliases`),
    # which are dead after them: XLA:CPU maps its working memory afresh on every call once it
    # outgrows the C library's reuse threshold, so every buffer saved is page faults saved.
    shape = jax.tree_util.tree_leaves(ct)[0].shape
    n, hidden = _types.prod(shape[1:-1]), shape[-1]
    flat = lambda a: a.reshape(steps, n, a.shape[-1])
    lens = _lengths(lengths, steps, n)
    f32 = jax.ShapeDtypeStruct((steps, n, hidden), jnp.float32)
    name = _library.LOOPS[family.partition("_")[0]][1]
    if family == "lstm":
      call = jax.ffi.ffi_call(name, (f32, f32), vmap_method="sequential",
                              input_output_aliases={0: 0, 1: 1})
      y_h, y_c = call(flat(ct.h), flat(ct.c), *(flat(r) for r in res), w.T, lens,
                      reverse=reverse)
      return _types.LSTMState(y_h.reshape(shape), y_c.reshape(shape))
    call = jax.ffi.ffi_call(name, f32, vmap_method="sequential", input_output_aliases={0: 0})
    coefs = (res[0], res[1], res[3], res[4]) if family == "gru" else (res,)
    return call(flat(ct), *(flat(r) for r in coefs), w.T, lens, reverse=reverse).reshape(shape)

  x = jax.lax.custom_linear_solve(matvec, b, solve, transpose_solve)
  out_h = x.h if family == "lstm" else x
  d_ys = out_h if valid is None else jnp.where(valid, out_h, 0)
  return jax.tree_util.tree_map(lambda a: a[last], x), d_ys
