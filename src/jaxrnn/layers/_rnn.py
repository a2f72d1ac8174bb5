"""`jr.rnn`: a cell lifted to a sequence layer."""

from __future__ import annotations

from typing import Optional

from jaxrnn import _types
from jaxrnn.drivers import _scan
from jaxrnn.layers import _dropout


def declare_step_shape(layer: _types.Layer, shape: Optional[tuple]) -> _types.Layer:
  """`layer` with its `step_shape` trait set to `shape` (`None` leaves it as it is)."""
  if shape is None:
    return layer
  return _types.Layer(layer.init, layer.apply, **{**layer._traits(), "step_shape": shape})


def step_shape(layer: _types.Layer) -> Optional[tuple]:
  """The layer's `step_shape` trait (see `jr.Layer`): `()` for vectors, `(H, W)` for frames,
  `None` where the layer does not say."""
  return getattr(layer, "step_shape", None)


def step_axes(shape: tuple, features="D") -> str:
  """`D` or `H, W, C` for a step shape, in error messages."""
  if not shape:
    return str(features)
  dims = ", ".join("?" if d is None else str(d) for d in shape)
  return f"{dims}, {'C' if features == 'D' else features}"


def describe(shape: tuple, features="D") -> str:
  """`vectors (..., T, D)` or `frames (..., T, H, W, C)` for a step shape, in error messages."""
  kind = "frames" if shape else "vectors"
  return f"{kind} (..., T, {step_axes(shape, features)})"


def layout(shape: tuple, time_major: bool) -> str:
  """`(..., T, D)` or `(T, ..., H, W, C)` for a step shape and a layout, in error messages."""
  return f"({'T, ..., ' if time_major else '..., T, '}{step_axes(shape)})"


def rnn(cell: _types.Cell, *, reverse: bool = False, time_major: bool = False, unroll=1,
        remat=None) -> _types.Layer:
  """Lifts a cell to a `jr.Layer` that runs it over a sequence with `jr.scan`.

  `init(key, input_size)` is `cell.init`; `apply(params, xs, *, carry=None, lengths=None,
  resets=None, key=None, train=None) -> (carry, ys)` maps `xs (..., T, D)` to `ys (..., T, H)`
  (time first with `time_major=True`).

  `key` and `train` follow the layer contract (`train=True` needs a key, `train=False` is
  evaluation whatever the key). For a cell that draws randomness from `params["key"]`
  (`jr.variational_dropout`, `jr.zoneout`: `cell.takes_key`), the layer's key is put there
  when training and any key in `params` is removed when `train=False`; a key given both ways
  raises. Other cells ignore the key.

  A cell over frames (`jr.conv_lstm`, `jr.conv_gru`: `cell.input_rank == 3`) gives a layer over
  `xs (..., T, H, W, C)` with outputs `(..., T, H', W', F)`; `init(key, input_size)` then takes
  the channel count `C`. Such layers compose in `jr.stack` and `jr.bidirectional` and stream
  with `jr.stream` and `jr.step_layer` like vector layers.

  A reverse layer (`reverse=True`) cannot be streamed (`jr.stream`), and `jr.bidirectional`
  refuses it (it reverses its backward half itself).

  `layer.initial_carry(batch_shape=(), dtype=None)` is `cell.initial_carry`: the carry `apply`
  starts from with `carry=None`, for inputs `(*batch_shape, T, D)` of dtype `dtype`.

  >>> import jax, jax.numpy as jnp, jaxrnn as jr
  >>> layer = jr.rnn(jr.lstm(8))
  >>> params = layer.init(jax.random.key(0), 3)
  >>> carry, ys = layer.apply(params, jnp.ones((2, 6, 3)))
  >>> ys.shape
  (2, 6, 8)
  """
  if not isinstance(cell, _types.Cell):
    raise TypeError(f"rnn: cell must be a jr.Cell, got {type(cell).__name__}")
  what = f"rnn({cell.name})"
  reverse = _types.check_flag(reverse, f"{what}: reverse")
  time_major = _types.check_flag(time_major, f"{what}: time_major")

  def apply(params, xs, *, carry=None, lengths=None, resets=None, key=None, train=None):
    if cell.takes_key:
      params = _keyed_params(params, key, train, what)
    else:
      _dropout.training_key(key, train, what)
    return _scan.scan(cell, params, xs, carry=carry, lengths=lengths, resets=resets,
                      reverse=reverse, unroll=unroll, time_major=time_major, remat=remat)

  if cell.input_rank == 1:
    shape = ()
  else:
    shape = cell.frame_shape or (None,) * (cell.input_rank - 1)
  layer = _types.Layer(init=cell.init, apply=apply, time_major=bool(time_major),
                       reverse=bool(reverse), initial_carry=cell.initial_carry)
  return declare_step_shape(layer, shape)


def _keyed_params(params, key, train, what: str):
  """The params of a cell that takes its key in `params["key"]`, for the layer's `key` and
  `train` (see `rnn`)."""
  if not isinstance(params, dict):
    return params  # the cell names what it expects
  base = {k: v for k, v in params.items() if k != "key"}
  if train is False:
    _dropout.training_key(key, train, what)  # validates `train`
    return base
  if key is not None and "key" in params:
    raise ValueError(f"{what}: a PRNG key was given both as key= and in params['key']; pass it "
                     "once (key= is the layer interface)")
  key = _dropout.training_key(params.get("key") if key is None else key, train, what)
  return base if key is None else {**base, "key": key}
