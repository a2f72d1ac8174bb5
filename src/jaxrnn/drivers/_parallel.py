"""`jr.parallel_scan`: a linear recurrence `h_t = a_t * h_{t-1} + b_t` evaluated over all steps at
once, and the solver of such recurrences that `jr.newton_scan` shares.

An element `(a, b, r)` stands for the map `h -> b if r else a * h + b`: `r` marks a reset (a
segment starts there, whatever came before). Composing two such maps, first `e1` then `e2`, is

    (a1, b1, r1) then (a2, b2, r2) = (a2, b2, True)                 if r2
                                   = (a2 * a1, a2 * b1 + b2, r1)    otherwise

which is associative, so `jax.lax.associative_scan` computes every prefix in O(log T) depth.
With `a` square matrices (`dense`), `*` is a matrix product and the same holds.
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp

from jaxrnn import _types
from jaxrnn.drivers import _scan

PyTree = Any

STRATEGIES = ("scan", "sequential", "chunked", "associative")

# How `parallel_scan` evaluates the recurrence on each backend when `strategy=None`, chosen by
# measurement (benchmarks/parallel_scan.py; results in benchmarks/results/). On XLA:CPU (2
# cores) every form that first computes the coefficients of all steps, (T, ..., H) arrays, and
# then combines them (associative, chunked, or a loop of one multiply-add a step) took 1.1-3.4x
# the time of the cell's own sequential loop (`jr.scan`, which reads only x_t in each step) for
# jr.min_gru at H = 64-512, T = 4096-65536, forward and forward+backward: passes over memory
# cost more there than the loop's per-step overhead. So on the CPU the default is that loop.
STRATEGY_BY_BACKEND = {"cpu": "scan"}


def _mul(a, h, dense: bool):
  return jnp.einsum("...ij,...j->...i", a, h) if dense else a * h


def _compose(e1, e2, dense: bool, log_space: bool):
  """`e1` then `e2` (see the module docstring); in log space `*` is `+` and `+` is logaddexp."""
  a1, b1, r1 = e1
  a2, b2, r2 = e2
  if log_space:
    a, b = a1 + a2, jnp.logaddexp(a2 + b1, b2)
  elif dense:
    a, b = jnp.einsum("...ij,...jk->...ik", a2, a1), _mul(a2, b1, True) + b2
  else:
    a, b = a2 * a1, a2 * b1 + b2
  if r2 is None:
    return a, b, None
  return (jnp.where(_expand(r2, a), a2, a), jnp.where(_expand(r2, b), b2, b), r1 | r2)


def _expand(r, like):
  return jnp.reshape(r, r.shape + (1,) * (like.ndim - r.ndim))


def _apply(e, h, dense: bool, log_space: bool):
  """The map of element(s) `e` applied to `h` (broadcast over any extra leading axes of `e`)."""
  a, b, r = e
  if log_space:
    a, b = jnp.exp(a), jnp.exp(b)
  out = _mul(a, h, dense) + b
  return out if r is None else jnp.where(_expand(r, out), b, out)


def _identity_like(a, b, r, log_space: bool):
  """Elements that change nothing, shaped like `(a, b, r)`."""
  if log_space:
    one, zero = jnp.zeros_like(a), jnp.full_like(b, -jnp.inf)
  else:
    one = jnp.broadcast_to(jnp.eye(a.shape[-1], dtype=a.dtype), a.shape) if a.ndim > b.ndim \
        else jnp.ones_like(a)
    zero = jnp.zeros_like(b)
  return one, zero, None if r is None else jnp.zeros_like(r)


def linear_scan(a, b, h0, resets=None, *, reverse: bool = False, strategy: str = "sequential",
                chunk: Optional[int] = None, log_space: bool = False):
  """Every state of `h_t = a_t * h_{t-1} + b_t` (`h_t = b_t` where `resets[t]`), time-major.

  Args:
    a: `(T, ..., n)` (elementwise) or `(T, ..., n, n)` (a matrix a step, applied as `a_t @ h`).
    b: `(T, ..., n)`.
    h0: `(..., n)`, the state entering the first step processed (the last one in reverse).
    resets: optional bool `(T, ...)` (the batch axes of `b`).
    reverse: run from step `T - 1` down to 0 (`h_t` is then the state after step `t` of the
      backward run).
    strategy: "sequential" (`lax.scan`), "associative" (`lax.associative_scan`, O(log T) depth)
      or "chunked" (chunks of `chunk` steps: a loop over the steps of a chunk vectorised across
      chunks, then a loop across chunks, then one elementwise pass).
    chunk: the chunk length of "chunked".
    log_space: `a` and `b` are `log a` and `log b` (elementwise only).

  Returns:
    `hs (T, ..., n)`.
  """
  dense = a.ndim > b.ndim
  steps = b.shape[0]
  elems = (a, b, resets)
  if strategy == "sequential" or steps <= 1:
    if log_space:
      elems = (jnp.exp(a), jnp.exp(b), resets)

    def body(h, e):
      h = _apply(e, h, dense, False)
      return h, h

    return jax.lax.scan(body, h0, elems, reverse=reverse)[1]
  compose = lambda e1, e2: _compose(e1, e2, dense, log_space)
  if strategy == "associative":
    prefix = jax.lax.associative_scan(compose, elems, reverse=reverse)
    return _apply(prefix, h0[None], dense, log_space)
  if strategy != "chunked":
    raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
  size = max(1, min(int(chunk or 64), steps))
  n_chunks = -(-steps // size)
  pad = n_chunks * size - steps
  if pad:
    ident = _identity_like(*[None if x is None else x[:1] for x in elems], log_space)
    elems = tuple(None if x is None else jnp.concatenate(
        [x, jnp.broadcast_to(i, (pad,) + x.shape[1:])] if not reverse else
        [jnp.broadcast_to(i, (pad,) + x.shape[1:]), x]) for x, i in zip(elems, ident))
  # (n_chunks, size, ...) -> (size, n_chunks, ...): the loop runs over a chunk's steps.
  split = lambda x: None if x is None else jnp.swapaxes(
      x.reshape((n_chunks, size) + x.shape[1:]), 0, 1)
  inner = tuple(split(x) for x in elems)

  def prefix_body(acc, e):
    acc = e if acc is None else compose(acc, e)
    return acc, acc

  first = tuple(None if x is None else x[-1 if reverse else 0] for x in inner)
  rest = tuple(None if x is None else (x[:-1] if reverse else x[1:]) for x in inner)
  _, prefix = jax.lax.scan(lambda acc, e: prefix_body(acc, e), first, rest, reverse=reverse)
  join = lambda p, f: None if p is None else (
      jnp.concatenate([p, f[None]]) if reverse else jnp.concatenate([f[None], p]))
  prefix = tuple(join(p, f) for p, f in zip(prefix, first))  # (size, n_chunks, ...)
  totals = tuple(None if p is None else p[0 if reverse else -1] for p in prefix)

  def across(h, total):
    return _apply(total, h, dense, log_space), h

  _, h_in = jax.lax.scan(across, h0, totals, reverse=reverse)  # state entering each chunk
  hs = _apply(prefix, h_in[None], dense, log_space)  # (size, n_chunks, ..., n)
  hs = jnp.swapaxes(hs, 0, 1).reshape((n_chunks * size,) + hs.shape[2:])
  return hs[pad:] if reverse else hs[:steps]


def _default_strategy() -> str:
  return STRATEGY_BY_BACKEND.get(jax.default_backend(), "associative")


def _check_linear(cell) -> _types.LinearRecurrence:
  _scan._check_cell(cell)
  lin = cell.linear
  if lin is None:
    raise TypeError(
        f"parallel_scan: cell {cell.name} has no linear recurrence (its Cell.linear is None): "
        "parallel_scan runs only cells whose update is h_t = a_t * h_{t-1} + b_t with a_t, b_t "
        "from x_t alone (jr.min_gru, jr.min_lstm, jr.lru, jr.linear_indrnn). For a nonlinear "
        "cell use jr.newton_scan (parallel Newton iterations, DEER/ELK) or jr.scan")
  if not isinstance(lin, _types.LinearRecurrence):
    raise TypeError(f"parallel_scan: cell {cell.name}: Cell.linear must be a "
                    f"jr.LinearRecurrence, got {type(lin).__name__}")
  if lin.step is not cell.step:
    raise TypeError(
        f"parallel_scan: cell {cell.name}: its step is not the one its linear recurrence "
        "describes (a cell made with cell._replace(step=f) must run f); give it a matching "
        "jr.LinearRecurrence, or linear=None and use jr.scan or jr.newton_scan")
  return lin


def parallel_scan(cell: _types.Cell, params: PyTree, xs, *, carry: PyTree = None, lengths=None,
                  resets=None, reverse: bool = False, time_major: bool = False,
                  strategy: Optional[str] = None, chunk: Optional[int] = None):
  r"""Runs a linear-recurrence cell over all time steps at once.

  For cells whose state update is :math:`h_t = a_t \odot h_{t-1} + b_t` with
  :math:`(a_t, b_t)` computed from :math:`x_t` alone (`cell.linear`, a `jr.LinearRecurrence`:
  `jr.min_gru`, `jr.min_lstm`, `jr.lru`, `jr.linear_indrnn`), the coefficients of every step are
  computed in one batched call, and the recurrence is solved with the associative operator
  :math:`(a_1, b_1) \circ (a_2, b_2) = (a_2 a_1, a_2 b_1 + b_2)`, extended by a reset flag
  (a step that starts a segment discards what came before), in O(log T) depth with
  `jax.lax.associative_scan` (Blelloch 1990; Martin & Cundy 2018). Outputs come from the states
  in one more batched call. The results equal `jr.scan`'s (values, final carry and gradients),
  up to floating-point reassociation; gradients are JAX's autodiff of the same computation.

  On XLA:CPU (few cores) every parallel form measured slower than the cell's own sequential
  loop, whose steps read only `x_t`, while the parallel forms make passes over `(T, ..., H)`
  arrays of coefficients; so there the default `strategy` is that loop (`jr.scan` itself), see
  `benchmarks/parallel_scan.py`. Elsewhere (GPU, TPU) the default is the associative scan.

  Args:
    cell: a `jr.Cell` with `cell.linear` set; any other cell raises `TypeError` (use
      `jr.newton_scan` for nonlinear cells).
    params: the cell's parameters.
    xs: inputs `(..., T, D)`, or `(T, ..., D)` with `time_major=True`.
    carry: the initial carry, or `None` for `cell.initial_carry`.
    lengths: optional int `(...)`, as in `jr.scan`: steps past each length keep the carry and
      output zeros, and padding never enters the arithmetic (NaN there changes nothing).
    resets: optional bool `(..., T)`, as in `jr.scan` (segments in forward time; in reverse,
      `resets[..., t]` replaces the carry entering step `t - 1`).
    reverse: run each sequence backwards from its last valid step.
    time_major: whether `xs`, `resets` and outputs have time first.
    strategy: `None` (by backend, as above), "associative", "chunked" (a loop over a chunk's
      steps vectorised across chunks, then a loop across chunks), "sequential" (a loop over the
      precomputed coefficients) or "scan" (`jr.scan` with the cell's step).
    chunk: the chunk length of "chunked" (default: about sqrt(T)).

  Returns:
    `(carry, ys)` as `jr.scan` returns them: the final carry and outputs `(..., T, O)`.

  References:
    Blelloch, "Prefix sums and their applications", 1990. Martin & Cundy, "Parallelizing Linear
    Recurrent Neural Nets Over Sequence Length", ICLR 2018.

  >>> import jax, jax.numpy as jnp, jaxrnn as jr
  >>> cell = jr.lru(8)
  >>> params = cell.init(jax.random.key(0), 3)
  >>> xs = jax.random.normal(jax.random.key(1), (2, 50, 3))
  >>> carry, ys = jr.parallel_scan(cell, params, xs, lengths=jnp.array([50, 20]))
  >>> ref = jr.scan(cell, params, xs, lengths=jnp.array([50, 20]))[1]
  >>> bool(jnp.allclose(ys, ref, atol=1e-5))
  True
  """
  lin = _check_linear(cell)
  reverse = _types.check_flag(reverse, "parallel_scan: reverse")
  time_major = _types.check_flag(time_major, "parallel_scan: time_major")
  if strategy is not None and strategy not in STRATEGIES:
    raise ValueError(f"parallel_scan: strategy must be None or one of {STRATEGIES}, got "
                     f"{strategy!r}")
  if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
    raise ValueError(f"parallel_scan: chunk must be a positive int or None, got {chunk!r}")
  chosen = _default_strategy() if strategy is None else strategy
  if chosen == "scan":
    return _scan.scan(cell, params, xs, carry=carry, lengths=lengths, resets=resets,
                      reverse=reverse, time_major=time_major)
  xs_t, batch, init_carry, carry = _scan._start(cell, xs, carry, time_major)
  steps = xs_t.shape[0]
  _scan._check_input_size(cell, params, carry, xs, xs_t, time_major)
  y_shape = jax.eval_shape(lambda c, x: cell.step(params, c, x)[1], carry,
                           jax.ShapeDtypeStruct(xs_t.shape[1:], xs_t.dtype))
  if steps == 0:
    ys = jax.tree_util.tree_map(lambda s: jnp.zeros((0,) + s.shape, s.dtype), y_shape)
    return carry, ys if time_major else jax.tree_util.tree_map(
        lambda a: jnp.moveaxis(a, 0, -2), ys)

  valid = None
  if lengths is not None:
    lengths = _types.check_lengths(lengths, batch, steps, cell.name)
    valid = _types.valid_steps(lengths, steps, time_major=True)
    xs_t = _types.zero_padding(xs_t, valid)
  if resets is not None:
    resets = _scan._check_resets(resets, batch, steps, time_major, cell.name)
    if reverse:  # as in jr.scan: step t (backwards) is entered from step t + 1
      resets = jnp.concatenate([resets[1:], jnp.zeros_like(resets[:1])], axis=0)
      if valid is not None:
        resets = resets & jnp.concatenate([valid[1:], jnp.zeros_like(valid[:1])], axis=0)
    elif valid is not None:
      resets = resets & valid  # a reset in the padding changes nothing

  a, b = lin.coefficients(params, xs_t)
  leaves_c, treedef = jax.tree_util.tree_flatten(carry)
  leaves_a, leaves_b = treedef.flatten_up_to(a), treedef.flatten_up_to(b)
  leaves_init = treedef.flatten_up_to(init_carry)
  size = chunk if chunk is not None else max(16, int(round(steps ** 0.5)))
  hs = []
  for a_l, b_l, c_l, i_l in zip(leaves_a, leaves_b, leaves_c, leaves_init):
    a_l, b_l = jnp.asarray(a_l), jnp.asarray(b_l)
    if a_l.shape != (steps,) + c_l.shape or b_l.shape != a_l.shape:
      raise ValueError(f"parallel_scan: cell {cell.name}: its coefficients have shapes "
                       f"{a_l.shape} and {b_l.shape}, expected {(steps,) + c_l.shape} (T + the "
                       "carry leaf's shape)")
    if valid is not None:  # past each length: the identity map
      keep = _types.expand_mask(valid, a_l)
      a_l = jnp.where(keep, a_l, jnp.zeros((), a_l.dtype) if lin.log_space else
                      jnp.ones((), a_l.dtype))
      b_l = jnp.where(keep, b_l, jnp.full((), -jnp.inf, b_l.dtype) if lin.log_space else
                      jnp.zeros((), b_l.dtype))
    if resets is not None and not lin.log_space:
      # A segment's first step is entered by the cell's initial carry (zero for a log-space
      # cell, which is why that case needs nothing here).
      fresh = a_l * jnp.broadcast_to(i_l.astype(a_l.dtype), c_l.shape)[None] + b_l
      b_l = jnp.where(_types.expand_mask(resets, b_l), fresh, b_l)
    hs.append(linear_scan(a_l, b_l, c_l.astype(b_l.dtype if not lin.log_space else c_l.dtype),
                          resets, reverse=reverse, strategy=chosen, chunk=size,
                          log_space=lin.log_space).astype(c_l.dtype))
  hs = jax.tree_util.tree_unflatten(treedef, hs)
  final = jax.tree_util.tree_map(lambda h: h[0 if reverse else -1], hs)
  ys = lin.output(params, hs, xs_t)
  if valid is not None:
    ys = jax.tree_util.tree_map(
        lambda y: jnp.where(_types.expand_mask(valid, y), y, jnp.zeros((), y.dtype)), ys)
  if not time_major:
    ys = jax.tree_util.tree_map(lambda y: jnp.moveaxis(y, 0, -2), ys)
  return final, ys
