"""Flax linen's own recurrent cells' parameters in: `LSTMCell`, `OptimizedLSTMCell`, `GRUCell`
and `SimpleCell` (flax is not imported here: the cell module passed in is read as it is)."""

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


def from_flax(module: Any, variables: Any) -> tuple[_types.Cell, dict]:
  r"""Converts the parameters of a Flax linen recurrent cell into a jaxrnn cell and its params.

  Flax keeps one `Dense` layer per gate and side, named `i<gate>` (input side, kernel
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

  The cells must use Flax's default activations (sigmoid gates, tanh); other functions raise
  `ValueError`. The jaxrnn cell gets the module's `dtype` and `param_dtype`.

  Args:
    module: the Flax cell, e.g. `flax.linen.LSTMCell(features=H)`.
    variables: its variables `{"params": ...}` (or the params dict itself).

  Returns:
    `(cell, params)`: `jr.scan(cell, params, xs)` computes what `flax.linen.RNN(module)` does.

  >>> import jax, jax.numpy as jnp, flax.linen as nn, jaxrnn as jr
  >>> module = nn.GRUCell(features=4)
  >>> variables = module.init(jax.random.key(0), jnp.zeros(4), jnp.zeros(3))
  >>> cell, params = jr.interop.from_flax(module, variables)
  >>> params["w_x"].shape, params["b_h"].shape
  ((3, 12), (12,))
  """
  kind = type(module).__name__
  if kind not in _SUPPORTED or not type(module).__module__.startswith("flax.linen"):
    raise TypeError(f"from_flax supports flax.linen's {', '.join(_SUPPORTED)}, got "
                    f"{type(module).__module__}.{kind}")
  params = variables.get("params", variables) if isinstance(variables, dict) else None
  if not isinstance(params, dict):
    raise TypeError(f"from_flax: variables must be a dict ({{'params': ...}}), got "
                    f"{type(variables).__name__}")
  hidden = module.features
  dtypes = {"dtype": module.dtype, "param_dtype": module.param_dtype}
  if kind == "SimpleCell":
    if module.residual:
      raise ValueError("from_flax: SimpleCell(residual=True) adds h to the pre-activation; "
                       "jaxrnn's simple_rnn has no such term")
    activation = _activation_name(module.activation_fn, "SimpleCell's activation_fn")
    w_x, b = _dense(params, "i", True, kind)
    w_h, _ = _dense(params, "h", False, kind)
    return simple_rnn(hidden, activation=activation, **dtypes), {"w_x": w_x, "w_h": w_h, "b": b}
  _activation_name(module.gate_fn, f"{kind}'s gate_fn", ("sigmoid",))
  _activation_name(module.activation_fn, f"{kind}'s activation_fn", ("tanh",))
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
