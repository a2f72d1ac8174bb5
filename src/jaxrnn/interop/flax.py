"""Flax's own recurrent cells' parameters in, linen's and NNX's: `LSTMCell`,
`OptimizedLSTMCell`, `GRUCell` and `SimpleCell` (flax is not imported here: the cell module
passed in is read as it is)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxrnn import _types
from jaxrnn.cells import gru, lstm, simple_rnn

_SUPPORTED = ("LSTMCell", "OptimizedLSTMCell", "GRUCell", "SimpleCell")


def _activation_name(fn, what: str, allowed=("tanh", "relu")) -> str:
  """The jaxrnn name of a Flax cell's activation function (Flax re-exports JAX's own), or
  `ValueError`."""
  functions = {"tanh": jnp.tanh, "sigmoid": jax.nn.sigmoid, "relu": jax.nn.relu}
  for name in allowed:
    if fn is functions[name]:
      return name
  raise ValueError(f"from_flax: {what} is {getattr(fn, '__name__', fn)!r}; jaxrnn's cells "
                   f"use {' or '.join(allowed)} here")


def _dense(params: dict, name: str, bias: bool, what: str):
  if name not in params:
    raise ValueError(f"from_flax: the {what} parameters have no entry {name!r} (found "
                     f"{sorted(params)}); pass the variables of the cell module itself")
  entry = params[name]
  kernel = jnp.asarray(entry["kernel"])
  if bias != ("bias" in entry):
    raise ValueError(f"from_flax: {what} parameter {name!r} {'lacks' if bias else 'has'} a "
                     "bias, unlike Flax's layout of this cell")
  return kernel, (jnp.asarray(entry["bias"]) if bias else None)


def _nnx_value(variable):
  """The array an `nnx.Param` holds (`get_value()`, or `.value` on Flax releases before it)."""
  get = getattr(variable, "get_value", None)
  return jnp.asarray(get() if get is not None else variable.value)


def _nnx_linear(module, name: str, bias: bool, what: str):
  """`(kernel, bias or None)` of the NNX cell's `nnx.Linear` attribute `name`, or `ValueError`
  where the module does not have Flax's layout."""
  linear = getattr(module, name, None)
  if getattr(linear, "kernel", None) is None:
    raise ValueError(f"from_flax: the NNX {what} has no linear layer {name!r} with a kernel; "
                     "pass the cell module itself, as Flax builds it")
  if bias != (getattr(linear, "bias", None) is not None):
    raise ValueError(f"from_flax: the NNX {what}'s layer {name!r} {'lacks' if bias else 'has'} "
                     "a bias, unlike Flax's layout of this cell")
  return _nnx_value(linear.kernel), (_nnx_value(linear.bias) if bias else None)


def _simple_activation(module) -> str:
  """The jaxrnn activation of a Flax (linen or NNX) `SimpleCell`, which must have no residual."""
  if module.residual:
    raise ValueError("from_flax: SimpleCell(residual=True) adds h to the pre-activation; "
                     "jaxrnn's simple_rnn has no such term")
  return _activation_name(module.activation_fn, "SimpleCell's activation_fn")


def _check_gated_activations(module, kind: str) -> None:
  """A Flax LSTM or GRU cell converts only with its default sigmoid gates and tanh."""
  _activation_name(module.gate_fn, f"{kind}'s gate_fn", ("sigmoid",))
  _activation_name(module.activation_fn, f"{kind}'s activation_fn", ("tanh",))


def _from_nnx(module, kind: str) -> tuple[_types.Cell, dict]:
  """`from_flax` for Flax NNX's cells, whose parameters live on the module."""
  hidden = module.hidden_features
  dtypes = {"dtype": module.dtype, "param_dtype": module.param_dtype}
  if kind == "SimpleCell":
    activation = _simple_activation(module)
    w_x, b = _nnx_linear(module, "dense_i", True, kind)
    w_h, _ = _nnx_linear(module, "dense_h", False, kind)
    return simple_rnn(hidden, activation=activation, **dtypes), {"w_x": w_x, "w_h": w_h, "b": b}
  _check_gated_activations(module, kind)
  if kind == "GRUCell":
    # NNX's GRU has no recurrent bias at all (linen's has one on n): b_h is zero.
    w_x, b_x = _nnx_linear(module, "dense_i", True, kind)
    w_h, _ = _nnx_linear(module, "dense_h", False, kind)
    return gru(hidden, **dtypes), {"w_x": w_x, "w_h": w_h, "b_x": b_x,
                                   "b_h": jnp.zeros((3 * hidden,), b_x.dtype)}
  if kind == "OptimizedLSTMCell":
    w_x, _ = _nnx_linear(module, "dense_i", False, kind)
    w_h, b = _nnx_linear(module, "dense_h", True, kind)
    return lstm(hidden, **dtypes), {"w_x": w_x, "w_h": w_h, "b": b}
  # LSTMCell: one layer a gate and side; `if` is a Python keyword, hence NNX's `if_`.
  wx = [_nnx_linear(module, name, False, kind)[0] for name in ("ii", "if_", "ig", "io")]
  wh, b = zip(*(_nnx_linear(module, name, True, kind) for name in ("hi", "hf", "hg", "ho")))
  return lstm(hidden, **dtypes), {"w_x": jnp.concatenate(wx, axis=1),
                                  "w_h": jnp.concatenate(wh, axis=1), "b": jnp.concatenate(b)}


def from_flax(module: Any, variables: Any = None) -> tuple[_types.Cell, dict]:
  r"""Converts the parameters of a Flax recurrent cell, linen's or NNX's, into a jaxrnn cell
  and its params.

  Flax linen keeps one `Dense` layer per gate and side, named `i<gate>` (input side, kernel
  `(D, H)`) and `h<gate>` (recurrent side, kernel `(H, H)`); jaxrnn joins the gates along the
  last axis. Exactly:

  - `LSTMCell`, `OptimizedLSTMCell` (gates `i, f, g, o`, the bias on the recurrent side):
    `w_x = [ii | if | ig | io]`, `w_h = [hi | hf | hg | ho]`, `b = [b_hi | b_hf | b_hg | b_ho]`.
    Flax's carry is `(c, h)`; jaxrnn's is `LSTMState(h, c)`.
  - `GRUCell` (gates `r, z, n`; input-side biases, a recurrent bias on `n` only, reset gate
    applied after the recurrent matmul, as jaxrnn's PyTorch form):
    `w_x = [ir | iz | in]`, `b_x = [b_ir | b_iz | b_in]`, `w_h = [hr | hz | hn]`,
    `b_h = [0 | 0 | b_hn]`.
  - `SimpleCell` (`residual=False`, tanh or relu): `w_x = i`, `b = b_i`, `w_h = h`.

  Flax NNX's cells (`flax.nnx.LSTMCell(D, H, rngs=...)` and the others) hold their parameters
  as `nnx.Param`s on the module, so no `variables` are passed, and their layouts differ from
  linen's. Each `nnx.Linear` is named below by its attribute:

  - `LSTMCell` (one layer a gate and side, the bias on the recurrent side):
    `w_x = [ii | if_ | ig | io]`, `w_h = [hi | hf | hg | ho]`, `b = [b_hi | b_hf | b_hg | b_ho]`.
  - `OptimizedLSTMCell` (gates `i, f, g, o` joined, the bias on the recurrent side):
    `w_x = dense_i`, `w_h = dense_h`, `b = b_dense_h`.
  - `GRUCell` (gates `r, z, n` joined, the bias on the input side only, reset gate applied
    after the recurrent matmul): `w_x = dense_i`, `b_x = b_dense_i`, `w_h = dense_h`,
    `b_h = 0`.
  - `SimpleCell` (`residual=False`, tanh or relu): `w_x = dense_i`, `b = b_dense_i`,
    `w_h = dense_h`.

  Both LSTMs' carry is `(c, h)`, linen's and NNX's; jaxrnn's is `LSTMState(h, c)`. The cells
  must use Flax's default activations (sigmoid gates, tanh); other functions raise
  `ValueError`. The jaxrnn cell gets the module's `dtype` and `param_dtype`, and the params
  keep the arrays' own dtypes.

  Args:
    module: the Flax cell, e.g. `flax.linen.LSTMCell(features=H)` or
      `flax.nnx.LSTMCell(D, H, rngs=nnx.Rngs(0))`.
    variables: a linen cell's variables `{"params": ...}` (or the params dict itself); omitted
      (None) for an NNX cell.

  Returns:
    `(cell, params)`: `jr.scan(cell, params, xs)` computes what `flax.linen.RNN(module)` (or
    the NNX cell called step by step, `flax.nnx.RNN(module)`) does.

  Raises:
    TypeError: `module` is not one of the cells above, a linen cell comes without
      `variables`, or an NNX cell with them.
    ValueError: a cell option jaxrnn's cells do not have (`residual=True`, other activations),
      or parameters not in Flax's layout.

  >>> import jax, jax.numpy as jnp, flax.linen as nn, jaxrnn as jr
  >>> module = nn.GRUCell(features=4)
  >>> variables = module.init(jax.random.key(0), jnp.zeros(4), jnp.zeros(3))
  >>> cell, params = jr.interop.from_flax(module, variables)
  >>> params["w_x"].shape, params["b_h"].shape
  ((3, 12), (12,))
  >>> from flax import nnx
  >>> cell, params = jr.interop.from_flax(nnx.OptimizedLSTMCell(3, 4, rngs=nnx.Rngs(0)))
  >>> params["w_x"].shape, params["w_h"].shape, params["b"].shape
  ((3, 16), (4, 16), (16,))
  """
  kind, origin = type(module).__name__, type(module).__module__
  if kind not in _SUPPORTED or not origin.startswith(("flax.linen", "flax.nnx")):
    raise TypeError(f"from_flax supports flax.linen's and flax.nnx's {', '.join(_SUPPORTED)}, "
                    f"got {origin}.{kind}")
  if origin.startswith("flax.nnx"):
    if variables is not None:
      raise TypeError(f"from_flax: an NNX {kind} holds its own parameters; call "
                      "from_flax(module) without variables (got "
                      f"{type(variables).__name__})")
    return _from_nnx(module, kind)
  if variables is None:
    raise TypeError(f"from_flax: a flax.linen {kind} holds no parameters; pass its variables, "
                    "from_flax(module, variables) with variables = module.init(...)")
  params = variables.get("params", variables) if isinstance(variables, dict) else None
  if not isinstance(params, dict):
    raise TypeError(f"from_flax: variables must be a dict ({{'params': ...}}), got "
                    f"{type(variables).__name__}")
  hidden = module.features
  dtypes = {"dtype": module.dtype, "param_dtype": module.param_dtype}
  if kind == "SimpleCell":
    activation = _simple_activation(module)
    w_x, b = _dense(params, "i", True, kind)
    w_h, _ = _dense(params, "h", False, kind)
    return simple_rnn(hidden, activation=activation, **dtypes), {"w_x": w_x, "w_h": w_h, "b": b}
  _check_gated_activations(module, kind)
  if kind == "GRUCell":
    wx, bx, wh = [], [], []
    for g in "rzn":
      kernel, bias = _dense(params, f"i{g}", True, kind)
      wx.append(kernel)
      bx.append(bias)
      wh.append(_dense(params, f"h{g}", g == "n", kind)[0])
    b_hn = _dense(params, "hn", True, kind)[1]
    zeros = jnp.zeros((2 * hidden,), b_hn.dtype)
    return gru(hidden, **dtypes), {
        "w_x": jnp.concatenate(wx, axis=1), "w_h": jnp.concatenate(wh, axis=1),
        "b_x": jnp.concatenate(bx), "b_h": jnp.concatenate([zeros, b_hn])}
  wx, wh, b = [], [], []
  for g in "ifgo":
    wx.append(_dense(params, f"i{g}", False, kind)[0])
    kernel, bias = _dense(params, f"h{g}", True, kind)
    wh.append(kernel)
    b.append(bias)
  return lstm(hidden, **dtypes), {"w_x": jnp.concatenate(wx, axis=1),
                                  "w_h": jnp.concatenate(wh, axis=1), "b": jnp.concatenate(b)}
