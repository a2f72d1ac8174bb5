"""Equinox's own `eqx.nn.LSTMCell` and `eqx.nn.GRUCell` parameters in (equinox is not imported
here: the cell module passed in is read as it is)."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from jaxrnn import _types
from jaxrnn.cells import gru, lstm


def from_equinox(module: Any) -> tuple[_types.Cell, dict]:
  r"""Converts an `equinox.nn.LSTMCell` or `equinox.nn.GRUCell` into a jaxrnn cell and params.

  Equinox stores PyTorch's layout, weights `(gates * H, D)` applied as `W @ x`:

  - `LSTMCell` (gates `i, f, g, o`, one fused bias): `w_x = weight_ih.T`,
    `w_h = weight_hh.T`, `b = bias`. The carry is `(h, c)` in both.
  - `GRUCell` (gates `r, z, n`; the input-side bias `bias (3H,)`, and `bias_n (H,)` added to
    the recurrent part of `n` inside the reset gate): `w_x = weight_ih.T`,
    `w_h = weight_hh.T`, `b_x = bias`, `b_h = [0 | 0 | bias_n]`. Equinox's update
    `n + z (h - n)` is jaxrnn's `(1 - z) n + z h`.

  `use_bias=False` gives a jaxrnn cell without biases. Parameters keep their dtype.

  Args:
    module: the Equinox cell.

  Returns:
    `(cell, params)`: `jr.scan(cell, params, xs)` computes what a `jax.lax.scan` of the
    Equinox cell over `xs` does.

  >>> import jax, equinox as eqx, jaxrnn as jr
  >>> module = eqx.nn.LSTMCell(3, 4, key=jax.random.key(0))
  >>> cell, params = jr.interop.from_equinox(module)
  >>> params["w_x"].shape, params["b"].shape
  ((3, 16), (16,))
  """
  kind = type(module).__name__
  if kind not in ("LSTMCell", "GRUCell") or not type(module).__module__.startswith("equinox"):
    raise TypeError(f"from_equinox supports equinox.nn.LSTMCell and GRUCell, got "
                    f"{type(module).__module__}.{kind}")
  hidden, use_bias = int(module.hidden_size), bool(module.use_bias)
  params = {"w_x": jnp.asarray(module.weight_ih).T, "w_h": jnp.asarray(module.weight_hh).T}
  if kind == "LSTMCell":
    if use_bias:
      params["b"] = jnp.asarray(module.bias)
    return lstm(hidden, use_bias=use_bias, param_dtype=params["w_x"].dtype), params
  if use_bias:
    bias_n = jnp.asarray(module.bias_n)
    params["b_x"] = jnp.asarray(module.bias)
    params["b_h"] = jnp.concatenate([jnp.zeros((2 * hidden,), bias_n.dtype), bias_n])
  return gru(hidden, use_bias=use_bias, param_dtype=params["w_x"].dtype), params
