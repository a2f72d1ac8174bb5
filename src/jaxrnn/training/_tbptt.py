"""Truncated backpropagation through time over long sequences, inside one jitted program."""

from __future__ import annotations

import numbers
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import optax

from jaxrnn.training import _step

PyTree = Any


def _check_window(window, stride):
  for name, value in (("window", window), ("stride", stride)):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
      raise TypeError(f"tbptt_step: {name} must be a positive int, got {value!r}")
    if value < 1:
      raise ValueError(f"tbptt_step: {name} must be >= 1, got {value}")
  if stride > window:
    raise ValueError(f"tbptt_step: stride={stride} exceeds window={window}: the steps between "
                     "windows would be skipped, and the carry could not be passed across them")
  return int(window), int(stride)


def _sequence_length(sequence, time_axis: int) -> int:
  leaves = jax.tree_util.tree_leaves(sequence)
  if not leaves:
    raise ValueError("tbptt_step: the sequence holds no arrays")
  lengths = {jnp.shape(a)[time_axis] if jnp.ndim(a) > time_axis else None for a in leaves}
  if None in lengths or len(lengths) != 1:
    raise ValueError(f"tbptt_step: every array of the sequence needs the same length along "
                     f"time_axis={time_axis}; got shapes {[jnp.shape(a) for a in leaves]}")
  return lengths.pop()


def tbptt_step(loss_fn: Callable, tx: optax.GradientTransformation, *, window: int,
               stride: Optional[int] = None, accumulate: bool = False, has_aux: bool = False,
               skip_nonfinite: bool = True, time_axis: int = 1) -> Callable:
  """Truncated BPTT (Williams & Peng 1990) over a long sequence, as one jitted call:
  `run(params, opt_state, carry, sequence, key) -> (params, opt_state, carry, metrics)`.

  The sequence (a pytree of arrays whose axis `time_axis` is time, of length `T`) is cut into
  windows of `window` steps starting every `stride` steps (`stride <= window`; `(T - window)`
  must be a multiple of `stride`). For each window `loss_fn(params, carry, chunk, key)` returns
  `(loss, carry_next)` (`((loss, aux), carry_next)` with `has_aux=True`), where `carry_next`
  must be the carry after the chunk's first `stride` steps (its last step when
  `stride == window`, the default). Gradients flow through the window only: the carry passed to
  the next window goes through `jax.lax.stop_gradient`.

  * `accumulate=False`: one Optax update after every window (the carry for the next window is
    the one computed with the parameters before that update).
  * `accumulate=True`: the gradients of all windows, with the same parameters, are averaged
    and applied in one update at the end.

  The windows run in a `lax.scan`, so the program is compiled once per shape of the sequence,
  not once per window. With `carry=None` the first window is given `None` (a layer's initial
  carry) and the rest run in the scan. `metrics` holds, per window (`(n_windows,)`), `"loss"`,
  `"grad_norm"`, `"finite"` and `"nonfinite_leaf"` in update mode; in accumulate mode the
  losses per window and, for the one update, `"grad_norm"`, `"finite"` and
  `"nonfinite_leaf"` of the averaged gradient. `"aux"` is stacked per window.

  With a layer (`jr.rnn`, `jr.stack`, ...) and `stride == window`::

      def loss_fn(params, carry, chunk, key):
        tokens, targets = chunk
        carry, ys = layer.apply(params["rnn"], embed(params, tokens), carry=carry)
        return jr.masked_cross_entropy(head(params, ys), targets), carry

  Args:
    loss_fn: see above. `key` is `jax.random.fold_in(key, window index)`, or None.
    tx: an `optax.GradientTransformation`.
    window: k, the number of steps gradients flow through.
    stride: the steps between window starts (default `window`: disjoint windows).
    accumulate: one update over all windows instead of one per window.
    has_aux: whether `loss_fn`'s first output is `(loss, aux)`.
    skip_nonfinite: as in `jr.train_step`: a non-finite loss or gradient leaves params and
      optimizer state unchanged.
    time_axis: the time axis of every array of the sequence (1: batch-major `(B, T, ...)`).

  Returns:
    The jitted `run`.

  References:
    Williams & Peng, "An Efficient Gradient-Based Algorithm for On-Line Training of Recurrent
    Network Trajectories", Neural Computation 1990.
  """
  if not callable(loss_fn):
    raise TypeError(f"tbptt_step: loss_fn must be callable, got {type(loss_fn).__name__}")
  tx = _step.check_optimizer(tx, "tbptt_step")
  window, stride = _check_window(window, window if stride is None else stride)
  for name, flag in (("accumulate", accumulate), ("has_aux", has_aux),
                     ("skip_nonfinite", skip_nonfinite)):
    if not isinstance(flag, bool):
      raise TypeError(f"tbptt_step: {name} must be a bool, got {flag!r}")

  def window_grad(params, carry, chunk, key):
    def scalar(p):
      result = loss_fn(p, carry, chunk, key)
      if not isinstance(result, tuple) or len(result) != 2:
        raise TypeError("tbptt_step: loss_fn must return (loss, carry_next) (((loss, aux), "
                        f"carry_next) with has_aux=True), got {type(result).__name__}")
      out, carry_next = result
      _step.check_loss(out[0] if has_aux else out, "tbptt_step")
      return out, carry_next

    (out, carry_next), grads = jax.value_and_grad(scalar, has_aux=True)(params)
    loss, aux = out if has_aux else (out, None)
    return loss, aux, jax.lax.stop_gradient(carry_next), grads

  def run(params, opt_state, carry, sequence, key):
    steps = _sequence_length(sequence, time_axis)
    if steps < window:
      raise ValueError(f"tbptt_step: window={window} is longer than the sequence (T = {steps})")
    if (steps - window) % stride:
      raise ValueError(f"tbptt_step: T - window = {steps - window} is not a multiple of "
                       f"stride={stride}; trim the sequence so that windows cover it exactly "
                       "(no step is dropped silently)")
    n = (steps - window) // stride + 1
    chunk_at = lambda i: jax.tree_util.tree_map(
        lambda a: jax.lax.dynamic_slice_in_dim(a, i * stride, window, axis=time_axis), sequence)
    key_at = lambda i: None if key is None else jax.random.fold_in(key, i)

    def update_body(state, i):
      params, opt_state, carry = state
      loss, aux, carry, grads = window_grad(params, carry, chunk_at(i), key_at(i))
      params, opt_state, metrics = _step.apply_gradients(tx, params, opt_state, grads, loss,
                                                         skip_nonfinite)
      if has_aux:
        metrics["aux"] = aux
      return (params, opt_state, carry), metrics

    def accumulate_body(state, i):
      total, carry = state
      loss, aux, carry, grads = window_grad(params, carry, chunk_at(i), key_at(i))
      total = jax.tree_util.tree_map(jnp.add, total, grads)
      return (total, carry), ({"loss": loss, "aux": aux} if has_aux else {"loss": loss})

    body = accumulate_body if accumulate else update_body
    first_state = ((jax.tree_util.tree_map(jnp.zeros_like, params), carry) if accumulate
                   else (params, opt_state, carry))
    # A None carry (the layer's initial one) has no fixed structure for the scan: the first
    # window runs on its own.
    start = 0
    head = None
    if carry is None:
      first_state, head = body(first_state, jnp.int32(0))
      start = 1
    state, metrics = jax.lax.scan(body, first_state, jnp.arange(start, n, dtype=jnp.int32))
    if head is not None:
      metrics = jax.tree_util.tree_map(lambda h, m: jnp.concatenate([h[None], m]), head,
                                       metrics)
    if not accumulate:
      params, opt_state, carry = state
      return params, opt_state, carry, metrics
    total, carry = state
    grads = jax.tree_util.tree_map(lambda g: g / n, total)
    params, opt_state, update = _step.apply_gradients(
        tx, params, opt_state, grads, jnp.mean(metrics["loss"]), skip_nonfinite)
    metrics.update({k: v for k, v in update.items() if k != "loss"})
    return params, opt_state, carry, metrics

  return jax.jit(run)
