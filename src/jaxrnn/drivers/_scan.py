"""The sequential driver: `jr.scan` over time with lengths, resets, reverse, unroll and remat,
and `jr.static_unroll`, the Python-loop oracle it is tested against."""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from jaxrnn import _types
from jaxrnn.drivers import _fused, _onednn, _plan
from jaxrnn.drivers._common import masked_body

PyTree = Any

_IMPLEMENTATIONS = ("auto", "reference", "fused", "onednn", "cudnn")


# ---------------------------------------------------------------------------------------------
# Argument checks


def _check_cell(cell) -> None:
  if not isinstance(cell, _types.Cell):
    raise TypeError(f"cell must be a jr.Cell (e.g. jr.lstm(H)), got {type(cell).__name__}")


def _to_time_major(xs, time_major: bool, cell: _types.Cell):
  """`xs` time-major, and its batch shape: the axes between time and the cell's `input_rank`
  feature axes."""
  xs = jnp.asarray(xs)
  _types.check_float(xs, f"{cell.name}: xs")
  rank = cell.input_rank
  if xs.ndim < 1 + rank:
    features = "D" if rank == 1 else "H, W, C" if rank == 3 else f"<{rank} feature axes>"
    layout = f"(T, ..., {features})" if time_major else f"(..., T, {features})"
    raise ValueError(f"{cell.name}: xs must have shape {layout} (rank >= {1 + rank}), got "
                     f"{xs.shape}")
  xs_t = xs if time_major else jnp.moveaxis(xs, -1 - rank, 0)
  return xs_t, tuple(xs_t.shape[1:xs_t.ndim - rank])


def _batch_major(ys, batch: tuple):
  """Time-major outputs `(T, *batch, *core)` as `(*batch, T, *core)`."""
  return jax.tree_util.tree_map(lambda a: jnp.moveaxis(a, 0, len(batch)), ys)


def _start(cell: _types.Cell, xs, carry, time_major: bool):
  """What every driver starts from: `xs` time-major, its batch shape, the cell's initial carry
  for it, and `carry` (that initial carry when `None`, else checked against it)."""
  xs_t, batch = _to_time_major(xs, time_major, cell)
  init_carry = cell.initial_carry(batch, xs_t.dtype)
  if carry is None:
    carry = init_carry
  else:
    carry = _check_carry(carry, jax.eval_shape(lambda: init_carry), cell.name)
  return xs_t, batch, init_carry, carry


def _check_carry(carry, expected, cell_name: str):
  """Checks a user carry against the cell's `initial_carry` (structure, shapes, dtypes)."""
  exp_def = jax.tree_util.tree_structure(expected)
  got_def = jax.tree_util.tree_structure(carry)
  if exp_def != got_def:
    raise ValueError(f"{cell_name}: carry has structure {got_def}, expected {exp_def}")
  for got, exp in zip(jax.tree_util.tree_leaves(carry), jax.tree_util.tree_leaves(expected)):
    got = jnp.asarray(got)
    if got.shape != exp.shape:
      raise ValueError(f"{cell_name}: carry leaf has shape {got.shape}, expected {exp.shape} "
                       "(batch shape of xs + the cell's state shape)")
    if got.dtype != exp.dtype:
      raise TypeError(f"{cell_name}: carry leaf has dtype {got.dtype}, expected {exp.dtype} "
                      "(the dtype the cell computes in for these inputs)")
  return jax.tree_util.tree_map(jnp.asarray, carry)


def _check_input_size(cell, params, carry, xs, xs_t, time_major: bool) -> None:
  """Traces one step (no computation) so that a wrong feature size is reported with the shape
  of `xs` the caller passed, not of the one step or the time-major copy the cell sees."""
  try:
    jax.eval_shape(cell.step, params, carry, jax.ShapeDtypeStruct(xs_t.shape[1:], xs_t.dtype))
  except _types.FeatureSizeError as e:
    layout = "(T, ..., D)" if time_major else "(..., T, D)"
    raise _types.FeatureSizeError(
        f"{cell.name}: xs has shape {tuple(jnp.shape(xs))}, but the parameters expect "
        f"(..., {e.expected}) (xs is {layout}: its last axis, here {e.got}, is the input size)",
        e.expected, e.got) from None


def _check_resets(resets, batch: tuple, steps: int, time_major: bool, cell_name: str):
  """Returns resets time-major `(T, ...)`."""
  resets = jnp.asarray(resets)
  if resets.dtype != jnp.bool_:
    raise TypeError(f"{cell_name}: resets must be boolean, got {resets.dtype}")
  expected = (steps,) + batch if time_major else batch + (steps,)
  if resets.shape != expected:
    raise ValueError(f"{cell_name}: resets has shape {resets.shape}, expected {expected} "
                     "(the shape of xs without its feature axis)")
  return resets if time_major else jnp.moveaxis(resets, -1, 0)


def _remat_every(remat, steps: int) -> Optional[int]:
  if remat is None:
    return None
  if remat == "sqrt":
    return max(1, int(round(math.sqrt(steps))))
  if isinstance(remat, bool) or not isinstance(remat, (int, np.integer)) or remat < 1:
    raise ValueError(f"remat must be None, an int >= 1 or 'sqrt', got {remat!r}")
  return int(remat)


# ---------------------------------------------------------------------------------------------
# The driver


def scan(cell: _types.Cell, params: PyTree, xs, *, carry: PyTree = None, lengths=None,
         resets=None, reverse: bool = False, unroll: Union[int, bool] = 1,
         time_major: bool = False, remat=None, implementation: str = "auto"):
  """Runs `cell` over the time axis of `xs` with `jax.lax.scan`.

  Args:
    cell: a `jr.Cell`.
    params: the cell's parameters.
    xs: inputs `(..., T, D)` (batch-major), or `(T, ..., D)` with `time_major=True`. Any number of
      leading batch axes, including none.
    carry: the initial carry (leaves `(..., *state)`), or `None` for `cell.initial_carry` in the
      dtype the cell computes in for `xs`.
    lengths: optional int array `(...)`, each sequence's valid length, clipped to `[0, T]`
      (under `jax.experimental.checkify.checkify`, out-of-range values are reported instead).
      Steps `t >= length` leave the carry unchanged and output zeros; the returned carry is each
      sequence's carry at its own last valid step. The inputs at those steps never enter the
      computation: NaN or Inf garbage there gives the values and gradients of zero padding.
    resets: optional bool array `(..., T)` (`(T, ...)` time-major). `resets[..., t]` starts a new
      segment at step `t`: the carry entering step `t` is `cell.initial_carry` (not `carry`).
      In a reverse run segments still begin at the marked steps in forward time and each runs
      backwards on its own, so `resets[..., t]` replaces the carry entering step `t - 1`.
    reverse: run from the last valid step of each sequence back to the first. Outputs stay at
      their time positions and padding stays at the end.
    unroll: passed to `jax.lax.scan`.
    time_major: whether `xs`, `resets` and the outputs have time as their first axis.
    remat: `None`, an int `k >= 1` (keep the carry every `k` steps and recompute the steps in
      between in the backward pass), or "sqrt" (`k = round(sqrt(T))`). Values and gradients are
      those of the plain scan; the memory kept for the backward pass falls from every step's
      residuals to `T / k` carries plus one chunk's residuals. The fused and native paths run chunk by
      chunk under `jax.checkpoint`, so remat keeps their speed (all but "onednn").
    implementation: "auto" (a fast path where one serves this cell and these options and is
      measured faster on this backend, else the reference), "reference" (the plain `lax.scan`
      differentiated by JAX's autodiff: the path every fast path is pinned to in tests), "fused"
      (the fast path, or an error when the cell's functions are not the built-in ones; on CPU
      it runs the float32 LSTM's, GRU's and simple RNN's loops natively from a batch size that
      `jr.scan_plan` reports, see `jaxrnn.drivers._native`, with `unroll` ignored there), or
      "onednn" (oneDNN's LSTM kernel,
      what PyTorch's `nn.LSTM` runs on CPU: the built-in `jr.lstm` cell only, float32, CPU, no
      `lengths`, `resets` or `remat`, and the native kernel built and its runtime installed
      (both come with the install on Linux x86-64); otherwise a `ValueError` says why; `unroll` is ignored).
      It is differentiable in reverse mode, first order only (`jax.grad`, `jax.vjp`): `jax.jvp`
      and higher-order derivatives raise (it is a `jax.custom_vjp`); use "auto" or "fused" for
      those. "cudnn": cuDNN's LSTM kernel through `jax.experimental.rnn` on CUDA GPUs: the
      built-in `jr.lstm` only (no `proj_size`, peepholes or bfloat16 matmuls), float32, with
      `lengths` and `reverse` but no `resets` or `remat`; otherwise a `ValueError` says why.
      Reverse mode, first order only, like "onednn". "auto" never picks it: it has not been
      measured against the fused path on a GPU yet.

  Returns:
    `(carry, ys)`: the final carry and the outputs `(..., T, H)` (`(T, ..., H)` time-major).

  >>> import jax, jax.numpy as jnp, jaxrnn as jr
  >>> cell = jr.gru(4)
  >>> params = cell.init(jax.random.key(0), 3)
  >>> carry, ys = jr.scan(cell, params, jnp.ones((2, 5, 3)), lengths=jnp.array([5, 2]))
  >>> ys.shape, carry.shape
  ((2, 5, 4), (2, 4))
  """
  call = _prepare(cell, params, xs, carry, lengths, resets, reverse, time_major, remat,
                  implementation, "scan")
  xs_t, batch, carry, reverse = call.xs_t, call.batch, call.carry, call.reverse
  lengths, resets, steps, k = call.lengths, call.resets, xs_t.shape[0], call.remat_every
  plan = _plan.plan(cell, params, xs_t, carry, lengths=lengths, resets=resets, remat=remat,
                    implementation=implementation)
  if plan.driver == "onednn":
    carry, ys = _onednn.scan(cell, params, xs_t, carry, reverse=reverse)
    return carry, ys if call.time_major else _batch_major(ys, batch)
  if plan.driver == "cudnn":
    from jaxrnn.drivers import _cudnn  # jax.experimental.rnn is imported only when asked for
    carry, ys = _cudnn.run(params, xs_t, carry, lengths, reverse=reverse, time_major=True)
    return carry, ys if call.time_major else _batch_major(ys, batch)

  per_step = (jnp.arange(steps, dtype=jnp.int32), resets)
  if plan.driver in ("fused", "native"):
    plan_train = _plan.plan(cell, params, xs_t, carry, lengths=lengths, resets=resets,
                            remat=remat, implementation=implementation, training=True)
    run = functools.partial(_fused.fused_scan, cell, _plan.spec_for(cell), reverse=reverse,
                            unroll=unroll, plan=plan, plan_train=plan_train)
    if k is None:
      carry, ys = run(params, xs_t, carry, lengths, resets)
    else:
      def fused_chunk(c, inp):
        x, t, r = inp
        n = None if lengths is None else jnp.clip(lengths - t[0], 0, x.shape[0])
        return run(params, x, c, n, r)

      carry, ys = _over_chunks(jax.checkpoint(fused_chunk), carry, (xs_t,) + per_step, steps,
                               reverse, k)
    return carry, ys if call.time_major else _batch_major(ys, batch)

  if plan.hoist:
    inputs, fn = cell.project(params, xs_t), cell.recur
  else:
    inputs, fn = xs_t, cell.step
  body = masked_body(fn, params, call.init_carry, lengths)
  carry, ys = _run(body, carry, (inputs,) + per_step, steps, reverse, unroll, k)
  if not call.time_major:
    ys = _batch_major(ys, batch)
  return carry, ys


def scan_plan(cell: _types.Cell, params: PyTree, xs, *, carry: PyTree = None, lengths=None,
              resets=None, reverse: bool = False, unroll: Union[int, bool] = 1,
              time_major: bool = False, remat=None, implementation: str = "auto",
              training: bool = False) -> _plan.Plan:
  """Which path `jr.scan` takes for a call with these arguments, and why.

  Takes `jr.scan`'s arguments, checks them as it does, and returns the plan it follows instead
  of running it: a `Plan(driver, hoist, joint, reasons, family)` where `driver` is "reference"
  (the plain `lax.scan`), "fused" (the fused driver's XLA loop), "native" (the fused driver
  with its loops in C++, on CPU) or "onednn"; `hoist` says whether the input projection runs
  once before the loop, `joint` whether the fused loop runs one matmul a step instead of two,
  `reasons` why each was chosen, and `family` which kernel family's measured choices applied
  (None where the cell's functions are not a built-in cell's own). Nothing is computed: the
  answer depends only on the cell, the options, the shapes and dtypes, and the machine.

  Args:
    cell, params, xs, carry, lengths, resets: as for `jr.scan`.
    reverse, unroll, time_major, remat, implementation: as for `jr.scan`.
    training: the plan of the forward pass under differentiation (`jax.grad`, `jax.vjp`),
      where the fused driver may hoist differently.

  Returns:
    The `Plan`.

  Raises:
    ValueError: where `jr.scan` would raise: `implementation` "fused", "onednn" or "cudnn" not
      applying to the call (the message says why), or arguments of wrong shapes.

  >>> import jax, jax.numpy as jnp, jaxrnn as jr
  >>> cell = jr.lstm(8)
  >>> params = cell.init(jax.random.key(0), 3)
  >>> xs = jnp.ones((2, 5, 3))
  >>> jr.scan_plan(cell, params, xs).driver in ("native", "fused")  # native where built (CPU)
  True
  >>> mine = cell._replace(step=lambda p, c, x: cell.step(p, c, x))
  >>> plan = jr.scan_plan(mine, params, xs)
  >>> plan.driver, plan.family
  ('reference', None)
  >>> plan.reasons[0]
  "the lstm family's choices do not apply: the cell's step, project or recur was replaced"
  """
  del unroll  # no part of the plan
  training = _types.check_flag(training, "scan_plan: training")
  call = _prepare(cell, params, xs, carry, lengths, resets, reverse, time_major, remat,
                  implementation, "scan_plan")
  return _plan.plan(cell, params, call.xs_t, call.carry, lengths=call.lengths,
                    resets=call.resets, remat=remat, implementation=implementation,
                    training=training)


class _Call(NamedTuple):
  """A `jr.scan` call's arguments, checked: `xs_t` time-major, `resets` time-major and arranged
  for the direction, `lengths` int32 in `[0, T]` (both as given for "onednn", which refuses
  them)."""

  xs_t: Any
  batch: tuple
  init_carry: Any
  carry: Any
  lengths: Any
  resets: Any
  reverse: bool
  time_major: bool
  remat_every: Optional[int]


def _prepare(cell, params, xs, carry, lengths, resets, reverse, time_major, remat,
             implementation: str, what: str) -> _Call:
  """Checks a `jr.scan` call's arguments (`what` names the function in errors) and puts them
  in the form the drivers take."""
  _check_cell(cell)
  reverse = _types.check_flag(reverse, f"{what}: reverse")
  time_major = _types.check_flag(time_major, f"{what}: time_major")
  if implementation not in _IMPLEMENTATIONS:
    raise ValueError(f"implementation must be one of {_IMPLEMENTATIONS}, got {implementation!r}")
  xs_t, batch, init_carry, carry = _start(cell, xs, carry, time_major)
  steps = xs_t.shape[0]
  k = _remat_every(remat, steps)
  if implementation == "onednn":
    return _Call(xs_t, batch, init_carry, carry, lengths, resets, reverse, time_major, k)
  _check_input_size(cell, params, carry, xs, xs_t, time_major)
  if lengths is not None:
    lengths = _types.check_lengths(lengths, batch, steps, cell.name)
    # Padding never enters the arithmetic of any path: NaN or Inf there would reach every
    # gradient through the masked steps' (discarded) computation.
    xs_t = _types.zero_padding(xs_t, _types.valid_steps(lengths, steps, time_major=True))
  if resets is not None:
    resets = _check_resets(resets, batch, steps, time_major, cell.name)
    if reverse:
      # Step t (running backwards) is entered from step t + 1; it starts afresh when a segment
      # begins at t + 1, unless t + 1 lies in the padding.
      resets = jnp.concatenate([resets[1:], jnp.zeros_like(resets[:1])], axis=0)
      if lengths is not None:
        next_t = jnp.arange(1, steps + 1, dtype=jnp.int32).reshape((steps,) + (1,) * len(batch))
        resets = resets & (next_t < lengths[None])
  return _Call(xs_t, batch, init_carry, carry, lengths, resets, reverse, time_major, k)


def _run(body, carry, per_step, steps: int, reverse: bool, unroll, k: Optional[int]):
  """`lax.scan(body)` over `per_step`, checkpointed every `k` steps when `k` is given."""
  if k is None or k >= steps:
    if k is not None:
      body = jax.checkpoint(body)
    return jax.lax.scan(body, carry, per_step, reverse=reverse, unroll=unroll)

  @jax.checkpoint
  def chunk(c, inp):
    return jax.lax.scan(body, c, inp, reverse=reverse, unroll=unroll)

  return _over_chunks(chunk, carry, per_step, steps, reverse, k)


def _over_chunks(chunk, carry, per_step, steps: int, reverse: bool, k: int):
  """Runs `chunk(carry, per_step_slice) -> (carry, ys)` over consecutive slices of `k` steps
  of the time-major `per_step` (the last one shorter when `k` does not divide `T`), last slice
  first when `reverse`; `ys` come back whole, in time order. With `chunk` checkpointed, only
  the carries between slices are kept for the backward pass."""
  n_chunks, rest = divmod(steps, k)
  head = jax.tree_util.tree_map(
      lambda a: a[:n_chunks * k].reshape((n_chunks, k) + a.shape[1:]), per_step)
  tail = jax.tree_util.tree_map(lambda a: a[n_chunks * k:], per_step)

  def run_head(c):
    if not n_chunks:
      return c, None
    c, ys = jax.lax.scan(chunk, c, head, reverse=reverse)
    return c, jax.tree_util.tree_map(lambda a: a.reshape((n_chunks * k,) + a.shape[2:]), ys)

  def run_tail(c):
    return chunk(c, tail) if rest else (c, None)

  if reverse:
    carry, ys_tail = run_tail(carry)
    carry, ys_head = run_head(carry)
  else:
    carry, ys_head = run_head(carry)
    carry, ys_tail = run_tail(carry)
  parts = [ys for ys in (ys_head, ys_tail) if ys is not None]
  if len(parts) == 1:
    return carry, parts[0]
  return carry, jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a, b]), *parts)


# ---------------------------------------------------------------------------------------------
# The oracle


def static_unroll(cell: _types.Cell, params: PyTree, xs, *, carry: PyTree = None, lengths=None,
                  resets=None, reverse: bool = False, time_major: bool = False):
  """A Python-loop reference for `jr.scan`, written to be obviously right rather than fast.

  Without `lengths` and `resets` it calls `cell.step` once per time step on the whole batch.
  With either, `lengths` and `resets` must be concrete: it then runs every example on its own,
  one segment at a time over the valid part only, exactly as the semantics of `jr.scan` say,
  with no masking arithmetic. Same arguments and results as `jr.scan`.
  """
  _check_cell(cell)
  reverse = _types.check_flag(reverse, "static_unroll: reverse")
  time_major = _types.check_flag(time_major, "static_unroll: time_major")
  xs_t, batch, init_carry, carry = _start(cell, xs, carry, time_major)
  steps = xs_t.shape[0]
  if steps == 0:  # nothing to run: the carry as given, and empty outputs
    y = jax.eval_shape(lambda c, x: cell.step(params, c, x)[1], carry,
                       jax.ShapeDtypeStruct(xs_t.shape[1:], xs_t.dtype))
    ys = jax.tree_util.tree_map(lambda s: jnp.zeros((0,) + s.shape, s.dtype), y)
  elif lengths is None and resets is None:
    order = range(steps - 1, -1, -1) if reverse else range(steps)
    ys = [None] * steps
    for t in order:
      carry, ys[t] = cell.step(params, carry, xs_t[t])
    ys = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *ys)
  else:
    carry, ys = _unroll_each(cell, params, xs_t, carry, lengths, resets, reverse, time_major)
  if not time_major:
    ys = _batch_major(ys, batch)
  return carry, ys


def _concrete(a, what: str):
  try:
    return np.asarray(a)
  except jax.errors.TracerArrayConversionError as e:
    raise TypeError(f"static_unroll needs concrete {what} (it is a test oracle)") from e


def _unroll_each(cell, params, xs_t, carry, lengths, resets, reverse, time_major):
  steps, batch = xs_t.shape[0], tuple(xs_t.shape[1:xs_t.ndim - cell.input_rank])
  n = _types.prod(batch)
  lengths = (np.full(batch, steps) if lengths is None else
             _concrete(_types.check_lengths(lengths, batch, steps, cell.name), "lengths"))
  resets = (np.zeros((steps,) + batch, bool) if resets is None else
            _concrete(_check_resets(resets, batch, steps, time_major, cell.name), "resets"))
  flat = lambda tree, lead: jax.tree_util.tree_map(
      lambda a: a.reshape(lead + (n,) + a.shape[len(lead) + len(batch):]), tree)
  xs_f, carry_f = flat(xs_t, (steps,)), flat(carry, ())
  lengths_f, resets_f = lengths.reshape(n), resets.reshape(steps, n)
  fresh = cell.initial_carry((), xs_t.dtype)

  finals, outputs = [], []
  for b in range(n):
    length = int(lengths_f[b])
    starts = [t for t in range(length) if t == 0 or resets_f[t, b]]
    segments = [(s, e) for s, e in zip(starts, starts[1:] + [length])]
    c = jax.tree_util.tree_map(lambda a: a[b], carry_f)
    ys = {}
    if reverse:
      for i, (s, e) in enumerate(reversed(segments)):
        c = c if i == 0 else fresh
        for t in range(e - 1, s - 1, -1):
          c, ys[t] = cell.step(params, c, xs_f[t, b])
    else:
      for s, e in segments:
        c = fresh if (s > 0 or resets_f[0, b]) else c
        for t in range(s, e):
          c, ys[t] = cell.step(params, c, xs_f[t, b])
    finals.append(c)
    outputs.append(ys)

  y_like = jax.eval_shape(lambda: cell.step(params, fresh, xs_f[0, 0])[1])
  zero = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), y_like)
  per_t = [jax.tree_util.tree_map(lambda *a: jnp.stack(a), *[o.get(t, zero) for o in outputs])
           for t in range(steps)]
  ys = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *per_t)
  unflat = lambda tree, lead: jax.tree_util.tree_map(
      lambda a: a.reshape(lead + batch + a.shape[len(lead) + 1:]), tree)
  carry = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *finals)
  return unflat(carry, ()), unflat(ys, (steps,))
