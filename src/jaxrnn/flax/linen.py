"""Flax linen modules over jaxrnn's pure core (needs `pip install 'jaxrnn[flax]'`).

Each module holds exactly the parameters its jaxrnn layer's `init` creates and runs that
layer's `apply` (`jr.scan` underneath, not `nn.scan`), so everything jaxrnn does (lengths,
resets, a given initial carry, fast paths) works unchanged inside a linen model:

>>> import jax, jax.numpy as jnp, jaxrnn as jr
>>> from jaxrnn.flax import linen as jrl
>>> model = jrl.RNN(jr.lstm(8))
>>> xs = jnp.ones((2, 5, 3))
>>> variables = model.init(jax.random.key(0), xs)
>>> sorted(variables["params"])
['b', 'w_h', 'w_x']
>>> carry, ys = model.apply(variables, xs, lengths=jnp.array([5, 2]))
>>> ys.shape, carry.h.shape
((2, 5, 8), (2, 8))

`variables["params"]` is the layer's params pytree itself (a `jr.stack`'s tuple is stored as
`layers_0`, `layers_1`, ...); `to_variables` and `from_variables` convert both ways exactly.

Randomness (a `jr.stack`'s dropout, `jr.variational_dropout` and `jr.zoneout` cells) comes from
the `"dropout"` RNG stream, and `deterministic` switches it off, as for `flax.linen.Dropout`:
`model.apply(variables, xs, deterministic=False, rngs={"dropout": key})`.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Union

try:
  import flax.linen as nn
except ImportError as error:  # pragma: no cover - exercised only without the extra
  raise ImportError("jaxrnn.flax.linen needs Flax: pip install 'jaxrnn[flax]'") from error
import jax
import jax.numpy as jnp

from jaxrnn import _shell, _types

PyTree = Any

__all__ = ["Bidirectional", "Layer", "RNN", "Stack", "from_variables", "to_variables"]


def to_variables(params: PyTree) -> dict:
  """The linen variables `{"params": ...}` of a module holding the jaxrnn `params` (exact: the
  same arrays). A layer whose params are a tuple (`jr.stack`) has its entries stored as
  `layers_0`, `layers_1`, ...

  >>> import jax, jaxrnn as jr
  >>> params = jr.gru(4).init(jax.random.key(0), 3)
  >>> jax.tree.all(jax.tree.map(lambda a, b: a is b, params,
  ...                           from_variables(to_variables(params), params)))
  True
  """
  return {"params": _shell.to_named(params)}


def from_variables(variables: dict, like: PyTree = None) -> PyTree:
  """The jaxrnn params held by linen `variables` (or by `variables["params"]`), the inverse of
  `to_variables`. `like` is needed only for a `jr.stack` (any pytree of its params' structure,
  for instance `jax.eval_shape` of its `init`), to rebuild the tuple."""
  if not isinstance(variables, dict):
    raise TypeError(f"from_variables: variables must be a dict, got {type(variables).__name__}")
  named = variables.get("params", variables)
  if isinstance(like, (tuple, list)):
    return _shell.from_named(dict(named), like)
  return dict(named)


class _Shell(nn.Module):
  """The call shared by every module here; each subclass declares its fields (the first one
  positional, as `RNN(cell)`) and `core()`."""

  @nn.compact
  def __call__(self, xs, *, carry=None, lengths=None, resets=None,
               deterministic: Optional[bool] = None):
    """Runs the layer over `xs (..., T, D)` (or `(T, ..., D)` for a time-major layer).

    Args:
      xs: the input sequences; the feature size `D` is read from the last axis at `init`.
      carry: the initial carry (the cell's zeros when `None`).
      lengths: per-sequence valid lengths `(...)` (int), clipped to `[0, T]`.
      resets: bool `(..., T)`: `resets[..., t]` starts a new segment at step `t`.
      deterministic: overrides the attribute of the same name.

    Returns:
      `(carry, ys)`, as the jaxrnn layer's `apply`.
    """
    what = type(self).__name__
    core = self.core()
    xs = _shell.check_xs(xs, what)
    size = int(xs.shape[-1])
    params = self._params(core, size, what)
    params, xs, carry = _shell.for_compute(self.dtype, params, xs, carry)
    key, train = self._randomness(core, deterministic, what)
    return core.layer.apply(params, xs, carry=carry, lengths=lengths, resets=resets, key=key,
                            train=train)

  def core(self) -> _shell.Core:
    raise NotImplementedError

  def _params(self, core: _shell.Core, size: int, what: str):
    abstract = _shell.abstract_params(core, size)
    names = _shell.to_named(abstract)
    if self.is_initializing():
      # One `init` call with one key, so the params are what `layer.init(key, D)` gives.
      stored = _shell.to_named(
          _shell.init_params(core, self.make_rng("params"), size, self.param_dtype))
    else:
      # Flax evaluates a param's init function abstractly to check the stored shapes.
      stored = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), names)
    named = {name: self.param(name, lambda rng, name=name: stored[name]) for name in names}
    params = _shell.from_named(named, abstract)
    _shell.check_params(core, params, size, what)
    return params

  def _randomness(self, core: _shell.Core, deterministic, what: str):
    if deterministic is None:
      deterministic = self.deterministic
    if deterministic is None:
      if core.stochastic:
        raise ValueError(f"{what}: this module draws dropout masks when training; say which "
                         "mode you run in: deterministic=True (evaluation) or "
                         "deterministic=False with rngs={'dropout': key}, at call time or as "
                         "the module's attribute")
      deterministic = True
    if not isinstance(deterministic, bool):
      raise TypeError(f"{what}: deterministic must be a bool, got {deterministic!r}")
    key = None
    if not deterministic and (core.stochastic or self.has_rng("dropout")):
      if not self.has_rng("dropout"):
        raise ValueError(f"{what}: deterministic=False draws dropout masks from the 'dropout' "
                         "RNG stream; pass rngs={'dropout': key} to apply")
      key = self.make_rng("dropout")
    return _shell.randomness(key, not deterministic, core.stochastic, what,
                             "pass rngs={'dropout': key}")


class Layer(_Shell):
  """Any `jr.Layer` as a linen module: parameters `layer.init(key, D)` (floating leaves stored
  in `param_dtype`), call `layer.apply`.

  Attributes:
    layer: the `jr.Layer` to run.
    dtype: the compute dtype: inputs, parameters and a given carry are cast to it before the
      call. `None` leaves them as they are (a jaxrnn cell computes in its inputs' dtype).
    param_dtype: the dtype parameters are stored in (float32 by default, as in Flax).
    deterministic: `True` switches randomness off (evaluation). May also be given at call time;
      if neither says, a module that draws randomness raises, one that does not runs
      deterministically.
    stochastic: whether the layer draws randomness when training (then a `"dropout"` RNG is
      required while `deterministic=False`).
  """

  layer: _types.Layer
  dtype: Optional[Any] = None
  param_dtype: Any = jnp.float32
  deterministic: Optional[bool] = None
  stochastic: bool = False

  def core(self) -> _shell.Core:
    if not isinstance(self.layer, _types.Layer):
      raise TypeError(f"Layer: layer must be a jr.Layer, got {type(self.layer).__name__}")
    return _shell.Core(self.layer, self.stochastic)


class RNN(_Shell):
  """A `jr.Cell` run over sequences (`jr.rnn(cell)`) as a linen module.

  `variables["params"]` is exactly `cell.init`'s params (floating leaves in `param_dtype`);
  `__call__(xs, *, carry=None, lengths=None, resets=None, deterministic=None) -> (carry, ys)`.

  Attributes:
    cell: any `jr.Cell`.
    reverse: run each sequence backwards (as `jr.rnn`).
    time_major: inputs and outputs are `(T, ..., D)` (as `jr.rnn`).
    unroll: passed to `jr.scan`.
    remat: `None`, `k` or "sqrt" (as `jr.scan`).
    dtype: the compute dtype, as `Layer`.
    param_dtype: the storage dtype of the parameters, as `Layer`.
    deterministic: switches randomness off, as `Layer`.
  """

  cell: _types.Cell
  reverse: bool = False
  time_major: bool = False
  unroll: int = 1
  remat: Any = None
  dtype: Optional[Any] = None
  param_dtype: Any = jnp.float32
  deterministic: Optional[bool] = None

  def core(self) -> _shell.Core:
    return _shell.rnn_core(self.cell, reverse=self.reverse, time_major=self.time_major,
                           unroll=self.unroll, remat=self.remat)


class Bidirectional(_Shell):
  """`jr.bidirectional` of two cells as a linen module: params `{"forward": ..., "backward":
  ...}`, carry `(forward, backward)`, outputs merged by `merge` ("concat" or "sum").

  `backward=None` runs a second cell of the same kind (with its own parameters).
  """

  forward: _types.Cell
  backward: Optional[_types.Cell] = None
  merge: Any = "concat"
  time_major: bool = False
  unroll: int = 1
  remat: Any = None
  dtype: Optional[Any] = None
  param_dtype: Any = jnp.float32
  deterministic: Optional[bool] = None

  def core(self) -> _shell.Core:
    return _shell.bidirectional_core(self.forward, self.backward, merge=self.merge,
                                     time_major=self.time_major, unroll=self.unroll,
                                     remat=self.remat)


class Stack(_Shell):
  """`jr.stack` as a linen module: entries that are cells run as `jr.rnn(cell)`, `jr.Layer`
  entries (a `jr.bidirectional`, say) as they are; `dropout` between layers draws from the
  `"dropout"` RNG stream when `deterministic=False`. Params: `layers_0`, `layers_1`, ...
  (entry `i` of the jr.stack's params tuple); carry: a tuple, one entry a layer.
  """

  layers: Sequence[Union[_types.Cell, _types.Layer]]
  dropout: float = 0.0
  residual: bool = False
  time_major: bool = False
  dtype: Optional[Any] = None
  param_dtype: Any = jnp.float32
  deterministic: Optional[bool] = None

  def core(self) -> _shell.Core:
    return _shell.stack_core(tuple(self.layers), dropout=self.dropout, residual=self.residual,
                             time_major=self.time_major)
