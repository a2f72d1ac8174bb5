"""`jr.bidirectional`: one layer forward in time, one backward, outputs merged."""

from __future__ import annotations

from typing import Callable, Optional, Union

import jax
import jax.numpy as jnp

from jaxrnn import _types
from jaxrnn.layers import _dropout, _rnn, _stack

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
  return _flip(jnp.asarray(xs), lengths, time_major, (), "flip_sequences")


def _flip(xs, lengths, time_major: bool, frame: tuple, what: str):
  """`flip_sequences` for steps of shape `frame + (D,)`: `xs (..., T, *frame, D)`."""
  rank = len(frame) + 1
  if xs.ndim < rank + 1:
    raise ValueError(f"{what}: xs must have shape {_rnn.layout(frame, time_major)} (rank >= "
                     f"{rank + 1}), got {xs.shape}")
  xs_t = xs if time_major else jnp.moveaxis(xs, -rank - 1, 0)
  steps, batch = xs_t.shape[0], tuple(xs_t.shape[1:xs_t.ndim - rank])
  if lengths is not None:
    lengths = _types.check_lengths(lengths, batch, steps, what)
  out = _take_time(xs_t, _flip_index(steps, lengths, batch))
  return out if time_major else jnp.moveaxis(out, 0, -rank - 1)


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

  Layers over frames (`jr.rnn` of `jr.conv_lstm` or `jr.conv_gru`) take `xs (..., T, H, W, C)`:
  each sequence is reversed along time, frames left whole, and "concat" joins the two halves'
  outputs on the channel axis, `(..., T, H', W', F_f + F_b)`. Two halves built for different
  inputs (frames and vectors, or frames of different sizes) raise `ValueError`.

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
  shape_f, shape_b = _rnn.step_shape(forward), _rnn.step_shape(backward)
  if shape_f is not None and shape_b is not None and not (
      _stack.fits(shape_f, shape_b) and _stack.fits(shape_b, shape_f)):
    raise ValueError(f"bidirectional: the forward layer takes {_rnn.describe(shape_f)} and the "
                     f"backward layer {_rnn.describe(shape_b)}; both halves read the same inputs")
  declared = shape_f if shape_f is not None else shape_b
  # A layer that does not declare its steps (a user-written one) is taken to read vectors.
  frame = () if declared is None else declared
  rank = len(frame) + 1

  def init(key, input_size):
    kf, kb = jax.random.split(key)
    return {"forward": forward.init(kf, input_size), "backward": backward.init(kb, input_size)}

  def apply(params, xs, *, carry=None, lengths=None, resets=None, key=None, train=None):
    key = _dropout.training_key(key, train, "bidirectional")
    xs = jnp.asarray(xs)
    layout = _rnn.layout(frame, time_major)
    if xs.ndim < rank + 1:
      raise ValueError(f"bidirectional: xs must have shape {layout}, got {xs.shape}")
    if not _stack.fits(frame, tuple(xs.shape[xs.ndim - rank:-1])):
      raise ValueError(f"bidirectional: xs must have shape {layout} (the layers take "
                       f"{_rnn.describe(frame)}), got {xs.shape}")
    if lengths is not None:
      steps = xs.shape[0] if time_major else xs.shape[-rank - 1]
      batch = xs.shape[1:xs.ndim - rank] if time_major else xs.shape[:-rank - 1]
      lengths = _types.check_lengths(lengths, batch, steps, "bidirectional")
    carry_f, carry_b = (None, None) if carry is None else carry
    key_f, key_b = (None, None) if key is None else jax.random.split(key)
    flipped_resets = None if resets is None else _flip_resets(resets, lengths, time_major)
    _check_carries(params, xs, carry_f, carry_b, lengths, resets, flipped_resets, key_f, key_b)
    carry_f, ys_f = forward.apply(params["forward"], xs, carry=carry_f, lengths=lengths,
                                  resets=resets, key=key_f)
    carry_b, ys_b = backward.apply(
        params["backward"], _flip(xs, lengths, time_major, frame, "bidirectional"),
        carry=carry_b, lengths=lengths, resets=flipped_resets, key=key_b)
    out_frame = tuple(ys_b.shape[xs.ndim - rank:-1])
    ys_b = _flip(ys_b, lengths, time_major, out_frame, "bidirectional")
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
  layer = _types.Layer(init=init, apply=apply, time_major=time_major, streamable=False,
                       initial_carry=initial_carry if known else None)
  return _rnn.declare_step_shape(layer, declared)
