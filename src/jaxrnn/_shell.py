"""What the framework shells share, written without any framework: which core layer a module
runs, the dtype casts around the call, the randomness switch, and the checks of stored params.

`jaxrnn.flax.linen`, `jaxrnn.flax.nnx` and `jaxrnn.equinox` each hold parameters their
framework's way and call `core.apply` with them; everything they have in common lives here so
that the three agree by construction.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional, Sequence, Union

import jax
import jax.numpy as jnp

from jaxrnn import _types
from jaxrnn.layers import _bidirectional, _rnn, _stack

PyTree = Any


class Core(NamedTuple):
  """The pure layer a shell runs, and whether it draws randomness whenever it trains.

  `stochastic` is True when a key is needed to train (a `takes_key` cell, stack dropout); a
  user-written `jr.Layer` inside a stack may use a key too, so shells pass one whenever their
  framework offers it."""

  layer: _types.Layer
  stochastic: bool


def rnn_core(cell, *, reverse=False, time_major=False, unroll=1, remat=None) -> Core:
  if not isinstance(cell, _types.Cell):
    raise TypeError(f"RNN: cell must be a jr.Cell (for example jr.lstm(64)), got "
                    f"{type(cell).__name__}")
  return Core(_rnn.rnn(cell, reverse=reverse, time_major=time_major, unroll=unroll,
                       remat=remat), cell.takes_key)


def bidirectional_core(forward, backward=None, *, merge="concat", time_major=False,
                       unroll=1, remat=None) -> Core:
  backward = forward if backward is None else backward
  for what, cell in (("forward", forward), ("backward", backward)):
    if not isinstance(cell, _types.Cell):
      raise TypeError(f"Bidirectional: {what} must be a jr.Cell, got {type(cell).__name__}")
  run = lambda cell: _rnn.rnn(cell, time_major=time_major, unroll=unroll, remat=remat)
  return Core(_bidirectional.bidirectional(run(forward), run(backward), merge=merge,
                                           time_major=time_major),
              forward.takes_key or backward.takes_key)


def stack_core(layers: Sequence[Union[_types.Cell, _types.Layer]], *, dropout=0.0,
               residual=False, time_major=False) -> Core:
  if isinstance(layers, (_types.Cell, _types.Layer)) or not isinstance(layers, (tuple, list)):
    raise TypeError("Stack: layers must be a tuple or list of jr.Cell or jr.Layer entries, got "
                    f"{type(layers).__name__}")
  built, stochastic = [], _types.check_rate(dropout, "Stack: dropout") > 0.0
  for i, entry in enumerate(layers):
    if isinstance(entry, _types.Cell):
      built.append(_rnn.rnn(entry, time_major=time_major))
      stochastic = stochastic or entry.takes_key
    elif isinstance(entry, _types.Layer):
      built.append(entry)
    else:
      raise TypeError(f"Stack: layers[{i}] must be a jr.Cell or a jr.Layer, got "
                      f"{type(entry).__name__}")
  return Core(_stack.stack(*built, dropout=dropout, residual=residual, time_major=time_major),
              stochastic)


def check_xs(xs, what: str, input_size: Optional[int] = None):
  """`xs` as an array, or a clear error for a non-float or rank < 2 input, or (given
  `input_size`, the size a module was built for) one whose feature size differs."""
  xs = jnp.asarray(xs)
  _types.check_float(xs, f"{what}: xs")
  if xs.ndim < 2:
    raise ValueError(f"{what}: xs must have shape (..., T, D) (or (T, ..., D) when time-major), "
                     f"got {xs.shape}")
  if input_size is not None and xs.shape[-1] != input_size:
    raise ValueError(f"{what}: xs has shape {xs.shape}, but the module was built for "
                     f"(..., {input_size}) inputs (input_size={input_size})")
  return xs


def input_size(xs, what: str) -> int:
  return int(check_xs(xs, what).shape[-1])


def _cast_floats(tree: PyTree, dtype) -> PyTree:
  """Real floating leaves cast to `dtype`; integer, complex and key leaves left alone."""
  if dtype is None:
    return tree

  def cast(leaf):
    leaf_dtype = jnp.result_type(leaf)
    if jnp.issubdtype(leaf_dtype, jnp.floating):
      return jnp.asarray(leaf, dtype)
    return leaf

  return jax.tree_util.tree_map(cast, tree)


def init_params(core: Core, key, input_size_: int, param_dtype) -> PyTree:
  """`core.layer.init(key, input_size)` with its floating leaves stored in `param_dtype`."""
  return _cast_floats(core.layer.init(key, input_size_), param_dtype)


def for_compute(dtype, params, xs, carry):
  """Params, inputs and carry cast to the compute `dtype` (`None`: unchanged, so the core's
  rule applies: the cell computes in the inputs' dtype)."""
  return _cast_floats(params, dtype), _cast_floats(xs, dtype), _cast_floats(carry, dtype)


def abstract_params(core: Core, input_size_: int) -> PyTree:
  """The shapes and dtypes `init` would give, without computing anything."""
  return jax.eval_shape(lambda key: core.layer.init(key, input_size_), jax.random.key(0))


def check_params(core: Core, params: PyTree, input_size_: int, what: str) -> None:
  """Raises `ValueError` unless `params` has the structure and shapes of `core.layer.init`'s
  params for `input_size_` features (dtypes may differ: `param_dtype` changes them)."""
  expected = abstract_params(core, input_size_)
  want, got = jax.tree_util.tree_structure(expected), jax.tree_util.tree_structure(params)
  if want != got:
    raise ValueError(f"{what}: the parameters do not have the structure this module's layer "
                     f"creates for inputs of {input_size_} features: expected {want}, got {got}")
  paths = jax.tree_util.tree_flatten_with_path(expected)[0]
  for (path, e), g in zip(paths, jax.tree_util.tree_leaves(params)):
    if tuple(e.shape) != tuple(jnp.shape(g)):
      raise ValueError(f"{what}: parameter {jax.tree_util.keystr(path)} has shape "
                       f"{tuple(jnp.shape(g))}, expected {tuple(e.shape)} (inputs of "
                       f"{input_size_} features)")


def randomness(key, train: Optional[bool], stochastic: bool, what: str, how: str):
  """`(key, train)` for `core.apply`. `train` is the resolved training flag; `key` the key the
  framework offered (or None). A stochastic module training without a key is an error whose
  message `how` says how to pass one in this framework."""
  if not isinstance(train, bool):
    raise TypeError(f"{what}: the training flag must be a bool, got {train!r}")
  if not train:
    return None, False
  if key is None:
    if stochastic:
      raise ValueError(f"{what}: training this module draws dropout masks, so it needs a PRNG "
                       f"key: {how}")
    return None, None
  return key, True


def to_named(params: PyTree) -> dict:
  """A layer's params as a dict with string keys, for frameworks whose parameter collections
  are dicts: a dict stays as it is; a tuple or list (`jr.stack`) becomes `layers_0`, `layers_1`,
  ... (Flax's names for a list of submodules)."""
  if isinstance(params, dict):
    return dict(params)
  if isinstance(params, (tuple, list)):
    return {f"layers_{i}": p for i, p in enumerate(params)}
  raise TypeError(f"layer params must be a dict, tuple or list, got {type(params).__name__}")


def from_named(named: dict, like: PyTree) -> PyTree:
  """The inverse of `to_named`, given the structure `like` of the layer's params."""
  if isinstance(like, dict):
    return dict(named)
  n = len(like)
  missing = [f"layers_{i}" for i in range(n) if f"layers_{i}" not in named]
  extra = sorted(set(named) - {f"layers_{i}" for i in range(n)})
  if missing or extra:
    raise ValueError(f"expected the entries layers_0 ... layers_{n - 1}; missing {missing}, "
                     f"unexpected {extra}")
  return type(like)(named[f"layers_{i}"] for i in range(n))
