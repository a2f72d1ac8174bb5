"""The native LSTM loop: the fused driver's forward loop for the built-in LSTM on CPU, in C++.

XLA:CPU runs each step of a `lax.scan` as one thread's small matmul followed by separately
scheduled elementwise kernels. The handler `jaxrnn_lstm_loop` (`_native/lstm_loop.cc`, in the
optional native library that `jaxrnn.drivers._onednn` loads) runs the whole loop instead: the
batch split into one column block per core, each block's steps on its own thread, the recurrent
matmul by oneDNN's sgemm and the gates in one vectorised pass.

It serves the fused driver (`_fused.fused_scan`) in two places:

* `lstm_loop`: the forward loop, for inference and the forward that keeps residuals for the
  backward pass, input projection included (one matmul a step for both). The call is a
  `jax.custom_jvp` whose rule is the JVP of the fused driver's pure-JAX loop, so that
  derivatives of the fused driver's own JVP rule (higher orders) keep working.
* `tangent_loop`: the tangent recurrence of the fused JVP rule, posed as the linear system it
  is (`X_t - A_t X_prev = b_t` over the tangent states of all steps) and handed to
  `jax.lax.custom_linear_solve`. Its `solve` is the pure-JAX forward substitution (what
  `jax.jvp` runs); its `transpose_solve`, which reverse mode runs, is the native backward
  substitution `jaxrnn_lstm_loop_transpose`; its `matvec` (the system itself, parallel over
  time) is what JAX differentiates for higher orders. So reverse mode's sequential loop is
  native too, while forward mode and higher orders stay ordinary JAX.
"""

from __future__ import annotations

import os
from typing import Callable, Optional

import jax
import jax.numpy as jnp

from jaxrnn import _types
from jaxrnn.drivers import _onednn

# Whether the fused driver runs the LSTM's forward loop natively on a backend (where the
# library is built and the call qualifies: see `why_not`). Chosen by measurement
# (benchmarks/).
NATIVE_BY_BACKEND = {"cpu": True}

# The smallest batch (examples in one call, leading axes flattened) the native loop runs. Below
# it XLA's loop was faster on the 2-core machine measured (forward 2.2x as long natively at
# (B, T, D, H) = (1, 1000, 32, 64), 1.9x at (4, 1000, 32, 64), 1.2x at (8, 200, 64, 128)); from
# 16 on the native loop was faster at every shape tried, forward and training.
NATIVE_MIN_BATCH = 16


def why_not(cell: _types.Cell, spec, params, xs_t, carry, resets) -> Optional[str]:
  """Why the native loop does not serve this fused-driver call, or None when it does."""
  # Imported here: drivers do not import cells at module level (DESIGN.md's layers).
  from jaxrnn.cells import _lstm as lstm_cell

  if spec is not lstm_cell._FUSED and spec is not lstm_cell._FUSED_F32:
    return "it runs only the built-in LSTM cell with float32 matmuls"
  if os.environ.get("JAXRNN_NATIVE", "") == "0":
    return "disabled by the environment variable JAXRNN_NATIVE=0"
  if not NATIVE_BY_BACKEND.get(jax.default_backend(), False):
    return f"not used on the {jax.default_backend()} backend"
  if resets is not None:
    return "resets is not supported"
  if not isinstance(params, dict) or not {"w_x", "w_h"} <= set(params):
    return "params must be jr.lstm's dict"
  leaves = [xs_t] + jax.tree_util.tree_leaves(carry) + jax.tree_util.tree_leaves(params)
  if any(jnp.result_type(a) != jnp.float32 for a in leaves):
    return "it computes in float32 only"
  if xs_t.shape[0] == 0:
    return "the input is empty"
  if _types.prod(xs_t.shape[1:-1]) < NATIVE_MIN_BATCH:
    return f"the batch is smaller than NATIVE_MIN_BATCH = {NATIVE_MIN_BATCH}"
  if not _onednn.available():
    return f"the native library is not available here: {_onednn.unavailable_reason()}"
  return None


def lstm_loop(cell: _types.Cell, params, xs_t, carry, lengths, *, reverse: bool,
              with_residuals: bool, reference: Callable):
  """The fused LSTM driver's loop on time-major `xs_t (T, ..., D)`: `(carry, ys)`, or with
  `with_residuals` `(carry, (ys, carries_in, res))` as the pure-JAX loop `reference(params,
  xs_t, carry, lengths)` returns them (the same values up to float32 rounding)."""

  @jax.custom_jvp
  def loop(params, xs_t, carry, lengths):
    return _call(cell, params, xs_t, carry, lengths, reverse, with_residuals)

  @loop.defjvp
  def loop_jvp(primals, tangents):
    return jax.jvp(reference, primals, tangents)

  return loop(params, xs_t, carry, lengths)


def _call(cell, params, xs_t, carry, lengths, reverse: bool, with_residuals: bool):
  steps, batch, d = xs_t.shape[0], tuple(xs_t.shape[1:-1]), xs_t.shape[-1]
  hidden = carry.h.shape[-1]
  n, g = _types.prod(batch), 4 * hidden
  w_cat = jnp.concatenate([params["w_x"], params["w_h"]]).T
  bias = params["b"] if "b" in params else jnp.zeros((g,), jnp.float32)
  h0, c0 = carry.h.reshape(n, hidden), carry.c.reshape(n, hidden)
  lens = _lengths(lengths, steps, n)
  f32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)
  per_h = f32(steps, n, hidden) if with_residuals else f32(0)
  residuals = (f32(steps, n, g) if with_residuals else f32(0), per_h, per_h, per_h)
  call = jax.ffi.ffi_call(_onednn.LOOP, (f32(steps, n, hidden), f32(n, hidden), f32(n, hidden))
                          + residuals, vmap_method="sequential")
  ys, h_t, c_t, coef, f, d_tanh, cs = call(xs_t.reshape(steps, n, d), w_cat, bias, h0, c0, lens,
                                           reverse=reverse, training=with_residuals)
  per_step = lambda a: a.reshape((steps,) + batch + a.shape[2:])
  carry_out = _types.LSTMState(h_t.reshape(carry.h.shape), c_t.reshape(carry.c.shape))
  if not with_residuals:
    return carry_out, per_step(ys)

  # The carry entering each step. The kernel records the held cell state at steps past an
  # example's length, so shifting `cs` is right everywhere; `ys` is zero there, so the hidden
  # state entering the first valid step of a reversed sequence is taken from `h0`.
  if reverse:
    shift = lambda a, a0: jnp.concatenate([a[1:], a0[None]])
  else:
    shift = lambda a, a0: jnp.concatenate([a0[None], a[:-1]])
  c_in, h_in = shift(cs, c0), shift(ys, h0)
  if reverse and lengths is not None:
    enters_valid = jnp.arange(1, steps + 1, dtype=jnp.int32)[:, None] < lens[None]
    h_in = jnp.where(enters_valid[..., None], h_in, h0[None])
  return carry_out, (per_step(ys), _types.LSTMState(per_step(h_in), per_step(c_in)),
                     (per_step(coef), per_step(f), per_step(d_tanh)))


def _lengths(lengths, steps: int, n: int):
  """`lengths` flattened to `(n,)` int32 (all `steps` when None), as the kernels take them."""
  if lengths is None:
    return jnp.full((n,), steps, jnp.int32)
  return jnp.minimum(lengths.reshape(n), steps).astype(jnp.int32)


def tangent_loop(rp, res, forcing, d_carry, valid, lengths, *, reverse: bool):
  """The fused LSTM's tangent loop `(d_carry_out, d_ys)` from the residuals `res = (coef, f,
  d_tanh)` (leaves `(T, ..., 4H)` and `(T, ..., H)`), the per-step `forcing (T, ..., 4H)`, the
  incoming carry's tangent and the step mask `valid (T, ..., H)` (None: every step is valid);
  as `_fused.fused_scan`'s tangent scan computes them."""
  from jaxrnn.cells import _lstm as lstm_cell

  w = rp["w_h"]
  steps = forcing.shape[0]
  first, last = (steps - 1, 0) if reverse else (0, steps - 1)
  update = lstm_cell.tangent_update
  masked = (lambda new, old: new) if valid is None else (
      lambda new, old: jax.tree_util.tree_map(lambda a, b: jnp.where(valid, a, b), new, old))

  def previous(x):
    """The state each step was entered with, zero for the first (in processing order)."""
    pad = lambda a: jnp.zeros_like(a[:1])
    if reverse:
      return jax.tree_util.tree_map(lambda a: jnp.concatenate([a[1:], pad(a)]), x)
    return jax.tree_util.tree_map(lambda a: jnp.concatenate([pad(a), a[:-1]]), x)

  def apply_a(x_prev):  # A_t x_prev for every t at once
    return masked(update(res, x_prev.c, x_prev.h @ w), x_prev)

  def matvec(x):
    return jax.tree_util.tree_map(jnp.subtract, x, apply_a(previous(x)))

  # b: the forcing's part of each step, plus the incoming carry's part at the first step.
  state_zeros = _types.LSTMState(jnp.zeros_like(res[1]), jnp.zeros_like(res[1]))
  b = masked(update(res, state_zeros.c, forcing), state_zeros)
  res_first = tuple(r[first] for r in res)
  entered = update(res_first, d_carry.c, d_carry.h @ w)
  if valid is not None:
    entered = jax.tree_util.tree_map(lambda a, b_: jnp.where(valid[first], a, b_), entered,
                                     d_carry)
  b = jax.tree_util.tree_map(lambda a, e: a.at[first].add(e), b, entered)

  def solve(_, b):
    def body(x, inp):
      b_t, res_t, v_t = inp
      new = update(res_t, x.c, x.h @ w)
      if v_t is not None:
        new = jax.tree_util.tree_map(lambda a, o: jnp.where(v_t, a, o), new, x)
      x = jax.tree_util.tree_map(jnp.add, b_t, new)
      return x, x
    return jax.lax.scan(body, jax.tree_util.tree_map(lambda a: jnp.zeros_like(a[0]), b),
                        (b, res, valid), reverse=reverse)[1]

  def transpose_solve(_, ct):
    shape = ct.h.shape
    n, hidden = _types.prod(shape[1:-1]), shape[-1]
    flat = lambda a: a.reshape(steps, n, a.shape[-1])
    lens = _lengths(lengths, steps, n)
    f32 = jax.ShapeDtypeStruct((steps, n, hidden), jnp.float32)
    call = jax.ffi.ffi_call(_onednn.LOOP_TRANSPOSE, (f32, f32), vmap_method="sequential")
    y_h, y_c = call(flat(ct.h), flat(ct.c), *(flat(r) for r in res), w, lens, reverse=reverse)
    return _types.LSTMState(y_h.reshape(shape), y_c.reshape(shape))

  x = jax.lax.custom_linear_solve(matvec, b, solve, transpose_solve)
  d_ys = x.h if valid is None else jnp.where(valid, x.h, 0)
  return jax.tree_util.tree_map(lambda a: a[last], x), d_ys
