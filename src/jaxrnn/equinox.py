"""Equinox modules over jaxrnn's pure core (needs `pip install 'jaxrnn[equinox]'`).

Each module is an `eqx.Module` whose field `params` is its jaxrnn layer's params pytree (plain
arrays, so `eqx.filter_jit`, `eqx.filter_grad` and `optax` see exactly those), and whose call
runs the layer's `apply` (`jr.scan` underneath):

>>> import jax, jax.numpy as jnp, jaxrnn as jr
>>> import jaxrnn.equinox as jre
>>> model = jre.RNN(jr.lstm(8), 3, key=jax.random.key(0))
>>> carry, ys = model(jnp.ones((2, 5, 3)), lengths=jnp.array([5, 2]))
>>> ys.shape, sorted(model.params)
((2, 5, 8), ['b', 'w_h', 'w_x'])

Randomness (a `Stack`'s dropout, `jr.variational_dropout` and `jr.zoneout` cells) follows
`eqx.nn.Dropout`: pass `key=` to the call when training, and `inference=True` (or
`eqx.nn.inference_mode(model)`) switches it off. `with_params` puts new params in.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Union

try:
  import equinox as eqx
except ImportError as error:  # pragma: no cover - exercised only without the extra
  raise ImportError("jaxrnn.equinox needs Equinox: pip install 'jaxrnn[equinox]'") from error

from jaxrnn import _shell, _types

PyTree = Any

__all__ = ["Bidirectional", "Layer", "RNN", "Stack", "with_params"]


class Layer(eqx.Module):
  """Any `jr.Layer` as an Equinox module: `params = layer.init(key, input_size)` (floating
  leaves cast to `param_dtype` if given), call `layer.apply`.

  Args:
    layer: the `jr.Layer` to run.
    input_size: D, the inputs' feature size.
    key: the PRNG key that initialises the parameters.
    dtype: the compute dtype: inputs, parameters and a given carry are cast to it before the
      call. `None` leaves them as they are (a jaxrnn cell computes in its inputs' dtype).
    param_dtype: the dtype parameters are stored in (`None`: the cell's own).
    inference: `True` switches randomness off (`eqx.nn.inference_mode` sets it).
    stochastic: whether the layer draws randomness when training (then the call needs `key=`
      unless `inference`).
  """

  params: PyTree
  core: _shell.Core = eqx.field(static=True)
  input_size: int = eqx.field(static=True)
  dtype: Any = eqx.field(static=True)
  inference: bool

  def __init__(self, layer: _types.Layer, input_size: int, *, key, dtype=None,
               param_dtype=None, inference: bool = False, stochastic: bool = False):
    if not isinstance(layer, _types.Layer):
      raise TypeError(f"{type(self).__name__}: layer must be a jr.Layer, got "
                      f"{type(layer).__name__}")
    self._setup(_shell.Core(layer, bool(stochastic)), input_size, key, dtype, param_dtype,
                inference)

  def _setup(self, core, input_size, key, dtype, param_dtype, inference) -> None:
    what = type(self).__name__
    self.core = core
    self.input_size = _types.check_hidden_size(input_size, f"{what}: input_size")
    self.dtype = dtype
    self.inference = inference
    self.params = _shell.init_params(core, key, self.input_size, param_dtype)

  def __call__(self, xs, *, carry=None, lengths=None, resets=None, key=None,
               inference: Optional[bool] = None):
    """Runs the layer over `xs (..., T, D)` (or `(T, ..., D)` for a time-major layer).

    Args:
      xs: the input sequences.
      carry: the initial carry (the cell's zeros when `None`).
      lengths: per-sequence valid lengths `(...)` (int), clipped to `[0, T]`.
      resets: bool `(..., T)`: `resets[..., t]` starts a new segment at step `t`.
      key: the PRNG key for dropout masks while training.
      inference: overrides the field of the same name.

    Returns:
      `(carry, ys)`, as the jaxrnn layer's `apply`.
    """
    what = type(self).__name__
    xs = _shell.check_xs(xs, what, self.input_size)
    inference = self.inference if inference is None else inference
    if not isinstance(inference, bool):
      raise TypeError(f"{what}: inference must be a bool, got {inference!r}")
    key, train = _shell.randomness(None if inference else key, not inference,
                                   self.core.stochastic, what,
                                   "pass key=... to the call (or inference=True)")
    params, xs, carry = _shell.for_compute(self.dtype, self.params, xs, carry)
    return self.core.layer.apply(params, xs, carry=carry, lengths=lengths, resets=resets,
                                 key=key, train=train)


def with_params(module: Layer, params: PyTree) -> Layer:
  """A copy of `module` holding the jaxrnn `params` (same structure and shapes as
  `module.params`; `ValueError` otherwise). The arrays are used as they are.

  >>> import jax, jaxrnn as jr
  >>> model = RNN(jr.gru(4), 3, key=jax.random.key(0))
  >>> params = jr.gru(4).init(jax.random.key(1), 3)
  >>> new = with_params(model, params)
  >>> jax.tree.all(jax.tree.map(lambda a, b: a is b, new.params, params))
  True
  """
  if not isinstance(module, Layer):
    raise TypeError(f"with_params: module must be a jaxrnn.equinox module, got "
                    f"{type(module).__name__}")
  _shell.check_params(module.core, params, module.input_size, type(module).__name__)
  return eqx.tree_at(lambda m: m.params, module, params)


class RNN(Layer):
  """A `jr.Cell` run over sequences (`jr.rnn(cell)`) as an Equinox module with field
  `params`, exactly `cell.init(key, input_size)`. Other arguments as `Layer` and `jr.rnn`.

  >>> import jax, jax.numpy as jnp, jaxrnn as jr
  >>> model = RNN(jr.gru(4), 3, key=jax.random.key(0))
  >>> grads = eqx.filter_grad(lambda m, x: m(x)[1].sum())(model, jnp.ones((6, 3)))
  >>> grads.params["w_h"].shape
  (4, 12)
  """

  def __init__(self, cell: _types.Cell, input_size: int, *, key, reverse: bool = False,
               time_major: bool = False, unroll: int = 1, remat=None, dtype=None,
               param_dtype=None, inference: bool = False):
    core = _shell.rnn_core(cell, reverse=reverse, time_major=time_major, unroll=unroll,
                           remat=remat)
    self._setup(core, input_size, key, dtype, param_dtype, inference)


class Bidirectional(Layer):
  """`jr.bidirectional` of two cells as an Equinox module: params `{"forward": ...,
  "backward": ...}`, carry `(forward, backward)`, outputs merged by `merge`. `backward=None`
  runs a second cell of the same kind with its own parameters."""

  def __init__(self, forward: _types.Cell, input_size: int, *, key,
               backward: Optional[_types.Cell] = None, merge="concat",
               time_major: bool = False, unroll: int = 1, remat=None, dtype=None,
               param_dtype=None, inference: bool = False):
    core = _shell.bidirectional_core(forward, backward, merge=merge, time_major=time_major,
                                     unroll=unroll, remat=remat)
    self._setup(core, input_size, key, dtype, param_dtype, inference)


class Stack(Layer):
  """`jr.stack` as an Equinox module: cells run as `jr.rnn(cell)`, `jr.Layer` entries as they
  are; `dropout` between layers when training (a `key` given to the call). Params: the
  jr.stack's tuple, one entry a layer."""

  def __init__(self, layers: Sequence[Union[_types.Cell, _types.Layer]], input_size: int, *,
               key, dropout: float = 0.0, residual: bool = False, time_major: bool = False,
               dtype=None, param_dtype=None, inference: bool = False):
    core = _shell.stack_core(layers, dropout=dropout, residual=residual,
                             time_major=time_major)
    self._setup(core, input_size, key, dtype, param_dtype, inference)
