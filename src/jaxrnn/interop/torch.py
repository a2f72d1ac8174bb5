"""PyTorch `nn.RNN`, `nn.LSTM` and `nn.GRU` weights in and out (torch is imported only when
called)."""

from __future__ import annotations

from typing import Any, Optional

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
  elif kind == "LSTM":
    proj = getattr(module, "proj_size", 0)
    cell = lstm(hidden, proj_size=proj or None, use_bias=bias)
    if proj:
      params["w_p"] = get("weight_hr").T
  else:
    cell = simple_rnn(hidden, activation=module.nonlinearity, use_bias=bias)
  if kind != "GRU" and bias:
    params["b"] = get("bias_ih") + get("bias_hh")
  return cell, params


def from_torch(module: Any) -> tuple[_types.Layer, tuple]:
  """Converts a `torch.nn.RNN`, `LSTM` or `GRU` into a jaxrnn layer and its params.

  Any `num_layers`, `bidirectional`, `batch_first` and `bias` are supported, and an LSTM's
  `proj_size` (a `jr.lstm(H, proj_size=P)` cell, `w_p = weight_hr.T`). The result is always a
  `jr.stack` with one entry per torch layer (each a `jr.rnn`, or a `jr.bidirectional` of two),
  time-major unless `batch_first`, so that
  `layer.apply(params, xs)[1]` equals `module(xs)[0]` for `xs` laid out as the module expects,
  and `layer.apply(params, xs, lengths=lengths)[1]` equals the module run on each unpadded
  sequence (padding outputs zero). Parameters keep the module's dtype (float64 needs
  `jax_enable_x64`). Inter-layer `dropout` is a training-time option and is not carried over.

  The final carry is a tuple over layers; each entry is the cell's carry (`h`, or
  `LSTMState(h, c)`, `h` of size `proj_size` where one is set), or a `(forward, backward)` pair
  for a bidirectional module. PyTorch's `h_n[2 * l + d]` is layer `l`, direction `d`.

  >>> import torch, jaxrnn as jr
  >>> module = torch.nn.LSTM(3, 5, num_layers=2, bidirectional=True, batch_first=True)
  >>> layer, params = jr.interop.from_torch(module)
  >>> len(params)
  2
  """
  kind = type(module).__name__
  if kind not in ("RNN", "LSTM", "GRU"):
    raise TypeError(f"from_torch supports torch.nn.RNN, LSTM and GRU, got {kind}")
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


_KINDS = {1: "RNN", 3: "GRU", 4: "LSTM"}  # gate blocks in w_h's columns -> torch module
_PEEPHOLES = ("w_ci", "w_cf", "w_co")


def _layer_entries(params) -> list:
  """The per-layer params of `from_torch`'s layout: a tuple over layers, or one layer's."""
  if isinstance(params, dict):
    return [params]
  if isinstance(params, (tuple, list)) and params:
    return list(params)
  raise TypeError("to_torch: params must be a cell's params dict, a {'forward', 'backward'} "
                  "dict, or a tuple of those (one entry a layer, as from_torch returns), got "
                  f"{type(params).__name__}")


def _directions(entry) -> list:
  if isinstance(entry, dict) and set(entry) == {"forward", "backward"}:
    return [entry["forward"], entry["backward"]]
  return [entry]


def _check_cell_params(p, layer: int, suffix: str):
  """`(kind, hidden, input_size, bias, proj)` of one direction's cell params (`proj` is an
  LSTM's projection size, 0 for none), or `ValueError` naming what torch cannot hold."""
  where = f"to_torch: layer {layer}{' (backward)' if suffix else ''}"
  if not isinstance(p, dict) or "w_x" not in p or "w_h" not in p:
    raise ValueError(f"{where}: expected an LSTM, GRU or simple RNN params dict with 'w_x' and "
                     f"'w_h', got {sorted(p) if isinstance(p, dict) else type(p).__name__}")
  if any(name in p for name in _PEEPHOLES):
    raise ValueError(f"{where}: the params have peephole weights {', '.join(_PEEPHOLES)} "
                     "(jr.lstm(..., peephole=True)); torch.nn.LSTM has no peephole connections")
  w_x, w_h = np.shape(p["w_x"]), np.shape(p["w_h"])
  proj = 0
  if "w_p" in p:
    # jr.lstm(H, proj_size=P): w_x (D, 4H), w_h (P, 4H), w_p (H, P), P < H as torch requires.
    w_p = np.shape(p["w_p"])
    if len(w_p) != 2 or len(w_h) != 2 or len(w_x) != 2 or w_h[1] != 4 * w_p[0] \
        or w_h[0] != w_p[1] or w_x[1] != w_h[1] or not 0 < w_p[1] < w_p[0]:
      raise ValueError(f"{where}: w_x {w_x}, w_h {w_h} and w_p {w_p} are not the layout of "
                       "jr.lstm(H, proj_size=P) (w_x (D, 4H), w_h (P, 4H), w_p (H, P), P < H)")
    kind, hidden, proj = "LSTM", w_p[0], w_p[1]
  elif len(w_h) != 2 or len(w_x) != 2 or w_h[1] % w_h[0] or w_h[1] // w_h[0] not in _KINDS \
      or w_x[1] != w_h[1]:
    raise ValueError(f"{where}: w_x {w_x} and w_h {w_h} are not the layout of jr.simple_rnn, "
                     "jr.gru or jr.lstm (w_x (D, kH), w_h (H, kH) with k = 1, 3 or 4)")
  else:
    kind, hidden = _KINDS[w_h[1] // w_h[0]], w_h[0]
  if kind == "GRU" and "b" in p:
    raise ValueError(f"{where}: the params are those of jr.gru(..., reset_after=False) (a "
                     "single bias 'b'); torch.nn.GRU applies the reset gate after the recurrent "
                     "matmul (jr.gru's default, reset_after=True, with b_x and b_h)")
  bias_keys = {"GRU": {"b_x", "b_h"}}.get(kind, {"b"})
  extra = set(p) - {"w_x", "w_h", "w_p"}
  if extra and extra != bias_keys:
    keys = "w_x, w_h" + (", w_p" if proj else "")
    raise ValueError(f"{where}: a {kind} cell's params have keys {keys} and optionally "
                     f"{', '.join(sorted(bias_keys))}; got {sorted(p)}")
  return kind, hidden, w_x[0], bool(extra), proj


def to_torch(params, *, batch_first: bool = False, nonlinearity: str = "tanh",
             reset_after: Optional[bool] = None) -> Any:
  """Builds the `torch.nn.RNN`, `LSTM` or `GRU` holding jaxrnn params: the reverse of
  `from_torch`.

  `params` is `from_torch`'s layout: a tuple with one entry a layer, each entry a cell's
  params or a bidirectional `{"forward": ..., "backward": ...}` pair; one cell's params dict
  (a `jr.rnn` layer) or one pair is a one-layer module. The kind follows from the shapes
  (`w_h (H, kH)`: k = 4 LSTM, 3 GRU, 1 RNN, whose `nonlinearity` the params cannot tell);
  params with a `w_p (H, P)` are a projected LSTM, `jr.lstm(H, proj_size=P)`, which becomes
  `nn.LSTM(..., proj_size=P)` with `weight_hr = w_p.T` (every layer and direction with the same
  `P`; a layer after the first reads `P` features a direction). Weights are transposed back;
  the LSTM's and simple RNN's single `b` becomes `bias_ih` with a zero `bias_hh`, so
  `from_torch(to_torch(params))` gives back the same params exactly, and the module's outputs
  and final `(h_n, c_n)` equal the jaxrnn layer's. Tensors keep the params' dtype; the module
  is in training mode as torch builds it (call `.eval()` for inference).

  What torch's modules do not compute raises `ValueError`: peephole LSTMs (`w_ci`, `w_cf`,
  `w_co`), `jr.gru(..., reset_after=False)` with a bias (its single `b`), params of other
  cells, and layers that differ in kind, size, projection or bias. The params of
  `jr.gru(H, reset_after=False, use_bias=False)` cannot be told from those of
  `jr.gru(H, use_bias=False)` (the same keys and shapes), so bias-free GRU params need
  `reset_after=True` to say which cell they come from (torch's GRU computes only that form); a
  GRU with biases says it by its keys.

  Args:
    params: as above.
    batch_first: the module's layout, which params do not record; match the jaxrnn layer
      (`from_torch` builds time-major layers unless `batch_first`).
    nonlinearity: "tanh" or "relu", for simple RNN params.
    reset_after: for GRU params, the `reset_after` of the `jr.gru` they come from: required
      (`True`) for bias-free GRU params; `False` always raises; checked against the keys of
      GRU params with biases.

  Raises:
    TypeError: `params` is not a dict or a non-empty tuple of them.
    ValueError: params that no torch module holds (above), or a bad `nonlinearity`.

  >>> import jax, jaxrnn as jr
  >>> params = jr.stack(jr.rnn(jr.lstm(5)), jr.rnn(jr.lstm(5))).init(jax.random.key(0), 3)
  >>> module = jr.interop.to_torch(params, batch_first=True)
  >>> type(module).__name__, module.num_layers, module.hidden_size
  ('LSTM', 2, 5)
  """
  import torch

  batch_first = _types.check_flag(batch_first, "to_torch: batch_first")
  if nonlinearity not in ("tanh", "relu"):
    raise ValueError(f"to_torch: nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
  if reset_after is not None:
    reset_after = _types.check_flag(reset_after, "to_torch: reset_after")
  layers = [_directions(entry) for entry in _layer_entries(params)]
  bidirectional = len(layers[0]) == 2
  shapes = []
  for i, directions in enumerate(layers):
    if (len(directions) == 2) != bidirectional:
      raise ValueError(f"to_torch: layer {i} is {'' if len(directions) == 2 else 'not '}"
                       "bidirectional, unlike layer 0; a torch module is one or the other")
    for d, p in enumerate(directions):
      shapes.append(_check_cell_params(p, i, "_reverse" if d else ""))
  kinds = {s[0] for s in shapes}
  hiddens = {s[1] for s in shapes}
  biases = {s[3] for s in shapes}
  projs = {s[4] for s in shapes}
  if len(kinds) > 1 or len(hiddens) > 1 or len(biases) > 1 or len(projs) > 1:
    raise ValueError(f"to_torch: every layer of a torch module has one kind, hidden size, "
                     f"projection size and bias setting; got kinds {sorted(kinds)}, hidden sizes "
                     f"{sorted(hiddens)}, proj sizes {sorted(projs)} (0: none), bias "
                     f"{sorted(biases)}")
  kind, hidden, bias, proj = kinds.pop(), hiddens.pop(), biases.pop(), projs.pop()
  if kind != "GRU" and reset_after is not None:
    raise ValueError(f"to_torch: reset_after is for GRU params; these are {kind} params")
  if kind == "GRU" and reset_after is False:
    raise ValueError("to_torch: reset_after=False: torch.nn.GRU applies the reset gate after "
                     "the recurrent matmul only (jr.gru's default, reset_after=True)")
  if kind == "GRU" and not bias and reset_after is None:
    raise ValueError("to_torch: bias-free GRU params do not say which GRU they come from: "
                     "jr.gru(H, use_bias=False) and jr.gru(H, reset_after=False, use_bias=False) "
                     "have the same keys and shapes. Pass reset_after=True if they are the "
                     "former (torch.nn.GRU computes only that form)")
  ways = 2 if bidirectional else 1
  out = (proj or hidden) * ways  # what each layer passes on to the next
  if shapes[ways - 1][2] != shapes[0][2]:
    raise ValueError(f"to_torch: layer 0's forward direction reads {shapes[0][2]} features "
                     f"and its backward one {shapes[1][2]}; a torch module's layer reads one size")
  for i, s in enumerate(shapes[ways:], start=ways):
    if s[2] != out:
      raise ValueError(f"to_torch: layer {i // ways} reads {s[2]} features, but layer "
                       f"{i // ways - 1} outputs {out}")
  dtype = torch.from_numpy(np.zeros((), np.asarray(layers[0][0]["w_x"]).dtype)).dtype
  options = {"nonlinearity": nonlinearity} if kind == "RNN" else {}
  if proj:
    options["proj_size"] = proj
  module = getattr(torch.nn, kind)(shapes[0][2], hidden, num_layers=len(layers), bias=bias,
                                   batch_first=batch_first, bidirectional=bidirectional,
                                   dtype=dtype, **options)
  tensor = lambda a: torch.from_numpy(np.array(a, copy=True))
  with torch.no_grad():
    for i, directions in enumerate(layers):
      for d, p in enumerate(directions):
        suffix = f"_l{i}" + ("_reverse" if d else "")
        getattr(module, "weight_ih" + suffix).copy_(tensor(np.asarray(p["w_x"]).T))
        getattr(module, "weight_hh" + suffix).copy_(tensor(np.asarray(p["w_h"]).T))
        if proj:
          getattr(module, "weight_hr" + suffix).copy_(tensor(np.asarray(p["w_p"]).T))
        if bias:
          b_ih = p["b_x"] if kind == "GRU" else p["b"]
          b_hh = p["b_h"] if kind == "GRU" else np.zeros_like(np.asarray(p["b"]))
          getattr(module, "bias_ih" + suffix).copy_(tensor(b_ih))
          getattr(module, "bias_hh" + suffix).copy_(tensor(b_hh))
  return module
