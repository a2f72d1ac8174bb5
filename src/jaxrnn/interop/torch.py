"""PyTorch `nn.RNN`, `nn.LSTM` and `nn.GRU` weights in (torch is imported only when called)."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np

from jaxrnn import _types
from jaxrnn.cells import gru, lstm, simple_rnn
from jaxrnn.layers import bidirectional, rnn, stack


def _array(tensor) -> jnp.ndarray:
  return jnp.asarray(np.asarray(tensor.detach().cpu().numpy()))


def _cell_and_params(module, kind: str, layer: int, suffix: str):
  get = lambda name: _array(getattr(module, f"{name}_l{layer}{suffix}"))
  hidden, bias = module.hidden_size, module.bias
  w_x, w_h = get("weight_ih").T, get("weight_hh").T
  params = {"w_x": w_x, "w_h": w_h}
  if kind == "GRU":
    cell = gru(hidden, use_bias=bias)
    if bias:
      params["b_x"], params["b_h"] = get("bias_ih"), get("bias_hh")
  else:
    cell = (lstm(hidden, use_bias=bias) if kind == "LSTM"
            else simple_rnn(hidden, activation=module.nonlinearity, use_bias=bias))
    if bias:
      params["b"] = get("bias_ih") + get("bias_hh")
  return cell, params


def from_torch(module: Any) -> tuple[_types.Layer, tuple]:
  """Converts a `torch.nn.RNN`, `LSTM` or `GRU` into a jaxrnn layer and its params.

  Any `num_layers`, `bidirectional`, `batch_first` and `bias` are supported; `proj_size` is
  not. The result is always a `jr.stack` with one entry per torch layer (each a `jr.rnn`, or a
  `jr.bidirectional` of two), time-major unless `batch_first`, so that
  `layer.apply(params, xs)[1]` equals `module(xs)[0]` for `xs` laid out as the module expects,
  and `layer.apply(params, xs, lengths=lengths)[1]` equals the module run on each unpadded
  sequence (padding outputs zero). Parameters keep the module's dtype (float64 needs
  `jax_enable_x64`). Inter-layer `dropout` is a training-time option and is not carried over.

  The final carry is a tuple over layers; each entry is the cell's carry (`h`, or
  `LSTMState(h, c)`), or a `(forward, backward)` pair for a bidirectional module. PyTorch's
  `h_n[2 * l + d]` is layer `l`, direction `d`.

  >>> import torch, jaxrnn as jr
  >>> module = torch.nn.LSTM(3, 5, num_layers=2, bidirectional=True, batch_first=True)
  >>> layer, params = jr.interop.from_torch(module)
  >>> len(params)
  2
  """
  kind = type(module).__name__
  if kind not in ("RNN", "LSTM", "GRU"):
    raise TypeError(f"from_torch supports torch.nn.RNN, LSTM and GRU, got {kind}")
  if getattr(module, "proj_size", 0):
    raise ValueError("from_torch: LSTM with proj_size > 0 is not supported")
  time_major = not module.batch_first
  layers, params = [], []
  for layer in range(module.num_layers):
    cell, p = _cell_and_params(module, kind, layer, "")
    if module.bidirectional:
      cell_b, p_b = _cell_and_params(module, kind, layer, "_reverse")
      layers.append(bidirectional(rnn(cell, time_major=time_major),
                                  rnn(cell_b, time_major=time_major), time_major=time_major))
      params.append({"forward": p, "backward": p_b})
    else:
      layers.append(rnn(cell, time_major=time_major))
      params.append(p)
  return stack(*layers), tuple(params)
