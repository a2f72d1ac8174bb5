"""`jr.stack`: layers applied one after another, each over the whole sequence."""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from jaxrnn import _types
from jaxrnn.layers import _dropout


def output_size(layer: _types.Layer, params, input_size: int, dtype=jnp.float32) -> int:
  """The feature size of `layer.apply(params, xs)[1]` for `xs (1, 1, input_size)`, found by
  abstract evaluation (no computation)."""
  xs = jax.ShapeDtypeStruct((1, 1, input_size), dtype)
  return jax.eval_shape(lambda p, x: layer.apply(p, x)[1], params, xs).shape[-1]


def layout(layers, time_major: Optional[bool], what: str) -> Optional[bool]:
  """The time layout a combinator runs in: `time_major` if given, else the one its children
  declare (`Layer.time_major`), `None` if none does. Children that declare different layouts,
  or a layout other than the one given, raise `ValueError`: with `B == T` a mismatch would run
  and return wrong numbers."""
  if time_major is not None:
    time_major = _types.check_flag(time_major, f"{what}: time_major")
  declared = {i: layer.time_major for i, layer in enumerate(layers)
              if getattr(layer, "time_major", None) is not None}
  name = lambda tm: "time-major (T, ..., D)" if tm else "batch-major (..., T, D)"
  for i, tm in declared.items():
    if time_major is not None and tm != time_major:
      raise ValueError(f"{what}(time_major={time_major}): layer {i} is {name(tm)}; build every "
                       f"layer with time_major={time_major}")
  if len(set(declared.values())) > 1:
    raise ValueError(f"{what}: the layers mix layouts: "
                     + ", ".join(f"layer {i} is {name(tm)}" for i, tm in declared.items())
                     + "; build them all with one time_major")
  if time_major is not None:
    return bool(time_major)
  return next(iter(declared.values()), None)


def stack(*layers: _types.Layer, dropout: float = 0.0, residual: bool = False,
          time_major: Optional[bool] = None) -> _types.Layer:
  """Composes layers in depth: layer `i + 1` reads the whole output sequence of layer `i`.

  Running layer by layer (rather than step by step through all layers) keeps each layer's input
  projection one matmul over the whole sequence. For layer `i` with input `x_i`:

      y_i = layer_i(x_i) (+ x_i if residual);   x_{i+1} = dropout(y_i)   (not after the last)

  Params are a tuple, one entry a layer; so is the carry (`carry=None` or a tuple whose entries
  may be `None`). `lengths` and `resets` go to every layer. Dropout between layers is active
  only when `key` is given (`key=None` is evaluation: no dropout anywhere); the key is split
  into one key per layer and one per dropout site.

  Args:
    *layers: `jr.Layer`s; each one's input size is the previous one's output size.
    dropout: the drop probability in [0, 1) applied to every layer's output except the last
      (as `torch.nn.LSTM(dropout=...)`).
    residual: add each layer's input to its output. Every layer's output size must equal its
      input size (checked at `init` and at trace time, `ValueError` otherwise). Padding steps
      (`t >= lengths`) stay zero.
    time_major: where the time axis is (`(T, ..., D)` when True); `None` takes the layout the
      layers were built with (batch-major if none says). Layers of different layouts, or of
      a layout other than the one given, raise `ValueError`.

  Returns:
    A `jr.Layer` mapping `xs (..., T, D)` to `ys (..., T, H_last)`. Its
    `initial_carry(batch_shape=(), dtype=None)` is the tuple of its layers' initial carries,
    each for inputs of `dtype` (what `apply` starts from when every layer computes in its
    inputs' dtype, or all fix the same one); `None` if a layer has no `initial_carry`.

  >>> import jax, jax.numpy as jnp, jaxrnn as jr
  >>> net = jr.stack(jr.rnn(jr.gru(8)), jr.rnn(jr.gru(4)), dropout=0.1)
  >>> params = net.init(jax.random.key(0), 3)
  >>> carry, ys = net.apply(params, jnp.ones((2, 5, 3)), key=jax.random.key(1))
  >>> ys.shape, len(carry)
  ((2, 5, 4), 2)
  """
  if not layers:
    raise ValueError("stack needs at least one layer")
  for i, layer in enumerate(layers):
    if not isinstance(layer, _types.Layer):
      raise TypeError(f"stack: layer {i} must be a jr.Layer, got {type(layer).__name__}")
  rate = _types.check_rate(dropout, "stack: dropout")
  n = len(layers)
  time_major = layout(layers, time_major, "stack")

  def check_residual(i, size_in, size_out):
    if residual and size_in != size_out:
      raise ValueError(
          f"stack(residual=True): layer {i} maps {size_in} features to {size_out}; a residual "
          "connection needs equal input and output sizes")

  def init(key, input_size):
    params, size = [], input_size
    for i, (layer, k) in enumerate(zip(layers, jax.random.split(key, n))):
      params.append(layer.init(k, size))
      out = output_size(layer, params[-1], size)
      check_residual(i, size, out)
      size = out
    return tuple(params)

  def apply(params, xs, *, carry=None, lengths=None, resets=None, key=None, train=None):
    key = _dropout.training_key(key, train, "stack")
    if not isinstance(params, (tuple, list)) or len(params) != n:
      raise ValueError(f"stack: params must be a sequence of {n} layer params")
    carries = (None,) * n if carry is None else tuple(carry)
    if len(carries) != n:
      raise ValueError(f"stack: carry must have one entry per layer ({n}), got {len(carries)}")
    keys = [None] * (2 * n) if key is None else list(jax.random.split(key, 2 * n))
    xs = jnp.asarray(xs)
    if residual and lengths is not None:
      steps = xs.shape[0] if time_major else xs.shape[-2]
      batch = xs.shape[1:-1] if time_major else xs.shape[:-2]
      valid = _types.valid_steps(_types.check_lengths(lengths, batch, steps, "stack"), steps,
                                 bool(time_major))
    finals = []
    for i, (layer, p, c) in enumerate(zip(layers, params, carries)):
      c, ys = layer.apply(p, xs, carry=c, lengths=lengths, resets=resets, key=keys[i])
      if residual:
        check_residual(i, xs.shape[-1], ys.shape[-1])
        if ys.shape != xs.shape:
          raise ValueError(f"stack(residual=True): layer {i} maps inputs of shape {xs.shape} to "
                           f"outputs of shape {ys.shape}; a residual connection needs equal "
                           "shapes")
        ys = ys + (xs if lengths is None else _types.zero_padding(xs, valid))
      if i < n - 1:
        ys = _dropout.drop(keys[n + i], rate, ys)
      finals.append(c)
      xs = ys
    return tuple(finals), xs

  def initial_carry(batch_shape=(), dtype=None):
    return tuple(layer.initial_carry(batch_shape, dtype) for layer in layers)

  known = all(getattr(layer, "initial_carry", None) is not None for layer in layers)
  return _types.Layer(init=init, apply=apply, time_major=time_major,
                      reverse=any(layer.reverse for layer in layers),
                      streamable=all(layer.streamable for layer in layers),
                      initial_carry=initial_carry if known else None)
