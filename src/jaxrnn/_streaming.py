"""Streaming: a long sequence run chunk by chunk (or step by step), state carried between calls.

A layer's `apply` already takes and returns its carry, so streaming is only a jitted wrapper
that refuses layers which cannot stream (a bidirectional layer needs each sequence's end before
its first output).
"""

from __future__ import annotations

from typing import Callable, Optional, Union

import jax
import jax.numpy as jnp

from jaxrnn import _types
from jaxrnn.layers import _rnn, _stack


def _as_layer(layer_or_cell, what: str) -> _types.Layer:
  if isinstance(layer_or_cell, _types.Cell):
    return _rnn.rnn(layer_or_cell)
  if not isinstance(layer_or_cell, _types.Layer):
    raise TypeError(f"{what}: expected a jr.Layer or jr.Cell, got {type(layer_or_cell).__name__}")
  if layer_or_cell.reverse:
    raise ValueError(f"{what}: this layer runs backwards in time (jr.rnn(cell, reverse=True), "
                     "alone or in a stack): its first output needs the end of the sequence, so "
                     "chunks cannot be run one after another; run it on the whole sequence")
  if not layer_or_cell.streamable:
    raise ValueError(f"{what}: this layer cannot stream: a bidirectional layer (alone or in a "
                     "stack) needs each whole sequence before its first output; run it on the "
                     "whole sequence instead")
  return layer_or_cell


def stream(layer: Union[_types.Layer, _types.Cell]) -> Callable:
  """A jitted `run(params, carry, xs, *, lengths=None, resets=None, key=None) -> (carry, ys)`
  for running a long sequence in chunks `xs (..., T_chunk, D)`.

  Pass `carry=None` for the first chunk and the returned carry afterwards: the concatenated
  outputs equal one call on the whole sequence, and within a chunk gradients (with respect to
  the chunk's inputs, the params and the incoming carry) are those of the whole-sequence run
  truncated at the chunk boundary, which is truncated BPTT. `lengths` are per chunk. Only
  forward-running layers stream: `jr.bidirectional` and a reverse `jr.rnn` (alone or in a
  stack) raise `ValueError`.

  Layers over frames (`jr.rnn` of `jr.conv_lstm` or `jr.conv_gru`, or a stack of them) stream
  the same way, in chunks `xs (..., T_chunk, H, W, C)`.

  Args:
    layer: a `jr.Layer` (`jr.rnn`, `jr.stack`, `jr.dropout`, ...) or a `jr.Cell` (lifted with
      `jr.rnn`).

  Returns:
    The jitted chunk function (it retraces once, when `carry` goes from `None` to arrays).

  >>> import jax, jax.numpy as jnp, jaxrnn as jr
  >>> net = jr.stack(jr.rnn(jr.lstm(4)), jr.rnn(jr.gru(3)))
  >>> params = net.init(jax.random.key(0), 2)
  >>> run = jr.stream(net)
  >>> xs = jnp.ones((1, 10, 2))
  >>> carry, ys1 = run(params, None, xs[:, :6])
  >>> carry, ys2 = run(params, carry, xs[:, 6:])
  >>> bool(jnp.allclose(jnp.concatenate([ys1, ys2], 1), net.apply(params, xs)[1], atol=1e-6))
  True
  """
  layer = _as_layer(layer, "stream")

  @jax.jit
  def run(params, carry, xs, lengths=None, resets=None, key=None):
    return layer.apply(params, xs, carry=carry, lengths=lengths, resets=resets, key=key)

  return lambda params, carry, xs, *, lengths=None, resets=None, key=None: run(
      params, carry, xs, lengths, resets, key)


def step_layer(layer: Union[_types.Layer, _types.Cell], params, carry, x, *, key=None,
               time_major: Optional[bool] = None):
  """One step of online inference: `x (..., D)` in, `(carry, y (..., H))` out.

  Equivalent to `layer.apply(params, x[..., None, :], carry=carry)` with the time axis
  removed (`x[None]` for a time-major layer). For a layer over frames (`jr.rnn` of
  `jr.conv_lstm` or `jr.conv_gru`, or a stack of them), `x` is one frame `(..., H, W, C)` and
  the time axis goes before the frame's axes; `y` is `(..., H', W', F)`. `time_major=None`
  takes the layer's own layout (`Layer.time_major`); a value that contradicts it raises
  `ValueError`. Pass `carry=None` at the first step. Jit the caller (or use `jr.stream` on
  chunks of one step) for speed.

  Raises:
    ValueError: for a layer that cannot stream, or `x` of a rank below the layer's step.

  >>> import jax, jax.numpy as jnp, jaxrnn as jr
  >>> layer = jr.rnn(jr.gru(3))
  >>> params = layer.init(jax.random.key(0), 2)
  >>> carry, y = jr.step_layer(layer, params, None, jnp.ones((5, 2)))
  >>> y.shape
  (5, 3)
  """
  layer = _as_layer(layer, "step_layer")
  time_major = bool(_stack.layout((layer,), time_major, "step_layer"))
  frame = _rnn.step_shape(layer) or ()
  x = jnp.asarray(x)
  if x.ndim < len(frame) + 1:
    raise ValueError(f"step_layer: x must be one step of the layer's input, "
                     f"({_rnn.step_axes(frame)}) with any leading batch axes, got "
                     f"shape {x.shape}")
  # The time axis goes between the batch axes and the step's own axes.
  lead = 0 if time_major else x.ndim - len(frame) - 1
  carry, ys = layer.apply(params, jnp.expand_dims(x, lead), carry=carry, key=key)
  return carry, jnp.squeeze(ys, axis=lead)
