"""`jr.stack`: layers applied one after another, each over the whole sequence."""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from jaxrnn import _types
from jaxrnn.layers import _dropout, _rnn


def output_size(layer: _types.Layer, params, input_size: int, dtype=jnp.float32,
                frame: tuple = ()) -> int:
  """The feature size of `layer.apply(params, xs)[1]` for `xs (1, 1, *frame, input_size)`,
  found by abstract evaluation (no computation)."""
  return output_shape(layer, params, input_size, dtype, frame)[-1]


def output_shape(layer: _types.Layer, params, input_size: int, dtype=jnp.float32,
                 frame: tuple = ()) -> tuple:
  """The shape of `layer.apply(params, xs)[1]` for `xs (1, 1, *frame, input_size)`."""
  xs = jax.ShapeDtypeStruct((1, 1) + tuple(frame) + (input_size,), dtype)
  return tuple(jax.eval_shape(lambda p, x: layer.apply(p, x)[1], params, xs).shape)


def fits(declared: Optional[tuple], frame: tuple) -> bool:
  """Whether a layer declaring the step shape `declared` (see `_rnn.step_shape`) takes inputs
  whose step shape is `frame`."""
  return declared is None or (len(declared) == len(frame) and all(
      d is None or d == f for d, f in zip(declared, frame)))


def input_step_shape(layers) -> Optional[tuple]:
  """The step shape of a composition's input: that of its first layer which declares one (the
  undeclared layers before it, such as `jr.dropout`, keep shapes), `None` if none does."""
  return next((s for s in map(_rnn.step_shape, layers) if s is not None), None)


def mismatch(what: str, i: int, declared: tuple, frame: tuple, size, source: str) -> ValueError:
  """The error for layer `i`, which takes `declared` steps, given `frame` steps by `source`."""
  hint = ("; put a layer that reshapes them (for instance one that flattens each frame to a "
          "vector) between the two" if bool(declared) != bool(frame) else "")
  return ValueError(f"{what}: layer {i} takes {_rnn.describe(declared)}, but {source} "
                    f"{_rnn.describe(frame, size)}{hint}")


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
    *layers: `jr.Layer`s; each one's input size is the previous one's output size. Layers over
      frames `(..., T, H, W, C)` (`jr.rnn` of `jr.conv_lstm` or `jr.conv_gru`) stack as
      vector layers do, each one's output channels feeding the next (`init` then takes the
      input channels); frames fed to a vector layer, vectors fed to a frame layer, or frames
      of another size than a layer was built for raise `ValueError` (a layer that reshapes
      must sit between them).
    dropout: the drop probability in [0, 1) applied to every layer's output except the last
      (as `torch.nn.LSTM(dropout=...)`), entry by entry (every pixel and channel of frames).
    residual: add each layer's input to its output. Every layer's output shape must equal its
      input shape (frames: the same height, width and channels; checked at `init` and at trace
      time, `ValueError` otherwise). Padding steps (`t >= lengths`) stay zero.
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

  declared = [_rnn.step_shape(layer) for layer in layers]
  first = input_step_shape(layers)

  def check_residual(i, shape_in, shape_out):
    shape_in, shape_out = tuple(shape_in), tuple(shape_out)
    if not residual or shape_in == shape_out:
      return
    if len(shape_in) == len(shape_out) == 1:
      raise ValueError(
          f"stack(residual=True): layer {i} maps {shape_in[0]} features to {shape_out[0]}; a "
          "residual connection needs equal input and output sizes")
    raise ValueError(
        f"stack(residual=True): layer {i} maps steps of shape {shape_in} to {shape_out}; a "
        "residual connection needs equal input and output shapes")

  def init(key, input_size):
    params, size, frame = [], input_size, () if first is None else first
    for i, (layer, k) in enumerate(zip(layers, jax.random.split(key, n))):
      if not fits(declared[i], frame):
        source = f"layer {i - 1} outputs" if i else "the stack's input is"
        raise mismatch("stack", i, declared[i], frame, size, source)
      if None in frame:
        raise ValueError(f"stack: layer {i} takes frames of a size that none of the layers "
                         "declares; build its cell with jr.conv_lstm or jr.conv_gru")
      params.append(layer.init(k, size))
      out = output_shape(layer, params[-1], size, frame=frame)
      check_residual(i, tuple(frame) + (size,), out[2:])
      frame, size = out[2:-1], out[-1]
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
    # Axes before the step's own: the batch axes and time.
    lead = xs.ndim - (0 if first is None else len(first)) - 1
    if lead < 1:
      raise ValueError(f"stack: xs must have shape {_rnn.describe(first or ())} with a time "
                       f"axis, got {xs.shape}")
    if residual and lengths is not None:
      steps = xs.shape[0] if time_major else xs.shape[lead - 1]
      batch = xs.shape[1:lead] if time_major else xs.shape[:lead - 1]
      valid = _types.valid_steps(_types.check_lengths(lengths, batch, steps, "stack"), steps,
                                 bool(time_major))
    finals = []
    for i, (layer, p, c) in enumerate(zip(layers, params, carries)):
      frame = tuple(xs.shape[lead:-1])
      if not fits(declared[i], frame):
        source = f"layer {i - 1} outputs" if i else "its input is"
        raise mismatch("stack", i, declared[i], frame, xs.shape[-1], source)
      c, ys = layer.apply(p, xs, carry=c, lengths=lengths, resets=resets, key=keys[i])
      if residual:
        check_residual(i, xs.shape[lead:], ys.shape[lead:])
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
  layer = _types.Layer(init=init, apply=apply, time_major=time_major,
                       reverse=any(layer.reverse for layer in layers),
                       streamable=all(layer.streamable for layer in layers),
                       initial_carry=initial_carry if known else None)
  return _rnn.declare_step_shape(layer, first)
