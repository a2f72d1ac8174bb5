"""Flax NNX modules over jaxrnn's pure core (needs `pip install 'jaxrnn[flax]'`).

Each module's `params` attribute is its jaxrnn layer's params pytree with every array an
`nnx.Param`, and its call runs the layer's `apply` (`jr.scan` underneath):

>>> import jax, jax.numpy as jnp, jaxrnn as jr
>>> from flax import nnx
>>> from jaxrnn.flax import nnx as jrx
>>> model = jrx.RNN(jr.gru(8), 3, rngs=nnx.Rngs(0))
>>> carry, ys = model(jnp.ones((2, 5, 3)), lengths=jnp.array([5, 2]))
>>> ys.shape
(2, 5, 8)
>>> sorted(get_params(model))
['b_h', 'b_x', 'w_h', 'w_x']

`get_params` and `set_params` convert between the module and a plain params pytree, exactly.
Randomness (a `Stack`'s dropout, `jr.variational_dropout` and `jr.zoneout` cells) comes from
the `dropout` stream of the `rngs` given at construction (or at call time), and
`deterministic` switches it off; `model.eval()` and `model.train()` set it as for
`nnx.Dropout`.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Union

try:
  from flax import nnx
except ImportError as error:  # pragma: no cover - exercised only without the extra
  raise ImportError("jaxrnn.flax.nnx needs Flax: pip install 'jaxrnn[flax]'") from error
import jax
import jax.numpy as jnp

from jaxrnn import _shell, _types

PyTree = Any

__all__ = ["Bidirectional", "Layer", "RNN", "Stack", "get_params", "set_params"]


def _is_param(x) -> bool:
  return isinstance(x, nnx.Variable)


def get_params(module: "Layer") -> PyTree:
  """The module's parameters as the plain jaxrnn params pytree (the same arrays).

  >>> import jax, jaxrnn as jr
  >>> from flax import nnx
  >>> model = RNN(jr.lstm(4), 3, rngs=nnx.Rngs(0))
  >>> params = jax.tree.map(lambda a: a + 1, get_params(model))
  >>> set_params(model, params)
  >>> jax.tree.all(jax.tree.map(lambda a, b: a is b, get_params(model), params))
  True
  """
  if not isinstance(module, Layer):
    raise TypeError(f"get_params: module must be a jaxrnn.flax.nnx module, got "
                    f"{type(module).__name__}")
  return jax.tree.map(lambda v: v.get_value(), module.params, is_leaf=_is_param)


def set_params(module: "Layer", params: PyTree) -> None:
  """Puts the jaxrnn `params` (same structure and shapes as `get_params(module)`) into the
  module's `nnx.Param`s, in place. Raises `ValueError` on a mismatch."""
  if not isinstance(module, Layer):
    raise TypeError(f"set_params: module must be a jaxrnn.flax.nnx module, got "
                    f"{type(module).__name__}")
  _shell.check_params(module.core, params, module.input_size, f"{type(module).__name__}")
  variables = jax.tree.leaves(module.params, is_leaf=_is_param)
  for variable, value in zip(variables, jax.tree.leaves(params)):
    variable.set_value(value)


class Layer(nnx.Module):
  """Any `jr.Layer` as an NNX module: `params` holds `layer.init(rngs.params(), input_size)`
  (floating leaves stored in `param_dtype`) as `nnx.Param`s; the call runs `layer.apply`.

  Args:
    layer: the `jr.Layer` to run.
    input_size: D, the inputs' feature size.
    rngs: `nnx.Rngs`; its `params` stream initialises the parameters, its `dropout` stream
      (forked and kept) draws dropout masks while training.
    dtype: the compute dtype: inputs, parameters and a given carry are cast to it before the
      call. `None` leaves them as they are (a jaxrnn cell computes in its inputs' dtype).
    param_dtype: the dtype parameters are stored in (float32 by default, as in Flax).
    deterministic: `True` switches randomness off; `model.eval()` sets it, `model.train()`
      clears it. Default False, as `nnx.Dropout`.
    stochastic: whether the layer draws randomness when training (then a dropout key is
      required unless `deterministic`).
  """

  def __init__(self, layer: _types.Layer, input_size: int, *, rngs: nnx.Rngs,
               dtype: Optional[Any] = None, param_dtype: Any = jnp.float32,
               deterministic: bool = False, stochastic: bool = False):
    if not isinstance(layer, _types.Layer):
      raise TypeError(f"{type(self).__name__}: layer must be a jr.Layer, got "
                      f"{type(layer).__name__}")
    self._setup(_shell.Core(layer, bool(stochastic)), input_size, rngs, dtype, param_dtype,
                deterministic)

  def _setup(self, core: _shell.Core, input_size: int, rngs, dtype, param_dtype,
             deterministic) -> None:
    what = type(self).__name__
    if not isinstance(rngs, nnx.Rngs):
      raise TypeError(f"{what}: rngs must be an nnx.Rngs, got {type(rngs).__name__}")
    self.core = core
    self.input_size = _types.check_hidden_size(input_size, f"{what}: input_size")
    self.dtype = dtype
    self.param_dtype = param_dtype
    self.deterministic = deterministic
    params = _shell.init_params(core, rngs.params(), self.input_size, param_dtype)
    self.params = nnx.data(jax.tree.map(nnx.Param, params))
    self.rngs = rngs["dropout"].fork()

  def __call__(self, xs, *, carry=None, lengths=None, resets=None,
               deterministic: Optional[bool] = None, rngs=None):
    """Runs the layer over `xs (..., T, D)` (or `(T, ..., D)` for a time-major layer).

    Args:
      xs: the input sequences.
      carry: the initial carry (the cell's zeros when `None`).
      lengths: per-sequence valid lengths `(...)` (int), clipped to `[0, T]`.
      resets: bool `(..., T)`: `resets[..., t]` starts a new segment at step `t`.
      deterministic: overrides the attribute of the same name.
      rngs: an `nnx.Rngs`, `nnx.RngStream` or key to draw this call's dropout masks from,
        instead of the module's own stream.

    Returns:
      `(carry, ys)`, as the jaxrnn layer's `apply`.
    """
    what = type(self).__name__
    xs = _shell.check_xs(xs, what, self.input_size)
    params, xs, carry = _shell.for_compute(self.dtype, get_params(self), xs, carry)
    deterministic = self.deterministic if deterministic is None else deterministic
    if not isinstance(deterministic, bool):
      raise TypeError(f"{what}: deterministic must be a bool, got {deterministic!r}")
    key = None if deterministic else self._key(rngs)
    key, train = _shell.randomness(key, not deterministic, self.core.stochastic, what,
                                   "pass rngs=nnx.Rngs(dropout=...) to the constructor or "
                                   "the call")
    return self.core.layer.apply(params, xs, carry=carry, lengths=lengths, resets=resets,
                                 key=key, train=train)

  def _key(self, rngs):
    if rngs is None:
      return self.rngs()
    if isinstance(rngs, nnx.Rngs):
      return rngs["dropout"]()
    if isinstance(rngs, nnx.RngStream):
      return rngs()
    return rngs


class RNN(Layer):
  """A `jr.Cell` run over sequences (`jr.rnn(cell)`) as an NNX module; `params` holds exactly
  `cell.init`'s pytree (as `nnx.Param`s). Other arguments as `Layer` and `jr.rnn`.

  >>> import jax.numpy as jnp, jaxrnn as jr
  >>> from flax import nnx
  >>> carry, ys = RNN(jr.lstm(4), 3, rngs=nnx.Rngs(0))(jnp.ones((5, 3)))
  >>> ys.shape, carry.c.shape
  ((5, 4), (4,))
  """

  def __init__(self, cell: _types.Cell, input_size: int, *, rngs: nnx.Rngs,
               reverse: bool = False, time_major: bool = False, unroll: int = 1, remat=None,
               dtype: Optional[Any] = None, param_dtype: Any = jnp.float32,
               deterministic: bool = False):
    core = _shell.rnn_core(cell, reverse=reverse, time_major=time_major, unroll=unroll,
                           remat=remat)
    self._setup(core, input_size, rngs, dtype, param_dtype, deterministic)


class Bidirectional(Layer):
  """`jr.bidirectional` of two cells as an NNX module: params `{"forward": ..., "backward":
  ...}`, carry `(forward, backward)`, outputs merged by `merge`. `backward=None` runs a second
  cell of the same kind with its own parameters."""

  def __init__(self, forward: _types.Cell, input_size: int, *, rngs: nnx.Rngs,
               backward: Optional[_types.Cell] = None, merge="concat",
               time_major: bool = False, unroll: int = 1, remat=None,
               dtype: Optional[Any] = None, param_dtype: Any = jnp.float32,
               deterministic: bool = False):
    core = _shell.bidirectional_core(forward, backward, merge=merge, time_major=time_major,
                                     unroll=unroll, remat=remat)
    self._setup(core, input_size, rngs, dtype, param_dtype, deterministic)


class Stack(Layer):
  """`jr.stack` as an NNX module: cells run as `jr.rnn(cell)`, `jr.Layer` entries as they are;
  `dropout` between layers when training. Params: the jr.stack's tuple, one entry a layer."""

  def __init__(self, layers: Sequence[Union[_types.Cell, _types.Layer]], input_size: int, *,
               rngs: nnx.Rngs, dropout: float = 0.0, residual: bool = False,
               time_major: bool = False, dtype: Optional[Any] = None,
               param_dtype: Any = jnp.float32, deterministic: bool = False):
    core = _shell.stack_core(layers, dropout=dropout, residual=residual,
                             time_major=time_major)
    self._setup(core, input_size, rngs, dtype, param_dtype, deterministic)
