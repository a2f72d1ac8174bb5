"""`jr.bidirectional`: one layer forward in time, one backward, outputs merged."""

from __future__ import annotations

from typing import Callable, Optional, Union

import jax
import jax.numpy as jnp

from jaxrnn import _types
from jaxrnn.layers import _dropout, _stack

_MERGES = {
    "concat": lambda a, b: jnp.concatenate([a, b], axis=-1),
    "sum": lambda a, b: a + b,
}


def _flip_index(steps: int, lengths, batch: tuple):
  """`(T, ...)` int index reversing each sequence's valid part and leaving the padding put;
  `lengths` already checked and clipped to `[0, T]`."""
  t = jnp.arange(steps, dtype=jnp.int32).reshape((steps,) + (1,) * len(batch))
  if lengths is None:
    return jnp.broadcast_to(steps - 1 - t, (steps,) + batch)
  lengths = lengths[None]
  return jnp.where(t < lengths, lengths - 1 - t, t)


def _take_time(a, index):
  """`a (T, ..., *rest)` gathered along time by `index (T, ...)`."""
  index = index.reshape(index.shape + (1,) * (a.ndim - index.ndim))
  return jnp.take_along_axis(a, jnp.broadcast_to(index, a.shape), axis=0)


def flip_sequences(xs, lengths=None, *, time_major: bool = False):
  """Reverses each sequence of `xs (..., T, D)` over its valid part `[0, length)`.

  Padding stays where it is; the flip is its own inverse. With `time_major=True`, `xs` is
  `(T, ..., D)`. `lengths (...)` are clipped to `[0, T]` (reported instead under
  `jax.experimental.checkify.checkify`).

  >>> import jax.numpy as jnp, jaxrnn as jr
  >>> xs = jnp.arange(4.0).reshape(1, 4, 1)
  >>> jr.flip_sequences(xs, jnp.array([3]))[0, :, 0].tolist()
  [2.0, 1.0, 0.0, 3.0]
  """
  time_major = _types.check_flag(time_major, "flip_sequences: time_major")
  xs = jnp.asarray(xs)
  if xs.ndim < 2:
    layout = "(T, ..., D)" if time_major else "(..., T, D)"
    raise ValueError(f"flip_sequences: xs must have shape {layout} (rank >= 2), got {xs.shape}")
  xs_t = xs if time_major else jnp.moveaxis(xs, -2, 0)
  steps, batch = xs_t.shape[0], tuple(xs_t.shape[1:-1])
  if lengths is not None:
    lengths = _types.check_lengths(lengths, batch, steps, "flip_sequences")
  out = _take_time(xs_t, _flip_index(steps, lengths, batch))
  return out if time_major else jnp.moveaxis(out, 0, -2)


def _flip_resets(resets, lengths, time_major: bool):
  """Resets for the flipped sequence: a segment starting at `s >= 1` in forward time ends the
  flipped segment that covers `s - 1`, so the flipped run starts afresh at `length - s`."""
  r = resets if time_major else jnp.moveaxis(resets, -1, 0)
  steps, batch = r.shape[0], tuple(r.shape[1:])
  t = jnp.arange(steps, dtype=jnp.int32).reshape((steps,) + (1,) * len(batch))
  length = (jnp.full((1,) + batch, steps, jnp.int32) if lengths is None
            else lengths[None])
  source = jnp.clip(length - t, 0, steps - 1)
  flipped = _take_time(r, source) & (t >= 1) & (t < length)
  return flipped if time_major else jnp.moveaxis(flipped, 0, -1)


def bidirectional(forward: _types.Layer, backward: _types.Layer, *,
                  merge: Union[str, Callable] = "concat", time_major: Optional[bool] = None
                  ) -> _types.Layer:
  """Runs `forward` over each sequence and `backward` over each sequence reversed.

  The backward layer is given each sequence's valid part reversed (it starts at each
  sequence's last valid step, see `flip_sequences`), so pass an ordinary forward-running layer
  for both: a layer that runs backwards itself (`jr.rnn(cell, reverse=True)`, or a stack
  holding one) would be reversed twice, and raises `ValueError`. Its outputs are flipped back,
  so `ys[..., t, :]` of both directions refer to step t. Lengths are clipped to `[0, T]`.

  Params: `{"forward": ..., "backward": ...}`; carry: `(forward_carry, backward_carry)`, the
  backward one being the carry after each sequence's first step. `initial_carry(batch_shape=(),
  dtype=None)` is the pair of the halves' initial carries (`None` if either has none).

  Args:
    forward, backward: `jr.Layer`s over the same inputs, with carries of the same structure.
    merge: "concat" (outputs `(..., T, H_f + H_b)`), "sum" (equal output sizes), or
      `f(y_forward, y_backward)`.
    time_major: whether inputs and outputs are `(T, ..., D)`; `None` takes the layout the two
      layers were built with (batch-major if neither says). Layers of another layout, or of
      two layouts, raise `ValueError`.

  >>> import jax, jax.numpy as jnp, jaxrnn as jr
  >>> layer = jr.bidirectional(jr.rnn(jr.lstm(4)), jr.rnn(jr.lstm(4)))
  >>> params = layer.init(jax.random.key(0), 3)
  >>> carry, ys = layer.apply(params, jnp.ones((2, 5, 3)), lengths=jnp.array([5, 3]))
  >>> ys.shape
  (2, 5, 8)
  """
  for what, layer in (("forward", forward), ("backward", backward)):
    if not isinstance(layer, _types.Layer):
      raise TypeError(f"bidirectional: {what} must be a jr.Layer, got {type(layer).__name__}")
  if isinstance(merge, str):
    if merge not in _MERGES:
      raise ValueError(f"merge must be one of {tuple(_MERGES)} or a callable, got {merge!r}")
    merge_fn = _MERGES[merge]
  elif callable(merge):
    merge_fn = merge
  else:
    raise TypeError(f"merge must be a string or a callable, got {type(merge).__name__}")
  for what, layer in (("forward", forward), ("backward", backward)):
    if layer.reverse:
      raise ValueError(
          f"bidirectional: the {what} layer runs backwards in time (reverse=True); pass "
          "forward-running layers for both halves: bidirectional reverses each sequence for "
          "the backward half itself, and a reverse layer there would undo it")
  time_major = bool(_stack.layout((forward, backward), time_major, "bidirectional"))

  def init(key, input_size):
    kf, kb = jax.random.split(key)
    return {"forward": forward.init(kf, input_size), "backward": backward.init(kb, input_size)}

  def apply(params, xs, *, carry=None, lengths=None, resets=None, key=None, train=None):
    key = _dropout.training_key(key, train, "bidirectional")
    xs = jnp.asarray(xs)
    if xs.ndim < 2:
      raise ValueError(f"bidirectional: xs must have shape "
                       f"{'(T, ..., D)' if time_major else '(..., T, D)'}, got {xs.shape}")
    if lengths is not None:
      steps = xs.shape[0] if time_major else xs.shape[-2]
      batch = xs.shape[1:-1] if time_major else xs.shape[:-2]
      lengths = _types.check_lengths(lengths, batch, steps, "bidirectional")
    carry_f, carry_b = (None, None) if carry is None else carry
    key_f, key_b = (None, None) if key is None else jax.random.split(key)
    flipped_resets = None if resets is None else _flip_resets(resets, lengths, time_major)
    _check_carries(params, xs, carry_f, carry_b, lengths, resets, flipped_resets, key_f, key_b)
    carry_f, ys_f = forward.apply(params["forward"], xs, carry=carry_f, lengths=lengths,
                                  resets=resets, key=key_f)
    carry_b, ys_b = backward.apply(
        params["backward"], flip_sequences(xs, lengths, time_major=time_major), carry=carry_b,
        lengths=lengths, resets=flipped_resets, key=key_b)
    ys_b = flip_sequences(ys_b, lengths, time_major=time_major)
    if merge == "sum" and ys_f.shape != ys_b.shape:
      raise ValueError(f"bidirectional(merge='sum'): the forward outputs have shape "
                       f"{ys_f.shape} and the backward outputs {ys_b.shape}; summing needs "
                       "equal output sizes (or use merge='concat')")
    return (carry_f, carry_b), merge_fn(ys_f, ys_b)

  def _check_carries(params, xs, carry_f, carry_b, lengths, resets, flipped_resets, key_f,
                     key_b):
    # Abstract evaluation (no computation) so that a mismatch is reported before either half
    # runs, naming both structures.
    out_f = jax.eval_shape(lambda: forward.apply(params["forward"], xs, carry=carry_f,
                                                 lengths=lengths, resets=resets, key=key_f)[0])
    out_b = jax.eval_shape(lambda: backward.apply(params["backward"], xs, carry=carry_b,
                                                  lengths=lengths, resets=flipped_resets,
                                                  key=key_b)[0])
    def_f, def_b = jax.tree_util.tree_structure(out_f), jax.tree_util.tree_structure(out_b)
    if def_f != def_b:
      raise ValueError(f"bidirectional: the forward and backward layers' carries differ in "
                       f"structure: {def_f} vs {def_b}")

  def initial_carry(batch_shape=(), dtype=None):
    return (forward.initial_carry(batch_shape, dtype), backward.initial_carry(batch_shape, dtype))

  known = forward.initial_carry is not None and backward.initial_carry is not None
  # The backward half needs each sequence's end before its first output: not streamable.
  return _types.Layer(init=init, apply=apply, time_major=time_major, streamable=False,
                      initial_carry=initial_carry if known else None)
