"""The fused driver: `jr.scan` for built-in cells with a backward pass shaped like cuDNN's.

Differentiating a plain `lax.scan` makes JAX's transpose accumulate every weight gradient inside
the backward loop, one small update a step. Here the scan is a `jax.custom_jvp` whose JVP rule

1. runs the forward loop once, saving each step's incoming carry and the coefficients of the
   step's tangent (`FusedSpec.step`);
2. computes, for all steps at once and outside any loop, the tangent through the parameters and
   the inputs (`jvp(project)` and `FusedSpec.rec_tangent`: big matmuls);
3. runs a loop that is linear in the carry's tangent, with those coefficients
   (`FusedSpec.tangent`): no weight tangent enters it.

Reverse mode transposes (3) into a backward loop that computes only the gates' gradients, and
(2) into one big matmul for each weight gradient. Forward mode (`jax.jvp`) and higher orders keep
working, because the rule is ordinary JAX. Values are the plain scan's; gradients equal it up to
floating-point reassociation (pinned by tests).

The loop bodies are written so that the tangent loop holds no computation on known values alone:
such work would be split off by JAX's partial evaluation into a second forward loop.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

from jaxrnn import _types
from jaxrnn.drivers import _native
from jaxrnn.drivers._plan import Plan


def _masks(steps: int, state_shape: tuple, lengths, resets):
  """Per-step boolean masks `(T, ..., H)`, already the carry leaves' shape: a broadcast inside
  the tangent loop would be work on known values alone (see the module docstring)."""
  batch = state_shape[:-1]
  full = (steps,) + state_shape
  valid = None
  if lengths is not None:
    t = jnp.arange(steps, dtype=jnp.int32).reshape((steps,) + (1,) * len(batch))
    valid = jnp.broadcast_to((t < lengths[None])[..., None], full)
  if resets is not None:
    resets = jnp.broadcast_to(resets[..., None], full)
  return valid, resets


def _select(mask, on_true, on_false):
  return jax.tree_util.tree_map(lambda a, b: jax.lax.select(mask, a, b), on_true, on_false)


def _instantiate(tangent, primal):
  """Replaces symbolic-zero tangent leaves by zeros (XLA folds products with them away)."""
  return jax.tree_util.tree_map(
      lambda t, p: jnp.zeros_like(p) if isinstance(t, SymbolicZero) else t, tangent, primal,
      is_leaf=lambda t: isinstance(t, SymbolicZero))


def fused_scan(cell: _types.Cell, spec: _types.FusedSpec, params, xs_t, carry, lengths, resets,
               *, reverse: bool, unroll, plan: Plan, plan_train: Plan):
  """`(carry, ys)` of `jr.scan` for time-major `xs_t (T, ..., D)`; `resets` already arranged for
  the direction (see `jr.scan`). Returns time-major `ys`. `plan` and `plan_train` are the
  call's plans (`drivers/_plan.py`) without and with differentiation: whether the loops run
  natively, whether the input projection runs before the loop, and whether the XLA loop joins
  its matmuls."""
  steps, batch = xs_t.shape[0], tuple(xs_t.shape[1:-1])
  state_shape = jax.tree_util.tree_leaves(carry)[0].shape
  if any(leaf.shape != state_shape for leaf in jax.tree_util.tree_leaves(carry)):
    raise ValueError(f"{cell.name}: the fused driver needs carry leaves of one shape")

  # The forward alone, and the forward that keeps residuals with its tangent loop, each run
  # natively where their own plan says so.
  native_train = plan_train.driver == "native"

  def run(params, xs_t, carry, lengths, resets, with_residuals: bool):
    if native_train if with_residuals else plan.driver == "native":
      return _native.forward_loop(
          cell, spec, params, xs_t, carry, lengths, reverse=reverse,
          with_residuals=with_residuals,
          reference=lambda p, x, c, n: xla_run(p, x, c, n, None, with_residuals))
    return xla_run(params, xs_t, carry, lengths, resets, with_residuals)

  def xla_run(params, xs_t, carry, lengths, resets, with_residuals: bool):
    chosen = plan_train if with_residuals else plan
    hoisted = chosen.hoist
    dtype = jax.tree_util.tree_leaves(carry)[0].dtype
    init = cell.initial_carry(batch, dtype)
    rp = spec.rec_params(params, dtype)
    valid, reset = _masks(steps, state_shape, lengths, resets)
    zeros = jnp.zeros(state_shape, dtype)
    inputs = cell.project(params, xs_t) if hoisted else xs_t
    joint = None
    if chosen.joint:
      # Bad shapes raise the two-matmul step's errors (traced only, nothing runs).
      jax.eval_shape(lambda p, rp, c, x: spec.step(rp, c, cell.project(p, x)), params, rp,
                     carry, jax.ShapeDtypeStruct(xs_t.shape[1:], xs_t.dtype))
      joint = spec.joint(params, rp, xs_t.dtype, dtype)

    def body(c, inp):
      x, v, r = inp
      c_in = c if r is None else _select(r, init, c)
      if joint is not None:
        c_new, y, res = joint(c_in, x)
      else:
        c_new, y, res = spec.step(rp, c_in, x if hoisted else cell.project(params, x))
      if v is not None:
        c_new, y = _select(v, c_new, c), jax.lax.select(v, y, zeros)
      return c_new, ((y, c_in, res) if with_residuals else y)

    return jax.lax.scan(body, carry, (inputs, valid, reset), reverse=reverse, unroll=unroll)

  @jax.custom_jvp
  def scan_fn(params, xs_t, carry, lengths, resets):
    return run(params, xs_t, carry, lengths, resets, with_residuals=False)

  def scan_jvp(primals, tangents):
    params, xs_t, carry, lengths, resets = primals
    d_params, d_xs, d_carry = (_instantiate(t, p) for t, p in zip(tangents[:3], primals[:3]))
    carry_out, (ys, carries_in, res) = run(params, xs_t, carry, lengths, resets,
                                           with_residuals=True)
    dtype = jax.tree_util.tree_leaves(carry)[0].dtype
    rec_params = lambda p: spec.rec_params(p, dtype)
    rp = rec_params(params)
    # The built-in matmul cells (`spec.native` set) take their steps' rows as one axis, so that
    # reverse mode's weight gradients contract a single axis and XLA:CPU feeds the gates'
    # cotangent to them as it lies (contracting time and batch as two axes, it copied it into a
    # transposed layout first: a (T, B, G)-sized buffer more per call). Other cells' leading
    # axes need not all be batch axes (a convolution's spatial ones), so they keep theirs.
    rows = lambda a: a
    if spec.native is not None:
      rows = lambda a: a.reshape((-1, a.shape[-1]))

    def forcing_of(d_params, d_rp, xs_t, d_xs, carries_in):
      """The forcing of the steps of `xs_t`, time-major."""
      c_rows = jax.tree_util.tree_map(rows, carries_in)
      if native_train:
        d_z, d_r = _native.forcing_terms(cell.project, params, rows(xs_t), d_params,
                                         rows(d_xs), d_rp, c_rows)
      else:
        _, d_z = jax.jvp(cell.project, (params, rows(xs_t)), (d_params, rows(d_xs)))
        d_r = spec.rec_tangent(d_rp, c_rows)
      forcing = spec.force(d_z, d_r)
      return jax.tree_util.tree_map(lambda a: a.reshape((-1,) + batch + a.shape[-1:]), forcing)

    _, d_rp = jax.jvp(rec_params, (params,), (d_params,))
    if native_train:
      return (carry_out, ys), native_tangent(params, xs_t, d_params, d_rp, d_xs, carries_in,
                                             res, d_carry, lengths, rp, forcing_of)
    forcing = forcing_of(d_params, d_rp, xs_t, d_xs, carries_in)
    valid, reset = _masks(steps, state_shape, lengths, resets)
    zeros = jnp.zeros(state_shape, dtype)

    def tangent_body(dc, inp):
      res_t, f_t, v, r = inp
      dc_in = dc if r is None else jax.tree_util.tree_map(
          lambda a: jax.lax.select(r, zeros, a), dc)
      dc_new, dy = spec.tangent(rp, res_t, dc_in, f_t)
      if v is not None:
        dc_new, dy = _select(v, dc_new, dc), jax.lax.select(v, dy, zeros)
      return dc_new, dy

    d_carry_out, d_ys = jax.lax.scan(tangent_body, d_carry, (res, forcing, valid, reset),
                                     reverse=reverse, unroll=unroll)
    return (carry_out, ys), (d_carry_out, d_ys)

  def native_tangent(params, xs_t, d_params, d_rp, d_xs, carries_in, res, d_carry, lengths, rp,
                     forcing_of):
    """The native path's tangent `(d_carry_out, d_ys)`. The forcing's part of the system's
    right-hand side is formed a span of steps at a time, in a loop over spans
    (`_native.time_spans`), so that reverse mode, which transposes that loop, forms the
    gates' cotangent `(t, B, G)` of one span, takes its weight and input gradients and
    frees it before the next: XLA:CPU's working memory holds one span's instead of all `T`
    steps', which keeps it under the size that the C library maps afresh (page faults) on
    every call at more shapes."""
    width = sum(leaf.shape[-1] * leaf.dtype.itemsize for leaf in jax.tree_util.tree_leaves(
        jax.eval_shape(cell.project, params, jax.ShapeDtypeStruct(xs_t.shape[1:], xs_t.dtype))))
    n = _types.prod(batch)
    k = _native.time_spans(steps, n, n * width)
    # The loop takes rows `(k, steps // k * n, .)` and residuals `(k, steps // k, ...)`, so
    # that its body does no work on known values alone (JAX's partial evaluation would split
    # that off into a loop of its own, which stacks its results).
    chunk_rows = lambda tree: jax.tree_util.tree_map(
        lambda a: a.reshape((k, -1, a.shape[-1])), tree)
    chunk = lambda tree: jax.tree_util.tree_map(
        lambda a: a.reshape((k, steps // k) + a.shape[1:]), tree)

    # Rematerialised, so that the transposed copies that `_native.rows_matmul` takes of the
    # span's rows are made in the backward loop, a span at a time, not saved for all spans.
    @jax.checkpoint
    def body(_, inp):
      x, dx, c, r = inp
      return None, _native.forced_gates(spec.native, r, forcing_of(d_params, d_rp, x, dx, c))

    if k == 1:
      gates = body(None, (xs_t, d_xs, carries_in, res))[1]
    else:
      _, gates = jax.lax.scan(body, None, (*chunk_rows((xs_t, d_xs, carries_in)), chunk(res)))
      gates = jax.tree_util.tree_map(lambda a: a.reshape((steps,) + a.shape[2:]), gates)
    forced = _native.forced_mix(spec.native, res, gates)
    valid, _ = _masks(steps, state_shape, lengths, None)
    return _native.tangent_loop(spec, rp, res, forced, d_carry, valid, lengths,
                                reverse=reverse)

  scan_fn.defjvp(scan_jvp, symbolic_zeros=True)

  return scan_fn(params, xs_t, carry, lengths, resets)

